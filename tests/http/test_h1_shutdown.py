"""Graceful shutdown of HTTP/1.1 connections (a reload retiring them, or a stop).

nginx's exiting worker: an idle keepalive connection closes at once, a request being
served finishes and its connection closes after the response, a connection that has not
sent its first request is served once, an upgraded one (a tunnel) runs on. Transcripts
on ``StringTransport`` and ``task.Clock``, as ``test_h1.py``.
"""
from __future__ import annotations

from tests.http.test_h1 import GET, HEAD, Connection, ok_length


def close_reported(c: Connection) -> None:
    """The transport closed: what a real one reports after ``loseConnection``."""
    c.protocol.connectionLost(None)


def test_an_idle_keepalive_connection_closes_at_once():
    c = Connection(ok_length())
    c.send(GET)
    c.take()
    drained = c.factory.graceful_shutdown()
    assert c.closed
    fired = []
    drained.addCallback(fired.append)
    assert fired == []
    close_reported(c)
    assert fired == [None] and c.factory.connections == set()


def test_a_request_in_flight_finishes_with_connection_close_and_then_closes():
    pending = []
    c = Connection(pending.append)
    c.send(GET)
    c.factory.graceful_shutdown()
    assert not c.closed
    exchange = pending[0]
    exchange.send_head(200, [(b"Content-Length", b"2")])
    exchange.send_body(b"ok")
    exchange.finish()
    assert c.take() == (b"HTTP/1.1 200 OK\r\n" + HEAD + b"Content-Length: 2\r\n"
                        b"Connection: close\r\n\r\nok")
    assert c.closed


def test_a_response_already_started_finishes_and_then_the_connection_closes():
    pending = []
    c = Connection(pending.append)
    c.send(GET)
    exchange = pending[0]
    exchange.send_head(200, [(b"Content-Length", b"4")])
    exchange.send_body(b"pa")
    c.factory.graceful_shutdown()
    exchange.send_body(b"rt")
    assert not c.closed
    exchange.finish()
    # the head went out before the shutdown, still saying keep-alive, as nginx's would
    assert c.take() == (b"HTTP/1.1 200 OK\r\n" + HEAD + b"Content-Length: 4\r\n"
                        b"Connection: keep-alive\r\n\r\npart")
    assert c.closed


def test_a_pipelined_request_behind_the_one_in_flight_is_not_served():
    pending = []
    c = Connection(pending.append)
    c.send(GET + GET)
    c.factory.graceful_shutdown()
    pending[0].send_head(204, [])
    pending[0].finish()
    assert len(pending) == 1 and c.closed


def test_a_connection_without_its_first_request_yet_is_served_once():
    c = Connection(ok_length())
    c.factory.graceful_shutdown()
    assert not c.closed
    c.send(GET)
    assert c.take() == (b"HTTP/1.1 200 OK\r\n" + HEAD + b"Content-Type: text/plain\r\n"
                        b"Content-Length: 5\r\nConnection: close\r\n\r\nhello")
    assert c.closed


def test_a_request_head_half_received_is_served_once():
    c = Connection(ok_length())
    c.send(GET)
    c.take()
    c.send(b"GET /next HTTP/1.1\r\n")
    c.factory.graceful_shutdown()
    assert not c.closed
    c.send(b"Host: example.com\r\n\r\n")
    assert c.take().endswith(b"Connection: close\r\n\r\nhello")
    assert c.closed


def test_a_tunnel_runs_on_and_the_timeout_aborts_it():
    received = []

    def handler(exchange):
        exchange.send_head(101, [(b"Connection", b"upgrade"), (b"Upgrade", b"websocket")])
        exchange.take_over(received.append, lambda reason: received.append("lost"))

    c = Connection(handler)
    c.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    drained = c.factory.graceful_shutdown(30.0)
    c.send(b"frame")
    assert received == [b"frame"] and not c.closed
    c.clock.advance(29.9)
    assert not c.transport.disconnecting
    c.clock.advance(0.2)
    assert c.transport.disconnecting          # StringTransport.abortConnection
    fired = []
    drained.addCallback(fired.append)
    close_reported(c)
    assert received == [b"frame", "lost"] and fired == [None]


def test_without_connections_the_drain_is_done_at_once():
    c = Connection(ok_length())
    close_reported(c)
    fired = []
    c.factory.graceful_shutdown(5.0).addCallback(fired.append)
    assert fired == [None] and c.clock.getDelayedCalls() == []
