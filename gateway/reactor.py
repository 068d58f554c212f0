"""The reactor the tap installs: Twisted's asyncio reactor, dispatching I/O events directly.

Twisted's ``AsyncioSelectorReactor`` registers every reader and writer with asyncio as
``callWithLogger(selectable, _readOrWrite, selectable, read)``: each readable event first
builds a legacy logging context (``{"system": selectable.logPrefix()}``) that only
``twisted.python.log.msg`` calls made during the dispatch would read. The gateway logs
through ``twisted.logger`` with explicit fields, and that context costs about a
microsecond per event — two events per proxied request, a few percent of the
gateway's CPU under load. :class:`GatewayReactor` re-registers the same callback
without the wrapper; asyncio's ``add_reader`` on an fd it already watches only swaps the
callback (no ``epoll_ctl``), and every other behaviour (continuous polling for files,
errors, disconnection) stays the stock reactor's.

This module owns that reactor and its ``install``; nothing here reads or writes data.
Only ``gateway.tap`` installs it (the global reactor is the tap's business).
"""
from __future__ import annotations

from twisted.internet.asyncioreactor import AsyncioSelectorReactor


class GatewayReactor(AsyncioSelectorReactor):
    """``AsyncioSelectorReactor`` whose socket events skip ``callWithLogger``."""

    def addReader(self, reader) -> None:
        super().addReader(reader)
        fd = self._readers.get(reader)
        if fd is not None:
            self._asyncioEventloop.add_reader(fd, self._readOrWrite, reader, True)

    def addWriter(self, writer) -> None:
        super().addWriter(writer)
        fd = self._writers.get(writer)
        if fd is not None:
            self._asyncioEventloop.add_writer(fd, self._readOrWrite, writer, False)


def install(eventloop=None) -> GatewayReactor:
    """Install a :class:`GatewayReactor` as the global reactor and return it."""
    from twisted.internet.main import installReactor

    reactor = GatewayReactor(eventloop)
    installReactor(reactor)
    return reactor
