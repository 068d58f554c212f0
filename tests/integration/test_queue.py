"""max_conns, the upstream queue and slow_start end to end, on real sockets.

Backends hold requests to ``/hold…`` until the test releases them, so "busy" is a state
the test controls; every wait is bounded (``until`` and the harness's timeouts).
"""
from twisted.internet import reactor
from twisted.trial import unittest

from tests.integration.harness import WAIT, connect, get, sleep, start_backends, start_gateway


def holding(name):
    """Answer ``/hold…`` requests only when the test fires their Deferred; others at once."""

    def behaviour(req, conn):
        if req.path.startswith("/hold"):
            conn.hold().addCallback(lambda _: conn.respond(200, name.encode()))
        else:
            conn.respond(200, name.encode())

    return behaviour


def config(servers: str, upstream_extra: str = "") -> str:
    return """
    [gateway]
    access_log = false
    [upstreams.app]
    servers = [ %s ]
    %s
    [[servers]]
    listen = ["tcp:0:interface=127.0.0.1"]
    locations = [ { path = "/", proxy_pass = "http://app", add_header = { X-Upstream = "$upstream_addr", X-Upstream-Status = "$upstream_status", X-Queue-Time = "$upstream_queue_time" } } ]
    """ % (servers, upstream_extra)


async def until(predicate, timeout: float = WAIT):
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not reached in %ss" % timeout)
        await sleep(0.005)


async def send(port, path):
    client = await connect(port)
    client.transport.write(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode())
    return client


async def response_of(client):
    responses = await client.wait_responses(1)
    assert responses, "no response; received %r" % client.received
    return responses[0]


class MaxConns(unittest.TestCase):
    async def test_parallel_requests_fill_each_limit_and_the_rest_get_502_at_once(self):
        backends = start_backends(self, ("a", holding("a")), ("b", holding("b")))
        service, port = await start_gateway(self, config(
            '{ address = "{b0}", max_conns = 2 }, { address = "{b1}", max_conns = 1 }'),
            backends)
        clients = [await send(port, "/hold/%d" % i) for i in range(5)]
        await until(lambda: len(backends[0].held) + len(backends[1].held) == 3
                    and sum(len(c.responses) for c in clients) == 2)
        refused = [c for c in clients if c.responses]
        self.assertEqual([c.responses[0].status for c in refused], [502, 502])
        self.assertEqual([c.responses[0].header("X-Upstream") for c in refused],
                         ["app", "app"])
        self.assertEqual((len(backends[0].held), len(backends[1].held)), (2, 1))

        for held in backends[0].held + backends[1].held:
            held.callback(None)
        served = [await response_of(c) for c in clients if c not in refused]
        self.assertEqual(sorted(r.body for r in served), [b"a", b"a", b"b"])
        group = service.manager.group("app")
        self.assertEqual([p.conns for p in group.peers], [0, 0])

    async def test_a_peer_at_max_conns_overflows_to_the_backup(self):
        backends = start_backends(self, ("a", holding("a")), "c")
        _, port = await start_gateway(self, config(
            '{ address = "{b0}", max_conns = 1 }, { address = "{b1}", backup = true }'),
            backends)
        busy = await send(port, "/hold")
        await until(lambda: backends[0].held)
        response = await get(port, "/")
        self.assertEqual((response.status, response.body), (200, b"c"))
        backends[0].held[0].callback(None)
        self.assertEqual((await response_of(busy)).body, b"a")
        response = await get(port, "/")
        self.assertEqual(response.body, b"a")       # a is free again: no backup

    async def test_the_same_address_twice_is_two_peers_with_a_limit_each(self):
        backends = start_backends(self, ("a", holding("a")))
        _, port = await start_gateway(self, config(
            '{ address = "{b0}", max_conns = 1 }, { address = "{b0}", max_conns = 1 }'),
            backends)
        first, second = await send(port, "/hold/1"), await send(port, "/hold/2")
        await until(lambda: len(backends[0].held) == 2)
        third = await get(port, "/3")
        self.assertEqual(third.status, 502)
        for held in backends[0].held:
            held.callback(None)
        self.assertEqual([(await response_of(c)).status for c in (first, second)],
                         [200, 200])
        self.assertEqual([r.path for r in backends[0].requests], ["/hold/1", "/hold/2"])


class Queue(unittest.TestCase):
    async def start(self, queue: str, max_conns: int = 1):
        self.backends = start_backends(self, ("a", holding("a")))
        service, port = await start_gateway(self, config(
            '{ address = "{b0}", max_conns = %d }' % max_conns, "queue = %s" % queue),
            self.backends)
        self.group = service.manager.group("app")
        return port

    async def test_waiting_requests_are_dispatched_in_arrival_order(self):
        port = await self.start('{ size = 5, timeout = "10s" }')
        a = self.backends[0]
        first = await send(port, "/hold/1")
        await until(lambda: len(a.held) == 1)
        second = await send(port, "/hold/2")
        await until(lambda: len(self.group.queue) == 1)
        third = await send(port, "/hold/3")
        await until(lambda: len(self.group.queue) == 2)
        await sleep(0.02)       # both have waited at least this long (a lower bound)

        a.held[0].callback(None)
        await until(lambda: len(a.held) == 2)
        self.assertEqual(len(self.group.queue), 1)
        a.held[1].callback(None)
        await until(lambda: len(a.held) == 3)
        a.held[2].callback(None)

        responses = [await response_of(c) for c in (first, second, third)]
        self.assertEqual([r.status for r in responses], [200, 200, 200])
        self.assertEqual([r.path for r in a.requests], ["/hold/1", "/hold/2", "/hold/3"])
        self.assertEqual(responses[0].header("X-Queue-Time"), "0.000")
        self.assertGreaterEqual(float(responses[1].header("X-Queue-Time")), 0.02)
        self.assertGreaterEqual(float(responses[2].header("X-Queue-Time")), 0.02)
        self.assertEqual(len(self.group.queue), 0)

    async def test_a_request_waiting_longer_than_timeout_gets_502(self):
        port = await self.start('{ size = 5, timeout = "300ms" }')
        a = self.backends[0]
        busy = await send(port, "/hold/1")
        await until(lambda: a.held)
        started = reactor.seconds()
        late = await response_of(await send(port, "/2"))
        self.assertEqual(late.status, 502)
        self.assertEqual(late.header("X-Upstream"), "app")
        self.assertEqual(late.header("X-Upstream-Status"), "502")
        self.assertGreaterEqual(float(late.header("X-Queue-Time")), 0.299)
        self.assertGreaterEqual(reactor.seconds() - started, 0.29)
        self.assertEqual(self.group.queue.timeouts, 1)
        a.held[0].callback(None)
        self.assertEqual((await response_of(busy)).status, 200)
        self.assertEqual([r.path for r in a.requests], ["/hold/1"])

    async def test_a_full_queue_gives_502_at_once(self):
        port = await self.start('{ size = 1, timeout = "10s" }')
        a = self.backends[0]
        busy = await send(port, "/hold/1")
        await until(lambda: a.held)
        waiting = await send(port, "/2")
        await until(lambda: len(self.group.queue) == 1)
        refused = await response_of(await send(port, "/3"))
        self.assertEqual(refused.status, 502)
        self.assertEqual(refused.header("X-Queue-Time"), "0.000")
        self.assertEqual(self.group.queue.overflows, 1)
        self.assertFalse(waiting.responses)

        a.held[0].callback(None)
        self.assertEqual((await response_of(busy)).status, 200)
        self.assertEqual((await response_of(waiting)).status, 200)
        self.assertEqual([r.path for r in a.requests], ["/hold/1", "/2"])

    async def test_a_client_that_goes_away_leaves_the_queue(self):
        port = await self.start('{ size = 5, timeout = "10s" }')
        a = self.backends[0]
        busy = await send(port, "/hold/1")
        await until(lambda: a.held)
        gone = await send(port, "/gone")
        await until(lambda: len(self.group.queue) == 1)
        gone.transport.loseConnection()
        await until(lambda: len(self.group.queue) == 0)

        a.held[0].callback(None)
        self.assertEqual((await response_of(busy)).status, 200)
        after = await get(port, "/after")
        self.assertEqual(after.status, 200)
        self.assertEqual([r.path for r in a.requests], ["/hold/1", "/after"])
        self.assertEqual(self.group.peers[0].conns, 0)


class SlowStart(unittest.TestCase):
    async def test_a_recovered_peer_gets_almost_nothing_at_the_start_of_its_ramp(self):
        """a fails once and is out for fail_timeout (200ms); its probe succeeds and it
        ramps over an hour: it starts at 1/64 of its weight, so of the next 40
        requests the probe is its only one (an even split without slow_start)."""
        calls = []

        def flaky(req, conn):
            calls.append(req.path)
            if len(calls) == 1:
                conn.abort()
            else:
                conn.respond(200, b"a")

        backends = start_backends(self, ("a", flaky), "b")
        service, port = await start_gateway(self, config(
            '{ address = "{b0}", fail_timeout = "200ms", slow_start = "1h" },'
            ' { address = "{b1}" }'), backends)
        a = service.manager.group("app").peers[0]
        first = await get(port, "/")
        self.assertEqual((first.status, first.body), (200, b"b"))   # retried on b
        self.assertEqual(first.header("X-Upstream-Status"), "502, 200")
        await until(lambda: not a.failed_at(reactor.seconds()))

        bodies = [(await get(port, "/")).body for _ in range(40)]
        self.assertEqual(bodies.count(b"a"), 1)
        self.assertEqual(bodies.count(b"b"), 39)
        self.assertIsNotNone(a.ramp_start)
        snapshot = service.manager.snapshot()["app"]["peers"][0]
        self.assertEqual(snapshot["state"], "up")
        self.assertEqual(snapshot["effective_weight"], 1 / 64)
        self.assertIn("while reading response header from upstream",
                      snapshot["last_error"]["text"])
