"""HTTP/2 conformance, h2spec style: what a proxy must answer to a misbehaving client.

Each case sends exact frames (built with ``hyperframe``/``hpack``, or with an ``h2``
client whose own checks are switched off) to one ``H2Protocol`` on a
``StringTransport`` and asserts the error RFC 9113 asks for: a connection error is a
GOAWAY with its code and the connection closing, a stream error a RST_STREAM with its
code while the connection lives on (a new request on it is still answered).
"""
from __future__ import annotations

import struct

import pytest
from h2.errors import ErrorCodes
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame, DataFrame, HeadersFrame, PingFrame, RstStreamFrame, WindowUpdateFrame,
)

from gateway.http.h1 import HTTP11Protocol
from tests.http.test_h2 import (
    Client, CountingTransport, NegotiationSetup, ok, responses, server_frames,
)

REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
           (b":authority", b"example.com")]


def connection_error(c: Client):
    """The GOAWAY code when the server ended the connection, else None."""
    frames = server_frames(c.transport)
    goaways = [f for f in frames if isinstance(f, tuple) and f[0] == "GOAWAY"]
    if not goaways or not c.closed:
        return None
    return goaways[-1][2]


def stream_error(c: Client, stream_id: int):
    """The RST_STREAM code the server sent on ``stream_id``, if the connection lives."""
    resets = [f[2] for f in server_frames(c.transport)
              if isinstance(f, tuple) and f[0] == "RST_STREAM" and f[1] == stream_id]
    if c.closed or not resets:
        return None
    return resets[-1]


def still_serves(c: Client) -> bool:
    stream = c.request("/again")
    return responses(c.exchange()).get(stream, [None])[-1] == "end"


def raw_headers(stream_id: int, headers, end_stream: bool = True, end_headers: bool = True,
                encoder: Encoder = None) -> bytes:
    frame = HeadersFrame(stream_id)
    frame.data = (encoder or Encoder()).encode(headers)
    if end_stream:
        frame.flags.add("END_STREAM")
    if end_headers:
        frame.flags.add("END_HEADERS")
    return frame.serialize()


def raw_frame(frame_type: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([frame_type, flags]) + \
        struct.pack(">I", stream_id) + payload


# -- the preface ---------------------------------------------------------------------


def test_bad_preface_on_an_h2_connection_gets_goaway_protocol_error():
    """ALPN chose h2 but the client does not send the preface (RFC 9113 §3.4)."""
    setup = Client(ok())      # for its factory: this connection gets no client preface
    proto = setup.factory.buildProtocol(None)
    transport = CountingTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    frames = server_frames(transport)
    assert frames[-1] == ("GOAWAY", 0, ErrorCodes.PROTOCOL_ERROR)
    assert transport.disconnecting


def test_not_quite_the_preface_on_cleartext_is_an_http11_bad_request():
    s = NegotiationSetup()
    s.proto.dataReceived(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
    assert isinstance(s.proto.chosen, HTTP11Protocol)
    assert s.transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n")


# -- frames on stream 0 and stream ids ----------------------------------------------------


def test_data_on_stream_0_is_a_protocol_error():
    c = Client(ok())
    c.send(raw_frame(0x0, 0, 0, b"x"))
    assert connection_error(c) == ErrorCodes.PROTOCOL_ERROR


def test_headers_on_stream_0_is_a_protocol_error():
    c = Client(ok())
    c.send(raw_frame(0x1, 0x5, 0, Encoder().encode(REQUEST)))
    assert connection_error(c) == ErrorCodes.PROTOCOL_ERROR


def test_rst_stream_on_an_idle_stream_is_a_protocol_error():
    c = Client(ok())
    c.send(RstStreamFrame(5, error_code=0).serialize())
    assert connection_error(c) == ErrorCodes.PROTOCOL_ERROR


def test_even_stream_id_is_a_protocol_error():
    c = Client(ok())
    c.send(raw_headers(2, REQUEST))
    assert connection_error(c) == ErrorCodes.PROTOCOL_ERROR


def test_decreasing_stream_id_is_a_protocol_error():
    c = Client(lambda exchange: None)
    encoder = Encoder()
    c.send(raw_headers(5, REQUEST, encoder=encoder))
    c.send(raw_headers(3, REQUEST, encoder=encoder))
    assert connection_error(c) == ErrorCodes.PROTOCOL_ERROR


def test_data_on_an_idle_stream_is_a_protocol_error():
    c = Client(ok())
    c.send(DataFrame(7, data=b"x").serialize())
    assert connection_error(c) == ErrorCodes.PROTOCOL_ERROR


def test_data_after_end_stream_is_stream_closed():
    c = Client(lambda exchange: None)      # the stream stays half-closed (remote)
    stream = c.request("/")
    c.exchange()
    c.send(DataFrame(stream, data=b"late").serialize())
    code = stream_error(c, stream) or connection_error(c)
    assert code == ErrorCodes.STREAM_CLOSED


# -- flow control --------------------------------------------------------------------------


def test_connection_window_overflow_is_a_flow_control_error():
    c = Client(ok())
    c.send(WindowUpdateFrame(0, window_increment=2 ** 31 - 1).serialize())
    assert connection_error(c) == ErrorCodes.FLOW_CONTROL_ERROR


def test_stream_window_overflow_is_a_stream_flow_control_error():
    c = Client(lambda exchange: None)
    stream = c.request("/")
    c.exchange()
    c.send(WindowUpdateFrame(stream, window_increment=2 ** 31 - 1).serialize())
    assert stream_error(c, stream) == ErrorCodes.FLOW_CONTROL_ERROR


def test_zero_window_increment_is_a_protocol_error():
    c = Client(ok())
    c.send(WindowUpdateFrame(0, window_increment=0).serialize())
    assert connection_error(c) == ErrorCodes.PROTOCOL_ERROR


def test_data_beyond_the_stream_window_is_a_flow_control_error():
    c = Client(lambda exchange: None)
    stream = c.request("/up", method="POST", end=False)
    c.exchange()
    for _ in range(5):      # 5 × 16384 > 65535, never acknowledged: nobody reads
        c.send(DataFrame(stream, data=b"x" * 16384).serialize())
        if c.closed:
            break
    assert connection_error(c) == ErrorCodes.FLOW_CONTROL_ERROR


# -- SETTINGS, PING and frame sizes -------------------------------------------------------


@pytest.mark.parametrize("setting, value, code", [
    (0x2, 2, ErrorCodes.PROTOCOL_ERROR),                 # ENABLE_PUSH not 0/1
    (0x4, 2 ** 31, ErrorCodes.FLOW_CONTROL_ERROR),      # INITIAL_WINDOW_SIZE too large
    (0x5, 16383, ErrorCodes.PROTOCOL_ERROR),             # MAX_FRAME_SIZE too small
    (0x5, 2 ** 24, ErrorCodes.PROTOCOL_ERROR),           # MAX_FRAME_SIZE too large
])
def test_settings_with_bad_values(setting, value, code):
    c = Client(ok())
    c.send(raw_frame(0x4, 0, 0, struct.pack(">HI", setting, value)))
    assert connection_error(c) == code


def test_settings_with_a_length_not_a_multiple_of_6_is_a_frame_size_error():
    c = Client(ok())
    c.send(raw_frame(0x4, 0, 0, b"\0\0\0\0\0"))
    assert connection_error(c) == ErrorCodes.FRAME_SIZE_ERROR


def test_settings_ack_with_payload_is_a_frame_size_error():
    c = Client(ok())
    c.send(raw_frame(0x4, 0x1, 0, struct.pack(">HI", 0x3, 100)))
    assert connection_error(c) == ErrorCodes.FRAME_SIZE_ERROR


def test_settings_on_a_stream_is_a_protocol_error():
    c = Client(ok())
    c.send(raw_frame(0x4, 0, 1, b""))
    assert connection_error(c) == ErrorCodes.PROTOCOL_ERROR


def test_ping_with_wrong_length_is_a_frame_size_error():
    c = Client(ok())
    c.send(raw_frame(0x6, 0, 0, b"1234567"))
    assert connection_error(c) == ErrorCodes.FRAME_SIZE_ERROR


def test_ping_on_a_stream_is_a_protocol_error():
    c = Client(ok())
    c.send(raw_frame(0x6, 0, 1, b"12345678"))
    assert connection_error(c) == ErrorCodes.PROTOCOL_ERROR


def test_ping_is_answered_with_the_same_data():
    c = Client(ok())
    c.send(PingFrame(0, opaque_data=b"abcdefgh").serialize())
    assert not c.closed
    assert "PingFrame" in server_frames(c.transport)


def test_frame_above_max_frame_size_is_a_frame_size_error():
    c = Client(lambda exchange: None)
    stream = c.request("/up", method="POST", end=False)
    c.exchange()
    c.send(raw_frame(0x0, 0, stream, b"x" * 16385))
    assert connection_error(c) == ErrorCodes.FRAME_SIZE_ERROR


# -- header blocks -------------------------------------------------------------------------


def test_continuation_without_headers_is_a_protocol_error():
    c = Client(ok())
    frame = ContinuationFrame(1, data=Encoder().encode(REQUEST))
    frame.flags.add("END_HEADERS")
    c.send(frame.serialize())
    assert connection_error(c) == ErrorCodes.PROTOCOL_ERROR


def test_other_frame_inside_a_header_block_is_a_protocol_error():
    c = Client(ok())
    c.send(raw_headers(1, REQUEST, end_headers=False) + DataFrame(1, data=b"x").serialize())
    assert connection_error(c) == ErrorCodes.PROTOCOL_ERROR


def test_continuation_flood_is_enhance_your_calm():
    """Endless CONTINUATION frames: refused before the block is decoded."""
    c = Client(ok())
    block = Encoder().encode(REQUEST + [(b"x-pad", b"p" * 100)])
    c.send(HeadersFrame(1, data=block[:10]).serialize())     # no END_HEADERS
    for _ in range(40):
        c.send(ContinuationFrame(1, data=b"").serialize())
        if c.closed:
            break
    assert connection_error(c) == ErrorCodes.ENHANCE_YOUR_CALM


def test_huge_header_block_is_enhance_your_calm():
    c = Client(ok())
    c.send(HeadersFrame(1, data=b"\0" * 16000).serialize())
    for _ in range(4):
        c.send(ContinuationFrame(1, data=b"\0" * 16000).serialize())
        if c.closed:
            break
    assert connection_error(c) == ErrorCodes.ENHANCE_YOUR_CALM


def test_undecodable_header_block_is_a_compression_error():
    c = Client(ok())
    frame = HeadersFrame(1, data=b"\xff\xff\xff\xff\x7f")   # an index far past any table
    frame.flags.add("END_HEADERS")
    frame.flags.add("END_STREAM")
    c.send(frame.serialize())
    assert connection_error(c) == ErrorCodes.COMPRESSION_ERROR


def test_header_field_longer_than_a_buffer_is_enhance_your_calm():
    """nginx: "client sent too large header field" → GOAWAY ENHANCE_YOUR_CALM."""
    c = Client(ok(), large_client_header_buffers=1024)
    c.request("/", headers=[(b"x-big", b"v" * 1025)])
    c.send()
    assert connection_error(c) == ErrorCodes.ENHANCE_YOUR_CALM


def test_header_list_above_four_buffers_gets_431():
    c = Client(ok(), large_client_header_buffers=1024)
    stream = c.request("/", headers=[(b"x-%d" % i, b"v" * 1000) for i in range(5)])
    events = responses(c.exchange())[stream]
    assert events[0][1][0] == (b":status", b"431")
    assert events[-1] == "end"
    assert still_serves(c)


MALFORMED = [
    ("uppercase name", REQUEST + [(b"X-Upper", b"1")]),
    ("space in name", REQUEST + [(b"x bad", b"1")]),
    ("colon in name", REQUEST + [(b"x:bad", b"1")]),
    ("NUL in value", REQUEST + [(b"x-a", b"a\0b")]),
    ("CR LF in value", REQUEST + [(b"x-a", b"a\r\nb: c")]),
    ("connection header", REQUEST + [(b"connection", b"keep-alive")]),
    ("keep-alive header", REQUEST + [(b"keep-alive", b"5")]),
    ("transfer-encoding header", REQUEST + [(b"transfer-encoding", b"chunked")]),
    ("upgrade header", REQUEST + [(b"upgrade", b"h2c")]),
    ("TE other than trailers", REQUEST + [(b"te", b"gzip")]),
    ("pseudo-header after a regular one", [REQUEST[0], (b"accept", b"*/*"), *REQUEST[1:]]),
    ("unknown pseudo-header", [*REQUEST[:1], (b":foo", b"bar"), *REQUEST[1:]]),
    ("response pseudo-header", [*REQUEST[:1], (b":status", b"200"), *REQUEST[1:]]),
    ("no :method", REQUEST[1:]),
    ("no :scheme", [REQUEST[0], *REQUEST[2:]]),
    ("no :path", [*REQUEST[:2], REQUEST[3]]),
    ("empty :path", [*REQUEST[:2], (b":path", b""), REQUEST[3]]),
    ("duplicate :path", [*REQUEST[:3], (b":path", b"/x"), REQUEST[3]]),
    ("duplicate :method", [REQUEST[0], REQUEST[0], *REQUEST[1:]]),
    ("CONNECT with :path", [(b":method", b"CONNECT"), (b":scheme", b"http"),
                            (b":path", b"/"), (b":authority", b"example.com:443")]),
    ("Host naming another authority", REQUEST + [(b"host", b"other.example")]),
    ("content-length without a body", REQUEST + [(b"content-length", b"5")]),
]


@pytest.mark.parametrize("why, headers", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_request_is_a_stream_protocol_error(why, headers):
    """RFC 9113 §8.1.1: a malformed request is a stream error of type PROTOCOL_ERROR;
    the connection serves on."""
    handled = []
    c = Client(handled.append)
    c.h2.send_headers(1, headers, end_stream=True)
    c.send()
    assert stream_error(c, 1) == ErrorCodes.PROTOCOL_ERROR
    assert handled == []
    c.handler = ok()
    assert still_serves(c)


def test_trailers_with_a_pseudo_header_are_a_stream_protocol_error():
    c = Client(lambda exchange: None)
    stream = c.request("/up", method="POST", body=b"abc", end=False)
    c.exchange()
    c.h2.send_headers(stream, [(b":path", b"/x")], end_stream=True)
    c.send()
    assert stream_error(c, stream) == ErrorCodes.PROTOCOL_ERROR


def test_request_with_too_much_data_for_its_content_length_is_a_protocol_error():
    c = Client(lambda exchange: None)
    stream = c.request("/up", method="POST", headers=[(b"content-length", b"2")],
                       end=False)
    c.exchange()
    c.send(DataFrame(stream, data=b"abc").serialize())
    code = stream_error(c, stream) or connection_error(c)
    assert code == ErrorCodes.PROTOCOL_ERROR


def test_request_ending_short_of_its_content_length_is_a_protocol_error():
    c = Client(lambda exchange: None)
    stream = c.request("/up", method="POST", headers=[(b"content-length", b"5")],
                       end=False)
    c.exchange()
    frame = DataFrame(stream, data=b"abc")
    frame.flags.add("END_STREAM")
    c.send(frame.serialize())
    code = stream_error(c, stream) or connection_error(c)
    assert code == ErrorCodes.PROTOCOL_ERROR
