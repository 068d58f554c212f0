"""The HTTP/1.1 server protocol: a thin Twisted shell around ``gateway.http._h1core``.

This module owns one client connection's life: feeding bytes to the parser, running
one :class:`H1Exchange` at a time in request order (pipelined requests wait in a
bounded queue), request-body delivery with flow control, ``100 Continue``, response
framing and ``Connection`` handling, keepalive, the connection's deadlines
(client_header_timeout, client_body_timeout, keepalive_timeout, discarding a body
nobody read) and the error responses the protocol sends itself. Parsing and
validation are the core's; what to answer is the handler's; the access log reads the
finished exchanges passed to ``on_exchange_done``.

Graceful shutdown (a reload retiring a listener's configuration, or the process
stopping): :meth:`HTTP11Factory.graceful_shutdown` tells every connection to stop
keeping alive, as nginx's exiting worker does (``ngx_close_idle_connections``, and the
``ngx_exiting`` test in ``ngx_http_finalize_connection``): an idle keepalive connection
closes at once, a request being served finishes and its connection closes after the
response, an upgraded connection (a tunnel) runs on. An optional timeout aborts what is
left.

Timers: the protocol is a :class:`gateway.deadlines.DeadlineOwner`; it only stores
``deadline`` and ``_deadline_kind`` and the shared sweep calls ``deadline_expired``.
"""
from __future__ import annotations

import os
from collections import deque
from typing import Callable, Optional

from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from gateway.http._serving import ServingFactory
from gateway.http._h1core import (
    BODY_END, CONTINUE_100, BodyData, BodyEnd, Rejected, RequestParser, RequestStarted,
    RequestTrailers, Upgraded, serialize_head,
)
from gateway.http.errors import error_page
from gateway.http.exchange import ConnectionInfo, RequestHead
from gateway.tls.server import connection_tls_info

__all__ = ["HTTP11Factory", "HTTP11Protocol", "H1Exchange"]

log = Logger()

#: Bytes of parsed-but-unconsumed input (pipelined requests, unread body) above which
#: the transport stops reading.
PIPELINE_BUFFER = 64 * 1024
#: nginx's lingering_timeout and lingering_time, used while discarding an unread body.
DISCARD_READ_TIMEOUT = 5.0
DISCARD_TOTAL_TIME = 30.0

# The response header names send_head acts on, by lower-cased name: the handler's
# Server and Date replace the gateway's own, Content-Length frames the body, and the
# hop-by-hop ones are the protocol's to write (dropped, except for a 101).
_SERVER, _DATE, _CONTENT_LENGTH, _HOP_BY_HOP = range(4)
_RESPONSE_HEADERS = {
    b"server": _SERVER, b"date": _DATE, b"content-length": _CONTENT_LENGTH,
    b"connection": _HOP_BY_HOP, b"keep-alive": _HOP_BY_HOP,
    b"transfer-encoding": _HOP_BY_HOP,
}
_CLOSING_ERRORS = frozenset((400, 413, 414, 500))   # nginx drops keepalive for these
_NO_BODY_STATUSES = frozenset((204, 304))

_IDLE, _HEADER, _BODY, _DISCARD = "idle", "header", "body", "discard"


#: ``$request_id`` values not handed out yet (popped, so the order is the reverse).
_request_ids: list = []


def _refill_request_ids() -> str:
    """Reads 16 bytes of ``os.urandom`` as 32 hex digits for 256 requests at a time (a
    read per request was a measurable share of one); returns the first id."""
    block = os.urandom(16 * 256).hex()
    _request_ids[:] = [block[start:start + 32] for start in range(0, len(block), 32)]
    return _request_ids.pop()


# a forked child must not hand out the ids left in its parent's block
os.register_at_fork(after_in_child=_request_ids.clear)


def _last_chunk(trailers) -> bytes:
    """The last chunk of a chunked body with its trailer section."""
    parts = [b"0\r\n"]
    for name, value in trailers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class H1Exchange:
    """One request and its response on an HTTP/1.1 connection
    (implements :class:`gateway.http.exchange.Exchange`).

    Besides the interface: ``server`` (the ``ServerSettings`` chosen by the request's
    host), ``request_length`` (bytes of the request head and body as received,
    approximately for the head), ``keep_alive`` (whether the connection stays open
    after this response) and ``error_reason`` (why the protocol refused the request,
    for the error log).

    Trailers: ``request_trailers`` are a chunked request body's trailer fields, set
    just before ``body_end``. Response trailers given to :meth:`send_trailers` go in
    the last chunk, and only to a client that said ``TE: trailers``
    (:attr:`accepts_trailers`); a Content-Length response cannot carry them.
    """

    __slots__ = (
        "request", "connection", "server", "start_time", "request_id", "variables",
        "status", "body_bytes_sent", "bytes_sent", "request_length", "keep_alive",
        "error_reason", "_proto", "_receiver", "_body_paused", "_body_complete",
        "_discarding", "_continue_sent", "_pending", "_content_length", "_no_body",
        "_chunked", "_head_sent", "_done", "_close_callbacks", "_producer",
        "_discard_started", "_own_server", "_own_date", "request_trailers", "_trailers",
    )

    def __init__(self, proto: "HTTP11Protocol", head: RequestHead, server,
                 start_time: float, request_length: int, keep_alive: bool):
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
        self.keep_alive = keep_alive
        self.error_reason = ""
        self._proto = proto
        self._receiver = None
        self._body_paused = False
        self._body_complete = False
        self._discarding = False
        self._continue_sent = False
        self._pending = None            # (headers, reason) of a head not yet written
        self._content_length = None
        self._no_body = head.method == "HEAD"
        self._chunked = False
        self._head_sent = False
        self._own_server = self._own_date = True
        self._done = False
        self._close_callbacks = None
        self._producer = None
        self._discard_started = 0.0
        self.request_trailers = []
        self._trailers = None

    def __repr__(self) -> str:
        return "<H1Exchange %s %s %s>" % (self.request.method, self.request.target, self.status)

    # -- request body ----------------------------------------------------------------

    def read_body(self, receiver) -> None:
        if self._receiver is not None:
            raise RuntimeError("read_body called twice")
        self._receiver = receiver
        if self._body_complete:
            receiver.body_end()
            return
        proto = self._proto
        if (self.request.expect_continue and not self._continue_sent
                and not self._head_sent and not proto._body_arrived()):
            self._continue_sent = True
            proto.transport.write(CONTINUE_100)
        proto._advance()

    def pause_body(self) -> None:
        self._body_paused = True
        self._proto._update()

    def resume_body(self) -> None:
        if self._body_paused:
            self._body_paused = False
            self._proto._advance()

    # -- response --------------------------------------------------------------------

    @property
    def accepts_trailers(self) -> bool:
        """The client is HTTP/1.1 and its ``TE`` header lists ``trailers``
        (RFC 9110 §10.1.4): it will read trailer fields in a chunked response."""
        request = self.request
        if request.version != "1.1":
            return False
        for value in request.header_values(b"te"):
            for coding in value.split(b","):
                if coding.split(b";", 1)[0].strip().lower() == b"trailers":
                    return True
        return False

    def send_trailers(self, headers) -> None:
        """Trailer fields for the end of the response (``finish`` writes them in
        the last chunk). Dropped unless the client :attr:`accepts_trailers`."""
        if self._done or not headers or not self.accepts_trailers:
            return
        self._trailers = headers

    def send_head(self, status: int, headers, reason: Optional[bytes] = None) -> None:
        if self._done or self._head_sent:
            raise RuntimeError("response head already sent")
        if status < 200 and status != 101:
            self._proto.transport.write(serialize_head(
                b"HTTP/1.1", status, reason, headers, self._proto.factory.date(), b"", b""))
            return
        self.status = status
        content_length = None
        filtered = None
        own_server = own_date = True
        for index, header in enumerate(headers):
            kind = _RESPONSE_HEADERS.get(header[0].lower())
            if kind is not None:
                if kind == _HOP_BY_HOP:
                    if status != 101:
                        if filtered is None:
                            filtered = list(headers[:index])
                        continue
                elif kind == _CONTENT_LENGTH:
                    try:
                        content_length = int(header[1])
                    except ValueError:
                        raise ValueError("invalid Content-Length %r" % (header[1],))
                elif kind == _SERVER:
                    own_server = False
                else:
                    own_date = False
            if filtered is not None:
                filtered.append(header)
        self._own_server = own_server
        self._own_date = own_date
        self._content_length = content_length
        if status in _NO_BODY_STATUSES or status == 101:
            self._no_body = True
        self._pending = (headers if filtered is None else filtered, reason)

    def _flush_head(self, final: bool) -> bytes:
        headers, reason = self._pending
        self._pending = None
        self._head_sent = True
        proto = self._proto
        http10 = self.request.version == "1.0"
        framing = b""
        if self._no_body or self._content_length is not None:
            pass
        elif final:
            framing = b"Content-Length: 0\r\n"
        elif not http10:
            framing = b"Transfer-Encoding: chunked\r\n"
            self._chunked = True
        else:
            self.keep_alive = False            # close-delimited
        if (self.keep_alive and not self._body_complete and self._receiver is None
                and self.request.expect_continue and not self._continue_sent):
            # the client may or may not send the body it announced: only closing
            # leaves no doubt where the next request starts
            self.keep_alive = False
        if self.status == 101:
            connection = b""
        elif not self.keep_alive or proto._closing:
            self.keep_alive = False
            connection = b"Connection: close\r\n"
        else:
            # nginx's header filter: every response of a kept-alive connection says
            # so, whatever the client's version
            connection = b"Connection: keep-alive\r\n"
        date = None
        if self._own_date:
            factory = proto.factory
            second = int(proto.clock.seconds())
            date = factory._date if second == factory._date_second else factory._format_date(second)
        return serialize_head(b"HTTP/1.1", self.status, reason, headers, date,
                              framing, connection, server=self._own_server)

    def send_body(self, data: bytes) -> None:
        if self._done or not data:
            return
        if not self._head_sent:
            if self._pending is None:
                raise RuntimeError("send_body before send_head")
            head = self._flush_head(False)
        else:
            head = b""
        if self._no_body:
            if head:
                self._write(head)
            return
        self.body_bytes_sent += len(data)
        if self._chunked:
            data = b"".join((head, b"%x\r\n" % len(data), data, b"\r\n"))
        elif head:
            data = head + data
        self.bytes_sent += len(data)
        self._proto.transport.write(data)

    def finish(self) -> None:
        if self._done:
            return
        trailers = self._trailers
        if not self._head_sent:
            if self._pending is None:
                raise RuntimeError("finish before send_head")
            if trailers and self._content_length is None and not self._no_body:
                # no body but trailers (kept only for an HTTP/1.1 client): chunked,
                # so that a last chunk carries them
                self._write(self._flush_head(False) + _last_chunk(trailers))
            else:
                self._write(self._flush_head(True))
        elif self._chunked:
            self._write(_last_chunk(trailers) if trailers else b"0\r\n\r\n")
        if (self._content_length is not None and not self._no_body
                and self.body_bytes_sent != self._content_length):
            self.keep_alive = False
        self._proto._exchange_done(self, aborted=False)

    def abort(self) -> None:
        if self._done:
            return
        self._pending = None
        self.keep_alive = False
        self._proto._exchange_done(self, aborted=True)

    def send_error(self, status: int, headers=()) -> None:
        if self._done:
            return
        if self._head_sent:
            self.abort()
            return
        self._pending = None
        if status in _CLOSING_ERRORS:
            self.keep_alive = False
        page = error_page(status)
        headers = list(headers)
        if page:
            headers.append((b"Content-Type", b"text/html"))
        headers.append((b"Content-Length", b"%d" % len(page)))
        self.send_head(status, headers)
        head = self._flush_head(True)
        if self._no_body:
            self._write(head)
        else:
            self.body_bytes_sent += len(page)
            self._write(head + page)
        self._proto._exchange_done(self, aborted=False)

    def _write(self, data: bytes) -> None:
        self.bytes_sent += len(data)
        self._proto.transport.write(data)

    def register_producer(self, producer) -> None:
        self._producer = producer
        self._proto.transport.registerProducer(producer, True)

    def unregister_producer(self) -> None:
        if self._producer is not None:
            self._producer = None
            self._proto.transport.unregisterProducer()

    def take_over(self, data_received: Callable[[bytes], None],
                  connection_lost: Callable[[object], None]):
        """Give the client connection to a tunnel (after ``send_head(101, …)``): writes
        the pending head, feeds ``data_received`` the bytes that followed the request
        and all later ones, calls ``connection_lost(reason)`` at the end, and returns
        the transport. The exchange is reported when the connection closes."""
        return self._proto.take_over(self, data_received, connection_lost)

    def on_close(self, callback: Callable[[], None]) -> None:
        if self._close_callbacks is None:
            self._close_callbacks = [callback]
        else:
            self._close_callbacks.append(callback)


class HTTP11Protocol(Protocol):
    """One client connection. Built by :class:`HTTP11Factory`."""

    def __init__(self, factory: "HTTP11Factory"):
        self.factory = factory
        self.clock = factory.clock
        self.selector = factory.selector
        self.parser = RequestParser(factory.selector)
        self.info: Optional[ConnectionInfo] = None
        self.deadline: Optional[float] = None
        self._deadline_kind = None
        self._queue: deque = deque()
        self._queued_bytes = 0
        self._exchange: Optional[H1Exchange] = None
        self._requests = 0
        self._closing = False
        self._advancing = False
        self._reading_paused = False
        self._last_read = 0.0
        self._idle_since = 0.0
        self._idle_timeout = factory.selector.default.client_header_timeout
        self._head_started: Optional[float] = None
        self._taken_over = None
        self._draining = False

    # -- Twisted callbacks -----------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        self.info = ConnectionInfo.of(transport, self.factory.scheme,
                                      self.factory.listener, connection_tls_info(transport))
        now = self.clock.seconds()
        self._idle_since = self._last_read = now
        # nginx counts the first request's client_header_timeout from the accept
        self._head_started = now
        self.deadline = now + self._idle_timeout
        self._deadline_kind = _IDLE
        self.factory.deadlines.add(self)
        self.factory.connections.add(self)

    def dataReceived(self, data: bytes) -> None:
        if self._taken_over is not None:
            self._taken_over[0](data)
            return
        if self._closing:
            return
        now = self._last_read = self.clock.seconds()
        parser = self.parser
        events = parser.events
        parser.feed(data)
        if (len(events) == 2 and events[1] is BODY_END and self._exchange is None
                and not self._queue and not self._advancing
                and type(events[0]) is RequestStarted):
            # the common read, one whole request without a body: no queueing needed
            started = events[0]
            events.clear()
            self._start(started, now, body_complete=True)
            self._update()
            return
        if events:
            queue = self._queue
            for event in events:
                if type(event) is BodyData:
                    self._queued_bytes += len(event.data)
                queue.append(event)
            events.clear()
            exchange = self._exchange
            if parser.failed and exchange is not None and queue[-1].head is exchange.request:
                # the body being received failed: no need to wait for the handler
                self._fail_current_body(queue.pop())
        self._advance()

    def connectionLost(self, reason=None) -> None:
        self._closing = True
        self.factory.deadlines.discard(self)
        self.factory._connection_closed(self)
        self.deadline = None
        if self._taken_over is not None:
            taken, self._taken_over = self._taken_over, None
            taken[1](reason)
        exchange = self._exchange
        self._exchange = None
        self._queue.clear()
        if exchange is not None and not exchange._done:
            exchange._done = True
            if exchange._receiver is not None and not exchange._body_complete:
                exchange._receiver.body_error("client closed connection")
            if exchange._close_callbacks:
                for callback in exchange._close_callbacks:
                    callback()
            if not exchange._head_sent:
                exchange.status = 499
            self._report(exchange)

    # -- the exchange pipeline -------------------------------------------------------

    def _advance(self) -> None:
        """Consume queued events as far as the current exchange allows."""
        if self._advancing:
            return
        self._advancing = True
        try:
            queue = self._queue
            while queue and not self._closing:
                exchange = self._exchange
                event = queue[0]
                kind = type(event)
                if exchange is None:
                    queue.popleft()
                    if kind is RequestStarted:
                        self._start(event, self.clock.seconds())
                    elif kind is Rejected:
                        self._refuse(event)
                    elif kind is Upgraded:
                        self.parser.resume_after_upgrade()
                        self._take_parser_events()
                    continue
                if kind is BodyData:
                    if exchange._discarding:
                        queue.popleft()
                        self._queued_bytes -= len(event.data)
                        continue
                    if exchange._receiver is None or exchange._body_paused:
                        break
                    queue.popleft()
                    self._queued_bytes -= len(event.data)
                    exchange._receiver.body_data(event.data)
                elif kind is RequestTrailers:
                    if exchange._discarding:
                        queue.popleft()
                        continue
                    if exchange._receiver is None or exchange._body_paused:
                        break
                    queue.popleft()
                    exchange.request_trailers = event.headers
                elif kind is BodyEnd:
                    if exchange._discarding:
                        queue.popleft()
                        exchange._body_complete = True
                        self._exchange = None
                        if self._draining:
                            self._close()
                        continue
                    if exchange._receiver is None or exchange._body_paused:
                        break
                    queue.popleft()
                    exchange._body_complete = True
                    exchange._receiver.body_end()
                elif kind is Rejected and event.head is exchange.request:
                    queue.popleft()
                    self._fail_current_body(event)
                else:
                    break   # the next request waits for this exchange to end
        finally:
            self._advancing = False
        self._update()

    def _take_parser_events(self) -> None:
        events = self.parser.events
        for event in events:
            if type(event) is BodyData:
                self._queued_bytes += len(event.data)
            self._queue.append(event)
        events.clear()

    def _start(self, event: RequestStarted, now: float, body_complete: bool = False) -> None:
        """Run the handler for a request; ``body_complete`` says its ``BODY_END`` was
        taken already (else it is taken here if it is next in the queue)."""
        head, server = event.head, event.server
        self._requests += 1
        keep_alive = (head.keep_alive and self._requests < server.keepalive_requests
                      and not self._draining)
        exchange = H1Exchange(self, head, server, now, event.head_length, keep_alive)
        self._exchange = exchange
        self._head_started = None
        queue = self._queue
        if body_complete:
            exchange._body_complete = True
        elif queue and queue[0] is BODY_END:
            queue.popleft()
            exchange._body_complete = True
        else:
            exchange.request_length += head.content_length or 0
        try:
            self.factory.handler(exchange)
        except Exception:
            log.failure("handler failed for {method} {target}",
                        method=head.method, target=head.target)
            if not exchange._done:
                if exchange._head_sent:
                    exchange.abort()
                else:
                    exchange.keep_alive = False
                    exchange.send_error(500)

    def _refuse(self, event: Rejected) -> None:
        """Answer a request the parser refused (400, 413, 414, …) and close."""
        head = event.head or RequestHead("", "", "", "", "", [])
        server = self.selector.default
        if head.host:
            server = self.selector.select(head.host)
        exchange = H1Exchange(self, head, server, self.clock.seconds(), 0, False)
        exchange.error_reason = event.reason
        exchange._body_complete = True
        self._exchange = exchange
        exchange.send_error(event.status)

    def _fail_current_body(self, event: Rejected) -> None:
        """The current request's body failed (bad chunk, 413, 408): tell the
        receiver, answer if the response has not started, and close."""
        exchange = self._exchange
        self.parser.failed = True
        self._queue.clear()
        self._queued_bytes = 0
        exchange.error_reason = event.reason
        if exchange._done:
            self._close()
            return
        exchange._body_complete = True
        receiver = exchange._receiver
        if receiver is not None:
            receiver.body_error(event.reason)
        if exchange._done:
            self._close()
        elif exchange._head_sent:
            exchange.abort()
        else:
            exchange.keep_alive = False
            exchange.send_error(event.status)

    def _body_arrived(self) -> bool:
        queue = self._queue
        return bool(queue) and type(queue[0]) in (BodyData, RequestTrailers, BodyEnd, Rejected)

    def _exchange_done(self, exchange: H1Exchange, aborted: bool) -> None:
        exchange._done = True
        # Close callbacks and the body receiver serve an unfinished exchange only.
        # Dropping them now also breaks the handler <-> exchange reference cycles, so a
        # finished request's objects are freed by reference counting instead of
        # waiting for (and being promoted through) the cyclic garbage collector.
        exchange._close_callbacks = None
        exchange._receiver = None
        if exchange._producer is not None:
            exchange.unregister_producer()
        done = self.factory.on_exchange_done
        if done is not None:
            try:
                done(exchange)
            except Exception:
                log.failure("on_exchange_done failed for {exchange!r}", exchange=exchange)
        if aborted or not exchange.keep_alive:
            self._close()
            return
        now = self.clock.seconds()
        self._idle_since = now
        self._idle_timeout = exchange.server.keepalive_timeout
        if exchange._body_complete:
            self._exchange = None
        else:
            exchange._discarding = True
            exchange._discard_started = now
            self._last_read = now
        if self._queue:
            self._advance()
        else:
            self._update()

    def _report(self, exchange: H1Exchange) -> None:
        # _exchange_done does the same inline (one call less per request)
        done = self.factory.on_exchange_done
        if done is not None:
            try:
                done(exchange)
            except Exception:
                log.failure("on_exchange_done failed for {exchange!r}", exchange=exchange)

    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            self._queue.clear()
            self.transport.loseConnection()

    def graceful_shutdown(self) -> None:
        """Stop keeping the connection alive: closed now when it waits idle between
        keepalive requests, after the current response otherwise (which then says
        ``Connection: close`` when its head is not sent yet). A connection that has
        not received its first request yet is served once, as nginx does; a tunnel
        is left alone."""
        if self._draining:
            return
        self._draining = True
        if self._closing:
            return      # closing already, or handed to a tunnel
        exchange = self._exchange
        if exchange is not None:
            if not exchange._done:
                exchange.keep_alive = False
            return      # a finished one is discarding its body: closed at its end
        if self._requests and not self._queue and not self.parser.in_head:
            self._close()

    # -- flow control and deadlines --------------------------------------------------

    def _update(self) -> None:
        """Pause or resume reading and set the deadline, as the state now asks."""
        if self._closing:
            self.deadline = None
            return
        exchange = self._exchange
        want_pause = self._queued_bytes > PIPELINE_BUFFER or (
            exchange is not None and exchange._body_paused and not exchange._discarding)
        if want_pause != self._reading_paused:
            self._reading_paused = want_pause
            if want_pause:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()
        if exchange is None:
            if self.parser.in_head or self._requests == 0:
                if self._head_started is None:
                    self._head_started = self._last_read
                self.deadline = self._head_started + self.selector.default.client_header_timeout
                self._deadline_kind = _HEADER
            else:
                self.deadline = self._idle_since + self._idle_timeout
                self._deadline_kind = _IDLE
        elif exchange._discarding:
            self.deadline = min(self._last_read + DISCARD_READ_TIMEOUT,
                                exchange._discard_started + DISCARD_TOTAL_TIME)
            self._deadline_kind = _DISCARD
        elif (exchange._receiver is not None and not exchange._body_complete
              and not exchange._body_paused and not self._queue):
            self.deadline = self._last_read + exchange.server.client_body_timeout
            self._deadline_kind = _BODY
        else:
            self.deadline = None

    def deadline_expired(self) -> None:
        kind = self._deadline_kind
        self.deadline = None
        if self._closing:
            return
        if kind == _HEADER and self.parser.in_head:
            self.parser.failed = True
            self._refuse(Rejected(408, "client timed out", self.parser._best_effort_head()))
        elif kind == _BODY:
            self._fail_current_body(Rejected(408, "client timed out", None))
        else:
            self._close()

    # -- Upgrade ---------------------------------------------------------------------

    def take_over(self, exchange: H1Exchange, data_received, connection_lost):
        """Hand the connection to a tunnel after a ``101`` head (see
        :meth:`H1Exchange.take_over`)."""
        if exchange._pending is not None:
            exchange._write(exchange._flush_head(False))
        self._taken_over = (data_received, connection_lost)
        self.deadline = None
        self._queue.clear()
        self._queued_bytes = 0
        self._closing = True
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()
        held = self.parser.take_held()
        if held:
            data_received(held)
        return self.transport


class HTTP11Factory(ServingFactory):
    """Builds :class:`HTTP11Protocol` connections (arguments, ``Date`` cache and
    graceful shutdown: :class:`gateway.http._serving.ServingFactory`; each connection
    stops keeping alive, ``HTTP11Protocol.graceful_shutdown``)."""

    protocol = HTTP11Protocol
