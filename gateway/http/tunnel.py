"""Upgrade tunnels: after a peer's ``101 Switching Protocols``, bytes both ways.

Theory of operation
-------------------
A :class:`Tunnel` joins two *ends*. The upstream end is the peer's connection, taken
over from :class:`~gateway.http.client.UpstreamConnection` once it delivered the 101
head. The downstream end is whatever carries the client: the HTTP/1.1 connection
(:class:`H1DownstreamEnd`, through :meth:`H1Exchange.take_over`) or an HTTP/2
extended-CONNECT stream (RFC 8441, :class:`gateway.http._h2tunnel.H2TunnelEnd`) that
implements the same :class:`DownstreamEnd`.

- **Bytes are relayed unchanged**, including those that arrived in the same read as the
  handshake on either side (the client's after its request head, the peer's after the
  101 head): they are the first bytes relayed, in order.
- **Flow control is Twisted's portforward pattern**: each end is registered as the
  streaming producer of the other before any byte is relayed, so when one side's write
  buffer fills, reading from the other side stops until it drains. Memory per tunnel is
  bounded by the transports' ``bufferSize`` plus one read, whatever the peers do.
- **Idle limit**: ``proxy_read_timeout`` without a byte in either direction aborts both
  sides (nginx's "upstream timed out ... while proxying upgraded connection"). The
  tunnel only stores ``deadline``; the shared :class:`~gateway.deadlines.Deadlines`
  sweep calls :meth:`Tunnel.deadline_expired`, no ``callLater`` per read.
- **No half-open tunnels**: when either side closes (an EOF included, as nginx does),
  what was already read from it is flushed to the other side, which is then closed.
  The other side gets one more ``proxy_read_timeout`` to take those bytes; after it,
  it is aborted.
- Both TCP connections get ``TCP_NODELAY``, as nginx sets it on upgraded connections:
  a tunnel carries small messages that must not wait for Nagle's algorithm.

The owner (the proxy handler) hears twice: ``on_closing(tunnel)`` when the first side
closes (the tunnel's duration and byte counts are final: the access log line is written
when the client connection ends, which may be right after), and ``on_closed(tunnel)``
when both connections are gone (the lease is released then, so ``max_conns`` and
``least_conn`` count the tunnel for its whole life).

What the downstream end must provide is :class:`DownstreamEnd`; deciding whether an
exchange asks for an upgrade is :func:`requested_upgrade`. Choosing the peer, sending
the handshake and relaying the 101 head are the proxy handler's
(:mod:`gateway.http.proxy`).
"""
from __future__ import annotations

import re
from typing import Callable, Optional, Protocol as TypingProtocol

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from gateway.http.headers import connection_tokens

__all__ = [
    "DownstreamEnd",
    "H1DownstreamEnd",
    "MSG_IDLE_TIMEOUT",
    "TransportEnd",
    "Tunnel",
    "downstream_end",
    "requested_upgrade",
]

log = Logger()

MSG_IDLE_TIMEOUT = ("upstream timed out (110: Connection timed out) "
                    "while proxying upgraded connection")


class DownstreamEnd(TypingProtocol):
    """The client side of a tunnel. An ``IPushProducer`` as well: ``pauseProducing``
    stops delivering client bytes (the peer is not taking them), ``resumeProducing``
    starts again, ``stopProducing`` is ignored (the end's own close is reported
    through ``on_lost``).

    HTTP/1.1 implements it in :class:`H1DownstreamEnd`. An HTTP/2 stream (RFC 8441)
    implements it with DATA frames: ``write`` within the stream's flow-control window
    (buffering the rest and pausing the registered producer while that buffer is over
    its bound), ``pauseProducing`` by withholding WINDOW_UPDATE for the stream,
    ``close`` by flushing then ending the stream, ``abort`` by RST_STREAM.
    """

    def start(self, on_data: Callable[[bytes], None],
              on_lost: Callable[[object], None]) -> None:
        """Send the response head the exchange holds (the 101, or an HTTP/2 200), then
        deliver client bytes to ``on_data`` — first, synchronously, those that arrived
        after the request head — and the end of the client side to ``on_lost(reason)``,
        exactly once."""

    def write(self, data: bytes) -> None:
        """Relay bytes to the client (and count them in the exchange's
        ``bytes_sent``/``body_bytes_sent``)."""

    def register_producer(self, producer) -> None:
        """Pause ``producer`` (an ``IPushProducer``) while the client is not keeping
        up; resume it when it is."""

    def unregister_producer(self) -> None: ...

    def close(self) -> None:
        """Flush what :meth:`write` was given, then close (``on_lost`` follows, maybe
        from inside this call)."""

    def abort(self) -> None:
        """Close now, dropping unsent bytes (``on_lost`` follows, maybe from inside
        this call)."""

    @property
    def buffered(self) -> int:
        """Bytes written but not yet handed to the network (for tests and status)."""


def requested_upgrade(exchange) -> Optional[bytes]:
    """The protocol(s) the client asks to switch to, as its ``Upgrade`` value; None
    when it asks for nothing.

    An exchange of another version may say so itself with an ``upgrade_protocol``
    attribute (an HTTP/2 extended CONNECT carries ``:protocol``). On HTTP/1.1 it is the
    ``Upgrade`` header of a 1.1 request that also lists ``upgrade`` in ``Connection``
    (RFC 9110 §7.8: a server ignores an Upgrade without it, and in HTTP/1.0) — exactly
    when llhttp stops parsing after the head, so the connection can be taken over. An
    Upgrade naming ``h2c`` is never a tunnel (see below).
    """
    request = exchange.request
    if request.version != "1.1":
        return getattr(exchange, "upgrade_protocol", None)
    if not request.may_upgrade:
        return None         # the usual case: the parser saw no Upgrade header
    values = request.header_values(b"upgrade")
    if not values or b"upgrade" not in connection_tokens(request.headers):
        return None
    value = b", ".join(value.strip() for value in values)
    if _H2C.search(value):
        # "h2c smuggling": a tunnel that speaks HTTP/2 to the peer would carry requests
        # for any path past this location's access rules; such a request is proxied as
        # an ordinary one (without Upgrade), as with proxy_websocket = false
        return None
    return value or None


_H2C = re.compile(rb"(?:^|,)\s*h2c\s*(?:,|$)", re.IGNORECASE)


def downstream_end(exchange) -> DownstreamEnd:
    """The tunnel end of ``exchange``: its own ``tunnel_end()`` when it has one (an
    HTTP/2 stream), else the HTTP/1.1 connection through ``take_over``."""
    make = getattr(exchange, "tunnel_end", None)
    return make() if make is not None else H1DownstreamEnd(exchange)


@implementer(IPushProducer)
class TransportEnd:
    """One side of a tunnel that is a Twisted transport (the peer's connection; the
    HTTP/1.1 client's through :class:`H1DownstreamEnd`).

    As a producer, pausing it stops reading from its transport. ``paused`` and
    ``pauses`` say whether, and how often, the other side's backpressure did that.
    """

    def __init__(self, transport=None):
        self.transport = transport
        self.paused = False
        self.pauses = 0
        self._producer_registered = False

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def set_nodelay(self) -> None:
        """Small messages go out at once, as nginx sets TCP_NODELAY on both
        connections of an upgraded request (not for unix sockets)."""
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            try:
                set_nodelay(True)
            except OSError:
                pass

    def register_producer(self, producer) -> None:
        self.transport.registerProducer(producer, True)
        self._producer_registered = True

    def unregister_producer(self) -> None:
        if self._producer_registered:
            self._producer_registered = False
            self.transport.unregisterProducer()

    def close(self) -> None:
        """Close after the buffered bytes are written. The registered producer goes
        first: a ``FileDescriptor`` resumes a paused producer instead of closing once
        its buffer drains. Over TLS the socket closes once the close alert is written,
        without waiting for the other side's (a TCP close does not wait either)."""
        self.unregister_producer()
        transport = self.transport
        transport.loseConnection()
        if isinstance(transport, TLSMemoryBIOProtocol) and transport.transport is not None:
            transport.transport.loseConnection()

    def abort(self) -> None:
        self._producer_registered = False
        self.transport.abortConnection()

    @property
    def buffered(self) -> int:
        transport = self.transport
        try:
            return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        except (AttributeError, TypeError):
            return 0

    # IPushProducer: registered on the other side's transport

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.pauses += 1
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """The other side's transport is gone; the tunnel hears it through its own
        callback and closes this side itself."""


class H1DownstreamEnd(TransportEnd):
    """The client's HTTP/1.1 connection as a :class:`DownstreamEnd`."""

    def __init__(self, exchange):
        super().__init__()
        self.exchange = exchange

    def start(self, on_data, on_lost) -> None:
        # take_over writes the pending 101 head, then feeds the bytes held since the
        # request head to on_data before returning
        self.transport = self.exchange.take_over(on_data, on_lost)
        self.set_nodelay()

    def write(self, data: bytes) -> None:
        exchange = self.exchange
        exchange.bytes_sent += len(data)
        exchange.body_bytes_sent += len(data)
        self.transport.write(data)


class Tunnel:
    """Bytes between a :class:`DownstreamEnd` and a taken-over upstream connection.

    ``connection`` is an :class:`~gateway.http.client.UpstreamConnection` that has
    just delivered a 101 head: :meth:`start` calls its ``take_over`` and reads its
    ``bytes_received``/``bytes_sent`` (the handshake's share of
    :attr:`upstream_bytes_received` and :attr:`upstream_bytes_sent`).

    ``from_client`` and ``from_upstream`` count the bytes relayed in each direction
    (those that came with the handshakes included); ``started``/``ended`` are clock
    seconds; ``ended_by`` is ``"client"``, ``"upstream"`` or ``"timeout"``.
    """

    def __init__(self, downstream: DownstreamEnd, connection, *, clock, deadlines,
                 idle_timeout: float, on_closing: Callable[["Tunnel"], None],
                 on_closed: Callable[["Tunnel"], None]):
        self.downstream = downstream
        self.upstream = TransportEnd()
        self.connection = connection
        self.clock = clock
        self.deadlines = deadlines
        self.idle_timeout = idle_timeout
        self.on_closing = on_closing
        self.on_closed = on_closed
        self.deadline: Optional[float] = None
        self.from_client = 0
        self.from_upstream = 0
        self.started = clock.seconds()
        self.ended: Optional[float] = None
        self.ended_by: Optional[str] = None
        self.client_open = False
        self.upstream_open = False
        self._handshake_received = 0
        self._handshake_sent = 0
        self._closed = False

    @property
    def upstream_bytes_received(self) -> int:
        """Every byte read from the peer: the 101 head and the tunnel's."""
        return self._handshake_received + self.from_upstream

    @property
    def upstream_bytes_sent(self) -> int:
        """Every byte written to the peer: the request and the tunnel's."""
        return self._handshake_sent + self.from_client

    def __repr__(self) -> str:
        return (f"<Tunnel client={self.from_client}B upstream={self.from_upstream}B "
                f"ended_by={self.ended_by}>")

    def start(self) -> None:
        """Wire both ends (the exchange already holds the 101 head to send)."""
        connection = self.connection
        transport, held = connection.take_over(self._upstream_data, self._upstream_lost)
        # held bytes are counted once relayed, with the tunnel's
        self._handshake_received = connection.bytes_received - len(held)
        self._handshake_sent = connection.bytes_sent
        self.upstream.transport = transport
        self.upstream.set_nodelay()
        self.upstream_open = self.client_open = True
        self.deadline = self.started + self.idle_timeout
        self.deadlines.add(self)
        # the client's held bytes go to the peer from inside start()
        self.downstream.start(self._client_data, self._client_lost)
        if self.ended is not None:
            return
        # portforward: each side pauses the other while its write buffer is full
        self.upstream.register_producer(self.downstream)
        self.downstream.register_producer(self.upstream)
        if held:
            self._upstream_data(held)

    # -- data ---------------------------------------------------------------------

    def _client_data(self, data: bytes) -> None:
        if not self.upstream_open:
            return
        self.from_client += len(data)
        if self.ended is None:
            self.deadline = self.clock.seconds() + self.idle_timeout
        self.upstream.write(data)

    def _upstream_data(self, data: bytes) -> None:
        if not self.client_open:
            return
        self.from_upstream += len(data)
        if self.ended is None:
            self.deadline = self.clock.seconds() + self.idle_timeout
        self.downstream.write(data)

    # -- the end ------------------------------------------------------------------

    def _client_lost(self, reason) -> None:
        if not self.client_open:
            return
        self.client_open = False
        self._ending("client")
        if self.upstream_open:
            self.upstream.close()      # after the client's last bytes
        self._check_closed()

    def _upstream_lost(self, reason) -> None:
        if not self.upstream_open:
            return
        self.upstream_open = False
        self._ending("upstream")
        if self.client_open:
            self.downstream.close()    # after the peer's last bytes
        self._check_closed()

    def _ending(self, by: str) -> None:
        if self.ended is not None:
            return
        self.ended = now = self.clock.seconds()
        self.ended_by = by
        # the side still open gets one more idle period to take what is left
        self.deadline = now + self.idle_timeout
        try:
            self.on_closing(self)
        except Exception:
            log.failure("tunnel on_closing failed for {tunnel!r}", tunnel=self)

    def _check_closed(self) -> None:
        # an HTTP/2 end reports its loss from inside close() when END_STREAM goes out
        # at once: both _lost callbacks then get here
        if self.client_open or self.upstream_open or self._closed:
            return
        self._closed = True
        self.deadline = None
        self.deadlines.discard(self)
        self.on_closed(self)

    def deadline_expired(self) -> None:
        if self.ended is None:
            self._ending("timeout")     # the owner logs MSG_IDLE_TIMEOUT
        self.deadline = None
        # idle, or the remaining side did not take its last bytes in time
        if self.client_open:
            self.downstream.abort()
        if self.upstream_open:
            self.upstream.abort()
