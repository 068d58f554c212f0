"""The ``[[grpc_servers]]`` front door end to end: real grpcio clients and peers.

Each test starts its peers (:class:`~tests.grpc_pass.servers.EchoPeer`, grpc.aio servers
on 127.0.0.1 port 0) and a gateway whose front door relays to them, then calls the
door with a grpcio client using raw bytes. What the client got and what each peer saw
are asserted exactly; waits are bounded, and timing-dependent cases hold the peer
until the test releases it.
"""
from __future__ import annotations

import os
import time
import tomllib

import grpc
from grpc import aio
from twisted.trial import unittest

from gateway.config import parse_config
from tests.grpc_pass.servers import (
    MiB, client, peer_state, run, start_gateway, start_peers, until,
)
from tests.integration.harness import closed_port

DOOR = """
[[grpc_servers]]
listen = "127.0.0.1:0"
grpc_pass = "grpc://app"
{extra}
"""


def gateway_config(servers: str, upstream: str = "", extra: str = "") -> str:
    return (f"[upstreams.app]\nservers = [{servers}]\n{upstream}\n"
            + DOOR.replace("{extra}", extra))


ONE = gateway_config('{ address = "{p0}" }')
TWO = gateway_config('{ address = "{p0}" }, { address = "{p1}" }')


def raises(call_coro):
    """(asyncio) The ``AioRpcError`` a call ends with (None when it succeeded)."""
    async def wrapped():
        try:
            await call_coro
        except aio.AioRpcError as e:
            return e
        return None
    return wrapped()


class CallKinds(unittest.TestCase):
    """Unary, server-, client-streaming and bidi calls with byte-exact payloads."""

    async def test_all_four_call_kinds_pass_byte_exact_payloads_up_to_16_mib(self):
        (peer,) = await start_peers(self, "a")
        _, port = await start_gateway(self, ONE, [peer])
        c = client(self, port)
        big = os.urandom(16 * MiB)
        mid = os.urandom(MiB + 3)

        async def scenario():
            unary = await c.unary()(big)
            streamed = [m async for m in c.unary_stream()(mid)]
            uploaded = await c.stream_unary()(iter([mid, b"", b"\x00" * 70000]))
            bidi = c.stream()()
            echoed = []
            for message in (b"one", b"", big, b"\xff" * 5):
                await bidi.write(message)
                echoed.append(await bidi.read())
            await bidi.done_writing()
            tail = await bidi.read()
            return unary, streamed, uploaded, echoed, tail, await bidi.code()

        unary, streamed, uploaded, echoed, tail, code = await run(scenario())
        self.assertTrue(unary == big)
        self.assertEqual(streamed, [mid, mid[::-1], b""])
        self.assertTrue(uploaded == mid + b"\x00" * 70000)
        self.assertTrue(echoed == [b"one", b"", big, b"\xff" * 5])
        self.assertIs(tail, aio.EOF)
        self.assertEqual(code, grpc.StatusCode.OK)
        self.assertEqual([c.method for c in peer.calls], [
            "/test.Echo/Unary", "/test.Echo/ServerStream", "/test.Echo/ClientStream",
            "/test.Echo/Bidi"])
        self.assertEqual([c.ended for c in peer.calls], ["ok"] * 4)

    async def test_compressed_requests_are_accepted(self):
        """grpcio decompresses what the client compressed (gzip, deflate); the peer
        gets the same bytes."""
        (peer,) = await start_peers(self, "a")
        _, port = await start_gateway(self, ONE, [peer])
        c = client(self, port)
        payload = b"squeeze me " * 10000

        async def scenario():
            return [await c.unary()(payload, compression=compression)
                    for compression in (grpc.Compression.Gzip, grpc.Compression.Deflate)]

        self.assertTrue(await run(scenario()) == [payload, payload])
        self.assertTrue([s.messages for s in peer.calls] == [[payload], [payload]])

    async def test_a_message_above_16_mib_is_refused_with_resource_exhausted(self):
        """The door refuses the message; the upstream call (opened when the client's
        call arrived, as any streaming call must be) is cancelled, never completed."""
        (peer,) = await start_peers(self, "a")
        _, port = await start_gateway(self, ONE, [peer])
        c = client(self, port)

        async def scenario():
            error = await raises(c.unary()(b"x" * (16 * MiB + 1)))
            await until(lambda: all(s.ended for s in peer.calls), "the peer's call ended")
            return error

        error = await run(scenario())
        self.assertEqual(error.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual({(len(s.messages), s.ended, s.half_closed) for s in peer.calls}
                         - {(0, "cancelled", False)}, set())


class MetadataAndStatus(unittest.TestCase):
    """Request and response metadata, trailers, status codes and details."""

    async def test_metadata_trailers_status_and_unicode_details_pass_unchanged(self):
        """Initial metadata, a message, then an error with unicode details and
        trailing metadata (``-bin`` values as bytes): the client gets each exactly;
        the peer gets the client's metadata minus hop-by-hop keys, with the
        client's address in x-forwarded-for."""
        (peer,) = await start_peers(self, "a")

        async def answer(peer_, context, seen):
            await context.send_initial_metadata(
                (("x-initial", "yes"), ("x-initial-bin", b"\x00\x01\xfe")))
            await context.write(b"first")
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "ünïcödé détails ✓ — 100%",
                                (("x-trailer", "t"), ("x-trailer-bin", b"\xff\x00")))

        peer.handlers["/test.Meta/Call"] = answer
        service, port = await start_gateway(self, ONE, [peer])
        c = client(self, port)

        async def scenario():
            call = c.stream("/test.Meta/Call")(metadata=(
                ("x-custom", "value"), ("x-data-bin", b"\x00\xff"),
                ("keep-alive", "1"), ("upgrade", "h2c"), ("proxy-authorization", "secret"),
                ("host", "elsewhere"), ("x-forwarded-for", "6.6.6.6"),
                ("connection", "x-named"), ("x-named", "hop")))
            initial = await call.initial_metadata()
            first = await call.read()
            error = await raises(call.read())
            return initial, first, error

        initial, first, error = await run(scenario())
        self.assertEqual(list(initial), [("x-initial", "yes"),
                                         ("x-initial-bin", b"\x00\x01\xfe")])
        self.assertEqual(first, b"first")
        self.assertEqual(error.code(), grpc.StatusCode.FAILED_PRECONDITION)
        self.assertEqual(error.details(), "ünïcödé détails ✓ — 100%")
        self.assertEqual(list(error.trailing_metadata()),
                         [("x-trailer", "t"), ("x-trailer-bin", b"\xff\x00")])
        (seen,) = peer.calls
        received = sorted((k, v) for k, v in seen.metadata if k != "user-agent")
        self.assertEqual(received, [("x-custom", "value"), ("x-data-bin", b"\x00\xff"),
                                    ("x-forwarded-for", "127.0.0.1")])
        # the peer answered: not a failure
        self.assertEqual(peer_state(service, peer).fails, 0)

    async def test_errors_mid_stream_and_trailers_only_errors_are_passed_as_they_are(self):
        """A server stream that fails after two messages; a call refused at once
        (trailers-only) — neither retried, neither the peer's failure."""
        peers = await start_peers(self, "a", "b")

        async def mid_stream(peer_, context, seen):
            await context.read()
            await context.write(b"1")
            await context.write(b"2")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota")

        async def refuse(peer_, context, seen):
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing",
                                (("why-bin", b"\x01"),))

        for peer in peers:
            peer.handlers["/test.Fail/Mid"] = mid_stream
            peer.handlers["/test.Fail/Now"] = refuse
        service, port = await start_gateway(self, TWO, peers)
        c = client(self, port)

        async def scenario():
            call = c.unary_stream("/test.Fail/Mid")(b"go")
            got = [await call.read(), await call.read()]
            mid = await raises(call.read())
            now = await raises(c.unary("/test.Fail/Now")(b"x"))
            return got, mid, now

        got, mid, now = await run(scenario())
        self.assertEqual(got, [b"1", b"2"])
        self.assertEqual((mid.code(), mid.details()),
                         (grpc.StatusCode.RESOURCE_EXHAUSTED, "quota"))
        self.assertEqual((now.code(), now.details(), list(now.trailing_metadata())),
                         (grpc.StatusCode.NOT_FOUND, "no such thing",
                          [("why-bin", b"\x01")]))
        self.assertEqual([len(p.calls) for p in peers], [1, 1])
        self.assertEqual([peer_state(service, p).fails for p in peers], [0, 0])

    async def test_no_live_upstreams_is_unavailable(self):
        (peer,) = await start_peers(self, "a")
        _, port = await start_gateway(self, gateway_config(
            '{ address = "{p0}", down = true }'), [peer])
        error = await run(raises(client(self, port).unary()(b"x")))
        self.assertEqual((error.code(), error.details()),
                         (grpc.StatusCode.UNAVAILABLE, "no live upstreams"))


class Deadlines(unittest.TestCase):
    async def test_the_peer_sees_the_clients_remaining_time_within_50ms(self):
        (peer,) = await start_peers(self, "a")
        arrived = []

        async def stamp(peer_, context, seen):
            arrived.append(time.monotonic())
            await peer_.read_all(context, seen)
            await context.write(b"ok")

        peer.handlers["/test.Time/Stamp"] = stamp
        _, port = await start_gateway(self, ONE, [peer])
        c = client(self, port)

        async def scenario():
            await c.unary()(b"warm up")          # connections opened before timing
            started = time.monotonic()
            await c.unary("/test.Time/Stamp")(b"x", timeout=5.0)
            await c.unary("/test.Time/Stamp")(b"x")
            return started

        started = await run(scenario())
        timed, untimed = peer.calls[1:]
        expected = 5.0 - (arrived[0] - started)
        self.assertLess(abs(timed.time_remaining - expected), 0.05)
        self.assertIsNone(untimed.time_remaining)

    async def test_a_client_timeout_never_marks_a_healthy_peer_failed(self):
        """The client's deadline passes while the peer holds the call: the client
        gets DEADLINE_EXCEEDED, the peer sees the call cancelled, nothing is retried
        and neither peer counts a failure."""
        peers = await start_peers(self, "a", "b")
        service, port = await start_gateway(self, TWO, peers)
        c = client(self, port)

        async def scenario():
            error = await raises(c.unary("/test.Echo/Hold")(b"x", timeout=0.3))
            await until(lambda: all(s.ended for p in peers for s in p.calls),
                        "the peer's call ended")
            return error

        error = await run(scenario())
        self.assertEqual(error.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertEqual([[s.ended for s in p.calls] for p in peers], [["cancelled"], []])
        for peer in peers:
            state = peer_state(service, peer)
            self.assertEqual((state.fails, state.failures, state.conns), (0, 0, 0))


class Cancellation(unittest.TestCase):
    async def test_a_client_cancel_reaches_the_peer_as_a_cancel(self):
        (peer,) = await start_peers(self, "a")
        service, port = await start_gateway(self, ONE, [peer])
        c = client(self, port)

        async def scenario():
            call = c.stream()()
            await call.write(b"ping")
            echoed = await call.read()
            call.cancel()
            await until(lambda: peer.calls[0].ended, "the peer's call ended")
            return echoed

        self.assertEqual(await run(scenario()), b"ping")
        (seen,) = peer.calls
        self.assertEqual((seen.ended, seen.half_closed), ("cancelled", False))
        state = peer_state(service, peer)
        self.assertEqual((state.conns, state.fails, state.failures), (0, 0, 0))

    async def test_a_cancelled_upload_never_completes_at_the_peer_100_times(self):
        """grpcio shows a client's cancel to a server as end-of-stream first (the
        known trap): every cancelled client-streaming call must reach the peer as a
        cancellation, never as a completed upload."""
        (peer,) = await start_peers(self, "a")
        _, port = await start_gateway(self, ONE, [peer])
        c = client(self, port)
        upload = c.stream_unary("/test.Echo/Upload")

        async def scenario():
            for i in range(100):
                call = upload()
                await call.write(b"part %d" % i)
                await until(lambda: len(peer.calls) == i + 1 and peer.calls[i].messages,
                            "the peer received the part", step=0.001)
                call.cancel()
            await until(lambda: all(s.ended for s in peer.calls), "every call ended")

        await run(scenario())
        self.assertEqual(len(peer.calls), 100)
        self.assertEqual({(s.ended, s.half_closed) for s in peer.calls},
                         {("cancelled", False)})

    async def test_a_peer_cancelling_its_call_reaches_the_client(self):
        (peer,) = await start_peers(self, "a")

        async def give_up(peer_, context, seen):
            await context.read()
            await context.write(b"partial")
            await context.abort(grpc.StatusCode.CANCELLED, "peer gave up")

        peer.handlers["/test.Cancel/Up"] = give_up
        _, port = await start_gateway(self, ONE, [peer])
        c = client(self, port)

        async def scenario():
            call = c.stream("/test.Cancel/Up")()
            await call.write(b"x")
            return await call.read(), await raises(call.read())

        first, error = await run(scenario())
        self.assertEqual(first, b"partial")
        self.assertEqual((error.code(), error.details()),
                         (grpc.StatusCode.CANCELLED, "peer gave up"))


async def who(testcase, port: int, count: int) -> list[str]:
    """The names of the peers that answered ``count`` calls in a row."""
    c = client(testcase, port)

    async def scenario():
        return [(await c.unary("/test.Echo/Who")(b"")).decode() for _ in range(count)]

    return await run(scenario())


class Balancing(unittest.TestCase):
    """The front door's calls go through the shared upstream manager."""

    async def test_weighted_round_robin_distributes_calls_5_1_1(self):
        peers = await start_peers(self, "a", "b", "c")
        _, port = await start_gateway(self, gateway_config(
            '{ address = "{p0}", weight = 5 }, { address = "{p1}" }, { address = "{p2}" }'),
            peers)
        self.assertEqual(await who(self, port, 7), list("aabacaa"))

    async def test_down_peers_are_never_used_and_backups_only_when_primaries_are_out(self):
        peers = await start_peers(self, "down", "primary", "backup")
        service, port = await start_gateway(self, gateway_config(
            '{ address = "{p0}", down = true }, { address = "{p1}" }, '
            '{ address = "{p2}", backup = true }'), peers)
        self.assertEqual(await who(self, port, 3), ["primary"] * 3)
        peer_state(service, peers[1]).down = True
        self.assertEqual(await who(self, port, 2), ["backup"] * 2)
        self.assertEqual(peers[0].calls, [])

    async def test_max_conns_counts_calls_in_flight(self):
        """Each peer takes one call at a time: two held calls fill the group, a
        third finds no live upstream; once released, calls go through again."""
        peers = await start_peers(self, "a", "b")
        service, port = await start_gateway(self, gateway_config(
            '{ address = "{p0}", max_conns = 1 }, { address = "{p1}", max_conns = 1 }'),
            peers)
        c = client(self, port)
        hold = c.unary("/test.Echo/Hold")

        async def scenario():
            first, second = hold(b""), hold(b"")
            await until(lambda: all(p.running() for p in peers), "both peers hold a call")
            conns = [peer_state(service, p).conns for p in peers]
            third = await raises(hold(b""))
            for peer in peers:
                peer.release()
            answers = sorted([(await first).decode(), (await second).decode()])
            after = (await c.unary("/test.Echo/Who")(b"")).decode()
            return conns, third, answers, after

        conns, third, answers, after = await run(scenario())
        self.assertEqual(conns, [1, 1])
        self.assertEqual((third.code(), third.details()),
                         (grpc.StatusCode.UNAVAILABLE, "no live upstreams"))
        self.assertEqual(answers, ["a", "b"])
        self.assertIn(after, ("a", "b"))
        self.assertEqual([peer_state(service, p).conns for p in peers], [0, 0])


class Retries(unittest.TestCase):
    async def test_a_refused_peer_is_retried_on_the_next_and_counted_failed(self):
        (peer,) = await start_peers(self, "a")
        refused = closed_port()
        service, port = await start_gateway(self, gateway_config(
            f'{{ address = "{refused}" }}, {{ address = "{{p0}}" }}'), [peer])
        c = client(self, port)
        answer = await run(c.unary("/test.Echo/Who")(b""))
        self.assertEqual(answer, b"a")
        dead = next(p for p in service.manager.group("app").peers if p.name == refused)
        self.assertEqual((dead.fails, dead.failures, dead.conns), (1, 1, 0))
        self.assertEqual(peer_state(service, peer).fails, 0)

    async def test_unavailable_before_headers_is_retried_with_the_request_replayed(self):
        """A trailers-only UNAVAILABLE: the next peer gets every request message the
        first one had received, and answers the client."""
        peers = await start_peers(self, "a", "b")

        async def overloaded(peer_, context, seen):
            await peer_.read_all(context, seen)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "overloaded")

        peers[0].handlers["/test.Echo/ClientStream"] = overloaded
        service, port = await start_gateway(self, TWO, peers)
        c = client(self, port)
        parts = [b"one", b"", b"three" * 1000]
        answer = await run(c.stream_unary()(iter(parts)))
        self.assertTrue(answer == b"".join(parts))
        self.assertEqual([p.calls[0].messages for p in peers], [parts, parts])
        self.assertEqual(peer_state(service, peers[0]).fails, 1)

    async def test_no_retry_beyond_the_replay_bound(self):
        """More than 1 MiB of request messages sent: the first peer's UNAVAILABLE
        is final."""
        peers = await start_peers(self, "a", "b")

        async def overloaded(peer_, context, seen):
            await peer_.read_all(context, seen)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "overloaded")

        peers[0].handlers["/test.Echo/ClientStream"] = overloaded
        _, port = await start_gateway(self, TWO, peers)
        c = client(self, port)
        error = await run(raises(c.stream_unary()(iter([b"x" * 600_000, b"y" * 600_000]))))
        self.assertEqual((error.code(), error.details()),
                         (grpc.StatusCode.UNAVAILABLE, "overloaded"))
        self.assertEqual(peers[1].calls, [])

    async def test_no_retry_after_response_headers(self):
        """The first peer sent its headers, then UNAVAILABLE: the call is committed,
        the client gets both, the second peer is never asked."""
        peers = await start_peers(self, "a", "b")

        async def late(peer_, context, seen):
            await context.send_initial_metadata((("x-from", peer_.name),))
            await peer_.gate.wait()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "after headers")

        peers[0].handlers["/test.Late/Fail"] = late
        service, port = await start_gateway(self, TWO, peers)
        c = client(self, port)

        async def scenario():
            call = c.unary_stream("/test.Late/Fail")(b"x")
            initial = await call.initial_metadata()    # the headers, before the end
            peers[0].release()
            return initial, await raises(call.read())

        initial, error = await run(scenario())
        self.assertEqual(list(initial), [("x-from", "a")])
        self.assertEqual((error.code(), error.details()),
                         (grpc.StatusCode.UNAVAILABLE, "after headers"))
        self.assertEqual(peers[1].calls, [])
        self.assertEqual(peer_state(service, peers[0]).fails, 0)

    async def test_grpc_next_upstream_off_never_retries(self):
        (peer,) = await start_peers(self, "a")
        refused = closed_port()
        service, port = await start_gateway(self, gateway_config(
            f'{{ address = "{refused}" }}, {{ address = "{{p0}}" }}',
            extra='grpc_next_upstream = ["off"]'), [peer])
        error = await run(raises(client(self, port).unary("/test.Echo/Who")(b"")))
        self.assertEqual(error.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertTrue(error.details().startswith("failed to connect to all addresses"))
        self.assertEqual(peer.calls, [])


class PeerChannels(unittest.TestCase):
    async def test_a_peer_that_leaves_the_group_loses_its_channel(self):
        """A reload that drops a peer closes that peer's channel; the others stay."""
        peers = await start_peers(self, "a", "b")
        service, port = await start_gateway(self, TWO, peers)
        self.assertEqual(await who(self, port, 2), ["a", "b"])
        channels = service.grpc_relay.channels
        keys = [("app", p.address, False) for p in peers]
        self.assertEqual([k in channels for k in keys], [True, True])
        text = ONE.replace("{p0}", peers[0].address)
        config = parse_config(tomllib.loads(
            text + "\n[admin]\nlisten = false\n[gateway]\naccess_log = false\n"),
            "/tmp/gateway-test.toml")
        result = await service.reload(config)
        self.assertTrue(result.ok, result)
        self.assertEqual([k in channels for k in keys], [True, False])
        self.assertEqual(await who(self, port, 2), ["a", "a"])
