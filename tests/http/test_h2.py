"""Transcripts of the HTTP/2 server protocol, driven by an ``h2`` client connection.

Every test runs ``H2Protocol`` on a ``StringTransport`` with a ``task.Clock`` and the
shared ``Deadlines`` sweep; the client side is ``h2``'s own ``H2Connection``, so what
the tests assert is what a real client decodes. No reactor, no sockets.
"""
from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated, DataReceived, InformationalResponseReceived, ResponseReceived,
    StreamEnded, StreamReset, TrailersReceived,
)
from h2.settings import SettingCodes
from hpack import Decoder
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import INegotiated
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from gateway.config.model import ServerSettings
from gateway.deadlines import Deadlines
from gateway.http import h2 as h2_module
from gateway.http._h2core import FloodGuard
from gateway.http.errors import error_page
from gateway.http.h1 import HTTP11Factory, HTTP11Protocol
from gateway.http.h2 import H2Factory, H2Protocol
from gateway.http.negotiate import NegotiatingFactory

START = 1700000000.0
DATE = b"Tue, 14 Nov 2023 22:13:20 GMT"


class Selector:
    """Routing fake: every host gets ``default``; records the hosts asked for."""

    def __init__(self, **settings):
        self.default = ServerSettings(index=0, listen=("tcp:80",), locations=(), **settings)
        self.hosts: list[str] = []

    def select(self, host: str) -> ServerSettings:
        self.hosts.append(host)
        return self.default


class Receiver:
    """A BodyReceiver recording what it got."""

    def __init__(self, events: list):
        self.events = events

    def body_data(self, data):
        self.events.append(("data", data))

    def body_end(self):
        self.events.append(("end",))

    def body_error(self, reason):
        self.events.append(("error", reason))


class Producer:
    """A push producer recording pause/resume calls."""

    def __init__(self, events: list):
        self.events = events

    def pauseProducing(self):
        self.events.append("pause")

    def resumeProducing(self):
        self.events.append("resume")

    def stopProducing(self):
        self.events.append("stop")


class CountingTransport(StringTransport):
    """Counts writes and keeps everything written, for :func:`server_frames`."""

    def __init__(self):
        super().__init__(peerAddress=IPv4Address("TCP", "10.0.0.7", 50123),
                         hostAddress=IPv4Address("TCP", "10.0.0.1", 80))
        self.writes = 0
        self.everything = bytearray()

    def write(self, data):
        self.writes += 1
        self.everything += data
        super().write(data)


def server_frames(transport: CountingTransport) -> list:
    """Every frame the server wrote, decoded with a fresh HPACK decoder, simplified:
    ("HEADERS", stream, headers, end_stream), ("DATA", stream, data, end_stream),
    ("RST_STREAM", stream, code), ("GOAWAY", last_stream_id, code), or the frame type
    name for the rest. (``h2`` as a client processes nothing after a GOAWAY, so frames
    that follow one are read here.)"""
    decoder = Decoder()
    decoder.max_header_list_size = 1 << 20
    data = bytes(transport.everything)
    out = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        data = data[9 + length:]
        end = "END_STREAM" in frame.flags
        if isinstance(frame, HeadersFrame):
            out.append(("HEADERS", frame.stream_id, decoder.decode(frame.data, raw=True),
                        end))
        elif isinstance(frame, DataFrame):
            out.append(("DATA", frame.stream_id, frame.data, end))
        elif isinstance(frame, RstStreamFrame):
            out.append(("RST_STREAM", frame.stream_id, frame.error_code))
        elif isinstance(frame, GoAwayFrame):
            out.append(("GOAWAY", frame.last_stream_id, frame.error_code))
        else:
            out.append(type(frame).__name__)
    return out


def ok(body: bytes = b"hello", headers=()):
    def handler(exchange):
        exchange.send_head(200, [(b"Content-Type", b"text/plain"),
                                 (b"Content-Length", b"%d" % len(body)), *headers])
        exchange.send_body(body)
        exchange.finish()
    return handler


class Client:
    """An h2 client connection object wired to one server ``H2Protocol``.

    ``send()`` hands what the client wrote to the server; ``receive()`` gives the
    server's answer to the client and returns the client's events.
    """

    def __init__(self, handler=None, settings=None, **server_settings):
        self.clock = Clock()
        self.clock.advance(START)
        self.deadlines = Deadlines(self.clock)
        self.selector = Selector(**server_settings)
        self.exchanges = []
        self.done = []
        self.handler = handler
        self.factory = H2Factory(self.clock, self.deadlines, self.selector, self._handle,
                                 on_exchange_done=self.done.append)
        self.proto = self.factory.buildProtocol(None)
        self.transport = CountingTransport()
        self.proto.makeConnection(self.transport)
        self.h2 = H2Connection(H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False, validate_inbound_headers=False))
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings(settings)
        self.send()
        self.receive()

    def _handle(self, exchange):
        self.exchanges.append(exchange)
        if self.handler is not None:
            self.handler(exchange)

    def send(self, data: bytes = None) -> None:
        if data is None:
            data = self.h2.data_to_send()
        self.proto.dataReceived(data)

    def receive(self) -> list:
        data = self.transport.value()
        self.transport.clear()
        events = self.h2.receive_data(data) if data else []
        return events

    def exchange(self) -> list:
        """Send what the client has, and return the client's events of the answer."""
        self.send()
        return self.receive()

    def request(self, path: str = "/", method: str = "GET", headers=(), body=None,
                end: bool = True, authority: bytes = b"example.com") -> int:
        stream_id = self.h2.get_next_available_stream_id()
        block = [(b":method", method.encode()), (b":scheme", b"http"),
                 (b":path", path.encode()), (b":authority", authority), *headers]
        self.h2.send_headers(stream_id, block, end_stream=end and body is None)
        if body is not None:
            self.h2.send_data(stream_id, body, end_stream=end)
        return stream_id

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def advance(self, seconds: float, step: float = 0.1) -> None:
        steps = int(round(seconds / step))
        for _ in range(steps):
            self.clock.advance(step)


def responses(events) -> dict:
    """Per stream: ("headers", list) / ("data", bytes) / ("trailers", list) / "end" /
    ("reset", code)."""
    out: dict = {}
    for event in events:
        stream = getattr(event, "stream_id", None)
        if isinstance(event, ResponseReceived):
            out.setdefault(stream, []).append(("headers", event.headers))
        elif isinstance(event, InformationalResponseReceived):
            out.setdefault(stream, []).append(("informational", event.headers))
        elif isinstance(event, DataReceived):
            out.setdefault(stream, []).append(("data", event.data))
        elif isinstance(event, TrailersReceived):
            out.setdefault(stream, []).append(("trailers", event.headers))
        elif isinstance(event, StreamEnded):
            out.setdefault(stream, []).append("end")
        elif isinstance(event, StreamReset):
            out.setdefault(stream, []).append(("reset", event.error_code))
    return out


def goaway(events):
    """(error code, last stream id) of the GOAWAY among ``events``, or None."""
    for event in events:
        if isinstance(event, ConnectionTerminated):
            return event.error_code, event.last_stream_id
    return None


def head(status: int, *headers) -> tuple:
    return ("headers", [(b":status", b"%d" % status), (b"server", b"gateway"),
                        (b"date", DATE), *headers])


# -- requests become exchanges ---------------------------------------------------------


def test_tcp_nodelay_is_set_on_the_connection_as_nginx_does():
    # HEADERS, DATA and trailers leave as separate writes; with Nagle each piece after
    # the first would wait for the client's delayed ACK (40 ms per gRPC call)
    class TCPTransport(CountingTransport):
        nodelay = False

        def setTcpNoDelay(self, enabled):
            self.nodelay = enabled

    factory = H2Factory(Clock(), Deadlines(Clock()), Selector(), lambda exchange: None)
    transport = TCPTransport()
    factory.buildProtocol(None).makeConnection(transport)
    assert transport.nodelay is True

    class UnixTransport(CountingTransport):
        def setTcpNoDelay(self, enabled):
            raise OSError(95, "Operation not supported")

    factory.buildProtocol(None).makeConnection(UnixTransport())   # no error


def test_get_becomes_an_exchange_and_gets_its_response():
    """A GET is an exchange like HTTP/1.1's, with version "2.0", Host from :authority
    and the target normalised; the response arrives as HEADERS, DATA with END_STREAM."""
    c = Client(ok())
    stream = c.request("/a/../b%41?x=1", headers=[(b"accept", b"*/*")])
    events = c.exchange()
    assert responses(events) == {stream: [
        head(200, (b"content-type", b"text/plain"), (b"content-length", b"5")),
        ("data", b"hello"), "end"]}
    request = c.exchanges[0].request
    assert (request.method, request.target, request.path, request.args, request.version,
            request.host, request.headers) == (
        "GET", "/a/../b%41?x=1", "/bA", "x=1", "2.0", "example.com",
        [(b"host", b"example.com"), (b"accept", b"*/*")])
    assert not request.has_body
    assert c.done == c.exchanges
    assert (c.done[0].status, c.done[0].body_bytes_sent) == (200, 5)


def test_answers_of_one_read_leave_in_one_write():
    """Two requests in one read, both answered at once: one transport write (with the
    SETTINGS ACK and window updates)."""
    c = Client(ok())
    c.request("/1")
    c.request("/2")
    before = c.transport.writes
    events = c.exchange()
    assert c.transport.writes == before + 1
    assert sorted(responses(events)) == [1, 3]


def test_host_header_must_name_the_authority_and_both_are_validated():
    c = Client(ok())
    c.request("/", headers=[(b"host", b"Example.COM.")])
    c.exchange()
    assert c.exchanges[0].request.host == "example.com"
    assert c.exchanges[0].request.headers == [(b"host", b"Example.COM.")]

    c = Client(ok())
    stream = c.request("/", headers=[(b"host", b"other.example")])
    assert responses(c.exchange()) == {stream: [("reset", ErrorCodes.PROTOCOL_ERROR)]}
    assert c.exchanges == []

    c = Client(ok())
    stream = c.request("/", authority=b"bad/host")
    events = c.exchange()
    page = error_page(400)
    assert responses(events)[stream] == [
        head(400, (b"content-type", b"text/html"), (b"content-length", b"%d" % len(page))),
        ("data", page), "end"]
    assert c.exchanges == []
    assert c.done[0].error_reason == "client sent invalid host header"


def test_head_and_204_responses_are_one_headers_frame_with_end_stream():
    c = Client(ok())
    stream = c.request("/", method="HEAD")
    events = c.exchange()
    assert responses(events)[stream] == [
        head(200, (b"content-type", b"text/plain"), (b"content-length", b"5")), "end"]

    def no_content(exchange):
        exchange.send_head(204, [])
        exchange.send_body(b"ignored")
        exchange.finish()
    c = Client(no_content)
    stream = c.request("/")
    assert responses(c.exchange())[stream] == [head(204), "end"]


def test_response_headers_lower_cased_hop_by_hop_dropped_own_server_and_date_kept():
    def handler(exchange):
        exchange.send_head(200, [(b"Connection", b"close"), (b"Keep-Alive", b"5"),
                                 (b"Transfer-Encoding", b"chunked"), (b"Upgrade", b"x"),
                                 (b"Server", b"backend"), (b"Date", b"yesterday"),
                                 (b"X-A", b"1")])
        exchange.finish()
    c = Client(handler)
    stream = c.request("/")
    assert responses(c.exchange())[stream] == [
        ("headers", [(b":status", b"200"), (b"server", b"backend"),
                     (b"date", b"yesterday"), (b"x-a", b"1")]), "end"]


def test_response_without_length_streams_and_ends_with_empty_data():
    held = []
    c = Client(held.append)
    stream = c.request("/")
    c.exchange()
    exchange = held[0]
    exchange.send_head(200, [])
    exchange.send_body(b"one")
    assert responses(c.receive())[stream] == [head(200), ("data", b"one")]
    exchange.send_body(b"two")
    exchange.finish()
    assert responses(c.receive())[stream] == [("data", b"two"), ("data", b""), "end"]


def test_streams_run_concurrently_and_answer_in_any_order():
    held = []
    c = Client(held.append)
    first = c.request("/first")
    second = c.request("/second")
    c.exchange()
    assert [e.request.target for e in held] == ["/first", "/second"]
    ok(b"2")(held[1])
    assert responses(c.receive()) == {second: [
        head(200, (b"content-type", b"text/plain"), (b"content-length", b"1")),
        ("data", b"2"), "end"]}
    ok(b"1")(held[0])
    assert list(responses(c.receive())) == [first]


def test_handler_exception_gets_500():
    def broken(exchange):
        raise RuntimeError("boom")
    c = Client(broken)
    stream = c.request("/")
    events = responses(c.exchange())[stream]
    assert events[0][1][0] == (b":status", b"500")
    assert not c.closed


def test_error_response_as_nginx_page():
    c = Client(lambda exchange: exchange.send_error(404))
    stream = c.request("/")
    page = error_page(404)
    assert responses(c.exchange())[stream] == [
        head(404, (b"content-type", b"text/html"), (b"content-length", b"%d" % len(page))),
        ("data", page), "end"]


def test_abort_resets_the_stream_with_internal_error():
    def handler(exchange):
        exchange.send_head(200, [])
        exchange.send_body(b"part")
        exchange.abort()
    c = Client(handler)
    stream = c.request("/")
    assert responses(c.exchange())[stream] == [
        head(200), ("data", b"part"), ("reset", ErrorCodes.INTERNAL_ERROR)]
    assert not c.closed


# -- request bodies ----------------------------------------------------------------------


def test_request_body_and_trailers_reach_the_receiver():
    body = []

    def handler(exchange):
        exchange.read_body(Receiver(body))
    c = Client(handler)
    stream = c.request("/up", method="POST", body=b"abc", end=False)
    c.exchange()
    exchange = c.exchanges[0]
    assert exchange.request.chunked and exchange.request.has_body
    assert body == [("data", b"abc")]
    assert exchange.request_trailers == []
    c.h2.send_headers(stream, [(b"x-checksum", b"900150983cd2")], end_stream=True)
    c.exchange()
    assert body == [("data", b"abc"), ("end",)]
    assert exchange.request_trailers == [(b"x-checksum", b"900150983cd2")]


def test_content_length_request_body_is_not_chunked():
    body = []

    def handler(exchange):
        exchange.read_body(Receiver(body))
    c = Client(handler)
    c.request("/up", method="PUT", headers=[(b"content-length", b"3")], body=b"abc")
    c.exchange()
    request = c.exchanges[0].request
    assert (request.content_length, request.chunked) == (3, False)
    assert body == [("data", b"abc"), ("end",)]
    assert c.exchanges[0].request_length > 3


def test_body_is_acknowledged_only_as_the_handler_consumes_it():
    """While the handler pauses the body, the stream window is not handed back: the
    client cannot send more than one window (64 KiB) ahead of the handler."""
    body = []

    def handler(exchange):
        exchange.read_body(Receiver(body))
        exchange.pause_body()
    c = Client(handler)
    stream = c.request("/up", method="POST", end=False)
    c.exchange()
    c.h2.send_data(stream, b"x" * 16384)
    c.h2.send_data(stream, b"y" * 16384)
    c.exchange()
    assert body == []
    assert c.h2.local_flow_control_window(stream) == 65535 - 32768
    c.exchanges[0].resume_body()
    c.receive()
    assert [len(piece[1]) for piece in body] == [16384, 16384]
    assert c.h2.local_flow_control_window(stream) == 65535


def test_unread_body_is_discarded_and_the_stream_reset_after_the_response():
    c = Client(ok())
    stream = c.request("/up", method="POST", body=b"abc", end=False)
    events = responses(c.exchange())[stream]
    assert events[-3:] == [("data", b"hello"), "end", ("reset", ErrorCodes.NO_ERROR)]
    assert c.proto._streams == {}
    # DATA in flight when the reset left costs the client nothing but that stream
    c.send(DataFrame(stream, data=b"more").serialize())
    assert not c.closed
    again = c.request("/again")
    assert responses(c.exchange())[again][-1] == "end"


def test_expect_100_continue_sends_an_informational_response():
    def handler(exchange):
        exchange.read_body(Receiver([]))
    c = Client(handler)
    stream = c.request("/up", method="POST", headers=[(b"expect", b"100-continue")],
                       end=False)
    assert responses(c.exchange())[stream] == [("informational", [(b":status", b"100")])]


def test_body_above_client_max_body_size_gets_413():
    c = Client(ok(), client_max_body_size=10)
    stream = c.request("/up", method="POST", headers=[(b"content-length", b"11")],
                       end=False)
    events = responses(c.exchange())[stream]
    assert events[0][1][0] == (b":status", b"413")
    assert c.exchanges == []

    body = []

    def reader(exchange):
        exchange.read_body(Receiver(body))
    c = Client(reader, client_max_body_size=10)
    stream = c.request("/up", method="POST", body=b"123456", end=False)
    c.exchange()
    c.h2.send_data(stream, b"789012")
    events = responses(c.exchange())[stream]
    assert body == [("data", b"123456"), ("error", "client intended to send too large body")]
    assert events[0][1][0] == (b":status", b"413")
    assert events[-1] == ("reset", ErrorCodes.NO_ERROR)


def test_client_reset_tells_the_handler_and_logs_499():
    held, body, closed = [], [], []

    def handler(exchange):
        held.append(exchange)
        exchange.read_body(Receiver(body))
        exchange.on_close(lambda: closed.append(exchange.stream_id))
    c = Client(handler)
    stream = c.request("/up", method="POST", end=False)
    c.exchange()
    c.h2.reset_stream(stream, ErrorCodes.CANCEL)
    c.exchange()
    assert closed == [stream]
    assert body == [("error", "client reset stream")]
    assert [e.status for e in c.done] == [499]
    held[0].send_head(200, [])      # a late answer goes nowhere
    held[0].finish()
    assert c.receive() == []


# -- response flow control ----------------------------------------------------------------


def test_small_client_window_pauses_the_producer_until_drained():
    """A client with a 1000-byte window gets 1000 bytes; the queue above 64 KiB pauses
    the producer; window updates drain it and resume the producer."""
    held, calls = [], []
    c = Client(held.append, settings={SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    stream = c.request("/big")
    c.exchange()
    exchange = held[0]
    exchange.register_producer(Producer(calls))
    exchange.send_head(200, [])
    exchange.send_body(b"a" * 40000)
    assert calls == []
    exchange.send_body(b"b" * 40000)
    assert calls == ["pause"]
    got = b"".join(e.data for e in c.receive() if isinstance(e, DataReceived))
    assert got == b"a" * 1000
    assert exchange._out_bytes == 79000
    received = len(got)
    while received < 80000:
        c.h2.increment_flow_control_window(30000, stream_id=stream)
        c.h2.increment_flow_control_window(30000)
        events = c.exchange()
        received += sum(len(e.data) for e in events if isinstance(e, DataReceived))
    assert received == 80000
    assert calls == ["pause", "resume"]
    exchange.finish()
    assert responses(c.receive())[stream] == [("data", b""), "end"]


def test_content_length_response_ends_with_its_last_data_frame():
    held = []
    c = Client(held.append)
    stream = c.request("/")
    c.exchange()
    exchange = held[0]
    exchange.send_head(200, [(b"Content-Length", b"6")])
    exchange.send_body(b"abc")
    exchange.send_body(b"def")
    events = responses(c.receive())[stream]
    assert events[1:] == [("data", b"abc"), ("data", b"def"), "end"]
    exchange.finish()
    assert c.receive() == []


def test_transport_pause_holds_frames_and_pauses_the_producer():
    held, calls = [], []
    c = Client(held.append)
    stream = c.request("/")
    c.exchange()
    exchange = held[0]
    exchange.register_producer(Producer(calls))
    exchange.send_head(200, [])
    c.proto.pauseProducing()
    exchange.send_body(b"x" * 70000)
    assert calls == ["pause"]
    events = c.receive()
    assert sum(len(e.data) for e in events if isinstance(e, DataReceived)) == 0
    c.proto.resumeProducing()
    events = c.receive()
    assert sum(len(e.data) for e in events if isinstance(e, DataReceived)) == 65535
    assert calls == ["pause"]
    c.h2.increment_flow_control_window(10000, stream_id=stream)
    c.h2.increment_flow_control_window(10000)
    events = c.exchange()
    assert sum(len(e.data) for e in events if isinstance(e, DataReceived)) == 70000 - 65535
    assert calls == ["pause", "resume"]


def test_response_trailers_end_the_stream():
    def handler(exchange):
        exchange.send_head(200, [(b"Content-Type", b"application/grpc")])
        exchange.send_body(b"\0\0\0\0\0")
        exchange.send_trailers([(b"Grpc-Status", b"0"), (b"Connection", b"x")])
        exchange.finish()
    c = Client(handler)
    stream = c.request("/svc/Method", method="POST", body=b"", headers=[(b"te", b"trailers")])
    assert responses(c.exchange())[stream] == [
        head(200, (b"content-type", b"application/grpc")), ("data", b"\0\0\0\0\0"),
        ("trailers", [(b"grpc-status", b"0")]), "end"]


# -- connection life ----------------------------------------------------------------------


def test_idle_connection_gets_goaway_after_keepalive_timeout():
    c = Client(ok(), keepalive_timeout=5.0, client_header_timeout=2.0)
    c.request("/")
    c.exchange()
    c.advance(4.9)
    assert not c.closed
    c.advance(0.3)
    assert c.closed
    assert goaway(c.receive()) == (ErrorCodes.NO_ERROR, 1)


def test_connection_without_requests_closes_after_client_header_timeout():
    c = Client(ok(), keepalive_timeout=50.0, client_header_timeout=2.0)
    c.advance(1.9)
    assert not c.closed
    c.advance(0.3)
    assert c.closed
    assert goaway(c.receive()) == (ErrorCodes.NO_ERROR, 0)


def test_body_timeout_answers_408_and_resets_the_stream():
    body = []

    def handler(exchange):
        exchange.read_body(Receiver(body))
    c = Client(handler, client_body_timeout=3.0)
    stream = c.request("/up", method="POST", end=False)
    c.exchange()
    c.advance(2.9)
    assert c.receive() == []
    c.advance(0.3)
    events = responses(c.receive())[stream]
    assert events[0][1][0] == (b":status", b"408")
    assert events[-1] == ("reset", ErrorCodes.NO_ERROR)
    assert body == [("error", "client timed out")]
    assert not c.closed


def test_stream_stuck_on_a_closed_window_is_reset_after_send_timeout():
    held = []
    c = Client(held.append, settings={SettingCodes.INITIAL_WINDOW_SIZE: 10})
    stream = c.request("/")
    c.exchange()
    held[0].send_head(200, [])
    held[0].send_body(b"x" * 100)
    c.receive()
    c.advance(h2_module.SEND_TIMEOUT - 1)
    assert c.receive() == []
    c.advance(1.2)
    assert responses(c.receive())[stream] == [("reset", ErrorCodes.PROTOCOL_ERROR)]
    assert c.proto._streams == {}
    assert not c.closed


def test_send_timeout_runs_between_two_sends_not_for_the_whole_response():
    """nginx's send_timeout: a stream whose client keeps opening its window a little
    (each time within the timeout) is slow, not stuck, and is never reset."""
    held = []
    c = Client(held.append, settings={SettingCodes.INITIAL_WINDOW_SIZE: 10})
    stream = c.request("/")
    c.exchange()
    held[0].send_head(200, [])
    held[0].send_body(b"x" * 100)
    received = sum(len(e.data) for e in c.receive() if isinstance(e, DataReceived))
    for _ in range(5):
        c.advance(h2_module.SEND_TIMEOUT * 0.75)
        c.h2.increment_flow_control_window(10, stream_id=stream)
        c.h2.increment_flow_control_window(10)
        events = c.exchange()
        assert not any(isinstance(e, StreamReset) for e in events)
        received += sum(len(e.data) for e in events if isinstance(e, DataReceived))
    assert received == 60
    assert stream in c.proto._streams
    c.advance(h2_module.SEND_TIMEOUT + 0.2)
    assert responses(c.receive())[stream] == [("reset", ErrorCodes.PROTOCOL_ERROR)]


def test_keepalive_requests_ends_with_goaway_after_the_last_stream():
    """As nginx: the request that reaches keepalive_requests gets GOAWAY naming it at
    once, is still answered, and the connection closes after it."""
    c = Client(ok(), keepalive_requests=2)
    c.request("/1")
    c.exchange()
    c.request("/2")
    c.send()
    frames = server_frames(c.transport)
    assert ("GOAWAY", 3, ErrorCodes.NO_ERROR) in frames
    assert frames[frames.index(("GOAWAY", 3, ErrorCodes.NO_ERROR)) + 2] == (
        "DATA", 3, b"hello", True)
    assert c.closed


def test_graceful_shutdown_finishes_running_streams_and_refuses_new_ones():
    held = []
    c = Client(held.append)
    first = c.request("/running")
    c.exchange()
    drained = c.factory.graceful_shutdown(30.0)
    fired = []
    drained.addCallback(fired.append)
    assert server_frames(c.transport)[-1] == ("GOAWAY", first, ErrorCodes.NO_ERROR)
    late = c.request("/late")
    c.send()
    assert server_frames(c.transport)[-1] == ("RST_STREAM", late, ErrorCodes.REFUSED_STREAM)
    assert len(held) == 1
    assert not c.closed
    ok(b"done")(held[0])
    assert server_frames(c.transport)[-1] == ("DATA", first, b"done", True)
    assert c.closed
    c.proto.connectionLost(None)
    assert fired == [None]


def test_every_graceful_shutdown_caller_learns_when_the_connections_closed():
    # a reload's retirement and a stop may both wait on the same factory
    held = []
    c = Client(held.append)
    c.request("/running")
    c.exchange()
    fired = []
    c.factory.graceful_shutdown(30.0).addCallback(lambda _: fired.append("first"))
    c.factory.graceful_shutdown(30.0).addCallback(lambda _: fired.append("second"))
    ok(b"done")(held[0])
    c.proto.connectionLost(None)
    assert fired == ["first", "second"]
    # both timeout timers were cancelled
    assert [call for call in c.clock.getDelayedCalls()
            if call.func == c.factory._force_close] == []


def test_graceful_shutdown_closes_what_is_left_after_the_timeout():
    c = Client(lambda exchange: None)
    c.request("/")
    c.exchange()
    aborted = []
    c.transport.abortConnection = lambda: aborted.append(True)
    c.factory.graceful_shutdown(5.0)
    c.clock.advance(5.0)
    assert aborted == [True]


def test_connection_lost_ends_running_exchanges_with_499():
    closed = []

    def handler(exchange):
        exchange.on_close(lambda: closed.append(exchange.stream_id))
    c = Client(handler)
    c.request("/1")
    c.request("/2")
    c.exchange()
    c.proto.connectionLost(None)
    assert closed == [1, 3]
    assert [e.status for e in c.done] == [499, 499]
    assert len(c.deadlines) == 0


# -- limits and floods ----------------------------------------------------------------


def test_streams_beyond_the_concurrency_limit_are_refused():
    c = Client(lambda exchange: None)
    c.h2.remote_settings.max_concurrent_streams = 1000   # a client ignoring the limit
    c.h2.remote_settings.acknowledge()
    for _ in range(129):
        c.request("/")
    events = responses(c.exchange())
    assert len(c.exchanges) == 128
    assert events == {257: [("reset", ErrorCodes.REFUSED_STREAM)]}


def test_rapid_reset_gets_goaway_enhance_your_calm():
    c = Client(lambda exchange: None)
    c.proto.guard = FloodGuard(max_resets=20)
    for _ in range(21):
        stream = c.request("/")
        c.h2.reset_stream(stream, ErrorCodes.CANCEL)
    events = c.exchange()
    assert goaway(events) == (ErrorCodes.ENHANCE_YOUR_CALM, 41)
    assert c.closed


def test_resets_spread_over_time_windows_are_tolerated():
    c = Client(lambda exchange: None)
    c.proto.guard = FloodGuard(window=10.0, max_resets=20)
    for _ in range(3):
        for _ in range(15):
            stream = c.request("/")
            c.h2.reset_stream(stream, ErrorCodes.CANCEL)
        c.exchange()
        c.clock.advance(10.0)
    assert not c.closed


def test_ping_flood_gets_goaway_enhance_your_calm():
    c = Client(ok())
    c.proto.guard = FloodGuard(max_control=50)
    for i in range(51):
        c.h2.ping(b"%08d" % i)
    assert goaway(c.exchange())[0] == ErrorCodes.ENHANCE_YOUR_CALM
    assert c.closed


def test_pings_from_a_client_that_reads_nothing_get_goaway():
    c = Client(ok())
    c.proto.guard = FloodGuard(max_unread_control=10)
    c.proto.pauseProducing()
    for i in range(10):
        c.h2.ping(b"%08d" % i)
    c.send()
    assert not c.closed
    c.h2.ping(b"one more")
    c.send()
    assert c.closed


def test_settings_flood_gets_goaway_enhance_your_calm():
    c = Client(ok())
    c.proto.guard = FloodGuard(max_control=20)
    for _ in range(21):
        c.h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 10})
    assert goaway(c.exchange())[0] == ErrorCodes.ENHANCE_YOUR_CALM


def test_empty_data_frame_flood_gets_goaway_enhance_your_calm():
    c = Client(lambda exchange: exchange.read_body(Receiver([])))
    c.proto.guard = FloodGuard(max_control=20)
    stream = c.request("/up", method="POST", end=False)
    for _ in range(21):
        c.h2.send_data(stream, b"")
    assert goaway(c.exchange())[0] == ErrorCodes.ENHANCE_YOUR_CALM


# -- negotiation --------------------------------------------------------------------------


class NegotiationSetup:
    def __init__(self, http2: bool = True, transport=None):
        self.clock = Clock()
        self.clock.advance(START)
        self.deadlines = Deadlines(self.clock)
        selector = Selector()
        self.exchanges = []
        handler = ok()

        def record(exchange):
            self.exchanges.append(exchange)
            handler(exchange)
        self.factory = NegotiatingFactory(
            HTTP11Factory(self.clock, self.deadlines, selector, record),
            H2Factory(self.clock, self.deadlines, selector, record) if http2 else None)
        self.proto = self.factory.buildProtocol(None)
        self.transport = transport or CountingTransport()
        self.proto.makeConnection(self.transport)


def test_cleartext_preface_chooses_http2_even_split_across_reads():
    s = NegotiationSetup()
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"),
                            (b":path", b"/"), (b":authority", b"a")], end_stream=True)
    data = client.data_to_send()
    s.proto.dataReceived(data[:3])
    assert s.transport.value() == b""
    s.proto.dataReceived(data[3:])
    assert isinstance(s.proto.chosen, H2Protocol)
    assert s.exchanges[0].request.version == "2.0"
    events = client.receive_data(s.transport.value())
    assert any(isinstance(e, ResponseReceived) for e in events)
    # the HTTP/1.1 protocol made for the connection left the deadline sweep
    assert len(s.deadlines) == 1


def test_cleartext_http11_request_stays_http11():
    s = NegotiationSetup()
    s.proto.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(s.proto.chosen, HTTP11Protocol)
    assert s.transport.value().startswith(b"HTTP/1.1 200 OK\r\n")
    assert s.exchanges[0].request.version == "1.1"


def test_http11_request_starting_like_the_preface_stays_http11():
    s = NegotiationSetup()
    s.proto.dataReceived(b"PRI")
    s.proto.dataReceived(b" / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(s.proto.chosen, HTTP11Protocol)
    assert s.transport.value().startswith(b"HTTP/1.1 ")


def test_without_http2_the_listener_builds_http11_protocols_directly():
    s = NegotiationSetup(http2=False)
    assert isinstance(s.proto, HTTP11Protocol)
    assert s.factory.alpn_protocols == [b"http/1.1"]
    assert NegotiationSetup().factory.alpn_protocols == [b"h2", b"http/1.1"]


@implementer(INegotiated)
class FakeTLSTransport(CountingTransport):
    def __init__(self, negotiated):
        super().__init__()
        self.negotiatedProtocol = negotiated


def test_tls_alpn_h2_chooses_http2_and_anything_else_http11():
    s = NegotiationSetup(transport=FakeTLSTransport(b"h2"))
    s.proto.dataReceived(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert isinstance(s.proto.chosen, H2Protocol)

    s = NegotiationSetup(transport=FakeTLSTransport(None))
    s.proto.dataReceived(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert isinstance(s.proto.chosen, HTTP11Protocol)
    assert s.transport.value().startswith(b"HTTP/1.1 400 ")
