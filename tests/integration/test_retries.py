"""proxy_next_upstream end to end: every condition, tries, timeout, non-idempotent methods,
the body re-sent in full, and no retry once the client has response bytes."""
from twisted.trial import unittest

from tests.integration.harness import (
    BlackholeListener, closed_port, connect, get, request, sleep, start_backends,
    start_gateway,
)
from tests.integration.harness import proxy_config as config


TWO = '{ address = "{b0}" }, { address = "{b1}" }'


def status(code):
    def behaviour(req, conn):
        conn.respond(code, b"status %d" % code, reason=b"Whatever")
    return behaviour


def hold_forever(req, conn):
    conn.hold()


def garbage(req, conn):
    conn.write(b"HTTP/1.1 abc\r\n\r\n")


def drop(req, conn):
    conn.abort()


class Conditions(unittest.TestCase):
    async def _first_fails(self, behaviour, extra=""):
        """b0 behaves badly, b1 answers "good"; one request (round robin starts at b0)."""
        backends = start_backends(self, ("bad", behaviour), "good")
        _, port = await start_gateway(self, config(TWO, extra), backends)
        response = await get(port)
        return response, backends

    async def test_error_is_retried_by_default(self):
        response, backends = await self._first_fails(drop)
        self.assertEqual((response.status, response.body), (200, b"good"))
        self.assertEqual(response.header("X-Upstream-Status"), "502, 200")

    async def test_error_not_retried_when_off(self):
        response, backends = await self._first_fails(drop, ', proxy_next_upstream = "off"')
        self.assertEqual(response.status, 502)
        self.assertEqual(backends[1].requests, [])

    async def test_timeout_is_retried_by_default(self):
        response, _ = await self._first_fails(hold_forever, ', proxy_read_timeout = "0.3s"')
        self.assertEqual((response.status, response.body), (200, b"good"))
        self.assertEqual(response.header("X-Upstream-Status"), "504, 200")

    async def test_read_timeout_without_retry_gives_504(self):
        response, backends = await self._first_fails(
            hold_forever, ', proxy_read_timeout = "0.3s", proxy_next_upstream = ["error"]'
        )
        self.assertEqual(response.status, 504)
        self.assertEqual(backends[1].requests, [])

    async def test_invalid_header_gives_502_unless_listed(self):
        response, _ = await self._first_fails(garbage)
        self.assertEqual(response.status, 502)
        self.assertEqual(response.header("X-Upstream-Status"), "502")

    async def test_invalid_header_is_retried_when_listed(self):
        response, _ = await self._first_fails(
            garbage, ', proxy_next_upstream = ["invalid_header"]'
        )
        self.assertEqual((response.status, response.body), (200, b"good"))

    async def test_each_status_condition_retries_only_when_listed(self):
        for code in (500, 502, 503, 504, 403, 404, 429):
            response, _ = await self._first_fails(status(code))
            self.assertEqual((response.status, response.body), (code, b"status %d" % code), code)
            response, _ = await self._first_fails(
                status(code), ', proxy_next_upstream = ["http_%d"]' % code
            )
            self.assertEqual((response.status, response.body), (200, b"good"), code)
            self.assertEqual(response.header("X-Upstream-Status"), "%d, 200" % code)

    async def test_http_500_retry_marks_the_peer_failed_but_http_404_does_not(self):
        for code, bad_requests in ((500, 1), (404, 3)):
            backends = start_backends(self, ("bad", status(code)), "good")
            _, port = await start_gateway(
                self, config(TWO, ', proxy_next_upstream = ["http_%d"]' % code), backends
            )
            for _ in range(5):
                self.assertEqual((await get(port)).body, b"good")
            self.assertEqual(len(backends[0].requests), bad_requests, code)

    async def test_last_try_passes_the_upstream_status_through(self):
        backends = start_backends(self, ("a", status(503)), ("b", status(503)))
        _, port = await start_gateway(
            self, config(TWO, ', proxy_next_upstream = ["http_503"]'), backends
        )
        response = await get(port)
        self.assertEqual((response.status, response.body), (503, b"status 503"))
        self.assertEqual(response.header("X-Upstream-Status"), "503, 503")


class Tries(unittest.TestCase):
    async def test_tries_limits_the_peers_contacted(self):
        backends = start_backends(self, ("a", drop), ("b", drop), ("c", drop))
        _, port = await start_gateway(
            self,
            config('{ address = "{b0}" }, { address = "{b1}" }, { address = "{b2}" }',
                   ", proxy_next_upstream_tries = 2"),
            backends,
        )
        response = await get(port)
        self.assertEqual(response.status, 502)
        self.assertEqual([len(b.requests) for b in backends], [1, 1, 0])

    async def test_without_a_limit_every_peer_is_tried_once(self):
        backends = start_backends(self, ("a", drop), ("b", drop), ("c", drop))
        _, port = await start_gateway(
            self,
            config('{ address = "{b0}" }, { address = "{b1}" }, { address = "{b2}" }'),
            backends,
        )
        response = await get(port)
        self.assertEqual(response.status, 502)
        self.assertEqual([len(b.requests) for b in backends], [1, 1, 1])

    async def test_next_upstream_timeout_stops_retrying(self):
        backends = start_backends(self, ("slow", hold_forever), "good")
        _, port = await start_gateway(
            self,
            config(TWO, ', proxy_read_timeout = "0.4s", proxy_next_upstream_timeout = "0.2s"'),
            backends,
        )
        response = await get(port)
        self.assertEqual(response.status, 504)
        self.assertEqual(backends[1].requests, [])


class NonIdempotent(unittest.TestCase):
    def _post(self, body=b"x" * 1000):
        return (
            b"POST /submit HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        ) + body

    async def test_post_not_retried_once_sent(self):
        backends = start_backends(self, ("bad", drop), "good")
        _, port = await start_gateway(self, config(TWO), backends)
        _, responses = await request(port, self._post())
        self.assertEqual(responses[0].status, 502)
        self.assertEqual(backends[1].requests, [])
        self.assertEqual(len(backends[0].requests[0].body), 1000)

    async def test_post_status_condition_not_retried_without_non_idempotent(self):
        backends = start_backends(self, ("bad", status(502)), "good")
        _, port = await start_gateway(
            self, config(TWO, ', proxy_next_upstream = ["error", "http_502"]'), backends
        )
        _, responses = await request(port, self._post())
        self.assertEqual((responses[0].status, responses[0].body), (502, b"status 502"))
        self.assertEqual(backends[1].requests, [])

    async def test_post_retried_with_non_idempotent_and_body_resent_in_full(self):
        backends = start_backends(self, ("bad", drop), "good")
        _, port = await start_gateway(
            self, config(TWO, ', proxy_next_upstream = ["error", "non_idempotent"]'), backends
        )
        body = bytes(range(256)) * 40
        _, responses = await request(port, self._post(body))
        self.assertEqual((responses[0].status, responses[0].body), (200, b"good"))
        self.assertEqual(backends[0].requests[0].body, body)
        self.assertEqual(backends[1].requests[0].body, body)

    async def test_post_retried_when_the_connection_was_refused(self):
        backends = start_backends(self, "good")
        _, port = await start_gateway(
            self, config('{ address = "{dead}" }, { address = "{b0}" }'), backends,
            dead=closed_port(),
        )
        _, responses = await request(port, self._post())
        self.assertEqual((responses[0].status, responses[0].body), (200, b"good"))
        self.assertEqual(len(backends[0].requests[0].body), 1000)


class ResponseStarted(unittest.TestCase):
    async def test_no_retry_once_response_bytes_reached_the_client(self):
        def partial(req, conn):
            conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
            conn.hold().addCallback(lambda _: conn.abort())

        backends = start_backends(self, ("partial", partial), "good")
        _, port = await start_gateway(
            self, config(TWO, ", proxy_buffering = false"), backends
        )
        client = await connect(port)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        while b"x" * 40 not in client.received:
            await sleep(0.01)
        backends[0].held[0].callback(None)
        await client.wait_closed()
        self.assertEqual(client.responses, [])        # never a complete response
        self.assertTrue(client.received.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(client.received.endswith(b"x" * 40))
        self.assertEqual(backends[1].requests, [])


    async def test_failure_after_the_response_head_does_not_count_against_the_peer(self):
        """nginx frees the peer with state 0 when a started response dies: the peer
        stays in rotation (max_fails = 1 would otherwise take it out)."""
        def truncated(req, conn):
            conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            conn.close()     # FIN after the bytes (an RST could discard them unread)

        backends = start_backends(self, ("a", truncated), "b")
        _, port = await start_gateway(self, config(TWO), backends)
        for _ in range(4):
            client, _ = await request(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", count=1)
            await client.wait_closed()
        self.assertEqual((len(backends[0].requests), len(backends[1].requests)), (2, 2))


class ConnectTimeout(unittest.TestCase):
    async def test_connect_timeout_gives_504(self):
        hole = BlackholeListener()
        self.addCleanup(hole.close)
        _, port = await start_gateway(
            self, config('{ address = "{hole}" }', ', proxy_connect_timeout = "0.3s"'),
            hole=hole.address,
        )
        response = await get(port)
        self.assertEqual(response.status, 504)
        self.assertIn(b"504 Gateway Time-out", response.body)


class UpstreamVariables(unittest.TestCase):
    async def test_upstream_lists_align_with_every_tried_peer(self):
        """A refused peer has no connect or header time: nginx prints "-" there."""
        backends = start_backends(self, "good")
        dead = closed_port()
        _, port = await start_gateway(self, """
            [gateway]
            access_log = false
            [upstreams.app]
            servers = [ { address = "{dead}" }, { address = "{b0}" } ]
            [[servers]]
            listen = ["tcp:0:interface=127.0.0.1"]
            [[servers.locations]]
            path = "/"
            proxy_pass = "http://app"
            add_header = { X-Addr = "$upstream_addr", X-Status = "$upstream_status", X-Connect = "$upstream_connect_time", X-Header = "$upstream_header_time", X-Proxy-Host = "$proxy_host" }
            """, backends, dead=dead)
        response = await get(port)
        self.assertEqual(response.header("X-Addr"), "%s, %s" % (dead, backends[0].address))
        self.assertEqual(response.header("X-Status"), "502, 200")
        connect, header = response.header("X-Connect"), response.header("X-Header")
        self.assertRegex(connect, r"^-, \d+\.\d{3}$")
        self.assertRegex(header, r"^-, \d+\.\d{3}$")
        self.assertEqual(response.header("X-Proxy-Host"), "app")
