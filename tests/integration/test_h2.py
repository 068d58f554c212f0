"""HTTP/2 clients through the gateway to HTTP/1.1 upstreams, on real sockets.

The client is the ``h2`` library's connection object in a small Twisted protocol
(:class:`H2Client`): prior knowledge on cleartext, and ALPN ``h2`` on TLS with a
certificate made by ``trustme``. Covered: bodies both ways, concurrent streams on one
connection, the listener still speaking HTTP/1.1, a large response under a small client
window completing while the gateway's queue for the stream stays bounded (and the
upstream is paused), trailers both ways, and GOAWAY on shutdown letting a running
stream finish.
"""
from __future__ import annotations

import os
import tempfile

import trustme
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated, DataReceived, ResponseReceived, StreamEnded, StreamReset,
    TrailersReceived, WindowUpdated,
)
from twisted.internet import defer, protocol, reactor, ssl
from twisted.internet.interfaces import INegotiated
from twisted.trial import unittest

from gateway.http.h2 import STREAM_BUFFER
from gateway.service import ListenerService
from tests.http.test_h2 import server_frames
from tests.integration.harness import WAIT, get, sleep, start_backends, start_gateway


class Response:
    def __init__(self):
        self.headers: list = []
        self.data = bytearray()
        self.trailers: list = []
        self.reset = None
        self.done = defer.Deferred()

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    def header(self, name: bytes):
        return dict(self.headers).get(name)


class H2Client(protocol.Protocol):
    """An HTTP/2 client connection on ``h2``. ``auto_ack=False`` hands no window back
    until :meth:`ack` is called: a client that reads slowly."""

    def __init__(self, settings=None, auto_ack: bool = True):
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.settings = settings
        self.auto_ack = auto_ack
        self.responses: dict = {}
        self.unacked: dict = {}
        self.uploads: dict = {}             # stream -> [body left, trailers]
        self.everything = bytearray()       # for server_frames after a GOAWAY
        self.goaway = None
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.conn.initiate_connection()
        if self.settings:
            self.conn.update_settings(self.settings)
        self._flush()

    def dataReceived(self, data):
        self.everything += data
        if self.goaway is not None:
            return      # h2 as a client takes nothing after GOAWAY: read server_frames
        for event in self.conn.receive_data(data):
            response = self.responses.get(getattr(event, "stream_id", None))
            if isinstance(event, ResponseReceived):
                response.headers = event.headers
            elif isinstance(event, DataReceived):
                response.data += event.data
                if self.auto_ack:
                    self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                        event.stream_id)
                else:
                    self.unacked[event.stream_id] = (
                        self.unacked.get(event.stream_id, 0) + event.flow_controlled_length)
            elif isinstance(event, TrailersReceived):
                response.trailers = event.headers
            elif isinstance(event, StreamEnded):
                response.done.callback(response)
            elif isinstance(event, StreamReset) and response is not None:
                response.reset = event.error_code
                response.done.callback(response)
            elif isinstance(event, ConnectionTerminated):
                self.goaway = event
            elif isinstance(event, WindowUpdated):
                for stream in list(self.uploads):
                    self._upload(stream)
        self._flush()

    def connectionLost(self, reason=None):
        self.lost.callback(None)

    def _flush(self):
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    def request(self, method: str, path: str, headers=(), body: bytes = None,
                trailers=None, authority: bytes = b"localhost") -> Response:
        stream = self.conn.get_next_available_stream_id()
        block = [(b":method", method.encode()), (b":scheme", b"http"),
                 (b":path", path.encode()), (b":authority", authority), *headers]
        response = self.responses[stream] = Response()
        response.stream_id = stream
        self.conn.send_headers(stream, block, end_stream=body is None and not trailers)
        if body is not None or trailers:
            self.uploads[stream] = [body or b"", trailers]
            self._upload(stream)
        self._flush()
        return response

    def _upload(self, stream: int) -> None:
        """Send what the windows allow of ``stream``'s request body, then its end."""
        body, trailers = self.uploads[stream]
        while body:
            size = min(len(body), self.conn.local_flow_control_window(stream),
                       self.conn.max_outbound_frame_size)
            if size <= 0:
                self.uploads[stream][0] = body
                return
            self.conn.send_data(stream, body[:size],
                                end_stream=size == len(body) and not trailers)
            body = body[size:]
        del self.uploads[stream]
        if trailers:
            self.conn.send_headers(stream, trailers, end_stream=True)

    def ack(self, stream: int) -> None:
        """Hand back everything received on ``stream`` so far."""
        size = self.unacked.pop(stream, 0)
        if size:
            self.conn.acknowledge_received_data(size, stream)
            self._flush()


async def h2_connect(testcase, port: int, **kwargs) -> H2Client:
    client = H2Client(**kwargs)
    await protocol.ClientCreator(reactor, lambda: client).connectTCP(
        "127.0.0.1", port, timeout=WAIT)
    testcase.addCleanup(lambda: client.transport.loseConnection())
    return client


def done(response: Response):
    return response.done.addTimeout(WAIT, reactor)


def config(location_extra: str = "", server_extra: str = "") -> str:
    return """
    [gateway]
    access_log = false
    [upstreams.app]
    servers = [ { address = "{b0}" } ]
    [[servers]]
    listen = ["tcp:0:interface=127.0.0.1"]
    http2 = true
    %s
    locations = [ { path = "/", proxy_pass = "http://app", add_header = { X-Protocol = "$server_protocol $http2" } %s } ]
    """ % (server_extra, location_extra)


def echo(req, conn):
    """Answers with the request's method, path and body."""
    conn.respond(200, b"%s %s %s" % (req.method.encode(), req.path.encode(), req.body),
                 headers=[(b"X-Proto", req.headers.get("x-forwarded-proto", "").encode())])


def big(size: int):
    def behaviour(req, conn):
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        body = bytes(range(256)) * (size // 256)
        for start in range(0, size, 65536):
            conn.write(body[start:start + 65536])
    return behaviour


def h2_streams(service) -> list:
    """The live HTTP/2 exchanges of the gateway's listener."""
    listener = next(s for s in service if isinstance(s, ListenerService))
    negotiating = listener.drain.__self__
    return [exchange for proto in negotiating.http2.connections
            for exchange in proto._streams.values()]


class CleartextTests(unittest.TestCase):

    async def test_prior_knowledge_request_reaches_an_http11_upstream(self):
        backends = start_backends(self, ("app", echo))
        _, port = await start_gateway(self, config(), backends)
        client = await h2_connect(self, port)
        response = await done(client.request("GET", "/a?b=1"))
        self.assertEqual((response.status, bytes(response.data)), (200, b"GET /a?b=1 "))
        self.assertEqual(response.header(b"x-protocol"), b"HTTP/2.0 h2c")
        self.assertEqual(response.header(b"server"), b"gateway")
        self.assertIsNone(response.header(b"connection"))
        self.assertEqual(backends[0].requests[0].headers["host"], "localhost")

    async def test_request_body_goes_up_and_response_body_comes_down(self):
        backends = start_backends(self, ("app", echo))
        _, port = await start_gateway(self, config(), backends)
        client = await h2_connect(self, port)
        body = b"x" * 100000
        response = await done(client.request("POST", "/up", body=body))
        self.assertEqual(bytes(response.data), b"POST /up " + body)
        self.assertEqual(backends[0].requests[0].headers["content-length"], "100000")

        streamed = start_backends(self, ("app", echo))
        _, port = await start_gateway(
            self, config(location_extra=", proxy_request_buffering = false"), streamed)
        client = await h2_connect(self, port)
        response = await done(client.request("POST", "/up", body=body))
        self.assertEqual(bytes(response.data), b"POST /up " + body)
        self.assertEqual(streamed[0].requests[0].headers["transfer-encoding"], "chunked")

    async def test_concurrent_streams_on_one_connection(self):
        backends = start_backends(self, ("app", lambda req, conn: conn.hold().addCallback(
            lambda _: conn.respond(200, req.path.encode()))))
        _, port = await start_gateway(self, config(), backends)
        client = await h2_connect(self, port)
        first = client.request("GET", "/first")
        second = client.request("GET", "/second")
        for _ in range(100):
            if len(backends[0].held) == 2:
                break
            await sleep(0.02)
        self.assertEqual(len(backends[0].held), 2)      # both upstream at once
        backends[0].held[1].callback(None)
        self.assertEqual(bytes((await done(second)).data), b"/second")
        self.assertFalse(first.done.called)
        backends[0].held[0].callback(None)
        self.assertEqual(bytes((await done(first)).data), b"/first")

    async def test_the_listener_still_speaks_http11(self):
        backends = start_backends(self, ("app", echo))
        _, port = await start_gateway(self, config(), backends)
        response = await get(port, "/plain")
        self.assertEqual((response.status, response.body), (200, b"GET /plain "))

    async def test_http2_off_answers_the_preface_as_http11(self):
        backends = start_backends(self, ("app", echo))
        _, port = await start_gateway(
            self, config().replace("http2 = true", "http2 = false"), backends)
        client = await h2_connect(self, port)
        await client.lost.addTimeout(WAIT, reactor)
        self.assertTrue(bytes(client.everything).startswith(b"HTTP/1.1 400 "))

    async def test_large_response_under_a_small_window_with_the_upstream_paused(self):
        """A client that hands back no window gets one window's worth; the gateway
        queues at most STREAM_BUFFER (plus one upstream read) for it and stops reading
        the upstream; acknowledging drains it to the last byte."""
        size = 4 * 1024 * 1024
        backends = start_backends(self, ("app", big(size)))
        service, port = await start_gateway(
            self, config(location_extra=", proxy_buffering = false"), backends)
        client = await h2_connect(self, port, auto_ack=False)
        response = client.request("GET", "/big")
        for _ in range(100):
            await sleep(0.02)
            if len(response.data) >= 65535:
                break
        await sleep(0.2)
        self.assertEqual(len(response.data), 65535)
        streams = h2_streams(service)
        self.assertEqual(len(streams), 1)
        self.assertLessEqual(streams[0]._out_bytes, STREAM_BUFFER + 65536)
        self.assertTrue(streams[0]._producer_paused)
        deadline = reactor.seconds() + WAIT
        while not response.done.called:
            self.assertLess(reactor.seconds(), deadline, "the response never completed")
            client.ack(response.stream_id)
            await sleep(0.001)
            self.assertLessEqual(sum(s._out_bytes for s in h2_streams(service)),
                                 STREAM_BUFFER + 65536)
        self.assertEqual(bytes(response.data), (bytes(range(256)) * (size // 256)))

    async def test_response_trailers_reach_the_http2_client(self):
        def with_trailers(req, conn):
            conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nGrpc-Status: 0\r\n\r\n")
        backends = start_backends(self, ("app", with_trailers))
        _, port = await start_gateway(self, config(), backends)
        client = await h2_connect(self, port)
        response = await done(client.request("GET", "/t", headers=[(b"te", b"trailers")]))
        self.assertEqual(bytes(response.data), b"hello")
        self.assertEqual(response.trailers, [(b"x-checksum", b"abc"), (b"grpc-status", b"0")])

    async def test_request_trailers_reach_the_upstream(self):
        backends = start_backends(self, ("app", echo))
        _, port = await start_gateway(
            self, config(location_extra=", proxy_request_buffering = false"), backends)
        client = await h2_connect(self, port)
        response = await done(client.request("POST", "/up", body=b"abc",
                                             trailers=[(b"x-checksum", b"900150")]))
        self.assertEqual(bytes(response.data), b"POST /up abc")
        self.assertIn(("x-checksum", "900150"),
                      [(k.lower(), v) for k, v in backends[0].requests[0].raw_headers])

    async def test_shutdown_sends_goaway_and_lets_the_running_stream_finish(self):
        backends = start_backends(self, ("app", lambda req, conn: conn.hold().addCallback(
            lambda _: conn.respond(200, b"finished"))))
        service, port = await start_gateway(self, config(), backends)
        client = await h2_connect(self, port)
        client.request("GET", "/slow")
        for _ in range(100):
            if backends[0].held:
                break
            await sleep(0.02)
        stopped = service.stopService()
        for _ in range(100):
            if client.goaway is not None:
                break
            await sleep(0.02)
        self.assertEqual((client.goaway.error_code, client.goaway.last_stream_id), (0, 1))
        self.assertFalse(stopped.called)
        backends[0].held[0].callback(None)
        await client.lost.addTimeout(WAIT, reactor)
        frames = [f for f in server_frames(client) if isinstance(f, tuple)]
        self.assertEqual(frames[-1], ("DATA", 1, b"finished", True))
        await stopped.addTimeout(WAIT, reactor)


def _tls_files(testcase):
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    directory = tempfile.mkdtemp()
    testcase.addCleanup(lambda: [os.remove(os.path.join(directory, n))
                                 for n in os.listdir(directory)] and os.rmdir(directory))
    certificate = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    cert.cert_chain_pems[0].write_to_path(certificate)
    for pem in cert.cert_chain_pems[1:]:
        with open(certificate, "ab") as f:
            f.write(pem.bytes())
    cert.private_key_pem.write_to_path(key)
    return ca, certificate, key


class TLSTests(unittest.TestCase):

    async def _connect(self, port, ca, alpn):
        client = H2Client()
        options = ssl.optionsForClientTLS(
            "localhost", trustRoot=ssl.Certificate.loadPEM(ca.cert_pem.bytes()),
            acceptableProtocols=alpn)
        await protocol.ClientCreator(reactor, lambda: client).connectSSL(
            "127.0.0.1", port, options, timeout=WAIT)
        self.addCleanup(lambda: client.transport.loseConnection())
        return client

    async def test_alpn_h2_serves_http2_through_to_an_http11_upstream(self):
        ca, certificate, key = _tls_files(self)
        backends = start_backends(self, ("app", echo))
        _, port = await start_gateway(self, config(server_extra=(
            'tls = { certificate = "%s", key = "%s" }' % (certificate, key))), backends)
        client = await self._connect(port, ca, [b"h2", b"http/1.1"])
        response = await done(client.request("POST", "/tls", body=b"secret"))
        self.assertEqual(INegotiated(client.transport).negotiatedProtocol, b"h2")
        self.assertEqual((response.status, bytes(response.data)), (200, b"POST /tls secret"))
        self.assertEqual(response.header(b"x-protocol"), b"HTTP/2.0 h2")
        self.assertEqual(response.header(b"x-proto"), b"https")
