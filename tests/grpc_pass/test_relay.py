"""The relay's interface as Twisted code uses it (the ``grpc_pass`` location does):
``relay.start(...)`` with a recording sink, against real grpcio peers.

These cover what the front door cannot reach: ``read_timeout`` (the gateway's own
timeout, a peer failure unlike the client's deadline), the sink's backpressure, and
``cancel`` from the Twisted side.
"""
from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.trial import unittest

from gateway.grpc_pass.relay import CANCELLED, DEADLINE_EXCEEDED, OK, GrpcTarget
from tests.grpc_pass.servers import WAIT, peer_state, run, start_gateway, start_peers, until

GROUP = """
[upstreams.app]
servers = [{ address = "{p0}" }, { address = "{p1}" }]
[[grpc_servers]]
listen = "127.0.0.1:0"
grpc_pass = "grpc://app"
"""


class RecordingSink:
    """A sink that records events; ``hold`` makes ``message`` return a Deferred
    that the test fires (``released``)."""

    def __init__(self, hold: bool = False):
        self.events: list = []
        self.hold = hold
        self.pending: list[defer.Deferred] = []
        self.ended = defer.Deferred()

    def initial_metadata(self, metadata):
        self.events.append(("headers", [tuple(m) for m in metadata]))

    def message(self, message):
        self.events.append(("message", message))
        if self.hold:
            d = defer.Deferred()
            self.pending.append(d)
            return d
        return None

    def end(self, code, details, trailing):
        self.events.append(("end", code, details, [tuple(m) for m in trailing]))
        self.ended.callback(None)


def wait(d: defer.Deferred) -> defer.Deferred:
    return d.addTimeout(WAIT, reactor)


class RelayInterface(unittest.TestCase):
    async def start(self, *handlers):
        peers = await start_peers(self, "a", "b")
        for peer, handler in zip(peers, handlers):
            peer.handlers["/test.Relay/Call"] = handler
        service, _ = await start_gateway(self, GROUP, peers)
        return peers, service, service.grpc_relay

    async def test_read_timeout_is_the_gateways_timeout_and_the_peers_failure(self):
        """``read_timeout`` expires before the peer answers: DEADLINE_EXCEEDED
        "upstream timed out", the peer failed (the request reached it, so without
        ``non_idempotent`` it is not retried)."""
        async def slow(peer, context, seen):
            await peer.gate.wait()

        peers, service, relay = await self.start(slow)
        sink = RecordingSink()
        relay.start(GrpcTarget(group="app", read_timeout=0.2), "/test.Relay/Call",
                    [("x-a", "1")], None, sink, "10.0.0.1").done_sending()
        await wait(sink.ended)
        self.assertEqual(sink.events,
                         [("end", DEADLINE_EXCEEDED, "upstream timed out", [])])
        a, b = (peer_state(service, p) for p in peers)
        self.assertEqual((a.fails, a.failures, a.conns), (1, 1, 0))
        self.assertEqual(peers[1].calls, [])

    async def test_read_timeout_is_retried_with_non_idempotent(self):
        async def slow(peer, context, seen):
            await peer.gate.wait()

        async def quick(peer, context, seen):
            await peer.read_all(context, seen)
            await context.write(b"from b")

        peers, service, relay = await self.start(slow, quick)
        sink = RecordingSink()
        call = relay.start(GrpcTarget(group="app", read_timeout=0.2,
                                      next_upstream=("timeout", "non_idempotent")),
                           "/test.Relay/Call", [], None, sink, "10.0.0.1")
        await wait(call.send(b"request"))
        call.done_sending()
        await wait(sink.ended)
        self.assertEqual(sink.events, [("headers", []), ("message", b"from b"),
                                       ("end", OK, "", [])])
        self.assertEqual([p.name for p in call.attempts.tried], [p.address for p in peers])
        # the request was replayed to b
        self.assertEqual(peers[1].calls[0].messages, [b"request"])

    async def test_the_next_response_message_is_read_only_after_the_sinks_deferred(self):
        async def three(peer, context, seen):
            for n in (b"1", b"2", b"3"):
                await context.write(n)

        peers, service, relay = await self.start(three, three)
        sink = RecordingSink(hold=True)
        relay.start(GrpcTarget(group="app"), "/test.Relay/Call", [], None, sink, None
                    ).done_sending()
        await run(until(lambda: peers[0].calls and peers[0].calls[0].ended == "ok",
                        "the peer wrote all three"))
        await run(until(lambda: len(sink.pending) == 1, "the first message"))
        self.assertEqual(sink.events, [("headers", []), ("message", b"1")])
        sink.pending[0].callback(None)
        await run(until(lambda: len(sink.pending) == 2, "the second message"))
        self.assertEqual(sink.events[-1], ("message", b"2"))
        sink.pending[1].callback(None)
        await run(until(lambda: len(sink.pending) == 3, "the third message"))
        self.assertFalse(sink.ended.called)
        sink.pending[2].callback(None)
        await wait(sink.ended)
        self.assertEqual(sink.events[-1], ("end", OK, "", []))

    async def test_cancel_ends_the_sink_at_once_and_reaches_the_peer(self):
        async def hold(peer, context, seen):
            await context.send_initial_metadata(())
            await peer.read_all(context, seen)

        peers, service, relay = await self.start(hold, hold)
        sink = RecordingSink()
        call = relay.start(GrpcTarget(group="app"), "/test.Relay/Call", [], 5.0, sink,
                           "10.0.0.1")
        await wait(call.send(b"part"))
        await run(until(lambda: peers[0].calls and peers[0].calls[0].messages,
                        "the peer got the part"))
        call.cancel()
        self.assertEqual(sink.events[-1], ("end", CANCELLED, "Cancelled", []))
        self.assertTrue(sink.ended.called)
        await run(until(lambda: peers[0].calls[0].ended, "the peer's call ended"))
        self.assertEqual((peers[0].calls[0].ended, peers[0].calls[0].half_closed),
                         ("cancelled", False))
        a = peer_state(service, peers[0])
        self.assertEqual((a.conns, a.fails), (0, 0))
        self.assertEqual(relay.calls, set())
        # the client's later messages go nowhere, and say so at once
        self.assertTrue(call.send(b"late").called)

    async def test_metadata_from_http2_is_cleaned_for_grpcio(self):
        """What an HTTP/2 location hands over as received: pseudo-headers, hop-by-hop
        and grpcio's own keys dropped, upper case lowered, ``-bin`` values given as
        base64 text decoded, x-forwarded-for set; the client's grpc-encoding is
        re-applied upstream (the peer decompresses it transparently)."""
        async def record(peer, context, seen):
            await peer.read_all(context, seen)
            await context.write(b"ok")

        peers, service, relay = await self.start(record, record)
        sink = RecordingSink()
        call = relay.start(GrpcTarget(group="app"), "/test.Relay/Call", [
            (":authority", "gw"), (":path", "/test.Relay/Call"), ("te", "trailers"),
            ("content-type", "application/grpc"), ("grpc-timeout", "5S"),
            ("grpc-encoding", "gzip"), ("grpc-accept-encoding", "gzip"),
            ("user-agent", "grpc-go/1.0"), ("X-Upper", "kept"), ("x-key-bin", "AAH/"),
            ("x-bad-bin", "***"), ("x-text", "caf\u00e9"), ("x-forwarded-for", "6.6.6.6"),
        ], None, sink, "192.0.2.7")
        await wait(call.send(b"z" * 1000))
        call.done_sending()
        await wait(sink.ended)
        self.assertEqual(sink.events[-1], ("end", OK, "", []))
        seen = peers[0].calls[0]
        self.assertEqual(seen.messages, [b"z" * 1000])
        self.assertEqual(sorted((k, v) for k, v in seen.metadata if k != "user-agent"), [
            ("x-forwarded-for", "192.0.2.7"), ("x-key-bin", b"\x00\x01\xff"),
            ("x-upper", "kept")])
