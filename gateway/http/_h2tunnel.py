"""The client side of a WebSocket tunnel over HTTP/2 (RFC 8441): one extended-CONNECT
stream as a :class:`gateway.http.tunnel.DownstreamEnd`.

Theory of operation
-------------------
By the time the proxy handler hears the peer's ``101``, :mod:`gateway.http._h2core`
has made the stream's request the HTTP/1.1 handshake and :class:`~gateway.http.h2.H2Exchange`
holds the ``200`` that answers it. :class:`H2TunnelEnd` then carries the tunnel's bytes
as DATA frames on that stream, with HTTP/2 flow control standing in for TCP's:

- **client → peer**: DATA waits in the exchange's queue, its window not handed back,
  until :meth:`H2TunnelEnd.start`; from then on each DATA goes to the tunnel as it
  arrives and its window is handed back (WINDOW_UPDATE) once the tunnel took it. While
  the peer's connection cannot take more (the tunnel calls :meth:`pauseProducing`),
  DATA queues again without WINDOW_UPDATE, so the client can send at most one stream
  window (64 KiB) more: the gateway never holds more than that per direction.
- **peer → client**: :meth:`write` queues on the stream like a response body; frames go
  out within the stream and connection windows, and the registered producer (the peer's
  connection) is paused while more than ``STREAM_BUFFER`` bytes wait, resumed once they
  went out.
- **the end**: the client's END_STREAM (after the bytes before it), its RST_STREAM, the
  connection's loss, or our own END_STREAM once :meth:`close` flushed, reach the tunnel
  as ``on_lost`` exactly once. END_STREAM stands for a TCP FIN and RST_STREAM CANCEL for
  a TCP reset (RFC 8441 §4); as the tunnel keeps no half-open connections, a client
  END_STREAM is answered with our END_STREAM after what was queued, and our END_STREAM
  to a client that has not ended is followed by RST_STREAM NO_ERROR (RFC 9113 §8.1).
  The exchange is reported (access log) once the stream is over for both sides.

What the shell (:mod:`gateway.http.h2`) does for it: it queues the stream's DATA and
END_STREAM on the exchange and calls :meth:`H2TunnelEnd.deliver`, calls
:meth:`H2TunnelEnd.lost` from its stream-gone path and :meth:`H2TunnelEnd.stream_ended`
when END_STREAM went out. Nothing here imports the shell.
"""
from __future__ import annotations

from typing import Callable, Optional

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from gateway.http._h2core import CANCEL

__all__ = ["H2TunnelEnd"]

#: what H2Exchange._in holds after a stream's last DATA (h2.py's _BODY_END)
_STREAM_END = None


@implementer(IPushProducer)
class H2TunnelEnd:
    """One extended-CONNECT stream as the downstream end of a
    :class:`~gateway.http.tunnel.Tunnel` (see the module docstring).

    ``paused`` and ``pauses`` say whether, and how often, the peer's backpressure
    stopped handing window back to the client.
    """

    __slots__ = ("exchange", "paused", "pauses", "_on_data", "_on_lost", "_started")

    def __init__(self, exchange):
        self.exchange = exchange
        self.paused = False
        self.pauses = 0
        self._on_data: Optional[Callable[[bytes], None]] = None
        self._on_lost: Optional[Callable[[object], None]] = None
        self._started = False

    def __repr__(self) -> str:
        return "<H2TunnelEnd stream %d>" % self.exchange.stream_id

    # -- DownstreamEnd ------------------------------------------------------------

    def start(self, on_data: Callable[[bytes], None],
              on_lost: Callable[[object], None]) -> None:
        """Send the ``200``, then the client's DATA held since its HEADERS (before
        returning) and later ones to ``on_data``; the stream's end to ``on_lost``."""
        if self._started:
            raise RuntimeError("tunnel end started twice")
        self._started = True
        self._on_data = on_data
        self._on_lost = on_lost
        exchange = self.exchange
        if exchange._done or exchange._closed:
            # the stream went away, or the 101 was refused (the client got a 502)
            self.lost("stream closed")
            return
        exchange._tunnel = self
        exchange._body_paused = False
        proto = exchange._proto
        # small messages go out at once, as nginx sets TCP_NODELAY for WebSocket
        # proxying (the whole connection's: its other streams lose nothing by it)
        set_nodelay = getattr(proto.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            try:
                set_nodelay(True)
            except OSError:
                pass
        proto._pump(exchange)          # the 200 held since send_head
        self.deliver()
        proto._written()

    def write(self, data: bytes) -> None:
        """DATA to the client, within its windows; counted in ``body_bytes_sent`` (and,
        framed, in ``bytes_sent``)."""
        exchange = self.exchange
        if not exchange._done:
            exchange.send_body(data)

    def register_producer(self, producer) -> None:
        self.exchange.register_producer(producer)

    def unregister_producer(self) -> None:
        self.exchange.unregister_producer()

    def close(self) -> None:
        """END_STREAM after what :meth:`write` queued (``on_lost`` follows once it went
        out)."""
        exchange = self.exchange
        exchange.unregister_producer()
        if exchange._closed or exchange._ended or exchange._end_queued:
            return
        exchange._end_queued = True
        if not exchange._pumping:
            proto = exchange._proto
            proto._pump(exchange)
            proto._written()

    def abort(self) -> None:
        """RST_STREAM CANCEL now, dropping what is queued (``on_lost`` follows)."""
        exchange = self.exchange
        proto = exchange._proto
        proto._reset(exchange, CANCEL)
        proto._written()

    @property
    def buffered(self) -> int:
        return self.exchange._out_bytes

    # -- IPushProducer: registered on the peer's transport ---------------------------

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.pauses += 1
            self.exchange._body_paused = True

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            exchange = self.exchange
            exchange._body_paused = False
            if exchange._in:
                self.deliver()
                exchange._proto._written()

    def stopProducing(self) -> None:
        """The peer's connection is gone; the tunnel hears it itself."""

    # -- called by the HTTP/2 shell -----------------------------------------------

    def deliver(self) -> None:
        """Hand the client's queued DATA to the tunnel while it takes it, and its
        window back to the client; the client's END_STREAM ends the tunnel's client
        side and is answered by ours."""
        exchange = self.exchange
        queue = exchange._in
        flow = 0
        ended = False
        while queue and not exchange._body_paused and self._on_data is not None:
            item = queue.pop(0)
            if item is _STREAM_END:
                ended = True
                break
            flow += item[1]
            self._on_data(item[0])
        proto = exchange._proto
        if flow and not exchange._closed:
            proto._ack(flow, exchange.stream_id)
        if ended:
            exchange._body_complete = True
            self.lost("client ended stream")
            self.close()

    def lost(self, reason) -> None:
        """The stream is over for the client (END_STREAM, RST_STREAM, connection lost,
        or our END_STREAM went out): tell the tunnel, once."""
        on_lost = self._on_lost
        if on_lost is None:
            return
        self._on_lost = self._on_data = None
        on_lost(reason)

    def stream_ended(self) -> None:
        """Our END_STREAM went out: the stream is over; report the exchange."""
        self.lost("stream ended")
        exchange = self.exchange
        exchange._tunnel = None
        if not exchange._done:
            exchange._proto._exchange_done(exchange, aborted=False)

