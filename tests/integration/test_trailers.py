"""Trailers through the gateway on real sockets, HTTP/1.1 on both sides.

Response trailers from a chunked upstream response reach an HTTP/1.1 client that sent
``TE: trailers`` in the last chunk, filtered (framing and hidden fields dropped), and
never a client without it; request trailers of a chunked request reach the upstream in
the last chunk of its (chunked) request body. Each with ``proxy_buffering`` /
``proxy_request_buffering`` on and off.
"""
import socket

from twisted.trial import unittest

from tests.integration.harness import (
    WAIT, BackendConnection, connect, request, sleep, start_backends, start_gateway,
)


def config(location_extra: str = "") -> str:
    return """
    [gateway]
    access_log = false
    [upstreams.app]
    servers = [ { address = "{b0}" } ]
    [[servers]]
    listen = ["tcp:0:interface=127.0.0.1"]
    locations = [ { path = "/", proxy_pass = "http://app" %s } ]
    """ % location_extra


UPSTREAM_TRAILERS = (b"X-Checksum: abc\r\nContent-Type: text/html\r\nServer: upstream\r\n"
                     b"Set-Cookie: a=b\r\nGrpc-Status: 0\r\n")
#: what a client with TE: trailers gets: Content-Type and Set-Cookie are forbidden in
#: trailers, Server is hidden by default (nginx's proxy_hide_header list)
CLIENT_LAST_CHUNK = b"\r\n0\r\nX-Checksum: abc\r\nGrpc-Status: 0\r\n\r\n"


def chunked_with_trailers(body: bytes, piece: int = 16 * 1024, close: bool = False):
    """A behaviour answering ``body`` in chunks of ``piece`` bytes, then trailers."""

    def behaviour(req, conn):
        conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n"
                   + (b"Connection: close\r\n" if close else b"") + b"\r\n")
        for start in range(0, len(body), piece):
            data = body[start:start + piece]
            conn.write(b"%x\r\n%s\r\n" % (len(data), data))
        conn.write(b"0\r\n" + UPSTREAM_TRAILERS + b"\r\n")

    return behaviour


def get(te: bool) -> bytes:
    return (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + (b"TE: trailers\r\n" if te else b"") + b"\r\n")


class ResponseTrailers(unittest.TestCase):
    async def check(self, location_extra: str, te: bool) -> bytes:
        backends = start_backends(self, ("b", chunked_with_trailers(b"hello world")))
        _, port = await start_gateway(self, config(location_extra), backends)
        client, responses = await request(port, get(te))
        await client.wait_closed()
        self.assertEqual([(r.status, r.body) for r in responses], [(200, b"hello world")])
        return client.received

    async def test_te_trailers_client_gets_them_in_the_last_chunk_buffered(self):
        received = await self.check("", te=True)
        self.assertTrue(received.endswith(b"\r\nb\r\nhello world" + CLIENT_LAST_CHUNK),
                        received)

    async def test_te_trailers_client_gets_them_in_the_last_chunk_unbuffered(self):
        received = await self.check(", proxy_buffering = false", te=True)
        self.assertTrue(received.endswith(b"\r\nb\r\nhello world" + CLIENT_LAST_CHUNK),
                        received)

    async def test_client_without_te_trailers_gets_none_buffered(self):
        received = await self.check("", te=False)
        self.assertTrue(received.endswith(b"\r\nb\r\nhello world\r\n0\r\n\r\n"), received)
        self.assertNotIn(b"X-Checksum: abc", received)

    async def test_client_without_te_trailers_gets_none_unbuffered(self):
        received = await self.check(", proxy_buffering = false", te=False)
        self.assertTrue(received.endswith(b"\r\nb\r\nhello world\r\n0\r\n\r\n"), received)
        self.assertNotIn(b"X-Checksum: abc", received)

    async def test_proxy_hide_header_hides_a_trailer_too(self):
        received = await self.check(', proxy_hide_header = ["X-Checksum"]', te=True)
        self.assertTrue(received.endswith(b"hello world\r\n0\r\nGrpc-Status: 0\r\n\r\n"),
                        received)

    async def test_trailers_come_after_every_spooled_byte(self):
        """A client that reads nothing until the gateway has the whole upstream
        response: the body waits in the spool (memory, then temp file), and the
        trailers still come after its last byte."""
        body = bytes(range(256)) * (32 * 1024)   # 8 MiB: more than the socket buffers hold
        backends = start_backends(self, ("b", chunked_with_trailers(body, close=True)))
        _, port = await start_gateway(self, config(), backends)
        client = await connect(port)
        # a small receive buffer, so that the kernel does not hold the body instead
        client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.transport.pauseProducing()
        client.transport.write(get(te=True))
        # "Connection: close" from the upstream: the gateway closes its upstream
        # connection only once it read the whole response, trailers included
        waited = 0.0
        while backends[0].closed == 0:
            self.assertLess(waited, WAIT, "the gateway never read the whole response")
            await sleep(0.01)
            waited += 0.01
        client.transport.resumeProducing()
        responses = await client.wait_responses(1)
        await client.wait_closed()
        self.assertEqual(len(responses), 1)
        self.assertEqual(len(responses[0].body), len(body))
        self.assertEqual(responses[0].body, body)
        self.assertTrue(client.received.endswith(CLIENT_LAST_CHUNK))


class _TrailerRecordingConnection(BackendConnection):
    """A backend connection noting each request's trailer fields apart from its head."""

    def _reset(self):
        super()._reset()
        self._in_body = False
        self._trailers = []

    def on_headers_complete(self):
        self._in_body = True

    def on_header(self, name, value):
        if self._in_body:
            self._trailers.append((name.decode("latin-1"), value.decode("latin-1")))
        else:
            super().on_header(name, value)

    def on_message_complete(self):
        self.backend.trailers.append(self._trailers)
        super().on_message_complete()


def recording_backend(testcase):
    (backend,) = start_backends(testcase, "b")
    backend.protocol = _TrailerRecordingConnection
    backend.trailers = []
    return backend


CHUNKED_POST = (b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n"
                b"0\r\nX-Sum: 11\r\nHost: evil.example\r\nX-Sig: s1\r\n\r\n")


class RequestTrailers(unittest.TestCase):
    async def check(self, location_extra: str, raw: bytes = CHUNKED_POST):
        backend = recording_backend(self)
        _, port = await start_gateway(self, config(location_extra), [backend])
        client, responses = await request(port, raw)
        await client.wait_closed()
        self.assertEqual([(r.status, r.body) for r in responses], [(200, b"b")])
        return backend

    async def test_chunked_request_trailers_reach_the_upstream_buffered(self):
        backend = await self.check("")
        (req,) = backend.requests
        self.assertEqual(req.body, b"hello world")
        self.assertEqual(req.headers["transfer-encoding"], "chunked")
        self.assertNotIn("content-length", req.headers)
        self.assertEqual(backend.trailers, [[("X-Sum", "11"), ("X-Sig", "s1")]])

    async def test_chunked_request_trailers_reach_the_upstream_unbuffered(self):
        backend = await self.check(", proxy_request_buffering = false")
        (req,) = backend.requests
        self.assertEqual(req.body, b"hello world")
        self.assertEqual(req.headers["transfer-encoding"], "chunked")
        self.assertEqual(backend.trailers, [[("X-Sum", "11"), ("X-Sig", "s1")]])

    async def test_a_buffered_body_without_trailers_keeps_content_length(self):
        raw = CHUNKED_POST.split(b"0\r\nX-Sum")[0] + b"0\r\n\r\n"
        backend = await self.check("", raw)
        (req,) = backend.requests
        self.assertEqual(req.headers["content-length"], "11")
        self.assertNotIn("transfer-encoding", req.headers)
        self.assertEqual(backend.trailers, [[]])
