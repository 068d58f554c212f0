"""Upstream selection end to end: weights, down, backup, failures, max_conns, no live upstreams."""
from collections import Counter

from twisted.trial import unittest

from tests.integration.harness import (
    closed_port, connect, get, sleep, start_backends, start_gateway,
)
from tests.integration.harness import proxy_config as config


async def bodies(port, count):
    result = []
    for _ in range(count):
        response = await get(port)
        result.append((response.status, response.body.decode()))
    return result


def failing(req, conn):
    """A peer that accepts the connection and drops it without answering."""
    conn.abort()


class Distribution(unittest.TestCase):
    async def test_equal_weights_split_thirty_requests_fifteen_fifteen(self):
        backends = start_backends(self, "a", "b")
        _, port = await start_gateway(
            self, config('{ address = "{b0}" }, { address = "{b1}" }'), backends
        )
        results = await bodies(port, 30)
        self.assertEqual(Counter(results), {(200, "a"): 15, (200, "b"): 15})
        # smooth round robin alternates strictly
        self.assertEqual([b for _, b in results[:4]], ["a", "b", "a", "b"])

    async def test_weights_one_two_split_ten_twenty(self):
        backends = start_backends(self, "a", "b")
        _, port = await start_gateway(
            self, config('{ address = "{b0}" }, { address = "{b1}", weight = 2 }'), backends
        )
        results = await bodies(port, 30)
        self.assertEqual(Counter(results), {(200, "a"): 10, (200, "b"): 20})

    async def test_down_server_is_never_contacted(self):
        backends = start_backends(self, "a", "b")
        _, port = await start_gateway(
            self, config('{ address = "{b0}", down = true }, { address = "{b1}" }'), backends
        )
        results = await bodies(port, 6)
        self.assertEqual(results, [(200, "b")] * 6)
        self.assertEqual(backends[0].connections, 0)

    async def test_upstream_addr_names_the_peer_that_answered(self):
        backends = start_backends(self, "a")
        _, port = await start_gateway(self, config('{ address = "{b0}" }'), backends)
        response = await get(port)
        self.assertEqual(response.header("X-Upstream"), backends[0].address)


class NoLiveUpstreams(unittest.TestCase):
    async def test_all_servers_down_gives_502_and_upstream_addr_is_the_group_name(self):
        backends = start_backends(self, "a")
        _, port = await start_gateway(
            self, config('{ address = "{b0}", down = true }'), backends
        )
        response = await get(port)
        self.assertEqual(response.status, 502)
        self.assertIn(b"<title>502 Bad Gateway</title>", response.body)
        self.assertEqual(response.header("X-Upstream"), "app")
        self.assertEqual(backends[0].connections, 0)

    async def test_every_peer_failed_gives_502_until_fail_timeout(self):
        backends = start_backends(self, ("a", failing), ("b", failing))
        _, port = await start_gateway(
            self,
            config('{ address = "{b0}", fail_timeout = "30s" }, { address = "{b1}", fail_timeout = "30s" }'),
            backends,
        )
        first = await get(port)
        self.assertEqual(first.status, 502)
        self.assertEqual(
            first.header("X-Upstream"), "%s, %s" % (backends[0].address, backends[1].address)
        )
        second = await get(port)
        self.assertEqual(second.status, 502)
        self.assertEqual(second.header("X-Upstream"), "app")
        self.assertEqual((len(backends[0].requests), len(backends[1].requests)), (1, 1))


class Backup(unittest.TestCase):
    async def test_backup_used_only_when_primaries_unavailable_and_abandoned_after_recovery(self):
        state = {"fail": False}

        def primary(req, conn):
            if state["fail"]:
                conn.abort()
            else:
                conn.respond(200, b"primary")

        backends = start_backends(self, ("primary", primary), "backup")
        _, port = await start_gateway(
            self,
            config('{ address = "{b0}", fail_timeout = "1s" }, { address = "{b1}", backup = true }'),
            backends,
        )
        self.assertEqual(await bodies(port, 3), [(200, "primary")] * 3)
        self.assertEqual(backends[1].connections, 0)

        state["fail"] = True
        # the failed attempt is retried on the backup; then the primary is skipped
        self.assertEqual(await bodies(port, 3), [(200, "backup")] * 3)
        # 3 + 2: the first failure came on a pooled keepalive connection, which may have
        # been stale, so it was re-sent once on a fresh connection before counting
        self.assertEqual(len(backends[0].requests), 5)

        state["fail"] = False
        await sleep(1.3)   # fail_timeout passes: one probe goes to the primary
        self.assertEqual(await bodies(port, 3), [(200, "primary")] * 3)
        self.assertEqual(len(backends[1].requests), 3)


class PassiveFailures(unittest.TestCase):
    async def test_failures_accumulate_inside_fail_timeout_until_max_fails(self):
        backends = start_backends(self, ("bad", failing), "good")
        _, port = await start_gateway(
            self,
            config('{ address = "{b0}", max_fails = 3, fail_timeout = "30s" }, { address = "{b1}" }'),
            backends,
        )
        results = await bodies(port, 10)
        # every failed attempt was retried on the good peer: the clients never noticed
        self.assertEqual(results, [(200, "good")] * 10)
        # the bad peer took exactly max_fails attempts, then was left alone
        self.assertEqual(len(backends[0].requests), 3)

    async def test_max_fails_zero_never_marks_the_peer_failed(self):
        backends = start_backends(self, ("bad", failing), "good")
        _, port = await start_gateway(
            self,
            config('{ address = "{b0}", max_fails = 0 }, { address = "{b1}" }'),
            backends,
        )
        await bodies(port, 6)
        self.assertEqual(len(backends[0].requests), 3)

    async def test_refused_peer_is_retried_on_the_next_one(self):
        backends = start_backends(self, "good")
        dead = closed_port()
        _, port = await start_gateway(
            self, config('{ address = "{dead}" }, { address = "{b0}" }'), backends, dead=dead,
        )
        response = await get(port)
        self.assertEqual((response.status, response.body), (200, b"good"))
        self.assertEqual(response.header("X-Upstream"), "%s, %s" % (dead, backends[0].address))


class MaxConns(unittest.TestCase):
    async def test_peer_at_max_conns_is_skipped_while_its_request_is_held(self):
        def slow(req, conn):
            conn.hold().addCallback(lambda _: conn.respond(200, b"a"))

        backends = start_backends(self, ("a", slow), "b")
        _, port = await start_gateway(
            self,
            config('{ address = "{b0}", max_conns = 1 }, { address = "{b1}", max_conns = 1 }'),
            backends,
        )
        held_client = await connect(port)
        held_client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        while not backends[0].held:
            await sleep(0.01)
        # a is busy (1 of max_conns 1): every further request goes to b
        self.assertEqual(await bodies(port, 3), [(200, "b")] * 3)
        backends[0].held[0].callback(None)
        responses = await held_client.wait_responses(1)
        self.assertEqual(responses[0].body, b"a")
        held_client.transport.loseConnection()
