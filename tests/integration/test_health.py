"""Active health checks end to end: real backends, the gateway's own probes, real traffic.

Probes run every 100ms here; the tests wait for the state they need by polling with an
overall bound (never a fixed sleep), and read what each backend saw to assert exactly
what the probes did.
"""
from __future__ import annotations

from twisted.internet import reactor
from twisted.trial import unittest

from tests.integration.harness import (
    WAIT, closed_port, get, sleep, start_backends, start_gateway,
)

CONFIG = """
[gateway]
access_log = false
[upstreams.app]
servers = [ %s ]
health_check = { %s }
[[servers]]
listen = ["tcp:0:interface=127.0.0.1"]
locations = [ { path = "/", proxy_pass = "http://app", add_header = { X-Upstream = "$upstream_addr" } } ]
"""


def config(servers: str, health_check: str) -> str:
    return CONFIG % (servers, health_check)


async def until(predicate, what: str, timeout: float = WAIT):
    """Poll ``predicate`` every 20ms until it holds; fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await sleep(0.02)


class CheckedBackend:
    """A backend whose ``/health`` answers what the test sets (status and body) and
    records, for every probe, whether the gateway held the peer healthy as it arrived."""

    def __init__(self, name: str, status: int = 200, body: bytes = b"READY"):
        self.name = name
        self.status = status
        self.body = body
        self.peer = None                 # set once the gateway runs
        self.probes: list[tuple[bool, int]] = []   # (peer healthy on arrival, answer)
        self.traffic: list[str] = []     # paths of proxied (non-probe) requests

    def __call__(self, req, conn):
        if req.path == "/health":
            self.probes.append((self.peer.healthy if self.peer else None, self.status))
            conn.respond(self.status, self.body)
        else:
            self.traffic.append(req.path)
            conn.respond(200, self.name.encode())


async def names(port, count):
    result = []
    for _ in range(count):
        response = await get(port)
        result.append((response.status, response.body.decode(), response.header("X-Upstream")))
    return result


class HTTPChecks(unittest.TestCase):
    async def test_peer_failing_its_check_gets_no_traffic_and_returns_after_passes(self):
        """b's /health answers 500: after fails=2 probes it is unhealthy and every request
        goes to a (in one attempt: b is not even tried). When /health answers 200 again,
        b is healthy exactly after passes=2 good probes and takes its share again."""
        a, b = CheckedBackend("a"), CheckedBackend("b", status=500)
        backends = start_backends(self, ("a", a), ("b", b))
        service, port = await start_gateway(self, config(
            '{ address = "{b0}" }, { address = "{b1}" }',
            'uri = "/health", interval = "100ms", timeout = "1s", fails = 2, passes = 2',
        ), backends)
        group = service.manager.group("app")
        a.peer, b.peer = group.peers
        await until(lambda: not b.peer.healthy, "b unhealthy")
        # healthy on the arrival of probes 1 and 2, unhealthy from the third on
        self.assertEqual(b.probes[:2], [(True, 500), (True, 500)])

        results = await names(port, 6)
        self.assertEqual(results, [(200, "a", backends[0].address)] * 6)
        self.assertEqual(b.traffic, [])
        self.assertEqual(b.peer.health_last.passed, False)
        self.assertEqual(b.peer.health_last.reason, "status 500")

        b.status = 200
        flipped = len(b.probes)
        await until(lambda: b.peer.healthy, "b healthy again")
        await until(lambda: len(b.probes) >= flipped + 3, "a probe after recovery")
        # two good probes found it unhealthy; the third found it healthy
        self.assertEqual(b.probes[flipped:flipped + 3],
                         [(False, 200), (False, 200), (True, 200)])

        results = await names(port, 4)
        self.assertEqual(sorted(name for _, name, _ in results), ["a", "a", "b", "b"])
        self.assertEqual(len(b.traffic), 2)
        self.assertEqual(a.probes[:1], [(True, 200)])
        self.assertTrue(all(healthy for healthy, _ in a.probes))

    async def test_wrong_body_makes_the_peer_unhealthy(self):
        a, b = CheckedBackend("a"), CheckedBackend("b", body=b"starting")
        backends = start_backends(self, ("a", a), ("b", b))
        service, port = await start_gateway(self, config(
            '{ address = "{b0}" }, { address = "{b1}" }',
            'uri = "/health", interval = "100ms", body = "READY"',
        ), backends)
        a.peer, b.peer = service.manager.group("app").peers
        await until(lambda: not b.peer.healthy, "b unhealthy")
        self.assertEqual(b.peer.health_last.reason,
                         "status 200, body does not contain 'READY'")
        self.assertEqual([n for _, n, _ in await names(port, 4)], ["a"] * 4)
        self.assertEqual(b.traffic, [])
        self.assertTrue(a.peer.healthy)

    async def test_probe_sends_host_of_the_peer_and_the_configured_headers(self):
        received = []

        def health(req, conn):
            received.append(req)
            conn.respond(200)

        backends = start_backends(self, ("a", health))
        await start_gateway(self, config(
            '{ address = "{b0}" }',
            'uri = "/status?probe=1", interval = "100ms", headers = { X-Probe = "yes" }',
        ), backends)
        await until(lambda: received, "a probe")
        probe = received[0]
        self.assertEqual((probe.method, probe.path), ("GET", "/status?probe=1"))
        self.assertEqual(probe.raw_headers, [
            ("Host", backends[0].address), ("X-Probe", "yes"), ("Connection", "close"),
        ])

    async def test_only_server_failing_its_check_gives_502(self):
        a = CheckedBackend("a", status=503)
        backends = start_backends(self, ("a", a))
        service, port = await start_gateway(self, config(
            '{ address = "{b0}" }', 'uri = "/health", interval = "100ms"'), backends)
        a.peer = service.manager.group("app").peers[0]
        await until(lambda: not a.peer.healthy, "a unhealthy")
        response = await get(port)
        self.assertEqual((response.status, response.header("X-Upstream")), (502, "app"))
        self.assertEqual(a.traffic, [])


class TCPChecks(unittest.TestCase):
    async def test_refusing_peer_is_unhealthy_and_never_tried_backup_is_checked_too(self):
        """A tcp check finds the refusing primary before any request does: requests go
        straight to the other primary (no failed attempt first). The backup is probed
        too: when it refuses as well it is skipped, and with both primaries unhealthy
        the answer is 502."""
        dead, dead_backup = closed_port(), closed_port()
        backends = start_backends(self, "a")
        service, port = await start_gateway(self, config(
            '{ address = "{dead}" }, { address = "{b0}" }, '
            '{ address = "{dead_backup}", backup = true }',
            'type = "tcp", interval = "100ms", timeout = "500ms"',
        ), backends, dead=dead, dead_backup=dead_backup)
        group = service.manager.group("app")
        dead_peer, a_peer = group.peers
        (backup,) = group.backups
        await until(lambda: not dead_peer.healthy and not backup.healthy,
                    "the refusing peers unhealthy")
        self.assertTrue(dead_peer.health_last.reason.startswith("connect() failed"))
        self.assertEqual([(s, n, u) for s, n, u in await names(port, 3)],
                         [(200, "a", backends[0].address)] * 3)
        self.assertEqual(a_peer.health_last.reason, "connected")
        self.assertEqual(len(backends[0].requests), 3)   # tcp probes send no request

        await backends[0].stop()
        await until(lambda: not a_peer.healthy, "a unhealthy once it stops listening")
        response = await get(port)
        self.assertEqual((response.status, response.header("X-Upstream")), (502, "app"))

    async def test_stopping_the_gateway_stops_the_probes(self):
        backends = start_backends(self, "a")
        service, _ = await start_gateway(self, config(
            '{ address = "{b0}" }', 'type = "tcp", interval = "100ms"'), backends)
        await until(lambda: backends[0].connections >= 2, "two probes")
        await service.stopService()
        seen = backends[0].connections
        await sleep(0.35)
        self.assertEqual(backends[0].connections, seen)
        self.assertEqual(service.health_checkers["app"].checks, {})
