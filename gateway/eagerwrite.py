"""TCP transports that send at once instead of waiting for the socket to be writable.

Twisted's ``FileDescriptor.write`` appends to a buffer and registers the socket for
writability; the bytes leave one reactor iteration later, after an ``epoll_ctl`` to add
write interest, a writable event dispatched through the logging context, and another
``epoll_ctl`` to remove it. For a proxy that writes one small response per request (and
one request upstream) that path is a quarter of its CPU. asyncio's transports avoid it
by trying ``send()`` first; these transports do the same: when nothing is queued, the
bytes go out with one ``send()`` and epoll is never involved. Whatever the kernel does
not take (a full socket buffer) falls back to Twisted's buffered path unchanged, so
flow control (``pauseProducing`` beyond ``bufferSize``) and ordering are Twisted's.
TLS connections (``startTLS``) always use Twisted's path.

:class:`EagerWriteReactor` wraps a posix reactor so that ``listenTCP`` and
``connectTCP`` build these transports; everything else is the reactor's own. Endpoints
(``serverFromString``) and connectors given the wrapper use them without knowing it.
This module owns the transports only; it neither reads nor frames data.
"""
from __future__ import annotations

import errno

from twisted.internet import main, tcp

_RETRY = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ENOBUFS})


class _EagerWrite:
    """Mixin for ``tcp.Server``/``tcp.Client``: ``write`` tries ``send()`` first.

    ``doRead`` is ``tcp.Connection``'s (with its ``_dataReceived``) in one function,
    compiled with this module (setup.py's hot path): it runs for every read event.
    """

    def doRead(self):
        try:
            data = self.socket.recv(self.bufferSize)
        except OSError as se:
            if se.args[0] == errno.EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self.protocol.dataReceived(data)
        return None

    def write(self, data: bytes) -> None:
        if (data and self.connected and not self.dataBuffer and not self._tempDataBuffer
                and not self._writeDisconnected and not self.TLS):
            try:
                sent = self.socket.send(data)
            except OSError as e:
                # a retryable condition waits for writability as usual; a real error is
                # left for Twisted's write path to find and report as connectionLost
                sent = 0
                if e.errno not in _RETRY:
                    super().write(data)
                    return
            if sent == len(data):
                return
            data = data[sent:]
        super().write(data)

    def writeSequence(self, iovec) -> None:
        self.write(b"".join(iovec))


class EagerServer(_EagerWrite, tcp.Server):
    """An accepted TCP connection with eager writes."""


class EagerClient(_EagerWrite, tcp.Client):
    """An outgoing TCP connection with eager writes."""


class EagerPort(tcp.Port):
    """A listening TCP port whose connections are :class:`EagerServer`."""

    transport = EagerServer


class EagerConnector(tcp.Connector):
    """A TCP connector whose connection is an :class:`EagerClient`."""

    def _makeTransport(self) -> EagerClient:
        return EagerClient(self.host, self.port, self.bindAddress, self, self.reactor)


class EagerWriteReactor:
    """A posix reactor, except that TCP listeners and connections write eagerly."""

    def __init__(self, reactor):
        self._reactor = reactor

    def __getattr__(self, name):
        return getattr(self._reactor, name)

    def listenTCP(self, port, factory, backlog=50, interface=""):
        listening = EagerPort(port, factory, backlog, interface, self._reactor)
        listening.startListening()
        return listening

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):
        connector = EagerConnector(host, port, factory, timeout, bindAddress, self._reactor)
        connector.connect()
        return connector


def eager_reactor(reactor):
    """``reactor`` wrapped for eager writes when it is a posix socket reactor (epoll,
    poll, select, asyncio), else unchanged (e.g. test fakes)."""
    from twisted.internet.posixbase import PosixReactorBase

    return EagerWriteReactor(reactor) if isinstance(reactor, PosixReactorBase) else reactor
