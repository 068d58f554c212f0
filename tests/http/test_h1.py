"""Transcripts of the HTTP/1.1 server protocol: bytes in, exact bytes out.

Every test drives ``HTTP11Protocol`` through a ``StringTransport`` with a
``task.Clock`` and the shared ``Deadlines`` sweep; no reactor, no sockets.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gateway.config.model import ServerSettings
from gateway.deadlines import Deadlines
from gateway.http.errors import error_page
from gateway.http.h1 import HTTP11Factory

START = 1700000000.0
DATE = b"Tue, 14 Nov 2023 22:13:20 GMT"
HEAD = b"Server: gateway\r\nDate: " + DATE + b"\r\n"


def error(status: int, reason: bytes, close: bool = True, date: bytes = DATE) -> bytes:
    page = error_page(status)
    return (b"HTTP/1.1 %d %s\r\nServer: gateway\r\nDate: %s\r\n" % (status, reason, date)
            + b"Content-Type: text/html\r\nContent-Length: %d\r\n" % len(page)
            + (b"Connection: close\r\n" if close else b"Connection: keep-alive\r\n")
            + b"\r\n" + page)


class Selector:
    """Routing fake: every host gets ``server``; records the hosts asked for."""

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


class CountingTransport(StringTransport):
    def __init__(self):
        super().__init__(peerAddress=IPv4Address("TCP", "10.0.0.7", 50123),
                         hostAddress=IPv4Address("TCP", "10.0.0.1", 80))
        self.writes = 0

    def write(self, data):
        self.writes += 1
        super().write(data)


class Connection:
    """One client connection with a handler that keeps the exchanges it gets."""

    def __init__(self, handler=None, **settings):
        self.clock = Clock()
        self.clock.advance(START)
        self.deadlines = Deadlines(self.clock)
        self.selector = Selector(**settings)
        self.exchanges = []
        self.done = []
        self.handler = handler
        self.factory = HTTP11Factory(self.clock, self.deadlines, self.selector, self._handle,
                                     listener="tcp:80", on_exchange_done=self.done.append)
        self.protocol = self.factory.buildProtocol(None)
        self.transport = CountingTransport()
        self.protocol.makeConnection(self.transport)

    def _handle(self, exchange):
        self.exchanges.append(exchange)
        if self.handler is not None:
            self.handler(exchange)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def take(self) -> bytes:
        value = self.transport.value()
        self.transport.clear()
        return value

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting


def ok(body: bytes = b"hello", headers=()):
    def handler(exchange):
        exchange.send_head(200, [(b"Content-Type", b"text/plain"), *headers])
        if body:
            exchange.send_body(body)
        exchange.finish()
    return handler


def ok_length(body: bytes = b"hello"):
    return ok(body, [(b"Content-Length", b"%d" % len(body))])


GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"


# -- responses and framing ------------------------------------------------------------


def test_chunked_response_for_http11_without_content_length():
    c = Connection(ok())
    c.send(GET)
    assert c.take() == (b"HTTP/1.1 200 OK\r\n" + HEAD + b"Content-Type: text/plain\r\n"
                        b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
                        b"5\r\nhello\r\n0\r\n\r\n")
    assert not c.closed


def test_small_response_with_content_length_is_one_write():
    c = Connection(ok_length())
    c.send(GET)
    assert c.take() == (b"HTTP/1.1 200 OK\r\n" + HEAD + b"Content-Type: text/plain\r\n"
                        b"Content-Length: 5\r\nConnection: keep-alive\r\n\r\nhello")
    assert c.transport.writes == 1


def test_response_finished_without_body_gets_content_length_zero():
    c = Connection(ok(b""))
    c.send(GET)
    assert c.take() == (b"HTTP/1.1 200 OK\r\n" + HEAD + b"Content-Type: text/plain\r\n"
                        b"Content-Length: 0\r\nConnection: keep-alive\r\n\r\n")


def test_handler_server_and_date_replace_the_gateways_own():
    """proxy_pass_header Server/Date: the upstream's value is sent, never two lines."""
    c = Connection(ok(b"", [(b"Server", b"upstream/1.0"),
                             (b"Date", b"yesterday")]))
    c.send(GET)
    assert c.take() == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                        b"Server: upstream/1.0\r\nDate: yesterday\r\n"
                        b"Content-Length: 0\r\nConnection: keep-alive\r\n\r\n")


def test_head_request_gets_no_body_but_keeps_content_length():
    c = Connection(ok_length())
    c.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert c.take() == (b"HTTP/1.1 200 OK\r\n" + HEAD + b"Content-Type: text/plain\r\n"
                        b"Content-Length: 5\r\nConnection: keep-alive\r\n\r\n")


@pytest.mark.parametrize("status, reason", [(204, b"No Content"), (304, b"Not Modified")])
def test_204_and_304_never_carry_a_body_or_framing(status, reason):
    def handler(exchange):
        exchange.send_head(status, [(b"ETag", b'"x"')])
        exchange.send_body(b"ignored")
        exchange.finish()
    c = Connection(handler)
    c.send(GET)
    assert c.take() == (b"HTTP/1.1 %d %s\r\n" % (status, reason) + HEAD + b'ETag: "x"\r\n'
                        b"Connection: keep-alive\r\n\r\n")


def test_informational_response_precedes_final_response():
    def handler(exchange):
        exchange.send_head(103, [(b"Link", b"</a.css>")])
        exchange.send_head(200, [(b"Content-Length", b"0")])
        exchange.finish()
    c = Connection(handler)
    c.send(GET)
    assert c.take() == (b"HTTP/1.1 103 Early Hints\r\n" + HEAD + b"Link: </a.css>\r\n\r\n"
                        b"HTTP/1.1 200 OK\r\n" + HEAD
                        + b"Content-Length: 0\r\nConnection: keep-alive\r\n\r\n")


def test_handler_hop_by_hop_headers_are_dropped_and_reason_honoured():
    def handler(exchange):
        exchange.send_head(200, [(b"Connection", b"foo"), (b"X", b"1"),
                                 (b"Transfer-Encoding", b"gzip"), (b"Content-Length", b"0")],
                           reason=b"Fine")
        exchange.finish()
    c = Connection(handler)
    c.send(GET)
    assert c.take() == (b"HTTP/1.1 200 Fine\r\n" + HEAD + b"X: 1\r\nContent-Length: 0\r\n"
                        b"Connection: keep-alive\r\n\r\n")


def test_http10_response_without_length_is_close_delimited():
    c = Connection(ok())
    c.send(b"GET / HTTP/1.0\r\n\r\n")
    assert c.take() == (b"HTTP/1.1 200 OK\r\n" + HEAD + b"Content-Type: text/plain\r\n"
                        b"Connection: close\r\n\r\nhello")
    assert c.closed
    assert c.exchanges[0].request.host == ""


def test_http10_keep_alive_only_when_asked_for():
    c = Connection(ok_length())
    c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert c.take() == (b"HTTP/1.1 200 OK\r\n" + HEAD + b"Content-Type: text/plain\r\n"
                        b"Content-Length: 5\r\nConnection: keep-alive\r\n\r\nhello")
    assert not c.closed
    c.send(b"GET / HTTP/1.0\r\n\r\n")
    assert c.take().endswith(b"Content-Length: 5\r\nConnection: close\r\n\r\nhello")
    assert c.closed


def test_client_connection_close_is_honoured():
    c = Connection(ok_length())
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert c.take().endswith(b"Content-Length: 5\r\nConnection: close\r\n\r\nhello")
    assert c.closed


def test_http11_keepalive_response_says_so_once_and_connection_close_says_close():
    """nginx's header filter: ``Connection: keep-alive`` on every response of a kept-alive
    connection, HTTP/1.1 included, exactly once even when the handler passed its own
    (hop-by-hop, dropped); ``Connection: close`` when the client asked for it."""
    c = Connection(ok(b"hello", [(b"Connection", b"keep-alive"), (b"Keep-Alive", b"timeout=5"),
                                 (b"Content-Length", b"5")]))
    c.send(GET)
    response = c.take()
    assert response == (b"HTTP/1.1 200 OK\r\n" + HEAD + b"Content-Type: text/plain\r\n"
                        b"Content-Length: 5\r\nConnection: keep-alive\r\n\r\nhello")
    assert response.lower().count(b"\r\nconnection:") == 1
    assert response.count(b"\r\nConnection: keep-alive\r\n") == 1
    assert not c.closed
    c.send(b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
    response = c.take()
    assert response == (b"HTTP/1.1 200 OK\r\n" + HEAD + b"Content-Type: text/plain\r\n"
                        b"Content-Length: 5\r\nConnection: close\r\n\r\nhello")
    assert response.lower().count(b"\r\nconnection:") == 1
    assert c.closed


def test_short_content_length_response_closes_the_connection():
    def handler(exchange):
        exchange.send_head(200, [(b"Content-Length", b"10")])
        exchange.send_body(b"abc")
        exchange.finish()
    c = Connection(handler)
    c.send(GET)
    # the head went out before the body fell short, so it still said keep-alive
    assert c.take() == (b"HTTP/1.1 200 OK\r\n" + HEAD + b"Content-Length: 10\r\n"
                        b"Connection: keep-alive\r\n\r\nabc")
    assert c.closed


def test_date_is_formatted_from_the_clock_once_per_second():
    c = Connection(ok_length())
    first = c.factory.date()
    c.clock.advance(0.5)
    assert c.factory.date() is first
    c.clock.advance(0.5)
    assert c.factory.date() == b"Tue, 14 Nov 2023 22:13:21 GMT"


def test_send_error_writes_nginx_page_and_keeps_connection_for_404():
    c = Connection(lambda exchange: exchange.send_error(404, [(b"X-Why", b"gone")]))
    c.send(GET)
    page = error_page(404)
    assert c.take() == (b"HTTP/1.1 404 Not Found\r\n" + HEAD + b"X-Why: gone\r\n"
                        b"Content-Type: text/html\r\nContent-Length: %d\r\n" % len(page)
                        + b"Connection: keep-alive\r\n\r\n" + page)
    assert not c.closed
    assert c.transport.writes == 1
    assert (c.done[0].status, c.done[0].body_bytes_sent) == (404, len(page))


def test_send_error_500_closes_as_nginx_does():
    c = Connection(lambda exchange: exchange.send_error(500))
    c.send(GET)
    assert c.take() == error(500, b"Internal Server Error")
    assert c.closed


def test_send_error_replaces_a_head_not_yet_written():
    def handler(exchange):
        exchange.send_head(200, [(b"X", b"1")])
        exchange.send_error(502)
    c = Connection(handler)
    c.send(GET)
    page = error_page(502)
    assert c.take() == (b"HTTP/1.1 502 Bad Gateway\r\n" + HEAD + b"Content-Type: text/html\r\n"
                        b"Content-Length: %d\r\n" % len(page)
                        + b"Connection: keep-alive\r\n\r\n" + page)


def test_abort_closes_without_final_chunk():
    def handler(exchange):
        exchange.send_head(200, [])
        exchange.send_body(b"part")
        exchange.abort()
    c = Connection(handler)
    c.send(GET)
    assert c.take() == (b"HTTP/1.1 200 OK\r\n" + HEAD + b"Transfer-Encoding: chunked\r\n"
                        b"Connection: keep-alive\r\n\r\n4\r\npart\r\n")
    assert c.closed
    assert c.done == c.exchanges


def test_handler_exception_becomes_500_and_close():
    def handler(exchange):
        raise ValueError("boom")
    c = Connection(handler)
    c.send(GET)
    assert c.take() == error(500, b"Internal Server Error")
    assert c.closed


def test_exchange_fields():
    c = Connection()
    c.send(b"GET http://Example.COM:8080/a/../b%20c?x=1 HTTP/1.1\r\nHost: other\r\n"
           b"Content-Length: 0\r\n\r\n")
    (exchange,) = c.exchanges
    request = exchange.request
    assert (request.method, request.target, request.path, request.args, request.version,
            request.host) == ("GET", "http://Example.COM:8080/a/../b%20c?x=1", "/b c", "x=1",
                              "1.1", "example.com")
    assert request.headers == [(b"Host", b"other"), (b"Content-Length", b"0")]
    assert c.selector.hosts == ["example.com"]
    assert exchange.server is c.selector.default
    assert exchange.start_time == START
    assert len(exchange.request_id) == 32 and int(exchange.request_id, 16) >= 0
    info = exchange.connection
    assert (info.remote_addr, info.remote_port, info.server_addr, info.server_port,
            info.scheme, info.listener) == ("10.0.0.7", 50123, "10.0.0.1", 80, "http", "tcp:80")
    assert exchange.status == 0
    exchange.send_head(200, [(b"Content-Length", b"2")])
    exchange.send_body(b"ok")
    exchange.finish()
    assert (exchange.status, exchange.body_bytes_sent, exchange.bytes_sent) == (
        200, 2, len(c.take()))


def test_header_values_lose_trailing_whitespace():
    c = Connection()
    c.send(b"GET / HTTP/1.1\r\nHost:  a.example \t\r\nX:  v  \r\n\r\n")
    assert c.exchanges[0].request.headers == [(b"Host", b"a.example"), (b"X", b"v")]
    assert c.exchanges[0].request.host == "a.example"


# -- keepalive and pipelining ------------------------------------------------------


def test_pipelined_requests_run_one_at_a_time_and_answer_in_order():
    c = Connection()
    c.send(GET.replace(b"/ ", b"/1 ") + GET.replace(b"/ ", b"/2 "))
    assert [e.request.path for e in c.exchanges] == ["/1"]
    first = c.exchanges[0]
    first.send_head(200, [(b"Content-Length", b"1")])
    first.send_body(b"1")
    first.finish()
    assert [e.request.path for e in c.exchanges] == ["/1", "/2"]
    second = c.exchanges[1]
    second.send_head(200, [(b"Content-Length", b"1")])
    second.send_body(b"2")
    second.finish()
    assert c.take() == (b"HTTP/1.1 200 OK\r\n" + HEAD
                        + b"Content-Length: 1\r\nConnection: keep-alive\r\n\r\n1"
                        b"HTTP/1.1 200 OK\r\n" + HEAD
                        + b"Content-Length: 1\r\nConnection: keep-alive\r\n\r\n2")
    assert c.done == c.exchanges


def test_pipelined_input_beyond_64k_pauses_reading_until_consumed():
    c = Connection()
    post = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 40000\r\n\r\n" + b"x" * 40000
    c.send(GET + post + post)
    assert c.transport.producerState == "paused"
    first = c.exchanges[0]
    first.send_head(204, [])
    first.finish()
    assert c.transport.producerState == "paused"
    second = c.exchanges[1]
    second.read_body(Receiver([]))
    assert c.transport.producerState == "producing"


def test_keepalive_requests_limit_closes_after_nth_response():
    c = Connection(ok_length(), keepalive_requests=2)
    c.send(GET)
    assert c.take() == (b"HTTP/1.1 200 OK\r\n" + HEAD + b"Content-Type: text/plain\r\n"
                        b"Content-Length: 5\r\nConnection: keep-alive\r\n\r\nhello")
    c.send(GET)
    assert c.take().endswith(b"Content-Length: 5\r\nConnection: close\r\n\r\nhello")
    assert c.closed


def test_request_ids_are_unique_across_blocks_of_random_bytes():
    """Ids come from blocks read for 256 requests; crossing blocks repeats none."""
    c = Connection(ok_length())
    for _ in range(600):
        c.send(GET)
    ids = [exchange.request_id for exchange in c.exchanges]
    assert len(set(ids)) == 600
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_no_deadline_while_the_handler_works_then_keepalive_timeout_from_the_response():
    """A request read whole in one piece stops the header deadline; the idle one
    starts when the response is finished, not when the request arrived."""
    c = Connection(keepalive_timeout=5.0)
    c.send(GET)
    assert c.protocol.deadline is None
    c.clock.advance(60)
    (exchange,) = c.exchanges
    ok_length()(exchange)
    assert c.protocol.deadline == START + 60 + 5.0
    assert not c.closed


def test_keepalive_timeout_closes_idle_connection_silently():
    c = Connection(ok_length(), keepalive_timeout=5.0)
    c.send(GET)
    c.take()
    c.clock.advance(4.9)
    assert not c.closed
    c.clock.advance(0.2)
    assert c.closed
    assert c.take() == b""


# -- request bodies ----------------------------------------------------------------


def reading(events):
    def handler(exchange):
        exchange.read_body(Receiver(events))
    return handler


def test_content_length_body_is_delivered_then_end():
    events = []
    c = Connection(reading(events))
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel")
    c.send(b"lo")
    assert events == [("data", b"hel"), ("data", b"lo"), ("end",)]
    assert c.exchanges[0].request.content_length == 5


def test_chunked_body_is_delivered_dechunked_and_trailers_dropped():
    events = []
    c = Connection(reading(events))
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n")
    assert events == [("data", b"abc"), ("data", b"de"), ("end",)]
    request = c.exchanges[0].request
    assert (request.chunked, request.content_length) == (True, None)
    assert request.headers == [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")]


def test_request_without_body_ends_at_once():
    events = []
    c = Connection(reading(events))
    c.send(GET)
    assert events == [("end",)]


def test_pause_body_stops_delivery_and_reading_resume_continues():
    events = []
    c = Connection()
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nab")
    exchange = c.exchanges[0]
    exchange.read_body(Receiver(events))
    exchange.pause_body()
    assert c.transport.producerState == "paused"
    c.send(b"cd")
    assert events == [("data", b"ab")]
    exchange.resume_body()
    assert c.transport.producerState == "producing"
    c.send(b"ef")
    assert events == [("data", b"ab"), ("data", b"cd"), ("data", b"ef"), ("end",)]


def test_body_arriving_before_read_body_is_buffered():
    events = []
    c = Connection()
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
    c.exchanges[0].read_body(Receiver(events))
    assert events == [("data", b"abc"), ("end",)]


def test_expect_100_continue_sent_when_body_is_read():
    events = []
    c = Connection()
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    assert c.take() == b""
    c.exchanges[0].read_body(Receiver(events))
    assert c.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    c.send(b"ok")
    assert events == [("data", b"ok"), ("end",)]


def test_expect_100_continue_not_sent_when_body_already_arrived():
    c = Connection()
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nok")
    c.exchanges[0].read_body(Receiver([]))
    assert c.take() == b""


def test_expect_100_continue_ignored_for_http10():
    c = Connection()
    c.send(b"POST / HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    assert c.exchanges[0].request.expect_continue is False


def test_content_length_above_client_max_body_size_is_413_without_continue():
    c = Connection(reading([]), client_max_body_size=10)
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
    assert c.take() == error(413, b"Request Entity Too Large")
    assert c.closed
    assert c.exchanges == []
    assert (c.done[0].status, c.done[0].request.method, c.done[0].request.target) == (
        413, "POST", "/")


def test_client_max_body_size_zero_is_unlimited():
    events = []
    c = Connection(reading(events), client_max_body_size=0)
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3000000\r\n\r\n")
    assert c.take() == b""
    assert not c.closed


def test_chunked_body_exceeding_limit_is_413_and_close():
    events = []
    c = Connection(reading(events), client_max_body_size=4)
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    c.send(b"3\r\ndef\r\n")
    assert events == [("data", b"abc"), ("error", "client intended to send too large chunked body")]
    assert c.take() == error(413, b"Request Entity Too Large")
    assert c.closed
    assert c.done[0].status == 413


def test_chunked_body_exceeding_limit_after_response_started_aborts():
    c = Connection(client_max_body_size=4)
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    exchange = c.exchanges[0]
    exchange.send_head(200, [])
    exchange.send_body(b"x")
    events = []
    exchange.read_body(Receiver(events))
    c.take()
    c.send(b"5\r\nabcde\r\n")
    assert events == [("error", "client intended to send too large chunked body")]
    assert c.take() == b""
    assert c.closed


def test_client_body_timeout_is_408_and_close():
    events = []
    c = Connection(reading(events), client_body_timeout=10.0)
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
    c.clock.advance(9.0)
    c.send(b"c")
    c.clock.advance(9.5)
    assert c.take() == b""
    c.clock.advance(1.0)
    assert events == [("data", b"ab"), ("data", b"c"), ("error", "client timed out")]
    assert c.take() == error(408, b"Request Time-out", date=c.factory.date())
    assert c.closed


def test_no_body_timeout_while_handler_paused_the_body():
    c = Connection(client_body_timeout=10.0)
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
    exchange = c.exchanges[0]
    exchange.read_body(Receiver([]))
    exchange.pause_body()
    c.clock.advance(60)
    assert not c.closed


def test_unread_body_is_discarded_and_connection_kept():
    c = Connection(ok_length())
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nab")
    assert c.take().endswith(b"Content-Length: 5\r\nConnection: keep-alive\r\n\r\nhello")
    c.send(b"cdef" + GET)
    assert len(c.exchanges) == 2
    assert c.take().endswith(b"Content-Length: 5\r\nConnection: keep-alive\r\n\r\nhello")
    assert not c.closed


def test_discarding_too_slow_body_closes():
    c = Connection(ok_length())
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nab")
    c.take()
    c.clock.advance(5.2)
    assert c.closed


def test_unsent_100_continue_means_close_instead_of_discard():
    c = Connection(ok_length())
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nExpect: 100-continue\r\n\r\n")
    assert c.take().endswith(b"Content-Length: 5\r\nConnection: close\r\n\r\nhello")
    assert c.closed


# -- client going away -------------------------------------------------------------


def test_client_gone_mid_exchange_notifies_receiver_and_on_close():
    events = []
    c = Connection()
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
    exchange = c.exchanges[0]
    exchange.read_body(Receiver(events))
    exchange.on_close(lambda: events.append(("closed",)))
    c.protocol.connectionLost(None)
    assert events == [("data", b"ab"), ("error", "client closed connection"), ("closed",)]
    assert c.done == [exchange]
    assert exchange.status == 499
    assert len(c.deadlines) == 0


def test_on_close_not_called_after_finish():
    events = []
    c = Connection()
    c.send(GET)
    exchange = c.exchanges[0]
    exchange.on_close(lambda: events.append("closed"))
    exchange.send_error(404)
    c.protocol.connectionLost(None)
    assert events == []
    assert c.done == [exchange]


def test_register_producer_uses_streaming_transport_producer():
    c = Connection()
    c.send(GET)
    exchange = c.exchanges[0]
    producer = object()
    exchange.register_producer(producer)
    assert (c.transport.producer, c.transport.streaming) == (producer, True)
    exchange.unregister_producer()
    assert c.transport.producer is None


# -- timeouts before the head ------------------------------------------------------


def test_idle_new_connection_is_closed_silently_after_client_header_timeout():
    c = Connection(client_header_timeout=10.0)
    c.clock.advance(10.2)
    assert c.closed
    assert c.take() == b""
    assert c.done == []


def test_partial_head_times_out_with_408():
    c = Connection(client_header_timeout=10.0)
    c.send(b"GET /slow HTTP/1.1\r\nHo")
    c.clock.advance(10.2)
    assert c.take() == error(408, b"Request Time-out", date=c.factory.date())
    assert c.closed
    assert (c.done[0].status, c.done[0].request.target) == (408, "/slow")


def test_header_timeout_of_keepalive_request_counts_from_its_first_byte():
    c = Connection(ok_length(), client_header_timeout=10.0, keepalive_timeout=75.0)
    c.send(GET)
    c.take()
    c.clock.advance(30)
    c.send(b"GET / HT")
    c.clock.advance(9.5)
    assert not c.closed
    c.clock.advance(1.0)
    assert c.take() == error(408, b"Request Time-out", date=c.factory.date())


# -- Upgrade -----------------------------------------------------------------------


def test_upgrade_not_taken_lets_following_requests_be_parsed():
    c = Connection(ok_length())
    c.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
           + GET)
    assert [e.request.path for e in c.exchanges] == ["/ws", "/"]
    assert c.take().count(b"hello") == 2


def test_upgrade_taken_over_gets_following_bytes():
    received = []

    def handler(exchange):
        exchange.send_head(101, [(b"Connection", b"upgrade"), (b"Upgrade", b"websocket")])
        exchange.take_over(received.append, lambda reason: received.append("lost"))
    c = Connection(handler)
    c.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nraw1")
    c.send(b"raw2")
    assert c.take() == (b"HTTP/1.1 101 Switching Protocols\r\n" + HEAD
                        + b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    c.protocol.connectionLost(None)
    assert received == [b"raw1", b"raw2", "lost"]
    assert c.done[0].status == 101


def test_the_parser_says_whether_an_upgrade_header_may_be_present():
    from gateway.http.tunnel import requested_upgrade

    c = Connection()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n")
    assert c.exchanges[0].request.may_upgrade is False
    assert requested_upgrade(c.exchanges[0]) is None

    c = Connection()
    c.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUPGRADE: websocket\r\n\r\n")
    assert c.exchanges[0].request.may_upgrade is True
    assert requested_upgrade(c.exchanges[0]) == b"websocket"
