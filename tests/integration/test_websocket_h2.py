"""WebSocket over HTTP/2 (RFC 8441) through the gateway to HTTP/1.1 WebSocket backends,
on real sockets.

The client is the ``h2`` library's connection with a ``wsproto`` frame-level connection
per extended-CONNECT stream (:class:`H2WebSocketClient`), on cleartext with prior
knowledge and on TLS with ALPN ``h2``; the backends are the wsproto echo servers of
``test_websocket``. Covered: the handshake (200 to the client, a real HTTP/1.1 handshake
to the peer), echo both ways, a large message under a small client window (the
gateway's buffer for the stream stays bounded and the peer is paused), each way a
tunnel can end (close frames from either side, END_STREAM, RST_STREAM) closing the
peer's TCP connection, the lease held while open and released after, and a non-101
answer relayed on the stream. Every wait is bounded (``WAIT``).
"""
from __future__ import annotations

import os

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived, RemoteSettingsChanged, ResponseReceived, StreamEnded, StreamReset,
    WindowUpdated,
)
from h2.settings import SettingCodes
from twisted.internet import defer, protocol, reactor, ssl
from twisted.internet.interfaces import INegotiated
from twisted.trial import unittest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, TextMessage

from gateway.http.h2 import STREAM_BUFFER
from tests.integration.harness import WAIT, sleep, start_gateway
from tests.integration.test_h2 import _tls_files
from tests.integration.test_websocket import (
    bounded, live_tunnels, start_head_backend, start_ws_backends, wait_for,
)

CONFIG = """
[gateway]
access_log = false
[upstreams.app]
servers = [ { address = "{b0}" } ]
[[servers]]
listen = ["tcp:0:interface=127.0.0.1"]
http2 = true
%s
locations = [ { path = "/", proxy_pass = "http://app", add_header = { X-Upstream-Status = "$upstream_status" } } ]
"""


class WebSocketStream:
    """One extended-CONNECT stream carrying a client-side WebSocket (wsproto without
    the HTTP/1.1 handshake, which RFC 8441 replaces)."""

    def __init__(self, client: "H2WebSocketClient", stream_id: int):
        self.client = client
        self.stream_id = stream_id
        self.ws = Connection(ConnectionType.CLIENT)
        self.headers: dict = {}
        self.response = defer.Deferred()
        self.body = b""
        self.received = 0            # DATA bytes
        self.messages: list = []
        self._parts: list = []
        self._waiting: list = []
        self.close_code = None
        self.ended = defer.Deferred()
        self.reset = None
        self.outbox = b""           # bytes waiting for the stream's send window

    @property
    def status(self) -> int:
        return int(self.headers[b":status"])

    def data(self, data: bytes) -> None:
        self.received += len(data)
        if self.status != 200:
            self.body += data
            return
        if not data:
            return          # the empty DATA frame that carries END_STREAM
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, Message):
                self._parts.append(event.data)
                if event.message_finished:
                    parts, self._parts = self._parts, []
                    joined = ("".join(parts) if isinstance(event, TextMessage)
                              else b"".join(parts))
                    self.messages.append(joined)
                    self._wake()
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                if self.ws.state.name == "REMOTE_CLOSING":
                    self.write(self.ws.send(event.response()))

    def _wake(self) -> None:
        while self._waiting and self.messages:
            self._waiting.pop(0).callback(self.messages.pop(0))

    def next_message(self, timeout: float = WAIT) -> defer.Deferred:
        d = defer.Deferred()
        self._waiting.append(d)
        self._wake()
        return bounded(d, timeout)

    def send(self, message) -> None:
        event = (TextMessage(data=message) if isinstance(message, str)
                 else BytesMessage(data=message))
        self.write(self.ws.send(event))

    def close(self, code: int = 1000) -> None:
        self.write(self.ws.send(CloseConnection(code=code)))

    def write(self, data: bytes) -> None:
        self.outbox += data
        self.client.pump(self)

    def finish(self) -> defer.Deferred:
        return bounded(self.ended)


class H2WebSocketClient(protocol.Protocol):
    """An HTTP/2 client connection (``h2``) opening WebSockets with extended CONNECT.
    ``auto_ack=False`` hands no window back until :meth:`ack`: a client that reads
    slowly."""

    def __init__(self, settings=None, auto_ack: bool = True):
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.settings = settings
        self.auto_ack = auto_ack
        self.streams: dict = {}
        self.unacked: dict = {}
        self.server_settings = defer.Deferred()
        self.lost = defer.Deferred()
        self.is_lost = False

    def connectionMade(self):
        self.conn.initiate_connection()
        if self.settings:
            self.conn.update_settings(self.settings)
        self._flush()

    def dataReceived(self, data):
        ended = []          # fired once the whole read is processed (a RST may follow)
        for event in self.conn.receive_data(data):
            stream = self.streams.get(getattr(event, "stream_id", None))
            if isinstance(event, RemoteSettingsChanged):
                if not self.server_settings.called:
                    self.server_settings.callback(self.conn.remote_settings)
            elif isinstance(event, ResponseReceived):
                stream.headers = dict(event.headers)
                stream.response.callback(stream.headers)
            elif isinstance(event, DataReceived):
                stream.data(event.data)
                if self.auto_ack:
                    self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                        event.stream_id)
                else:
                    self.unacked[event.stream_id] = (
                        self.unacked.get(event.stream_id, 0) + event.flow_controlled_length)
            elif isinstance(event, StreamEnded):
                ended.append(stream)
            elif isinstance(event, StreamReset) and stream is not None:
                stream.reset = event.error_code
                ended.append(stream)
            elif isinstance(event, WindowUpdated):
                for waiting in list(self.streams.values()):
                    if waiting.outbox:
                        self.pump(waiting)
        self._flush()
        for stream in ended:
            if not stream.ended.called:
                stream.ended.callback(None)

    def connectionLost(self, reason=None):
        self.is_lost = True
        self.lost.callback(None)

    def _flush(self):
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    def websocket(self, path: str = "/ws", headers=()) -> WebSocketStream:
        stream_id = self.conn.get_next_available_stream_id()
        stream = self.streams[stream_id] = WebSocketStream(self, stream_id)
        self.conn.send_headers(stream_id, [
            (b":method", b"CONNECT"), (b":protocol", b"websocket"),
            (b":scheme", b"http"), (b":path", path.encode()),
            (b":authority", b"localhost"), (b"sec-websocket-version", b"13"), *headers])
        self._flush()
        return stream

    def pump(self, stream: WebSocketStream) -> None:
        """Send what the stream's and connection's windows allow of its outbox."""
        while stream.outbox:
            size = min(len(stream.outbox), self.conn.max_outbound_frame_size,
                       self.conn.local_flow_control_window(stream.stream_id))
            if size <= 0:
                break
            self.conn.send_data(stream.stream_id, stream.outbox[:size])
            stream.outbox = stream.outbox[size:]
        self._flush()

    def end_stream(self, stream: WebSocketStream) -> None:
        self.conn.end_stream(stream.stream_id)
        self._flush()

    def reset_stream(self, stream: WebSocketStream) -> None:
        self.conn.reset_stream(stream.stream_id, ErrorCodes.CANCEL)
        self._flush()

    def ack(self, stream: WebSocketStream) -> None:
        size = self.unacked.pop(stream.stream_id, 0)
        if size:
            self.conn.acknowledge_received_data(size, stream.stream_id)
            self._flush()


async def h2c_connect(testcase, port: int, **kwargs) -> H2WebSocketClient:
    client = H2WebSocketClient(**kwargs)
    await protocol.ClientCreator(reactor, lambda: client).connectTCP(
        "127.0.0.1", port, timeout=WAIT)
    testcase.addCleanup(lambda: None if client.is_lost else client.transport.abortConnection())
    return client


async def gateway(testcase, backends, server_extra: str = ""):
    return await start_gateway(testcase, CONFIG % server_extra, backends)


class Cleartext(unittest.TestCase):

    async def _open(self, **client_kwargs):
        (backend,) = start_ws_backends(self, "a")
        service, port = await gateway(self, [backend])
        client = await h2c_connect(self, port, **client_kwargs)
        stream = client.websocket(headers=[(b"sec-websocket-protocol", b"chat")])
        headers = await bounded(stream.response)
        return service, backend, client, stream, headers

    async def test_handshake_is_a_200_and_messages_echo_both_ways(self):
        """The gateway advertises extended CONNECT; the stream gets 200 (no
        Sec-WebSocket-Accept, no hop-by-hop fields) while the peer saw an HTTP/1.1
        WebSocket handshake; the tunnel holds the peer's lease."""
        service, backend, client, stream, headers = await self._open()
        settings = await bounded(client.server_settings)
        self.assertEqual(settings.enable_connect_protocol, 1)
        self.assertEqual((stream.status, headers[b"x-backend"],
                          headers[b"x-upstream-status"]), (200, b"a", b"101"))
        for name in (b"sec-websocket-accept", b"upgrade", b"connection",
                     b"content-length"):
            self.assertNotIn(name, headers)
        request = backend.accepted[0].request       # wsproto checked key, Upgrade …
        self.assertEqual((request.host, request.target, request.subprotocols),
                         ("localhost", "/ws", ["chat"]))
        stream.send("hello")
        self.assertEqual(await stream.next_message(), "hello")
        stream.send(b"\x00\x01binary")
        self.assertEqual(await stream.next_message(), b"\x00\x01binary")
        backend.connections[0].send("pushed")
        self.assertEqual(await stream.next_message(), "pushed")
        self.assertEqual(service.manager.group("app").peers[0].conns, 1)
        self.assertEqual(service.metrics.tunnels, 1)
        (tunnel,) = live_tunnels(service)
        # TCP_NODELAY on the client's connection, as on the peer's
        self.assertTrue(tunnel.downstream.exchange._proto.transport.getTcpNoDelay())
        self.assertTrue(tunnel.upstream.transport.getTcpNoDelay())

    async def test_large_message_under_a_small_client_window_is_paced(self):
        """A client with a 16 KiB window that hands none back gets exactly that; the
        gateway holds at most STREAM_BUFFER and one read for it and stops reading the
        peer; acknowledging drains the 1 MiB echo to the last byte."""
        service, backend, client, stream, _ = await self._open(
            settings={SettingCodes.INITIAL_WINDOW_SIZE: 16384}, auto_ack=False)
        big = os.urandom(1024 * 1024)
        stream.send(big)
        await wait_for(lambda: backend.received == [big])
        (tunnel,) = live_tunnels(service)
        await wait_for(lambda: tunnel.upstream.paused)
        await sleep(0.1)
        self.assertEqual(stream.received, 16384)
        bound = STREAM_BUFFER + 65536
        self.assertLessEqual(tunnel.downstream.buffered, bound)
        self.assertTrue(tunnel.upstream.paused)
        waiting = stream.next_message(timeout=WAIT)
        while not waiting.called:
            client.ack(stream)
            await sleep(0.002)
            self.assertLessEqual(tunnel.downstream.buffered, bound)
        self.assertEqual(await waiting, big)
        self.assertGreater(tunnel.upstream.pauses, 0)

    async def test_client_close_frame_ends_the_stream_and_the_peer_connection(self):
        service, backend, client, stream, _ = await self._open()
        peer = service.manager.group("app").peers[0]
        stream.close(1000)
        await stream.finish()
        await backend.connections[0].wait_closed()
        self.assertEqual((stream.close_code, backend.connections[0].close_code),
                         (1000, 1000))
        await wait_for(lambda: not live_tunnels(service))
        self.assertEqual((peer.conns, service.metrics.tunnels), (0, 0))
        # the peer closed first: END_STREAM, then RST_STREAM NO_ERROR as the client
        # had not ended its side
        self.assertEqual(stream.reset, ErrorCodes.NO_ERROR)
        self.assertFalse(client.is_lost)

    async def test_peer_close_frame_ends_the_stream(self):
        service, backend, client, stream, _ = await self._open()
        backend.connections[0].close(1001)
        await stream.finish()
        await backend.connections[0].wait_closed()
        self.assertEqual(stream.close_code, 1001)
        await wait_for(lambda: not live_tunnels(service))
        self.assertEqual(service.manager.group("app").peers[0].conns, 0)

    async def test_end_stream_and_rst_stream_close_the_peer_connections(self):
        """Two tunnels on one connection: END_STREAM (a FIN) and RST_STREAM (a reset)
        from the client each close their own peer connection, and only theirs."""
        (backend,) = start_ws_backends(self, "a")
        service, port = await gateway(self, [backend])
        client = await h2c_connect(self, port)
        first, second = client.websocket("/ws/first"), client.websocket("/ws/second")
        await bounded(first.response)
        await bounded(second.response)
        for stream in (first, second):
            stream.send("ping %d" % stream.stream_id)
            self.assertEqual(await stream.next_message(), "ping %d" % stream.stream_id)
        peers = {c.request.target: c for c in backend.accepted}
        self.assertEqual(sorted(peers), ["/ws/first", "/ws/second"])
        client.end_stream(first)
        await peers["/ws/first"].wait_closed()
        await first.finish()                  # answered with END_STREAM
        self.assertIsNone(first.reset)
        self.assertFalse(peers["/ws/second"].is_closed)
        client.reset_stream(second)
        await peers["/ws/second"].wait_closed()
        await wait_for(lambda: not live_tunnels(service))
        self.assertEqual(service.manager.group("app").peers[0].conns, 0)
        self.assertFalse(client.is_lost)

    async def test_a_refusal_by_the_peer_is_relayed_on_the_stream(self):
        backend = start_head_backend(
            self, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\nno, no")
        service, port = await gateway(self, [backend])
        client = await h2c_connect(self, port)
        stream = client.websocket()
        await bounded(stream.response)
        await stream.finish()
        self.assertEqual((stream.status, stream.body), (403, b"no, no"))
        head = backend.heads[0].split(b"\r\n")
        self.assertEqual(head[0], b"GET /ws HTTP/1.1")
        for line in (b"Upgrade: websocket", b"Connection: upgrade", b"Host: localhost",
                     b"sec-websocket-version: 13"):
            self.assertIn(line, head)
        self.assertEqual(live_tunnels(service), [])


class OverTLS(unittest.TestCase):

    async def test_alpn_h2_websocket_echoes_and_closes(self):
        ca, certificate, key = _tls_files(self)
        (backend,) = start_ws_backends(self, "tls")
        service, port = await gateway(self, [backend], server_extra=(
            'tls = { certificate = "%s", key = "%s" }' % (certificate, key)))
        client = H2WebSocketClient()
        options = ssl.optionsForClientTLS(
            "localhost", trustRoot=ssl.Certificate.loadPEM(ca.cert_pem.bytes()),
            acceptableProtocols=[b"h2", b"http/1.1"])
        await protocol.ClientCreator(reactor, lambda: client).connectSSL(
            "127.0.0.1", port, options, timeout=WAIT)
        self.addCleanup(lambda: None if client.is_lost else client.transport.abortConnection())
        stream = client.websocket()
        await bounded(stream.response)
        self.assertEqual(INegotiated(client.transport).negotiatedProtocol, b"h2")
        self.assertEqual(stream.status, 200)
        big = os.urandom(200 * 1024)
        stream.send(big)
        self.assertEqual(await stream.next_message(), big)
        stream.close(1000)
        await stream.finish()
        await backend.connections[0].wait_closed()
        self.assertEqual(stream.close_code, 1000)
        await wait_for(lambda: not live_tunnels(service))
        self.assertEqual(service.manager.group("app").peers[0].conns, 0)
