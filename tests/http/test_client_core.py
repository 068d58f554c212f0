"""Transcripts for the sans-IO response reader: bytes in, events out, asserted exactly."""
from __future__ import annotations

import pytest

from gateway.http._client_core import (
    MSG_CL_AND_TE,
    MSG_CLOSED_BODY,
    MSG_CLOSED_HEADER,
    MSG_DUPLICATE_CL,
    MSG_INVALID_CHUNKED,
    MSG_INVALID_HEADER,
    MSG_NO_VALID_HEADER,
    MSG_TOO_BIG_HEADER,
    MSG_UNKNOWN_TE,
    RESPONSE_END,
    ResponseHead,
    ResponseReader,
    UpstreamError,
)


def run(chunks, method="GET", eof=False, reader=None):
    """Feed ``chunks`` (and EOF) to a reader started for ``method``; all events."""
    reader = reader or ResponseReader()
    reader.start(method)
    events = []
    for chunk in chunks:
        events.extend(reader.feed(chunk))
    if eof:
        events.extend(reader.feed_eof())
    return reader, events


def head(status=200, reason=b"OK", headers=(), content_length=None, chunked=False,
         keep_alive=True, version="1.1"):
    return ResponseHead(status, reason, version, list(headers), content_length, chunked,
                        keep_alive)


def invalid(message):
    return UpstreamError("invalid_header", message, nothing_received=False)


# -- Content-Length ------------------------------------------------------------------


def test_content_length_response_is_delivered_and_reusable():
    reader, events = run([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"])
    assert events == [
        head(headers=[(b"Content-Length", b"5"), (b"X-A", b"b")], content_length=5),
        b"hello",
        RESPONSE_END,
    ]
    assert reader.reusable


def test_head_and_body_split_anywhere_give_the_same_events():
    """Feeding byte by byte: the reason accumulates; body pieces come as they arrive."""
    raw = b"HTTP/1.1 201 Created Here\r\nContent-Length: 3\r\n\r\nabc"
    reader, events = run([raw[i:i + 1] for i in range(len(raw))])
    assert events == [
        head(201, b"Created Here", [(b"Content-Length", b"3")], content_length=3),
        b"a", b"b", b"c",
        RESPONSE_END,
    ]
    assert reader.reusable


def test_bytes_after_content_length_are_dropped_and_forbid_reuse():
    """nginx: "upstream sent more data than specified in Content-Length header"."""
    reader, events = run([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA"])
    assert events == [head(headers=[(b"Content-Length", b"5")], content_length=5),
                      b"hello", RESPONSE_END]
    assert reader.extra
    assert not reader.reusable


def test_a_second_response_after_the_first_forbids_reuse():
    reader, events = run([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                          b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    assert events == [head(headers=[(b"Content-Length", b"0")], content_length=0),
                      RESPONSE_END]
    assert not reader.reusable


def test_bytes_in_a_later_chunk_after_the_end_forbid_reuse():
    reader, events = run([b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", b"junk"])
    assert events[-1] is RESPONSE_END
    assert not reader.reusable


def test_eof_before_content_length_is_an_error_after_the_head():
    reader, events = run([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel"], eof=True)
    assert events == [
        head(headers=[(b"Content-Length", b"10")], content_length=10),
        b"hel",
        UpstreamError("error", MSG_CLOSED_BODY, response_started=True),
    ]
    assert not reader.reusable


# -- responses without a body ------------------------------------------------------------


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body_whatever_content_length_says(status):
    reader, events = run([b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\n" % status])
    assert events == [head(status, b"X", [(b"Content-Length", b"5")], content_length=0),
                      RESPONSE_END]
    assert reader.reusable


def test_head_response_has_no_body_and_the_next_response_parses():
    reader, events = run([b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"], method="HEAD")
    assert events == [head(headers=[(b"Content-Length", b"1234")], content_length=0),
                      RESPONSE_END]
    assert reader.reusable
    _, events = run([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], reader=reader)
    assert events == [head(headers=[(b"Content-Length", b"2")], content_length=2),
                      b"ok", RESPONSE_END]
    assert reader.reusable


def test_head_response_without_length_is_still_reusable():
    reader, events = run([b"HTTP/1.1 200 OK\r\n\r\n"], method="HEAD")
    assert events == [head(content_length=0), RESPONSE_END]
    assert reader.reusable


def test_head_response_followed_by_a_body_forbids_reuse():
    reader, events = run([b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"], method="HEAD")
    assert events == [head(headers=[(b"Content-Length", b"4")], content_length=0),
                      RESPONSE_END]
    assert not reader.reusable


def test_interim_100_continue_is_skipped():
    reader, events = run([b"HTTP/1.1 100 Continue\r\n\r\n",
                          b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    assert events == [head(headers=[(b"Content-Length", b"2")], content_length=2),
                      b"ok", RESPONSE_END]
    assert reader.reusable


def test_interim_103_with_headers_is_skipped_in_the_same_chunk():
    reader, events = run([b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                          b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    assert events == [head(headers=[(b"Content-Length", b"0")], content_length=0),
                      RESPONSE_END]


# -- chunked --------------------------------------------------------------------------


def test_chunked_body_is_decoded_and_reusable():
    reader, events = run([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"5\r\nhello\r\n", b"6\r\n world\r\n0\r\n\r\n"])
    assert events == [head(headers=[(b"Transfer-Encoding", b"chunked")], chunked=True),
                      b"hello", b" world", RESPONSE_END]
    assert reader.reusable


def test_malformed_chunk_is_an_error_after_the_head():
    reader, events = run([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"5\r\nhelloXX\r\n0\r\n\r\n"])
    assert events == [head(headers=[(b"Transfer-Encoding", b"chunked")], chunked=True),
                      b"hello",
                      UpstreamError("error", MSG_INVALID_CHUNKED, response_started=True)]
    assert not reader.reusable


def test_eof_inside_chunked_body_is_an_error():
    _, events = run([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"],
                    eof=True)
    assert events[-1] == UpstreamError("error", MSG_CLOSED_BODY, response_started=True)


def test_data_after_the_last_chunk_forbids_reuse():
    reader, events = run([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"0\r\n\r\nHTTP/1.1 200"])
    assert events[-1] is RESPONSE_END
    assert not reader.reusable


# -- close-delimited and keepalive ------------------------------------------------------


def test_response_without_length_is_close_delimited_and_not_reusable():
    reader, events = run([b"HTTP/1.1 200 OK\r\n\r\nsome", b" data"], eof=True)
    assert events == [head(keep_alive=False), b"some", b" data", RESPONSE_END]
    assert reader.complete
    assert not reader.reusable


def test_connection_close_is_not_reusable():
    reader, events = run([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"])
    assert events == [head(headers=[(b"Connection", b"close"), (b"Content-Length", b"0")],
                           content_length=0, keep_alive=False), RESPONSE_END]
    assert not reader.reusable


def test_http_10_without_keep_alive_is_not_reusable():
    reader, events = run([b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"])
    assert events == [head(headers=[(b"Content-Length", b"0")], content_length=0,
                           keep_alive=False, version="1.0"), RESPONSE_END]
    assert not reader.reusable


def test_http_10_with_keep_alive_is_reusable():
    reader, _ = run([b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n"])
    assert reader.reusable


# -- invalid heads ----------------------------------------------------------------------


@pytest.mark.parametrize("raw, message", [
    (b"garbage\r\n\r\n", MSG_NO_VALID_HEADER),
    (b"RTSP/1.0 200 OK\r\n\r\n", MSG_NO_VALID_HEADER),
    (b"HTTP/1.1 20 OK\r\n\r\n", MSG_NO_VALID_HEADER),
    (b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n", MSG_INVALID_HEADER),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", MSG_DUPLICATE_CL),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
     MSG_CL_AND_TE),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
     MSG_CL_AND_TE),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", MSG_UNKNOWN_TE),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", MSG_INVALID_HEADER),
])
def test_invalid_heads_are_invalid_header_before_any_head(raw, message):
    reader, events = run([raw])
    assert events == [invalid(message)]
    assert not reader.reusable
    assert reader.feed(b"more") == []


def test_too_big_head_is_invalid_header_even_when_streamed():
    reader = ResponseReader(max_head_size=100)
    reader.start("GET")
    assert reader.feed(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 60) == []
    assert reader.feed(b"a" * 60) == [invalid(MSG_TOO_BIG_HEADER)]


def test_too_big_head_in_one_chunk_is_invalid_header():
    reader = ResponseReader(max_head_size=100)
    _, events = run([b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200 + b"\r\n\r\n"], reader=reader)
    assert events == [invalid(MSG_TOO_BIG_HEADER)]


# -- EOF before the head ----------------------------------------------------------------


def test_eof_before_any_byte_is_nothing_received():
    _, events = run([], eof=True)
    assert events == [UpstreamError("error", MSG_CLOSED_HEADER, nothing_received=True)]


def test_eof_inside_the_head_is_an_error_with_something_received():
    _, events = run([b"HTTP/1.1 200 OK\r\n"], eof=True)
    assert events == [UpstreamError("error", MSG_CLOSED_HEADER, nothing_received=False)]


def test_101_is_delivered_with_the_bytes_that_follow_and_never_reused():
    reader, events = run([b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          b"Connection: upgrade\r\n\r\n\x81\x00"])
    assert events == [head(101, b"Switching Protocols",
                           [(b"Upgrade", b"websocket"), (b"Connection", b"upgrade")],
                           keep_alive=False), RESPONSE_END]
    assert reader.upgrade_data == b"\x81\x00"
    assert not reader.reusable
