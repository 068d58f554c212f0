"""WebSocket over HTTP/2 (RFC 8441) as transcripts: an ``h2`` client connection on one
``H2Protocol`` (a ``StringTransport``), a real upstream connection on another, and a
handler that does what the proxy does with an Upgrade: send the handshake, and on the
peer's ``101`` relay it and start a :class:`~gateway.http.tunnel.Tunnel`. A
``task.Clock`` drives the deadline sweep. No reactor, no sockets.
"""
from __future__ import annotations

import base64

import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from twisted.internet import error as ierror
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gateway.http._h2core import websocket_accept
from gateway.http._h2tunnel import H2TunnelEnd
from gateway.http.client import UpstreamConnection
from gateway.http.errors import error_page
from gateway.http.h2 import STREAM_BUFFER
from gateway.http.tunnel import Tunnel, downstream_end, requested_upgrade
from tests.http.test_client import ADDRESS
from tests.http.test_h2 import Client, head, ok, responses, server_frames
from tests.http.test_h2_conformance import stream_error, still_serves

DONE = Failure(ierror.ConnectionDone())
TO_PEER = b"GET /chat HTTP/1.1\r\nHost: example.com\r\n\r\n"   # what the fake proxy sends


def connect(c: Client, path: str = "/chat", headers=(), protocol: bytes = b"websocket",
            end: bool = False, authority: bytes = b"example.com") -> int:
    """An extended CONNECT from the client (not sent yet)."""
    stream = c.h2.get_next_available_stream_id()
    block = [(b":method", b"CONNECT"), (b":protocol", protocol), (b":scheme", b"https"),
             (b":path", path.encode()), (b":authority", authority),
             (b"sec-websocket-version", b"13"), *headers]
    c.h2.send_headers(stream, block, end_stream=end)
    return stream


def send_data(c: Client, stream: int, data: bytes, end: bool = False) -> None:
    """DATA frames of at most 16 KiB (the default SETTINGS_MAX_FRAME_SIZE), sent."""
    for start in range(0, len(data), 16384):
        c.h2.send_data(stream, data[start:start + 16384],
                       end_stream=end and start + 16384 >= len(data))
    c.send()


def peer_101(exchange, accept: bytes = None, extra: bytes = b"") -> bytes:
    """The peer's answer to the handshake the gateway made for ``exchange``."""
    if accept is None:
        accept = websocket_accept(exchange.request.header(b"sec-websocket-key"))
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n"
            + extra + b"\r\n")


class Pair:
    """One HTTP/2 client connection whose handler tunnels each extended CONNECT to one
    upstream connection, as the proxy handler does."""

    def __init__(self, idle_timeout: float = 5.0, settings=None):
        self.c = Client(self.handle, settings=settings)
        self.clock = self.c.clock
        self.conn = UpstreamConnection(self.clock, self.c.deadlines, ADDRESS)
        self.up = StringTransport()
        self.conn.makeConnection(self.up)
        self.idle_timeout = idle_timeout
        self.events = []
        self.tunnel = None
        self.exchange = None

    def handle(self, exchange):
        self.exchange = exchange
        exchange.pause_body()          # the proxy reads nothing until the peer answered
        self.conn.send_request(TO_PEER, self, method="GET", body="none",
                               read_timeout=5.0, send_timeout=5.0)

    # the ResponseHandler side, as gateway.http.proxy
    def response_head(self, response):
        if response.status != 101:
            self.exchange.send_head(response.status, response.headers)
            return
        self.exchange.send_head(101, response.headers + [(b"Connection", b"upgrade")])
        self.tunnel = Tunnel(
            downstream_end(self.exchange), self.conn, clock=self.clock,
            deadlines=self.c.deadlines, idle_timeout=self.idle_timeout,
            on_closing=lambda t: self.events.append(("closing", t.ended_by, len(self.c.done))),
            on_closed=lambda t: self.events.append(("closed", t.ended_by, len(self.c.done))))
        self.tunnel.start()

    def response_body(self, data):
        self.exchange.send_body(data)

    def response_end(self):
        self.exchange.finish()

    def response_error(self, error):
        self.events.append(("error", error))

    def open(self, client_data: bytes = b"", peer_extra: bytes = b"", **kw):
        """Extended CONNECT (with ``client_data`` right after it), the peer's 101
        (with ``peer_extra`` after it): returns the stream id and the client's events."""
        self.stream = stream = connect(self.c, **kw)
        if client_data:
            self.c.h2.send_data(stream, client_data)
        self.c.send()
        assert self.up.value() == TO_PEER
        self.up.clear()
        self.conn.dataReceived(peer_101(self.exchange) + peer_extra)
        return stream, responses(self.c.receive()).get(stream, [])

    def window(self) -> int:
        """What the client may still send on the stream."""
        return self.c.h2.local_flow_control_window(self.stream)


def tunnel_head(*headers) -> tuple:
    return head(200, *headers)


# -- the setting and the request ---------------------------------------------------------


def test_settings_advertise_enable_connect_protocol():
    c = Client(ok())
    assert c.h2.remote_settings.enable_connect_protocol == 1
    assert c.h2.remote_settings.max_concurrent_streams == 128


def test_extended_connect_reaches_the_handler_as_the_http11_handshake():
    """A GET with Upgrade, Connection and a fresh 16-byte Sec-WebSocket-Key (a key the
    client sent is replaced); the client's own WebSocket fields pass; no body."""
    c = Client(lambda exchange: None)
    connect(c, "/chat?room=1", headers=[
        (b"sec-websocket-protocol", b"chat, superchat"),
        (b"sec-websocket-extensions", b"permessage-deflate"),
        (b"sec-websocket-key", b"Y2xpZW50LXNlbnQta2V5IQ=="), (b"origin", b"https://a")])
    c.exchange()
    (exchange,) = c.exchanges
    request = exchange.request
    key = request.header(b"sec-websocket-key")
    assert (request.method, request.target, request.path, request.args, request.version,
            request.host) == ("GET", "/chat?room=1", "/chat", "room=1", "2.0", "example.com")
    assert request.headers == [
        (b"host", b"example.com"), (b"sec-websocket-version", b"13"),
        (b"sec-websocket-protocol", b"chat, superchat"),
        (b"sec-websocket-extensions", b"permessage-deflate"), (b"origin", b"https://a"),
        (b"upgrade", b"websocket"), (b"connection", b"upgrade"),
        (b"sec-websocket-key", key)]
    assert len(base64.b64decode(key, validate=True)) == 16
    assert not request.has_body
    assert (exchange.upgrade_protocol, requested_upgrade(exchange)) == (
        b"websocket", b"websocket")
    assert isinstance(downstream_end(exchange), H2TunnelEnd)


def test_protocol_token_is_case_insensitive_and_keys_differ_per_stream():
    c = Client(lambda exchange: None)
    connect(c, protocol=b"WebSocket")
    connect(c)
    c.exchange()
    first, second = c.exchanges
    assert first.upgrade_protocol == second.upgrade_protocol == b"websocket"
    assert (first.request.header(b"sec-websocket-key")
            != second.request.header(b"sec-websocket-key"))


def test_plain_requests_state_no_upgrade_and_have_no_tunnel_end():
    c = Client(lambda exchange: None)
    c.request("/")
    c.exchange()
    (exchange,) = c.exchanges
    assert (exchange.upgrade_protocol, requested_upgrade(exchange)) == (None, None)
    with pytest.raises(RuntimeError):
        exchange.tunnel_end()
    with pytest.raises(ValueError):
        exchange.send_head(101, [])


EXTENDED = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
            (b":path", b"/chat"), (b":authority", b"example.com")]
MALFORMED = [
    (":protocol on a GET", [(b":method", b"GET"), *EXTENDED[1:]]),
    ("no :path", [h for h in EXTENDED if h[0] != b":path"]),
    ("no :scheme", [h for h in EXTENDED if h[0] != b":scheme"]),
    ("no :authority", [h for h in EXTENDED if h[0] != b":authority"]),
    ("empty :protocol", [EXTENDED[0], (b":protocol", b""), *EXTENDED[2:]]),
    ("duplicate :protocol", [*EXTENDED[:2], (b":protocol", b"websocket"), *EXTENDED[2:]]),
    ("Content-Length", EXTENDED + [(b"content-length", b"0")]),
    ("connection header", EXTENDED + [(b"connection", b"upgrade")]),
]


@pytest.mark.parametrize("why, headers", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_extended_connect_is_a_stream_protocol_error(why, headers):
    """RFC 8441 §4: :protocol only on CONNECT, which then carries :scheme, :path and
    :authority; RFC 9113 §8.1.1 makes the rest malformed: RST_STREAM PROTOCOL_ERROR."""
    handled = []
    c = Client(handled.append)
    c.h2.send_headers(1, headers, end_stream=False)
    c.send()
    assert stream_error(c, 1) == ErrorCodes.PROTOCOL_ERROR
    assert handled == []
    c.handler = ok()
    assert still_serves(c)


def test_plain_connect_is_405_and_another_protocol_501():
    """A CONNECT without :protocol keeps nginx's 405; an extended CONNECT for anything
    but websocket gets 501 (no mapping to an HTTP/1.1 Upgrade for it)."""
    handled = []
    c = Client(handled.append)
    c.h2.send_headers(1, [(b":method", b"CONNECT"), (b":authority", b"example.com:443")])
    plain = 1
    other = connect(c, protocol=b"connect-udp")
    events = responses(c.exchange())
    for stream, status in ((plain, 405), (other, 501)):
        page = error_page(status)
        assert events[stream][:3] == [
            head(status, (b"content-type", b"text/html"),
                 (b"content-length", b"%d" % len(page))),
            ("data", page), "end"]
    assert handled == []
    assert [(e.status, e.error_reason) for e in c.done] == [
        (405, "client sent CONNECT method"),
        (501, "client sent unsupported :protocol b'connect-udp'")]


# -- the handshake's answer ------------------------------------------------------------


def test_101_becomes_a_200_sent_when_the_tunnel_starts():
    """Hop-by-hop fields, Sec-WebSocket-Accept and Content-Length do not reach the
    client; the peer's other fields do. Nothing is sent before the tunnel starts."""
    held = []
    c = Client(held.append)
    stream = connect(c)
    c.exchange()
    (exchange,) = held
    accept = websocket_accept(exchange.request.header(b"sec-websocket-key"))
    exchange.send_head(101, [
        (b"Upgrade", b"websocket"), (b"Sec-WebSocket-Accept", accept),
        (b"Sec-WebSocket-Protocol", b"chat"), (b"Content-Length", b"0"),
        (b"X-Backend", b"a"), (b"Connection", b"upgrade")])
    assert c.receive() == []
    end = exchange.tunnel_end()
    end.start(lambda data: None, lambda reason: None)
    assert responses(c.receive()) == {stream: [tunnel_head(
        (b"sec-websocket-protocol", b"chat"), (b"x-backend", b"a"))]}
    assert exchange.status == 200


def test_101_with_a_wrong_accept_is_a_502_and_no_tunnel():
    """RFC 6455 §4.1: the gateway, the handshake's client, fails it; the tunnel the
    proxy starts anyway closes the peer's connection at once."""
    p = Pair()
    p.stream = connect(p.c)
    p.c.send()
    p.up.clear()
    p.conn.dataReceived(peer_101(p.exchange, accept=b"bm90IHRoZSBhY2NlcHQ="))
    page = error_page(502)
    assert responses(p.c.receive())[p.stream][:3] == [
        head(502, (b"content-type", b"text/html"), (b"content-length", b"%d" % len(page))),
        ("data", page), "end"]
    assert p.c.done[0].error_reason == "upstream sent invalid Sec-WebSocket-Accept"
    assert p.up.disconnecting
    p.conn.connectionLost(DONE)
    assert p.events == [("closing", "client", 1), ("closed", "client", 1)]


def test_a_2xx_that_is_no_101_is_a_502_and_other_answers_are_relayed():
    """A 200 would tell the client its tunnel is open: 502. A 403 is relayed as is."""
    p = Pair()
    p.stream = connect(p.c)
    p.c.send()
    p.conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npage")
    events = responses(p.c.receive())[p.stream]
    assert events[0][1][0] == (b":status", b"502")
    assert (p.c.done[0].status, p.c.done[0].error_reason) == (
        502, "upstream did not switch protocols")

    p = Pair()
    p.stream = connect(p.c)
    p.c.send()
    p.conn.dataReceived(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
    assert responses(p.c.receive())[p.stream] == [
        head(403, (b"content-length", b"2")), ("data", b"no"), "end",
        ("reset", ErrorCodes.NO_ERROR)]
    assert p.tunnel is None


# -- bytes both ways -------------------------------------------------------------------


def test_data_before_the_101_waits_without_window_update_then_goes_first():
    """The client's DATA sent before the peer answered reaches the peer first, in
    order; its window comes back only then. The peer's bytes after its 101 head are
    the first DATA after the 200."""
    p = Pair()
    p.stream = connect(p.c)
    send_data(p.c, p.stream, b"a" * 40000)
    send_data(p.c, p.stream, b"b" * 10000)
    assert p.up.value() == TO_PEER
    p.c.receive()
    assert p.window() == 65535 - 50000         # no WINDOW_UPDATE for the stream yet
    p.up.clear()
    p.conn.dataReceived(peer_101(p.exchange) + b"greeting")
    assert p.up.value() == b"a" * 40000 + b"b" * 10000
    events = responses(p.c.receive())[p.stream]
    assert events == [tunnel_head(), ("data", b"greeting")]
    assert p.window() == 65535                 # handed back once the peer took it
    p.c.h2.send_data(p.stream, b"more")
    p.c.send()
    assert p.up.value().endswith(b"more")
    assert (p.tunnel.from_client, p.tunnel.from_upstream) == (50004, 8)


def test_data_while_the_peer_is_not_taking_waits_without_window_update():
    """The peer's transport pauses the stream: DATA queues and the window stays
    closed, so the client can send at most one window more; resuming relays it."""
    p = Pair()
    p.open()
    end = p.tunnel.downstream
    assert p.up.producer is end and p.up.streaming
    p.up.producer.pauseProducing()
    send_data(p.c, p.stream, b"x" * 60000)
    p.c.receive()
    assert p.up.value() == b""
    assert p.window() == 65535 - 60000
    assert (end.paused, end.pauses) == (True, 1)
    p.up.producer.resumeProducing()
    assert p.up.value() == b"x" * 60000
    p.c.receive()
    assert p.window() == 65535


def test_peer_bytes_stay_within_the_client_window_and_pause_the_peer():
    """A client with a 1000-byte window gets 1000 bytes; the rest waits at the gateway,
    and above STREAM_BUFFER the peer's connection is paused until it drained."""
    p = Pair(settings={SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    p.open()
    p.c.h2.increment_flow_control_window(10 ** 6)   # the connection window is no limit
    p.c.send()
    big = bytes(range(256)) * 400                    # 102400 bytes
    p.conn.dataReceived(big)
    got = b"".join(e[1] for e in responses(p.c.receive())[p.stream] if e[0] == "data")
    assert got == big[:1000]
    end = p.tunnel.downstream
    assert end.buffered == len(big) - 1000 > STREAM_BUFFER
    assert p.up.producerState == "paused"
    assert p.tunnel.upstream.paused
    p.c.h2.increment_flow_control_window(200000, p.stream)
    p.c.send()
    got += b"".join(e[1] for e in responses(p.c.receive())[p.stream] if e[0] == "data")
    assert got == big
    assert (end.buffered, p.up.producerState) == (0, "producing")
    exchange = p.c.exchanges[0]
    assert exchange.body_bytes_sent == len(big)


# -- the end ----------------------------------------------------------------------------


def test_client_end_stream_closes_the_peer_and_is_answered_with_end_stream():
    """The bytes before END_STREAM reach the peer, which is closed after them; our
    END_STREAM follows what was still queued for the client, and the exchange is
    reported once (status 200); the tunnel is released when the peer is gone."""
    p = Pair(settings={SettingCodes.INITIAL_WINDOW_SIZE: 3})
    p.open()
    p.conn.dataReceived(b"queued")                  # 3 bytes go, 3 wait for window
    p.c.receive()
    p.c.h2.send_data(p.stream, b"last", end_stream=True)
    p.c.send()
    assert p.up.value() == b"last"
    assert p.up.disconnecting
    assert p.events == [("closing", "client", 0)]
    assert p.c.done == []                           # our END_STREAM waits for window
    p.c.h2.increment_flow_control_window(10, p.stream)
    p.c.send()
    assert responses(p.c.receive())[p.stream] == [("data", b"ued"), "end"]
    assert [(e.status, e.body_bytes_sent) for e in p.c.done] == [(200, 6)]
    p.conn.connectionLost(DONE)
    assert p.events == [("closing", "client", 0), ("closed", "client", 1)]
    assert p.c.proto._streams == {}
    assert p.tunnel not in p.c.deadlines._owners


def test_peer_close_flushes_then_end_stream_and_rst_stream_no_error():
    p = Pair()
    _, events = p.open(peer_extra=b"hi")
    head_block = events[0][1]
    p.conn.dataReceived(b"bye")
    p.conn.connectionLost(DONE)
    # END_STREAM on an empty DATA frame: the last bytes were out already
    assert responses(p.c.receive())[p.stream] == [
        ("data", b"bye"), ("data", b""), "end", ("reset", ErrorCodes.NO_ERROR)]
    assert p.events == [("closing", "upstream", 0), ("closed", "upstream", 0)]
    (exchange,) = p.c.done
    head_bytes = sum(len(n) + len(v) + 2 for n, v in head_block)
    assert (exchange.status, exchange.body_bytes_sent, exchange.bytes_sent) == (
        200, 5, head_bytes + 2 + 9 + 3 + 9)
    assert p.c.proto._streams == {}
    p.c.handler = ok()      # the connection serves on
    assert still_serves(p.c)


def test_client_reset_closes_the_peer():
    p = Pair()
    p.open()
    p.c.h2.reset_stream(p.stream, ErrorCodes.CANCEL)
    p.c.send()
    assert p.up.disconnecting and not p.up.disconnected
    assert p.events == [("closing", "client", 0)]
    assert [e.status for e in p.c.done] == [200]
    p.conn.connectionLost(DONE)
    assert p.events == [("closing", "client", 0), ("closed", "client", 1)]


def test_connection_loss_closes_the_peer():
    p = Pair()
    p.open()
    p.c.proto.connectionLost(DONE)
    assert p.up.disconnecting
    assert p.events == [("closing", "client", 0)]
    assert [e.status for e in p.c.done] == [200]


def test_idle_tunnel_is_reset_with_cancel_and_the_peer_aborted():
    """proxy_read_timeout without a byte either way: RST_STREAM CANCEL (RFC 8441 §4: a
    TCP reset) and the peer's connection aborted."""
    p = Pair(idle_timeout=5.0)
    p.open()
    p.clock.advance(4.0)
    p.c.h2.send_data(p.stream, b"x")
    p.c.send()
    p.clock.advance(4.9)
    assert not p.up.disconnected
    p.clock.advance(0.2)
    assert responses(p.c.receive())[p.stream] == [("reset", ErrorCodes.CANCEL)]
    assert p.up.disconnected
    assert p.tunnel.ended_by == "timeout"
    p.conn.connectionLost(Failure(ierror.ConnectionAborted()))
    assert p.events == [("closing", "timeout", 0), ("closed", "timeout", 1)]


def test_a_client_that_does_not_take_the_last_bytes_is_reset_after_one_idle_period():
    p = Pair(idle_timeout=5.0, settings={SettingCodes.INITIAL_WINDOW_SIZE: 1})
    p.open()
    p.conn.dataReceived(b"unread")
    p.conn.connectionLost(DONE)
    assert responses(p.c.receive())[p.stream] == [("data", b"u")]
    p.clock.advance(5.1)
    assert responses(p.c.receive())[p.stream] == [("reset", ErrorCodes.CANCEL)]
    assert p.events == [("closing", "upstream", 0), ("closed", "upstream", 0)]
    assert [e.status for e in p.c.done] == [200]
    assert [f for f in server_frames(p.c.transport)
            if isinstance(f, tuple) and f[0] == "RST_STREAM"] == [
        ("RST_STREAM", p.stream, ErrorCodes.CANCEL)]
