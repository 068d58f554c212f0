"""The upstream HTTP/1.1 client: connecting to a peer and running requests on a connection.

This module owns the Twisted side of talking to one upstream peer:

- :class:`UpstreamConnector` opens TCP (names, IPv4, IPv6 literals) and unix-socket
  connections with ``proxy_connect_timeout`` and reports failures as
  :class:`UpstreamError` in nginx's words; with a peer's TLS
  (:class:`gateway.tls.client.PeerTLS`) the connection is wrapped in TLS and handed
  out only once the handshake completed and the peer verified, all within the same
  ``proxy_connect_timeout`` (the handshake deadline runs on the shared sweep);
- :class:`UpstreamConnection` is the thin ``Protocol`` shell around the sans-IO
  :class:`~gateway.http._client_core.ResponseReader`: it writes a request (the head as
  the proxy built it; the body as is or chunk-encoded, request trailers in the last
  chunk), feeds received bytes to the reader and hands the resulting events (response
  trailers included) to one :class:`ResponseHandler`.

Timeouts are nginx's and use the coarse :class:`~gateway.deadlines.Deadlines` sweep, never
a ``callLater`` per request: ``proxy_send_timeout`` runs while the transport's write
buffer is full and makes no progress, ``proxy_read_timeout`` between two reads once the
request is sent (suspended while the response is paused for backpressure), and the pool's
``keepalive_timeout`` while the connection is idle.

Flow control goes both ways. The connection is registered as the transport's streaming
producer, so it learns when the upstream stops taking the request body and forwards that
to the body producer the proxy gives it (:meth:`UpstreamConnection.set_body_producer`).
The response direction is paused through :meth:`UpstreamConnection.pause_reading` or the
per-request :attr:`UpstreamConnection.producer`.

Building the request head, retries, choosing peers and pooling are not here: the proxy
handler, the upstream group and :mod:`gateway.http.pool` do those.
"""
from __future__ import annotations

from typing import Callable, Optional, Protocol as TypingProtocol

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config.model import Address
from gateway.deadlines import Deadlines
from gateway.http._client_core import (
    RESPONSE_END,
    ResponseHead,
    ResponseReader,
    ResponseTrailers,
    UpstreamError,
)

__all__ = [
    "ConnectionState",
    "ResponseHandler",
    "ResponseHead",
    "UpstreamConnection",
    "UpstreamConnector",
    "UpstreamError",
]

MSG_CONNECT_TIMEOUT = "upstream timed out (110: Connection timed out) while connecting to upstream"
MSG_SEND_TIMEOUT = "upstream timed out (110: Connection timed out) while sending request to upstream"
MSG_READ_TIMEOUT_HEADER = ("upstream timed out (110: Connection timed out) while reading "
                           "response header from upstream")
MSG_READ_TIMEOUT_BODY = "upstream timed out (110: Connection timed out) while reading upstream"
MSG_CLOSED_BEFORE_SEND = "upstream connection was closed before the request was sent"
MSG_HANDSHAKE_TIMEOUT = ("upstream timed out (110: Connection timed out) while SSL "
                         "handshaking to upstream")


class ResponseHandler(TypingProtocol):
    """Receives one response. Exactly one of ``response_end`` / ``response_error`` is
    called last; ``response_head`` comes first unless the error came before it.

    ``response_trailers(headers)`` is called once, right before ``response_end``, when
    a chunked response carried trailer fields (as received, unfiltered). It is
    optional: a handler without it (a health probe) never hears of trailers.
    """

    def response_head(self, head: ResponseHead) -> None: ...

    def response_body(self, data: bytes) -> None: ...

    def response_trailers(self, headers: list) -> None: ...

    def response_end(self) -> None: ...

    def response_error(self, error: UpstreamError) -> None: ...


class ConnectionState:
    """Where an :class:`UpstreamConnection` is in its life."""

    CONNECTING = "connecting"
    READY = "ready"          # connected, no request outstanding, not pooled
    BUSY = "busy"            # a request is being sent or its response read
    IDLE = "idle"            # parked in a pool
    UPGRADED = "upgraded"    # handed to a tunnel after a 101 (see take_over)
    CLOSED = "closed"


# what the single deadline currently measures
_NO_TIMER, _READ, _SEND, _IDLE = range(4)


def _unsent_bytes(transport) -> Optional[int]:
    """Bytes a Twisted socket transport still holds, or None when it cannot tell.

    ``twisted.internet.abstract.FileDescriptor`` keeps them in ``dataBuffer`` (from
    ``offset``) and ``_tempDataBuffer``; a shrinking count is a successful send.
    """
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except (AttributeError, TypeError):
        return None


@implementer(IPushProducer)
class _ResponseFlow:
    """The response direction of one request, as a producer for the client exchange.

    A fresh one per request, so a stale pause or stop from an exchange that already
    finished can never touch the connection once it serves someone else.
    """

    __slots__ = ("_connection",)

    def __init__(self, connection: "UpstreamConnection"):
        self._connection = connection

    def _current(self) -> Optional["UpstreamConnection"]:
        connection = self._connection
        if connection._flow is self and connection.state == ConnectionState.BUSY:
            return connection
        return None

    def pauseProducing(self) -> None:
        connection = self._current()
        if connection is not None:
            connection.pause_reading()

    def resumeProducing(self) -> None:
        connection = self._current()
        if connection is not None:
            connection.resume_reading()

    def stopProducing(self) -> None:
        connection = self._current()
        if connection is not None:
            connection.close()


@implementer(IPushProducer)
class UpstreamConnection(Protocol):
    """One connection to an upstream peer, carrying one request at a time.

    ``IPushProducer`` here is the *request* direction: the transport pauses the
    connection when its write buffer is full (see :meth:`pauseProducing`). The response
    direction is :attr:`producer`.
    """

    def __init__(self, clock, deadlines: Deadlines, address: Optional[Address] = None):
        self.clock = clock
        self.deadlines = deadlines
        self.address = address
        self.created_at: float = clock.seconds()
        self.requests = 0
        self.reused = False
        self.state = ConnectionState.CONNECTING
        self.deadline: Optional[float] = None
        self._timer = _NO_TIMER
        self._reader = ResponseReader()
        self._handler: Optional[ResponseHandler] = None
        self._flow: Optional[_ResponseFlow] = None
        self._chunked = False
        self._pending_head: Optional[bytes] = None
        self._body_ended = False
        self._early_response = False
        self._read_timeout = 60.0
        self._send_timeout = 60.0
        self._write_blocked = False
        self._unsent_mark: Optional[int] = None
        self._reading_paused = False
        self._body_producer = None
        self._on_idle_drop: Optional[Callable[[UpstreamConnection], None]] = None
        self._connected = False
        self._tunnel = None   # (data_received, connection_lost) once UPGRADED
        #: bytes of the current request written so far (head, body, chunk framing):
        #: ``$upstream_bytes_sent``
        self.bytes_sent = 0
        #: After the response ended: the request was fully sent, the response fully
        #: read and well framed, keep-alive, and nothing arrived after it. A plain
        #: attribute (the proxy and the pool both ask, on every request), kept current
        #: by :meth:`_update_reusable` wherever one of those facts changes.
        self.reusable = False

    def __repr__(self) -> str:
        where = self.address.text if self.address is not None else "?"
        return f"<UpstreamConnection {where} {self.state} requests={self.requests}>"

    # -- Protocol ----------------------------------------------------------------

    def connectionMade(self) -> None:
        self.created_at = self.clock.seconds()
        self._connected = True
        self.state = ConnectionState.READY
        self.transport.registerProducer(self, True)
        self.deadlines.add(self)

    def dataReceived(self, data: bytes) -> None:
        state = self.state
        if state == ConnectionState.BUSY:
            dispatch = self._DISPATCH
            for event in self._reader.feed(data):
                handler = self._handler
                if handler is None:
                    break
                if event.__class__ is bytes:
                    # body pieces are most of the events of a longer response
                    handler.response_body(event)
                else:
                    dispatch[event.__class__](self, event)
            # the read timeout runs between two reads; restarting it after the events
            # leaves it alone when this read ended the response (the usual case)
            if (self.state == ConnectionState.BUSY and self._timer == _READ
                    and not self._reading_paused):
                self.deadline = self.clock.seconds() + self._read_timeout
        elif state == ConnectionState.IDLE:
            # nginx's keepalive module: an idle connection that says anything is dropped
            self.close()
        elif state == ConnectionState.UPGRADED:
            self._tunnel[0](data)
        else:
            self._reader.feed(data)  # only notes that extra bytes arrived
            self._update_reusable()

    def connectionLost(self, reason: Failure = None) -> None:
        self._connected = False
        self.deadlines.discard(self)
        self.deadline = None
        state = self.state
        self.state = ConnectionState.CLOSED
        if state == ConnectionState.UPGRADED:
            tunnel, self._tunnel = self._tunnel, None
            tunnel[1](reason)
        elif state == ConnectionState.IDLE:
            self._leave_pool_dropped()
        elif state == ConnectionState.BUSY and self._handler is not None:
            self.state = ConnectionState.BUSY  # let the last events through
            reader = self._reader
            if reason is None or reason.check(ierror.ConnectionDone):
                events = reader.feed_eof()
            else:
                where = ("upstream" if reader.head_received
                         else "response header from upstream")
                events = [reader.fail(
                    "error",
                    f"upstream connection lost ({reason.getErrorMessage()}) while reading {where}")]
            dispatch = self._DISPATCH
            for event in events:
                if self._handler is None:
                    break
                dispatch[event.__class__](self, event)
            self.state = ConnectionState.CLOSED
        self.reusable = False
        self._handler = None
        self._body_producer = None

    # -- request direction (IPushProducer, driven by the transport) ----------------

    def pauseProducing(self) -> None:
        """The transport's write buffer is full: the upstream is not keeping up."""
        self._write_blocked = True
        self.reusable = False
        if self._body_producer is not None:
            self._body_producer.pauseProducing()
        if self.state == ConnectionState.BUSY and self._timer != _SEND:
            self._timer = _SEND
            self._unsent_mark = _unsent_bytes(self.transport)
            self.deadline = self.clock.seconds() + self._send_timeout

    def resumeProducing(self) -> None:
        """The transport flushed its buffer."""
        self._write_blocked = False
        self._update_reusable()
        if self.state == ConnectionState.BUSY and self._timer == _SEND:
            if self._body_ended:
                self._arm_read()
            else:
                self._timer = _NO_TIMER
                self.deadline = None
        if self._body_producer is not None:
            self._body_producer.resumeProducing()

    def stopProducing(self) -> None:
        """The transport is going away; :meth:`connectionLost` does the work."""

    # -- the proxy's API ---------------------------------------------------------

    def send_request(self, head: bytes, handler: ResponseHandler, *, method: str,
                     body: str, read_timeout: float, send_timeout: float) -> None:
        """Send a request and deliver its response to ``handler``.

        ``head`` (request line, headers, blank line) is written as is. ``body`` says
        how the request body will come: ``"none"``, ``"length"`` (written as given by
        :meth:`write_body`) or ``"chunked"`` (chunk-encoded here). With a body, the head
        waits for the first body piece (or :meth:`end_body`) so both leave in one write.
        """
        state = self.state
        if state != ConnectionState.READY:
            if state == ConnectionState.CLOSED:
                handler.response_error(UpstreamError(
                    "error", MSG_CLOSED_BEFORE_SEND, nothing_received=True))
                return
            raise RuntimeError(f"send_request on a {state} upstream connection")
        self.requests += 1
        self.state = ConnectionState.BUSY
        self.reusable = False
        self._handler = handler
        self._flow = None
        self._read_timeout = read_timeout
        self._send_timeout = send_timeout
        self._early_response = False
        self._reader.start(method)
        if body == "none":
            self._chunked = False
            self._body_ended = True
            self.bytes_sent = len(head)
            self.transport.write(head)
            if self.state == ConnectionState.BUSY and self._timer != _SEND:
                self._arm_read()
        else:
            self._chunked = body == "chunked"
            self._body_ended = False
            self.bytes_sent = 0
            self._pending_head = head
            self._timer = _NO_TIMER
            self.deadline = None

    def write_body(self, data: bytes) -> None:
        """Send a piece of the request body (ignored once the response is over)."""
        if self.state != ConnectionState.BUSY or self._body_ended or not data:
            return
        head = self._pending_head
        self.bytes_sent += len(data) if head is None else len(head) + len(data)
        if self._chunked:
            self.bytes_sent += len(b"%x" % len(data)) + 4
            if head is not None:
                self._pending_head = None
                self.transport.writeSequence((head, b"%x\r\n" % len(data), data, b"\r\n"))
            else:
                self.transport.writeSequence((b"%x\r\n" % len(data), data, b"\r\n"))
        elif head is not None:
            self._pending_head = None
            self.transport.writeSequence((head, data))
        else:
            self.transport.write(data)

    def end_body(self, trailers=()) -> None:
        """The request body is complete (writes the last chunk when chunked).

        ``trailers`` (``[(name, value)]``, already filtered by the caller) go in the
        last chunk of a chunked body; a Content-Length body cannot carry them, so
        they are dropped there.
        """
        if self.state != ConnectionState.BUSY or self._body_ended:
            return
        self._body_ended = True
        head = self._pending_head
        self._pending_head = None
        if head is not None:
            self.bytes_sent += len(head)
        if self._chunked:
            if trailers:
                last = [b"0\r\n"]
                for name, value in trailers:
                    last += (name, b": ", value, b"\r\n")
                last.append(b"\r\n")
                self.bytes_sent += sum(map(len, last))
                if head is not None:
                    last.insert(0, head)
                self.transport.writeSequence(last)
            else:
                self.bytes_sent += 5
                if head is not None:
                    self.transport.writeSequence((head, b"0\r\n\r\n"))
                else:
                    self.transport.write(b"0\r\n\r\n")
        elif head is not None:
            self.transport.write(head)
        if self.state == ConnectionState.BUSY and self._timer != _SEND:
            self._arm_read()

    def set_body_producer(self, producer) -> None:
        """Pause ``producer`` (the client-side body reader) while the upstream's write
        buffer is full; ``None`` to clear."""
        self._body_producer = producer
        if producer is not None and self._write_blocked:
            producer.pauseProducing()

    def pause_reading(self) -> None:
        """Stop reading the response (the client is not keeping up); no read timeout
        runs meanwhile, as in nginx."""
        if self._reading_paused or not self._connected:
            return
        self._reading_paused = True
        self.transport.pauseProducing()
        if self._timer == _READ:
            self.deadline = None

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        if not self._connected:
            return
        if self._timer == _READ and self.state == ConnectionState.BUSY:
            self.deadline = self.clock.seconds() + self._read_timeout
        self.transport.resumeProducing()

    @property
    def producer(self) -> _ResponseFlow:
        """An ``IPushProducer`` for this request's response direction."""
        flow = self._flow
        if flow is None:
            flow = self._flow = _ResponseFlow(self)
        return flow

    def close(self) -> None:
        """Close the connection; the current handler (if any) hears nothing more."""
        state = self.state
        if state == ConnectionState.CLOSED:
            return
        self._handler = None
        self._reader.abandon()
        self.state = ConnectionState.CLOSED
        self.reusable = False
        self.deadline = None
        if state == ConnectionState.IDLE:
            self._leave_pool_dropped()
        if not self._connected:
            return
        if state == ConnectionState.BUSY or self._write_blocked:
            # an unfinished exchange, or request bytes the upstream is not reading
            # (an early response): what is still buffered is worthless now
            self.transport.abortConnection()
        else:
            # a FileDescriptor with a registered producer resumes it instead of closing
            # once the buffer drains, so the producer goes first
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def take_over(self, data_received: Callable[[bytes], None],
                  connection_lost: Callable[[Optional[Failure]], None]):
        """Give the connection to a tunnel, from ``response_head`` of a ``101``.

        The response handler hears nothing more, no timer of this connection runs and
        it never returns to a pool: ``data_received`` gets every later byte and
        ``connection_lost(reason)`` the end. Returns the transport, with no producer
        registered on it, and the bytes that followed the 101 head in its read.
        """
        if self.state != ConnectionState.BUSY or not self._connected:
            raise RuntimeError(f"take_over of a {self.state} upstream connection")
        self._handler = None
        self._flow = None
        self._body_producer = None
        self._pending_head = None
        self._timer = _NO_TIMER
        self.deadline = None
        self.deadlines.discard(self)
        self.reusable = False
        self.state = ConnectionState.UPGRADED
        self._tunnel = (data_received, connection_lost)
        self.transport.unregisterProducer()
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()
        held, self._reader.upgrade_data = self._reader.upgrade_data, b""
        return self.transport, held

    @property
    def bytes_received(self) -> int:
        """Bytes received since the current request was sent (``$upstream_bytes_received``)."""
        return self._reader.received

    # -- deadlines ---------------------------------------------------------------

    def deadline_expired(self) -> None:
        timer = self._timer
        state = self.state
        if state == ConnectionState.IDLE:
            self.close()  # keepalive_timeout
        elif state != ConnectionState.BUSY:
            self.deadline = None
        elif timer == _SEND:
            unsent = _unsent_bytes(self.transport)
            mark = self._unsent_mark
            if unsent is not None and mark is not None and unsent < mark:
                self._unsent_mark = unsent  # the upstream took some bytes: that's a send
                self.deadline = self.clock.seconds() + self._send_timeout
            else:
                self._error(self._reader.fail("timeout", MSG_SEND_TIMEOUT))
        elif timer == _READ:
            message = (MSG_READ_TIMEOUT_BODY if self._reader.head_received
                       else MSG_READ_TIMEOUT_HEADER)
            self._error(self._reader.fail("timeout", message))
        else:
            self.deadline = None

    def _update_reusable(self) -> None:
        self.reusable = (self.state in (ConnectionState.READY, ConnectionState.IDLE)
                         and self._body_ended and not self._early_response
                         and not self._write_blocked and self._reader.reusable)

    def _arm_read(self) -> None:
        self._timer = _READ
        self.deadline = (None if self._reading_paused
                         else self.clock.seconds() + self._read_timeout)

    # -- the pool's side ---------------------------------------------------------

    def _enter_pool(self, on_drop: Callable[["UpstreamConnection"], None],
                    idle_deadline: float) -> None:
        self.state = ConnectionState.IDLE
        self._on_idle_drop = on_drop
        self._timer = _IDLE
        self.deadline = idle_deadline
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()

    def _leave_pool(self) -> None:
        self.state = ConnectionState.READY
        self._on_idle_drop = None
        self._timer = _NO_TIMER
        self.deadline = None

    def _leave_pool_dropped(self) -> None:
        on_drop, self._on_idle_drop = self._on_idle_drop, None
        if on_drop is not None:
            on_drop(self)

    # -- events from the reader --------------------------------------------------

    def _on_head(self, head: ResponseHead) -> None:
        self._handler.response_head(head)

    def _on_trailers(self, trailers: ResponseTrailers) -> None:
        receive = getattr(self._handler, "response_trailers", None)
        if receive is not None:
            receive(trailers.headers)

    def _on_end(self, _end) -> None:
        handler = self._handler
        self._finish()
        self.state = ConnectionState.READY
        if not self._body_ended:
            # an early response (say 413) before the body was sent: the upstream
            # will not read the rest, so this connection cannot carry another request
            self._early_response = True
        self._update_reusable()
        handler.response_end()

    def _error(self, error: UpstreamError) -> None:
        handler = self._handler
        self._finish()
        self.close()
        if handler is not None:
            handler.response_error(error)

    def _finish(self) -> None:
        self._handler = None
        self._flow = None
        self._body_producer = None
        self._pending_head = None
        self._timer = _NO_TIMER
        self.deadline = None
        if self._reading_paused:
            self._reading_paused = False
            if self._connected:
                self.transport.resumeProducing()

    _DISPATCH = {
        ResponseHead: _on_head,
        ResponseTrailers: _on_trailers,
        type(RESPONSE_END): _on_end,
        UpstreamError: _error,
    }


class _ConnectFactory(ClientFactory):
    """Builds one :class:`UpstreamConnection` and fires the connect Deferred."""

    noisy = False

    def __init__(self, connector: "UpstreamConnector", address: Address, deferred: Deferred,
                 tls=None, deadline: Optional[float] = None):
        self._upstream_connector = connector
        self.address = address
        self.deferred = deferred
        #: with TLS: the peer's :class:`~gateway.tls.client.PeerTLS`, the clock time by
        #: which the handshake must be done, and the connection while it handshakes
        self.tls = tls
        self.deadline = deadline
        self.handshaking: Optional[_TLSConnection] = None

    def buildProtocol(self, addr):
        kind = _ConnectingConnection if self.tls is None else _TLSConnection
        connection = kind(
            self._upstream_connector.reactor, self._upstream_connector.deadlines, self.address)
        connection.factory = self
        return connection

    def connection_made(self, connection: UpstreamConnection) -> None:
        self.handshaking = None
        deferred, self.deferred = self.deferred, None
        if deferred is None or deferred.called:
            connection.close()  # the connect was cancelled meanwhile
            return
        deferred.callback(connection)

    def connect_failed(self, error: UpstreamError) -> None:
        """The TLS handshake failed, timed out or did not verify."""
        self.handshaking = None
        deferred, self.deferred = self.deferred, None
        if deferred is not None and not deferred.called:
            deferred.errback(error)

    def cancel(self) -> None:
        """The connect Deferred was cancelled: drop a connection still handshaking."""
        connection, self.handshaking = self.handshaking, None
        if connection is not None:
            connection.close()

    def clientConnectionFailed(self, connector, reason: Failure) -> None:
        deferred, self.deferred = self.deferred, None
        if deferred is None or deferred.called:
            return
        deferred.errback(connect_error(reason))


class _ConnectingConnection(UpstreamConnection):
    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.connection_made(self)


@implementer(IHandshakeListener)
class _TLSConnection(UpstreamConnection):
    """An upstream connection over TLS (its transport is a ``TLSMemoryBIOProtocol``).

    It stays ``CONNECTING`` through the handshake, under the connect deadline, and is
    handed to the connect Deferred only once the peer verified (nginx's
    ``ngx_http_upstream_ssl_handshake``).
    """

    _session_pending = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.state = ConnectionState.CONNECTING
        self.deadline = self.factory.deadline
        self.factory.handshaking = self

    def handshakeCompleted(self) -> None:
        if self.state != ConnectionState.CONNECTING:
            return
        tls = self.factory.tls
        handle = self.transport.getHandle()
        problem = tls.check(handle)
        if problem is not None:
            tls.drop_session()
            self._handshake_failed(UpstreamError(
                "error", f"{problem} while SSL handshaking to upstream",
                nothing_received=True))
            return
        tls.save_session(handle)
        # TLS 1.3 sends the session ticket after the handshake: offer the session
        # again once the first data (which comes after the ticket) arrives
        self._session_pending = True
        self.state = ConnectionState.READY
        self.deadline = None
        self.factory.connection_made(self)

    def dataReceived(self, data: bytes) -> None:
        if self._session_pending:
            self._session_pending = False
            self.factory.tls.save_session(self.transport.getHandle())
        super().dataReceived(data)

    def deadline_expired(self) -> None:
        if self.state == ConnectionState.CONNECTING:
            self._handshake_failed(UpstreamError(
                "timeout", MSG_HANDSHAKE_TIMEOUT, nothing_received=True))
        else:
            super().deadline_expired()

    def connectionLost(self, reason: Failure = None) -> None:
        if self.state == ConnectionState.CONNECTING:
            self.factory.tls.drop_session()
            self.factory.connect_failed(UpstreamError(
                "error", self.factory.tls.describe_failure(reason)
                + " while SSL handshaking to upstream", nothing_received=True))
        super().connectionLost(reason)

    def close(self) -> None:
        state = self.state
        if state == ConnectionState.CONNECTING:
            self.state = ConnectionState.CLOSED
            self.deadline = None
            if self._connected:
                self.transport.abortConnection()
            return
        graceful = (self._connected and not self._write_blocked
                    and state in (ConnectionState.READY, ConnectionState.IDLE))
        super().close()
        if graceful:
            # the TLS layer sent close_notify and would wait for the peer's; like a
            # TCP close, do not wait: the socket closes once the alert is written
            self.transport.transport.loseConnection()

    def _handshake_failed(self, error: UpstreamError) -> None:
        self.factory.connect_failed(error)
        self.close()


class _TLSFactory(TLSMemoryBIOFactory):
    """TLS around a :class:`_ConnectFactory`; without Twisted's write aggregation (a
    ``callLater`` per write): the connection already writes a request in one piece."""

    protocol = TLSMemoryBIOProtocol


def connect_error(reason: Failure) -> UpstreamError:
    """An :class:`UpstreamError` in nginx's words for a failed connect."""
    if reason.check(ierror.TimeoutError):
        return UpstreamError("timeout", MSG_CONNECT_TIMEOUT, nothing_received=True)
    if reason.check(ierror.ConnectionRefusedError):
        text = "111: Connection refused"
    elif reason.check(ierror.DNSLookupError):
        return UpstreamError("error", f"upstream host not found ({reason.getErrorMessage()})",
                             nothing_received=True)
    else:
        text = reason.getErrorMessage()
    return UpstreamError("error", f"connect() failed ({text}) while connecting to upstream",
                         nothing_received=True)


class UpstreamConnector:
    """Opens connections to peers: ``connect(address, timeout)`` → Deferred connection."""

    def __init__(self, reactor, deadlines: Deadlines):
        self.reactor = reactor
        self.deadlines = deadlines

    def connect(self, address: Address, timeout: float, tls=None) -> Deferred:
        """Connect to ``address`` (tcp host:port, ``[v6]:port`` or ``unix:/path``).

        Fires with an :class:`UpstreamConnection`, or fails with an
        :class:`UpstreamError` (kind ``"timeout"`` after ``timeout`` seconds, else
        ``"error"``). Cancelling the Deferred abandons the attempt.

        With ``tls`` (a :class:`~gateway.tls.client.PeerTLS`) the connection is TLS
        and fires once the handshake completed and the peer verified; ``timeout``
        covers connect and handshake together. A handshake still running then fails
        as ``"timeout"``; a failed handshake or verification as ``"error"``.
        """
        connector = None

        def cancel(deferred: Deferred) -> None:
            if connector is not None:
                try:
                    connector.stopConnecting()
                except ierror.NotConnectingError:
                    pass
            connecting.cancel()

        deferred = Deferred(cancel)
        if tls is None:
            factory = connecting = _ConnectFactory(self, address, deferred)
        else:
            connecting = _ConnectFactory(self, address, deferred, tls,
                                         self.reactor.seconds() + timeout)
            factory = _TLSFactory(tls, True, connecting, clock=self.reactor)
        if address.is_unix:
            connector = self.reactor.connectUNIX(address.path, factory, timeout=timeout)
        else:
            connector = self.reactor.connectTCP(address.host, address.port, factory,
                                                timeout=timeout)
        return deferred
