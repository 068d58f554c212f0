"""UpstreamGroup.snapshot / UpstreamManager.snapshot: plain data for status pages."""
from __future__ import annotations

import json

from twisted.internet.task import Clock

from gateway.config.model import QueueSettings
from gateway.upstream import Outcome, UpstreamManager
from tests.upstream.helpers import make_group, server, upstream

REFUSED = "connect() failed (111: Connection refused) while connecting to upstream"


def peer_data(name, **changes):
    data = {
        "name": name, "address": name, "backup": False, "state": "up", "weight": 1,
        "effective_weight": 1, "active": 0, "max_conns": 0, "fails": 0, "requests": 0,
        "failures": 0, "healthy": True, "health_check": None, "last_error": None,
    }
    data.update(changes)
    return data


def busy_group():
    """a held (at max_conns), b failed with an error, c down, backup d held, and one
    request waiting in the queue; the clock at 100."""
    group, clock = make_group(
        server("a", weight=2, max_conns=1), server("b", fail_timeout=10),
        server("c", down=True), server("d", backup=True, max_conns=1),
        queue=QueueSettings(size=5, timeout=30),
    )
    clock.advance(100)
    held = [group.acquire(group.attempts())]
    failing = group.acquire(group.attempts())
    failing.release(Outcome.FAILED, REFUSED)
    held.append(group.acquire(group.attempts()))
    assert [lease.peer.name for lease in held] == ["a", "d"]
    assert failing.peer.name == "b"
    waiting = group.wait(group.attempts())
    assert waiting is not None
    return group, clock, held, waiting


def test_snapshot_lists_every_peer_of_both_tiers_with_its_state_and_counters():
    group, clock, _, _ = busy_group()
    assert group.snapshot() == {
        "name": "app",
        "balance": "round_robin",
        "queue": {"size": 1, "max_size": 5, "timeout": 30.0, "overflows": 0,
                  "timeouts": 0},
        "peers": [
            peer_data("a", weight=2, effective_weight=2, active=1, max_conns=1,
                      requests=1),
            peer_data("b", state="failed", effective_weight=0, fails=1, requests=1,
                      failures=1, last_error={"text": REFUSED, "time": 100.0}),
            peer_data("c", state="down"),
            peer_data("d", backup=True, active=1, max_conns=1, requests=1),
        ],
    }


def test_snapshot_is_json_and_a_copy():
    group, _, _, _ = busy_group()
    snapshot = group.snapshot()
    assert json.loads(json.dumps(snapshot)) == snapshot
    snapshot["peers"][0]["active"] = 99
    snapshot["peers"].clear()
    assert group.snapshot()["peers"][0]["active"] == 1
    assert group.peers[0].conns == 1


def test_states_follow_the_peer_failed_then_up_unhealthy_and_down():
    group, clock, _, _ = busy_group()
    b = group.peers[1]
    clock.advance(11)                   # b's fail_timeout is over: up, fails kept
    assert group.snapshot()["peers"][1]["state"] == "up"
    assert group.snapshot()["peers"][1]["fails"] == 1
    b.set_healthy(False, clock.seconds())
    assert group.snapshot()["peers"][1]["state"] == "unhealthy"
    assert group.snapshot()["peers"][1]["healthy"] is False
    b.set_down(True, clock.seconds())   # down is the most serious
    assert group.snapshot()["peers"][1]["state"] == "down"


def test_queue_counters_and_length_follow_the_queue():
    group, clock, held, waiting = busy_group()
    waits = [group.wait(group.attempts()) for _ in range(4)]
    for d in [waiting] + waits:
        d.addErrback(lambda failure: None)      # they time out below
    overflow = group.wait(group.attempts())
    overflow.addErrback(lambda failure: None)
    assert group.snapshot()["queue"]["size"] == 5
    assert group.snapshot()["queue"]["overflows"] == 1
    clock.advance(30)
    queue = group.snapshot()["queue"]
    assert queue["size"] == 0 and queue["timeouts"] == 5


def test_last_error_is_kept_until_the_next_error():
    group, clock = make_group(server("a"))
    group.acquire(group.attempts()).release(Outcome.FAILED, "upstream timed out")
    clock.advance(20)
    group.acquire(group.attempts()).release(Outcome.OK)
    assert group.snapshot()["peers"][0]["last_error"] == {
        "text": "upstream timed out", "time": 0.0}
    # an error that is no failure of the peer (a response cut short) is kept too
    group.acquire(group.attempts()).release(
        Outcome.OK, "upstream prematurely closed connection")
    peer = group.snapshot()["peers"][0]
    assert peer["last_error"] == {
        "text": "upstream prematurely closed connection", "time": 20.0}
    assert (peer["requests"], peer["failures"]) == (3, 1)


def test_a_group_without_a_queue_says_so():
    group, _ = make_group(server("a"))
    assert group.snapshot() == {"name": "app", "balance": "round_robin", "queue": None,
                                "peers": [peer_data("a")]}


def test_ramping_peer_shows_its_ramped_weight():
    group, clock = make_group(server("a", weight=4, slow_start=8.0), server("b"))
    group.peers[0].set_down(True, 0.0)
    group.peers[0].set_down(False, 0.0)
    clock.advance(4)
    assert group.snapshot()["peers"][0]["effective_weight"] == 4 * 33 / 64


def test_manager_snapshot_has_every_group_by_name():
    clock = Clock()
    manager = UpstreamManager({
        "app": upstream(server("a"), name="app"),
        "api": upstream(server("x"), server("y", backup=True), name="api",
                        balance="least_conn"),
    }, clock)
    snapshot = manager.snapshot()
    assert list(snapshot) == ["app", "api"]
    assert snapshot["app"] == manager.group("app").snapshot()
    assert snapshot["api"]["balance"] == "least_conn"
    assert [p["name"] for p in snapshot["api"]["peers"]] == ["x", "y"]
    assert snapshot["api"]["peers"][1]["backup"] is True
    assert json.loads(json.dumps(snapshot)) == snapshot


def test_the_last_health_probe_and_its_latency_are_shown():
    from gateway.upstream.health import ProbeResult

    group, clock, _, _ = busy_group()
    b = group.peers[1]
    b.health_last = ProbeResult(False, "status 500")
    b.health_latency = 0.012
    b.set_healthy(False, clock.seconds())
    data = group.snapshot()["peers"][1]
    assert data["health_check"] == {"passed": False, "reason": "status 500", "latency": 0.012}
    assert data["state"] == "unhealthy"
    json.dumps(data)
