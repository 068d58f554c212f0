"""Transcripts of requests the HTTP/1.1 protocol refuses itself: smuggling attempts,
bad hosts and targets, oversize heads, unsupported versions and methods. Each answer
is nginx's error page with ``Connection: close``, and the connection closes."""
from __future__ import annotations

import pytest

from tests.http.test_h1 import GET, Connection, error, ok_length

BAD_REQUEST = error(400, b"Bad Request")


def refused(data: bytes, **settings):
    c = Connection(ok_length(), **settings)
    c.send(data)
    return c


@pytest.mark.parametrize("data", [
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", id="content-length-and-chunked"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
                 id="duplicate-content-length"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx", id="signed-length"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx", id="list-length"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", id="duplicate-transfer-encoding"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", id="obs-fold"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", id="bare-cr"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", id="bare-cr-in-value"),
    pytest.param(b"GET / HTTP/1.1\nHost: a\n\n", id="bare-lf"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", id="nul-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", id="control-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX\x00: b\r\n\r\n", id="nul-in-name"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n", id="space-before-colon"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", id="empty-name"),
    pytest.param(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                 id="transfer-encoding-in-http10"),
    pytest.param(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", id="space-in-target"),
    pytest.param(b"GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", id="control-in-target"),
    pytest.param(b"GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n", id="invalid-escape"),
    pytest.param(b"GET /a%00 HTTP/1.1\r\nHost: a\r\n\r\n", id="escaped-nul"),
    pytest.param(b"GET /../etc HTTP/1.1\r\nHost: a\r\n\r\n", id="above-root"),
    pytest.param(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", id="asterisk"),
    pytest.param(b"get / HTTP/1.1\r\nHost: a\r\n\r\n", id="lower-case-method"),
    pytest.param(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", id="http-1.2"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", id="h2c-preface"),
])
def test_malformed_requests_get_400_and_close(data):
    c = refused(data)
    assert c.take() == BAD_REQUEST
    assert c.closed
    assert c.exchanges == []
    assert c.done[0].status == 400


@pytest.mark.parametrize("chunks", [
    pytest.param(b"zz\r\n", id="non-hex-size"),
    pytest.param(b"ffffffffffffffffff\r\n", id="size-overflow"),
    pytest.param(b"1\r\nxy\r\n", id="data-longer-than-size"),
    pytest.param(b"1\nx\n0\n\n", id="bare-lf-framing"),
])
def test_invalid_chunk_framing_is_400_and_close(chunks):
    events = []
    from tests.http.test_h1 import Receiver

    c = Connection(lambda exchange: exchange.read_body(Receiver(events)))
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    assert c.take() == BAD_REQUEST
    assert c.closed
    assert events[-1][0] == "error"


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET http://a/ HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a..b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\\b\r\n\r\n",
    b"GET http://a..b/ HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://a/ HTTP/1.1\r\nHost: a..b\r\n\r\n",
], ids=["missing", "absolute-form-without-header", "duplicate", "empty", "double-dot", "slash",
        "backslash", "bad-request-line-host", "bad-header-with-absolute-form"])
def test_bad_host_is_400(data):
    c = refused(data)
    assert c.take() == BAD_REQUEST
    assert c.closed


def test_http10_without_host_has_empty_host():
    c = Connection(ok_length())
    c.send(b"GET / HTTP/1.0\r\n\r\n")
    assert c.exchanges[0].request.host == ""
    assert c.selector.hosts == [""]


def test_host_is_lowercased_without_port_and_trailing_dot():
    c = Connection(ok_length())
    c.send(b"GET / HTTP/1.1\r\nHost: WWW.Example.COM.:8080\r\n\r\n")
    assert c.exchanges[0].request.host == "www.example.com"


def test_unknown_transfer_encoding_is_501():
    for value in (b"gzip, chunked", b"gzip", b"identity"):
        c = refused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " + value + b"\r\n\r\n")
        assert c.take() == error(501, b"Not Implemented")
        assert c.closed


def test_transfer_encoding_chunked_is_case_insensitive():
    c = Connection(ok_length())
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n")
    assert c.exchanges[0].request.chunked is True


@pytest.mark.parametrize("version", [b"2.0", b"3.0"])
def test_http2_and_later_on_this_protocol_is_505(version):
    c = refused(b"GET / HTTP/" + version + b"\r\nHost: a\r\n\r\n")
    assert c.take() == error(505, b"HTTP Version Not Supported")
    assert c.closed


@pytest.mark.parametrize("line", [b"TRACE / HTTP/1.1", b"CONNECT example.com:443 HTTP/1.1"])
def test_trace_and_connect_are_405(line):
    c = refused(line + b"\r\nHost: a\r\n\r\n")
    assert c.take() == error(405, b"Not Allowed")
    assert c.closed


def test_request_line_longer_than_buffer_is_414():
    c = refused(b"GET /" + b"a" * 1100 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
                large_client_header_buffers=1024)
    assert c.take() == error(414, b"Request-URI Too Large")
    assert c.closed


def test_long_request_line_arriving_slowly_is_414_before_it_ends():
    c = Connection(ok_length(), large_client_header_buffers=1024)
    c.send(b"GET /" + b"a" * 600)
    assert c.take() == b""
    c.send(b"a" * 600)
    assert c.take() == error(414, b"Request-URI Too Large")


def test_header_line_longer_than_buffer_is_431():
    c = refused(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: " + b"c" * 1100 + b"\r\n\r\n",
                large_client_header_buffers=1024)
    assert c.take() == error(431, b"Request Header Fields Too Large")
    assert c.closed


def test_unfinished_header_line_longer_than_buffer_is_431():
    c = Connection(ok_length(), large_client_header_buffers=1024)
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: " + b"c" * 600)
    assert c.take() == b""
    c.send(b"c" * 600)
    assert c.take() == error(431, b"Request Header Fields Too Large")


def test_head_larger_than_four_buffers_is_431():
    lines = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 900) for i in range(5))
    c = refused(b"GET / HTTP/1.1\r\nHost: a\r\n" + lines + b"\r\n",
                large_client_header_buffers=1024)
    assert c.take() == error(431, b"Request Header Fields Too Large")


def test_head_just_within_limits_is_accepted():
    lines = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 900) for i in range(3))
    c = Connection(ok_length(), large_client_header_buffers=1024)
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n" + lines + b"\r\n")
    assert len(c.exchanges) == 1


def test_bad_pipelined_request_is_answered_after_the_good_one():
    c = Connection()
    c.send(GET + b"GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n")
    assert c.take() == b""
    exchange = c.exchanges[0]
    exchange.send_head(200, [(b"Content-Length", b"0")])
    exchange.finish()
    assert c.take().endswith(b"Content-Length: 0\r\nConnection: keep-alive\r\n\r\n"
                             + BAD_REQUEST)
    assert c.closed
    assert [e.status for e in c.done] == [200, 400]


def test_refused_request_is_logged_with_best_effort_fields():
    c = refused(b"GET /x?y HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    (exchange,) = c.done
    assert (exchange.status, exchange.request.method, exchange.request.target,
            exchange.request.version, exchange.error_reason) == (
        400, "GET", "/x?y", "1.1", "client sent duplicate host header")
    assert exchange.body_bytes_sent == len(error(400, b"Bad Request").split(b"\r\n\r\n", 1)[1])


@pytest.mark.parametrize("data, status, reason", [
    (b"TRACE / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 405, b"Not Allowed"),
    (b"GET / HTTP/2.0\r\nHost: a\r\nHost: b\r\n\r\n", 505, b"HTTP Version Not Supported"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nhOST: b\r\n\r\n", 400, b"Bad Request"),
], ids=["method-first", "version-first", "any-case"])
def test_duplicate_host_is_refused_after_version_and_method_checks(data, status, reason):
    """Header names are classified as they arrive, but the refusals keep their order."""
    c = refused(data)
    assert c.take() == error(status, reason)
    assert c.closed


def test_host_in_chunked_trailer_is_not_a_duplicate():
    c = Connection(ok_length())
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"0\r\nHost: b\r\n\r\n")
    assert c.exchanges[0].request.host == "a"
    assert not c.closed
