"""least_conn (nginx's ``ngx_http_upstream_get_least_conn_peer``): exact sequences.

Requests are held (leases not released) wherever connection counts matter; every test
runs on a ``task.Clock`` starting at 0.
"""
from __future__ import annotations

import re

from gateway.upstream import Outcome
from gateway.upstream.balancers import least_conn
from gateway.upstream.peer import Peer

from tests.upstream.helpers import make_group, sequence, serve, server


def group_of(*servers, **options):
    return make_group(*servers, balance="least_conn", **options)


def hold(group, count: int) -> list:
    """``count`` requests whose leases stay held; returns the leases."""
    return [group.acquire(group.attempts()) for _ in range(count)]


def names(leases) -> list[str]:
    return [lease.peer.name for lease in leases]


def test_docstring_trace_weights_2_1_1_all_held():
    """The module docstring's table: a b c a c a with the current_weights it shows."""
    group, _ = group_of(server("a", weight=2), server("b"), server("c"))
    picks, weights = [], []
    for _ in range(6):
        picks.append(group.acquire(group.attempts()).peer.name)
        weights.append(tuple(p.current_weight for p in group.peers))

    assert picks == ["a", "b", "c", "a", "c", "a"]
    documented = re.search(r"→ ((?:[abc] ?)+),", least_conn.__doc__).group(1).split()
    assert picks == documented
    assert weights == [(-2, 1, 1), (-2, 0, 2), (-2, 0, 2), (-2, 0, 2), (0, 1, -1),
                       (-1, 2, -1)]
    assert [p.conns for p in group.peers] == [3, 1, 2]


def test_without_concurrency_ties_fall_back_to_smooth_weighted_round_robin():
    """Requests finished one at a time leave every peer at 0 connections: every pick
    is a tie among all, so the order is exactly round robin's (a a b a c a a)."""
    group, _ = group_of(server("a", weight=5), server("b"), server("c"))
    assert sequence(group, 7) == ["a", "a", "b", "a", "c", "a", "a"]


def test_peer_holding_a_slow_request_is_avoided_until_it_finishes():
    """One slow request on a: while it is in flight, quick requests alternate b, c;
    when it ends, a is back in the rotation."""
    group, _ = group_of(server("a"), server("b"), server("c"))
    slow = group.acquire(group.attempts())
    assert slow.peer.name == "a"

    assert sequence(group, 4) == ["b", "c", "b", "c"]
    slow.release(Outcome.OK)
    # every peer at 0 conns again; current weights a=-2, b=1, c=1 → b, c, then a
    assert sequence(group, 3) == ["b", "c", "a"]


def test_connections_are_compared_relative_to_weight():
    """Weights 3 and 1, every request held: a wins while conns_a * 1 < conns_b * 3,
    b while it is strictly lower, and the ties (0:0, 3:1) go by round robin, so the
    connections end 6:2."""
    group, _ = group_of(server("a", weight=3), server("b"))
    leases = hold(group, 8)
    assert names(leases) == ["a", "b", "a", "a", "a", "b", "a", "a"]
    assert [p.conns for p in group.peers] == [6, 2]


def test_retry_goes_to_the_least_loaded_peer_not_yet_tried():
    """A request whose attempt on the idle peer failed retries on the least loaded of
    the others, even though the failed one now has fewer connections."""
    group, _ = group_of(server("a"), server("b"), server("c"), server("d"))
    busy = hold(group, 3)
    assert names(busy) == ["a", "b", "c"]
    busy[1].release(Outcome.OK)                 # b: 0 conns, a and c: 1 each

    attempts = group.attempts()
    first = group.acquire(attempts)
    assert first.peer.name == "d"
    first.release(Outcome.FAILED)
    second = group.acquire(attempts)
    assert second.peer.name == "b"
    second.release(Outcome.FAILED)
    third = group.acquire(attempts)
    # a and c tied at 1 connection: round robin between them, c is ahead (1 vs -3)
    assert third.peer.name == "c"
    assert [p.name for p in attempts.tried] == ["d", "b", "c"]


def test_failed_peer_is_skipped_until_fail_timeout_then_probed_once():
    """A failed peer with the fewest connections is still skipped within
    fail_timeout; afterwards one request probes it and a success restores it."""
    group, clock = group_of(server("a", fail_timeout=10), server("b"))
    assert serve(group, Outcome.FAILED) == "a"
    held = hold(group, 2)
    assert names(held) == ["b", "b"]             # a has 0 conns but is failed

    clock.advance(11)
    probe = group.acquire(group.attempts())
    assert probe.peer.name == "a"
    assert group.peers[0].checked == 11
    probe.release(Outcome.OK)
    assert group.peers[0].fails == 0
    assert names(hold(group, 2)) == ["a", "a"]  # a: 0 → 1 conns against b's 2


def test_peer_at_max_conns_is_skipped_even_with_the_best_ratio():
    """a (weight 10, max_conns 2) has the lower ratio from pick 3 on (2/10 against
    b's 1/1, then 2/2); at its limit it is skipped, so b takes picks 4 and 5, and a
    returns as soon as one of its requests ends."""
    group, _ = group_of(server("a", weight=10, max_conns=2), server("b"))
    leases = hold(group, 5)
    assert names(leases) == ["a", "b", "a", "b", "b"]
    assert [p.conns for p in group.peers] == [2, 3]
    leases[0].release(Outcome.OK)
    assert names(hold(group, 1)) == ["a"]


def test_down_peer_is_never_picked():
    group, _ = group_of(server("a", down=True), server("b"), server("c"))
    assert names(hold(group, 4)) == ["b", "c", "c", "b"]
    assert group.peers[0].requests == 0


def test_backup_tier_is_also_balanced_by_least_connections():
    """With every primary unavailable, backups are chosen by least connections too
    (nginx's least_conn calls itself on the backup list): the backup holding a slow
    request is avoided, where round robin would alternate."""
    group, _ = group_of(
        server("a", max_conns=1), server("c", backup=True), server("d", backup=True),
    )
    assert names(hold(group, 1)) == ["a"]        # a is now full
    slow = group.acquire(group.attempts())
    assert slow.peer.name == "c"
    assert sequence(group, 3) == ["d", "d", "d"]
    slow.release(Outcome.OK)
    # c and d both idle again: round robin among the tied backups (c paid for pick 1)
    assert sequence(group, 2) == ["d", "c"]


def test_backups_take_no_traffic_while_a_primary_is_available():
    group, _ = group_of(server("a"), server("b"), server("c", backup=True))
    assert names(hold(group, 5)) == ["a", "b", "b", "a", "a"]
    assert group.backups[0].requests == 0


def test_ratio_uses_weight_now_so_slow_start_applies(monkeypatch):
    """The weight compared, and the most a peer adds in the tie-break, is
    ``Peer.weight_now`` (the slow_start ramp): with a's weight ramped down to 1 of 4,
    a and b are equals and share 2:2 where the full weight gives a 3 of 4."""
    def ramped(peer, now):
        return 1 if peer.name == "a" else peer.weight

    group, _ = group_of(server("a", weight=4), server("b"))
    assert names(hold(group, 4)) == ["a", "b", "a", "a"]   # full weight: 3 of 4 on a

    group, _ = group_of(server("a", weight=4), server("b"))
    monkeypatch.setattr(Peer, "weight_now", ramped)
    assert names(hold(group, 4)) == ["a", "b", "b", "a"]


def test_no_live_upstreams_when_every_peer_is_unavailable():
    group, _ = group_of(server("a", max_conns=1), server("b", down=True))
    assert names(hold(group, 1)) == ["a"]
    assert group.acquire(group.attempts()) is None
