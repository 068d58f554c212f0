"""Real grpcio peers, clients and gateways for the gRPC integration tests.

Everything runs on the test reactor's own asyncio loop (``tests/conftest.py`` installs
the asyncio reactor), as in production. Test bodies are Twisted coroutines; the
asyncio side of a scenario is written as an asyncio coroutine and awaited through
:func:`run` (``Deferred.fromFuture``), never the other way round. Every wait is bounded
(:data:`WAIT`).

:class:`EchoPeer` is a ``grpc.aio`` server on 127.0.0.1 port 0 answering the methods of
a ``test.Echo`` service with raw bytes (no stubs), recording each call it saw
(:class:`Seen`): metadata, the deadline it was given, how it ended. Its ``Hold`` method
waits until the test releases it (hold-and-release), and ``health`` is what its
``grpc.health.v1.Health/Check`` answers (None: no health service → ``UNIMPLEMENTED``).
"""
from __future__ import annotations

import asyncio
import functools
import textwrap
import time
import tomllib
from dataclasses import dataclass, field
from typing import Optional

import grpc
from grpc import aio
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from gateway.config import parse_config
from gateway.grpc_pass.health import CHECK_METHOD, check_request
from gateway.service import GatewayService

WAIT = 10.0
MiB = 1024 * 1024
OPTIONS = (("grpc.max_send_message_length", 16 * MiB + 1024),
           ("grpc.max_receive_message_length", 16 * MiB + 1024),
           ("grpc.so_reuseport", 0))


def run(coro) -> Deferred:
    """Run an asyncio coroutine on the reactor's loop, bounded by :data:`WAIT`."""
    return Deferred.fromFuture(asyncio.ensure_future(asyncio.wait_for(coro, WAIT)))


async def until(predicate, what: str, timeout: float = WAIT, step: float = 0.01) -> None:
    """(asyncio) Poll ``predicate`` every ``step`` seconds until it holds; fail after
    ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(step)


@dataclass
class Seen:
    """One call as a peer saw it."""

    method: str
    metadata: list
    time_remaining: Optional[float]
    messages: list = field(default_factory=list)
    #: "ok", "cancelled", "aborted", or None while running
    ended: Optional[str] = None
    #: whether the handler read the client's end of stream (a completed upload)
    half_closed: bool = False


class EchoPeer:
    """One peer: ``test.Echo`` methods plus an optional health service."""

    def __init__(self, name: str):
        self.name = name
        self.server: Optional[aio.Server] = None
        self.port = 0
        self.calls: list[Seen] = []
        #: service name → ServingStatus int; None: no health service
        self.health: Optional[dict] = {"": 1}
        self.health_checks = 0
        #: released by the test (``release``) for ``Hold`` calls
        self.gate = asyncio.Event()
        #: extra methods: name → async fn(peer, context, seen)
        self.handlers: dict = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def release(self) -> None:
        self.gate.set()

    def running(self) -> list[Seen]:
        return [c for c in self.calls if c.ended is None]

    async def start(self, port: int = 0, credentials=None) -> None:
        server = aio.server(options=OPTIONS)
        server.add_generic_rpc_handlers((_PeerHandler(self),))
        where = f"127.0.0.1:{port}"
        self.port = (server.add_secure_port(where, credentials) if credentials is not None
                     else server.add_insecure_port(where))
        await server.start()
        self.server = server

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.stop(0)

    async def serve(self, method: str, _requests, context) -> None:
        if method == CHECK_METHOD:
            return await self._health(context)
        seen = Seen(method, list(context.invocation_metadata()), context.time_remaining())
        self.calls.append(seen)
        try:
            handler = self.handlers.get(method) or _METHODS[method.rpartition("/")[2]]
            await handler(self, context, seen)
            seen.ended = "ok"
        except asyncio.CancelledError:
            seen.ended = "cancelled"
            raise
        except Exception:
            seen.ended = "aborted"
            raise

    async def _health(self, context) -> None:
        self.health_checks += 1
        request = await context.read()
        service = next((name for name in self.health
                        if check_request(name) == request), None)
        if service is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        status = self.health[service]
        await context.write(b"\x08" + bytes([status]) if status else b"")

    async def read_all(self, context, seen: Seen) -> list[bytes]:
        while True:
            message = await read(context, seen)
            if message is aio.EOF:
                return seen.messages
            seen.messages.append(message)


async def read(context, seen: Seen):
    """One request message, or EOF for a true half-close. grpcio shows a server a
    client's cancel as EOF first (the trap the front door avoids too): one more read
    lets a cancel queued behind the EOF arrive (as CancelledError) before the EOF is
    believed."""
    message = await context.read()
    if message is aio.EOF:
        await context.read()
        seen.half_closed = True
    return message


class _PeerHandler(grpc.GenericRpcHandler):
    def __init__(self, peer: EchoPeer):
        self.peer = peer

    def service(self, details):
        if details.method == CHECK_METHOD and self.peer.health is None:
            return None
        if details.method != CHECK_METHOD and details.method.rpartition("/")[2] not in \
                _METHODS and details.method not in self.peer.handlers:
            return None
        return grpc.stream_stream_rpc_method_handler(
            functools.partial(self.peer.serve, details.method))


async def _unary(peer, context, seen):
    messages = await peer.read_all(context, seen)
    await context.write(messages[0])


async def _server_stream(peer, context, seen):
    """The request, then its reverse, then an empty message."""
    (message,) = await peer.read_all(context, seen)
    for answer in (message, message[::-1], b""):
        await context.write(answer)


async def _client_stream(peer, context, seen):
    await context.write(b"".join(await peer.read_all(context, seen)))


async def _bidi(peer, context, seen):
    while True:
        message = await read(context, seen)
        if message is aio.EOF:
            return
        seen.messages.append(message)
        await context.write(message)


async def _who(peer, context, seen):
    await peer.read_all(context, seen)
    await context.write(peer.name.encode())


async def _hold(peer, context, seen):
    """Answer the peer's name once the test releases the gate (requests are read as
    they come, the upload not waited for)."""
    await context.send_initial_metadata((("held-by", peer.name),))
    await peer.gate.wait()
    await context.write(peer.name.encode())


async def _upload(peer, context, seen):
    """A client-streaming upload: counts as complete only when the client half-closed."""
    await peer.read_all(context, seen)
    await context.write(b"%d" % len(seen.messages))


_METHODS = {"Unary": _unary, "ServerStream": _server_stream,
            "ClientStream": _client_stream, "Bidi": _bidi, "Who": _who, "Hold": _hold,
            "Upload": _upload}


async def start_peers(testcase, *names: str, credentials=None) -> list[EchoPeer]:
    """(Twisted) Start one peer per name (TLS with ``credentials``); stopped at
    cleanup."""
    peers = [EchoPeer(name) for name in names]
    for peer in peers:
        await run(peer.start(credentials=credentials))
        testcase.addCleanup(lambda p=peer: run(p.stop()))
    return peers


class Client:
    """A grpcio client of the gateway's front door (raw bytes)."""

    def __init__(self, port: int, credentials=None, options=()):
        target = f"127.0.0.1:{port}"
        options = OPTIONS[:2] + tuple(options)
        self.channel = (aio.secure_channel(target, credentials, options=options)
                        if credentials is not None
                        else aio.insecure_channel(target, options=options))

    def unary(self, method: str = "/test.Echo/Unary"):
        return self.channel.unary_unary(method)

    def unary_stream(self, method: str = "/test.Echo/ServerStream"):
        return self.channel.unary_stream(method)

    def stream_unary(self, method: str = "/test.Echo/ClientStream"):
        return self.channel.stream_unary(method)

    def stream(self, method: str = "/test.Echo/Bidi"):
        return self.channel.stream_stream(method)

    async def close(self) -> None:
        await self.channel.close()


def client(testcase, port: int, **kwargs) -> Client:
    c = Client(port, **kwargs)
    testcase.addCleanup(lambda: run(c.close()))
    return c


async def start_gateway(testcase, toml: str, peers=(), **values):
    """(Twisted) A gateway from ``toml`` (``{p0}``, ``{p1}``… are the peers' addresses,
    other ``{name}`` the keyword values), started; returns the service and the port of
    its first front door."""
    text = textwrap.dedent(toml)
    for i, peer in enumerate(peers):
        text = text.replace("{p%d}" % i, peer.address)
    for key, value in values.items():
        text = text.replace("{%s}" % key, str(value))
    text += "\n[admin]\nlisten = false\n[gateway]\naccess_log = false\n"
    config = parse_config(tomllib.loads(text), "/tmp/gateway-test.toml")
    service = GatewayService(config, reactor)
    service.startService()
    testcase.addCleanup(service.stopService)
    door = service.front_doors[0]
    await door.started
    return service, door.port


def peer_state(service, peer: EchoPeer, group: str = "app"):
    """The upstream ``Peer`` of ``peer`` in ``group``."""
    g = service.manager.group(group)
    for p in g.peers + g.backups:
        if p.name == peer.address:
            return p
    raise KeyError(peer.address)
