"""The upstream client and pool over real sockets on 127.0.0.1 against a small Twisted
backend: keepalive reuse across framings, and stale pooled connections."""
from __future__ import annotations

import os
import tempfile

from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from gateway.config.model import Address
from gateway.deadlines import Deadlines
from gateway.http.client import ConnectionState, UpstreamConnector, UpstreamError
from gateway.http.pool import ConnectionPool

TIMEOUT = 5.0

RESPONSES = {
    b"/cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"/chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"),
    b"/204": b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
    b"/304": b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    b"/close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nby",
}


class Backend(protocol.Protocol):
    """Answers one request at a time from RESPONSES; ``/drop`` closes without a word;
    HEAD gets a head announcing a body it never sends; POST echoes its body."""

    def connectionMade(self):
        self.factory.connections.append(self)
        self.buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            method, path, _ = lines[0].split(b" ")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            body, self.buffer = rest[:length], rest[length:]
            self.factory.requests.append((method, path))
            if path == b"/silent":
                return
            if path == b"/drop":
                self.transport.loseConnection()
                return
            if method == b"HEAD":
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            elif method == b"POST":
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                     % (len(body), body))
            else:
                self.transport.write(RESPONSES[path])
                if path == b"/close":
                    self.transport.loseConnection()


class BackendFactory(protocol.ServerFactory):
    protocol = Backend

    def __init__(self):
        self.connections = []
        self.requests = []


class Collector:
    """A ResponseHandler that fires ``done`` with (head, body) or fails with the error."""

    def __init__(self):
        self.done = defer.Deferred()
        self.head = None
        self.body = []

    def response_head(self, head):
        self.head = head

    def response_body(self, data):
        self.body.append(data)

    def response_end(self):
        self.done.callback((self.head, b"".join(self.body)))

    def response_error(self, error):
        self.done.errback(error)


def wait(d):
    return d.addTimeout(TIMEOUT, reactor)


class ClientSocketTests(unittest.TestCase):

    def setUp(self):
        self.backend = BackendFactory()
        self.port = reactor.listenTCP(0, self.backend, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.deadlines = Deadlines(reactor)
        self.addCleanup(self.deadlines.stop)
        self.connector = UpstreamConnector(reactor, self.deadlines)
        self.pool = ConnectionPool(reactor, self.deadlines, keepalive=4,
                                   keepalive_requests=100, keepalive_timeout=60.0,
                                   keepalive_time=3600.0)
        self.address = Address(f"127.0.0.1:{self.port.getHost().port}", "127.0.0.1",
                               self.port.getHost().port)
        self.opened = []
        self.addCleanup(self._close_connections)

    def _close_connections(self):
        self.pool.close_all()
        lost = []
        for connection in self.opened:
            if connection.state != ConnectionState.CLOSED or connection._connected:
                d = defer.Deferred()
                original = connection.connectionLost

                def connection_lost(reason, original=original, d=d):
                    original(reason)
                    d.callback(None)

                connection.connectionLost = connection_lost
                connection.close()
                lost.append(wait(d))
        for server in self.backend.connections:
            server.transport.loseConnection()
        return defer.gatherResults(lost)

    async def connection(self):
        """A pooled connection to the backend, or a new one."""
        connection = self.pool.take(self.address.text)
        if connection is None:
            connection = await wait(self.connector.connect(self.address, TIMEOUT))
            self.opened.append(connection)
        return connection

    async def request(self, path, method="GET", body=None):
        connection = await self.connection()
        collector = Collector()
        if body is None:
            head = b"%s %s HTTP/1.1\r\nHost: backend\r\n\r\n" % (method.encode(), path)
            connection.send_request(head, collector, method=method, body="none",
                                    read_timeout=TIMEOUT, send_timeout=TIMEOUT)
        else:
            head = b"%s %s HTTP/1.1\r\nHost: backend\r\nContent-Length: %d\r\n\r\n" % (
                method.encode(), path, len(body))
            connection.send_request(head, collector, method=method, body="length",
                                    read_timeout=TIMEOUT, send_timeout=TIMEOUT)
            connection.write_body(body)
            connection.end_body()
        head, data = await wait(collector.done)
        kept = self.pool.put(self.address.text, connection)
        return connection, head, data, kept

    @defer.inlineCallbacks
    def test_keepalive_reuse_across_length_chunked_head_204_304_and_post(self):
        """Every framing leaves the connection reusable: one backend connection."""
        results = []
        for path, method, body in [(b"/cl", "GET", None), (b"/chunked", "GET", None),
                                   (b"/cl", "HEAD", None), (b"/204", "GET", None),
                                   (b"/304", "GET", None), (b"/echo", "POST", b"payload"),
                                   (b"/cl", "GET", None)]:
            connection, head, data, kept = yield defer.Deferred.fromCoroutine(
                self.request(path, method, body))
            results.append((head.status, data, kept, connection.reused))
        self.assertEqual(results, [
            (200, b"hello", True, False),
            (200, b"abcdefg", True, True),
            (200, b"", True, True),
            (204, b"", True, True),
            (304, b"", True, True),
            (200, b"payload", True, True),
            (200, b"hello", True, True),
        ])
        self.assertEqual(len(self.backend.connections), 1)
        self.assertEqual(connection.requests, 7)
        self.assertEqual((self.pool.hits, self.pool.misses), (6, 1))

    @defer.inlineCallbacks
    def test_connection_close_response_is_not_pooled(self):
        connection, head, data, kept = yield defer.Deferred.fromCoroutine(
            self.request(b"/close"))
        self.assertEqual((head.status, data, kept), (200, b"by", False))
        yield defer.Deferred.fromCoroutine(self.request(b"/cl"))
        self.assertEqual(len(self.backend.connections), 2)

    @defer.inlineCallbacks
    def test_stale_pooled_connection_reports_nothing_received(self):
        """The backend closes a reused connection without answering: the proxy may
        retry because not a single byte arrived."""
        yield defer.Deferred.fromCoroutine(self.request(b"/cl"))
        error = None
        try:
            yield defer.Deferred.fromCoroutine(self.request(b"/drop"))
        except UpstreamError as exc:
            error = exc
        self.assertIsNotNone(error)
        self.assertEqual((error.kind, error.nothing_received, error.response_started),
                         ("error", True, False))
        self.assertTrue(self.opened[0].reused)

    @defer.inlineCallbacks
    def test_idle_connection_closed_by_backend_leaves_the_pool(self):
        connection, _, _, kept = yield defer.Deferred.fromCoroutine(self.request(b"/cl"))
        self.assertTrue(kept)
        lost = defer.Deferred()
        original = connection.connectionLost

        def connection_lost(reason):
            original(reason)
            lost.callback(None)

        connection.connectionLost = connection_lost
        self.backend.connections[0].transport.loseConnection()
        yield wait(lost)
        self.assertEqual(len(self.pool), 0)
        self.assertIsNone(self.pool.take(self.address.text))

    @defer.inlineCallbacks
    def test_read_timeout_when_the_backend_never_answers(self):
        connection = yield defer.Deferred.fromCoroutine(self.connection())
        collector = Collector()
        connection.send_request(b"GET /silent HTTP/1.1\r\nHost: b\r\n\r\n", collector,
                                method="GET", body="none", read_timeout=0.3,
                                send_timeout=TIMEOUT)
        try:
            yield wait(collector.done)
        except UpstreamError as exc:
            self.assertEqual((exc.kind, exc.nothing_received), ("timeout", True))
        else:
            self.fail("no timeout")

    @defer.inlineCallbacks
    def test_send_timeout_when_the_backend_stops_reading(self):
        """A large body to a backend that never reads fills the socket buffers; the
        transport pauses the body producer, then proxy_send_timeout fires."""
        connection = yield defer.Deferred.fromCoroutine(self.connection())
        self.backend.connections[0].transport.pauseProducing()
        collector = Collector()
        events = []

        class BodyReader:
            """Writes body chunks whenever the upstream side lets it, as the client
            exchange's body reader would."""

            paused = False

            def pauseProducing(self):
                events.append("pause")
                self.paused = True

            def resumeProducing(self):
                events.append("resume")
                self.paused = False
                self.pump()

            def stopProducing(self):
                pass

            def pump(self):
                while not self.paused and connection.state == ConnectionState.BUSY:
                    connection.write_body(b"x" * 65536)

        connection.send_request(b"POST /echo HTTP/1.1\r\nHost: b\r\nContent-Length: 1073741824"
                                b"\r\n\r\n", collector, method="POST", body="length",
                                read_timeout=TIMEOUT, send_timeout=0.5)
        reader = BodyReader()
        connection.set_body_producer(reader)
        reader.pump()
        try:
            yield wait(collector.done)
        except UpstreamError as exc:
            self.assertEqual((exc.kind, exc.nothing_received), ("timeout", True))
            self.assertIn("while sending request to upstream", exc.message)
        else:
            self.fail("no timeout")
        self.assertEqual(events[-1], "pause")

    @defer.inlineCallbacks
    def test_connection_refused_is_error_with_nothing_received(self):
        port = reactor.listenTCP(0, BackendFactory(), interface="127.0.0.1")
        number = port.getHost().port
        yield port.stopListening()
        try:
            yield wait(self.connector.connect(
                Address(f"127.0.0.1:{number}", "127.0.0.1", number), TIMEOUT))
        except UpstreamError as exc:
            self.assertEqual((exc.kind, exc.nothing_received), ("error", True))
            self.assertIn("Connection refused", exc.message)
        else:
            self.fail("connect succeeded")

    @defer.inlineCallbacks
    def test_unix_socket_upstream(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "backend.sock")
        port = reactor.listenUNIX(path, self.backend)
        self.addCleanup(port.stopListening)
        self.address = Address(f"unix:{path}", path=path)
        _, head, data, kept = yield defer.Deferred.fromCoroutine(self.request(b"/cl"))
        self.assertEqual((head.status, data, kept), (200, b"hello", True))
