"""A reload's new keepalive limits for a kept group's pool (``ConnectionPool.reconfigure``)."""
from __future__ import annotations

from tests.http.test_pool import World


def test_a_lower_keepalive_closes_the_least_recently_used_idle_connections():
    world = World(keepalive=3)
    oldest, middle, newest = world.served(), world.served(), world.served()
    world.pool.put("a", oldest)
    world.pool.put("b", middle)
    world.pool.put("a", newest)

    world.pool.reconfigure(keepalive=1, keepalive_requests=5, keepalive_timeout=10.0,
                           keepalive_time=20.0)

    assert (oldest.transport.disconnecting, middle.transport.disconnecting) == (True, True)
    assert not newest.transport.disconnecting
    assert (world.pool.idle("a"), world.pool.idle("b")) == (1, 0)
    assert world.pool.take("a") is newest
    assert (world.pool.keepalive, world.pool.keepalive_requests,
            world.pool.keepalive_timeout, world.pool.keepalive_time) == (1, 5, 10.0, 20.0)


def test_the_new_limits_apply_to_the_next_put():
    world = World(keepalive=2, keepalive_requests=100)
    connection = world.served()
    world.pool.reconfigure(keepalive=2, keepalive_requests=1, keepalive_timeout=60.0,
                           keepalive_time=3600.0)
    assert world.pool.put("a", connection) is False      # served 1 of 1 requests
    assert connection.transport.disconnecting
