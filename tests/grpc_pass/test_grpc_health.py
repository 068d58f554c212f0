"""``health_check.type = "grpc"`` end to end: the gateway's ``grpc.health.v1`` probes on
real peers take a peer out of rotation and bring it back.

Probes run every 50ms; the tests wait for the state they need by polling with an
overall bound, then check where calls go.
"""
from __future__ import annotations

from twisted.trial import unittest

from tests.grpc_pass.servers import (
    client, peer_state, run, start_gateway, start_peers, until,
)
from tests.integration.harness import closed_port

CONFIG = """
[upstreams.app]
servers = [{servers}]
health_check = {{ type = "grpc", interval = "50ms", timeout = "1s"{extra} }}
[[grpc_servers]]
listen = "127.0.0.1:0"
grpc_pass = "grpc://app"
"""


def config(servers: str, extra: str = "") -> str:
    return CONFIG.format(servers=servers, extra=extra)


class GrpcHealthChecks(unittest.TestCase):
    async def who(self, port, count):
        c = client(self, port)

        async def calls():
            return [(await c.unary("/test.Echo/Who")(b"")).decode() for _ in range(count)]

        return await run(calls())

    async def test_not_serving_takes_a_peer_out_and_serving_brings_it_back(self):
        """Probes ask about ``grpc_service``; NOT_SERVING makes the peer unhealthy
        (calls go to the other), SERVING again makes it healthy."""
        peers = await start_peers(self, "a", "b")
        for peer in peers:
            peer.health = {"test.Echo": 1}
        service, port = await start_gateway(self, config(
            '{ address = "{p0}" }, { address = "{p1}" }',
            ', grpc_service = "test.Echo"'), peers)
        a = peer_state(service, peers[0])
        await run(until(lambda: peers[0].health_checks >= 1 and a.health_last is not None,
                        "a first probe"))
        self.assertEqual((a.healthy, a.health_last.reason), (True, "SERVING"))

        peers[0].health["test.Echo"] = 2
        await run(until(lambda: not a.healthy, "a is unhealthy"))
        self.assertEqual(a.health_last.reason, "NOT_SERVING")
        self.assertEqual(await self.who(port, 3), ["b"] * 3)

        peers[0].health["test.Echo"] = 1
        await run(until(lambda: a.healthy, "a is healthy again"))
        self.assertEqual(sorted(await self.who(port, 2)), ["a", "b"])
        # probes are not calls: no conns, requests or passive failures
        self.assertEqual((a.conns, a.fails, a.failures), (0, 0, 0))

    async def test_a_peer_that_cannot_be_reached_fails_its_probes(self):
        (peer,) = await start_peers(self, "a")
        dead = closed_port()
        service, port = await start_gateway(self, config(
            f'{{ address = "{{p0}}" }}, {{ address = "{dead}" }}'), [peer])
        gone = next(p for p in service.manager.group("app").peers if p.name == dead)
        await run(until(lambda: not gone.healthy, "the closed port is unhealthy"))
        self.assertTrue(gone.health_last.reason.startswith(
            "UNAVAILABLE: failed to connect to all addresses"), gone.health_last.reason)
        self.assertTrue(peer_state(service, peer).healthy)
        self.assertEqual(await self.who(port, 2), ["a", "a"])

    async def test_unimplemented_counts_as_healthy_by_default(self):
        """A peer without a health service answers UNIMPLEMENTED: it is up."""
        (peer,) = await start_peers(self, "a")
        peer.health = None
        service, _ = await start_gateway(self, config('{ address = "{p0}" }'), [peer])
        state = peer_state(service, peer)
        await run(until(lambda: state.health_last is not None, "a probe"))
        self.assertEqual((state.healthy, state.health_last.reason),
                         (True, "UNIMPLEMENTED: Method not found!"))

    async def test_grpc_unimplemented_unhealthy_takes_such_a_peer_out(self):
        (peer,) = await start_peers(self, "a")
        peer.health = None
        service, _ = await start_gateway(self, config(
            '{ address = "{p0}" }', ', grpc_unimplemented = "unhealthy"'), [peer])
        state = peer_state(service, peer)
        await run(until(lambda: not state.healthy, "the peer is unhealthy"))
        self.assertEqual(state.health_last.reason, "UNIMPLEMENTED: Method not found!")
