"""WebSocket and other Upgrades through the gateway: real sockets, wsproto on both ends.

Backends here are WebSocket echo servers (wsproto) or raw line servers, clients are
wsproto clients or raw sockets. Every wait is bounded (``WAIT``); timing tests use wide
margins around ``proxy_read_timeout``.
"""
from __future__ import annotations

import hashlib
import os
import struct
import tempfile

from twisted.internet import defer, protocol, reactor
from twisted.internet import ssl as tssl
from twisted.internet.interfaces import IPushProducer
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection, BytesMessage, CloseConnection, Message, Request, TextMessage,
)
from zope.interface import implementer

from gateway.http.proxy import ProxyHandler
from tests.integration.harness import (
    WAIT, closed_port, request, sleep, start_backends, start_gateway,
)
from tests.tls.pki import PKI

# $upstream_addr and $upstream_status on every response, the 101 included
CONFIG = """
[gateway]
access_log = false
[upstreams.app]
servers = [ %s ]
%s
[[servers]]
listen = ["tcp:0:interface=127.0.0.1"]
locations = [ { path = "/", proxy_pass = "http://app", add_header = { X-Upstream = "$upstream_addr", X-Upstream-Status = "$upstream_status" } %s } ]
"""


def config(servers: str = '{ address = "{b0}" }', group: str = "", location: str = "") -> str:
    return CONFIG % (servers, group, location)


def handlers(service) -> list:
    """The gateway's proxy handlers (each keeps its live tunnels in ``tunnels``)."""
    found = []
    for _, routes, _ in service.site._routes.values():
        found += [r.handler for r in routes.values() if isinstance(r.handler, ProxyHandler)]
    return found


def live_tunnels(service) -> list:
    return [t for h in handlers(service) for t in h.tunnels]


def wait_for(predicate, timeout: float = WAIT, step: float = 0.02) -> defer.Deferred:
    """Poll ``predicate`` until true; fails after ``timeout``."""
    async def poll():
        waited = 0.0
        while not predicate():
            if waited >= timeout:
                raise AssertionError("condition not met within %.1fs" % timeout)
            await sleep(step)
            waited += step
    return defer.ensureDeferred(poll())


def bounded(d: defer.Deferred, timeout: float = WAIT) -> defer.Deferred:
    return d.addTimeout(timeout, reactor)


def masked_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final client frame (RFC 6455 §5.2), masked as a client must."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


# -- wsproto on both ends --------------------------------------------------------------


class _WSPeer(protocol.Protocol):
    """A wsproto connection over a Twisted transport: assembles messages, answers
    closes, and records what happened."""

    role = ConnectionType.CLIENT

    def __init__(self):
        self.ws = WSConnection(self.role)
        self.messages: list = []
        self._waiting: list = []
        self.close_code = None
        self.closed = defer.Deferred()
        self.is_closed = False
        self._parts: list = []

    def dataReceived(self, data):
        self.ws.receive_data(data)
        for event in self.ws.events():
            self.event(event)

    def event(self, event):
        if isinstance(event, Message):
            self._parts.append(event.data)
            if event.message_finished:
                parts, self._parts = self._parts, []
                message = ("".join(parts) if isinstance(event, TextMessage)
                           else b"".join(parts))
                self.message(message)
        elif isinstance(event, CloseConnection):
            self.close_code = event.code
            if self.ws.state.name == "REMOTE_CLOSING":
                self.transport.write(self.ws.send(event.response()))
            self.transport.loseConnection()

    def message(self, message):
        self.messages.append(message)
        while self._waiting and self.messages:
            self._waiting.pop(0).callback(self.messages.pop(0))

    def next_message(self, timeout: float = WAIT) -> defer.Deferred:
        d = defer.Deferred()
        self._waiting.append(d)
        while self._waiting and self.messages:
            self._waiting.pop(0).callback(self.messages.pop(0))
        return bounded(d, timeout)

    def send(self, message) -> None:
        event = TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
        self.transport.write(self.ws.send(event))

    def close(self, code: int = 1000) -> None:
        self.transport.write(self.ws.send(CloseConnection(code=code)))

    def connectionLost(self, reason):
        self.is_closed = True
        self.closed.callback(None)

    def wait_closed(self, timeout: float = WAIT) -> defer.Deferred:
        d = defer.Deferred()
        if self.is_closed:
            d.callback(None)
        else:
            self.closed.addBoth(lambda r: (d.callback(None) if not d.called else None, r)[1])
        return bounded(d, timeout)


class WSClient(_WSPeer):
    """Sends the handshake (plus ``extra`` bytes in the same write) on connect."""

    def __init__(self, path: str = "/ws", extra: bytes = b""):
        super().__init__()
        self.path = path
        self.extra = extra
        self.accepted = defer.Deferred()
        self.accept_headers: dict = {}

    def connectionMade(self):
        self.transport.write(self.ws.send(Request(host="localhost", target=self.path))
                             + self.extra)

    def event(self, event):
        if isinstance(event, AcceptConnection):
            self.accept_headers = {k.decode().lower(): v.decode()
                                   for k, v in event.extra_headers}
            self.accepted.callback(self.accept_headers)
        else:
            super().event(event)


class WSServerConnection(_WSPeer):
    role = ConnectionType.SERVER

    def connectionMade(self):
        self.backend = self.factory
        self.backend.connections.append(self)
        self.request = None

    def event(self, event):
        if isinstance(event, Request):
            self.request = event
            reply = self.ws.send(AcceptConnection(
                extra_headers=[(b"X-Backend", self.backend.name.encode())]))
            if self.backend.greeting is not None:
                # in the same write as the 101
                reply += self.ws.send(TextMessage(data=self.backend.greeting))
            self.transport.write(reply)
            self.backend.accepted.append(self)
        else:
            super().event(event)

    def message(self, message):
        self.backend.received.append(message)
        if self.backend.echo:
            self.send(message)

    def connectionLost(self, reason):
        self.backend.closed += 1
        super().connectionLost(reason)


class WSBackend(protocol.ServerFactory):
    """A WebSocket echo server; ``greeting`` is sent along with the 101."""

    protocol = WSServerConnection

    def __init__(self, name: str, greeting=None, echo: bool = True):
        self.name = name
        self.greeting = greeting
        self.echo = echo
        self.connections: list = []
        self.accepted: list = []
        self.received: list = []
        self.closed = 0
        self.port = None

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.port.getHost().port


def start_ws_backends(testcase, *names, greeting=None, echo=True) -> list:
    backends = []
    for name in names:
        backend = WSBackend(name, greeting, echo)
        backend.port = reactor.listenTCP(0, backend, interface="127.0.0.1")
        testcase.addCleanup(backend.port.stopListening)
        backends.append(backend)
    return backends


_clients: list = []


async def ws_connect(port: int, path: str = "/ws", extra: bytes = b"") -> WSClient:
    client = WSClient(path, extra)
    await protocol.ClientCreator(reactor, lambda: client).connectTCP(
        "127.0.0.1", port, timeout=WAIT)
    _clients.append(client)
    return client


def close_ws_clients() -> defer.Deferred:
    waits = []
    while _clients:
        client = _clients.pop()
        if not client.is_closed:
            client.transport.abortConnection()
            waits.append(client.wait_closed())
    return defer.gatherResults(waits)


async def ws_gateway(testcase, backends, **kw):
    service, port = await start_gateway(testcase, config(**kw), backends)
    testcase.addCleanup(close_ws_clients)
    return service, port


# -- a raw line protocol behind "Upgrade: foo" ----------------------------------------


class LineServer(protocol.Protocol):
    """Answers any head with ``101`` + ``Upgrade: foo``, then upper-cases each line;
    a client that asks for no upgrade still gets the 101, followed by a secret."""

    def connectionMade(self):
        self.factory.connections.append(self)
        self.buffer = b""
        self.upgraded = False
        self.head = b""

    def dataReceived(self, data):
        self.buffer += data
        if not self.upgraded:
            if b"\r\n\r\n" not in self.buffer:
                return
            self.head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.upgraded = True
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\n"
                                 b"Connection: Upgrade\r\n\r\n" + self.factory.after_101)
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.transport.write(line.upper() + b"\n")


class LineBackend(protocol.ServerFactory):
    protocol = LineServer

    def __init__(self, after_101: bytes = b""):
        self.after_101 = after_101
        self.connections: list = []
        self.port = None

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.port.getHost().port


def start_line_backend(testcase, after_101: bytes = b"") -> LineBackend:
    backend = LineBackend(after_101)
    backend.port = reactor.listenTCP(0, backend, interface="127.0.0.1")
    testcase.addCleanup(backend.port.stopListening)
    return backend


class ByteClient(protocol.Protocol):
    """Records every byte; no HTTP parsing (the harness's client stops at a 101)."""

    def __init__(self):
        self.received = b""
        self.closed = defer.Deferred()
        self.is_closed = False

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.is_closed = True
        self.closed.callback(None)

    def wait_closed(self, timeout: float = WAIT) -> defer.Deferred:
        d = defer.Deferred()
        if self.is_closed:
            d.callback(None)
        else:
            self.closed.addBoth(lambda r: (d.callback(None) if not d.called else None, r)[1])
        return bounded(d, timeout)


async def byte_connect(testcase, port: int) -> ByteClient:
    client = ByteClient()
    await protocol.ClientCreator(reactor, lambda: client).connectTCP(
        "127.0.0.1", port, timeout=WAIT)
    testcase.addCleanup(lambda: None if client.is_closed else client.transport.abortConnection())
    return client


class HeadServer(protocol.Protocol):
    """Answers the first head with the factory's raw ``response`` and closes."""

    def connectionMade(self):
        self.buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.factory.heads.append(head)
            self.transport.write(self.factory.response)
            self.transport.loseConnection()


def start_head_backend(testcase, response: bytes):
    factory = protocol.ServerFactory()
    factory.protocol = HeadServer
    factory.response = response
    factory.heads = []
    factory.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    factory.address = "127.0.0.1:%d" % factory.port.getHost().port
    testcase.addCleanup(factory.port.stopListening)
    return factory


UPGRADE_FOO = (b"GET /line HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n"
               b"Upgrade: foo\r\n\r\n")


# -- tests ---------------------------------------------------------------------------


class Handshake(unittest.TestCase):
    async def test_handshake_and_echo(self):
        """The 101 is relayed (with the peer's headers and the location's add_header)
        and messages echo through the tunnel; the peer saw Upgrade and Connection."""
        (backend,) = start_ws_backends(self, "a")
        _, port = await ws_gateway(self, [backend])
        client = await ws_connect(port)
        headers = await bounded(client.accepted)
        self.assertEqual((headers["x-backend"], headers["x-upstream"],
                          headers["x-upstream-status"]),
                         ("a", backend.address, "101"))
        client.send("hello")
        self.assertEqual(await client.next_message(), "hello")
        client.send(b"\x00\x01binary")
        self.assertEqual(await client.next_message(), b"\x00\x01binary")
        request_headers = {k.decode().lower(): v.decode()
                           for k, v in backend.accepted[0].request.extra_headers}
        # wsproto checked Upgrade/Connection itself to accept; these are the rest
        self.assertEqual(request_headers["x-forwarded-for"], "127.0.0.1")

    async def test_101_head_as_the_client_sees_it(self):
        """Upgrade and "Connection: upgrade" reach the client; nothing after the head."""
        backend = start_line_backend(self)
        _, port = await start_gateway(self, config(), [backend])
        client = await byte_connect(self, port)
        client.transport.write(UPGRADE_FOO)
        await wait_for(lambda: b"\r\n\r\n" in client.received)
        head = client.received.split(b"\r\n\r\n")[0].split(b"\r\n")
        self.assertEqual(head[0], b"HTTP/1.1 101 Switching Protocols")
        self.assertIn(b"Upgrade: foo", head)
        self.assertIn(b"Connection: upgrade", head)
        self.assertNotIn(b"Connection: Upgrade", head)
        self.assertEqual([h for h in head if h.lower().startswith(b"content-length")
                          or h.lower().startswith(b"transfer-encoding")], [])
        seen = backend.connections[0].head.split(b"\r\n")
        self.assertIn(b"Upgrade: foo", seen)
        self.assertIn(b"Connection: upgrade", seen)

    async def test_non_websocket_upgrade_is_tunnelled(self):
        """`Upgrade: foo` with a line protocol: bytes pass unchanged both ways, the
        first line even in the same write as the request."""
        backend = start_line_backend(self)
        _, port = await start_gateway(self, config(), [backend])
        client = await byte_connect(self, port)
        client.transport.write(UPGRADE_FOO + b"first line\n")
        await wait_for(lambda: b"FIRST LINE\n" in client.received)
        client.transport.write(b"second\nthird\n")
        await wait_for(lambda: client.received.endswith(b"FIRST LINE\nSECOND\nTHIRD\n"))

    async def test_non_101_answer_leaves_the_connection_http(self):
        """A 426 to an Upgrade request is a normal response; the next request on the
        same connection, sent in the same write, is parsed as HTTP."""
        backend = start_head_backend(
            self, b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno")
        _, port = await start_gateway(self, config(), [backend])
        client, responses = await request(
            port, UPGRADE_FOO + b"GET /next HTTP/1.1\r\nHost: localhost\r\n\r\n", count=2)
        self.assertEqual([(r.status, r.body) for r in responses], [(426, b"no"), (426, b"no")])
        first, second = [head.split(b"\r\n") for head in backend.heads]
        self.assertEqual((first[0], second[0]),
                         (b"GET /line HTTP/1.1", b"GET /next HTTP/1.1"))
        self.assertIn(b"Upgrade: foo", first)
        self.assertIn(b"Connection: upgrade", first)
        self.assertEqual([h for h in second if h.lower().startswith(b"upgrade")], [])
        self.assertFalse(client.is_closed)


class NoTunnel(unittest.TestCase):
    async def test_101_to_a_request_without_upgrade_is_a_502(self):
        """A peer switching protocols unasked gets no tunnel: 502, and the client never
        sees the bytes it sent after its 101."""
        backend = start_line_backend(self, after_101=b"SECRET")
        service, port = await start_gateway(self, config(), [backend])
        client, (response,) = await request(
            port, b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await client.wait_closed()
        self.assertEqual((response.status, response.header("X-Upstream-Status")),
                         (502, "502"))
        self.assertTrue(client.received.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"))
        self.assertNotIn(b"SECRET", client.received)
        self.assertEqual(live_tunnels(service), [])
        peer = service.manager.group("app").peers[0]
        self.assertEqual((peer.conns, peer.failures), (0, 1))   # invalid_header

    async def test_an_h2c_upgrade_is_proxied_as_an_ordinary_request(self):
        """Upgrade: h2c would give the client an HTTP/2 channel to the peer past the
        location's access rules ("h2c smuggling"): it goes without Upgrade, and a 101
        the peer sends anyway is a 502."""
        backends = start_backends(self, "plain")
        _, port = await start_gateway(self, config(), backends)
        h2c = (b"GET /line HTTP/1.1\r\nHost: localhost\r\n"
               b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
               b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
        client, (response,) = await request(port, h2c)
        self.assertEqual((response.status, response.body), (200, b"plain"))
        self.assertNotIn("upgrade", backends[0].requests[0].headers)
        self.assertNotIn("http2-settings", backends[0].requests[0].headers)
        line = start_line_backend(self, after_101=b"SECRET")
        _, port = await start_gateway(self, config(), [line])
        client, (response,) = await request(port, h2c)
        self.assertEqual(response.status, 502)
        self.assertNotIn(b"SECRET", client.received)

    async def test_proxy_websocket_false_forwards_no_upgrade(self):
        """With proxy_websocket = false the request goes without Upgrade/Connection:
        upgrade, and a 101 the peer sends anyway is a 502."""
        backends = start_backends(self, "plain")
        _, port = await start_gateway(self, config(location=", proxy_websocket = false"),
                                      backends)
        client, (response,) = await request(port, UPGRADE_FOO)
        self.assertEqual((response.status, response.body), (200, b"plain"))
        self.assertNotIn("upgrade", backends[0].requests[0].headers)
        self.assertNotIn("connection", backends[0].requests[0].headers)   # keepalive
        line = start_line_backend(self, after_101=b"SECRET")
        _, port = await start_gateway(self, config(location=", proxy_websocket = false"),
                                      [line])
        client, (response,) = await request(port, UPGRADE_FOO)
        self.assertEqual(response.status, 502)
        self.assertNotIn(b"SECRET", client.received)


class Frames(unittest.TestCase):
    async def test_one_48k_frame_and_ten_interleaved_pairs_in_order(self):
        (backend,) = start_ws_backends(self, "a")
        _, port = await ws_gateway(self, [backend])
        client = await ws_connect(port)
        await bounded(client.accepted)
        big = os.urandom(48 * 1024)
        client.send(big)
        self.assertEqual(await client.next_message(), big)
        sent = []
        for i in range(10):
            large = bytes([i]) * (48 * 1024 + i)
            small = "small %d" % i
            client.send(large)
            client.send(small)
            sent += [large, small]
        received = [await client.next_message() for _ in sent]
        self.assertEqual(received, sent)
        self.assertEqual(backend.received, [big] + sent)

    async def test_frames_pipelined_with_both_handshakes_are_not_lost(self):
        """The client's frame in the same write as its request, the peer's greeting in
        the same write as its 101: both arrive, in order."""
        (backend,) = start_ws_backends(self, "a", greeting="greeting")
        _, port = await ws_gateway(self, [backend])
        client = await ws_connect(port, extra=masked_frame(b"pipelined"))
        await bounded(client.accepted)
        self.assertEqual(await client.next_message(), "greeting")
        self.assertEqual(await client.next_message(), "pipelined")
        client.send("after")
        self.assertEqual(await client.next_message(), "after")


class Closing(unittest.TestCase):
    async def _open(self):
        (backend,) = start_ws_backends(self, "a")
        service, port = await ws_gateway(self, [backend])
        client = await ws_connect(port)
        await bounded(client.accepted)
        client.send("x")
        await client.next_message()
        peer = service.manager.group("app").peers[0]
        self.assertEqual(peer.conns, 1)
        self.assertEqual((service.metrics.tunnels, service.metrics.tunnels_total), (1, 1))
        return service, backend, client, peer

    async def test_close_by_the_client_ends_both_connections(self):
        service, backend, client, peer = await self._open()
        client.close()
        await client.wait_closed()
        await backend.connections[0].wait_closed()
        self.assertEqual((client.close_code, backend.connections[0].close_code), (1000, 1000))
        await wait_for(lambda: not live_tunnels(service))
        self.assertEqual(peer.conns, 0)
        self.assertEqual((service.metrics.tunnels, service.metrics.tunnels_total), (0, 1))

    async def test_close_by_the_backend_ends_both_connections(self):
        service, backend, client, peer = await self._open()
        backend.connections[0].close(1001)
        await backend.connections[0].wait_closed()
        await client.wait_closed()
        self.assertEqual(client.close_code, 1001)
        await wait_for(lambda: not live_tunnels(service))
        self.assertEqual(peer.conns, 0)

    async def test_tcp_close_without_a_close_frame_propagates(self):
        """A client that just drops TCP: the peer's connection ends too."""
        service, backend, client, peer = await self._open()
        client.transport.loseConnection()
        await backend.connections[0].wait_closed()
        await wait_for(lambda: not live_tunnels(service))
        self.assertEqual(peer.conns, 0)


class IdleTimeout(unittest.TestCase):
    async def test_idle_tunnel_closes_both_sides_within_timeout_plus_one_second(self):
        (backend,) = start_ws_backends(self, "a")
        service, port = await ws_gateway(self, [backend],
                                         location=', proxy_read_timeout = "1s"')
        client = await ws_connect(port)
        await bounded(client.accepted)
        opened = reactor.seconds()
        await client.wait_closed(timeout=2.0)
        await backend.connections[0].wait_closed(timeout=1.0)
        self.assertGreaterEqual(reactor.seconds() - opened, 0.9)
        self.assertEqual(service.manager.group("app").peers[0].conns, 0)

    async def test_traffic_either_way_keeps_the_tunnel_alive(self):
        """0.9 s of client → peer bytes only, then 0.9 s of peer → client bytes only,
        with a 0.6 s idle limit: the tunnel lives through both."""
        (backend,) = start_ws_backends(self, "a", echo=False)
        _, port = await ws_gateway(self, [backend], location=', proxy_read_timeout = "0.6s"')
        client = await ws_connect(port)
        await bounded(client.accepted)
        server = backend.connections[0]
        opened = reactor.seconds()
        for i in range(6):
            await sleep(0.15)
            client.send("c%d" % i)
        await wait_for(lambda: len(backend.received) == 6)
        for i in range(6):
            await sleep(0.15)
            server.send("p%d" % i)
            self.assertEqual(await client.next_message(), "p%d" % i)
        self.assertGreater(reactor.seconds() - opened, 1.7)
        self.assertFalse(client.is_closed)
        self.assertFalse(server.is_closed)
        await client.wait_closed(timeout=1.6)   # idle now: closed after 0.6 s


class Balancing(unittest.TestCase):
    async def test_max_conns_one_with_a_live_tunnel_sends_the_next_client_elsewhere(self):
        backends = start_ws_backends(self, "a", "b")
        _, port = await ws_gateway(
            self, backends,
            servers='{ address = "{b0}", weight = 10, max_conns = 1 }, { address = "{b1}" }')
        first = await ws_connect(port)
        self.assertEqual((await bounded(first.accepted))["x-backend"], "a")
        second = await ws_connect(port)
        self.assertEqual((await bounded(second.accepted))["x-backend"], "b")
        first.close()
        await backends[0].connections[0].wait_closed()
        await sleep(0.05)
        third = await ws_connect(port)
        self.assertEqual((await bounded(third.accepted))["x-backend"], "a")

    async def test_least_conn_counts_tunnels(self):
        backends = start_ws_backends(self, "a", "b")
        service, port = await ws_gateway(
            self, backends, servers='{ address = "{b0}" }, { address = "{b1}" }',
            group="balance = \"least_conn\"")
        tunnel = await ws_connect(port)
        holder = (await bounded(tunnel.accepted))["x-backend"]
        other = "b" if holder == "a" else "a"
        snapshot = service.manager.snapshot()["app"]
        active = {p["address"]: p["active"] for p in snapshot["peers"]}
        self.assertEqual(sorted(active.values()), [0, 1])
        for _ in range(3):       # plain requests all go to the peer without a tunnel
            client = await ws_connect(port)
            self.assertEqual((await bounded(client.accepted))["x-backend"], other)
            client.close()
            await client.wait_closed()
            await sleep(0.05)


class Retries(unittest.TestCase):
    async def test_refused_peer_is_retried_before_the_handshake(self):
        (backend,) = start_ws_backends(self, "a")
        refused = closed_port()
        _, port = await ws_gateway(
            self, [backend], servers='{ address = "%s" }, { address = "{b0}" }' % refused)
        client = await ws_connect(port)
        headers = await bounded(client.accepted)
        self.assertEqual((headers["x-upstream"], headers["x-upstream-status"]),
                         ("%s, %s" % (refused, backend.address), "502, 101"))
        client.send("ok")
        self.assertEqual(await client.next_message(), "ok")


class AccessLogLine(unittest.TestCase):
    async def test_tunnel_is_logged_when_it_ends(self):
        """$status 101, the peer, bytes each way and the tunnel's duration."""
        backend = start_line_backend(self)
        path = tempfile.mktemp(prefix="gateway-ws-log-")
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        toml = config().replace(
            "access_log = false",
            'access_log = "%s"\naccess_log_format = "$status $upstream_addr '
            '$upstream_status $bytes_sent $upstream_bytes_sent $upstream_bytes_received '
            '$request_time"' % path)
        service, port = await start_gateway(self, toml, [backend])
        client = await byte_connect(self, port)
        client.transport.write(UPGRADE_FOO + b"abc\n")
        await wait_for(lambda: client.received.endswith(b"ABC\n"))
        head_length = len(client.received) - 4
        await sleep(0.3)
        client.transport.write(b"defgh\n")
        await wait_for(lambda: client.received.endswith(b"DEFGH\n"))
        client.transport.loseConnection()
        await client.wait_closed()
        await wait_for(lambda: not live_tunnels(service))
        service.access_log.flush()
        with open(path) as f:
            fields = f.read().split()
        request_head = backend.connections[0].head + b"\r\n\r\n"
        upstream_head = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\n"
                         b"Connection: Upgrade\r\n\r\n")
        self.assertEqual(fields[:6], [
            "101", backend.address, "101",
            str(head_length + 10),                    # the 101 head, ABC\n, DEFGH\n
            str(len(request_head) + 10),              # the request, abc\n, defgh\n
            str(len(upstream_head) + 10),
        ])
        self.assertGreaterEqual(float(fields[6]), 0.3)


@implementer(IPushProducer)
class _Flood:
    """Writes 64 KiB chunks of a known stream for as long as the transport takes them."""

    CHUNK = 64 * 1024

    def __init__(self, transport, limit: int):
        self.transport = transport
        self.limit = limit
        self.sent = 0
        self.paused = False
        self.digest = hashlib.sha256()
        self.stopped = False

    def resumeProducing(self):
        self.paused = False
        while not self.paused and not self.stopped and self.sent < self.limit:
            chunk = struct.pack("!Q", self.sent) * (self.CHUNK // 8)
            self.digest.update(chunk)
            self.sent += len(chunk)
            self.transport.write(chunk)
        if self.sent >= self.limit and not self.stopped:
            self.stopped = True
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def pauseProducing(self):
        self.paused = True

    def stopProducing(self):
        self.stopped = True


class FloodServer(protocol.Protocol):
    def connectionMade(self):
        self.buffer = b""
        self.flood = None
        self.factory.servers.append(self)

    def dataReceived(self, data):
        self.buffer += data
        if self.flood is None and b"\r\n\r\n" in self.buffer:
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: flood\r\n"
                                 b"Connection: upgrade\r\n\r\n")
            self.flood = _Flood(self.transport, self.factory.limit)
            self.transport.registerProducer(self.flood, True)
            self.flood.resumeProducing()


class CountingClient(protocol.Protocol):
    def __init__(self):
        self.head = b""
        self.count = 0
        self.digest = hashlib.sha256()
        self.closed = defer.Deferred()

    def dataReceived(self, data):
        if not self.head:
            head, sep, rest = data.partition(b"\r\n\r\n")
            self.head = head + sep
            data = rest
        self.count += len(data)
        self.digest.update(data)

    def connectionLost(self, reason):
        self.closed.callback(None)


class Backpressure(unittest.TestCase):
    async def test_a_client_that_stops_reading_pauses_the_peer_and_drains_later(self):
        """While the client reads nothing, the gateway stops reading the flooding peer
        (the peer's own writes back up) and holds at most a few reads of it; once the
        client reads again every byte arrives, in order."""
        limit = 256 * 1024 * 1024      # far more than any kernel buffers along the way
        factory = protocol.ServerFactory()
        factory.protocol = FloodServer
        factory.servers = []
        factory.limit = limit
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        address = "127.0.0.1:%d" % listening.getHost().port
        service, port = await start_gateway(
            self, config('{ address = "%s" }' % address, location=', proxy_read_timeout = "30s"'))
        client = CountingClient()
        await protocol.ClientCreator(reactor, lambda: client).connectTCP(
            "127.0.0.1", port, timeout=WAIT)
        self.addCleanup(lambda: client.transport.abortConnection())
        client.transport.pauseProducing()      # the client reads nothing
        client.transport.write(UPGRADE_FOO)
        await wait_for(lambda: factory.servers and factory.servers[0].flood is not None)
        flood = factory.servers[0].flood
        await wait_for(lambda: flood.paused)   # the peer cannot write any more
        await sleep(0.2)
        (tunnel,) = live_tunnels(service)
        self.assertTrue(tunnel.upstream.paused)        # not reading the peer
        self.assertFalse(tunnel.downstream.paused)     # the client side is not held
        # what the gateway holds for the client: about one transport buffer and a read
        self.assertLess(tunnel.downstream.buffered, 4 * 64 * 1024)
        self.assertLess(flood.sent, limit)
        sent_while_stalled = flood.sent
        await sleep(0.2)
        self.assertEqual(flood.sent, sent_while_stalled)   # still stalled, no growth
        # the client reads again: every byte arrives
        flood.limit = flood.sent + 8 * 1024 * 1024
        client.transport.resumeProducing()
        await bounded(client.closed, 30)
        self.assertEqual(client.count, flood.sent)
        self.assertEqual(client.digest.hexdigest(), flood.digest.hexdigest())
        self.assertGreater(tunnel.upstream.pauses, 0)


class OverTLS(unittest.TestCase):
    async def test_websocket_over_a_tls_listener_to_an_https_upstream(self):
        """TLS on both sides: the tunnel relays and closes through TLS transports."""
        pki = PKI(self)
        gateway_pem, gateway_key = pki.server_files("gateway", "localhost")
        backend_pem, backend_key = pki.server_files("backend", "backend.test")
        with open(backend_pem, "rb") as f:
            pem = f.read()
        with open(backend_key, "rb") as f:
            pem_key = f.read()
        backend_options = tssl.PrivateCertificate.loadPEM(pem_key + pem).options()
        backend = WSBackend("tls-backend")
        backend.port = reactor.listenTCP(
            0, TLSMemoryBIOFactory(backend_options, False, backend), interface="127.0.0.1")
        self.addCleanup(backend.port.stopListening)
        toml = """
        [gateway]
        access_log = false
        [upstreams.app]
        servers = [ { address = "{b0}" } ]
        tls = { ca = "%s", server_name = "backend.test" }
        [[servers]]
        listen = ["tcp:0:interface=127.0.0.1"]
        server_name = ["localhost"]
        tls = { certificate = "%s", key = "%s" }
        locations = [ { path = "/", proxy_pass = "https://app" } ]
        """ % (pki.ca_path, gateway_pem, gateway_key)
        service, port = await start_gateway(self, toml, [backend])
        self.addCleanup(close_ws_clients)
        with open(pki.ca_path, "rb") as f:
            trust = tssl.Certificate.loadPEM(f.read())
        options = tssl.optionsForClientTLS("localhost", trust,
                                           acceptableProtocols=[b"http/1.1"])
        client = WSClient()
        await protocol.ClientCreator(reactor, lambda: client).connectSSL(
            "127.0.0.1", port, options, timeout=WAIT)
        _clients.append(client)
        self.assertEqual((await bounded(client.accepted))["x-backend"], "tls-backend")
        big = os.urandom(200 * 1024)
        client.send(big)
        self.assertEqual(await client.next_message(), big)
        client.close()
        await client.wait_closed()
        await backend.connections[0].wait_closed()
        self.assertEqual(client.close_code, 1000)
        await wait_for(lambda: not live_tunnels(service))
        self.assertEqual(service.manager.group("app").peers[0].conns, 0)
