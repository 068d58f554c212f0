"""The admin listener's HTTP side: routing its few paths, on ``twisted.web``.

Admin traffic is a person or a scraper now and then, so the simpler ``twisted.web`` is
used here rather than the proxy's own HTTP/1.1 protocol. This module owns the routes,
content types and error answers:

===========================================  ===============  ==========================
``/``                                        GET              the live status page
``/status``                                  GET              the status document (JSON)
``/metrics``                                 GET              Prometheus text format
``/api/upstreams``                           GET              every group
``/api/upstreams/NAME``                      GET              one group
``/api/upstreams/NAME/servers``              GET              its servers
``/api/upstreams/NAME/servers/ADDRESS``      GET, PATCH, POST one server; change it
``/api/reload``                              POST             reload the configuration
===========================================  ===============  ==========================

``POST /api/reload`` (``Content-Type: application/json``, any body) reloads the file the
gateway runs, as SIGHUP does (:mod:`gateway.reload`), and answers when the reload is
done: 200 with ``{"reloaded": true, "ok": true, "errors": [], "changes": [...]}``, 422
with every error of an invalid file (nothing changed), 500 when part of it failed (a
listener that could not be opened; the rest stands), 503 while the gateway stops.

What the documents hold is ``status.py``'s and ``gateway.metrics``'; changes are
``api.py``'s. Requests are not access-logged (the page polls every second); API
changes are logged where they are applied.
"""
from __future__ import annotations

import json
from typing import Optional

from twisted.logger import Logger
from twisted.web import resource, server

from gateway.admin.api import ApiError, UpstreamAPI
from gateway.admin.status import ProcessInfo, status_document, status_json, status_page

__all__ = ["Admin", "AdminResource", "AdminSite"]

log = Logger()

METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
JSON_TYPE = b"application/json"
#: the page loads nothing from anywhere: inline style and script, fetches to itself
PAGE_POLICY = (b"default-src 'none'; style-src 'unsafe-inline'; "
               b"script-src 'unsafe-inline'; connect-src 'self'; img-src data:")
READ = ("GET", "HEAD")
CHANGE = ("GET", "HEAD", "PATCH", "POST")


class Admin:
    """What the admin listener shows and changes: one process's manager and metrics."""

    def __init__(self, manager, metrics, process: ProcessInfo, reload=None):
        self.manager = manager
        self.metrics = metrics
        self.process = process
        self.api = UpstreamAPI(manager)
        #: ``reload()`` → Deferred[``gateway.reload.ReloadResult``]; None: no reload
        self.reload = reload

    def status(self) -> dict:
        return status_document(self.manager, self.metrics, self.process)

    def metrics_text(self) -> str:
        return self.metrics.render(self.manager, process={
            "version": self.process.version, "pid": self.process.pid,
            "start_time": self.process.start_time,
        })


class AdminResource(resource.Resource):
    """Every path of the admin listener (a leaf: it routes ``postpath`` itself)."""

    isLeaf = True

    def __init__(self, admin: Admin):
        super().__init__()
        self.admin = admin

    def render(self, request) -> bytes:
        method = request.method.decode("ascii", "replace")
        path = [segment.decode("utf-8", "replace") for segment in request.postpath]
        if len(path) > 1 and path[-1] == "":
            path.pop()            # "/status/" is "/status"
        request.setHeader(b"Server", b"gateway")     # as the proxy listeners say
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        try:
            return self._route(request, method, path)
        except ApiError as error:
            if error.allow:
                request.setHeader(b"Allow", ", ".join(error.allow).encode())
            return self._json(request, error.document(), error.status)

    def _route(self, request, method: str, path: list[str]) -> bytes:
        admin = self.admin
        if path == [""]:
            _allow(method, READ)
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            request.setHeader(b"Content-Security-Policy", PAGE_POLICY)
            return status_page(admin.status())
        if path == ["status"]:
            _allow(method, READ)
            request.setHeader(b"Content-Type", JSON_TYPE)
            return status_json(admin.status())
        if path == ["metrics"]:
            _allow(method, READ)
            request.setHeader(b"Content-Type", METRICS_TYPE)
            return admin.metrics_text().encode("utf-8")
        if path[:2] == ["api", "upstreams"]:
            return self._upstreams(request, method, path[2:])
        if path == ["api", "reload"] and admin.reload is not None:
            _allow(method, ("POST",))
            _json_body(request)
            return self._reload(request)
        raise ApiError(404, "not found: the admin listener serves /, /status, /metrics, "
                            "/api/upstreams and /api/reload")

    def _reload(self, request):
        """Reload and answer when it is done (``ReloadResult.status``)."""
        log.info("admin API: reload requested (from {client})", client=_client(request))
        finished = []
        request.notifyFinish().addErrback(lambda _: finished.append(True))

        def answer(result):
            if not finished:
                request.write(self._json(request, result.document(), result.status))
                request.finish()

        self.admin.reload().addCallback(answer)
        return server.NOT_DONE_YET

    def _upstreams(self, request, method: str, rest: list[str]) -> bytes:
        api = self.admin.api
        if len(rest) == 0:
            _allow(method, READ)
            return self._json(request, api.groups())
        if len(rest) == 1:
            _allow(method, READ)
            return self._json(request, api.group(rest[0]))
        if rest[1] != "servers" or len(rest) > 3:
            raise ApiError(404, "not found: use /api/upstreams/NAME/servers/ADDRESS")
        if len(rest) == 2:
            _allow(method, READ)
            return self._json(request, api.servers(rest[0]))
        _allow(method, CHANGE)
        if method in READ:
            return self._json(request, api.server(rest[0], rest[2]))
        body = _json_body(request)
        document = api.change_server(rest[0], rest[2], body, client=_client(request))
        return self._json(request, document)

    @staticmethod
    def _json(request, document, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", JSON_TYPE)
        return json.dumps(document, indent=1).encode("utf-8") + b"\n"


def _json_body(request) -> bytes:
    """The body of a change, which must be sent as JSON: a cross-site form cannot
    send that without a CORS preflight, which is never granted."""
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0]
    if content_type.strip().lower() != JSON_TYPE:
        raise ApiError(415, "send changes as Content-Type: application/json")
    return request.content.read() if request.content is not None else b""


def _allow(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise ApiError(405, f"method {method} not allowed here", allow=allowed)


def _client(request) -> str:
    address = request.getClientAddress()
    return getattr(address, "host", None) or str(address)


class AdminSite(server.Site):
    """The admin listener's factory. Quiet: no "Starting factory" lines and no
    request log (the status page polls every second)."""

    noisy = False

    def __init__(self, admin: Admin, reactor, resource_: Optional[resource.Resource] = None):
        super().__init__(resource_ or AdminResource(admin), reactor=reactor)
        self.admin = admin

    def log(self, request) -> None:
        pass
