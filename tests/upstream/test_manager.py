"""UpstreamManager: groups built from settings, looked up by name."""
from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from gateway.upstream import Outcome, UpstreamGroup, UpstreamManager
from gateway.upstream.balancers import BALANCERS, RoundRobin, balancer_class

from tests.upstream.helpers import server, upstream


def test_manager_builds_declared_and_implicit_groups():
    """Every entry of config.upstreams becomes a group with its peers and backups,
    implicit ``host:port`` groups included."""
    declared = upstream(server("a", weight=2), server("b"), server("c", backup=True))
    implicit = upstream(server("127.0.0.1:9000"), name="127.0.0.1:9000", implicit=True)
    clock = Clock()

    manager = UpstreamManager({"app": declared, "127.0.0.1:9000": implicit}, clock)

    assert set(manager.groups) == {"app", "127.0.0.1:9000"}
    app = manager.group("app")
    assert isinstance(app, UpstreamGroup)
    assert app.settings is declared
    assert [p.name for p in app.peers] == ["a", "b"]
    assert [p.name for p in app.backups] == ["c"]
    assert [p.weight for p in app.peers] == [2, 1]
    assert manager.group("127.0.0.1:9000").single
    assert "app" in manager and "nope" not in manager
    assert [g.name for g in manager] == ["app", "127.0.0.1:9000"]


def test_unknown_group_raises_key_error():
    manager = UpstreamManager({}, Clock())
    with pytest.raises(KeyError):
        manager.group("missing")


def test_groups_use_the_injected_clock():
    """Failure windows are measured on the clock given to the manager."""
    clock = Clock()
    clock.advance(100)
    manager = UpstreamManager({"app": upstream(server("a"), server("b"))}, clock)
    group = manager.group("app")
    lease = group.acquire(group.attempts())
    lease.release(Outcome.FAILED)
    assert (lease.peer.accessed, lease.peer.checked) == (100, 100)


def test_balancer_registry():
    assert BALANCERS["round_robin"] is RoundRobin
    assert balancer_class("round_robin") is RoundRobin
    assert sorted(BALANCERS) == ["hash", "ip_hash", "least_conn", "random", "round_robin"]
    with pytest.raises(ValueError, match="least_conn"):
        balancer_class("fastest")
    with pytest.raises(ValueError):
        UpstreamManager({"app": upstream(server("a"), balance="fastest")}, Clock())
