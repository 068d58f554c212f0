"""gRPC through ``grpc_pass`` locations, with real grpcio clients and real grpcio peers.

Clients are ``grpc.aio`` channels to the gateway's normal listener: cleartext HTTP/2
(prior knowledge, ``grpc.aio.insecure_channel``) and TLS with ALPN ``h2``
(``grpc.ssl_channel_credentials`` with a ``trustme`` CA). Peers are ``grpc.aio``
servers on 127.0.0.1 port 0 serving every method as raw bytes (:class:`Peer`). All of
them run on the test's asyncio reactor loop; grpc.aio coroutines are wrapped with
``Deferred.fromFuture`` (:func:`run`), and every wait is bounded.

Covered: the four call kinds byte-exact up to 16 MiB, metadata / trailers / status /
details both ways, deadline propagation (the peer sees the client's remaining time
within 50 ms), cancellation both ways (a cancelled client-streaming upload never
completes at the peer), UNAVAILABLE without a live upstream, a retry after a refused
connection, no retry once the peer sent response headers, and the access log's
``$status`` / ``$upstream_addr`` and the gRPC call metrics.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time

import grpc
import trustme
from twisted.internet import defer
from twisted.trial import unittest

from tests.integration.harness import WAIT, closed_port, start_gateway

BIG = 16 * 1024 * 1024
OPTIONS = [("grpc.max_receive_message_length", 2 * BIG),
           ("grpc.max_send_message_length", 2 * BIG)]


def run(coro, timeout: float = WAIT) -> defer.Deferred:
    """An asyncio coroutine (grpc.aio) as a Deferred, bounded by ``timeout``."""
    return defer.Deferred.fromFuture(asyncio.ensure_future(asyncio.wait_for(coro, timeout)))


def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that differ at every offset worth checking (not all zeros)."""
    block = bytes((i * 31 + seed) & 0xFF for i in range(251))
    return (block * (size // len(block) + 1))[:size]


class Peer(grpc.GenericRpcHandler):
    """A grpc.aio server answering every method by its name (raw bytes, no stubs):

    - ``/test.Echo/Echo``: each request message back as it comes (every call kind);
    - ``/test.Echo/Concat``: all request messages joined, as one response;
    - ``/test.Echo/Repeat``: request ``b"N,SIZE"``: N messages of SIZE bytes;
    - ``/test.Echo/Fail``: initial metadata, then the status named by the request's
      ``x-code`` metadata with ``x-details-bin`` (UTF-8) and trailing metadata;
    - ``/test.Echo/FailEarly``: that status without initial metadata (trailers-only);
    - ``/test.Echo/Upload``: counts the request messages and answers with the count at
      their end; ``completed`` or ``cancelled`` says how each upload ended.

    ``calls`` records ``(method, metadata dict, time_remaining, monotonic time)``.
    """

    def __init__(self, name: str):
        self.name = name
        self.calls: list = []
        self.cancelled: list = []      # Upload calls that ended cancelled
        self.completed: list = []      # Upload calls that ended as the peer answered
        self.server = None
        self.port = 0
        self.received = asyncio.Event()

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.port

    async def start(self) -> "Peer":
        self.server = grpc.aio.server(options=OPTIONS + [("grpc.so_reuseport", 0)])
        self.server.add_generic_rpc_handlers((self,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return self

    async def stop(self) -> None:
        await self.server.stop(None)

    def service(self, details):
        method = details.method
        behaviour = getattr(self, "_" + method.rsplit("/", 1)[-1].lower(), None)
        if behaviour is None:
            return None

        async def handler(requests, context):
            self.calls.append((method, dict(context.invocation_metadata()),
                               context.time_remaining(), time.monotonic()))
            self.received.set()
            async for item in behaviour(requests, context):
                yield item

        return grpc.stream_stream_rpc_method_handler(handler)

    async def _echo(self, requests, context):
        await context.send_initial_metadata((("x-peer", self.name),))
        async for request in requests:
            yield request
        context.set_trailing_metadata((("x-peer-trailer", self.name),))

    async def _concat(self, requests, context):
        parts = [request async for request in requests]
        yield b"".join(parts)

    async def _repeat(self, requests, context):
        async for request in requests:
            count, size = map(int, request.split(b","))
            for i in range(count):
                yield pattern(size, i)

    async def _fail(self, requests, context):
        await context.send_initial_metadata((("x-peer", self.name),))
        async for _ in self._fail_early(requests, context):
            yield _

    async def _failearly(self, requests, context):
        async for _ in self._fail_early(requests, context):
            yield _

    async def _fail_early(self, requests, context):
        async for _ in requests:
            break
        metadata = dict(context.invocation_metadata())
        context.set_trailing_metadata((("x-reason", "test"),
                                       ("x-blob-bin", b"\x00\xff\x10")))
        await context.abort(grpc.StatusCode[metadata["x-code"]],
                            metadata["x-details-bin"].decode("utf-8"))
        yield b""      # never reached: an async generator

    async def _upload(self, requests, context):
        count = 0
        try:
            async for _ in requests:
                count += 1
            # grpcio shows a cancel as the end of the requests first and raises the
            # cancel a few loop iterations later; an end that no cancel follows within
            # this (generous) margin is a real end of the upload
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.cancelled.append("Upload")
            raise
        self.completed.append("Upload")
        yield b"%d" % count


async def start_peers(testcase, *names) -> list:
    peers = []
    for name in names:
        peer = await Peer(name).start()
        testcase.addCleanup(lambda p=peer: run(p.stop()))
        peers.append(peer)
    return peers


def grpc_config(servers: str, location_extra: str = "", listen_extra: str = "") -> str:
    """One group ``grpc`` of ``servers`` behind ``location /`` with ``grpc_pass``."""
    return """
    [gateway]
    access_log = false
    [upstreams.grpc]
    servers = [ %s ]
    [[servers]]
    listen = ["tcp:0:interface=127.0.0.1"]
    client_max_body_size = 0
    %s
    locations = [ { path = "/", grpc_pass = "grpc://grpc" %s } ]
    """ % (servers, listen_extra, location_extra)


class GrpcLocationTests(unittest.TestCase):
    """gRPC over h2c through a grpc_pass location."""

    async def start(self, *names, servers=None, location_extra="", access_log=None):
        """Peers named ``names`` in one group (or ``servers`` TOML) and the gateway;
        a client channel to it as ``self.channel``. ``access_log``: a format, logged
        to ``self.log_path``."""
        self.peers = await run(start_peers(self, *names))
        if servers is None:
            servers = ", ".join('{ address = "%s" }' % p.address for p in self.peers)
        elif callable(servers):
            servers = servers(self.peers)
        text = grpc_config(servers, location_extra)
        if access_log is not None:
            directory = tempfile.mkdtemp(prefix="gateway-grpc-")
            self.addCleanup(shutil.rmtree, directory)
            self.log_path = os.path.join(directory, "access.log")
            text = text.replace("access_log = false", 'access_log = "%s"\n'
                                'access_log_format = "%s"' % (self.log_path, access_log))
        self.service, self.port = await start_gateway(self, text)
        self.channel = grpc.aio.insecure_channel("127.0.0.1:%d" % self.port,
                                                 options=OPTIONS)
        self.addCleanup(lambda: run(self.channel.close()))
        return self.peers

    async def test_unary_16_mib_each_way_is_byte_exact(self):
        await self.start("a")
        payload = pattern(BIG, 7)

        async def go():
            call = self.channel.unary_unary("/test.Echo/Echo")(payload, timeout=WAIT)
            return await call, await call.initial_metadata(), await call.trailing_metadata()

        answer, initial, trailing = await run(go())
        self.assertEqual(len(answer), BIG)
        self.assertTrue(answer == payload)
        self.assertEqual(peer_fields(initial), [("x-peer", "a")])
        self.assertEqual(list(trailing), [("x-peer-trailer", "a")])

    async def test_server_streaming_is_byte_exact(self):
        await self.start("a")

        async def go():
            call = self.channel.unary_stream("/test.Echo/Repeat")(b"4,1048576",
                                                                  timeout=WAIT)
            return [message async for message in call], await call.code()

        messages, code = await run(go())
        self.assertEqual(code, grpc.StatusCode.OK)
        self.assertEqual(len(messages), 4)
        self.assertTrue(all(m == pattern(1048576, i) for i, m in enumerate(messages)))

    async def test_client_streaming_is_byte_exact(self):
        await self.start("a")
        parts = [pattern(size, i) for i, size in enumerate((0, 1, 70000, BIG // 2, 5))]

        async def go():
            async def requests():
                for part in parts:
                    yield part

            return await self.channel.stream_unary("/test.Echo/Concat")(
                requests(), timeout=WAIT)

        answer = await run(go())
        self.assertTrue(answer == b"".join(parts))

    async def test_bidi_streaming_echoes_each_message_in_turn(self):
        await self.start("a")

        async def go():
            call = self.channel.stream_stream("/test.Echo/Echo")(timeout=WAIT)
            answers = []
            for i, size in enumerate((3, 100000, 0, 17)):
                await call.write(pattern(size, i))
                answers.append(await call.read())     # one round trip per message
            await call.done_writing()
            tail = await call.read()
            return answers, tail, await call.code()

        answers, tail, code = await run(go())
        self.assertEqual(answers, [pattern(size, i)
                                   for i, size in enumerate((3, 100000, 0, 17))])
        self.assertIs(tail, grpc.aio.EOF)
        self.assertEqual(code, grpc.StatusCode.OK)

    async def test_client_compressed_messages_arrive_whole(self):
        """gzip and deflate request messages are decompressed at the gateway and
        compressed again towards the peer; the answer is exact."""
        await self.start("a")
        payload = b"compressible " * 100000

        async def go(compression):
            call = self.channel.stream_stream("/test.Echo/Echo")(
                timeout=WAIT, compression=compression)
            await call.write(payload)
            answer = await call.read()
            await call.done_writing()
            return answer, await call.code()

        for compression in (grpc.Compression.Gzip, grpc.Compression.Deflate):
            answer, code = await run(go(compression))
            self.assertEqual(code, grpc.StatusCode.OK)
            self.assertTrue(answer == payload)

    async def test_metadata_status_details_and_trailers_pass_through(self):
        """Request metadata reaches the peer (hop-by-hop stripped); the peer's
        initial metadata, status, unicode details and trailing metadata (with a -bin
        value) reach the client unchanged, after initial metadata and before it."""
        await self.start("a")
        details = "invalid: d\u00e9j\u00e0 vu \u2603 100%"

        async def go(method):
            call = self.channel.unary_unary(method)(
                b"x", timeout=WAIT, metadata=(
                    ("x-code", "INVALID_ARGUMENT"),
                    ("x-details-bin", details.encode("utf-8")),
                    ("x-trace-bin", b"\x01\x02\x03")))
            try:
                await call
            except grpc.aio.AioRpcError as e:
                return (e.code(), e.details(), list(e.initial_metadata()),
                        list(e.trailing_metadata()))

        # Fail: headers, then trailers; FailEarly: one trailers-only HEADERS frame,
        # whose fields grpcio reports as trailing metadata (the gateway's server and
        # date included, as nginx's)
        for method, initial, trailing_head in (
                ("/test.Echo/Fail", [("x-peer", "a")], False),
                ("/test.Echo/FailEarly", [], True)):
            code, got_details, got_initial, trailing = await run(go(method))
            self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
            self.assertEqual(got_details, details)
            self.assertEqual(peer_fields(got_initial), initial)
            if trailing_head:
                trailing = peer_fields(trailing)
            self.assertEqual(trailing, [("x-reason", "test"),
                                        ("x-blob-bin", b"\x00\xff\x10")])
        metadata = self.peers[0].calls[0][1]
        self.assertEqual(metadata["x-trace-bin"], b"\x01\x02\x03")
        self.assertEqual(metadata["x-code"], "INVALID_ARGUMENT")
        self.assertEqual(metadata["x-forwarded-for"], "127.0.0.1")
        self.assertNotIn("te", metadata)
        self.assertNotIn("host", metadata)

    async def test_the_peer_sees_the_clients_remaining_time(self):
        await self.start("a")
        sent = []

        async def go():
            sent.append(time.monotonic())
            return await self.channel.unary_unary("/test.Echo/Echo")(b"x", timeout=5.0)

        await run(go())
        _, _, remaining, seen = self.peers[0].calls[0]
        expected = 5.0 - (seen - sent[0])
        self.assertLess(abs(remaining - expected), 0.05)

    async def test_a_client_deadline_is_deadline_exceeded_and_cancels_the_peer(self):
        await self.start("a")

        async def go():
            try:
                await self.channel.stream_unary("/test.Echo/Upload")(
                    _forever(), timeout=0.3)
            except grpc.aio.AioRpcError as e:
                return e.code()

        self.assertEqual(await run(go()), grpc.StatusCode.DEADLINE_EXCEEDED)
        await run(_until(lambda: self.peers[0].cancelled == ["Upload"]))
        self.assertEqual(self.peers[0].completed, [])

    async def test_a_client_cancel_reaches_the_peer_as_a_cancel(self):
        """A cancelled client-streaming upload never completes at the peer (the
        half-close never gets there before the cancel), repeatedly."""
        peer, = await self.start("a")

        async def go():
            for i in range(100):
                call = self.channel.stream_unary("/test.Echo/Upload")(timeout=WAIT)
                await call.write(b"part")
                await _until(lambda: len(peer.calls) == i + 1)
                call.cancel()
                await _until(lambda: len(peer.cancelled) + len(peer.completed) == i + 1)
            return peer.completed

        self.assertEqual(await run(go(), timeout=4 * WAIT), [])
        self.assertEqual(peer.cancelled, ["Upload"] * 100)

    async def test_a_peer_cancel_reaches_the_client_as_cancelled(self):
        await self.start("a")

        async def go():
            call = self.channel.stream_stream("/test.Echo/Echo")(timeout=WAIT)
            await call.write(b"x")
            await call.read()
            # the peer cancels the call: its server goes away abruptly
            await self.peers[0].server.stop(None)
            try:
                await call.read()
            except grpc.aio.AioRpcError as e:
                return e.code()
            return await call.code()

        self.assertIn(await run(go()), (grpc.StatusCode.CANCELLED,
                                        grpc.StatusCode.UNAVAILABLE))

    async def test_no_live_upstream_is_unavailable(self):
        await self.start("a", servers='{ address = "%s", down = true }' % closed_port())

        async def go():
            try:
                await self.channel.unary_unary("/test.Echo/Echo")(b"x", timeout=WAIT)
            except grpc.aio.AioRpcError as e:
                return e.code(), e.initial_metadata()

        code, initial = await run(go())
        self.assertEqual(code, grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(peer_fields(initial), [])

    async def test_a_refused_peer_is_retried_on_the_next(self):
        refused = closed_port()
        # the refused address first: round robin tries it first
        peer, = await self.start("a", servers=lambda peers: (
            '{ address = "%s" }, { address = "%s" }' % (refused, peers[0].address)))
        answer = await run(self.channel.unary_unary("/test.Echo/Echo")(b"x", timeout=WAIT))
        self.assertEqual(answer, b"x")
        self.assertEqual(len(peer.calls), 1)

    async def test_the_access_log_and_metrics_see_each_call(self):
        """``$status`` is the HTTP status (200), ``$upstream_addr`` every peer tried
        (the refused one first), and each call is counted once by its gRPC status."""
        refused = closed_port()
        peer, = await self.start("a", servers=lambda peers: (
            '{ address = "%s" }, { address = "%s" }' % (refused, peers[0].address)),
            access_log="$request_method $request_uri $status $upstream_addr "
                       "$upstream_status")

        async def go():
            await self.channel.unary_unary("/test.Echo/Echo")(b"x", timeout=WAIT)
            try:
                await self.channel.unary_unary("/test.Echo/FailEarly")(
                    b"x", timeout=WAIT, metadata=(("x-code", "NOT_FOUND"),
                                                  ("x-details-bin", b"")))
            except grpc.aio.AioRpcError as e:
                return e.code()

        self.assertEqual(await run(go()), grpc.StatusCode.NOT_FOUND)
        self.service.access_log.flush()
        with open(self.log_path) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines, [
            "POST /test.Echo/Echo 200 %s, %s -, 200" % (refused, peer.address),
            "POST /test.Echo/FailEarly 200 %s -" % peer.address])
        self.assertEqual(self.service.metrics.grpc_calls, {"OK": 1, "NOT_FOUND": 1})

    async def test_no_retry_after_the_peer_sent_response_headers(self):
        a, b = await self.start("a", "b")

        async def go():
            try:
                await self.channel.unary_unary("/test.Echo/Fail")(
                    b"x", timeout=WAIT, metadata=(("x-code", "UNAVAILABLE"),
                                                  ("x-details-bin", b"going away")))
            except grpc.aio.AioRpcError as e:
                return e.code(), e.details()

        self.assertEqual(await run(go()), (grpc.StatusCode.UNAVAILABLE, "going away"))
        self.assertEqual([len(a.calls), len(b.calls)], [1, 0])


def peer_fields(metadata) -> list:
    """Response metadata without the ``server`` and ``date`` fields that the gateway
    puts first in every response head, as nginx does."""
    metadata = list(metadata)
    if not metadata:
        return metadata
    assert metadata[0] == ("server", "gateway"), metadata
    assert metadata[1][0] == "date", metadata
    return metadata[2:]


async def _forever():
    yield b"x"
    await asyncio.sleep(WAIT)


async def _until(condition, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def _tls_files(testcase):
    """A trustme CA and a certificate for ``localhost`` written to files."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    directory = tempfile.mkdtemp(prefix="gateway-grpc-")
    testcase.addCleanup(lambda: [os.remove(os.path.join(directory, n))
                                 for n in os.listdir(directory)] and os.rmdir(directory))
    certificate = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    with open(certificate, "wb") as f:
        for pem in cert.cert_chain_pems:
            f.write(pem.bytes())
    cert.private_key_pem.write_to_path(key)
    return ca, certificate, key


class GrpcLocationTLSTests(unittest.TestCase):
    """gRPC over TLS (ALPN h2) through a grpc_pass location."""

    async def start(self):
        ca, certificate, key = _tls_files(self)
        self.peer, = await run(start_peers(self, "a"))
        _, port = await start_gateway(self, grpc_config(
            '{ address = "%s" }' % self.peer.address,
            listen_extra='tls = { certificate = "%s", key = "%s" }' % (certificate, key)))
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
        self.channel = grpc.aio.secure_channel(
            "127.0.0.1:%d" % port, credentials,
            options=OPTIONS + [("grpc.ssl_target_name_override", "localhost")])
        self.addCleanup(lambda: run(self.channel.close()))

    async def test_unary_and_bidi_calls_work_over_tls(self):
        await self.start()
        payload = pattern(BIG, 3)

        async def go():
            answer = await self.channel.unary_unary("/test.Echo/Echo")(payload,
                                                                       timeout=WAIT)
            call = self.channel.stream_stream("/test.Echo/Echo")(timeout=WAIT)
            echoed = []
            for part in (b"one", pattern(200000), b"three"):
                await call.write(part)
                echoed.append(await call.read())
            await call.done_writing()
            return answer, echoed, await call.code(), await call.trailing_metadata()

        answer, echoed, code, trailing = await run(go())
        self.assertTrue(answer == payload)
        self.assertEqual(echoed, [b"one", pattern(200000), b"three"])
        self.assertEqual(code, grpc.StatusCode.OK)
        self.assertEqual(list(trailing), [("x-peer-trailer", "a")])

    async def test_errors_and_deadlines_pass_over_tls(self):
        await self.start()
        sent = []

        async def go():
            sent.append(time.monotonic())
            try:
                await self.channel.unary_unary("/test.Echo/Fail")(
                    b"x", timeout=3.0, metadata=(("x-code", "NOT_FOUND"),
                                                 ("x-details-bin", b"no such thing")))
            except grpc.aio.AioRpcError as e:
                return e.code(), e.details()

        self.assertEqual(await run(go()), (grpc.StatusCode.NOT_FOUND, "no such thing"))
        _, _, remaining, seen = self.peer.calls[0]
        self.assertLess(abs(remaining - (3.0 - (seen - sent[0]))), 0.05)
