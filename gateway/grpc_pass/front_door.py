"""The ``[[grpc_servers]]`` front door: a ``grpc.aio`` server relaying every method.

This module owns the optional dedicated gRPC entry (CONFIG.md, "gRPC"): a grpcio server
on its own ``listen`` address, cleartext or TLS (``ssl_server_credentials`` from its
``tls`` table), with one generic handler that takes any ``/package.Service/Method`` as
a stream-stream call of raw bytes and relays it through the service's
:class:`~gateway.grpc_pass.relay.Relay` to the ``grpc_pass`` group. What happens
upstream (peer choice, retries, accounting) is the relay's.

:class:`FrontDoor` is the Twisted service around the server: it binds in
``startService`` (``grpc.so_reuseport = 0``, so a port already in use stops startup
with one line, as the HTTP listeners do), keeps the ``grpc.aio.Server`` referenced (it
shuts down when collected) and stops it in ``stopService`` — ``server.stop(grace)``
bridged to a Deferred, so twistd waits for it before the reactor stops; calls still
running after ``shutdown_timeout`` are cancelled.

One call (:class:`_DoorCall`): the handler task reads nothing itself; a *pump* task
reads the client's messages and hands each to ``call.send``, waiting for it to be
written upstream before reading the next (one message in flight), while the handler
task writes what the relay's sink receives: the response headers, each message (the
relay reads the next upstream message once the client took this one), and the status
with its details and trailing metadata.

The known trap (DESIGN.md): grpcio reports a client's cancel (RST_STREAM) to a server
handler as end-of-stream first, and as a cancellation only a moment later. Passing that
EOF on as a half-close would complete a cancelled upload at the peer. So after EOF the
pump reads once more: that read completes only after every event grpc-core queued
before it, the cancellation included, so by then a cancel has reached the handler task
(``cancelling()``), and only a true half-close is passed on.

Compression: grpcio decompresses what clients send; it does not tell the handler which
encoding the client used, so the upstream hop of a front door call is uncompressed,
and so are the responses to the client.
"""
from __future__ import annotations

import asyncio
import functools
import socket
from collections import deque
from typing import Optional

import grpc
from grpc import aio
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gateway.grpc_pass.channels import MAX_MESSAGE
from gateway.grpc_pass.relay import GrpcTarget

log = Logger()

__all__ = ["FrontDoor", "SERVER_OPTIONS", "client_address", "front_door_target"]

#: the options of every front door server
SERVER_OPTIONS: tuple[tuple[str, object], ...] = (
    ("grpc.so_reuseport", 0),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
)

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def front_door_target(settings) -> GrpcTarget:
    """The relay target of one ``[[grpc_servers]]`` (``GrpcServerSettings``)."""
    return GrpcTarget(group=settings.upstream, tls=settings.scheme == "grpcs",
                      next_upstream=tuple(settings.grpc_next_upstream))


def client_address(peer: str) -> str:
    """grpcio's ``context.peer()`` (``"ipv4:127.0.0.1:5000"``, ``"ipv6:[::1]:5000"``,
    ``"unix:/path"``) → the client address as ``$remote_addr`` writes it."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host = rest.rpartition(":")[0]
        return host[1:-1] if host.startswith("[") else host
    return "unix:"


def _read(path: Optional[str]) -> Optional[bytes]:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def server_credentials(tls) -> grpc.ServerCredentials:
    """``ssl_server_credentials`` of a ``tls`` table (``ServerTLSSettings``):
    certificate chain and key, and with ``verify_client = "on"`` the ``client_ca``
    clients must present a certificate of."""
    return grpc.ssl_server_credentials(
        [(_read(tls.key), _read(tls.certificate))],
        root_certificates=_read(tls.client_ca) if tls.verify_client == "on" else None,
        require_client_auth=tls.verify_client == "on",
    )


def _bind_error(listen: str) -> str:
    """Why ``listen`` cannot be bound, in the system's words (grpcio only says that it
    failed): the same bind tried with a plain socket."""
    if listen.startswith("unix:"):
        family, where = socket.AF_UNIX, listen[len("unix:"):]
    else:
        host, _, port = listen.rpartition(":")
        host = host[1:-1] if host.startswith("[") else host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        where = (host, int(port))
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind(where)
    except OSError as e:
        return f"[Errno {e.errno}] {e.strerror}"
    except (ValueError, TypeError):
        pass
    return "grpcio could not bind it"


class _DoorSink:
    """The relay's sink for one front door call: events queued for the handler task."""

    __slots__ = ("_loop", "_events", "_wake")

    HEADERS, MESSAGE, END = range(3)

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._events: deque = deque()
        self._wake: Optional[asyncio.Future] = None

    def _push(self, event) -> None:
        self._events.append(event)
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    def initial_metadata(self, metadata) -> None:
        self._push((self.HEADERS, metadata, None))

    def message(self, message: bytes) -> Deferred:
        taken = Deferred()
        self._push((self.MESSAGE, message, taken))
        return taken

    def end(self, code: int, details: str, trailing_metadata) -> None:
        self._push((self.END, (code, details, trailing_metadata), None))

    async def next(self):
        while not self._events:
            self._wake = self._loop.create_future()
            await self._wake
        return self._events.popleft()


class _Handler(grpc.GenericRpcHandler):
    """Every method, as a raw-bytes stream-stream call of the door."""

    def __init__(self, door: FrontDoor):
        self.door = door

    def service(self, handler_call_details):
        return grpc.stream_stream_rpc_method_handler(
            functools.partial(self.door._call, handler_call_details.method))


class FrontDoor(Service):
    """One ``[[grpc_servers]]`` entry: its grpcio server, started and stopped with the
    service tree. ``port`` is the bound port once started (``listen`` may say 0)."""

    def __init__(self, settings, relay, loop: asyncio.AbstractEventLoop,
                 grace: float = 30.0):
        self.settings = settings
        self.relay = relay
        self.loop = loop
        self.grace = grace
        self.target = front_door_target(settings)
        self.server: Optional[aio.Server] = None
        self.port: Optional[int] = None
        #: fires once the server serves (after ``startService``)
        self.started: Deferred = succeed(None)

    def __repr__(self) -> str:
        return f"<FrontDoor {self.settings.listen} -> {self.settings.grpc_pass}>"

    def startService(self) -> None:
        super().startService()
        listen = self.settings.listen
        server = aio.server(options=SERVER_OPTIONS)
        server.add_generic_rpc_handlers((_Handler(self),))
        try:
            if self.settings.tls is not None:
                port = server.add_secure_port(listen, server_credentials(self.settings.tls))
            else:
                port = server.add_insecure_port(listen)
        except RuntimeError:
            port = 0
        if not port:
            # one line for the operator, as the HTTP listeners and nginx's bind() say
            raise SystemExit(f"gateway: cannot listen on grpc_servers {listen}: "
                             f"{_bind_error(listen)}")
        self.server, self.port = server, port
        self.started = Deferred.fromFuture(self.loop.create_task(server.start()))
        log.info("gRPC front door listening on {listen} for {grpc_pass}",
                 listen=listen, grpc_pass=self.settings.grpc_pass)

    def stopService(self):
        super().stopService()
        server, self.server = self.server, None
        if server is None:
            return None
        # calls in flight get shutdown_timeout, then are cancelled
        return Deferred.fromFuture(self.loop.create_task(server.stop(self.grace)))

    # -- one call --------------------------------------------------------------------

    async def _call(self, method: str, _requests, context: aio.ServicerContext) -> None:
        loop = self.loop
        sink = _DoorSink(loop)
        call = self.relay.start(self.target, method, context.invocation_metadata(),
                                context.time_remaining(), sink,
                                client_address(context.peer()))
        handler = asyncio.current_task()
        pump = loop.create_task(self._pump(context, call, handler))
        try:
            while True:
                kind, value, taken = await sink.next()
                if kind == _DoorSink.HEADERS:
                    await context.send_initial_metadata(value)
                elif kind == _DoorSink.MESSAGE:
                    await context.write(value)
                    if not taken.called:     # cancelled when the relay's call ended
                        taken.callback(None)
                else:
                    break
        except BaseException:
            # the client cancelled, its deadline passed, the server stops, or the
            # client's side broke: the peer's call must not outlive this one
            call.cancel()
            raise
        finally:
            pump.cancel()
        code, details, trailing = value
        if trailing:
            context.set_trailing_metadata(tuple(trailing))
        context.set_code(_CODES.get(code, grpc.StatusCode.UNKNOWN))
        if details:
            context.set_details(details)

    async def _pump(self, context: aio.ServicerContext, call, handler: asyncio.Task
                    ) -> None:
        """The client's messages to the relay, one in flight, then the half-close."""
        try:
            while True:
                message = await context.read()
                if message is aio.EOF:
                    break
                await call.send(message).asFuture(self.loop)
            # the trap: a cancel queued right behind this EOF reaches the handler task
            # before this second read completes (see the module docstring)
            await context.read()
        except asyncio.CancelledError:
            raise
        except Exception:
            return           # the call ended meanwhile (the status was sent)
        if not handler.cancelling() and not handler.done():
            call.done_sending()
