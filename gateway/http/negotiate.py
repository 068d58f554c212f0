"""The protocol of each client connection: HTTP/1.1 or HTTP/2.

This module owns one decision per connection, as nginx makes it:

- on TLS, the protocol ALPN negotiated: ``h2`` → HTTP/2, anything else (``http/1.1``,
  none) → HTTP/1.1. The TLS wrapper (``gateway.tls.server``, applied around this
  factory in ``gateway.service``) offers ``h2`` only when a server of the endpoint has
  ``http2``;
- on cleartext with ``http2`` on some server of the listener, the first bytes: the
  HTTP/2 connection preface (prior knowledge, "h2c") → HTTP/2, anything else →
  HTTP/1.1. An HTTP/1.1 ``Upgrade: h2c`` is not honoured, as in nginx.

Until the first bytes arrive the connection is an HTTP/1.1 one (so its
``client_header_timeout`` runs from the accept); when HTTP/2 wins, that protocol is
dropped unused. After the choice the chosen protocol receives the transport's calls
directly: the bound methods replace this object's, so there is no extra call per read.
Without ``http2`` no negotiation happens: the HTTP/1.1 factory's protocol is returned.
"""
from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import INegotiated
from twisted.internet.protocol import Protocol, ServerFactory

from gateway.http._h2core import PREFACE

__all__ = ["NegotiatingFactory"]

_PREFACE_LENGTH = len(PREFACE)


class _Negotiator(Protocol):
    """A connection whose protocol is not known yet."""

    def __init__(self, factory: "NegotiatingFactory", addr):
        self.factory = factory
        self.addr = addr
        self.http11 = factory.http11.buildProtocol(addr)
        self._held = b""

    def makeConnection(self, transport) -> None:
        self.transport = transport
        self.connected = 1
        self.http11.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        transport = self.transport
        if INegotiated.providedBy(transport):     # TLSMemoryBIOProtocol
            http2 = transport.negotiatedProtocol == b"h2"
        else:
            if self._held:
                data = self._held + data
                self._held = b""
            if len(data) < _PREFACE_LENGTH and PREFACE.startswith(data):
                self._held = data       # maybe the preface, maybe "P…" of HTTP/1.1
                return
            http2 = data[:_PREFACE_LENGTH] == PREFACE
        if http2:
            # the HTTP/1.1 protocol saw no byte: it only leaves the deadline sweep
            self.http11.connectionLost(None)
            chosen = self.factory.http2.buildProtocol(self.addr)
            chosen.makeConnection(transport)
        else:
            chosen = self.http11
        self._use(chosen)
        chosen.dataReceived(data)

    def _use(self, chosen: Protocol) -> None:
        # the transport calls self.protocol.<method>: instance attributes win
        self.dataReceived = chosen.dataReceived
        self.connectionLost = chosen.connectionLost
        self.chosen = chosen

    def connectionLost(self, reason=None) -> None:
        self.http11.connectionLost(reason)


class NegotiatingFactory(ServerFactory):
    """The factory of one listener: HTTP/1.1 (``http11``, an
    :class:`~gateway.http.h1.HTTP11Factory`) and, when a server of the listener has
    ``http2``, HTTP/2 (``http2``, an :class:`~gateway.http.h2.H2Factory`)."""

    def __init__(self, http11, http2=None):
        self.http11 = http11
        self.http2 = http2

    def buildProtocol(self, addr):
        if self.http2 is None:
            return self.http11.buildProtocol(addr)
        return _Negotiator(self, addr)

    @property
    def alpn_protocols(self) -> list:
        """What a TLS wrapper offers by ALPN on this listener."""
        return [b"h2", b"http/1.1"] if self.http2 is not None else [b"http/1.1"]

    def graceful_shutdown(self, timeout: float):
        """Stop serving more than what is under way: GOAWAY on every HTTP/2
        connection (``H2Factory.graceful_shutdown``), no more keepalive on HTTP/1.1
        ones (``HTTP11Factory.graceful_shutdown``); a Deferred firing when all have
        closed, those left after ``timeout`` seconds being closed."""
        drains = [self.http11.graceful_shutdown(timeout)]
        if self.http2 is not None:
            drains.append(self.http2.graceful_shutdown(timeout))
        return defer.DeferredList(drains)

    def retire(self) -> None:
        """A reload replaced this factory's configuration: its connections finish
        what they are doing and close (as ``graceful_shutdown``, with no time limit;
        tunnels run to their end)."""
        self.http11.graceful_shutdown(None)
        if self.http2 is not None:
            for connection in list(self.http2.connections):
                connection.graceful_shutdown()

    def open_connections(self) -> int:
        """Client connections of this factory still open."""
        count = len(self.http11.connections)
        if self.http2 is not None:
            count += len(self.http2.connections)
        return count
