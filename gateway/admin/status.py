"""``/status``: the process and every upstream peer as JSON, and the page that shows it.

This module owns the shape of the status document — the ``gateway`` part (pid, start
time, uptime, configuration path, version, open connections, live tunnels, requests)
and the ``upstreams`` part (``UpstreamManager.snapshot``: every group and peer with
state, weights, active connections, counters, last error and health probe) — and the
HTML status page (:mod:`gateway.admin._page`), which embeds the first document and then
fetches ``/status`` itself to stay current. Serving them is ``gateway.admin.site``'s.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Optional

from gateway.admin._page import PAGE

__all__ = ["ProcessInfo", "status_document", "status_page", "version"]


def version() -> str:
    """The installed gateway's version (``setup.cfg``), or ``"unknown"``."""
    try:
        return metadata.version("gateway")
    except metadata.PackageNotFoundError:   # pragma: no cover - running from a tree
        return "unknown"


@dataclass
class ProcessInfo:
    """What the status page says about the process itself."""

    start_time: float                 # clock seconds when the service started
    config_path: str = ""
    pid: int = field(default_factory=os.getpid)
    version: str = field(default_factory=version)

    def snapshot(self, now: float) -> dict:
        return {
            "version": self.version,
            "pid": self.pid,
            "config": self.config_path,
            "start_time": self.start_time,
            "now": now,
            "uptime": max(0.0, now - self.start_time),
        }


def status_document(manager, metrics, process: ProcessInfo, now: Optional[float] = None
                    ) -> dict:
    """The ``/status`` document: plain, JSON-serialisable data (a copy)."""
    if now is None:
        now = manager.clock.seconds()
    gateway = process.snapshot(now)
    gateway.update(
        connections=metrics.client_connections(),
        tunnels=metrics.tunnels,
        requests=metrics.requests_total(),
    )
    return {"gateway": gateway, "upstreams": manager.snapshot()}


def status_json(document: dict) -> bytes:
    return json.dumps(document, indent=1).encode("utf-8") + b"\n"


def status_page(document: dict) -> bytes:
    """The HTML page with ``document`` embedded, so the first paint needs no fetch.
    ``<`` is escaped in the embedded JSON: a peer's error text cannot close the
    script element."""
    embedded = json.dumps(document).replace("<", "\\u003c")
    return PAGE.replace("/*INITIAL*/null", embedded).encode("utf-8")
