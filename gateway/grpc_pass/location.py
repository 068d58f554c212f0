"""The ``grpc_pass`` location handler: gRPC calls arriving on the gateway's HTTP listeners.

This module owns the client side of a gRPC call that reaches a location with
``grpc_pass`` (the gRPC-over-HTTP/2 wire format of PROTOCOL-HTTP2.md, spoken on an
:class:`~gateway.http.exchange.Exchange`): checking that the request is a gRPC call,
the length-prefixed message framing both ways, the request metadata and deadline
(``grpc-timeout``), and the response as HTTP/2 headers, DATA and trailers. The call
itself (choosing a peer, retries, the grpcio channel, upstream accounting) is the
relay's (:mod:`gateway.grpc_pass.relay`); this module talks to it through
``relay.start(target, method, metadata, timeout, sink, client_addr)`` and is the
``sink``.

Theory of operation. A :class:`GrpcCall` lives for one exchange:

- the request is checked as grpc-core checks it behind nginx (``:method`` POST, else
  ``UNKNOWN "Bad method header"``; ``te: trailers``, else ``UNKNOWN "Missing :te
  header"``), then its ``content-type`` (``application/grpc`` or ``application/grpc+…``
  / ``;…``, else HTTP 415, as PROTOCOL-HTTP2.md asks of a server);
- request body bytes go through a :class:`MessageReader` (5-byte prefix: compressed
  flag and big-endian length); each complete message is handed to ``call.send`` with
  one in flight: while a send is pending the exchange's body is paused, so the client's
  stream window closes (HTTP/2 flow control is the backpressure). The client's
  half-close becomes ``call.done_sending()`` once every message before it was sent;
- the relay's ``sink.initial_metadata`` becomes the response head (``:status 200``,
  ``content-type: application/grpc``, the metadata; sent at once, not with the first
  message, so a client waiting for headers gets them), each ``sink.message`` one
  length-prefixed DATA payload, and ``sink.end`` the trailers (``grpc-status``,
  ``grpc-message`` percent-encoded, trailing metadata with ``-bin`` values in base64).
  ``sink.message`` returns a Deferred while the client is not keeping up (the exchange
  paused this call, its registered producer), so the relay reads the next upstream
  message only when the client's window lets the last one out;
- a call that ends before any initial metadata is a *trailers-only* response: one
  HEADERS frame with END_STREAM holding ``:status``, ``content-type``,
  ``grpc-status`` and ``grpc-message`` (``send_head`` + ``finish`` without body bytes
  is exactly that on HTTP/2). Gateway-side failures are answered that way, as gRPC
  statuses: a message above the limit or a body above ``client_max_body_size`` →
  ``RESOURCE_EXHAUSTED``; what the relay reports (no live upstreams → ``UNAVAILABLE``,
  timeouts → ``DEADLINE_EXCEEDED``) it reports through ``sink.end``;
- the client resetting the stream or closing the connection cancels the call
  (``call.cancel()``; the relay counts it as ``CANCELLED`` in the metrics, as it
  counts every call it started; requests refused here are counted here).

``$status`` is the HTTP status (200 for every gRPC answer, 499 when the client went
away first), as nginx logs it; ``$upstream_addr`` lists the peers the relay tried.

Compressed request messages (flag 1) are decompressed here with the request's
``grpc-encoding`` (``gzip``, ``deflate``; another → ``UNIMPLEMENTED``, as a gRPC server
answers) and sent on as plain messages: grpcio frames every message it sends itself, so
compressed bytes cannot pass through it verbatim. ``grpc-encoding`` stays in the
metadata given to the relay, which compresses the upstream hop the same way. Responses
go to the client uncompressed, which every client accepts.

HTTP/1.1 requests are served alike, as nginx (which forwards any request to its gRPC
upstream) does: with ``TE: trailers`` the call works, its status in the chunked
trailer section; without, grpc-core's ``Missing :te header`` answer.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import struct
import zlib
from typing import Optional

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from gateway.http.exchange import UpstreamState
from gateway.http.headers import HOP_BY_HOP, ResponseHeaderPlan, connection_tokens
from gateway.http.variables import VariableContext, compile_template

__all__ = [
    "DEFAULT_MAX_MESSAGE", "STATUS_NAMES", "FramingError", "GrpcCall", "GrpcPassHandler",
    "MessageReader", "encode_grpc_message", "frame", "parse_timeout",
]

log = Logger()

#: the largest request message accepted, after decompression: the limit of the
#: upstream channels (``gateway.grpc_pass.channels.MAX_MESSAGE``), which also bounds
#: the responses
DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024

#: gRPC status codes by number (grpc.StatusCode names; metrics and logs use them)
STATUS_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)
OK, CANCELLED, UNKNOWN, DEADLINE_EXCEEDED = 0, 1, 2, 4
RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL = 8, 12, 13

_PREFIX = struct.Struct(">BI")
_CONTENT_TYPE = (b"content-type", b"application/grpc")
#: request headers that are HTTP/2 or gRPC transport, not call metadata: grpcio makes
#: its own upstream (the deadline travels as ``timeout``). ``grpc-encoding`` stays: the
#: relay takes it out and compresses the upstream hop alike.
_NOT_METADATA = HOP_BY_HOP | {
    b"host", b"content-type", b"content-length", b"expect", b"grpc-timeout",
    b"grpc-accept-encoding",
}
#: never taken from the peer's metadata into a response: the gateway writes these
_NOT_PASSED = HOP_BY_HOP | {
    b"content-type", b"content-length", b"grpc-status", b"grpc-message",
    b"grpc-encoding", b"grpc-accept-encoding",
}
#: the gRPC timeout units (PROTOCOL-HTTP2.md: TimeoutUnit) in seconds
_TIMEOUT_UNITS = {
    ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0,
    ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9,
}
#: message decompression by grpc-encoding: zlib window bits (gzip header, zlib header)
_DECOMPRESSORS = {b"gzip": 31, b"deflate": 15}
_ACCEPT_ENCODING = (b"grpc-accept-encoding", b"identity,deflate,gzip")
#: a response message shorter than this goes out with its prefix in one piece
_SMALL = 16 * 1024
#: body_error reasons meaning the client went away (the exchange's on_close follows)
_CLIENT_GONE = frozenset({
    "client closed connection", "client reset stream", "stream reset",
    "connection closed",
})


# -- the wire format (sans-IO) ------------------------------------------------------


def parse_timeout(value: bytes) -> Optional[float]:
    """``grpc-timeout`` in seconds: 1 to 8 ASCII digits and a unit (``H``, ``M``,
    ``S``, ``m``, ``u``, ``n``); None for anything else, which grpc-core ignores too."""
    if not 2 <= len(value) <= 9:
        return None
    scale = _TIMEOUT_UNITS.get(value[-1])
    digits = value[:-1]
    if scale is None or not digits.isdigit():
        return None
    return int(digits) * scale


class FramingError(Exception):
    """The request's message stream is not acceptable: answered with ``code``."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class MessageReader:
    """Length-prefixed messages out of request body bytes (sans-IO).

    ``feed(data)`` returns the messages completed by ``data`` (decompressed when their
    flag says so, by ``encoding``), or raises :class:`FramingError`: a declared length
    above ``max_message`` is ``RESOURCE_EXHAUSTED`` as soon as its prefix is read (the
    bytes are never buffered), a compressed message without a usable encoding
    ``INTERNAL`` / ``UNIMPLEMENTED``. ``end()`` checks that the body did not stop inside
    a message.
    """

    __slots__ = ("max_message", "encoding", "_buffer", "_need", "_compressed")

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE,
                 encoding: Optional[bytes] = None):
        self.max_message = max_message
        self.encoding = encoding
        self._buffer = bytearray()
        self._need = 0              # the length of the message being read, once known
        self._compressed = False

    def feed(self, data: bytes) -> list:
        buffer = self._buffer
        buffer += data
        messages = []
        while True:
            if not self._need:
                if len(buffer) < 5:
                    break
                flag, length = _PREFIX.unpack_from(buffer)
                if flag > 1:
                    raise FramingError(INTERNAL, "Invalid compressed flag %d" % flag)
                if length > self.max_message:
                    raise FramingError(
                        RESOURCE_EXHAUSTED,
                        "Received message larger than max (%d vs. %d)"
                        % (length, self.max_message))
                del buffer[:5]
                self._compressed = flag == 1
                if length == 0:
                    messages.append(self._decoded(b""))
                    continue
                self._need = length
            if len(buffer) < self._need:
                break
            if len(buffer) == self._need:
                message = bytes(buffer)
                buffer.clear()
            else:
                message = bytes(buffer[:self._need])
                del buffer[:self._need]
            self._need = 0
            messages.append(self._decoded(message))
        return messages

    def end(self) -> None:
        if self._need or self._buffer:
            raise FramingError(INTERNAL, "Incomplete message at the end of the request")

    def _decoded(self, message: bytes) -> bytes:
        if not self._compressed:
            return message
        encoding = self.encoding
        if encoding is None or encoding == b"identity":
            raise FramingError(INTERNAL, "Compressed message without grpc-encoding")
        wbits = _DECOMPRESSORS.get(encoding)
        if wbits is None:
            raise FramingError(UNIMPLEMENTED, "Compression algorithm '%s' is not supported"
                               % encoding.decode("latin-1"))
        inflater = zlib.decompressobj(wbits)
        try:
            plain = inflater.decompress(message, self.max_message + 1)
        except zlib.error as e:
            raise FramingError(INTERNAL, "Cannot decompress message: %s" % e) from None
        if len(plain) > self.max_message:
            raise FramingError(RESOURCE_EXHAUSTED,
                               "Received message larger than max (more than %d after "
                               "decompression)" % self.max_message)
        if not inflater.eof:
            raise FramingError(INTERNAL, "Cannot decompress message: truncated")
        return plain


def frame(message: bytes) -> bytes:
    """The 5-byte prefix of an uncompressed message of ``message``'s length."""
    return _PREFIX.pack(0, len(message))


def encode_grpc_message(details: str) -> bytes:
    """``grpc-message``: UTF-8, then percent-encoding of every byte outside
    ``0x20``–``0x7E`` and of ``%`` itself (PROTOCOL-HTTP2.md)."""
    raw = details.encode("utf-8", "replace")
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return raw
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b
                    for b in raw)


def _b64decode(value: bytes) -> bytes:
    """A ``-bin`` value: base64, padded or not (both must be accepted)."""
    return base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)


def request_metadata(headers, skip=frozenset()) -> list:
    """The call metadata of request ``headers``: names as sent (h2 gives them
    lower-case), ``-bin`` values decoded to bytes, others as latin-1 text; without
    transport fields, hop-by-hop ones and those in ``skip``. A ``-bin`` value that is
    not base64 is dropped (grpc-core drops it as well)."""
    metadata = []
    for name, value in headers:
        lname = name.lower()
        if lname in _NOT_METADATA or lname in skip or lname[:1] == b":":
            continue
        key = lname.decode("latin-1")
        if key.endswith("-bin"):
            try:
                metadata.append((key, _b64decode(value)))
            except (binascii.Error, ValueError):
                log.info("client sent invalid base64 in metadata {key}", key=key)
            continue
        metadata.append((key, value.decode("latin-1")))
    return metadata


def response_metadata(metadata, hidden=frozenset()) -> list:
    """Header fields for ``metadata`` from the peer: ``-bin`` values in unpadded
    base64, text values as sent; hop-by-hop, gateway-written and ``hidden`` keys
    dropped."""
    fields = []
    for key, value in metadata:
        name = key.lower().encode("latin-1") if isinstance(key, str) else key.lower()
        if name in _NOT_PASSED or name in hidden or name[:1] == b":":
            continue
        if name.endswith(b"-bin"):
            if isinstance(value, str):
                value = value.encode("latin-1")
            value = base64.b64encode(value).rstrip(b"=")
        elif isinstance(value, str):
            value = value.encode("utf-8")
        fields.append((name, value))
    return fields


# -- the handler ----------------------------------------------------------------------


class GrpcPassHandler:
    """The handler of one ``grpc_pass`` location: shared, precompiled parts.

    ``make_target`` is the relay's target type (``GrpcTarget``). ``metrics`` (optional)
    counts with ``grpc_call(name)`` the calls answered here without reaching the relay
    (refused requests); the relay counts every call it started, once, itself.
    """

    def __init__(self, location, relay, clock, make_target, metrics=None,
                 max_message: int = DEFAULT_MAX_MESSAGE):
        grpc = location.grpc_pass
        self.location = location
        self.relay = relay
        self.clock = clock
        self.metrics = metrics
        self.max_message = max_message
        self.target = make_target(
            group=grpc.upstream,
            tls=grpc.scheme == "grpcs",
            next_upstream=tuple(sorted(grpc.next_upstream)),
            tries=grpc.next_upstream_tries,
            next_upstream_timeout=grpc.next_upstream_timeout,
            read_timeout=grpc.read_timeout,
        )
        # grpc_hide_header / grpc_pass_header and add_header, as the proxy's plan
        self.response_plan = ResponseHeaderPlan(dataclasses.replace(
            location, proxy_hide_header=grpc.hide_header,
            proxy_pass_header=grpc.pass_header))
        self.hidden = frozenset(name.lower().encode("latin-1") for name in grpc.hide_header)
        #: grpc_set_header: (lower-case name, renderer); "" removes the client's field
        self.set_header = tuple(
            (name.lower().encode("latin-1"), compile_template(value).renderer)
            for name, value in grpc.set_header)
        self.set_names = frozenset(name for name, _ in self.set_header)

    def __call__(self, exchange) -> None:
        GrpcCall(self, exchange).start()


@implementer(IPushProducer)
class GrpcCall:
    """One gRPC call on one exchange: the relay's sink, the request body's receiver
    and the response's producer."""

    __slots__ = (
        "h", "exchange", "clock", "call", "reader", "queue", "sending", "body_ended",
        "half_closed", "head_sent", "ended", "paused", "drained", "ctx", "started",
        "header_time",
    )

    def __init__(self, handler: GrpcPassHandler, exchange):
        self.h = handler
        self.exchange = exchange
        self.clock = handler.clock
        self.call = None
        self.reader: Optional[MessageReader] = None
        self.queue: list = []          # request messages not handed to the relay yet
        self.sending = False           # a call.send() has not fired yet
        self.body_ended = False        # the client's half-close arrived
        self.half_closed = False       # call.done_sending() was called
        self.head_sent = False
        self.ended = False             # the response ended (or the client left)
        self.paused = False            # the exchange paused us: the client is slow
        self.drained: Optional[defer.Deferred] = None   # what sink.message returned
        self.ctx = None
        self.started = 0.0             # when the relay got the call
        self.header_time = None        # when the peer's response headers came

    # -- start --------------------------------------------------------------------

    def start(self) -> None:
        exchange = self.exchange
        request = exchange.request
        exchange.variables["upstream"] = UpstreamState()
        # grpc-core's checks (nginx forwards every request to it; this gateway
        # answers as it would), then the content type (PROTOCOL-HTTP2.md: 415)
        if request.method != "POST":
            self._answer(UNKNOWN, "Bad method header")
            return
        te = request.header(b"te")
        if te is None or b"trailers" not in te.lower():
            self._answer(UNKNOWN, "Missing :te header")
            return
        content_type = (request.header(b"content-type") or b"").lower()
        if not (content_type == b"application/grpc"
                or content_type.startswith((b"application/grpc+", b"application/grpc;"))):
            self.ended = True
            headers: list = []
            self.h.response_plan.add(headers, self._context())
            exchange.send_error(415, headers)
            return
        encoding = request.header(b"grpc-encoding")
        self.reader = MessageReader(self.h.max_message,
                                    encoding.strip().lower() if encoding else None)
        timeout = None
        value = request.header(b"grpc-timeout")
        if value is not None:
            timeout = parse_timeout(value.strip())
            if timeout is not None:
                # the client's clock started when it sent the request
                timeout = max(0.0, timeout - (self.clock.seconds() - exchange.start_time))
        exchange.on_close(self._client_gone)
        exchange.register_producer(self)
        self.started = self.clock.seconds()
        self.call = self.h.relay.start(
            self.h.target, request.target, self._metadata(), timeout, self,
            exchange.connection.remote_addr)
        if not self.ended:
            exchange.read_body(self)

    def _metadata(self) -> list:
        request = self.exchange.request
        skip = self.h.set_names
        if request.header(b"connection") is not None:
            # HTTP/1.1: the fields it names are hop-by-hop
            skip = skip | connection_tokens(request.headers)
        metadata = request_metadata(request.headers, skip)
        if self.h.set_header:
            ctx = self._context()
            for name, render in self.h.set_header:
                value = render(ctx)
                if not value:
                    continue
                key = name.decode("latin-1")
                if key.endswith("-bin"):
                    try:
                        metadata.append((key, _b64decode(value.encode("latin-1"))))
                    except (binascii.Error, ValueError):
                        log.warn("grpc_set_header {key}: value is not base64", key=key)
                else:
                    metadata.append((key, value))
        return metadata

    def _context(self) -> VariableContext:
        if self.ctx is None:
            self.ctx = VariableContext(self.exchange, self.clock)
        return self.ctx

    # -- the request body (BodyReceiver) --------------------------------------------

    def body_data(self, data: bytes) -> None:
        if self.ended:
            return
        try:
            messages = self.reader.feed(data)
        except FramingError as e:
            self._fail(e.code, e.message, unsupported=e.code == UNIMPLEMENTED)
            return
        if messages:
            self.queue += messages
            self._send_next()

    def body_end(self) -> None:
        if self.ended:
            return
        try:
            self.reader.end()
        except FramingError as e:
            self._fail(e.code, e.message)
            return
        self.body_ended = True
        self._send_next()

    def body_error(self, reason: str) -> None:
        if self.ended or reason in _CLIENT_GONE:
            return       # the exchange's on_close follows: _client_gone cancels
        # a body the server protocol refused: answered here as a gRPC status, since
        # the protocol sends its own HTTP error unless the exchange is finished now
        if "too large" in reason:
            self._fail(RESOURCE_EXHAUSTED, "Request larger than client_max_body_size")
        elif "timed out" in reason:
            self._fail(DEADLINE_EXCEEDED, "Client timed out sending the request "
                                          "(client_body_timeout)")
        else:
            self._fail(INTERNAL, "Invalid request body: %s" % reason)

    def _send_next(self) -> None:
        """Hand queued messages to the relay, one in flight; the client's half-close
        follows the last of them."""
        while not self.sending and not self.ended:
            if not self.queue:
                if self.body_ended and not self.half_closed:
                    self.half_closed = True
                    self.call.done_sending()
                return
            message = self.queue.pop(0)
            sent = self.call.send(message)
            if sent is None or sent.called:
                continue
            self.sending = True
            self.exchange.pause_body()
            sent.addBoth(self._sent)

    def _sent(self, result) -> None:
        self.sending = False
        if self.ended:
            return None
        self._send_next()
        if not self.sending and not self.ended:
            self.exchange.resume_body()
        return None

    # -- the relay's sink -------------------------------------------------------------

    def initial_metadata(self, metadata) -> None:
        if self.ended or self.head_sent:
            return
        self.header_time = self.clock.seconds()
        self._send_head(response_metadata(metadata, self.h.hidden))

    def message(self, message: bytes) -> Optional[defer.Deferred]:
        if self.ended:
            return None
        if not self.head_sent:
            self._send_head([])
        exchange = self.exchange
        if len(message) < _SMALL:
            exchange.send_body(frame(message) + message)
        else:
            exchange.send_body(frame(message))     # no copy of a large message
            exchange.send_body(message)
        if self.paused and not self.ended:
            # the exchange holds more than its buffer for this stream: the relay
            # waits until it has drained
            self.drained = defer.Deferred()
            return self.drained
        return None

    def end(self, code: int, details: str, trailing_metadata) -> None:
        if self.ended:
            return
        self.ended = True
        self._record_upstream()
        self._end(code, details, response_metadata(trailing_metadata, self.h.hidden))

    # -- IPushProducer: the response's backpressure --------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        drained, self.drained = self.drained, None
        if drained is not None:
            drained.callback(None)

    def stopProducing(self) -> None:
        pass

    # -- the response -----------------------------------------------------------------

    def _send_head(self, fields: list) -> None:
        self.head_sent = True
        headers = [_CONTENT_TYPE]
        headers += fields
        self.h.response_plan.add(headers, self._context())
        exchange = self.exchange
        exchange.send_head(200, headers)
        flush = getattr(exchange, "flush_head", None)
        if flush is not None:
            flush()

    def _end(self, code: int, details: str, fields: list, extra=()) -> None:
        """Trailers (or a trailers-only response) with ``code``: the response is over
        (``ended`` is already set, so nothing the relay still calls gets through)."""
        self._release_waiters()
        status = [(b"grpc-status", b"%d" % code)]
        if details:
            status.append((b"grpc-message", encode_grpc_message(details)))
        status += extra
        status += fields
        exchange = self.exchange
        exchange.unregister_producer()
        if self.head_sent:
            exchange.send_trailers(status)
        else:
            # trailers-only: one HEADERS frame with END_STREAM
            self.head_sent = True
            headers = [_CONTENT_TYPE]
            headers += status
            self.h.response_plan.add(headers, self._context())
            exchange.send_head(200, headers)
        exchange.finish()

    def _answer(self, code: int, details: str) -> None:
        """A gateway answer to a request that never reached the relay."""
        self.ended = True
        self._end(code, details, [])
        self._count(code)

    def _fail(self, code: int, details: str, unsupported: bool = False) -> None:
        """A failure on the client's side of a started call: cancel it upstream and
        end the response with ``code``."""
        log.info("gRPC call {method} failed: {details}",
                 method=self.exchange.request.target, details=details)
        self.ended = True
        if self.call is not None:
            # the relay counts the call with the status the client gets
            self.call.cancel(code, details)
        self._record_upstream()
        self._end(code, details, [], extra=(_ACCEPT_ENCODING,) if unsupported else ())

    def _client_gone(self) -> None:
        """The client reset the stream or closed the connection: cancel the call."""
        if self.ended:
            return
        self.ended = True
        self._release_waiters()
        self._cancel()
        self._record_upstream()

    def _cancel(self) -> None:
        if self.call is not None:
            self.call.cancel()

    def _release_waiters(self) -> None:
        # the relay must not wait for a drain that will never come
        drained, self.drained = self.drained, None
        if drained is not None:
            drained.callback(None)

    def _record_upstream(self) -> None:
        """``$upstream_addr`` and friends, once the call is over: every peer tried
        (``attempts.tried`` of the relay's call), or the group's name when none was
        (nginx's "no live upstreams"). The relay reports no per-try details, so the
        times and ``$upstream_status`` ("200": the peer's response headers reached
        the client) describe the last try; earlier ones get "-"."""
        state = self.exchange.variables.get("upstream")
        attempts = getattr(self.call, "attempts", None)
        if state is None or attempts is None or state.addrs:
            return
        now = self.clock.seconds()
        names = [peer.name for peer in attempts.tried] or [self.h.target.group]
        dashes = ["-"] * (len(names) - 1)
        state.addrs = names
        state.statuses = dashes + ["200" if self.header_time is not None else "-"]
        state.connect_times = dashes + ["-"]
        state.header_times = dashes + [
            "%.3f" % (self.header_time - self.started) if self.header_time is not None
            else "-"]
        state.response_times = dashes + ["%.3f" % (now - self.started)]
        state.queue_times = dashes + ["-"]

    def _count(self, code: int) -> None:
        metrics = self.h.metrics
        if metrics is not None:
            metrics.grpc_call(STATUS_NAMES[code] if 0 <= code < len(STATUS_NAMES)
                              else "UNKNOWN")
