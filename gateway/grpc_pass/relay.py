"""The gRPC relay: one client call → attempts on peers over their ``grpc.aio`` channels.

This module owns what happens to a gRPC call between the gateway's two sides. Both entry
paths use it: the ``[[grpc_servers]]`` front door (:mod:`gateway.grpc_pass.front_door`)
and ``grpc_pass`` locations on the HTTP/2 listeners. The caller hands it request
messages and receives response events through a *sink*; the relay chooses peers
through the shared upstream manager and talks to them with grpcio.

Theory of operation
-------------------

``Relay.start`` returns a :class:`RelayCall` and starts one asyncio task for it (only
this package touches asyncio; the caller's side is Twisted code). The task:

1. acquires a lease (``group.attempts`` / ``group.acquire``; with a ``queue``, waits in
   it): no peer → ``UNAVAILABLE`` "no live upstreams", as nginx's 502;
2. opens a stream-stream call with no (de)serializers on the peer's channel, so every
   call kind (unary, server-, client-streaming, bidi) passes as raw bytes;
3. writes request messages one at a time (``send`` returns a Deferred that fires once
   its message was written: one message in flight upstream), and half-closes after
   ``done_sending``;
4. waits for the response headers (initial metadata), hands them to the sink, then
   reads one message at a time, reading the next only after the sink's Deferred for the
   previous one fired (one message in flight downstream);
5. ends the sink exactly once with the numeric status code, the details (unicode passes
   unchanged) and the trailing metadata (``-bin`` values as bytes).

A response that ends before any headers (trailers-only, a refused connection, a reset)
may be retried on another peer (``grpc_next_upstream``), replaying the request messages
written so far — up to :data:`REPLAY_LIMIT` bytes; beyond it the call is not retried. Once
the peer sent headers the call is committed: its errors are final, as nginx retries only
before the response header.

Retry conditions (``next_upstream``) and accounting (``Lease.release``), per attempt:

=====================================================  ================  =========
how the attempt ended (before response headers)         condition         outcome
=====================================================  ================  =========
connection to the peer failed (refused, unreachable)    ``error``         FAILED
  … with a connect timeout                              ``timeout``       FAILED
``grpc_read_timeout`` (the gateway's cap) expired       ``timeout`` [1]   FAILED
``UNAVAILABLE`` (from the peer, or the connection died) ``unavailable``   FAILED
peer answered HTTP ``NNN`` instead of gRPC [3]          ``http_NNN`` [1]  FAILED [2]
peer's ``DEADLINE_EXCEEDED``/``RESOURCE_EXHAUSTED``/    its name          FAILED
``INTERNAL``                                            (when listed)
=====================================================  ================  =========

[1] the request reached the peer and every gRPC call is a POST: as nginx, these are
retried only when ``non_idempotent`` is listed too. [2] ``NEXT`` for 403 and 404, as
nginx. [3] grpcio maps 429, 502, 503 and 504 to ``UNAVAILABLE``: ``unavailable``
retries those too. Anything else is the peer's answer (``OK``), and so is everything
after the response headers except the gateway's own timeout. The client's deadline, a client
cancel and a client that goes away are never the peer's fault (``OK``). ``UNAVAILABLE``
before the response headers is a peer failure whether or not it is retried.

Metadata towards the peer: hop-by-hop keys (``connection`` and the keys it names,
``keep-alive``, ``proxy-*``, ``te``, ``transfer-encoding``, ``upgrade``, ``host``),
pseudo-headers, and the keys grpcio writes itself (``content-type``, ``user-agent``,
``grpc-timeout``, ``grpc-encoding``, ``grpc-accept-encoding``…) are dropped; keys are
lower-cased and values grpcio would refuse are dropped (a ``-bin`` value given as text
is base64-decoded, as it travels on HTTP/2). ``x-forwarded-for`` is set to the client
address. The client's ``grpc-encoding`` (gzip, deflate) is re-applied on the upstream
hop. The deadline is the client's remaining time, capped by ``read_timeout``.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections import deque
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence, Union

import grpc
from grpc import aio
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gateway.upstream import Outcome, PickContext, QueueError

log = Logger()

__all__ = [
    "CANCELLED", "DEADLINE_EXCEEDED", "GrpcTarget", "INTERNAL", "OK", "REPLAY_LIMIT",
    "RESOURCE_EXHAUSTED", "Relay", "RelayCall", "Sink", "UNAVAILABLE", "UNKNOWN",
    "status_name", "upstream_metadata",
]

OK, CANCELLED, UNKNOWN, DEADLINE_EXCEEDED = 0, 1, 2, 4
RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE = 8, 13, 14

#: request bytes kept for replaying on another peer; a call that sent more is not retried
REPLAY_LIMIT = 1024 * 1024

_CODES = {code.value[0]: code for code in grpc.StatusCode}

Metadata = list[tuple[str, Union[str, bytes]]]


def status_name(code: int) -> str:
    """``14`` → ``"UNAVAILABLE"`` (the names of ``grpc.StatusCode``)."""
    status = _CODES.get(code)
    return status.name if status is not None else str(code)


@dataclass(frozen=True)
class GrpcTarget:
    """Where and how a call goes: the upstream ``group``, ``tls`` for ``grpcs://``, and
    the ``grpc_next_upstream*`` settings (``next_upstream`` empty = ``off``; ``tries``
    0 = every peer once; ``next_upstream_timeout`` 0 = unlimited). ``read_timeout``
    (None: none) caps each attempt's deadline; its expiry is the gateway's timeout."""

    group: str
    tls: bool = False
    next_upstream: tuple[str, ...] = ("error", "timeout")
    tries: int = 0
    next_upstream_timeout: float = 0.0
    read_timeout: Optional[float] = None


class Sink(Protocol):
    """The caller's side of a call: response events, on the reactor thread."""

    def initial_metadata(self, metadata: Metadata) -> None:
        """The response headers (not called for a trailers-only response)."""

    def message(self, message: bytes) -> Optional[Deferred]:
        """One response message; the next is read after a returned Deferred fires."""

    def end(self, code: int, details: str, trailing_metadata: Metadata) -> None:
        """The call's end, exactly once (also after ``cancel``: ``CANCELLED``)."""


# -- metadata ----------------------------------------------------------------------

#: request keys never passed upstream: hop-by-hop (RFC 9110 §7.6.1), and those grpcio
#: writes itself or refuses
_DROPPED = frozenset({
    "connection", "keep-alive", "te", "transfer-encoding", "upgrade", "host",
    "content-type", "content-length", "user-agent", "grpc-timeout", "grpc-encoding",
    "grpc-accept-encoding", "grpc-status", "grpc-message", "grpc-status-details-bin",
    "grpc-previous-rpc-attempts", "grpc-retry-pushback-ms", "x-forwarded-for",
})
_KEY = re.compile(r"[0-9a-z_.\-]+")
_VALUE = re.compile(r"[\x20-\x7e]*")
_COMPRESSION = {"gzip": grpc.Compression.Gzip, "deflate": grpc.Compression.Deflate}


def _binary(value: Union[str, bytes]) -> Optional[bytes]:
    if isinstance(value, bytes):
        return value
    text = value.strip()
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def upstream_metadata(
    metadata: Sequence[tuple[str, Union[str, bytes]]], client_addr: Optional[str]
) -> tuple[Metadata, Optional[grpc.Compression]]:
    """The request metadata passed to the peer, and the compression to apply on the
    upstream hop (the client's ``grpc-encoding``). ``client_addr`` None leaves
    ``x-forwarded-for`` as given."""
    named = set()
    compression = None
    for key, value in metadata:
        key = key.lower()
        if key == "connection":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            named.update(t.strip().lower() for t in text.split(","))
        elif key == "grpc-encoding":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            compression = _COMPRESSION.get(text.strip().lower())
    result: Metadata = []
    for key, value in metadata:
        key = key.lower()
        if (key in _DROPPED and not (key == "x-forwarded-for" and client_addr is None)) \
                or key.startswith(":") or key.startswith("proxy-") or key in named \
                or not _KEY.fullmatch(key):
            continue
        if key.endswith("-bin"):
            value = _binary(value)
            if value is None:
                continue
        else:
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            if not _VALUE.fullmatch(value):
                continue
        result.append((key, value))
    if client_addr:
        result.append(("x-forwarded-for", client_addr))
    return result, compression


def _metadata(values) -> Metadata:
    return [(key, value) for key, value in values or ()]


# -- what an attempt's end means ---------------------------------------------------

_HTTP_STATUS = re.compile(r"Received http2 header with status: (\d{3})")
_STATUS_CONDITIONS = {DEADLINE_EXCEEDED: "deadline_exceeded",
                      RESOURCE_EXHAUSTED: "resource_exhausted", INTERNAL: "internal"}


@dataclass
class _Failed:
    """An attempt that ended before response headers in a way that may be retried:
    ``conditions`` maps each ``next_upstream`` condition that allows the retry to
    whether it also needs ``non_idempotent`` (the request reached the peer)."""

    code: int
    details: str
    trailing: Metadata
    conditions: dict[str, bool]
    outcome: Outcome
    error: str


def classify(code: int, details: str, trailing: Metadata, gateway_timeout: bool
             ) -> Optional[_Failed]:
    """What an attempt that ended with ``code`` before any response header means (the
    table of the module docstring); None: the peer's answer, passed as it is.
    ``gateway_timeout``: the attempt's own deadline (the gateway's cap) expired."""
    if gateway_timeout:
        return _Failed(DEADLINE_EXCEEDED, "upstream timed out", [], {"timeout": True},
                       Outcome.FAILED, "upstream timed out")
    if code == UNAVAILABLE and details.startswith("failed to connect to all addresses"):
        lowered = details.lower()
        condition = "timeout" if ("timeout" in lowered or "timed out" in lowered
                                  or "deadline" in lowered) else "error"
        return _Failed(code, details, trailing, {condition: False}, Outcome.FAILED,
                       details)
    conditions = {}
    match = _HTTP_STATUS.search(details) if code != OK else None
    if match:
        conditions["http_" + match.group(1)] = True
    if code == UNAVAILABLE:
        conditions["unavailable"] = False
    elif code in _STATUS_CONDITIONS:
        conditions[_STATUS_CONDITIONS[code]] = False
    if not conditions:
        return None
    outcome = (Outcome.NEXT if match and match.group(1) in ("403", "404")
               else Outcome.FAILED)
    return _Failed(code, details, trailing, conditions, outcome, details)


# -- the relay ---------------------------------------------------------------------


class Relay:
    """Starts relayed calls; one per service, shared by every gRPC entry path.

    ``channels`` is the :class:`~gateway.grpc_pass.channels.Channels` of the service
    (its ``loop`` is the reactor's asyncio loop); ``metrics`` (optional) counts every
    call's final status.
    """

    def __init__(self, manager, channels, clock, metrics=None):
        self.manager = manager
        self.channels = channels
        self.clock = clock
        self.metrics = metrics
        self.loop = channels.loop
        #: calls in flight (for a graceful stop and for tests)
        self.calls: set[RelayCall] = set()

    def start(self, target: GrpcTarget, method: str,
              metadata: Sequence[tuple[str, Union[str, bytes]]],
              timeout: Optional[float], sink: Sink, client_addr: Optional[str] = None,
              pick_context: Optional[PickContext] = None) -> RelayCall:
        """Relay one call of ``method`` (``"/package.Service/Method"``) to ``target``.
        ``timeout``: the client's remaining seconds (None: no deadline).
        ``pick_context``: what the balancer sees (default: ``client_addr``, and the
        method as the hash key)."""
        call = RelayCall(self, target, method, metadata, timeout, sink, client_addr,
                         pick_context)
        self.calls.add(call)
        call._begin()
        return call


class RelayCall:
    """One client call being relayed (the handle ``Relay.start`` returns).

    ``send``/``done_sending``/``cancel`` are the client's side; the sink receives the
    peer's. ``attempts.tried`` lists the peers tried, in order (``$upstream_addr``).
    """

    def __init__(self, relay: Relay, target: GrpcTarget, method: str, metadata,
                 timeout: Optional[float], sink: Sink, client_addr: Optional[str],
                 pick_context: Optional[PickContext]):
        self.relay = relay
        self.target = target
        self.method = method
        self.sink = sink
        #: None when a reload removed the group a running front door names
        self.group = relay.manager.groups.get(target.group)
        self.started = relay.clock.seconds()
        #: the client's deadline in clock seconds (None: none)
        self.deadline = None if timeout is None else self.started + max(0.0, timeout)
        self.metadata, self.compression = upstream_metadata(metadata, client_addr)
        if pick_context is None and self.group is not None and self.group.needs_context:
            pick_context = PickContext(remote_addr=client_addr or "", hash_key=method)
        self.pick_context = pick_context
        self.attempts = (self.group.attempts(target.tries) if self.group is not None
                         else None)
        #: the final status code once ended (None while running)
        self.status: Optional[int] = None
        self._loop = relay.loop
        self._task: Optional[asyncio.Task] = None
        self._lease = None
        self._call: Optional[aio.StreamStreamCall] = None
        # request side: messages not yet written to the current attempt (with the
        # Deferred their sender waits on), those written so far (for a retry)
        self._queue: deque[tuple[bytes, Deferred]] = deque()
        self._replay: Optional[list[bytes]] = []
        self._replay_size = 0
        self._half_closed = False
        self._wake: Optional[asyncio.Future] = None

    def __repr__(self) -> str:
        return f"<RelayCall {self.method} to {self.target.group} status={self.status}>"

    # -- the client's side ------------------------------------------------------------

    def send(self, message: bytes) -> Deferred:
        """One request message; the Deferred fires once it was written upstream (or
        the call ended). Send the next only then."""
        if self.status is not None or self._half_closed:
            return succeed(None)
        d = Deferred()
        self._queue.append((message, d))
        self._wake_writer()
        return d

    def done_sending(self) -> None:
        """The client half-closed: no more request messages."""
        self._half_closed = True
        self._wake_writer()

    def cancel(self, code: int = CANCELLED, details: str = "Cancelled") -> None:
        """The client cancelled or went away: the peer's call is cancelled (RST_STREAM
        CANCEL), the attempt released as no fault of the peer, the sink ended with
        ``CANCELLED`` — or with ``code`` and ``details`` when the gateway answered the
        client so (a request it refused mid-call), which the metrics then count."""
        if self.status is not None:
            return
        self._abandon(code, details)
        task = self._task
        if task is not None and not task.done():
            task.cancel()

    # -- internals --------------------------------------------------------------------

    def _abandon(self, code: int, details: str) -> None:
        """End the call from the gateway's side: the peer's call is cancelled and the
        attempt released as no fault of the peer."""
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
        self._release(Outcome.OK)
        self._end(code, details, [])

    def _begin(self) -> None:
        self._task = self._loop.create_task(self._run())

    def _wake_writer(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _release(self, outcome: Outcome, error: Optional[str] = None) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release(outcome, error)

    def _end(self, code: int, details: str, trailing: Metadata) -> None:
        if self.status is not None:
            return
        self.status = code
        self.relay.calls.discard(self)
        queue, self._queue = self._queue, deque()
        for _, d in queue:
            if not d.called:
                d.callback(None)
        if self.relay.metrics is not None:
            self.relay.metrics.grpc_call(status_name(code))
        try:
            self.sink.end(code, details, trailing)
        except Exception:
            log.failure("the sink of gRPC call {method} broke at its end",
                        method=self.method)

    async def _run(self) -> None:
        try:
            await self._attempt_loop()
        except asyncio.CancelledError:
            if self.status is None:       # not cancel(): the loop or service stopped
                self._abandon(CANCELLED, "Cancelled")
        except Exception:
            log.failure("gRPC call {method} to upstream {upstream} broke",
                        method=self.method, upstream=self.target.group)
            self._abandon(INTERNAL, "gateway error")

    async def _attempt_loop(self) -> None:
        group = self.group
        if group is None:
            log.error("no live upstreams: upstream {upstream} is gone",
                      upstream=self.target.group)
            self._end(UNAVAILABLE, "no live upstreams", [])
            return
        while True:
            if self.relay.channels.closed:
                self._end(UNAVAILABLE, "the gateway is stopping", [])
                return
            if self.deadline is not None and self.relay.clock.seconds() >= self.deadline:
                self._end(DEADLINE_EXCEEDED, "Deadline Exceeded", [])
                return
            lease = group.acquire(self.attempts, self.pick_context)
            if lease is None:
                waiting = group.wait(self.attempts, self.pick_context)
                if waiting is None:
                    log.error("no live upstreams while connecting to upstream {upstream}",
                              upstream=group.name)
                    self._end(UNAVAILABLE, "no live upstreams", [])
                    return
                waiting.addCallback(self._dequeued)
                try:
                    await waiting.asFuture(self._loop)
                except QueueError as e:
                    log.error("{reason} while connecting to upstream {upstream}",
                              reason=e.message, upstream=group.name)
                    self._end(UNAVAILABLE, e.message, [])
                    return
            else:
                self._lease = lease
            failed = await self._attempt(self._lease)
            if failed is None:
                return
            self._release(failed.outcome, failed.error)
            if not self._may_retry(failed):
                self._end(failed.code, failed.details, failed.trailing)
                return

    def _dequeued(self, lease):
        # held at once, so a cancel() before this task resumes releases it
        if self.status is not None:
            lease.release(Outcome.OK)
        else:
            self._lease = lease
        return lease

    def _may_retry(self, failed: _Failed) -> bool:
        """nginx's ``ngx_http_upstream_next`` tests, for a failure before headers."""
        listed = self.target.next_upstream
        if self._replay is None or not any(
                condition in listed and (not sent or "non_idempotent" in listed)
                for condition, sent in failed.conditions.items()):
            return False
        if self.attempts.tries == 0:
            return False
        limit = self.target.next_upstream_timeout
        return not (limit and self.relay.clock.seconds() - self.started >= limit)

    def _attempt_timeout(self) -> tuple[Optional[float], bool]:
        """This attempt's deadline in seconds, and whether it is the gateway's own
        (``read_timeout``) rather than the client's."""
        timeout = None
        if self.deadline is not None:
            timeout = max(0.0, self.deadline - self.relay.clock.seconds())
        cap = self.target.read_timeout
        if cap is not None and (timeout is None or cap < timeout):
            return cap, True
        return timeout, False

    async def _attempt(self, lease) -> Optional[_Failed]:
        """One attempt on ``lease.peer``. Returns None when the call ended (the lease
        released, the sink ended), or how it failed before any response header."""
        relay = self.relay
        open_call = relay.channels.stream_stream(self.group, lease.peer, self.target.tls,
                                                 self.method)
        timeout, gateway_deadline = self._attempt_timeout()
        began = relay.clock.seconds()
        call = open_call(metadata=self.metadata, timeout=timeout,
                         compression=self.compression)
        self._call = call
        writer = self._loop.create_task(self._write(call, tuple(self._replay or ())))
        committed = False
        try:
            initial = await call.initial_metadata()
            if not initial and not call.done():
                # a trailers-only answer resolves the headers and the status from two
                # completions: give the second one its tick before deciding
                await asyncio.sleep(0)
            committed = bool(initial) or not call.done()
            if committed:
                self._replay = None
                self.sink.initial_metadata(_metadata(initial))
                await self._responses(call)
            code = (await call.code()).value[0]
            details = await call.details() or ""
            trailing = _metadata(await call.trailing_metadata())
        finally:
            writer.cancel()
            if self._call is call:
                self._call = None
            if not call.done():     # this task was cancelled (the service stops)
                call.cancel()

        expired = (code == DEADLINE_EXCEEDED and timeout is not None
                   and relay.clock.seconds() - began >= timeout - 0.01)
        if committed or code == OK:
            if expired and gateway_deadline:
                self._release(Outcome.FAILED, "upstream timed out")
                self._end(DEADLINE_EXCEEDED, "upstream timed out", trailing)
            else:
                self._release(Outcome.OK)
                self._end(code, details, trailing)
            return None
        if expired and not gateway_deadline:
            # the client's deadline: never the peer's fault
            self._release(Outcome.OK)
            self._end(DEADLINE_EXCEEDED, details, trailing)
            return None
        failed = classify(code, details, trailing, expired and gateway_deadline)
        if failed is None:
            self._release(Outcome.OK)
            self._end(code, details, trailing)
            return None
        log.warn("gRPC call {method} to {peer} in upstream {upstream} failed before"
                 " the response header: {error}", method=self.method,
                 peer=lease.peer.name, upstream=self.group.name, error=failed.error)
        return failed

    async def _responses(self, call: aio.StreamStreamCall) -> None:
        """Pass response messages to the sink, one at a time, until the status."""
        sink, loop = self.sink, self._loop
        while True:
            try:
                message = await call.read()
            except aio.AioRpcError:
                return
            if message is aio.EOF:
                return
            pending = sink.message(message)
            if pending is not None:
                await pending.asFuture(loop)

    async def _write(self, call: aio.StreamStreamCall, replay: tuple[bytes, ...]) -> None:
        """The request side of one attempt: replay, then each message as it comes,
        then the half-close. Ends quietly when the call ended (the reader says why)."""
        try:
            for message in replay:
                await call.write(message)
            while True:
                if not self._queue:
                    if self._half_closed:
                        await call.done_writing()
                        return
                    self._wake = self._loop.create_future()
                    await self._wake
                    continue
                message, d = self._queue.popleft()
                if self._replay is not None:
                    self._replay_size += len(message)
                    if self._replay_size > REPLAY_LIMIT:
                        self._replay = None
                    else:
                        self._replay.append(message)
                try:
                    await call.write(message)
                finally:
                    if not d.called:
                        d.callback(None)
        except asyncio.CancelledError:
            raise
        except Exception:
            return
