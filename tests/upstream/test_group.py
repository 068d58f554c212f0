"""UpstreamGroup, Attempts and Lease: nginx's get/free round-robin peer bookkeeping.

Every test runs on a ``task.Clock`` starting at 0 and asserts exact sequences.
"""
from __future__ import annotations

import pytest
from twisted.logger import capturedLogs

from gateway.upstream import Outcome, PickContext

from tests.upstream.helpers import make_group, sequence, serve, server


# -- passive failures: max_fails / fail_timeout -------------------------------------


def test_failures_accumulate_within_fail_timeout_until_max_fails():
    """With max_fails=3 the peer keeps taking its share after one and two failures and
    is skipped from the third failure until fail_timeout has passed."""
    group, clock = make_group(server("a", max_fails=3, fail_timeout=10), server("b"))
    a = group.peers[0]

    served = []
    for _ in range(6):
        clock.advance(1)
        lease = group.acquire(group.attempts())
        served.append(lease.peer.name)
        lease.release(Outcome.FAILED if lease.peer is a else Outcome.OK)

    assert served == ["a", "b", "a", "b", "a", "b"]
    assert a.fails == 3
    assert (a.accessed, a.checked) == (5, 5)
    assert sequence(group, 4) == ["b", "b", "b", "b"]
    clock.advance(9)                    # t=15, now - checked == 10: still inside
    assert sequence(group, 2) == ["b", "b"]
    clock.advance(1)                    # t=16: the window is over, a is a candidate
    # again; it was skipped (current_weight -1) while b led (1), so b wins once first.
    assert sequence(group, 2) == ["b", "a"]
    assert a.checked == 16


def test_successes_inside_the_window_do_not_reset_the_counter():
    """nginx counts failures per fail_timeout window: a success in between does not
    clear them, so two failures 5 s apart with a success between disable the peer."""
    group, clock = make_group(server("a", max_fails=2, fail_timeout=10), server("b"))
    a = group.peers[0]

    assert serve(group, Outcome.FAILED) == "a"
    assert serve(group) == "b"
    clock.advance(2)
    assert serve(group) == "a"
    assert a.fails == 1
    clock.advance(3)
    assert serve(group) == "b"
    assert serve(group, Outcome.FAILED) == "a"

    assert a.fails == 2
    assert sequence(group, 3) == ["b", "b", "b"]


def test_failure_older_than_fail_timeout_is_forgotten_on_next_success():
    """A success picked after fail_timeout opens a new window (checked = now), so it
    resets the old count: failures must fall inside one window to add up."""
    group, clock = make_group(server("a", max_fails=2, fail_timeout=10), server("b"))
    a = group.peers[0]

    assert serve(group, Outcome.FAILED) == "a"
    clock.advance(11)
    assert serve(group) == "b"
    assert serve(group) == "a"

    assert a.fails == 0
    assert a.checked == 11


def test_after_fail_timeout_exactly_one_probe_is_allowed():
    """Once fail_timeout has passed, one request probes the failed peer; while that
    probe is in flight, other requests still avoid the peer (here: the backup)."""
    group, clock = make_group(
        server("a", max_fails=1, fail_timeout=10), server("b", backup=True)
    )
    a = group.peers[0]

    attempts = group.attempts()
    lease = group.acquire(attempts)
    lease.release(Outcome.FAILED)
    assert group.acquire(attempts).peer.name == "b"     # the retry moves to the backup

    clock.advance(10)
    assert serve(group) == "b"                         # 10 s is still inside the window
    clock.advance(0.5)
    probe = group.acquire(group.attempts())
    assert probe.peer is a
    assert a.checked == 10.5
    clock.advance(1)
    assert sequence(group, 3) == ["b", "b", "b"]       # only one probe per window
    probe.release(Outcome.OK)
    assert a.fails == 0


def test_successful_probe_resets_failures_and_peer_rejoins():
    """A successful probe clears fails; the peer takes its share again at once."""
    group, clock = make_group(
        server("a", max_fails=1, fail_timeout=10), server("b", backup=True)
    )
    assert serve(group, Outcome.FAILED) == "a"
    assert sequence(group, 2) == ["b", "b"]

    clock.advance(11)
    assert serve(group, Outcome.OK) == "a"

    assert group.peers[0].fails == 0
    assert sequence(group, 3) == ["a", "a", "a"]


def test_failed_probe_disables_the_peer_for_another_fail_timeout():
    """A failed probe counts as a new failure at the probe's time."""
    group, clock = make_group(
        server("a", max_fails=1, fail_timeout=10), server("b", backup=True)
    )
    assert serve(group, Outcome.FAILED) == "a"
    clock.advance(11)
    assert serve(group, Outcome.FAILED) == "a"

    a = group.peers[0]
    assert (a.fails, a.accessed, a.checked) == (2, 11, 11)
    clock.advance(10)
    assert serve(group) == "b"
    clock.advance(1)
    assert serve(group) == "a"


def test_next_outcome_is_not_a_failure_but_resets_fails_after_a_probe():
    """NEXT (http_403/404 retries) is treated like a success by the peer: no failure
    counted, and a probe answered with NEXT makes the peer live again."""
    group, clock = make_group(server("a", max_fails=1, fail_timeout=10), server("b"))
    a = group.peers[0]

    assert serve(group, Outcome.NEXT) == "a"
    assert (a.fails, a.failures) == (0, 0)

    assert serve(group) == "b"
    assert serve(group, Outcome.FAILED) == "a"
    clock.advance(11)
    # a (effective weight 0 after the failure) regains weight before winning a pick.
    assert sequence(group, 2) == ["b", "b"]
    assert serve(group, Outcome.NEXT) == "a"
    assert a.fails == 0


def test_effective_weight_drops_on_failure_and_climbs_back_one_per_pick():
    """A failure lowers effective_weight by weight // max_fails; every pick in which the
    peer is a candidate raises it by one, back up to weight."""
    group, clock = make_group(
        server("a", weight=6, max_fails=3, fail_timeout=10), server("b", weight=6)
    )
    a = group.peers[0]

    assert serve(group, Outcome.FAILED) == "a"
    assert a.effective_weight == 4

    seen = []
    picks = []
    for _ in range(4):
        picks.append(serve(group))
        seen.append(a.effective_weight)
    assert seen == [5, 6, 6, 6]
    # current_weight after the failed pick: a=-6, b=6; a at weight 4 then 5 loses the
    # next two picks, and the lag it built up costs it one more turn after that.
    assert picks == ["b", "b", "a", "b"]


def test_effective_weight_does_not_go_below_zero():
    """Two in-flight requests to a weight-3, max_fails=1 peer fail: 3 - 3 - 3 floors at
    0; each failure that leaves the peer disabled is logged, as nginx does."""
    group, clock = make_group(
        server("a", weight=3, max_fails=1, fail_timeout=10), server("b", weight=3)
    )
    first = group.acquire(group.attempts())
    assert serve(group) == "b"
    second = group.acquire(group.attempts())
    assert first.peer is second.peer is group.peers[0]

    with capturedLogs() as events:
        first.release(Outcome.FAILED)
        second.release(Outcome.FAILED)

    a = group.peers[0]
    assert (a.effective_weight, a.fails, a.failures, a.conns) == (0, 2, 2, 0)
    disabled = [e for e in events if "temporarily disabled" in e["log_format"]]
    assert [(e["peer"], e["fails"], e["upstream"]) for e in disabled] == [
        ("a", 1, "app"), ("a", 2, "app"),
    ]


def test_disabled_log_is_emitted_when_fails_reaches_max_fails():
    """No log for failures below max_fails; a warning with peer= and fails= fields when
    the peer becomes temporarily disabled."""
    group, clock = make_group(server("a", max_fails=2), server("b"))
    with capturedLogs() as events:
        assert serve(group, Outcome.FAILED) == "a"
        assert not [e for e in events if "disabled" in e["log_format"]]
        assert serve(group) == "b"
        assert serve(group, Outcome.FAILED) == "a"
    (event,) = [e for e in events if "disabled" in e["log_format"]]
    assert event["log_format"].startswith("upstream server temporarily disabled")
    assert (event["peer"], event["fails"]) == ("a", 2)
    assert event["log_level"].name == "warn"


def test_max_fails_zero_disables_failure_accounting():
    """max_fails=0: failures never make the peer unavailable nor lower its weight."""
    group, clock = make_group(server("a", max_fails=0), server("b"))
    a = group.peers[0]
    with capturedLogs() as events:
        for _ in range(3):
            assert serve(group, Outcome.FAILED) == "a"
            assert serve(group) == "b"
    assert a.effective_weight == 1
    assert a.failures == 3
    assert not [e for e in events if "disabled" in e["log_format"]]


# -- backups --------------------------------------------------------------------------


def test_backup_used_only_when_all_primaries_unavailable_and_abandoned_after_recovery():
    """Backups take no traffic while a primary is available; when every primary has
    failed, requests go to the backup; once a primary recovers, back to primaries."""
    group, clock = make_group(
        server("a", fail_timeout=10), server("b", fail_timeout=10),
        server("c", backup=True),
    )
    assert sequence(group, 4) == ["a", "b", "a", "b"]

    attempts = group.attempts()
    names = []
    for outcome in (Outcome.FAILED, Outcome.FAILED, Outcome.OK):
        lease = group.acquire(attempts)
        names.append(lease.peer.name)
        lease.release(outcome)
    assert names == ["a", "b", "c"]
    assert attempts.in_backup

    assert sequence(group, 3) == ["c", "c", "c"]
    clock.advance(11)
    # Both come back with effective weight 0 and current weights a=-1, b=1 (b was the
    # retry's lone candidate), so b is probed first, then a gets its turn.
    assert sequence(group, 4) == ["b", "b", "a", "b"]
    assert [p.fails for p in group.peers] == [0, 0]
    assert group.backups[0].requests == 4


def test_request_that_moved_to_backups_stays_there():
    """nginx switches a request's tier once: after primaries free up again, that
    request's retries still go to the backups (whose tried set starts empty), then
    "no live upstreams"."""
    group, clock = make_group(
        server("a", max_conns=1), server("b", max_conns=1),
        server("c", backup=True), server("d", backup=True),
    )
    held = [group.acquire(group.attempts()), group.acquire(group.attempts())]
    assert [lease.peer.name for lease in held] == ["a", "b"]

    attempts = group.attempts()
    first = group.acquire(attempts)
    assert first.peer.name == "c"
    for lease in held:
        lease.release(Outcome.OK)
    first.release(Outcome.FAILED)

    second = group.acquire(attempts)
    assert second.peer.name == "d"
    second.release(Outcome.FAILED)
    assert group.acquire(attempts) is None
    assert [p.name for p in attempts.tried] == ["c", "d"]
    # A new request starts at the primaries again (b is ahead: a was full for one pick).
    assert sequence(group, 2) == ["b", "a"]


def test_no_live_upstreams_when_both_tiers_unavailable():
    group, clock = make_group(
        server("a", max_fails=1), server("b", backup=True, max_fails=1)
    )
    assert serve(group, Outcome.FAILED) == "a"
    assert serve(group, Outcome.FAILED) == "b"
    attempts = group.attempts()
    assert group.acquire(attempts) is None
    assert attempts.tried == [] and attempts.in_backup
    assert [p.conns for p in group.peers + group.backups] == [0, 0]


# -- single-server groups -----------------------------------------------------------


def test_single_server_group_is_never_marked_failed():
    """One server and no backups: failures are never counted against it (its fails
    stay 0, it stays available) and the request gets no retry (tries drops to 0)."""
    group, clock = make_group(server("a", max_fails=1, fail_timeout=10))
    assert group.single
    a = group.peers[0]

    for _ in range(5):
        attempts = group.attempts()
        assert attempts.tries == 1
        lease = group.acquire(attempts)
        assert lease.peer is a
        lease.release(Outcome.FAILED)
        assert attempts.tries == 0

    assert (a.fails, a.effective_weight, a.checked, a.accessed) == (0, 1, 0, 0)
    assert (a.requests, a.failures, a.conns) == (5, 5, 0)


def test_single_server_group_unavailable_only_when_down_or_at_max_conns():
    group, clock = make_group(server("a", max_conns=1))
    held = group.acquire(group.attempts())
    assert held is not None
    assert group.acquire(group.attempts()) is None
    held.release(Outcome.OK)
    assert serve(group) == "a"

    down, _ = make_group(server("a", down=True))
    attempts = down.attempts()
    assert attempts.tries == 0
    assert down.acquire(attempts) is None


def test_one_server_with_a_backup_is_not_single():
    """A backup makes the group a normal two-tier group: failures count again."""
    group, clock = make_group(server("a", max_fails=1), server("b", backup=True))
    assert not group.single
    assert serve(group, Outcome.FAILED) == "a"
    assert group.peers[0].fails == 1
    assert serve(group) == "b"


# -- max_conns ----------------------------------------------------------------------


def test_max_conns_peer_skipped_while_full_and_used_again_after_release():
    group, clock = make_group(server("a", max_conns=1), server("b"))
    a, b = group.peers

    held = group.acquire(group.attempts())
    assert held.peer is a and a.conns == 1
    assert sequence(group, 3) == ["b", "b", "b"]

    held.release(Outcome.OK)
    assert a.conns == 0
    # Skipped peers neither gain nor pay current_weight: a resumes at -1, b at 1.
    assert sequence(group, 3) == ["b", "a", "b"]


def test_acquire_counts_and_release_uncounts_connections():
    group, clock = make_group(server("a"), server("b"))
    leases = [group.acquire(group.attempts()) for _ in range(4)]
    assert [p.conns for p in group.peers] == [2, 2]
    assert [p.requests for p in group.peers] == [2, 2]
    for lease in leases:
        lease.release(Outcome.OK)
    assert [p.conns for p in group.peers] == [0, 0]


# -- tries --------------------------------------------------------------------------


def test_tries_count_non_down_peers_of_both_tiers_and_cap():
    """nginx: tries = non-down primaries + non-down backups, capped by
    proxy_next_upstream_tries when that is not 0."""
    group, clock = make_group(
        server("a"), server("b"), server("c"), server("d", down=True),
        server("e", backup=True), server("f", backup=True, down=True),
    )
    assert group.attempts().tries == 4
    assert group.attempts(max_tries=2).tries == 2
    assert group.attempts(max_tries=10).tries == 4


def test_each_release_spends_one_try_and_tries_stop_at_zero():
    group, clock = make_group(server("a"), server("b"))
    attempts = group.attempts(max_tries=1)
    lease = group.acquire(attempts)
    lease.release(Outcome.FAILED)
    assert attempts.tries == 0

    # A handler that ignores tries may still acquire; tries never goes negative.
    lease = group.acquire(attempts)
    assert lease.peer.name == "b"
    lease.release(Outcome.NEXT)
    assert attempts.tries == 0


def test_every_peer_once_then_no_live_upstreams():
    """Failing on every attempt walks the whole group once (primaries, then backups),
    spending every try, then acquire returns None."""
    group, clock = make_group(
        server("a", weight=3), server("b"), server("c", backup=True)
    )
    attempts = group.attempts()
    assert attempts.tries == 3
    names = []
    while attempts.tries:
        lease = group.acquire(attempts)
        names.append(lease.peer.name)
        lease.release(Outcome.FAILED)
    assert names == ["a", "b", "c"]
    assert group.acquire(attempts) is None


# -- the lease contract -------------------------------------------------------------


def test_double_release_raises():
    group, clock = make_group(server("a"), server("b"))
    lease = group.acquire(group.attempts())
    lease.release(Outcome.OK)
    with pytest.raises(RuntimeError):
        lease.release(Outcome.OK)
    assert lease.peer.conns == 0


def test_attempts_belong_to_their_group():
    group, _ = make_group(server("a"), server("b"))
    other, _ = make_group(server("c"), server("d"), name="other")
    with pytest.raises(ValueError):
        other.acquire(group.attempts())


def test_pick_context_is_optional_and_ignored_by_round_robin():
    group, _ = make_group(server("a"), server("b"))
    ctx = PickContext(remote_addr="192.0.2.1", hash_key="/x")
    assert group.acquire(group.attempts(), ctx).peer.name == "a"
    assert group.acquire(group.attempts()).peer.name == "b"


# -- max_conns -----------------------------------------------------------------------


def test_max_conns_counts_held_leases_and_overflows_to_the_backup():
    group, _ = make_group(server("a", max_conns=2), server("c", backup=True))
    leases = [group.acquire(group.attempts()) for _ in range(4)]
    assert [lease.peer.name for lease in leases] == ["a", "a", "c", "c"]
    leases[0].release(Outcome.OK)
    assert group.acquire(group.attempts()).peer.name == "a"


def test_duplicate_server_entries_each_have_their_own_max_conns():
    """The same address twice is two peers (as in nginx), each with its own limit."""
    group, _ = make_group(server("a", max_conns=1), server("a", max_conns=1))
    first, second = group.peers
    leases = [group.acquire(group.attempts()) for _ in range(3)]
    assert [lease.peer for lease in leases[:2]] == [first, second]
    assert leases[2] is None                    # both at max_conns: no live upstreams
    assert (first.conns, second.conns) == (1, 1)


def test_a_retry_holds_a_connection_of_its_own():
    """Each attempt is a lease: a retry counts on its new peer, never twice at once."""
    group, _ = make_group(server("a", max_conns=1), server("b", max_conns=1))
    attempts = group.attempts()
    first = group.acquire(attempts)
    assert first.peer.name == "a"
    other = group.acquire(group.attempts())     # b busy with another request
    assert other.peer.name == "b"
    first.release(Outcome.FAILED)
    assert group.acquire(attempts) is None      # a tried, b at max_conns
    other.release(Outcome.OK)
    retry = group.acquire(attempts)
    assert retry.peer.name == "b" and [p.conns for p in group.peers] == [0, 1]


def test_release_keeps_the_error_text_on_the_peer():
    group, clock = make_group(server("a"), server("b"))
    clock.advance(5)
    lease = group.acquire(group.attempts())
    lease.release(Outcome.FAILED, "upstream timed out")
    assert (lease.peer.last_error, lease.peer.last_error_at) == ("upstream timed out", 5.0)
    assert group.peers[1].last_error is None
