"""The admin listener (``[admin] listen``): the live status page (``/``), ``/status``
JSON, ``/metrics`` in Prometheus text format and the runtime API
(``/api/upstreams/NAME/servers/ADDRESS``). See docs/operations.md.

- ``site.py``: routing and HTTP (twisted.web);
- ``status.py`` and ``_page.py``: the status document and the HTML page;
- ``api.py``: reading and changing peers (down, drain, weight) at run time.

The counters behind ``/metrics`` are :mod:`gateway.metrics`.
"""
from gateway.admin.api import ApiError, UpstreamAPI
from gateway.admin.site import Admin, AdminResource, AdminSite
from gateway.admin.status import ProcessInfo, status_document, status_page

__all__ = [
    "Admin", "AdminResource", "AdminSite", "ApiError", "ProcessInfo", "UpstreamAPI",
    "status_document", "status_page",
]
