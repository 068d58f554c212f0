"""Eager-write transports: bytes leave with one send(), epoll only when the kernel is full.

The transports run on a real socketpair with a MemoryReactor standing in for the
reactor, so the test sees exactly which sockets were registered for writability.
"""
import socket

from twisted.internet import error, main
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from gateway.eagerwrite import EagerServer, EagerWriteReactor, eager_reactor


class Producer:
    def __init__(self):
        self.events = []

    def pauseProducing(self):
        self.events.append("pause")

    def resumeProducing(self):
        self.events.append("resume")

    def stopProducing(self):
        self.events.append("stop")


class EagerServerTests(SynchronousTestCase):
    def setUp(self):
        self.ours, self.peer = socket.socketpair()
        self.ours.setblocking(False)
        self.peer.setblocking(False)
        self.addCleanup(self.ours.close)
        self.addCleanup(self.peer.close)
        self.reactor = MemoryReactor()
        self.protocol = Protocol()
        self.transport = EagerServer(
            self.ours, self.protocol, ("127.0.0.1", 1234), None, 1, self.reactor
        )
        self.protocol.makeConnection(self.transport)

    def received(self) -> bytes:
        data = b""
        while True:
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                return data
            if not chunk:
                return data
            data += chunk

    def test_write_sends_at_once_without_registering_for_writability(self):
        self.transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        self.transport.writeSequence([b"one", b"two"])
        self.assertEqual(self.received(), b"HTTP/1.1 200 OK\r\n\r\nonetwo")
        self.assertNotIn(self.transport, self.reactor.getWriters())

    def test_what_the_kernel_does_not_take_is_buffered_in_order_and_waits_for_writability(self):
        big = bytes(range(256)) * 40_000          # 10 MB: more than any socket buffer
        self.transport.write(big)
        self.transport.write(b"after")
        self.assertIn(self.transport, self.reactor.getWriters())
        data = self.received()
        while self.transport in self.reactor.getWriters():
            self.transport.doWrite()
            data += self.received()
        self.assertEqual(data, big + b"after")

    def test_full_buffer_pauses_a_streaming_producer_as_twisted_does(self):
        producer = Producer()
        self.transport.registerProducer(producer, True)
        self.transport.write(b"x" * 10_000_000)
        self.assertEqual(producer.events, ["pause"])
        while self.transport in self.reactor.getWriters():
            self.received()
            self.transport.doWrite()
        self.assertEqual(producer.events, ["pause", "resume"])

    def test_write_after_the_peer_closed_is_left_for_twisteds_write_path_to_report(self):
        self.peer.close()
        self.transport.write(b"x" * 100_000)        # EPIPE on send(): must not raise
        self.assertIn(self.transport, self.reactor.getWriters())
        result = self.transport.doWrite()
        self.assertIsInstance(result, error.ConnectionLost)


class Recorder(Protocol):
    def __init__(self):
        self.data = []

    def dataReceived(self, data):
        self.data.append(data)


class EagerReadTests(SynchronousTestCase):
    """doRead is tcp.Connection's, in one function: the same answers to the reactor."""

    def setUp(self):
        self.ours, self.peer = socket.socketpair()
        self.ours.setblocking(False)
        self.addCleanup(self.ours.close)
        self.addCleanup(self.peer.close)
        self.protocol = Recorder()
        self.transport = EagerServer(
            self.ours, self.protocol, ("127.0.0.1", 1234), None, 1, MemoryReactor()
        )
        self.protocol.makeConnection(self.transport)

    def test_data_goes_to_the_protocol(self):
        self.peer.send(b"GET / HTTP/1.1\r\n")
        self.assertIsNone(self.transport.doRead())
        self.assertEqual(self.protocol.data, [b"GET / HTTP/1.1\r\n"])

    def test_nothing_to_read_is_not_an_event(self):
        self.assertIsNone(self.transport.doRead())
        self.assertEqual(self.protocol.data, [])

    def test_end_of_stream_is_connection_done(self):
        self.peer.shutdown(socket.SHUT_WR)
        self.assertIs(self.transport.doRead(), main.CONNECTION_DONE)

    def test_a_socket_error_is_connection_lost(self):
        self.ours.close()   # recv() fails with EBADF
        self.assertIs(self.transport.doRead(), main.CONNECTION_LOST)
        self.assertEqual(self.protocol.data, [])


class WrapperTests(SynchronousTestCase):
    def test_only_posix_socket_reactors_are_wrapped(self):
        fake = MemoryReactor()
        self.assertIs(eager_reactor(fake), fake)

    def test_wrapper_passes_everything_else_to_the_reactor(self):
        fake = MemoryReactor()
        wrapped = EagerWriteReactor(fake)
        wrapped.connectUNIX("/tmp/x.sock", ClientFactory())
        self.assertEqual(fake.unixClients[0][0], "/tmp/x.sock")
