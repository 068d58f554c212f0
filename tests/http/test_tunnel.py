"""Upgrade tunnels as transcripts: a real HTTP/1.1 client connection and a real upstream
connection on StringTransports, a task.Clock driving the deadline sweep."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from twisted.internet import error as ierror
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gateway.http.client import ConnectionState, UpstreamConnection
from gateway.http.exchange import RequestHead
from gateway.http.tunnel import H1DownstreamEnd, Tunnel, downstream_end, requested_upgrade
from tests.http.test_client import ADDRESS, Recorder, connected, send
from tests.http.test_h1 import HEAD, Connection

CLIENT_REQUEST = (b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                  b"Upgrade: websocket\r\n\r\n")
TO_PEER = (b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
           b"Connection: upgrade\r\n\r\n")
PEER_101 = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\n")
CLIENT_101 = (b"HTTP/1.1 101 Switching Protocols\r\n" + HEAD
              + b"Upgrade: websocket\r\nConnection: upgrade\r\n\r\n")
DONE = Failure(ierror.ConnectionDone())


class Pair:
    """A client connection whose handler sends the request upstream and, on the 101,
    joins both in a :class:`Tunnel` (what the proxy handler does)."""

    def __init__(self, idle_timeout: float = 5.0):
        self.c = Connection(self.handle)
        self.clock = self.c.clock
        self.conn = UpstreamConnection(self.clock, self.c.deadlines, ADDRESS)
        self.up = StringTransport()
        self.conn.makeConnection(self.up)
        self.idle_timeout = idle_timeout
        self.recorder = Recorder()
        self.events = []
        self.tunnel = None
        self.exchange = None

    def handle(self, exchange):
        self.exchange = exchange
        self.conn.send_request(TO_PEER, self, method="GET", body="none",
                               read_timeout=5.0, send_timeout=5.0)

    # the ResponseHandler side
    def response_head(self, head):
        self.recorder.response_head(head)
        self.exchange.send_head(101, [(b"Upgrade", b"websocket"), (b"Connection", b"upgrade")])
        self.tunnel = Tunnel(
            H1DownstreamEnd(self.exchange), self.conn, clock=self.clock,
            deadlines=self.c.deadlines, idle_timeout=self.idle_timeout,
            on_closing=lambda t: self.events.append(("closing", t.ended_by, len(self.c.done))),
            on_closed=lambda t: self.events.append(("closed", t.ended_by)))
        self.tunnel.start()

    def response_body(self, data):
        self.recorder.response_body(data)

    def response_end(self):
        self.recorder.response_end()

    def response_error(self, error):
        self.recorder.response_error(error)

    def open(self, client_extra: bytes = b"", peer_extra: bytes = b""):
        self.c.send(CLIENT_REQUEST + client_extra)
        assert self.up.value() == TO_PEER
        self.up.clear()
        self.conn.dataReceived(PEER_101 + peer_extra)
        return self.tunnel


# -- relaying -------------------------------------------------------------------------


def test_bytes_pipelined_with_either_handshake_are_relayed_first_in_order():
    p = Pair()
    tunnel = p.open(client_extra=b"c1", peer_extra=b"u1")
    assert p.c.take() == CLIENT_101 + b"u1"
    assert p.up.value() == b"c1"
    p.c.send(b"c2")
    p.conn.dataReceived(b"u2")
    p.c.send(b"c3")
    assert p.up.value() == b"c1c2c3"
    assert p.c.take() == b"u2"
    # the response handler heard the 101 head and nothing after it
    assert p.recorder.events == [("head", 101, None, False)]
    assert (tunnel.from_client, tunnel.from_upstream) == (6, 4)
    assert (p.exchange.status, p.exchange.body_bytes_sent, p.exchange.bytes_sent) == (
        101, 4, len(CLIENT_101) + 4)
    assert (tunnel.upstream_bytes_sent, tunnel.upstream_bytes_received) == (
        len(TO_PEER) + 6, len(PEER_101) + 4)


def test_each_side_is_the_others_streaming_producer():
    p = Pair()
    tunnel = p.open()
    client, up = p.c.transport, p.up
    assert (client.producer, client.streaming) == (tunnel.upstream, True)
    assert (up.producer, up.streaming) == (tunnel.downstream, True)
    # the client's write buffer is full: stop reading the peer
    client.producer.pauseProducing()
    assert (up.producerState, tunnel.upstream.paused, tunnel.upstream.pauses) == (
        "paused", True, 1)
    client.producer.resumeProducing()
    assert (up.producerState, tunnel.upstream.paused) == ("producing", False)
    # the peer's write buffer is full: stop reading the client
    up.producer.pauseProducing()
    assert (client.producerState, tunnel.downstream.paused) == ("paused", True)
    up.producer.resumeProducing()
    assert client.producerState == "producing"


def test_the_upstream_connection_is_out_of_its_normal_life():
    p = Pair()
    p.open()
    conn = p.conn
    assert (conn.state, conn.reusable, conn.deadline) == (ConnectionState.UPGRADED, False, None)
    assert conn not in p.c.deadlines._owners
    assert p.tunnel in p.c.deadlines._owners


# -- closing -------------------------------------------------------------------------


def test_client_close_closes_the_peer_after_its_bytes_and_releases_after_both():
    p = Pair()
    p.open()
    p.c.send(b"last")
    p.c.protocol.connectionLost(DONE)
    # finalised before the access log line (written right after, at the client's close)
    assert p.events == [("closing", "client", 0)]
    assert p.c.done == [p.exchange]
    assert p.up.value() == b"last"
    assert (p.up.disconnecting, p.up.disconnected, p.up.producer) == (True, False, None)
    p.conn.dataReceived(b"too late")
    assert p.c.transport.value() == CLIENT_101
    p.conn.connectionLost(DONE)
    assert p.events == [("closing", "client", 0), ("closed", "client")]
    assert p.tunnel not in p.c.deadlines._owners


def test_peer_close_closes_the_client_after_its_bytes():
    p = Pair()
    p.open()
    p.conn.dataReceived(b"bye")
    p.conn.connectionLost(DONE)
    assert p.events == [("closing", "upstream", 0)]
    client = p.c.transport
    assert client.value() == CLIENT_101 + b"bye"
    assert (client.disconnecting, client.disconnected, client.producer) == (True, False, None)
    p.c.send(b"ignored")
    assert p.up.value() == b""
    p.c.protocol.connectionLost(DONE)
    assert p.events == [("closing", "upstream", 0), ("closed", "upstream")]
    assert [e.status for e in p.c.done] == [101]


def test_a_side_that_does_not_finish_closing_in_one_idle_period_is_aborted():
    p = Pair(idle_timeout=5.0)
    p.open()
    p.conn.connectionLost(DONE)
    client = p.c.transport
    assert (client.disconnecting, client.disconnected) == (True, False)
    p.clock.advance(4.9)
    assert not client.disconnected
    p.clock.advance(0.2)
    assert client.disconnected           # aborted: its buffer is dropped
    p.c.protocol.connectionLost(Failure(ierror.ConnectionAborted()))
    assert p.events == [("closing", "upstream", 0), ("closed", "upstream")]


# -- the idle limit ----------------------------------------------------------------


def test_idle_limit_is_reset_by_traffic_either_way_then_aborts_both():
    p = Pair(idle_timeout=5.0)
    tunnel = p.open()
    p.clock.advance(4.0)
    p.c.send(b"x")               # client → peer
    p.clock.advance(4.0)
    p.conn.dataReceived(b"y")    # peer → client
    p.clock.advance(4.9)
    assert (p.up.disconnected, p.c.transport.disconnected) == (False, False)
    p.clock.advance(0.2)
    assert (p.up.disconnected, p.c.transport.disconnected) == (True, True)
    assert tunnel.ended_by == "timeout"
    assert p.events == [("closing", "timeout", 0)]
    p.conn.connectionLost(Failure(ierror.ConnectionAborted()))
    p.c.protocol.connectionLost(Failure(ierror.ConnectionAborted()))
    assert p.events == [("closing", "timeout", 0), ("closed", "timeout")]
    assert tunnel.ended - tunnel.started == pytest.approx(13.0, abs=0.11)


# -- UpstreamConnection.take_over -------------------------------------------------------


def test_take_over_from_response_head_returns_the_transport_and_held_bytes():
    conn, transport, clock, deadlines = connected()
    taken = {}

    class Switch(Recorder):
        def response_head(self, head):
            super().response_head(head)
            taken["result"] = conn.take_over(got.append, lambda r: got.append("lost"))

    got = []
    handler = Switch()
    conn.send_request(TO_PEER, handler, method="GET", body="none",
                      read_timeout=5.0, send_timeout=5.0)
    conn.dataReceived(PEER_101 + b"held")
    assert taken["result"] == (transport, b"held")
    assert handler.events == [("head", 101, None, False)]     # no "end" after a take-over
    assert (conn.state, transport.producer, conn.deadline) == (
        ConnectionState.UPGRADED, None, None)
    conn.dataReceived(b"more")
    conn.connectionLost(DONE)
    assert got == [b"more", "lost"]
    assert conn.state == ConnectionState.CLOSED
    assert conn.bytes_received == len(PEER_101) + 4


def test_take_over_outside_a_response_is_refused():
    conn, *_ = connected()
    with pytest.raises(RuntimeError):
        conn.take_over(lambda data: None, lambda reason: None)


def test_bytes_sent_counts_head_body_and_chunk_framing():
    conn, transport, *_ = connected()
    send(conn, head=b"POST / HTTP/1.1\r\n\r\n", method="POST", body="chunked")
    conn.write_body(b"hello")
    conn.write_body(b"x" * 20)
    conn.end_body()
    assert conn.bytes_sent == len(transport.value())
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    transport.clear()
    send(conn, head=b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n", method="POST",
         body="length")
    conn.write_body(b"abc")
    conn.end_body()
    assert conn.bytes_sent == len(transport.value())
    conn.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
    transport.clear()
    send(conn)
    assert conn.bytes_sent == len(transport.value())


# -- what asks for a tunnel -----------------------------------------------------------


def exchange(headers, version="1.1", **extra):
    head = RequestHead("GET", "/", "/", "", version, headers)
    return SimpleNamespace(request=head, **extra)


@pytest.mark.parametrize("headers, version, expected", [
    ([(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")], "1.1", b"websocket"),
    ([(b"connection", b"keep-alive, upgrade"), (b"upgrade", b"foo/2, bar")], "1.1",
     b"foo/2, bar"),
    ([(b"Upgrade", b"a"), (b"Connection", b"upgrade"), (b"Upgrade", b"b")], "1.1", b"a, b"),
    ([(b"Upgrade", b"websocket")], "1.1", None),                       # no Connection
    ([(b"Connection", b"keep-alive"), (b"Upgrade", b"websocket")], "1.1", None),
    ([(b"Connection", b"upgrade")], "1.1", None),                     # no Upgrade
    ([(b"Connection", b"upgrade"), (b"Upgrade", b"websocket")], "1.0", None),
    # h2c smuggling: never a tunnel, whatever else is listed
    ([(b"Connection", b"Upgrade, HTTP2-Settings"), (b"Upgrade", b"h2c")], "1.1", None),
    ([(b"Connection", b"upgrade"), (b"Upgrade", b"websocket, H2C")], "1.1", None),
    ([(b"Connection", b"upgrade"), (b"Upgrade", b"h2cx")], "1.1", b"h2cx"),
])
def test_requested_upgrade(headers, version, expected):
    assert requested_upgrade(exchange(headers, version)) == expected


def test_an_exchange_can_state_its_upgrade_and_bring_its_own_end():
    end = object()
    ex = exchange([], "2.0", upgrade_protocol=b"websocket", tunnel_end=lambda: end)
    assert requested_upgrade(ex) == b"websocket"
    assert downstream_end(ex) is end
    assert isinstance(downstream_end(exchange([])), H1DownstreamEnd)
