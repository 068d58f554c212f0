"""What the HTTP/1.1 and HTTP/2 server factories share.

:class:`ServingFactory` holds the arguments every server protocol reads (clock,
deadline sweep, server selector, handler, scheme, listener, the exchange-done hook), the
``Date`` value cached per clock second, and the set of open connections with the
graceful shutdown over them: each connection is asked to stop
(``protocol.graceful_shutdown()``: HTTP/1.1 stops keeping alive, HTTP/2 sends GOAWAY),
and the returned Deferred fires once the last one has closed, the stragglers aborted
after ``timeout``. Protocols add themselves to ``connections`` when made and call
``_connection_closed`` when lost. Nothing here reads or writes bytes.
"""
from __future__ import annotations

from email.utils import formatdate
from typing import Optional

from twisted.internet import defer
from twisted.internet.protocol import ServerFactory


class ServingFactory(ServerFactory):
    """Base of ``HTTP11Factory`` and ``H2Factory``.

    ``selector`` has ``.default`` and ``.select(host)`` (``ServerSettings``);
    ``handler(exchange)`` is called once per validated request head;
    ``on_exchange_done(exchange)`` once per exchange when it ends (also for requests
    the protocol refused itself), for the access log.
    """

    def __init__(self, clock, deadlines, selector, handler, *, scheme: str = "http",
                 listener: str = "", on_exchange_done=None):
        self.clock = clock
        self.deadlines = deadlines
        self.selector = selector
        self.handler = handler
        self.scheme = scheme
        self.listener = listener
        self.on_exchange_done = on_exchange_done
        #: the open connections (tunnels included), for graceful shutdown
        self.connections: set = set()
        self._drained: list[defer.Deferred] = []
        self._date_second = -1
        self._date = b""

    def buildProtocol(self, addr):
        return self.protocol(self)

    def date(self) -> bytes:
        """The ``Date`` value, formatted at most once per clock second."""
        second = int(self.clock.seconds())
        if second != self._date_second:
            return self._format_date(second)
        return self._date

    def _format_date(self, second: int) -> bytes:
        # the HTTP/1.1 exchange reads _date itself while _date_second is current
        self._date_second = second
        self._date = formatdate(second, usegmt=True).encode("ascii")
        return self._date

    def graceful_shutdown(self, timeout: Optional[float] = None) -> defer.Deferred:
        """Ask every connection to stop (``protocol.graceful_shutdown()``); returns a
        Deferred that fires once all have closed. With ``timeout``, the connections
        still open after that many seconds (slow responses, tunnels) are aborted.
        Each call gets its own Deferred."""
        for proto in list(self.connections):
            proto.graceful_shutdown()
        if not self.connections:
            return defer.succeed(None)
        drained = defer.Deferred()
        self._drained.append(drained)
        if timeout is not None:
            timer = self.clock.callLater(timeout, self._force_close)

            def done(result):
                if timer.active():
                    timer.cancel()
                return result

            drained.addBoth(done)
        return drained

    def _force_close(self) -> None:
        for proto in list(self.connections):
            proto.transport.abortConnection()

    def _connection_closed(self, proto) -> None:
        self.connections.discard(proto)
        if not self.connections and self._drained:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)
