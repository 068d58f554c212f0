"""The demo backends (gateway/demo.py) on real sockets on 127.0.0.1."""
from __future__ import annotations

import os
import signal
import struct
import sys

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from gateway import demo

MASK = b"\x37\xfa\x21\x3d"


class RawClient(protocol.Protocol):
    """Collects everything the server sends; ``wait_for`` fires once a predicate holds."""

    def __init__(self):
        self.data = b""
        self.closed = defer.Deferred()
        self._waiters = []

    def dataReceived(self, data):
        self.data += data
        self._check()

    def connectionLost(self, reason):
        self.closed.callback(None)
        for pred, d in self._waiters:
            d.errback(AssertionError(f"connection closed; received {self.data!r}"))
        self._waiters = []

    def wait_for(self, pred):
        d = defer.Deferred()
        self._waiters.append((pred, d))
        self._check()
        return d

    def _check(self):
        for item in list(self._waiters):
            pred, d = item
            if pred(self.data):
                self._waiters.remove(item)
                d.callback(self.data)


def read_frame(data: bytes):
    """Parse one unmasked server frame: (fin, opcode, payload, rest) or None if incomplete."""
    if len(data) < 2:
        return None
    fin, opcode = bool(data[0] & 0x80), data[0] & 0x0F
    assert not data[1] & 0x80, "server frames must not be masked"
    n, pos = data[1] & 0x7F, 2
    if n == 126:
        if len(data) < 4:
            return None
        (n,), pos = struct.unpack_from("!H", data, 2), 4
    elif n == 127:
        if len(data) < 10:
            return None
        (n,), pos = struct.unpack_from("!Q", data, 2), 10
    if len(data) < pos + n:
        return None
    return fin, opcode, data[pos:pos + n], data[pos + n:]


def masked_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client frame written by hand (independently of demo.encode_frame)."""
    n = len(payload)
    first = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 65536:
        length = bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + n.to_bytes(8, "big")
    body = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return first + length + MASK + body


class DemoBackendTests(unittest.TestCase):
    def setUp(self):
        self.ports = demo.start_backends(reactor, [0, 0, 0], "127.0.0.1")
        for p in self.ports:
            self.addCleanup(p.stopListening)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=self.pool)

    def url(self, i: int, path: str) -> bytes:
        return f"http://127.0.0.1:{self.ports[i].getHost().port}{path}".encode()

    @defer.inlineCallbacks
    def connect(self, i: int) -> RawClient:
        client = RawClient()
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", self.ports[i].getHost().port)
        yield connectProtocol(ep, client)
        self.addCleanup(lambda: client.transport.loseConnection() or client.closed)
        return client

    @defer.inlineCallbacks
    def test_each_backend_names_itself(self):
        for i in range(3):
            port = self.ports[i].getHost().port
            response = yield self.agent.request(b"GET", self.url(i, "/some/path?x=1"))
            body = yield readBody(response)
            self.assertEqual(response.code, 200)
            self.assertEqual(body, f"backend-{i + 1} (127.0.0.1:{port})\nGET /some/path?x=1\n".encode())
            self.assertEqual(response.headers.getRawHeaders(b"x-backend"), [f"backend-{i + 1}".encode()])
            self.assertEqual(self.ports[i].factory.name, f"backend-{i + 1}")
            self.assertEqual(self.ports[i].factory.address, f"127.0.0.1:{port}")

    @defer.inlineCallbacks
    def test_health(self):
        response = yield self.agent.request(b"GET", self.url(1, "/health"))
        body = yield readBody(response)
        self.assertEqual((response.code, body), (200, b"ok\n"))

    @defer.inlineCallbacks
    def test_keepalive_and_pipelining(self):
        client = yield self.connect(0)
        client.transport.write(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n"
            b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"
        )
        data = yield client.wait_for(lambda d: d.endswith(b"ok\n"))
        self.assertEqual(data.count(b"HTTP/1.1 200 OK\r\n"), 3)
        self.assertIn(b"\r\n\r\nbackend-1 (", data)
        self.assertIn(b"GET /a\n", data)
        self.assertIn(b"POST /b\nbody: 5 bytes\n", data)
        self.assertNotIn(b"Connection: close", data)
        self.assertFalse(client.closed.called)
        # Connection: close is honoured
        client.transport.write(b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        yield client.closed
        self.assertIn(b"Connection: close\r\n", client.data)
        self.assertTrue(client.data.endswith(b"GET /last\n"))

    @defer.inlineCallbacks
    def test_bad_request_closes(self):
        client = yield self.connect(0)
        client.transport.write(b"NONSENSE\r\n\r\n")
        yield client.closed
        self.assertTrue(client.data.startswith(b"HTTP/1.1 400 "))

    @defer.inlineCallbacks
    def test_ws_without_upgrade_is_426(self):
        response = yield self.agent.request(b"GET", self.url(0, "/ws"))
        yield readBody(response)
        self.assertEqual(response.code, 426)

    @defer.inlineCallbacks
    def test_websocket_echo(self):
        client = yield self.connect(2)
        # the key and accept value of RFC 6455 §1.3
        client.transport.write(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        data = yield client.wait_for(lambda d: b"\r\n\r\n" in d)
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.1 101 Switching Protocols")
        self.assertIn(b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", lines)
        self.assertEqual(rest, b"")
        offset = len(head) + 4

        @defer.inlineCallbacks
        def next_frame():
            nonlocal offset
            yield client.wait_for(lambda d: read_frame(d[offset:]) is not None)
            fin, opcode, payload, rest = read_frame(client.data[offset:])
            offset = len(client.data) - len(rest)
            return fin, opcode, payload

        # text, binary with a 16-bit and a 64-bit length, sent in one write
        big = os.urandom(70000)
        client.transport.write(
            masked_frame(0x1, "héllo".encode())
            + masked_frame(0x2, bytes(range(256)) * 2)
            + masked_frame(0x2, big)
        )
        self.assertEqual((yield next_frame()), (True, 0x1, "héllo".encode()))
        self.assertEqual((yield next_frame()), (True, 0x2, bytes(range(256)) * 2))
        self.assertEqual((yield next_frame()), (True, 0x2, big))
        # a fragmented message with a ping in the middle: pong first, then the message
        client.transport.write(masked_frame(0x1, b"frag", fin=False) + masked_frame(0x9, b"p!")
                               + masked_frame(0x0, b"mented"))
        self.assertEqual((yield next_frame()), (True, 0xA, b"p!"))
        self.assertEqual((yield next_frame()), (True, 0x1, b"fragmented"))
        # close: the server answers with the same code and closes the connection
        client.transport.write(masked_frame(0x8, struct.pack("!H", 1000) + b"bye"))
        self.assertEqual((yield next_frame()), (True, 0x8, struct.pack("!H", 1000)))
        yield client.closed

    @defer.inlineCallbacks
    def test_websocket_unmasked_frame_is_protocol_error(self):
        client = yield self.connect(0)
        client.transport.write(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            + b"\x81\x02hi"
        )
        yield client.closed
        frame = read_frame(client.data.partition(b"\r\n\r\n")[2])
        self.assertEqual(frame[1], 0x8)
        self.assertEqual(frame[2][:2], struct.pack("!H", 1002))


class _Process(protocol.ProcessProtocol):
    def __init__(self):
        self.out = b""
        self.ready = defer.Deferred()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.out += data
        if self.out.count(b"listening on") == 2 and not self.ready.called:
            self.ready.callback(self.out)

    def errReceived(self, data):
        self.out += data

    def processEnded(self, reason):
        if not self.ready.called:
            self.ready.errback(AssertionError(f"demo exited early: {self.out!r}"))
        self.ended.callback(reason.value)


class DemoCommandTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_runs_and_exits_cleanly_on_sigterm(self):
        proc = _Process()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        transport = reactor.spawnProcess(
            proc, sys.executable, [sys.executable, "-m", "gateway.demo", "--ports", "0,0",
                                   "--grpc-ports", "0"], env=env)
        self.addCleanup(lambda: proc.ended.called or transport.signalProcess("KILL"))
        out = yield proc.ready
        url = out.split(b"backend-2 listening on ")[1].split(b"\n")[0].strip()
        response = yield Agent(reactor).request(b"GET", url + b"x")
        body = yield readBody(response)
        self.assertTrue(body.startswith(b"backend-2 (127.0.0.1:"), body)
        transport.signalProcess(signal.SIGTERM)
        status = yield proc.ended
        self.assertEqual(status.exitCode, 0, proc.out)

    def test_bad_ports_argument(self):
        with self.assertRaises(SystemExit):
            demo.parse_args(["--ports", "80,x"])
        with self.assertRaises(SystemExit):
            demo.parse_args(["--grpc-ports", "50061,x"])
        self.assertEqual(demo.parse_args([]).ports, [8081, 8082, 8083])
        self.assertEqual(demo.parse_args([]).grpc_ports, [50061, 50062, 50063])
        self.assertEqual(demo.parse_args(["--grpc-ports", ""]).grpc_ports, [])


class DemoGrpcTests(unittest.TestCase):
    """The gRPC echo backends, called with grpcio's blocking client (raw bytes)."""

    def test_echo_methods_health_and_backend_name(self):
        import grpc

        ((server, name, address),) = demo.start_grpc_backends([0])
        self.addCleanup(server.stop, 0)
        channel = grpc.insecure_channel(address)
        self.addCleanup(channel.close)
        echo = "/" + demo.GRPC_SERVICE + "/"
        answer, call = channel.unary_unary(echo + "Unary").with_call(b"hi", timeout=5)
        self.assertEqual((answer, dict(call.initial_metadata())["x-backend"]),
                         (b"hi", "grpc-backend-1"))
        self.assertEqual(list(channel.unary_stream(echo + "ServerStream")(b"x", timeout=5)),
                         [b"x", b"x", b"x"])
        self.assertEqual(channel.stream_unary(echo + "ClientStream")(
            iter([b"a", b"", b"b"]), timeout=5), b"ab")
        self.assertEqual(list(channel.stream_stream(echo + "Bidi")(
            iter([b"1", b"2"]), timeout=5)), [b"1", b"2"])
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        self.assertEqual(check(b"", timeout=5), b"\x08\x01")
        self.assertEqual(check(b"\x0a\x09demo.Echo", timeout=5), b"\x08\x01")
        with self.assertRaises(grpc.RpcError) as caught:
            check(b"\x0a\x05other", timeout=5)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.NOT_FOUND)
