"""Response framing and keepalive end to end, both sides of the gateway."""
from twisted.trial import unittest

from tests.integration.harness import connect, get, request, sleep, start_backends, start_gateway


def config(upstream_extra: str = "", location_extra: str = "", server_extra: str = "") -> str:
    return """
    [gateway]
    access_log = false
    [upstreams.app]
    servers = [ { address = "{b0}" } ]
    %s
    [[servers]]
    listen = ["tcp:0:interface=127.0.0.1"]
    %s
    locations = [ { path = "/", proxy_pass = "http://app" %s } ]
    """ % (upstream_extra, server_extra, location_extra)


def by_path(req, conn):
    """Each path answers with a different framing."""
    if req.path == "/length":
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nlength")
    elif req.path == "/chunked":
        conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nchu\r\n4\r\nnked\r\n0\r\n\r\n")
    elif req.path == "/nocontent":
        conn.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    elif req.path == "/notmodified":
        conn.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n")
    elif req.path == "/head" and req.method == "HEAD":
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
    elif req.path == "/extra":
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA")
    elif req.path == "/short":
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        conn.close()
    elif req.path == "/brokenchunks":
        conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        conn.close()
    elif req.path == "/eof":
        conn.write(b"HTTP/1.1 200 OK\r\n\r\nuntil-eof")
        conn.close()
    else:
        conn.respond(200, b"default")


class UpstreamKeepalive(unittest.TestCase):
    async def test_one_upstream_connection_serves_every_well_framed_response(self):
        backends = start_backends(self, ("b", by_path))
        _, port = await start_gateway(self, config(), backends)
        raw = b"".join(
            b"%s %s HTTP/1.1\r\nHost: x\r\n\r\n" % (method, path)
            for method, path in [
                (b"GET", b"/length"), (b"GET", b"/chunked"), (b"GET", b"/nocontent"),
                (b"GET", b"/notmodified"), (b"GET", b"/length"), (b"HEAD", b"/head"),
            ]
        )
        client, responses = await request(port, raw, count=5)
        self.assertEqual(
            [(r.status, r.body) for r in responses],
            [(200, b"length"), (200, b"chunked"), (204, b""), (304, b""), (200, b"length")],
        )
        # the HEAD response (last: the test client's parser cannot tell it is one)
        while not client.received.endswith(b"Content-Length: 4\r\nConnection: keep-alive\r\n\r\n"):
            await sleep(0.01)
        self.assertEqual(backends[0].connections, 1)

    async def test_upstream_keepalive_requests_closes_after_that_many(self):
        backends = start_backends(self, "b")
        _, port = await start_gateway(self, config("keepalive_requests = 2"), backends)
        for _ in range(5):
            self.assertEqual((await get(port)).body, b"b")
        self.assertEqual(backends[0].connections, 3)

    async def test_keepalive_zero_opens_a_connection_per_request(self):
        backends = start_backends(self, "b")
        _, port = await start_gateway(self, config("keepalive = 0"), backends)
        for _ in range(3):
            self.assertEqual((await get(port)).body, b"b")
        self.assertEqual(backends[0].connections, 3)
        self.assertEqual(backends[0].requests[0].headers.get("connection"), "close")

    async def test_close_delimited_response_is_relayed_and_not_reused(self):
        backends = start_backends(self, ("b", by_path))
        _, port = await start_gateway(self, config(), backends)
        response = await get(port, "/eof")
        self.assertEqual((response.status, response.body), (200, b"until-eof"))
        response = await get(port, "/length")
        self.assertEqual(response.body, b"length")
        self.assertEqual(backends[0].connections, 2)


class FramingEdgeCases(unittest.TestCase):
    async def test_extra_bytes_after_content_length_are_dropped_and_connection_not_reused(self):
        backends = start_backends(self, ("b", by_path))
        _, port = await start_gateway(self, config(), backends)
        response = await get(port, "/extra")
        self.assertEqual(response.body, b"hello")
        self.assertEqual((await get(port, "/length")).body, b"length")
        self.assertEqual(backends[0].connections, 2)

    async def test_missing_bytes_truncate_the_client_response(self):
        backends = start_backends(self, ("b", by_path))
        _, port = await start_gateway(self, config(), backends)
        client, responses = await request(port, b"GET /short HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.wait_closed()
        self.assertEqual(responses, [])      # the client can tell: never complete
        self.assertTrue(client.received.endswith(b"\r\n\r\nhello"))
        self.assertIn(b"Content-Length: 10\r\n", client.received)

    async def test_incomplete_chunked_response_never_gets_a_final_chunk(self):
        backends = start_backends(self, ("b", by_path))
        _, port = await start_gateway(self, config(), backends)
        client, responses = await request(port, b"GET /brokenchunks HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.wait_closed()
        self.assertEqual(responses, [])
        self.assertIn(b"hello", client.received)
        self.assertNotIn(b"0\r\n\r\n", client.received)

    async def test_incomplete_response_with_buffering_off_is_also_truncated(self):
        backends = start_backends(self, ("b", by_path))
        _, port = await start_gateway(self, config(location_extra=", proxy_buffering = false"), backends)
        client, responses = await request(port, b"GET /brokenchunks HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.wait_closed()
        self.assertEqual(responses, [])
        self.assertNotIn(b"0\r\n\r\n", client.received)

    async def test_head_response_never_carries_a_body(self):
        backends = start_backends(self, ("b", by_path))
        _, port = await start_gateway(self, config(), backends)
        client, responses = await request(
            port, b"HEAD /length HTTP/1.1\r\nHost: x\r\n\r\nGET /length HTTP/1.1\r\nHost: x\r\n\r\n",
            count=1,
        )
        await sleep(0.2)
        # HEAD's response is exactly a head: the next response follows it directly
        self.assertEqual(client.received.count(b"HTTP/1.1 200 OK"), 2)
        self.assertTrue(client.received.endswith(b"\r\n\r\nlength"))

    async def test_streamed_request_body_reaches_the_peer(self):
        def echo_length(req, conn):
            conn.respond(200, b"%d" % len(req.body))

        backends = start_backends(self, ("b", echo_length))
        _, port = await start_gateway(
            self, config(location_extra=", proxy_request_buffering = false"), backends
        )
        body = b"y" * 300_000
        _, responses = await request(
            port, b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        self.assertEqual(responses[0].body, b"300000")

    async def test_chunked_request_body_is_sent_with_content_length_when_buffered(self):
        def echo(req, conn):
            conn.respond(200, req.headers.get("content-length", "-").encode() + b" " + req.body)

        backends = start_backends(self, ("b", echo))
        _, port = await start_gateway(self, config(), backends)
        _, responses = await request(
            port,
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        self.assertEqual(responses[0].body, b"5 abcde")

    async def _slow_client(self, location_extra):
        """Client 1 asks for 16 MiB and does not read; then client 2 asks for /small.
        Returns the backend, client 1's body once it reads, and client 2's body."""
        big = bytes(range(256)) * 65536   # 16 MiB: more than the socket buffers hold

        def serve(req, conn):
            conn.respond(200, big if req.path == "/big" else b"small")

        backends = start_backends(self, ("b", serve))
        _, port = await start_gateway(self, config(location_extra=location_extra), backends)
        slow = await connect(port)
        slow.transport.pauseProducing()
        slow.transport.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await sleep(0.5)
        second = await get(port, "/small")
        connections = backends[0].connections
        slow.transport.resumeProducing()
        responses = await slow.wait_responses(1)
        self.assertEqual(responses[0].body, big)
        self.assertEqual(second.body, b"small")
        return connections

    async def test_buffered_response_frees_the_upstream_while_the_client_is_slow(self):
        # the gateway read all 16 MiB (spilling to a temp file) and pooled the connection,
        # so the second request reused it
        self.assertEqual(await self._slow_client(""), 1)

    async def test_unbuffered_response_holds_the_upstream_while_the_client_is_slow(self):
        # backpressure reached the peer: its connection is still busy with the first
        # response, so the second request needed a connection of its own
        self.assertEqual(await self._slow_client(", proxy_buffering = false"), 2)

    async def test_expect_100_continue_gets_100_before_the_body_is_sent(self):
        def echo(req, conn):
            conn.respond(200, req.body)

        backends = start_backends(self, ("b", echo))
        _, port = await start_gateway(self, config(), backends)
        client = await connect(port)
        client.transport.write(
            b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        while b"\r\n\r\n" not in client.received:
            await sleep(0.01)
        self.assertEqual(client.received, b"HTTP/1.1 100 Continue\r\n\r\n")
        client.transport.write(b"hello")
        responses = await client.wait_responses(2)     # the parser counts the 100 too
        self.assertEqual([(r.status, r.body) for r in responses], [(100, b""), (200, b"hello")])
        self.assertNotIn("expect", backends[0].requests[0].headers)


class ClientKeepalive(unittest.TestCase):
    async def test_client_keepalive_requests_closes_after_that_many(self):
        backends = start_backends(self, "b")
        _, port = await start_gateway(self, config(server_extra="keepalive_requests = 2"), backends)
        client, responses = await request(
            port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3, count=3
        )
        await client.wait_closed()
        self.assertEqual(len(responses), 2)
        self.assertEqual(responses[1].header("Connection"), "close")

    async def test_pipelined_requests_are_answered_in_order(self):
        def echo_path(req, conn):
            conn.respond(200, req.path.encode())

        backends = start_backends(self, ("b", echo_path))
        _, port = await start_gateway(self, config(), backends)
        raw = b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
        client, responses = await request(port, raw, count=5)
        self.assertEqual([r.body for r in responses], [b"/%d" % i for i in range(5)])
