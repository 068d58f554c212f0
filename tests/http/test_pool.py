"""The keepalive pool: nginx keepalive-module semantics on StringTransport connections."""
from __future__ import annotations

from twisted.internet import error as ierror
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gateway.deadlines import Deadlines
from gateway.http.client import ConnectionState, UpstreamConnection
from gateway.http.pool import ConnectionPool

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Handler:
    def response_head(self, head): pass
    def response_body(self, data): pass
    def response_end(self): pass
    def response_error(self, error): pass


class World:
    def __init__(self, **settings):
        self.clock = Clock()
        self.deadlines = Deadlines(self.clock)
        options = dict(keepalive=2, keepalive_requests=100, keepalive_timeout=60.0,
                       keepalive_time=3600.0)
        options.update(settings)
        self.pool = ConnectionPool(self.clock, self.deadlines, **options)

    def served(self, response=OK):
        """A fresh connection that has just served one request."""
        connection = UpstreamConnection(self.clock, self.deadlines)
        connection.makeConnection(StringTransport())
        serve(connection, response)
        return connection


def serve(connection, response=OK):
    connection.send_request(GET, Handler(), method="GET", body="none", read_timeout=5.0,
                            send_timeout=5.0)
    connection.dataReceived(response)


def test_put_then_take_returns_the_connection_marked_reused_and_counts_a_hit():
    world = World()
    connection = world.served()
    assert world.pool.put("a", connection)
    assert connection.state == ConnectionState.IDLE
    assert world.pool.take("a") is connection
    assert connection.reused
    assert connection.state == ConnectionState.READY
    assert (world.pool.hits, world.pool.misses) == (1, 0)
    assert world.pool.take("a") is None
    assert (world.pool.hits, world.pool.misses) == (1, 1)


def test_take_gives_the_most_recently_pooled_first_and_is_per_peer():
    world = World(keepalive=5)
    first, second, other = world.served(), world.served(), world.served()
    world.pool.put("a", first)
    world.pool.put("b", other)
    world.pool.put("a", second)
    assert world.pool.take("a") is second
    assert world.pool.take("a") is first
    assert world.pool.take("a") is None
    assert world.pool.take("b") is other


def test_beyond_keepalive_the_least_recently_used_is_closed_group_wide():
    world = World(keepalive=2)
    one, two, three = world.served(), world.served(), world.served()
    world.pool.put("a", one)
    world.pool.put("b", two)
    world.pool.put("a", three)
    assert one.state == ConnectionState.CLOSED
    assert one.transport.disconnecting
    assert len(world.pool) == 2
    assert world.pool.take("a") is three
    assert world.pool.take("a") is None
    assert world.pool.take("b") is two


def test_keepalive_zero_never_pools():
    world = World(keepalive=0)
    connection = world.served()
    assert not world.pool.put("a", connection)
    assert connection.transport.disconnecting


def test_non_reusable_connections_are_closed_not_pooled():
    world = World()
    for response in (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                     OK + b"extra",
                     b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"):
        connection = world.served(response)
        assert not world.pool.put("a", connection)
        assert connection.transport.disconnecting
    # a connection still busy (response not finished) is not reusable either
    busy = world.served(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
    assert not world.pool.put("a", busy)
    assert len(world.pool) == 0


def test_keepalive_requests_limits_requests_per_connection():
    world = World(keepalive_requests=2)
    connection = world.served()
    assert world.pool.put("a", connection)
    assert world.pool.take("a") is connection
    serve(connection)
    assert connection.requests == 2
    assert not world.pool.put("a", connection)
    assert connection.state == ConnectionState.CLOSED


def test_keepalive_time_limits_connection_age():
    world = World(keepalive_time=100.0, keepalive_timeout=1000.0)
    connection = world.served()
    world.clock.advance(99.0)
    assert world.pool.put("a", connection)
    world.pool.take("a")
    world.clock.advance(1.0)
    serve(connection)
    assert not world.pool.put("a", connection)


def test_idle_connection_is_closed_after_keepalive_timeout():
    world = World(keepalive_timeout=5.0)
    connection = world.served()
    world.pool.put("a", connection)
    world.clock.advance(4.9)
    assert len(world.pool) == 1
    world.clock.advance(0.3)
    assert len(world.pool) == 0
    assert connection.transport.disconnecting
    assert world.pool.take("a") is None


def test_idle_connection_closed_by_the_peer_leaves_the_pool():
    world = World()
    connection = world.served()
    world.pool.put("a", connection)
    connection.connectionLost(Failure(ierror.ConnectionDone()))
    assert len(world.pool) == 0
    assert world.pool.take("a") is None
    assert len(world.deadlines) == 0


def test_idle_connection_receiving_bytes_is_dropped():
    world = World()
    connection = world.served()
    world.pool.put("a", connection)
    connection.dataReceived(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    assert len(world.pool) == 0
    assert connection.transport.disconnecting


def test_taken_connection_has_no_idle_deadline():
    world = World(keepalive_timeout=1.0)
    connection = world.served()
    world.pool.put("a", connection)
    world.pool.take("a")
    world.clock.advance(10.0)
    assert connection.state == ConnectionState.READY


def test_close_all_closes_every_idle_connection():
    world = World(keepalive=5)
    connections = [world.served() for _ in range(3)]
    for i, connection in enumerate(connections):
        world.pool.put(f"p{i}", connection)
    world.pool.close_all()
    assert len(world.pool) == 0
    assert all(c.transport.disconnecting for c in connections)
