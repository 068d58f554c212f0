"""The ``grpc_pass`` location handler: framing, ``grpc-timeout``, responses, flow control.

The wire-format helpers are tested as plain functions. The handler runs on the real
HTTP/2 server protocol (``H2Protocol`` on a ``StringTransport`` with a ``task.Clock``,
driven by an ``h2`` client: :class:`tests.http.test_h2.Client`) against a recording
fake relay, so what is asserted is what a gRPC client decodes. No reactor, no sockets.
"""
from __future__ import annotations

import base64
import gzip
import struct
import zlib

import pytest
from h2.settings import SettingCodes
from twisted.internet import defer

from gateway.config.model import GrpcPass, LocationSettings
from gateway.grpc_pass.location import (
    DEFAULT_MAX_MESSAGE, FramingError, GrpcPassHandler, MessageReader,
    encode_grpc_message, frame, parse_timeout,
)
from gateway.grpc_pass.channels import MAX_MESSAGE
from gateway.grpc_pass.relay import GrpcTarget
from gateway.http.h2 import STREAM_BUFFER
from tests.http.test_h2 import DATE, START, Client, responses, server_frames

GRPC_HEADERS = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]


def message(payload: bytes, compressed: int = 0) -> bytes:
    return struct.pack(">BI", compressed, len(payload)) + payload


# -- grpc-timeout ---------------------------------------------------------------------


@pytest.mark.parametrize("value, seconds", [
    (b"1H", 3600.0), (b"2M", 120.0), (b"5S", 5.0), (b"100m", 0.1), (b"250u", 0.00025),
    (b"7n", 7e-9), (b"99999999S", 99999999.0), (b"0m", 0.0),
])
def test_grpc_timeout_units_follow_the_spec(value, seconds):
    assert parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [
    b"", b"S", b"5", b"123456789S", b"1.5S", b"-1S", b"5s", b"5 S", b"5x", b"\xff\xffS",
])
def test_invalid_grpc_timeouts_are_ignored(value):
    """At most 8 digits and one of H M S m u n; anything else means no deadline."""
    assert parse_timeout(value) is None


# -- message framing --------------------------------------------------------------------


def test_messages_are_parsed_whatever_the_chunking():
    data = message(b"hello") + message(b"") + message(b"x" * 70000)
    whole = MessageReader().feed(data)
    reader = MessageReader()
    pieces = []
    for i in range(len(data)):
        pieces += reader.feed(data[i:i + 1])
    reader.end()
    assert whole == pieces == [b"hello", b"", b"x" * 70000]


def test_a_declared_length_above_the_limit_is_resource_exhausted_at_once():
    """The prefix alone is enough: the message's bytes are never buffered."""
    reader = MessageReader(max_message=10)
    assert reader.feed(message(b"0123456789")) == [b"0123456789"]
    with pytest.raises(FramingError) as e:
        reader.feed(struct.pack(">BI", 0, 11))
    assert (e.value.code, e.value.message) == (
        8, "Received message larger than max (11 vs. 10)")


def test_default_limit_is_16_mib_as_on_the_upstream_channels():
    assert DEFAULT_MAX_MESSAGE == MAX_MESSAGE == 16 * 1024 * 1024
    assert MessageReader().feed(struct.pack(">BI", 0, 16 * 1024 * 1024)) == []
    with pytest.raises(FramingError):
        MessageReader().feed(struct.pack(">BI", 0, 16 * 1024 * 1024 + 1))


def test_a_body_ending_inside_a_message_is_internal():
    reader = MessageReader()
    assert reader.feed(message(b"hello")[:-1]) == []
    with pytest.raises(FramingError) as e:
        reader.end()
    assert e.value.code == 13


def test_an_invalid_compressed_flag_is_internal():
    with pytest.raises(FramingError) as e:
        MessageReader().feed(message(b"x", compressed=2))
    assert (e.value.code, e.value.message) == (13, "Invalid compressed flag 2")


def test_gzip_and_deflate_messages_are_decompressed():
    assert MessageReader(encoding=b"gzip").feed(
        message(gzip.compress(b"zipped"), 1) + message(b"plain")) == [b"zipped", b"plain"]
    assert MessageReader(encoding=b"deflate").feed(
        message(zlib.compress(b"deflated"), 1)) == [b"deflated"]


@pytest.mark.parametrize("encoding, code", [
    (None, 13), (b"identity", 13), (b"snappy", 12),
])
def test_a_compressed_message_needs_a_known_encoding(encoding, code):
    with pytest.raises(FramingError) as e:
        MessageReader(encoding=encoding).feed(message(b"\x00\x01", 1))
    assert e.value.code == code


def test_decompression_stops_at_the_limit():
    """A small compressed message that inflates past the limit is refused while
    inflating (a decompression bomb never grows past the limit)."""
    bomb = gzip.compress(b"\0" * 100000)
    with pytest.raises(FramingError) as e:
        MessageReader(max_message=1000, encoding=b"gzip").feed(message(bomb, 1))
    assert e.value.code == 8


def test_frame_is_the_uncompressed_prefix():
    assert frame(b"abc") == b"\x00\x00\x00\x00\x03"


def test_grpc_message_is_percent_encoded_utf8():
    assert encode_grpc_message("plain text: ok") == b"plain text: ok"
    assert encode_grpc_message("50% d\u00e9j\u00e0 vu\n\u2603") == (
        b"50%25 d%C3%A9j%C3%A0 vu%0A%E2%98%83")


# -- the handler on the HTTP/2 protocol -------------------------------------------------


class FakeCall:
    """What ``relay.start`` returns; ``send`` succeeds at once while ``auto``, else
    returns a pending Deferred (kept in ``pending``). ``attempts.tried`` are the peers
    the relay tried."""

    def __init__(self, relay):
        self.relay = relay
        self.pending: list = []
        self.auto = True
        self.attempts = Attempts()

    def send(self, payload):
        self.relay.events.append(("send", payload))
        if self.auto:
            return defer.succeed(None)
        d = defer.Deferred()
        self.pending.append(d)
        return d

    def done_sending(self):
        self.relay.events.append("done_sending")

    def cancel(self, *status):
        self.relay.events.append("cancel")
        self.cancelled_with = status      # (code, details) when the gateway answered


class Peer:
    def __init__(self, name):
        self.name = name


class Attempts:
    def __init__(self):
        self.tried: list = []


class FakeRelay:
    """Records every call; ``on_start(sink)`` may answer synchronously."""

    def __init__(self, on_start=None):
        self.events: list = []
        self.started: list = []
        self.on_start = on_start
        self.sink = None
        self.call = None

    def start(self, target, method, metadata, timeout, sink, client_addr):
        self.started.append((target, method, metadata, timeout, client_addr))
        self.sink = sink
        self.call = FakeCall(self)
        if self.on_start is not None:
            self.on_start(sink)
        return self.call


class Metrics:
    def __init__(self):
        self.calls: list = []

    def grpc_call(self, status):
        self.calls.append(status)


def grpc_location(**grpc) -> LocationSettings:
    return LocationSettings(path="/", modifier="", pattern="/",
                            grpc_pass=GrpcPass(scheme="grpc", upstream="app", **grpc))


def setup(relay=None, location=None, client_settings=None, **server):
    relay = relay or FakeRelay()
    metrics = Metrics()
    handler = GrpcPassHandler(location or grpc_location(), relay, clock=None,
                              make_target=GrpcTarget, metrics=metrics)
    c = Client(None, settings=client_settings, **server)
    handler.clock = c.clock
    c.handler = handler
    return c, relay, metrics


def call(c, body=b"", headers=GRPC_HEADERS, path="/pkg.Echo/Say", end=True,
         method="POST"):
    stream = c.request(path, method=method, headers=headers,
                       body=body if body or not end else None, end=end)
    return stream


def trailers_only(status: int, message: bytes = None, *extra):
    fields = [(b":status", b"200"), (b"server", b"gateway"), (b"date", DATE),
              (b"content-type", b"application/grpc"), (b"grpc-status", b"%d" % status)]
    if message is not None:
        fields.append((b"grpc-message", message))
    return ("HEADERS", 1, fields + list(extra), True)


def test_a_unary_call_reaches_the_relay_and_its_answer_the_client():
    """Method, metadata (transport fields dropped, -bin decoded), target and client
    address go to relay.start; the request message to send(), the half-close after
    it; initial metadata is sent at once, then the message, then trailers."""
    c, relay, metrics = setup()
    headers = GRPC_HEADERS + [
        (b"user-agent", b"grpc-python/1.85"), (b"x-token", b"abc"),
        (b"trace-bin", base64.b64encode(b"\x00\x01\x02").rstrip(b"=")),
        (b"grpc-accept-encoding", b"identity,gzip"),
    ]
    stream = call(c, message(b"ping"), headers=headers)
    c.send()
    assert relay.started == [(
        GrpcTarget(group="app", tls=False, next_upstream=("error", "timeout"), tries=0,
                   next_upstream_timeout=0.0, read_timeout=None),
        "/pkg.Echo/Say",
        [("user-agent", "grpc-python/1.85"), ("x-token", "abc"),
         ("trace-bin", b"\x00\x01\x02")],
        None, "10.0.0.7")]
    assert relay.events == [("send", b"ping"), "done_sending"]

    relay.sink.initial_metadata([("x-initial", "1"), ("blob-bin", b"\xff\x00")])
    assert responses(c.receive()) == {stream: [("headers", [
        (b":status", b"200"), (b"server", b"gateway"), (b"date", DATE),
        (b"content-type", b"application/grpc"), (b"x-initial", b"1"),
        (b"blob-bin", b"/wA")])]}
    assert relay.sink.message(b"pong") is None
    relay.sink.end(0, "", [("x-trailer", "t"), ("detail-bin", b"\x01")])
    assert responses(c.receive()) == {stream: [
        ("data", message(b"pong")),
        ("trailers", [(b"grpc-status", b"0"), (b"x-trailer", b"t"),
                      (b"detail-bin", b"AQ")]),
        "end"]}
    assert metrics.calls == []       # the relay counts the calls it started
    assert c.done[0].status == 200


def test_an_error_before_initial_metadata_is_one_trailers_only_headers_frame():
    """:status 200, content-type, grpc-status and grpc-message in a single HEADERS
    frame with END_STREAM (the gRPC spec's Trailers-Only)."""
    c, relay, _ = setup()
    call(c, message(b"ping"))
    c.send()
    relay.sink.end(14, "no live upstreams (upstream \"app\")", [("retry-after", "1")])
    frames = [f for f in server_frames(c.transport) if f[0] in ("HEADERS", "DATA")]
    assert frames == [trailers_only(14, b"no live upstreams (upstream \"app\")",
                                    (b"retry-after", b"1"))]


def test_a_relay_that_ends_the_call_at_once_gets_no_body_read():
    c, relay, metrics = setup(FakeRelay(lambda sink: sink.end(14, "no live upstreams", [])))
    call(c, message(b"ping"))
    c.send()
    assert relay.events == []
    frames = [f for f in server_frames(c.transport) if f[0] == "HEADERS"]
    assert frames == [trailers_only(14, b"no live upstreams")]


def test_trailer_details_are_percent_encoded():
    c, relay, _ = setup()
    stream = call(c, message(b""))
    c.send()
    relay.sink.initial_metadata([])
    relay.sink.end(3, "bad value: 100% \u00fcnicode", [])
    assert responses(c.receive())[stream][-2:] == [
        ("trailers", [(b"grpc-status", b"3"),
                      (b"grpc-message", b"bad value: 100%25 %C3%BCnicode")]), "end"]


@pytest.mark.parametrize("method, headers, answer", [
    ("GET", GRPC_HEADERS, (2, b"Bad method header")),
    ("PUT", GRPC_HEADERS, (2, b"Bad method header")),
    ("POST", [(b"content-type", b"application/grpc")], (2, b"Missing :te header")),
])
def test_requests_grpc_core_refuses_get_its_answer(method, headers, answer):
    """What nginx in front of a grpcio server answers: grpc-core's UNKNOWN status."""
    c, relay, metrics = setup()
    call(c, method=method, headers=headers)
    c.send()
    assert relay.started == []
    frames = [f for f in server_frames(c.transport) if f[0] == "HEADERS"]
    assert frames == [trailers_only(*answer)]
    assert metrics.calls == ["UNKNOWN"]    # never reached the relay: counted here


@pytest.mark.parametrize("content_type", [
    b"application/grpc", b"application/grpc+proto", b"application/grpc+json",
    b"application/grpc;charset=utf-8", b"Application/GRPC",
])
def test_grpc_content_types_are_accepted(content_type):
    c, relay, _ = setup()
    call(c, message(b"x"), headers=[(b"content-type", content_type), (b"te", b"trailers")])
    c.send()
    assert len(relay.started) == 1


@pytest.mark.parametrize("headers", [
    [(b"te", b"trailers")],
    [(b"content-type", b"application/json"), (b"te", b"trailers")],
    [(b"content-type", b"application/grpc-web"), (b"te", b"trailers")],
])
def test_other_content_types_get_415(headers):
    """PROTOCOL-HTTP2.md: a server answers a non-gRPC content type with HTTP 415."""
    c, relay, _ = setup()
    stream = call(c, message(b"x"), headers=headers)
    events = responses(c.exchange())[stream]
    assert events[0][1][0] == (b":status", b"415")
    assert relay.started == []


def test_grpc_timeout_is_the_time_left_for_the_call():
    c, relay, _ = setup()
    call(c, message(b"x"), headers=GRPC_HEADERS + [(b"grpc-timeout", b"1500m")])
    c.send()
    assert relay.started[0][3] == pytest.approx(1.5)
    assert "grpc-timeout" not in dict(relay.started[0][2])


def test_grpc_read_timeout_and_tries_reach_the_target():
    c, relay, _ = setup(location=LocationSettings(
        path="/", modifier="", pattern="/",
        grpc_pass=GrpcPass(scheme="grpcs", upstream="backend", read_timeout=2.0,
                           next_upstream=frozenset({"error", "unavailable"}),
                           next_upstream_tries=3, next_upstream_timeout=5.0)))
    call(c, message(b"x"))
    c.send()
    assert relay.started[0][0] == GrpcTarget(
        group="backend", tls=True, next_upstream=("error", "unavailable"), tries=3,
        next_upstream_timeout=5.0, read_timeout=2.0)


def test_grpc_set_header_overrides_and_removes_metadata():
    location = grpc_location(set_header=(("x-token", ""), ("x-client", "$remote_addr"),
                                         ("x-static-bin", "AAE=")))
    c, relay, _ = setup(location=location)
    call(c, message(b"x"), headers=GRPC_HEADERS + [(b"x-token", b"secret"),
                                                   (b"x-client", b"spoofed")])
    c.send()
    assert relay.started[0][2] == [("x-client", "10.0.0.7"), ("x-static-bin", b"\x00\x01")]


def test_grpc_hide_header_drops_peer_metadata():
    c, relay, _ = setup(location=grpc_location(hide_header=("x-internal",)))
    stream = call(c, message(b"x"))
    c.send()
    relay.sink.initial_metadata([("x-internal", "1"), ("x-public", "2")])
    relay.sink.end(0, "", [("x-internal", "3")])
    events = responses(c.receive())[stream]
    assert (b"x-internal", b"1") not in events[0][1]
    assert (b"x-public", b"2") in events[0][1]
    assert events[1] == ("trailers", [(b"grpc-status", b"0")])


def test_one_request_message_in_flight_pauses_the_client_body():
    """While send() is pending, no further body is read (the stream window stays
    closed); the half-close goes after the last message was sent."""
    c, relay, _ = setup()
    stream = call(c, message(b"one") + message(b"two"), end=False)
    c.send()
    relay_call = relay.call
    assert relay.events == [("send", b"one"), ("send", b"two")]   # sent at once
    relay_call.auto = False             # from now on each send hangs until fired
    c.h2.send_data(stream, message(b"three") + message(b"four"))
    c.send()
    assert relay.events == [("send", b"one"), ("send", b"two"), ("send", b"three")]
    exchange = c.exchanges[0]
    assert exchange._body_paused
    c.h2.send_data(stream, message(b"five"), end_stream=True)
    c.send()
    assert relay.events[-1] == ("send", b"three")       # nothing more while pending
    relay_call.auto = True
    relay_call.pending.pop(0).callback(None)
    assert relay.events[3:] == [("send", b"four"), ("send", b"five"), "done_sending"]


def test_a_message_above_the_limit_cancels_the_call_with_resource_exhausted():
    c, relay, metrics = setup()
    call(c, struct.pack(">BI", 0, DEFAULT_MAX_MESSAGE + 1), end=False)
    c.send()
    assert relay.events == ["cancel"]
    # the relay ends (and counts) the call with the status the client gets
    assert relay.call.cancelled_with == (
        8, "Received message larger than max (16777217 vs. 16777216)")
    frames = [f for f in server_frames(c.transport) if f[0] == "HEADERS"]
    assert frames == [trailers_only(
        8, b"Received message larger than max (16777217 vs. 16777216)")]


def test_a_body_above_client_max_body_size_is_resource_exhausted_not_413():
    c, relay, metrics = setup(client_max_body_size=100)
    stream = call(c, message(b"x" * 60), end=False)
    c.send()
    relay.sink.initial_metadata([])
    c.receive()
    c.h2.send_data(stream, message(b"y" * 60))
    events = responses(c.exchange())[stream]
    # (the stream is then reset with NO_ERROR: the client may stop sending)
    assert events == [("trailers", [(b"grpc-status", b"8"), (
        b"grpc-message", b"Request larger than client_max_body_size")]), "end",
        ("reset", 0)]
    assert relay.events == [("send", b"x" * 60), "cancel"]


def test_an_unsupported_compression_is_unimplemented_with_accepted_encodings():
    c, relay, _ = setup()
    call(c, message(b"\x00", 1), headers=GRPC_HEADERS + [(b"grpc-encoding", b"snappy")])
    c.send()
    frames = [f for f in server_frames(c.transport) if f[0] == "HEADERS"]
    assert frames == [trailers_only(12, b"Compression algorithm 'snappy' is not supported",
                                    (b"grpc-accept-encoding", b"identity,deflate,gzip"))]


def test_compressed_request_messages_reach_the_relay_decompressed():
    c, relay, _ = setup()
    call(c, message(gzip.compress(b"hello"), 1),
         headers=GRPC_HEADERS + [(b"grpc-encoding", b"gzip")])
    c.send()
    assert relay.events == [("send", b"hello"), "done_sending"]
    # the relay compresses the upstream hop as the client did
    assert relay.started[0][2] == [("grpc-encoding", "gzip")]


def test_a_client_reset_cancels_the_call_once():
    c, relay, metrics = setup()
    stream = call(c, message(b"x"), end=False)
    c.send()
    relay.sink.initial_metadata([])
    c.h2.reset_stream(stream)
    c.send()
    assert relay.events == [("send", b"x"), "cancel"]
    assert relay.call.cancelled_with == ()       # a plain cancel: CANCELLED
    relay.sink.end(1, "Cancelled", [])       # whatever the relay still reports
    assert relay.sink.message(b"late") is None
    assert c.done[0].status == 200


def test_connection_loss_cancels_the_call():
    c, relay, metrics = setup()
    call(c, message(b"x"), end=False)
    c.send()
    c.proto.connectionLost(None)
    assert relay.events == [("send", b"x"), "cancel"]
    assert relay.call.cancelled_with == ()       # a plain cancel: CANCELLED
    assert c.done[0].status == 499


def test_a_slow_client_makes_message_return_a_deferred_until_drained():
    """A response message beyond the stream's buffer (the client's window is small)
    returns a Deferred that fires once the client reads it."""
    c, relay, _ = setup(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    stream = call(c, message(b"x"))
    c.send()
    c.receive()
    relay.sink.initial_metadata([])
    assert relay.sink.message(b"a" * 10) is None
    waiting = relay.sink.message(b"b" * (2 * STREAM_BUFFER))
    assert isinstance(waiting, defer.Deferred) and not waiting.called
    received = 0
    for _ in range(200):
        events = c.receive()
        for event in events:
            length = getattr(event, "flow_controlled_length", 0)
            if length:
                received += length
                c.h2.acknowledge_received_data(length, stream)
        c.send()
        if waiting.called:
            break
    assert waiting.called
    # it fired when the last bytes went out, not before the client read most of them
    assert received > STREAM_BUFFER
    received += sum(getattr(event, "flow_controlled_length", 0) for event in c.receive())
    assert received == 15 + 5 + 2 * STREAM_BUFFER


def test_end_releases_a_pending_drain():
    c, relay, _ = setup(client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    call(c, message(b"x"))
    c.send()
    relay.sink.initial_metadata([])
    waiting = relay.sink.message(b"b" * (2 * STREAM_BUFFER))
    relay.sink.end(0, "", [])
    assert waiting.called


def test_a_message_before_initial_metadata_sends_an_empty_head():
    c, relay, _ = setup()
    stream = call(c, message(b"x"))
    c.send()
    c.receive()
    relay.sink.message(b"hi")
    relay.sink.end(0, "", [])
    events = responses(c.receive())[stream]
    assert events[0][1][3] == (b"content-type", b"application/grpc")
    assert events[1:] == [("data", message(b"hi")),
                          ("trailers", [(b"grpc-status", b"0")]), "end"]


def test_start_time_counts_against_the_deadline():
    c, relay, _ = setup()
    handler = c.handler
    original = handler.__call__

    def late(exchange):
        c.clock.advance(0.25)
        original(exchange)

    c.handler = late
    call(c, message(b"x"), headers=GRPC_HEADERS + [(b"grpc-timeout", b"1S")])
    c.send()
    assert relay.started[0][3] == pytest.approx(0.75)
    assert c.clock.seconds() == pytest.approx(START + 0.25)


# -- HTTP/1.1: relayed as nginx relays it -------------------------------------------------


def h1_setup(relay):
    from tests.http.test_h1 import Connection
    handler = GrpcPassHandler(grpc_location(), relay, clock=None,
                              make_target=GrpcTarget, metrics=Metrics())
    c = Connection(None)
    handler.clock = c.clock
    c.handler = handler
    return c


def test_http11_with_te_trailers_is_a_call_with_a_chunked_trailer_section():
    relay = FakeRelay()
    c = h1_setup(relay)
    body = message(b"ping")
    c.send(b"POST /pkg.Echo/Say HTTP/1.1\r\nHost: example.com\r\nTE: trailers\r\n"
           b"Content-Type: application/grpc\r\nContent-Length: %d\r\n\r\n" % len(body)
           + body)
    assert relay.events == [("send", b"ping"), "done_sending"]
    assert relay.started[0][2] == []         # host, te, content-* are not metadata
    relay.sink.initial_metadata([("x-a", "1")])
    relay.sink.message(b"pong")
    relay.sink.end(0, "", [])
    assert c.take() == (
        b"HTTP/1.1 200 OK\r\nServer: gateway\r\nDate: " + DATE + b"\r\n"
        b"content-type: application/grpc\r\nx-a: 1\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: keep-alive\r\n\r\n"
        b"9\r\n" + message(b"pong") + b"\r\n0\r\ngrpc-status: 0\r\n\r\n")


def test_http11_without_te_trailers_gets_grpc_cores_answer():
    relay = FakeRelay()
    c = h1_setup(relay)
    c.send(b"POST /pkg.Echo/Say HTTP/1.1\r\nHost: example.com\r\n"
           b"Content-Type: application/grpc\r\nContent-Length: 0\r\n\r\n")
    assert relay.started == []
    response = c.take()
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"grpc-status: 2\r\ngrpc-message: Missing :te header\r\n" in response


# -- $upstream_* ---------------------------------------------------------------------------


def test_upstream_variables_name_every_tried_peer():
    c, relay, _ = setup()
    call(c, message(b"x"))
    c.send()
    relay.call.attempts.tried += [Peer("127.0.0.1:1"), Peer("127.0.0.1:2")]
    c.clock.advance(0.25)
    relay.sink.initial_metadata([])
    c.clock.advance(0.5)
    relay.sink.end(0, "", [])
    state = c.done[0].variables["upstream"]
    assert (state.addrs, state.statuses, state.header_times, state.response_times) == (
        ["127.0.0.1:1", "127.0.0.1:2"], ["-", "200"], ["-", "0.250"], ["-", "0.750"])


def test_upstream_addr_is_the_group_when_no_peer_was_tried():
    c, relay, _ = setup()
    call(c, message(b"x"))
    c.send()
    relay.sink.end(14, "no live upstreams", [])
    state = c.done[0].variables["upstream"]
    assert (state.addrs, state.statuses, state.response_times) == (["app"], ["-"], ["0.000"])
