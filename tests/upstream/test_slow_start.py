"""slow_start (NGINX Plus): a recovered peer's weight ramps up, and round robin follows it."""
from __future__ import annotations

from collections import Counter

from gateway.upstream import Outcome
from gateway.upstream.peer import RAMP_STEPS
from tests.upstream.helpers import make_group, sequence, serve, server


def recover_by_health_check(peer, now: float) -> None:
    peer.set_healthy(False, now)
    peer.set_healthy(True, now)


def until_probe(group, peer):
    """Serve one-attempt requests until one goes to ``peer`` (its probe after
    ``fail_timeout``: its effective_weight is low, so others may come first); returns
    that lease, held, and how many requests went elsewhere."""
    others = 0
    while True:
        lease = group.acquire(group.attempts())
        if lease.peer is peer:
            return lease, others
        lease.release(Outcome.OK)
        others += 1


def restart_round_robin(group) -> None:
    """Forget the smooth round robin's running sums, so a phase starts a fresh cycle."""
    for peer in group.peers:
        peer.current_weight = 0


def test_weight_ramps_linearly_in_steps_from_a_small_value_to_weight():
    group, clock = make_group(server("a", weight=4, slow_start=8.0), server("b"))
    peer = group.peers[0]
    recover_by_health_check(peer, 0.0)
    assert RAMP_STEPS == 64
    assert peer.weight_now(0.0) == 4 / 64           # step 0 of 64, never exactly 0
    assert peer.weight_now(0.124) == 4 / 64
    assert peer.weight_now(0.125) == 8 / 64         # step 1 starts at 8s / 64
    assert peer.weight_now(4.0) == 4 * 33 / 64
    assert peer.weight_now(7.875) == 4.0            # the last step is the full weight
    assert peer.ramp_start == 0.0
    assert peer.weight_now(8.0) == 4                # over: the ramp is forgotten
    assert peer.ramp_start is None


def test_no_ramp_at_start_up_or_without_slow_start():
    group, clock = make_group(server("a", slow_start=30.0), server("b"))
    assert group.peers[0].ramp_start is None
    assert group.peers[0].weight_now(0.0) == 1
    recover_by_health_check(group.peers[1], 0.0)    # b has no slow_start
    assert group.peers[1].ramp_start is None


def test_a_health_check_recovery_starts_the_ramp_but_staying_healthy_does_not():
    group, clock = make_group(server("a", slow_start=30.0), server("b"))
    peer = group.peers[0]
    peer.set_healthy(True, 5.0)
    assert peer.ramp_start is None
    peer.set_healthy(False, 6.0)
    assert peer.ramp_start is None
    peer.set_healthy(True, 7.0)
    assert peer.ramp_start == 7.0 and peer.healthy


def test_clearing_down_starts_the_ramp():
    group, clock = make_group(server("a", slow_start=30.0, down=True), server("b"))
    peer = group.peers[0]
    peer.set_down(False, 3.0)
    assert peer.ramp_start == 3.0 and not peer.down
    peer.set_down(False, 4.0)                       # already up: nothing starts
    assert peer.ramp_start == 3.0
    peer.set_down(True, 5.0)
    assert peer.down


def test_a_successful_probe_after_fail_timeout_starts_the_ramp():
    group, clock = make_group(server("a", slow_start=30.0, fail_timeout=5), server("b"))
    a = group.peers[0]
    assert serve(group, Outcome.FAILED) == "a"      # disabled at t=0
    clock.advance(6)
    probe, _ = until_probe(group, a)
    assert a.ramp_start is None
    probe.release(Outcome.OK)
    assert a.ramp_start == 6.0 and a.fails == 0


def test_a_success_after_a_failure_that_did_not_disable_the_peer_starts_no_ramp():
    group, clock = make_group(server("a", slow_start=30.0, max_fails=2, fail_timeout=5),
                              server("b"))
    a = group.peers[0]
    assert serve(group, Outcome.FAILED) == "a"      # 1 of 2: still available
    clock.advance(6)
    assert sequence(group, 2).count("a") == 1
    assert a.fails == 0 and a.ramp_start is None


def test_round_robin_share_follows_the_ramp():
    """a (weight 1, slow_start 10s) against b (weight 1): a quarter, a half, three
    quarters, then all of b's weight, each over whole smooth round robin cycles."""
    group, clock = make_group(server("a", slow_start=10.0), server("b"))
    recover_by_health_check(group.peers[0], 0.0)

    clock.advance(2.4)                              # step 15: weight 16/64
    restart_round_robin(group)
    assert sequence(group, 5) == ["b", "b", "a", "b", "b"]

    clock.advance(2.5)                              # t=4.9, step 31: 32/64
    restart_round_robin(group)
    assert Counter(sequence(group, 6)) == {"a": 2, "b": 4}

    clock.advance(2.5)                              # t=7.4, step 47: 48/64
    restart_round_robin(group)
    assert Counter(sequence(group, 14)) == {"a": 6, "b": 8}

    clock.advance(2.6)                              # t=10: full weight
    restart_round_robin(group)
    assert sequence(group, 4) == ["a", "b", "a", "b"]
    assert group.peers[0].ramp_start is None


def test_over_the_whole_ramp_the_share_grows_to_an_even_split():
    """Ten requests every second through a 10s ramp: a's count per second follows
    10 * f / (1 + f) for a's weight fraction f (rounded by the round robin's cycles),
    from 0 to an even 5 of 10."""
    group, clock = make_group(server("a", slow_start=10.0), server("b"))
    recover_by_health_check(group.peers[0], 0.0)
    per_second = []
    for _ in range(11):
        per_second.append(sequence(group, 10).count("a"))
        clock.advance(1)
    assert per_second == [0, 1, 2, 2, 3, 3, 4, 4, 5, 5, 5]    # 55 without slow_start


def test_a_ramping_peer_that_is_the_only_one_available_gets_every_request():
    group, clock = make_group(server("a", slow_start=60.0), server("b", down=True))
    recover_by_health_check(group.peers[0], 0.0)
    assert group.peers[0].weight_now(0.0) == 1 / 64
    assert sequence(group, 3) == ["a", "a", "a"]


def test_the_weight_used_is_the_smaller_of_effective_weight_and_the_ramp():
    """After a failure effective_weight is 0 and climbs by one per pick (nginx); the
    ramp only caps it, so the two recoveries do not add up."""
    group, clock = make_group(server("a", weight=8, slow_start=8.0, fail_timeout=5),
                              server("b", weight=8))
    a = group.peers[0]
    assert serve(group, Outcome.FAILED) == "a"
    assert a.effective_weight == 0
    clock.advance(6)
    probe, others = until_probe(group, a)
    # a adds 0, 1, 2, 3, 4, 5 against b's 8: b wins five picks, a the sixth
    assert others == 5 and a.effective_weight == 6
    probe.release(Outcome.OK)
    assert a.ramp_start == 6.0
    assert a.snapshot(6.0)["effective_weight"] == 8 / 64      # the ramp is lower
    clock.advance(7.5)                              # step 60: 8 * 61 / 64 = 7.625
    assert a.weight_now(clock.seconds()) == 8 * 61 / 64
    assert a.snapshot(clock.seconds())["effective_weight"] == 6   # now the ramp is higher


def test_slow_start_in_a_single_server_group_is_harmless():
    group, clock = make_group(server("a", slow_start=30.0))
    recover_by_health_check(group.peers[0], 0.0)
    assert sequence(group, 3) == ["a", "a", "a"]
