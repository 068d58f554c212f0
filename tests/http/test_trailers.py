"""Trailers on the HTTP/1.1 side, as transcripts: the upstream reader's trailer events,
the upstream connection writing request trailers, the HTTP/1.1 exchange reading request
trailers and writing response trailers (only for ``TE: trailers``), the spool keeping
them after every spooled byte, and the proxy's trailer filter."""
from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.config.model import Address
from gateway.deadlines import Deadlines
from gateway.http._client_core import (
    MSG_INVALID_CHUNKED,
    MSG_TOO_BIG_TRAILERS,
    RESPONSE_END,
    ResponseHead,
    ResponseReader,
    ResponseTrailers,
    UpstreamError,
)
from gateway.http.client import UpstreamConnection
from gateway.http.proxy import trailer_fields
from gateway.http.spool import ResponseSpool
from tests.http.test_h1 import HEAD, Connection, Receiver

CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
WITH_TRAILERS = CHUNKED_HEAD + b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nGrpc-Status: 0\r\n\r\n"
CHUNKED = ResponseHead(200, b"OK", "1.1", [(b"Transfer-Encoding", b"chunked")], None, True, True)
TRAILERS = [(b"X-Checksum", b"abc"), (b"Grpc-Status", b"0")]


def read(chunks, reader=None):
    reader = reader or ResponseReader()
    reader.start("GET")
    events = []
    for chunk in chunks:
        events += reader.feed(chunk)
    return reader, events


class ResponseReaderTrailers(SynchronousTestCase):
    def test_trailer_fields_come_as_one_event_right_before_the_end(self):
        reader, events = read([WITH_TRAILERS])
        self.assertEqual(events, [CHUNKED, b"hello", ResponseTrailers(TRAILERS), RESPONSE_END])
        self.assertTrue(reader.reusable)

    def test_trailers_fed_byte_by_byte_are_the_same(self):
        reader, events = read([WITH_TRAILERS[i:i + 1] for i in range(len(WITH_TRAILERS))])
        self.assertEqual(events, [CHUNKED] + [bytes([c]) for c in b"hello"]
                         + [ResponseTrailers(TRAILERS), RESPONSE_END])
        self.assertTrue(reader.reusable)

    def test_a_chunked_body_without_trailers_has_no_trailer_event(self):
        _, events = read([CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n\r\n"])
        self.assertEqual(events, [CHUNKED, b"hello", RESPONSE_END])

    def test_trailers_belong_to_their_response_only(self):
        reader, first = read([WITH_TRAILERS])
        _, second = read([CHUNKED_HEAD + b"2\r\nok\r\n0\r\n\r\n"], reader)
        self.assertEqual(first[2], ResponseTrailers(TRAILERS))
        self.assertEqual(second, [CHUNKED, b"ok", RESPONSE_END])

    def test_trailer_lines_above_the_head_limit_are_too_big_trailers(self):
        reader = ResponseReader(max_head_size=100)
        trailers = b"X-Long: 0123456789\r\n" * 6 + b"\r\n"
        _, events = read([CHUNKED_HEAD + b"2\r\nok\r\n0\r\n" + trailers], reader)
        self.assertEqual(events, [
            CHUNKED, b"ok",
            UpstreamError("error", MSG_TOO_BIG_TRAILERS, response_started=True),
        ])
        self.assertFalse(reader.reusable)

    def test_an_endless_trailer_line_is_refused_before_it_grows_past_the_limit(self):
        """llhttp buffers an unfinished trailer line unseen; the reader bounds it."""
        reader = ResponseReader(max_head_size=100)
        _, events = read([CHUNKED_HEAD + b"2\r\nok\r\n0\r\nX-Endless: ", b"a" * 60, b"a" * 60],
                         reader)
        self.assertEqual(events, [
            CHUNKED, b"ok",
            UpstreamError("error", MSG_TOO_BIG_TRAILERS, response_started=True),
        ])

    def test_chunk_data_larger_than_the_limit_is_not_taken_for_a_trailer(self):
        """A chunk-size line ending one read, its data the next: body, not trailer."""
        reader = ResponseReader(max_head_size=100)
        _, events = read([CHUNKED_HEAD + b"c8\r\n", b"d" * 200, b"\r\n0\r\nX-A: 1\r\n\r\n"],
                         reader)
        self.assertEqual(events, [CHUNKED, b"d" * 200, ResponseTrailers([(b"X-A", b"1")]),
                                  RESPONSE_END])

    def test_a_content_length_trailer_is_an_invalid_chunked_response(self):
        """llhttp applies its Content-Length/Transfer-Encoding rule to trailers too;
        such a response is cut short rather than passed on."""
        _, events = read([CHUNKED_HEAD + b"2\r\nok\r\n0\r\nContent-Length: 2\r\n\r\n"])
        self.assertEqual(events, [
            CHUNKED, b"ok",
            UpstreamError("error", MSG_INVALID_CHUNKED, response_started=True),
        ])

    def test_a_malformed_trailer_line_is_an_invalid_chunked_response(self):
        _, events = read([CHUNKED_HEAD + b"2\r\nok\r\n0\r\nno colon here\r\n\r\n"])
        self.assertEqual(events, [
            CHUNKED, b"ok",
            UpstreamError("error", MSG_INVALID_CHUNKED, response_started=True),
        ])


class Recorder:
    def __init__(self, trailers=True):
        self.events = []
        if trailers:
            self.response_trailers = lambda headers: self.events.append(("trailers", headers))

    def response_head(self, head):
        self.events.append(("head", head.status))

    def response_body(self, data):
        self.events.append(("body", data))

    def response_end(self):
        self.events.append(("end",))

    def response_error(self, error):
        self.events.append(("error", error.message))


def upstream():
    clock = Clock()
    connection = UpstreamConnection(clock, Deadlines(clock),
                                    Address("127.0.0.1:8080", "127.0.0.1", 8080))
    transport = StringTransport()
    connection.makeConnection(transport)
    return connection, transport


POST = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


class UpstreamConnectionTrailers(SynchronousTestCase):
    def test_response_trailers_reach_the_handler_before_the_end(self):
        connection, _ = upstream()
        handler = Recorder()
        connection.send_request(b"GET / HTTP/1.1\r\n\r\n", handler, method="GET", body="none",
                                read_timeout=5, send_timeout=5)
        connection.dataReceived(WITH_TRAILERS)
        self.assertEqual(handler.events, [("head", 200), ("body", b"hello"),
                                          ("trailers", TRAILERS), ("end",)])
        self.assertTrue(connection.reusable)

    def test_a_handler_without_response_trailers_still_gets_the_end(self):
        connection, _ = upstream()
        handler = Recorder(trailers=False)
        connection.send_request(b"GET / HTTP/1.1\r\n\r\n", handler, method="GET", body="none",
                                read_timeout=5, send_timeout=5)
        connection.dataReceived(WITH_TRAILERS)
        self.assertEqual(handler.events, [("head", 200), ("body", b"hello"), ("end",)])

    def test_request_trailers_go_in_the_last_chunk(self):
        connection, transport = upstream()
        connection.send_request(POST, Recorder(), method="POST", body="chunked",
                                read_timeout=5, send_timeout=5)
        connection.write_body(b"hello")
        connection.end_body([(b"X-Sum", b"5"), (b"X-B", b"2")])
        self.assertEqual(transport.value(),
                         POST + b"5\r\nhello\r\n0\r\nX-Sum: 5\r\nX-B: 2\r\n\r\n")

    def test_request_trailers_of_an_empty_body_leave_with_the_head(self):
        connection, transport = upstream()
        connection.send_request(POST, Recorder(), method="POST", body="chunked",
                                read_timeout=5, send_timeout=5)
        connection.end_body([(b"X-Sum", b"0")])
        self.assertEqual(transport.value(), POST + b"0\r\nX-Sum: 0\r\n\r\n")

    def test_a_content_length_body_cannot_carry_trailers(self):
        connection, transport = upstream()
        head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"
        connection.send_request(head, Recorder(), method="POST", body="length",
                                read_timeout=5, send_timeout=5)
        connection.write_body(b"hello")
        connection.end_body([(b"X-Sum", b"5")])
        self.assertEqual(transport.value(), head + b"hello")


CHUNKED_POST = b"POST /up HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"


def reading(events):
    """A handler reading the body; its receiver notes the trailers seen at body_end."""
    def handler(exchange):
        receiver = Receiver(events)
        end = receiver.body_end

        def body_end():
            events.append(("trailers", list(exchange.request_trailers)))
            end()
        receiver.body_end = body_end
        events.append(("trailers before", list(exchange.request_trailers)))
        exchange.read_body(receiver)
    return handler


class H1RequestTrailers(SynchronousTestCase):
    def test_chunked_request_trailers_are_set_when_the_body_ends(self):
        events = []
        conn = Connection(reading(events))
        conn.send(CHUNKED_POST + b"5\r\nhello\r\n")
        conn.send(b"0\r\nX-Sum: 5  \r\nX-B: 2\r\n\r\n")
        self.assertEqual(events, [
            ("trailers before", []), ("data", b"hello"),
            ("trailers", [(b"X-Sum", b"5"), (b"X-B", b"2")]), ("end",),
        ])

    def test_trailers_of_an_empty_chunked_body_arrive_with_it(self):
        events = []
        conn = Connection(reading(events))
        conn.send(CHUNKED_POST + b"0\r\nX-Sum: 0\r\n\r\n")
        self.assertEqual(events, [("trailers before", []), ("trailers", [(b"X-Sum", b"0")]),
                                  ("end",)])

    def test_a_request_without_trailers_has_none(self):
        events = []
        conn = Connection(reading(events))
        conn.send(CHUNKED_POST + b"2\r\nok\r\n0\r\n\r\n")
        self.assertEqual(events, [("trailers before", []), ("data", b"ok"),
                                  ("trailers", []), ("end",)])

    def test_a_pipelined_request_after_trailers_is_parsed_on_its_own(self):
        events = []
        conn = Connection(reading(events))
        conn.send(CHUNKED_POST + b"0\r\nX-Sum: 0\r\n\r\n"
                  + b"GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n")
        conn.exchanges[0].send_head(204, [])
        conn.exchanges[0].finish()
        self.assertEqual([e.request.target for e in conn.exchanges], ["/up", "/next"])
        self.assertEqual(conn.exchanges[1].request.headers, [(b"Host", b"example.com")])
        self.assertEqual(conn.exchanges[1].request_trailers, [])

    def test_request_trailers_beyond_the_head_limit_get_431(self):
        events = []
        conn = Connection(reading(events), large_client_header_buffers=64)
        conn.send(CHUNKED_POST + b"2\r\nok\r\n0\r\n" + b"X-Long: 0123456789012345\r\n" * 12)
        self.assertEqual(events[-1], ("error", "client sent too large request trailers"))
        self.assertTrue(conn.take().startswith(b"HTTP/1.1 431 "))
        self.assertTrue(conn.closed)

    def test_an_endless_request_trailer_line_gets_431(self):
        events = []
        conn = Connection(reading(events), large_client_header_buffers=64)
        conn.send(CHUNKED_POST + b"2\r\nok\r\n0\r\nX-Endless: ")
        conn.send(b"a" * 40)
        self.assertEqual(events[-1], ("data", b"ok"))
        conn.send(b"a" * 40)
        self.assertEqual(events[-1], ("error", "client sent too long header line"))
        self.assertTrue(conn.take().startswith(b"HTTP/1.1 431 "))


def respond(headers=(), body=b"hello", trailers=TRAILERS):
    def handler(exchange):
        exchange.send_head(200, list(headers))
        if body:
            exchange.send_body(body)
        exchange.send_trailers(trailers)
        exchange.finish()
    return handler


def get(te=None, version=b"1.1"):
    return (b"GET / HTTP/" + version + b"\r\nHost: example.com\r\n"
            + (b"TE: " + te + b"\r\n" if te is not None else b"") + b"\r\n")


class H1ResponseTrailers(SynchronousTestCase):
    def test_te_trailers_gets_them_in_the_last_chunk(self):
        conn = Connection(respond())
        conn.send(get(b"trailers"))
        self.assertEqual(conn.take(), b"HTTP/1.1 200 OK\r\n" + HEAD
                         + b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
                         + b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nGrpc-Status: 0\r\n\r\n")

    def test_without_te_trailers_they_are_dropped(self):
        conn = Connection(respond())
        conn.send(get())
        self.assertEqual(conn.take(), b"HTTP/1.1 200 OK\r\n" + HEAD
                         + b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
                         + b"5\r\nhello\r\n0\r\n\r\n")

    def test_accepts_trailers_reads_the_te_list(self):
        cases = {
            get(b"trailers"): True,
            get(b"deflate, Trailers"): True,
            get(b"gzip;q=0.5,trailers"): True,
            get(b"gzip"): False,
            get(b"trailersx"): False,
            get(): False,
            get(b"trailers", version=b"1.0"): False,
        }
        seen = {}
        for raw in cases:
            conn = Connection()
            conn.send(raw)
            seen[raw] = conn.exchanges[0].accepts_trailers
        self.assertEqual(seen, cases)

    def test_a_content_length_response_drops_them(self):
        conn = Connection(respond(headers=[(b"Content-Length", b"5")]))
        conn.send(get(b"trailers"))
        self.assertEqual(conn.take(), b"HTTP/1.1 200 OK\r\n" + HEAD
                         + b"Content-Length: 5\r\nConnection: keep-alive\r\n\r\nhello")

    def test_an_empty_body_with_trailers_is_sent_chunked(self):
        conn = Connection(respond(body=b""))
        conn.send(get(b"trailers"))
        self.assertEqual(conn.take(), b"HTTP/1.1 200 OK\r\n" + HEAD
                         + b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
                         + b"0\r\nX-Checksum: abc\r\nGrpc-Status: 0\r\n\r\n")

    def test_an_empty_body_without_te_keeps_content_length_zero(self):
        conn = Connection(respond(body=b""))
        conn.send(get())
        self.assertEqual(conn.take(), b"HTTP/1.1 200 OK\r\n" + HEAD
                         + b"Content-Length: 0\r\nConnection: keep-alive\r\n\r\n")

    def test_trailer_bytes_count_in_bytes_sent(self):
        conn = Connection(respond())
        conn.send(get(b"trailers"))
        self.assertEqual(conn.done[0].bytes_sent, len(conn.take()))
        self.assertEqual(conn.done[0].body_bytes_sent, 5)


class SpoolExchange:
    def __init__(self):
        self.events = []

    def send_body(self, data):
        self.events.append(("body", data))

    def send_trailers(self, headers):
        self.events.append(("trailers", headers))

    def finish(self):
        self.events.append(("finish",))

    def unregister_producer(self):
        self.events.append(("unregister",))


class SpoolTrailers(SynchronousTestCase):
    def test_trailers_follow_every_spooled_byte(self):
        exchange = SpoolExchange()
        spool = ResponseSpool(exchange, lambda: None, lambda: None,
                              memory_limit=4, file_limit=100)
        spool.pauseProducing()
        spool.write(b"abc")
        spool.write(b"defgh")       # past the memory part: in the temp file
        spool.finish(TRAILERS)
        self.assertEqual(exchange.events, [])
        spool.resumeProducing()
        self.assertEqual(exchange.events, [
            ("body", b"abc"), ("body", b"defgh"), ("unregister",), ("trailers", TRAILERS),
            ("finish",),
        ])

    def test_no_trailers_no_send_trailers(self):
        exchange = SpoolExchange()
        spool = ResponseSpool(exchange, lambda: None, lambda: None)
        spool.write(b"abc")
        spool.finish()
        self.assertEqual(exchange.events, [("body", b"abc"), ("unregister",), ("finish",)])


class TrailerFilter(SynchronousTestCase):
    def test_framing_routing_auth_and_control_fields_never_travel_as_trailers(self):
        headers = [
            (b"X-Checksum", b"abc"), (b"Content-Length", b"5"), (b"Transfer-Encoding", b"x"),
            (b"Host", b"evil"), (b"Authorization", b"Basic x"), (b"Set-Cookie", b"a=b"),
            (b"Content-Type", b"text/html"), (b"Cache-Control", b"no-store"),
            (b"Connection", b"close"), (b"TE", b"trailers"), (b"Trailer", b"X"),
            (b"Location", b"/x"), (b":status", b"200"), (b"X-Split", b"a\r\nX-Evil: 1"),
            (b"grpc-status", b"0"), (b"Server-Timing", b"db;dur=53"),
        ]
        self.assertEqual(trailer_fields(headers), [
            (b"X-Checksum", b"abc"), (b"grpc-status", b"0"), (b"Server-Timing", b"db;dur=53"),
        ])
