"""GatewayReactor: the asyncio reactor with socket events dispatched without callWithLogger."""
from __future__ import annotations

import asyncio
import socket

from twisted.internet.abstract import FileDescriptor
from twisted.python.log import callWithLogger
from twisted.trial import unittest

from gateway.reactor import GatewayReactor


class _SocketReader(FileDescriptor):
    """A readable/writable end of a socketpair recording what the reactor calls."""

    def __init__(self, reactor, sock):
        super().__init__(reactor)
        self.sock = sock
        self.received: list[bytes] = []
        self.writable = 0

    def fileno(self):
        return self.sock.fileno()

    def doRead(self):
        self.received.append(self.sock.recv(100))

    def doWrite(self):
        self.writable += 1

    def logPrefix(self):
        return "test-reader"


class GatewayReactorTests(unittest.TestCase):
    def setUp(self):
        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)
        self.reactor = GatewayReactor(self.loop)
        self.a, self.b = socket.socketpair()
        self.addCleanup(self.a.close)
        self.addCleanup(self.b.close)
        self.a.setblocking(False)
        self.reader = _SocketReader(self.reactor, self.a)

    def _handle(self, event):
        key = self.loop._selector.get_key(self.a.fileno())
        reader_handle, writer_handle = key.data
        return reader_handle if event == "read" else writer_handle

    def _run_once(self):
        self.loop.call_soon(self.loop.stop)
        self.loop.run_forever()

    def test_reader_is_dispatched_directly(self):
        self.reactor.addReader(self.reader)
        self.addCleanup(self.reactor.removeReader, self.reader)
        handle = self._handle("read")
        self.assertEqual(handle._callback, self.reactor._readOrWrite)
        self.assertIsNot(handle._callback, callWithLogger)
        self.assertEqual(handle._args, (self.reader, True))
        self.assertIn(self.reader, self.reactor.getReaders())

        self.b.send(b"hello")
        for _ in range(20):
            if self.reader.received:
                break
            self._run_once()
        self.assertEqual(self.reader.received, [b"hello"])

    def test_writer_is_dispatched_directly(self):
        self.reactor.addWriter(self.reader)
        handle = self._handle("write")
        self.assertEqual(handle._callback, self.reactor._readOrWrite)
        self.assertEqual(handle._args, (self.reader, False))
        for _ in range(20):
            if self.reader.writable:
                break
            self._run_once()
        self.reactor.removeWriter(self.reader)
        self.assertGreaterEqual(self.reader.writable, 1)
        self.assertNotIn(self.reader, self.reactor.getWriters())

    def test_adding_twice_and_removing_keeps_the_stock_bookkeeping(self):
        self.reactor.addReader(self.reader)
        self.reactor.addReader(self.reader)
        self.assertEqual(self.reactor.getReaders().count(self.reader), 1)
        self.reactor.removeReader(self.reader)
        self.assertNotIn(self.reader, self.reactor.getReaders())
        self.assertRaises(KeyError, self.loop._selector.get_key, self.a.fileno())

    def test_a_failing_read_is_logged_and_disconnects(self):
        class Broken(_SocketReader):
            def doRead(self):
                raise ValueError("broken reader")

            def connectionLost(self, reason):
                self.lost = reason

        reader = Broken(self.reactor, self.a)
        self.reactor.addReader(reader)
        self.b.send(b"x")
        for _ in range(20):
            if not hasattr(reader, "lost"):
                self._run_once()
        reader.lost.trap(ValueError)
        self.assertNotIn(reader, self.reactor.getReaders())
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_a_reader_without_a_descriptor_is_disconnected(self):
        lost = []
        self.reader.connectionLost = lost.append
        self.reactor.addReader(self.reader)
        self.reader.fileno = lambda: -1
        self.reactor._readOrWrite(self.reader, True)
        self.assertEqual(len(lost), 1)
        self.assertNotIn(self.reader, self.reactor.getReaders())
