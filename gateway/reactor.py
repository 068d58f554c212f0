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
errors, disconnection) stays the stock reactor's. ``_readOrWrite`` itself is Twisted's,
restated here so that it is compiled with this module (setup.py's hot path): it runs
for every socket event.

This module owns that reactor and its ``install``; nothing here reads or writes data.
Only ``gateway.tap`` installs it (the global reactor is the tap's business).
"""
from __future__ import annotations

from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.posixbase import _NO_FILEDESC


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

    def _readOrWrite(self, selectable, read) -> None:
        if selectable.fileno() == -1:
            self._disconnectSelectable(selectable, _NO_FILEDESC, read)
            return
        try:
            why = selectable.doRead() if read else selectable.doWrite()
        except Exception as e:
            why = e
            self._log.failure(None)
        if why:
            self._disconnectSelectable(selectable, why, read)


def install(eventloop=None) -> GatewayReactor:
    """Install a :class:`GatewayReactor` as the global reactor and return it."""
    from twisted.internet.main import installReactor

    reactor = GatewayReactor(eventloop)
    installReactor(reactor)
    return reactor
