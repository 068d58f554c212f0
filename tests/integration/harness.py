"""Real-socket test harness: scriptable backends, a raw HTTP client, a running gateway.

Everything listens on 127.0.0.1 port 0 and every wait is bounded (trial's per-test
timeout plus the explicit timeouts here).

- :class:`Backend` is a raw HTTP/1.1 server whose answer to each request is a
  ``behaviour(request, conn)`` function, so tests can send exact bytes: wrong framing,
  a close in the middle, nothing at all (hold-and-release via ``conn.hold()``).
- :func:`request` / :class:`RawClient` speak raw bytes to the gateway and parse the
  responses with httptools.
- :func:`start_gateway` builds a ``GatewayService`` from TOML text (``{b0}``, ``{b1}``…
  replaced by the backends' addresses) and returns it with its port.
"""
from __future__ import annotations

import socket
import textwrap
from dataclasses import dataclass, field
from typing import Callable, Optional

import httptools
from twisted.internet import defer, protocol, reactor
from twisted.internet.task import deferLater

from gateway.config import parse_config
from gateway.service import GatewayService

try:
    import tomllib
except ImportError:  # pragma: no cover
    import tomli as tomllib

WAIT = 10.0   # seconds: the bound on any single wait in these tests


# -- backends -------------------------------------------------------------------


@dataclass
class BackendRequest:
    method: str
    path: str
    headers: dict          # lower-case name → value (str); repeated names joined by ", "
    raw_headers: list      # [(name, value)] as received
    body: bytes
    connection_id: int


def ok(name: str) -> Callable:
    """A behaviour answering 200 with body ``name`` (Content-Length framing)."""

    def behaviour(req, conn):
        conn.respond(200, name.encode())

    return behaviour


class BackendConnection(protocol.Protocol):
    def connectionMade(self):
        self.backend = self.factory
        self.backend.connections += 1
        self.id = self.backend.connections
        self._parser = httptools.HttpRequestParser(self)
        self._reset()
        self.held = None

    def _reset(self):
        self._url = b""
        self._headers = []
        self._body = []

    # httptools callbacks
    def on_url(self, url):
        self._url += url

    def on_header(self, name, value):
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body):
        self._body.append(body)

    def on_message_complete(self):
        headers = {}
        for name, value in self._headers:
            key = name.lower()
            headers[key] = headers[key] + ", " + value if key in headers else value
        req = BackendRequest(
            method=self._parser.get_method().decode(),
            path=self._url.decode("latin-1"),
            headers=headers, raw_headers=list(self._headers),
            body=b"".join(self._body), connection_id=self.id,
        )
        self._reset()
        self.backend.requests.append(req)
        self.backend.behaviour(req, self)

    def dataReceived(self, data):
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.backend.closed += 1

    # helpers for behaviours
    def respond(self, status, body=b"", headers=(), reason=b"OK"):
        lines = [b"HTTP/1.1 %d %s" % (status, reason)]
        lines += [b"%s: %s" % (k, v) for k, v in headers]
        lines.append(b"Content-Length: %d" % len(body))
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)

    def write(self, data: bytes):
        self.transport.write(data)

    def close(self):
        self.transport.loseConnection()

    def abort(self):
        self.transport.abortConnection()

    def hold(self) -> defer.Deferred:
        """Answer later: returns a Deferred the test fires to release the request."""
        self.held = defer.Deferred()
        self.backend.held.append(self.held)
        return self.held


class Backend(protocol.ServerFactory):
    protocol = BackendConnection

    def __init__(self, name: str, behaviour: Optional[Callable] = None):
        self.name = name
        self.behaviour = behaviour or ok(name)
        self.requests: list[BackendRequest] = []
        self.connections = 0
        self.closed = 0
        self.held: list[defer.Deferred] = []
        self.port = None

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.port.getHost().port

    def stop(self):
        return self.port.stopListening() if self.port is not None else None


def start_backends(testcase, *behaviours_or_names) -> list[Backend]:
    """Start one backend per argument (a name → ``ok(name)``, or ``(name, behaviour)``)."""
    backends = []
    for item in behaviours_or_names:
        if isinstance(item, str):
            backend = Backend(item)
        else:
            backend = Backend(*item)
        backend.port = reactor.listenTCP(0, backend, interface="127.0.0.1")
        testcase.addCleanup(backend.stop)
        backends.append(backend)
    return backends


def closed_port() -> str:
    """An address on 127.0.0.1 where nothing listens (connections are refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return "127.0.0.1:%d" % port


class BlackholeListener:
    """A listening socket that never accepts and whose backlog is full, so further
    connects hang until the connector's timeout (proxy_connect_timeout tests)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(3):
            f = socket.socket()
            f.setblocking(False)
            try:
                f.connect(self.sock.getsockname())
            except BlockingIOError:
                pass
            self.fillers.append(f)

    def close(self):
        for f in self.fillers:
            f.close()
        self.sock.close()


# -- the client -----------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list                      # [(name, value)] str
    body: bytes
    complete: bool = True

    def header(self, name: str) -> Optional[str]:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


class _ResponseCollector:
    def __init__(self):
        self.responses: list[Response] = []
        self._new()

    def _new(self):
        self._headers = []
        self._body = []
        self._status = 0

    def on_status(self, status):
        pass

    def on_header(self, name, value):
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self):
        self._status = self.parser.get_status_code()

    def on_body(self, body):
        self._body.append(body)

    def on_message_complete(self):
        self.responses.append(Response(self._status, self._headers, b"".join(self._body)))
        self._new()


class RawClient(protocol.Protocol):
    """Sends raw bytes; collects every byte and the parsed responses."""

    def __init__(self, head_requests: int = 0):
        self.received = b""
        self.closed = defer.Deferred()
        self._collector = _ResponseCollector()
        self._parser = httptools.HttpResponseParser(self._collector)
        self._collector.parser = self._parser
        self._waiters: list[tuple[int, defer.Deferred]] = []
        self.parse_error = None
        self.is_closed = False

    @property
    def responses(self):
        return self._collector.responses

    def dataReceived(self, data):
        self.received += data
        if self.parse_error is None:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserError as e:
                self.parse_error = e
        self._wake()

    def connectionLost(self, reason):
        self.is_closed = True
        if self.parse_error is None:
            try:
                self._parser.feed_data(b"")
            except httptools.HttpParserError as e:
                self.parse_error = e
        self._wake(final=True)
        self.closed.callback(None)

    def _wake(self, final=False):
        for item in list(self._waiters):
            count, d = item
            if len(self.responses) >= count or final:
                self._waiters.remove(item)
                d.callback(self.responses[:count])

    def wait_responses(self, count: int, timeout: float = WAIT) -> defer.Deferred:
        d = defer.Deferred()
        self._waiters.append((count, d))
        self._wake(final=self.is_closed)
        return d.addTimeout(timeout, reactor)

    def wait_closed(self, timeout: float = WAIT) -> defer.Deferred:
        d = defer.Deferred()
        if self.is_closed:
            d.callback(None)
        else:
            self.closed.addBoth(lambda r: (d.callback(None) if not d.called else None, r)[1])
        return d.addTimeout(timeout, reactor)


_open_clients: list[RawClient] = []


async def connect(port: int, bind: Optional[str] = None) -> RawClient:
    """A client connected to 127.0.0.1:``port``; ``bind`` is the local source address
    (any of 127/8 works on Linux: the whole block is routed to lo)."""
    client = RawClient()
    await protocol.ClientCreator(reactor, lambda: client).connectTCP(
        "127.0.0.1", port, timeout=WAIT,
        bindAddress=(bind, 0) if bind is not None else None,
    )
    _open_clients.append(client)
    return client


def close_clients() -> defer.Deferred:
    """Close every client the harness opened (a test cleanup)."""
    waits = []
    while _open_clients:
        client = _open_clients.pop()
        if not client.is_closed:
            client.transport.loseConnection()
            waits.append(client.wait_closed())
    return defer.gatherResults(waits)


async def request(port: int, raw: bytes, count: int = 1,
                  bind: Optional[str] = None) -> tuple[RawClient, list[Response]]:
    """Send ``raw`` on a new connection and wait for ``count`` responses (or close)."""
    client = await connect(port, bind=bind)
    client.transport.write(raw)
    responses = await client.wait_responses(count)
    return client, responses


async def get(port: int, path: str = "/", host: str = "localhost",
              headers: str = "", bind: Optional[str] = None) -> Response:
    """One GET on its own connection (Connection: close); the parsed response.
    ``bind``: the client's local address, as in :func:`connect`."""
    client, responses = await request(
        port,
        ("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n%s\r\n" % (path, host, headers)).encode(),
        bind=bind,
    )
    await client.wait_closed()
    assert responses, "no response; received %r" % client.received
    return responses[0]


def sleep(seconds: float) -> defer.Deferred:
    return deferLater(reactor, seconds, lambda: None)


# -- the gateway -----------------------------------------------------------------


def proxy_config(servers: str, location_extra: str = "") -> str:
    """One group ``app`` of ``servers`` (TOML inline tables) behind ``location /``,
    which reports ``$upstream_addr`` and ``$upstream_status`` as X-Upstream and
    X-Upstream-Status; ``location_extra`` adds keys to the location."""
    return """
    [gateway]
    access_log = false
    [upstreams.app]
    servers = [ %s ]
    [[servers]]
    listen = ["tcp:0:interface=127.0.0.1"]
    locations = [ { path = "/", proxy_pass = "http://app", add_header = { X-Upstream = "$upstream_addr", X-Upstream-Status = "$upstream_status" } %s } ]
    """ % (servers, location_extra)



async def start_gateway(testcase, toml: str, backends=(), **addresses) -> tuple[GatewayService, int]:
    """Start a gateway from ``toml``; ``{b0}``… are the backends' addresses and any
    keyword replaces ``{name}``. Listen descriptions should use port 0. Returns the
    service and the port of its first listener."""
    values = {"b%d" % i: b.address for i, b in enumerate(backends)}
    values.update(addresses)
    text = textwrap.dedent(toml)
    for key, value in values.items():
        text = text.replace("{%s}" % key, value)
    if "[admin]" not in text:
        # the documented default would listen on port 9901 in every test
        text += "\n[admin]\nlisten = false\n"
    config = parse_config(tomllib.loads(text), "/tmp/gateway-test.toml")
    service = GatewayService(config, reactor)
    service.startService()
    testcase.addCleanup(service.stopService)
    testcase.addCleanup(close_clients)     # runs first: cleanups are last in, first out
    ports = await service.listening()
    return service, next(iter(ports.values())).getHost().port
