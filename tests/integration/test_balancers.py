"""The balancing methods end to end: least_conn, ip_hash, hash (plain and consistent)
and random two through a running gateway, on real sockets."""
from __future__ import annotations

from twisted.trial import unittest

from tests.integration.harness import (
    WAIT, closed_port, connect, get, sleep, start_backends, start_gateway,
)


def config(upstream_keys: str, servers: str) -> str:
    """One group ``app`` with ``upstream_keys`` behind ``location /``."""
    return """
    [gateway]
    access_log = false
    [upstreams.app]
    %s
    servers = [ %s ]
    [[servers]]
    listen = ["tcp:0:interface=127.0.0.1"]
    locations = [ { path = "/", proxy_pass = "http://app", add_header = { X-Upstream = "$upstream_addr" } } ]
    """ % (upstream_keys, servers)


def servers(count: int) -> str:
    return ", ".join('{ address = "{b%d}" }' % i for i in range(count))


def holding(name: str):
    """``(name, behaviour)`` for ``start_backends``: requests for ``/slow`` are held
    until the test releases them, others are answered at once; the body is ``name``."""

    def behaviour(req, conn):
        if req.path == "/slow":
            conn.hold().addCallback(lambda _: conn.respond(200, name.encode()))
        else:
            conn.respond(200, name.encode())

    return (name, behaviour)


async def until(condition, timeout: float = WAIT) -> None:
    waited = 0.0
    while not condition():
        if waited >= timeout:
            raise AssertionError("condition not reached in %.0f s" % timeout)
        await sleep(0.01)
        waited += 0.01


async def names(port: int, paths, bind=None) -> list[str]:
    result = []
    for path in paths:
        response = await get(port, path, bind=bind)
        assert response.status == 200, (path, response.status, response.body)
        result.append(response.body.decode())
    return result


async def start_slow_request(port: int):
    client = await connect(port)
    client.transport.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    return client


class LeastConn(unittest.TestCase):
    async def test_peer_holding_a_slow_request_is_avoided_until_it_answers(self):
        """The slow request lands on a (all idle: a wins the round-robin tie); while it
        is held, quick requests alternate b, c; once a answers it rejoins."""
        backends = start_backends(
            self, holding("a"), holding("b"), holding("c"))
        _, port = await start_gateway(
            self, config('balance = "least_conn"', servers(3)), backends)

        held = await start_slow_request(port)
        await until(lambda: backends[0].held)
        self.assertEqual(await names(port, ["/"] * 4), ["b", "c", "b", "c"])

        backends[0].held[0].callback(None)
        (response,) = await held.wait_responses(1)
        self.assertEqual(response.body, b"a")
        self.assertEqual(await names(port, ["/"] * 3), ["b", "c", "a"])


class IPHash(unittest.TestCase):
    async def test_each_client_slash_24_sticks_to_one_peer(self):
        """Clients 127.0.i.x hash on 127, 0, i (4040 + i): over a, b, c, i = 1..6 go to
        a b c a b c; the fourth octet does not matter; every repeat is stable."""
        backends = start_backends(self, "a", "b", "c")
        _, port = await start_gateway(self, config('balance = "ip_hash"', servers(3)),
                                      backends)
        seen = []
        for i in range(1, 7):
            seen.append(await names(port, ["/"], bind="127.0.%d.2" % i))
        self.assertEqual(seen, [["a"], ["b"], ["c"], ["a"], ["b"], ["c"]])
        self.assertEqual(await names(port, ["/"] * 3, bind="127.0.1.77"), ["a"] * 3)
        self.assertEqual(await names(port, ["/"] * 3, bind="127.0.2.200"), ["b"] * 3)


class Hash(unittest.TestCase):
    async def test_a_refusing_peer_loses_its_keys_to_the_rehash_peer(self):
        """nginx's "all hashed peers - bad": over a live peer and a refusing one, every
        key is answered by the live peer — directly or by the retry's re-hash."""
        backends = start_backends(self, "good")
        _, port = await start_gateway(
            self,
            config('balance = "hash"\nhash_key = "$arg_a"',
                   '{ address = "{b0}" }, { address = "{bad}", max_fails = 0 }'),
            backends, bad=closed_port())
        self.assertEqual(await names(port, ["/?a=%d" % i for i in range(1, 21)]),
                         ["good"] * 20)

    async def test_same_key_same_peer_and_empty_key_round_robin(self):
        backends = start_backends(self, "a", "b", "c")
        _, port = await start_gateway(
            self, config('balance = "hash"\nhash_key = "$arg_a"', servers(3)), backends)
        # Keys "1".."6": nginx's indexes 1 2 1 0 1 0 (Cache::Memcached compatible).
        self.assertEqual(await names(port, ["/?a=%d" % i for i in range(1, 7)]),
                         ["b", "c", "b", "a", "b", "a"])
        self.assertEqual(await names(port, ["/?a=1"] * 3), ["b"] * 3)
        self.assertEqual(await names(port, ["/"] * 3), ["a", "b", "c"])

    async def test_consistent_removing_a_server_moves_only_its_keys(self):
        """Two gateways over the same backends, one without b: every key that was on a
        or c stays there; b's keys (there are some) move."""
        backends = start_backends(self, "a", "b", "c")
        keys = ['hash_key = "$arg_a"', "consistent = true", 'balance = "hash"']
        _, three = await start_gateway(self, config("\n".join(keys), servers(3)), backends)
        _, two = await start_gateway(
            self, config("\n".join(keys), '{ address = "{b0}" }, { address = "{b2}" }'),
            backends)
        paths = ["/?a=key%d" % i for i in range(40)]
        before = await names(three, paths)
        after = await names(two, paths)

        self.assertIn("b", before)
        self.assertNotIn("b", after)
        self.assertEqual([x for x, y in zip(after, before) if y != "b"],
                         [y for y in before if y != "b"])


class RandomTwo(unittest.TestCase):
    async def test_two_sends_to_the_idle_peer_while_the_other_is_busy(self):
        """With two peers every pair is (a, b): while one holds a slow request, all
        quick requests go to the other."""
        backends = start_backends(self, holding("a"), holding("b"))
        _, port = await start_gateway(
            self, config('balance = "random"\ntwo = true', servers(2)), backends)

        held = await start_slow_request(port)
        await until(lambda: backends[0].held or backends[1].held)
        busy = 0 if backends[0].held else 1
        idle = "ab"[1 - busy]
        self.assertEqual(await names(port, ["/"] * 6), [idle] * 6)

        backends[busy].held[0].callback(None)
        (response,) = await held.wait_responses(1)
        self.assertEqual(response.body.decode(), "ab"[busy])
