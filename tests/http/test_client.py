"""The upstream connection shell: request bytes out, handler events in, timeouts on a
task.Clock, flow control through StringTransport's producer state."""
from __future__ import annotations

from twisted.internet import error as ierror
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from gateway.config.model import Address
from gateway.deadlines import Deadlines
from gateway.http._client_core import MSG_CLOSED_BODY, MSG_CLOSED_HEADER
from gateway.http.client import (
    MSG_CONNECT_TIMEOUT,
    MSG_READ_TIMEOUT_BODY,
    MSG_READ_TIMEOUT_HEADER,
    MSG_SEND_TIMEOUT,
    ConnectionState,
    UpstreamConnection,
    UpstreamConnector,
    UpstreamError,
)

ADDRESS = Address("127.0.0.1:8080", "127.0.0.1", 8080)
GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
POST = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Recorder:
    """A ResponseHandler that records what it hears."""

    def __init__(self):
        self.events = []

    def response_head(self, head):
        self.events.append(("head", head.status, head.content_length, head.keep_alive))

    def response_body(self, data):
        self.events.append(("body", data))

    def response_end(self):
        self.events.append(("end",))

    def response_error(self, error):
        self.events.append(("error", error.kind, error.message, error.response_started,
                            error.nothing_received))


class Producer:
    def __init__(self, events):
        self.events = events

    def pauseProducing(self):
        self.events.append("pause")

    def resumeProducing(self):
        self.events.append("resume")

    def stopProducing(self):
        self.events.append("stop")


def connected(clock=None):
    clock = clock or Clock()
    deadlines = Deadlines(clock)
    connection = UpstreamConnection(clock, deadlines, ADDRESS)
    transport = StringTransport()
    connection.makeConnection(transport)
    return connection, transport, clock, deadlines


def send(connection, head=GET, method="GET", body="none", read_timeout=5.0, send_timeout=5.0):
    handler = Recorder()
    connection.send_request(head, handler, method=method, body=body,
                            read_timeout=read_timeout, send_timeout=send_timeout)
    return handler


def lose(connection, exc=None):
    connection.connectionLost(Failure(exc or ierror.ConnectionDone()))


# -- writing the request -----------------------------------------------------------------


def test_request_without_body_is_written_at_once_and_response_makes_it_reusable():
    connection, transport, clock, _ = connected()
    handler = send(connection)
    assert transport.value() == GET
    assert connection.requests == 1
    connection.dataReceived(OK)
    assert handler.events == [("head", 200, 2, True), ("body", b"ok"), ("end",)]
    assert connection.reusable
    assert connection.state == ConnectionState.READY


def test_head_waits_for_the_first_body_piece_and_leaves_with_it_in_one_write():
    connection, transport, _, _ = connected()
    writes = []
    transport.write = writes.append
    transport.writeSequence = lambda seq: writes.append(b"".join(seq))
    head = b"PUT / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"
    send(connection, head, method="PUT", body="length")
    assert writes == []
    connection.write_body(b"hello")
    connection.end_body()
    assert writes == [head + b"hello"]


def test_chunked_body_is_chunk_encoded_and_ended_with_the_last_chunk():
    connection, transport, _, _ = connected()
    send(connection, POST, method="POST", body="chunked")
    connection.write_body(b"hello")
    connection.write_body(b"")
    connection.write_body(b"x" * 26)
    connection.end_body()
    assert transport.value() == POST + b"5\r\nhello\r\n1a\r\n" + b"x" * 26 + b"\r\n0\r\n\r\n"


def test_empty_length_body_writes_the_head_at_end_body():
    connection, transport, _, _ = connected()
    head = b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
    send(connection, head, method="POST", body="length")
    assert transport.value() == b""
    connection.end_body()
    assert transport.value() == head


def test_head_response_on_the_connection_then_a_get():
    connection, transport, _, _ = connected()
    handler = send(connection, b"HEAD / HTTP/1.1\r\n\r\n", method="HEAD")
    connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
    assert handler.events == [("head", 200, 0, True), ("end",)]
    assert connection.reusable
    handler = send(connection)
    connection.dataReceived(OK)
    assert handler.events == [("head", 200, 2, True), ("body", b"ok"), ("end",)]
    assert connection.requests == 2


# -- response framing on the connection ---------------------------------------------------


def test_extra_bytes_after_content_length_end_the_response_and_forbid_reuse():
    connection, _, _, _ = connected()
    handler = send(connection)
    connection.dataReceived(OK + b"garbage")
    assert handler.events == [("head", 200, 2, True), ("body", b"ok"), ("end",)]
    assert not connection.reusable


def test_extra_bytes_arriving_later_forbid_reuse():
    connection, _, _, _ = connected()
    send(connection)
    connection.dataReceived(OK)
    connection.dataReceived(b"\r\nlate")
    assert not connection.reusable


def test_reusable_follows_the_connection_from_request_to_close():
    """``reusable`` is an attribute kept current: false while busy, while the request
    still sits in a full write buffer and once closed; true again when that buffer drains."""
    connection, _, _, _ = connected()
    assert not connection.reusable
    send(connection)
    assert not connection.reusable
    connection.dataReceived(OK)
    assert connection.reusable
    connection.pauseProducing()
    assert not connection.reusable
    connection.resumeProducing()
    assert connection.reusable
    send(connection)
    assert not connection.reusable
    connection.dataReceived(OK)
    assert connection.reusable
    connection.close()
    assert not connection.reusable


def test_close_delimited_response_ends_at_eof_and_is_not_reusable():
    connection, _, _, _ = connected()
    handler = send(connection)
    connection.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nabc")
    lose(connection)
    assert handler.events == [("head", 200, None, False), ("body", b"abc"), ("end",)]
    assert not connection.reusable


def test_eof_before_content_length_is_an_error_after_the_head():
    connection, _, _, _ = connected()
    handler = send(connection)
    connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    lose(connection)
    assert handler.events == [("head", 200, 10, True), ("body", b"abc"),
                              ("error", "error", MSG_CLOSED_BODY, True, False)]


def test_upstream_closing_before_any_byte_is_nothing_received():
    connection, _, _, deadlines = connected()
    handler = send(connection)
    lose(connection)
    assert handler.events == [("error", "error", MSG_CLOSED_HEADER, False, True)]
    assert connection.state == ConnectionState.CLOSED
    assert len(deadlines) == 0


def test_connection_reset_is_an_error_naming_the_reason():
    connection, _, _, _ = connected()
    handler = send(connection)
    lose(connection, ierror.ConnectionLost("Connection reset by peer"))
    [(name, kind, message, started, nothing)] = handler.events
    assert (name, kind, started, nothing) == ("error", "error", False, True)
    assert message.startswith("upstream connection lost (")
    assert message.endswith("while reading response header from upstream")


def test_invalid_header_closes_the_connection():
    connection, transport, _, _ = connected()
    handler = send(connection)
    connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    assert handler.events == [("error", "invalid_header",
                               'upstream sent duplicate header line: "Content-Length"',
                               False, False)]
    assert transport.disconnecting
    assert connection.state == ConnectionState.CLOSED


def test_early_response_before_the_body_is_sent_is_delivered_but_not_reusable():
    connection, transport, _, _ = connected()
    handler = send(connection, POST, method="POST", body="chunked")
    connection.write_body(b"part")
    connection.dataReceived(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    assert handler.events == [("head", 413, 0, True), ("end",)]
    assert not connection.reusable
    sent = transport.value()
    connection.write_body(b"more")
    connection.end_body()
    assert transport.value() == sent


def test_closing_after_an_early_response_with_a_full_buffer_aborts():
    """The upstream stopped reading the body: waiting for the buffer to drain before
    closing would keep the connection forever."""
    connection, transport, _, _ = connected()
    send(connection, POST, method="POST", body="chunked")
    connection.write_body(b"part")
    connection.pauseProducing()
    connection.dataReceived(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    connection.close()
    assert transport.disconnected  # StringTransport's mark of abortConnection


def test_closing_an_idle_connection_unregisters_the_producer_then_closes_gracefully():
    connection, transport, _, _ = connected()
    send(connection)
    connection.dataReceived(OK)
    connection.close()
    assert transport.producer is None
    assert transport.disconnecting and not transport.disconnected


def test_close_detaches_the_handler():
    connection, transport, _, _ = connected()
    handler = send(connection)
    connection.close()
    assert transport.disconnecting
    connection.dataReceived(OK)
    lose(connection)
    assert handler.events == []


def test_send_on_a_closed_connection_reports_nothing_received():
    connection, _, _, _ = connected()
    lose(connection)
    handler = send(connection)
    assert handler.events[0][0:2] == ("error", "error")
    assert handler.events[0][4] is True


# -- timeouts ---------------------------------------------------------------------------


def test_read_timeout_before_the_head_is_timeout_with_nothing_received():
    connection, transport, clock, _ = connected()
    handler = send(connection, read_timeout=3.0)
    clock.advance(2.9)
    assert handler.events == []
    clock.advance(0.2)
    assert handler.events == [("error", "timeout", MSG_READ_TIMEOUT_HEADER, False, True)]
    assert transport.disconnecting


def test_read_timeout_restarts_on_every_read():
    connection, _, clock, _ = connected()
    handler = send(connection, read_timeout=3.0)
    connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    for _ in range(5):
        clock.advance(2.0)
        connection.dataReceived(b"x")
    assert handler.events[-1] == ("body", b"x")
    clock.advance(3.2)
    assert handler.events[-1] == ("error", "timeout", MSG_READ_TIMEOUT_BODY, True, False)


def test_read_timeout_is_armed_only_once_the_body_is_sent():
    connection, _, clock, _ = connected()
    handler = send(connection, POST, method="POST", body="chunked", read_timeout=1.0)
    clock.advance(5.0)
    assert handler.events == []
    connection.end_body()
    clock.advance(1.2)
    assert handler.events == [("error", "timeout", MSG_READ_TIMEOUT_HEADER, False, True)]


def test_no_read_timeout_while_the_response_is_paused():
    connection, transport, clock, _ = connected()
    handler = send(connection, read_timeout=1.0)
    connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    connection.producer.pauseProducing()
    assert transport.producerState == "paused"
    clock.advance(10.0)
    assert handler.events[-1] == ("body", b"ab")
    connection.producer.resumeProducing()
    assert transport.producerState == "producing"
    clock.advance(1.2)
    assert handler.events[-1][0:2] == ("error", "timeout")


def test_send_timeout_while_the_transport_buffer_stays_full():
    connection, transport, clock, _ = connected()
    body_events = []
    handler = send(connection, POST, method="POST", body="chunked", send_timeout=2.0)
    connection.set_body_producer(Producer(body_events))
    connection.write_body(b"x" * 100)
    connection.pauseProducing()      # what the transport does when its buffer is full
    assert body_events == ["pause"]
    clock.advance(2.2)
    assert handler.events == [("error", "timeout", MSG_SEND_TIMEOUT, False, True)]


def test_send_timeout_is_cleared_when_the_transport_drains():
    connection, transport, clock, _ = connected()
    body_events = []
    handler = send(connection, POST, method="POST", body="chunked", send_timeout=2.0,
                   read_timeout=10.0)
    connection.set_body_producer(Producer(body_events))
    connection.pauseProducing()
    clock.advance(1.5)
    connection.resumeProducing()
    clock.advance(5.0)
    assert handler.events == []
    assert body_events == ["pause", "resume"]
    connection.end_body()
    connection.dataReceived(OK)
    assert handler.events[-1] == ("end",)


def test_send_timeout_restarts_while_the_buffer_shrinks():
    connection, transport, clock, _ = connected()
    transport.dataBuffer, transport.offset, transport._tempDataLen = b"x" * 1000, 0, 0
    handler = send(connection, POST, method="POST", body="chunked", send_timeout=2.0)
    connection.pauseProducing()
    clock.advance(1.0)
    transport.offset = 500          # the socket took 500 bytes
    clock.advance(1.2)
    assert handler.events == []
    clock.advance(2.2)
    assert handler.events == [("error", "timeout", MSG_SEND_TIMEOUT, False, True)]


def test_body_producer_set_while_blocked_is_paused_at_once():
    connection, _, _, _ = connected()
    send(connection, POST, method="POST", body="chunked")
    connection.pauseProducing()
    events = []
    connection.set_body_producer(Producer(events))
    assert events == ["pause"]


def test_stale_response_producer_cannot_touch_the_next_request():
    connection, transport, _, _ = connected()
    send(connection)
    old = connection.producer
    connection.dataReceived(OK)
    send(connection)
    old.pauseProducing()
    old.stopProducing()
    assert transport.producerState == "producing"
    assert connection.state == ConnectionState.BUSY


def test_no_timer_objects_per_request():
    """Deadlines are data swept by one LoopingCall, not a callLater per request."""
    connection, _, clock, _ = connected()
    for _ in range(3):
        send(connection)
        connection.dataReceived(OK)
    assert len(clock.getDelayedCalls()) == 1


# -- the connector ---------------------------------------------------------------------------


def test_connect_tcp_fires_with_a_ready_connection():
    reactor = MemoryReactorClock()
    connector = UpstreamConnector(reactor, Deadlines(reactor))
    results = []
    connector.connect(Address("[::1]:81", "::1", 81), 7.0).addCallback(results.append)
    host, port, factory, timeout, _ = reactor.tcpClients[0]
    assert (host, port, timeout) == ("::1", 81, 7.0)
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    assert results == [protocol]
    assert protocol.state == ConnectionState.READY
    assert not protocol.reused and protocol.requests == 0


def test_connect_unix_uses_the_path():
    reactor = MemoryReactorClock()
    UpstreamConnector(reactor, Deadlines(reactor)).connect(
        Address("unix:/run/app.sock", path="/run/app.sock"), 3.0)
    path, factory, timeout, _ = reactor.unixClients[0]
    assert (path, timeout) == ("/run/app.sock", 3.0)


def _failed_connect(exc):
    reactor = MemoryReactorClock()
    errors = []
    UpstreamConnector(reactor, Deadlines(reactor)).connect(ADDRESS, 1.0).addErrback(
        lambda f: errors.append(f.value))
    factory = reactor.tcpClients[0][2]
    factory.clientConnectionFailed(None, Failure(exc))
    return errors[0]


def test_connect_refused_is_error_with_nothing_received():
    error = _failed_connect(ierror.ConnectionRefusedError())
    assert (error.kind, error.nothing_received, error.response_started) == ("error", True, False)
    assert error.message == ("connect() failed (111: Connection refused) while connecting "
                             "to upstream")


def test_connect_timeout_is_timeout():
    error = _failed_connect(ierror.TimeoutError())
    assert isinstance(error, UpstreamError)
    assert (error.kind, error.message, error.nothing_received) == (
        "timeout", MSG_CONNECT_TIMEOUT, True)


def test_cancelled_connect_stops_connecting_and_closes_a_late_connection():
    reactor = MemoryReactorClock()
    d = UpstreamConnector(reactor, Deadlines(reactor)).connect(ADDRESS, 1.0)
    d.addErrback(lambda f: None)
    d.cancel()
    factory = reactor.tcpClients[0][2]
    assert reactor.connectors[0].stoppedConnecting
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert transport.disconnecting
