"""HealthChecker: the probe schedule and the fails/passes hysteresis, on a task.Clock.

The probe is a recording fake: each peer answers from a script (``True`` passed,
``False`` failed, an exception → errback, ``HANG`` → never answers, ``HELD`` → the test
answers later). Every time and state is asserted exactly.
"""
from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs

from gateway.config.model import HealthCheckSettings, QueueSettings
from gateway.upstream import Outcome
from gateway.upstream.health import HealthChecker, ProbeResult

from tests.upstream.helpers import make_group, serve, server

HANG = "hang"
HELD = "held"


class FakeProbe:
    """Records ``(time, peer)`` per probe and answers from per-peer scripts; a peer
    without a script (or past its end) passes."""

    def __init__(self, clock, **scripts):
        self.clock = clock
        self.scripts = {name: list(script) for name, script in scripts.items()}
        self.calls: list[tuple[float, str]] = []
        self.cancelled: list[tuple[float, str]] = []
        self.held: dict[str, Deferred] = {}

    def __call__(self, peer):
        name = peer.name
        self.calls.append((self.clock.seconds(), name))
        script = self.scripts.get(name)
        answer = script.pop(0) if script else True
        d = Deferred(lambda _: self.cancelled.append((self.clock.seconds(), name)))
        if answer is HANG:
            return d
        if answer is HELD:
            self.held[name] = d
            return d
        if isinstance(answer, Exception):
            d.errback(answer)
        else:
            d.callback(ProbeResult(answer, "status 200" if answer else "status 500"))
        return d

    def times(self, name):
        return [t for t, n in self.calls if n == name]


def checker_for(*servers, probe_scripts=None, **check):
    group, clock = make_group(*servers)
    probe = FakeProbe(clock, **(probe_scripts or {}))
    checker = HealthChecker(group, HealthCheckSettings(**check), probe, clock)
    return checker, group, probe, clock


def healthy_after_each_probe(clock, peer, count, interval):
    """Run ``count`` probes of the only peer and note ``peer.healthy`` after each."""
    states = []
    for _ in range(count):
        clock.advance(interval if states else 0)
        states.append(peer.healthy)
    return states


# -- scheduling ------------------------------------------------------------------------


def test_first_probes_are_spread_over_the_first_second_then_every_interval():
    """Four peers, interval 2s: first probes at 0, 0.25, 0.5, 0.75 (1s spread over four),
    then each peer again 2s after its previous probe."""
    checker, group, probe, clock = checker_for(
        server("a"), server("b"), server("c"), server("d", backup=True), interval=2)
    checker.startService()
    assert probe.calls == []            # nothing fires inside startService
    clock.pump([0, 0.25, 0.25, 0.25, 1.25, 0.25, 0.25, 0.25])
    assert probe.calls == [
        (0, "a"), (0.25, "b"), (0.5, "c"), (0.75, "d"),
        (2, "a"), (2.25, "b"), (2.5, "c"), (2.75, "d"),
    ]


def test_first_probes_spread_over_the_interval_when_it_is_shorter_than_a_second():
    checker, group, probe, clock = checker_for(server("a"), server("b"), interval=0.5)
    checker.startService()
    clock.pump([0, 0.25, 0.25, 0.25])
    assert probe.calls == [(0, "a"), (0.25, "b"), (0.5, "a"), (0.75, "b")]


def test_next_probe_is_an_interval_after_the_previous_one_ended():
    """A probe that takes 1.5s: the next starts at 1.5 + 5, never while one runs."""
    checker, group, probe, clock = checker_for(
        server("a"), probe_scripts={"a": [HELD, HELD]}, interval=5, timeout=2)
    checker.startService()
    clock.advance(0)
    clock.advance(1.5)
    probe.held.pop("a").callback(ProbeResult(True, "status 200"))
    clock.advance(4.9)
    assert probe.times("a") == [0]
    clock.advance(0.1)
    assert probe.times("a") == [0, 6.5]


def test_a_probe_that_hangs_is_cancelled_at_timeout_and_counts_as_failed():
    """timeout=1: the hanging probe is cancelled at t=1 and fails with the reason
    "timed out after 1s"; the next probe is at 1 + interval."""
    checker, group, probe, clock = checker_for(
        server("a"), server("b"), probe_scripts={"a": [HANG, True]}, interval=5, timeout=1)
    a = group.peers[0]
    checker.startService()
    clock.advance(0)
    clock.advance(0.999)
    assert (probe.cancelled, a.healthy, a.health_last) == ([], True, None)
    with capturedLogs() as events:
        clock.advance(0.001)
    assert probe.cancelled == [(1, "a")]
    assert a.healthy is False
    assert a.health_last == ProbeResult(False, "timed out after 1s")
    assert a.health_latency == 1
    (event,) = events
    assert (event["upstream"], event["peer"], event["fails"], event["reason"]) == (
        "app", "a", 1, "timed out after 1s")
    clock.advance(5)
    assert probe.times("a") == [0, 6]
    assert a.healthy is True


def test_sub_second_timeouts_are_reported_in_milliseconds():
    checker, group, probe, clock = checker_for(
        server("a"), server("b"), probe_scripts={"a": [HANG]}, interval=5, timeout=0.25)
    checker.startService()
    clock.pump([0, 0.25])
    assert group.peers[0].health_last == ProbeResult(False, "timed out after 250ms")


def test_stop_cancels_the_timer_and_the_probe_in_flight_and_ignores_a_late_answer():
    checker, group, probe, clock = checker_for(
        server("a"), server("b"), probe_scripts={"a": [HELD]}, interval=1, timeout=10)
    checker.startService()
    clock.advance(0)                    # a's probe is in flight, b's is scheduled
    assert probe.calls == [(0, "a")]
    checker.stopService()
    assert probe.cancelled == [(0, "a")]
    assert checker.checks == {}
    clock.advance(30)
    assert probe.calls == [(0, "a")]
    assert clock.getDelayedCalls() == []
    assert group.peers[0].health_last is None


# -- hysteresis --------------------------------------------------------------------------


def test_fails_two_passes_three_need_consecutive_results():
    """fails=2: one failure between passes changes nothing; two in a row make the
    peer unhealthy. passes=3: a failure restarts the count; three passes in a row
    make it healthy again."""
    script = [False, True, False, False, False, True, True, False, True, True, True, False]
    checker, group, probe, clock = checker_for(
        server("a"), server("b"), probe_scripts={"a": script}, interval=1, fails=2,
        passes=3)
    a = group.peers[0]
    checker.startService()
    states = healthy_after_each_probe(clock, a, len(script), 1)
    assert states == [
        True,    # F  1 fail
        True,    # P
        True,    # F  1 fail
        False,   # F  2 fails in a row: unhealthy
        False,   # F
        False,   # P  1 pass
        False,   # P  2 passes
        False,   # F  count restarts
        False,   # P  1
        False,   # P  2
        True,    # P  3 passes in a row: healthy again
        True,    # F  1 fail only
    ]
    assert probe.times("a") == list(range(12))


def test_state_changes_are_logged_with_structured_fields():
    checker, group, probe, clock = checker_for(
        server("a"), server("b"), probe_scripts={"a": [False, True, True]}, interval=1,
        passes=2)
    checker.startService()
    with capturedLogs() as events:
        clock.pump([0, 1, 1])
    assert [(e["log_level"].name, e["upstream"], e["peer"], e["healthy"], e["reason"])
            for e in events] == [
        ("warn", "app", "a", False, "status 500"),
        ("info", "app", "a", True, "status 200"),
    ]
    assert events[0]["fails"] == 1 and events[1]["passes"] == 2
    assert events[0]["log_format"].startswith("upstream server {peer} in upstream "
                                              "{upstream} is unhealthy")


def test_an_errback_is_a_failed_probe_with_the_error_as_reason():
    error = ConnectionRefusedError(
        "connect() failed (111: Connection refused) while connecting to upstream")
    checker, group, probe, clock = checker_for(
        server("a"), server("b"), probe_scripts={"a": [error]}, interval=1)
    checker.startService()
    clock.advance(0)
    a = group.peers[0]
    assert a.healthy is False
    assert a.health_last == ProbeResult(
        False, "connect() failed (111: Connection refused) while connecting to upstream")


def test_last_result_and_latency_are_kept_on_the_peer():
    checker, group, probe, clock = checker_for(
        server("a"), probe_scripts={"a": [HELD]}, interval=1, timeout=2)
    a = group.peers[0]
    checker.startService()
    clock.advance(0)
    clock.advance(0.25)
    probe.held.pop("a").callback(ProbeResult(True, "status 204"))
    assert (a.health_last, a.health_latency) == (ProbeResult(True, "status 204"), 0.25)


def test_probes_do_not_count_as_requests_or_connections():
    checker, group, probe, clock = checker_for(
        server("a", max_conns=1), server("b"), probe_scripts={"a": [False]}, interval=1)
    a = group.peers[0]
    checker.startService()
    clock.pump([0, 1, 1])
    assert (a.conns, a.requests, a.fails, a.failures) == (0, 0, 0, 0)
    assert len(probe.times("a")) == 3


# -- which peers, and what healthy means to the group -----------------------------


def test_unhealthy_primary_is_skipped_and_the_backup_serves_until_it_recovers():
    checker, group, probe, clock = checker_for(
        server("a"), server("b", backup=True), probe_scripts={"a": [False, True]},
        interval=1)
    checker.startService()
    clock.advance(0)
    assert serve(group) == "b"
    assert serve(group) == "b"
    clock.pump([0.5, 0.5])              # a passes at 1
    assert [serve(group) for _ in range(3)] == ["a", "a", "a"]
    clock.advance(0.5)
    assert probe.times("b") == [0.5, 1.5]   # the backup tier is probed too


def test_unhealthy_peer_is_skipped_like_a_failed_one():
    checker, group, probe, clock = checker_for(
        server("a"), server("b"), server("c"), probe_scripts={"b": [False]}, interval=5)
    checker.startService()
    clock.pump([0, 0.5])                # b is probed at 1/3: unhealthy
    assert [serve(group) for _ in range(4)] == ["a", "c", "a", "c"]


def test_the_only_server_when_unhealthy_gives_no_live_upstreams():
    """Unlike passive failures, which never take a group's only server out."""
    checker, group, probe, clock = checker_for(
        server("a"), probe_scripts={"a": [False, True]}, interval=1)
    checker.startService()
    clock.advance(0)
    assert serve(group) is None
    clock.advance(1)
    assert serve(group) == "a"


def test_down_peers_are_not_probed_until_they_are_up():
    checker, group, probe, clock = checker_for(
        server("a"), server("b", down=True), interval=1)
    b = group.peers[1]
    checker.startService()
    clock.pump([0, 0.5, 0.5, 0.5, 0.5])   # b's turns at 0.5 and 1.5 pass unused
    assert probe.times("a") == [0, 1, 2]
    assert probe.times("b") == []
    b.set_down(False, clock.seconds())  # the runtime API brings it back
    clock.advance(0.5)
    assert probe.times("b") == [2.5]


def test_peers_changed_starts_loops_for_new_peers_and_stops_those_of_gone_ones():
    checker, group, probe, clock = checker_for(
        server("a"), server("b"), probe_scripts={"b": [True, HELD]}, interval=2)
    checker.startService()
    clock.pump([0, 0.5, 1.5, 0.5])      # a at 0, 2; b at 0.5, 2.5 (held)
    assert probe.calls == [(0, "a"), (0.5, "b"), (2, "a"), (2.5, "b")]
    a, b = group.peers
    c = make_group(server("c"))[0].peers[0]
    group.peers.remove(b)
    group.peers.append(c)
    checker.peers_changed()
    assert probe.cancelled == [(2.5, "b")]
    assert set(checker.checks) == {a, c}
    clock.advance(0)
    assert probe.times("c") == [2.5]    # a new peer's first probe comes at once
    clock.advance(10)
    assert probe.times("b") == [0.5, 2.5]
    checker.peers_changed()             # nothing changed: nothing restarts
    assert set(checker.checks) == {a, c}


def test_forget_stops_and_makes_every_peer_healthy_again():
    checker, group, probe, clock = checker_for(
        server("a"), server("b"), probe_scripts={"a": [False]}, interval=1)
    checker.startService()
    clock.advance(0)
    assert group.peers[0].healthy is False
    checker.forget()
    assert group.peers[0].healthy is True
    assert not checker.running
    assert clock.getDelayedCalls() == []


def test_a_peer_healthy_again_serves_the_requests_waiting_in_the_queue():
    """A passed check is capacity that came back without a release: a request waiting
    in the queue gets the peer at once, not only at the next release or new request."""
    group, clock = make_group(server("a", max_conns=1), server("b"),
                              queue=QueueSettings(size=5, timeout=60))
    probe = FakeProbe(clock, b=[False, True])
    checker = HealthChecker(group, HealthCheckSettings(interval=1), probe, clock)
    checker.startService()
    clock.pump([0, 0.5])                # b fails its first probe at 0.5: unhealthy
    a, b = group.peers
    assert b.healthy is False
    first = group.acquire(group.attempts())
    assert first.peer is a
    attempts = group.attempts()
    assert group.acquire(attempts) is None
    waiting = group.wait(attempts)
    served = []
    waiting.addCallback(served.append)
    clock.advance(1)                    # b passes at 1.5
    assert b.healthy is True
    assert [lease.peer for lease in served] == [b]
    assert len(group.queue) == 0
    served[0].release(Outcome.OK)
    first.release(Outcome.OK)
    checker.stopService()
