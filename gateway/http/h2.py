"""The HTTP/2 server protocol: a thin Twisted shell around ``h2`` and ``_h2core``.

This module owns one HTTP/2 client connection: feeding bytes to the ``h2`` connection,
one :class:`H2Exchange` per stream (streams run concurrently, each its own exchange, so
routing and every handler work as for HTTP/1.1), both directions of flow control, the
connection's deadlines, GOAWAY (errors, floods, ``keepalive_requests``, idle, graceful
shutdown) and the error responses the protocol sends itself. Framing, HPACK and stream
states are ``h2``'s; request validation and flood accounting are ``_h2core``'s; the
protocol choice per connection is ``gateway.http.negotiate``'s.

Writes: whatever the events of one ``dataReceived`` make (responses of handlers that
answer at once, WINDOW_UPDATEs, SETTINGS and PING ACKs) leaves in one ``write``; an
exchange method called later (an upstream's response) writes at once.

Flow control, response side: ``send_body`` queues bytes on the stream and frames go out
as the stream and connection windows allow and while the transport takes them (the
protocol is the transport's push producer). When a stream holds more than
:data:`STREAM_BUFFER` bytes its registered producer (the proxy's upstream connection or
spool) is paused, and resumed once the queue is empty, so a slow HTTP/2 client slows
reading from the upstream with bounded memory. Request side: received DATA is handed
back to the client's window only as the handler consumes it (``pause_body`` /
``resume_body``), so a stream's unread body is bounded by its window (64 KiB).

WebSocket over HTTP/2 (RFC 8441): ``SETTINGS_ENABLE_CONNECT_PROTOCOL`` is advertised and
an extended CONNECT ``:protocol = websocket`` reaches the handler as the HTTP/1.1
handshake (``_h2core``), with ``upgrade_protocol`` set. ``send_head(101, …)`` answers it
with ``200`` (held until the tunnel starts; a ``101`` whose ``Sec-WebSocket-Accept`` does
not match, or a 2xx that is no ``101``, is a 502 instead: a 2xx would tell the client the
tunnel is open), and :meth:`H2Exchange.tunnel_end` gives the stream to a
:class:`~gateway.http.tunnel.Tunnel` as a :class:`~gateway.http._h2tunnel.H2TunnelEnd`.
Until then the stream's DATA waits without WINDOW_UPDATE.

Timers: the protocol is a :class:`gateway.deadlines.DeadlineOwner` with one deadline,
the earliest of: the idle connection (``client_header_timeout`` before the first
request, then ``keepalive_timeout``: GOAWAY), a stream waiting for its body
(``client_body_timeout``: 408), a stream stuck behind a closed window or a client that
does not read (:data:`SEND_TIMEOUT`: the stream or connection is reset). The sweep's
call rescans the streams and sets the next one; events only ever bring it earlier.
"""
from __future__ import annotations

from typing import Callable, Optional

from h2.events import (
    ConnectionTerminated, DataReceived, PingReceived, PriorityUpdated, RemoteSettingsChanged,
    RequestReceived, StreamEnded, StreamReset, TrailersReceived, UnknownFrameReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from hyperframe.frame import GoAwayFrame
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from gateway.http import _h2core as core
from gateway.http._serving import ServingFactory
from gateway.http._h2tunnel import H2TunnelEnd
from gateway.http.errors import error_page
from gateway.http.exchange import ConnectionInfo, RequestHead
from gateway.http.h1 import _refill_request_ids, _request_ids
from gateway.tls.server import connection_tls_info

__all__ = ["H2Factory", "H2Protocol", "H2Exchange"]

log = Logger()

#: queued response bytes per stream above which its producer is paused
STREAM_BUFFER = 64 * 1024
#: nginx's send_timeout: a stream (or the whole connection) that cannot send for this
#: long is reset (closed)
SEND_TIMEOUT = 60.0

_NO_BODY_STATUSES = frozenset((204, 304))
_BODY_END = None     # queued after a stream's last DATA in H2Exchange._in


class H2Exchange:
    """One stream's request and response (implements
    :class:`gateway.http.exchange.Exchange`, trailers included).

    Besides the interface: ``server`` (the ``ServerSettings`` chosen by ``:authority``
    or ``Host``), ``stream_id``, ``request_length``, ``keep_alive`` (always True: the
    connection outlives a stream) and ``error_reason``. Trailers: ``accepts_trailers``
    is always True, ``send_trailers`` sends a HEADERS frame with END_STREAM after the
    body (it is dropped when the response's ``Content-Length`` already ended the stream)
    and ``request_trailers`` holds the client's trailers once its body ended.
    """

    __slots__ = (
        "request", "connection", "server", "start_time", "request_id", "variables",
        "status", "body_bytes_sent", "bytes_sent", "request_length", "keep_alive",
        "error_reason", "request_trailers", "stream_id", "_proto", "_receiver",
        "_body_paused", "_body_complete", "_in", "_trailers_in", "_continue_sent",
        "_head", "_head_sent", "_out", "_out_bytes", "_end_queued", "_ended",
        "_trailers", "_content_length", "_no_body", "_done", "_closed",
        "_close_callbacks", "_producer", "_producer_paused", "_pumping", "_last_read",
        "_blocked_since", "_body_seen", "_remote_closed", "upgrade_protocol", "_tunnel",
    )

    accepts_trailers = True

    def __init__(self, proto: "H2Protocol", stream_id: int, head: RequestHead, server,
                 start_time: float, request_length: int):
        self.request = head
        self.connection = proto.info
        self.server = server
        self.start_time = start_time
        self.request_id = _request_ids.pop() if _request_ids else _refill_request_ids()
        self.variables = {}
        self.status = 0
        self.body_bytes_sent = 0
        self.bytes_sent = 0
        self.request_length = request_length
        self.keep_alive = True
        self.error_reason = ""
        self.request_trailers: list = []
        self.stream_id = stream_id
        self._proto = proto
        self._receiver = None
        self._body_paused = False
        self._body_complete = False
        self._in: list = []            # [(data, flow-controlled length)] and _BODY_END
        self._trailers_in = None
        self._continue_sent = False
        self._head = None              # the response header list not sent yet
        self._head_sent = False
        self._out: list = []           # response bytes not framed yet
        self._out_bytes = 0
        self._end_queued = False       # END_STREAM goes after what is queued
        self._ended = False            # END_STREAM (or RST_STREAM) went to h2
        self._trailers = None
        self._content_length = None
        self._no_body = head.method == "HEAD"
        self._done = False
        self._closed = False           # the stream is gone (reset, connection lost)
        self._close_callbacks = None
        self._producer = None
        self._producer_paused = False
        self._pumping = False
        self._last_read = start_time
        self._blocked_since = None
        self._body_seen = 0
        self._remote_closed = False    # the client's END_STREAM came (or a reset went)
        #: b"websocket" on an extended CONNECT stream (RFC 8441), for requested_upgrade
        self.upgrade_protocol: Optional[bytes] = None
        self._tunnel: Optional[H2TunnelEnd] = None   # once the stream is a tunnel

    def __repr__(self) -> str:
        return "<H2Exchange %d %s %s %s>" % (
            self.stream_id, self.request.method, self.request.target, self.status)

    # -- request body ----------------------------------------------------------------

    def read_body(self, receiver) -> None:
        if self._receiver is not None:
            raise RuntimeError("read_body called twice")
        self._receiver = receiver
        proto = self._proto
        if (self.request.expect_continue and not self._continue_sent and not self._in
                and not self._body_complete and not self._head_sent and not self._closed):
            self._continue_sent = True
            proto.conn.send_headers(self.stream_id, [(b":status", b"100")])
        self._last_read = proto.clock.seconds()
        if self._in:
            proto._deliver(self)
        elif self._body_complete and not self._closed:
            receiver.body_end()
        elif not self._closed:
            proto._arm(self._last_read + self.server.client_body_timeout)
        proto._written()

    def pause_body(self) -> None:
        self._body_paused = True

    def resume_body(self) -> None:
        if self._body_paused:
            self._body_paused = False
            proto = self._proto
            self._last_read = proto.clock.seconds()
            if self._in:
                proto._deliver(self)
                proto._written()
            elif not self._body_complete:
                proto._arm(self._last_read + self.server.client_body_timeout)

    # -- response --------------------------------------------------------------------

    def send_head(self, status: int, headers, reason: Optional[bytes] = None) -> None:
        if self._closed:
            return
        if self._done or self._head_sent or self._head is not None:
            raise RuntimeError("response head already sent")
        proto = self._proto
        if status < 200:
            if status == 101:
                if self.upgrade_protocol is None:
                    raise ValueError("101 Switching Protocols is not possible on HTTP/2")
                self._switch_protocols(headers)
                return
            block, _ = core.response_headers(status, headers, None)
            proto.conn.send_headers(self.stream_id, block)
            proto._written()
            return
        if self.upgrade_protocol is not None and status < 300:
            # RFC 8441 §5: a 2xx opens the tunnel; an answer that did not switch
            # protocols must not look like one
            log.error("upstream answered the WebSocket handshake of an extended "
                      "CONNECT with {status} instead of 101", status=status)
            self.error_reason = "upstream did not switch protocols"
            self.send_error(502)
            return
        self.status = status
        block, self._content_length = core.response_headers(status, headers,
                                                            proto.factory.date())
        if status in _NO_BODY_STATUSES:
            self._no_body = True
        self._head = block
        for name, value in block:
            self.bytes_sent += len(name) + len(value) + 2
        # sent with the first body bytes or at finish, as HTTP/1.1 does: a response
        # without a body then fits in one HEADERS frame with END_STREAM

    def flush_head(self) -> None:
        """Send the head given to ``send_head`` now instead of with the first body
        bytes: gRPC's initial metadata, which a client may wait for before any
        message comes (``gateway.grpc_pass.location``)."""
        if self._head is not None and not self._closed and not self._pumping:
            self._proto._pump(self)
            self._proto._written()

    def _switch_protocols(self, headers) -> None:
        """The peer's 101 to the handshake: hold the 200 that opens the tunnel
        (:meth:`tunnel_end` sends it), or answer 502 when the peer's
        ``Sec-WebSocket-Accept`` does not match the key sent."""
        block = core.websocket_response_headers(self.request, headers,
                                                self._proto.factory.date())
        if block is None:
            log.error("upstream sent invalid \"Sec-WebSocket-Accept\" header while "
                      "reading response header from upstream")
            self.error_reason = "upstream sent invalid Sec-WebSocket-Accept"
            self.send_error(502)
            return
        self.status = 200
        self._head = block
        for name, value in block:
            self.bytes_sent += len(name) + len(value) + 2

    def tunnel_end(self) -> H2TunnelEnd:
        """This extended-CONNECT stream as a tunnel's downstream end, after
        ``send_head(101, …)`` (see :mod:`gateway.http._h2tunnel`)."""
        if self.upgrade_protocol is None:
            raise RuntimeError("not an extended CONNECT stream")
        return H2TunnelEnd(self)

    def send_body(self, data: bytes) -> None:
        if self._done or not data or self._closed or self._end_queued:
            return
        if self._head is None and not self._head_sent:
            raise RuntimeError("send_body before send_head")
        if self._no_body:
            return
        self.body_bytes_sent += len(data)
        self._out.append(data)
        self._out_bytes += len(data)
        length = self._content_length
        if length is not None and self.body_bytes_sent >= length:
            # the last bytes: END_STREAM goes on their DATA frame, not in one of its own
            self._end_queued = True
        proto = self._proto
        if not self._pumping:
            proto._pump(self)
            proto._written()
        if (self._out_bytes > STREAM_BUFFER and self._producer is not None
                and not self._producer_paused):
            self._producer_paused = True
            self._producer.pauseProducing()

    def send_trailers(self, headers) -> None:
        if self._done or self._closed or self._end_queued:
            return
        trailers = core.trailer_headers(headers)
        if trailers:
            self._trailers = trailers

    def finish(self) -> None:
        if self._done:
            return
        if self._head is None and not self._head_sent and not self._closed:
            raise RuntimeError("finish before send_head")
        self._end_queued = True
        proto = self._proto
        if not self._closed and not self._pumping:
            proto._pump(self)
        proto._exchange_done(self, aborted=False)
        proto._written()

    def abort(self) -> None:
        if self._done:
            return
        self._head = None
        self._proto._exchange_done(self, aborted=True)
        self._proto._written()

    def send_error(self, status: int, headers=()) -> None:
        if self._done:
            return
        if self._head_sent:
            self.abort()
            return
        self._head = None
        page = error_page(status)
        headers = list(headers)
        if page:
            headers.append((b"Content-Type", b"text/html"))
        headers.append((b"Content-Length", b"%d" % len(page)))
        self.send_head(status, headers)
        if page:
            self.send_body(page)
        self.finish()

    def register_producer(self, producer) -> None:
        self._producer = producer
        self._producer_paused = False
        if self._out_bytes > STREAM_BUFFER:
            self._producer_paused = True
            producer.pauseProducing()

    def unregister_producer(self) -> None:
        self._producer = None
        self._producer_paused = False

    def on_close(self, callback: Callable[[], None]) -> None:
        if self._close_callbacks is None:
            self._close_callbacks = [callback]
        else:
            self._close_callbacks.append(callback)


@implementer(IPushProducer)
class H2Protocol(Protocol):
    """One HTTP/2 client connection. Built by :class:`H2Factory` (through
    ``gateway.http.negotiate``); the client preface is the first thing it reads."""

    def __init__(self, factory: "H2Factory"):
        self.factory = factory
        self.clock = factory.clock
        self.selector = factory.selector
        default = factory.selector.default
        # nginx: one field up to a buffer, the list up to four (431 from _h2core);
        # twice that is refused before decoding
        self.conn = core.new_connection(8 * default.large_client_header_buffers)
        self.info: Optional[ConnectionInfo] = None
        self.deadline: Optional[float] = None
        self.guard = core.FloodGuard()
        self._streams: dict = {}        # stream id -> H2Exchange with work left
        self._blocked: dict = {}        # stream id -> H2Exchange with output queued
        self._batch = False
        self._closing = False
        self._requests = 0
        self._new_streams = 0
        self._write_paused = False
        self._write_paused_since = 0.0
        self._idle_since = 0.0
        self._idle_timeout = default.client_header_timeout
        self._goaway_last: Optional[int] = None   # last stream id of our GOAWAY NO_ERROR

    # -- Twisted callbacks -----------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        # HTTP/2 writes a response in several pieces (HEADERS, DATA, trailers) as they
        # come from the upstream; with Nagle's algorithm a piece after the first waits
        # for the client's delayed ACK (about 40 ms per gRPC call). nginx sets
        # TCP_NODELAY on every HTTP/2 connection (tcp_nodelay on, the default).
        set_nodelay = getattr(transport, "setTcpNoDelay", None)   # TLS forwards it
        if set_nodelay is not None:
            try:
                set_nodelay(True)
            except OSError:
                pass            # a unix socket has no Nagle to turn off
        self.info = ConnectionInfo.of(transport, self.factory.scheme,
                                      self.factory.listener, connection_tls_info(transport))
        now = self.clock.seconds()
        self._idle_since = now
        self.factory.connections.add(self)
        transport.registerProducer(self, True)
        conn = self.conn
        conn.initiate_connection()
        conn.increment_flow_control_window(core.MAX_WINDOW - 65535)
        self._flush()
        self.deadline = now + self._idle_timeout
        self.factory.deadlines.add(self)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._batch = True
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as e:
            self._batch = False
            self._protocol_error(e)
            return
        handlers = _HANDLERS
        try:
            for event in events:
                handler = handlers.get(type(event))
                if handler is not None:
                    handler(self, event)
                    if self._closing:
                        break
        finally:
            self._batch = False
            self._new_streams = 0
        if not self._streams:
            self._idle_since = self.clock.seconds()
        self._flush()

    def connectionLost(self, reason=None) -> None:
        self._closing = True
        self.deadline = None
        self.factory.deadlines.discard(self)
        self.factory._connection_closed(self)
        streams, self._streams = self._streams, {}
        self._blocked.clear()
        for exchange in streams.values():
            self._stream_gone(exchange, "client closed connection")

    # -- IPushProducer: the transport's write buffer ---------------------------------

    def pauseProducing(self) -> None:
        if not self._write_paused:
            self._write_paused = True
            self._write_paused_since = self.clock.seconds()
            self._arm(self._write_paused_since + SEND_TIMEOUT)

    def resumeProducing(self) -> None:
        if self._write_paused:
            self._write_paused = False
            if self._blocked and not self._closing:
                self._pump_all()
                self._flush()

    def stopProducing(self) -> None:
        pass

    # -- events -----------------------------------------------------------------------

    def _on_request(self, event) -> None:
        stream_id = event.stream_id
        conn = self.conn
        if self._goaway_last is not None and stream_id > self._goaway_last:
            conn.reset_stream(stream_id, core.REFUSED_STREAM)
            return
        self._new_streams += 1
        if (len(self._streams) >= core.MAX_CONCURRENT_STREAMS
                or self._new_streams > 2 * core.MAX_CONCURRENT_STREAMS):
            # nginx: "concurrent streams exceeded" / "client sent too many streams at once"
            conn.reset_stream(stream_id, core.REFUSED_STREAM)
            return
        result = core.parse_request(event.headers, self.selector,
                                    event.stream_ended is not None)
        kind = type(result)
        if kind is core.Malformed:
            log.info("{reason} on stream {stream}", reason=result.reason, stream=stream_id)
            conn.reset_stream(stream_id, core.PROTOCOL_ERROR)
            return
        if kind is core.Calm:
            self._connection_error(core.ENHANCE_YOUR_CALM, result.reason)
            return
        now = self.clock.seconds()
        self._requests += 1
        if kind is core.Refused:
            head = result.head
            server = self.selector.select(head.host) if head.host else self.selector.default
            exchange = H2Exchange(self, stream_id, head, server, now, 0)
        else:
            head = result.head
            if (event.stream_ended is None and head.content_length is None
                    and result.protocol is None):
                head.chunked = True      # a body of unknown length follows
            exchange = H2Exchange(self, stream_id, head, result.server, now,
                                  result.head_length)
            # an extended CONNECT's DATA is the tunnel's, not a request body
            exchange.upgrade_protocol = result.protocol
        if event.stream_ended is not None:
            exchange._body_complete = exchange._remote_closed = True
        self._streams[stream_id] = exchange
        if self._requests >= self.selector.default.keepalive_requests:
            self._goaway()
        if kind is core.Refused:
            exchange.error_reason = result.reason
            exchange.send_error(result.status)
            return
        try:
            self.factory.handler(exchange)
        except Exception:
            log.failure("handler failed for {method} {target}",
                        method=head.method, target=head.target)
            if not exchange._done:
                if exchange._head_sent:
                    exchange.abort()
                else:
                    exchange.send_error(500)

    def _on_data(self, event) -> None:
        stream_id = event.stream_id
        data = event.data
        flow = event.flow_controlled_length
        exchange = self._streams.get(stream_id)
        if not data:
            if not event.stream_ended:
                self._control(answered=False)
            if flow:
                self._ack(flow, stream_id)
            return
        if exchange is None or exchange._body_complete or exchange._closed:
            self._ack(flow, stream_id)    # a body nobody reads any more
            return
        if exchange.upgrade_protocol is not None:
            # tunnel bytes: no body limit; the window goes back once the peer took them
            exchange._in.append((data, flow))
            tunnel = exchange._tunnel
            if tunnel is not None and not exchange._body_paused:
                tunnel.deliver()
            return
        size = len(data)
        exchange.request_length += size
        seen = exchange._body_seen = exchange._body_seen + size
        limit = exchange.server.client_max_body_size
        if limit and seen > limit:
            self._ack(flow, stream_id)
            self._fail_body(exchange, 413, "client intended to send too large body")
            return
        receiver = exchange._receiver
        if receiver is not None and not exchange._body_paused and not exchange._in:
            exchange._last_read = self.clock.seconds()
            receiver.body_data(data)
            self._ack(flow, stream_id)
        else:
            exchange._in.append((data, flow))

    def _on_stream_ended(self, event) -> None:
        exchange = self._streams.get(event.stream_id)
        if exchange is None:
            return
        exchange._remote_closed = True
        if exchange._body_complete:
            return
        if exchange.upgrade_protocol is not None:
            exchange._in.append(_BODY_END)     # the tunnel's end, after its bytes
            tunnel = exchange._tunnel
            if tunnel is not None and not exchange._body_paused:
                tunnel.deliver()
            return
        if exchange._receiver is not None and not exchange._body_paused and not exchange._in:
            self._body_done(exchange)
        else:
            exchange._in.append(_BODY_END)

    def _on_trailers(self, event) -> None:
        exchange = self._streams.get(event.stream_id)
        if exchange is None or exchange._body_complete:
            return
        trailers = core.parse_trailers(event.headers)
        if trailers is None:
            log.info("client sent invalid trailers on stream {stream}",
                     stream=event.stream_id)
            self._reset(exchange, core.PROTOCOL_ERROR)
            return
        exchange._trailers_in = trailers

    def _on_reset(self, event) -> None:
        reason = self.guard.reset(self.clock.seconds())
        exchange = self._streams.pop(event.stream_id, None)
        if exchange is not None:
            self._blocked.pop(event.stream_id, None)
            exchange._ended = True
            self._stream_gone(exchange, "client reset stream")
            if not self._streams:
                self._became_idle()
        if reason is not None:
            self._connection_error(core.ENHANCE_YOUR_CALM, reason)

    def _on_window(self, event) -> None:
        stream_id = event.stream_id
        if stream_id == 0:
            if self._blocked:
                self._pump_all()
            return
        exchange = self._blocked.get(stream_id)
        if exchange is not None and not self._write_paused:
            self._pump(exchange)

    def _on_settings(self, event) -> None:
        self._control(answered=True)
        if self._blocked and not self._closing:
            self._pump_all()      # INITIAL_WINDOW_SIZE or MAX_FRAME_SIZE may have grown

    def _on_ping(self, event) -> None:
        self._control(answered=True)

    def _on_priority(self, event) -> None:
        self._control(answered=False)

    def _on_goaway(self, event) -> None:
        # h2 allows nothing more to be sent after the client's GOAWAY
        self._close()

    def _control(self, answered: bool) -> None:
        reason = self.guard.control_frame(self.clock.seconds(), answered,
                                          not self._write_paused)
        if reason is not None:
            self._connection_error(core.ENHANCE_YOUR_CALM, reason)

    # -- request bodies ---------------------------------------------------------------

    def _ack(self, flow: int, stream_id: int) -> None:
        try:
            self.conn.acknowledge_received_data(flow, stream_id)
        except ProtocolError:
            pass      # a stream h2 forgot already: nothing to hand back

    def _deliver(self, exchange: H2Exchange) -> None:
        """Hand queued body pieces to the receiver while it takes them."""
        queue = exchange._in
        flow = 0
        while queue and exchange._receiver is not None and not exchange._body_paused:
            item = queue.pop(0)
            if item is _BODY_END:
                self._body_done(exchange)
                break
            flow += item[1]
            exchange._receiver.body_data(item[0])
        if flow and not exchange._closed:
            self._ack(flow, exchange.stream_id)

    def _body_done(self, exchange: H2Exchange) -> None:
        exchange._body_complete = True
        if exchange._trailers_in is not None:
            exchange.request_trailers = exchange._trailers_in
        receiver = exchange._receiver
        if receiver is not None:
            receiver.body_end()
        if exchange._done and exchange._ended:
            self._forget(exchange)

    def _fail_body(self, exchange: H2Exchange, status: int, reason: str) -> None:
        """The request body will not complete (413, 408): tell the receiver, answer if
        the response has not started, and stop the client sending."""
        exchange.error_reason = reason
        exchange._body_complete = True
        queue, exchange._in = exchange._in, []
        flow = sum(item[1] for item in queue if item is not _BODY_END)
        if flow:
            self._ack(flow, exchange.stream_id)
        receiver = exchange._receiver
        if receiver is not None and not exchange._done:
            receiver.body_error(reason)
        if exchange._done:
            pass      # the response goes on; RST_STREAM NO_ERROR follows its end
        elif exchange._head_sent:
            exchange.abort()
        else:
            exchange.send_error(status)

    # -- responses --------------------------------------------------------------------

    def _pump(self, exchange: H2Exchange) -> None:
        """Frame what ``exchange`` has queued as far as windows and the transport allow,
        END_STREAM (or trailers) when everything is out."""
        if exchange._ended or exchange._closed:
            return
        conn = self.conn
        stream_id = exchange.stream_id
        exchange._pumping = True
        try:
            while True:
                out = exchange._out
                head = exchange._head
                if head is not None:
                    exchange._head = None
                    exchange._head_sent = True
                    if exchange._end_queued and not out and exchange._trailers is None:
                        conn.send_headers(stream_id, head, end_stream=True)
                        self._end_sent(exchange)
                        return
                    conn.send_headers(stream_id, head)
                sent = False
                if out and not self._write_paused:
                    window = conn.local_flow_control_window(stream_id)
                    frame_size = conn.max_outbound_frame_size
                    sent = window > 0
                    while out and window > 0:
                        chunk = out[0]
                        size = len(chunk)
                        if size > window or size > frame_size:
                            size = min(window, frame_size)
                            conn.send_data(stream_id, chunk[:size])
                            out[0] = chunk[size:]
                        else:
                            del out[0]
                            last = (not out and exchange._end_queued
                                    and exchange._trailers is None)
                            conn.send_data(stream_id, chunk, end_stream=last)
                            if last:
                                exchange._out_bytes = 0
                                self._end_sent(exchange)
                                return
                        window -= size
                        exchange._out_bytes -= size
                        exchange.bytes_sent += size + 9
                if out:
                    # nginx's send_timeout runs between two sends: progress restarts it
                    if exchange._blocked_since is None or sent:
                        exchange._blocked_since = self.clock.seconds()
                        self._blocked[stream_id] = exchange
                        self._arm(exchange._blocked_since + SEND_TIMEOUT)
                    return
                if exchange._end_queued:
                    if exchange._trailers is not None:
                        conn.send_headers(stream_id, exchange._trailers, end_stream=True)
                    else:
                        conn.end_stream(stream_id)
                    self._end_sent(exchange)
                    return
                if exchange._blocked_since is not None:
                    exchange._blocked_since = None
                    self._blocked.pop(stream_id, None)
                if exchange._producer_paused and exchange._producer is not None:
                    exchange._producer_paused = False
                    exchange._producer.resumeProducing()   # may queue more at once
                    if exchange._out or exchange._end_queued:
                        continue
                return
        except StreamClosedError:
            # the client reset the stream in a way h2 learnt of first
            exchange._ended = True
        finally:
            exchange._pumping = False

    def _pump_all(self) -> None:
        for exchange in list(self._blocked.values()):
            if self._write_paused:
                return
            self._pump(exchange)

    def _end_sent(self, exchange: H2Exchange) -> None:
        """END_STREAM went out on ``exchange``'s stream."""
        exchange._ended = True
        exchange._out = []
        exchange._out_bytes = 0
        if exchange._blocked_since is not None:
            exchange._blocked_since = None
            self._blocked.pop(exchange.stream_id, None)
        if not exchange._remote_closed:
            # RFC 9113 §8.1: the response is complete; the client can stop sending
            self.conn.reset_stream(exchange.stream_id, core.NO_ERROR)
            exchange._remote_closed = exchange._body_complete = True
            exchange._in = []
        if exchange._done:
            self._forget(exchange)
        elif exchange._tunnel is not None:
            exchange._tunnel.stream_ended()

    def _reset(self, exchange: H2Exchange, code) -> None:
        """RST_STREAM ``code`` on ``exchange``'s stream, which is over for both sides."""
        if not exchange._ended and not exchange._closed:
            exchange._ended = True
            try:
                self.conn.reset_stream(exchange.stream_id, code)
            except StreamClosedError:
                pass
        exchange._out = []
        exchange._out_bytes = 0
        exchange._body_complete = exchange._remote_closed = True
        self._blocked.pop(exchange.stream_id, None)
        if not exchange._done:
            self._stream_gone(exchange, "stream reset")
        self._forget(exchange)

    def _forget(self, exchange: H2Exchange) -> None:
        if self._streams.pop(exchange.stream_id, None) is not None and not self._streams:
            self._became_idle()

    def _became_idle(self) -> None:
        if self._goaway_last is not None:
            self._close()
            return
        self._idle_since = self.clock.seconds()
        self._arm(self._idle_since + self._idle_timeout)

    def _exchange_done(self, exchange: H2Exchange, aborted: bool) -> None:
        exchange._done = True
        exchange._close_callbacks = None
        exchange._receiver = None
        exchange._producer = None
        self._idle_timeout = self.selector.default.keepalive_timeout
        done = self.factory.on_exchange_done
        if done is not None:
            try:
                done(exchange)
            except Exception:
                log.failure("on_exchange_done failed for {exchange!r}", exchange=exchange)
        if aborted:
            self._reset(exchange, core.INTERNAL_ERROR)
        elif exchange._ended or exchange._closed:
            self._forget(exchange)

    def _stream_gone(self, exchange: H2Exchange, reason: str) -> None:
        """The client went away from an exchange (reset, connection lost)."""
        exchange._closed = True
        exchange._out = []
        tunnel = exchange._tunnel
        if tunnel is not None:
            exchange._tunnel = None
            tunnel.lost(reason)
        if exchange._done:
            return
        exchange._done = True
        receiver = exchange._receiver
        if receiver is not None and not exchange._body_complete:
            exchange._body_complete = True
            receiver.body_error(reason)
        callbacks = exchange._close_callbacks
        if callbacks:
            for callback in callbacks:
                callback()
        exchange._close_callbacks = None
        exchange._receiver = None
        exchange._producer = None
        if not exchange._head_sent:
            exchange.status = 499
        done = self.factory.on_exchange_done
        if done is not None:
            try:
                done(exchange)
            except Exception:
                log.failure("on_exchange_done failed for {exchange!r}", exchange=exchange)

    # -- writing and closing ----------------------------------------------------------

    def _written(self) -> None:
        """An exchange method made frames: write them now unless a batch is running."""
        if not self._batch:
            self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self._closing:
            self.transport.write(data)

    def _protocol_error(self, error: ProtocolError) -> None:
        """h2 refused the client's bytes (a connection error): GOAWAY and close."""
        log.info("HTTP/2 connection error: {error}", error=error)
        if self.conn.state_machine.state.name != "CLOSED":
            try:
                self.conn.close_connection(error.error_code)
            except ProtocolError:
                pass
        self._flush()
        self._close()

    def _connection_error(self, code, reason: str) -> None:
        log.info("HTTP/2 connection error {code}: {reason}", code=code.name, reason=reason)
        self._flush()
        self.conn.close_connection(code, last_stream_id=self.conn.highest_inbound_stream_id)
        self._flush()
        self._close()

    def _goaway(self) -> None:
        """GOAWAY NO_ERROR naming the last stream we serve: streams up to it finish,
        later ones are refused, and the connection closes when none is left. Written
        by hand, as h2 itself would refuse to send anything after its GOAWAY."""
        if self._goaway_last is not None or self._closing:
            return
        last = self._goaway_last = self.conn.highest_inbound_stream_id
        frame = GoAwayFrame(0)
        frame.last_stream_id = last
        frame.error_code = 0
        self._flush()
        self.transport.write(frame.serialize())
        if not self._streams:
            self._close()

    def _close(self) -> None:
        if not self._closing:
            self._flush()
            self._closing = True
            self.deadline = None
            self.transport.loseConnection()
            # nothing more can be sent: the streams left are over for their handlers
            streams, self._streams = self._streams, {}
            self._blocked.clear()
            for exchange in streams.values():
                self._stream_gone(exchange, "connection closed")

    def graceful_shutdown(self) -> None:
        """Send GOAWAY: running streams finish, new ones are refused."""
        self._goaway()

    # -- deadlines ----------------------------------------------------------------------

    def _arm(self, at: float) -> None:
        if self.deadline is None or at < self.deadline:
            self.deadline = at

    def deadline_expired(self) -> None:
        self.deadline = None
        if self._closing:
            return
        now = self.clock.seconds()
        if self._write_paused:
            if now >= self._write_paused_since + SEND_TIMEOUT:
                log.info("client timed out: it read no HTTP/2 frames for {t}s",
                         t=SEND_TIMEOUT)
                self._close()
                return
            self._arm(self._write_paused_since + SEND_TIMEOUT)
        for exchange in list(self._streams.values()):
            if (exchange._receiver is not None and not exchange._body_complete
                    and not exchange._body_paused and not exchange._in
                    and not exchange._done):
                at = exchange._last_read + exchange.server.client_body_timeout
                if now >= at:
                    self._fail_body(exchange, 408, "client timed out")
                    continue
                self._arm(at)
            if exchange._blocked_since is not None:
                at = exchange._blocked_since + SEND_TIMEOUT
                if now >= at:
                    # nginx resets a stream that timed out with PROTOCOL_ERROR
                    exchange.error_reason = "client timed out"
                    self._reset(exchange, core.PROTOCOL_ERROR)
                    continue
                self._arm(at)
        if not self._streams:
            at = self._idle_since + self._idle_timeout
            if now >= at:
                self._goaway()
                self._close()
                return
            self._arm(at)
        self._flush()


_HANDLERS = {
    RequestReceived: H2Protocol._on_request,
    DataReceived: H2Protocol._on_data,
    StreamEnded: H2Protocol._on_stream_ended,
    TrailersReceived: H2Protocol._on_trailers,
    StreamReset: H2Protocol._on_reset,
    WindowUpdated: H2Protocol._on_window,
    RemoteSettingsChanged: H2Protocol._on_settings,
    PingReceived: H2Protocol._on_ping,
    PriorityUpdated: H2Protocol._on_priority,
    UnknownFrameReceived: H2Protocol._on_priority,
    ConnectionTerminated: H2Protocol._on_goaway,
}


class H2Factory(ServingFactory):
    """Builds :class:`H2Protocol` connections (``gateway.http.negotiate`` decides when).

    The same arguments as :class:`gateway.http.h1.HTTP11Factory`
    (:class:`gateway.http._serving.ServingFactory`); its graceful shutdown sends each
    connection a GOAWAY (``H2Protocol.graceful_shutdown``).
    """

    protocol = H2Protocol
