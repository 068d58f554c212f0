"""The probes of active health checks that speak HTTP/1.1 or only connect (``tcp``).

This module owns what one probe does on the wire; when to probe and what the result
does to the peer is :mod:`gateway.upstream.health`'s. Probes go through the same
:class:`~gateway.http.client.UpstreamConnector` and
:class:`~gateway.http.client.UpstreamConnection` as proxied traffic, so they connect
the way requests do (with TLS, SNI and verification when the group is used with
``https://``; a ``tcp`` probe then passes once the handshake verified), but they never
take a lease: ``max_conns`` and the peer's counters are not touched.

- ``http``: ``GET uri`` with ``Host`` (the server's address as configured, spelt as
  ``$proxy_host`` spells a host and port — for a ``resolve = true`` peer that is the
  host name, not the IP connected to; ``headers`` may replace it) and
  ``Connection: close``. The probe passes
  when the status is in one of the ``status`` ranges and, with ``body``, when that
  substring occurs in the first 256 KiB of the body (NGINX Plus examines the first
  256k too). It stops reading as soon as the verdict is known.
- ``tcp``: passes once the connection is established, then closes it.

A probe is ``probe(peer) -> Deferred[ProbeResult]``. Connection failures arrive as an
errback with the :class:`UpstreamError` in nginx's words. Cancelling the Deferred (the
checker's ``timeout``) abandons the connect or closes the connection.
"""
from __future__ import annotations

from typing import Optional

from twisted.internet.defer import Deferred

from gateway.config.model import Address, HealthCheckSettings
from gateway.http._client_core import ResponseHead, UpstreamError
from gateway.http.client import UpstreamConnection, UpstreamConnector
from gateway.upstream.health import Probe, ProbeResult
from gateway.upstream.peer import Peer

#: how much of a response body is searched for ``body``
BODY_LIMIT = 256 * 1024


def make_probe(settings: HealthCheckSettings, connector: UpstreamConnector,
               tls=None) -> Probe:
    """The probe for ``settings.type``; ``grpc`` belongs to the gRPC package. With
    ``tls`` (the group's :class:`~gateway.tls.client.UpstreamTLS`, when the group is
    used with ``https://``) probes connect with TLS and verify the peer as requests do."""
    if settings.type == "http":
        return HTTPProbe(settings, connector, tls)
    if settings.type == "tcp":
        return TCPProbe(settings, connector, tls)
    raise ValueError(f"health_check type {settings.type!r} has no probe here")


def host_header(address: Address) -> str:
    """The default ``Host`` of a probe: the address as nginx's ``$proxy_host`` writes
    it (port left out when 80, IPv6 in brackets, ``localhost`` for unix sockets)."""
    if address.is_unix:
        return "localhost"
    host = address.host
    if ":" in host:
        host = f"[{host}]"
    return host if address.port == 80 else f"{host}:{address.port}"


class TCPProbe:
    """``type = "tcp"``: the peer accepts a connection."""

    def __init__(self, settings: HealthCheckSettings, connector: UpstreamConnector,
                 tls=None):
        self.settings = settings
        self.connector = connector
        self.tls = tls

    def __call__(self, peer: Peer) -> Deferred:
        def connected(connection: UpstreamConnection) -> ProbeResult:
            connection.close()
            return ProbeResult(True, "connected")

        return _connect(self, peer).addCallback(connected)


class HTTPProbe:
    """``type = "http"``: one ``GET`` on a fresh connection, judged by status and body."""

    def __init__(self, settings: HealthCheckSettings, connector: UpstreamConnector,
                 tls=None):
        self.settings = settings
        self.connector = connector
        self.tls = tls
        self.body = settings.body.encode("utf-8") if settings.body is not None else None
        self._host_given = any(n.lower() == "host" for n, _ in settings.headers)
        # everything after the Host line is the same for every peer
        lines = [f"{name}: {value}" for name, value in settings.headers]
        if not any(n.lower() == "connection" for n, _ in settings.headers):
            lines.append("Connection: close")
        self._rest = "".join(line + "\r\n" for line in lines).encode("latin-1") + b"\r\n"
        self._start = f"GET {settings.uri} HTTP/1.1\r\n".encode("latin-1")

    def request_head(self, configured: Address) -> bytes:
        """The request sent to a peer whose server entry names ``configured``."""
        if self._host_given:
            return self._start + self._rest
        host = f"Host: {host_header(configured)}\r\n".encode("latin-1")
        return self._start + host + self._rest

    def __call__(self, peer: Peer) -> Deferred:
        check = _HTTPCheck(self, peer, self.request_head(peer.settings.address))
        return check.deferred


def _connect(probe, peer: Peer) -> Deferred:
    """A probe's connection to ``peer``: TLS when its group is used with https."""
    if probe.tls is None:
        return probe.connector.connect(peer.address, probe.settings.timeout)
    return probe.connector.connect(peer.address, probe.settings.timeout,
                                   tls=probe.tls.for_peer(peer))


class _HTTPCheck:
    """One HTTP probe in flight: the :class:`ResponseHandler` of its request."""

    __slots__ = ("probe", "deferred", "_head", "_connecting", "_connection", "_status",
                 "_body", "_done")

    def __init__(self, probe: HTTPProbe, peer: Peer, head: bytes):
        self.probe = probe
        self._head = head
        self.deferred = Deferred(self._cancel)
        self._connection: Optional[UpstreamConnection] = None
        self._status = 0
        self._body = bytearray()
        self._done = False
        self._connecting: Optional[Deferred] = _connect(probe, peer)
        self._connecting.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, connection: UpstreamConnection) -> None:
        self._connecting = None
        if self._done:
            connection.close()
            return
        self._connection = connection
        timeout = self.probe.settings.timeout
        connection.send_request(
            self._head, self, method="GET",
            body="none", read_timeout=timeout, send_timeout=timeout,
        )

    def _connect_failed(self, failure) -> None:
        self._connecting = None
        if not self._done:
            self._done = True
            self.deferred.errback(failure)

    def _cancel(self, _deferred: Deferred) -> None:
        self._done = True
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        self._close()

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _finish(self, passed: bool, reason: str) -> None:
        if self._done:
            return
        self._done = True
        self._close()
        self.deferred.callback(ProbeResult(passed, reason))

    # -- ResponseHandler -----------------------------------------------------------

    def response_head(self, head: ResponseHead) -> None:
        status = self._status = head.status
        if not any(low <= status <= high for low, high in self.probe.settings.status):
            self._finish(False, f"status {status}")
        elif self.probe.body is None:
            self._finish(True, f"status {status}")

    def response_body(self, data: bytes) -> None:
        if self._done:
            return
        needle = self.probe.body
        body = self._body
        start = max(0, len(body) - len(needle) + 1)
        body += data[:BODY_LIMIT - len(body)]
        if body.find(needle, start) >= 0:
            self._finish(True, f"status {self._status}, body matched")
        elif len(body) >= BODY_LIMIT:
            self._finish(False, f"status {self._status}, body does not contain"
                                f" {self.probe.settings.body!r} in its first 256k")

    def response_end(self) -> None:
        self._finish(False, f"status {self._status}, body does not contain"
                            f" {self.probe.settings.body!r}")

    def response_error(self, error: UpstreamError) -> None:
        if not self._done:
            self._done = True
            self._connection = None
            self.deferred.errback(error)
