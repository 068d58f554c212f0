"""A reload's new upstream settings: groups matched by name, peers by address.

``UpstreamManager.reconfigure`` / ``UpstreamGroup.reconfigure`` on a ``task.Clock``:
what a kept peer keeps (its object, connections, failures, health, counters), what the
file re-applies (weights, ``down``; the runtime API's ``drain`` cleared), and how tiers,
duplicates, balancers, queues and DNS peers follow.
"""
from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from gateway.config.model import QueueSettings
from gateway.upstream import Outcome, PickContext, QueueClosed, UpstreamManager
from gateway.upstream.resolve import peer_address
from tests.upstream.helpers import make_group, sequence, serve, server, upstream


def names(peers) -> list[str]:
    return [p.name for p in peers]


def test_a_kept_peer_keeps_its_object_and_state_and_takes_the_new_parameters():
    group, clock = make_group(server("a", max_fails=2), server("b"))
    a, b = group.peers
    held = group.acquire(group.attempts())                   # a, in flight
    failed = group.acquire(group.attempts())                 # b
    failed.release(Outcome.FAILED, "connect() failed")
    b.set_healthy(False, clock.seconds())
    clock.advance(1)

    added, removed = group.reconfigure(upstream(
        server("a", weight=3, max_fails=5, fail_timeout=30.0, max_conns=7, slow_start=2.0),
        server("b", max_fails=1)))

    assert (added, removed) == ([], [])
    assert group.peers == [a, b]
    assert (a.conns, a.requests, a.weight, a.effective_weight) == (1, 1, 3, 3)
    assert (a.max_fails, a.fail_timeout, a.max_conns, a.slow_start) == (5, 30.0, 7, 2.0)
    assert (b.fails, b.failures, b.healthy, b.last_error) == (1, 1, False, "connect() failed")
    assert b.failed_at(clock.seconds())                      # max_fails 1 now: out
    held.release(Outcome.OK)                                 # the lease still works
    assert a.conns == 0


def test_the_file_replaces_runtime_api_changes_and_the_rotation_starts_afresh():
    group, clock = make_group(server("a"), server("b"), server("c", down=True))
    a, b, c = group.peers
    a.draining = True                        # PATCH {"drain": true}
    b.set_weight(9)                          # PATCH {"weight": 9}
    c.set_down(False, clock.seconds())       # PATCH {"down": false}
    sequence(group, 3)
    assert [p.current_weight for p in group.peers] != [0, 0, 0]

    group.reconfigure(upstream(server("a"), server("b"), server("c", down=True)))

    assert (a.draining, b.weight, c.down) == (False, 1, True)
    assert [p.current_weight for p in group.peers] == [0, 0, 0]
    assert sequence(group, 4) == ["a", "b", "a", "b"]


def test_new_weights_give_nginx_smooth_round_robin_from_the_first_pick():
    group, _ = make_group(server("a"), server("b"))
    sequence(group, 3)
    group.reconfigure(upstream(server("a", weight=5), server("b"), server("c")))
    assert sequence(group, 7) == ["a", "a", "b", "a", "c", "a", "a"]


def test_added_and_removed_peers_are_reported_and_a_lease_on_a_removed_one_finishes():
    group, _ = make_group(server("a"), server("b"))
    a, b = group.peers
    lease = group.acquire(group.attempts())
    assert lease.peer is a

    added, removed = group.reconfigure(upstream(server("b"), server("c")))

    assert (names(added), removed) == (["c"], [a])
    assert names(group.peers) == ["b", "c"] and group.peers[0] is b
    lease.release(Outcome.FAILED)
    assert (a.conns, a.fails) == (0, 1)
    assert sequence(group, 2) == ["b", "c"]


def test_a_server_listed_twice_is_matched_in_file_order():
    group, _ = make_group(server("a", weight=1), server("a", weight=2), server("b"))
    first, second, b = group.peers
    first.fails = 1
    added, removed = group.reconfigure(upstream(server("a", weight=4), server("b")))
    assert (added, removed) == ([], [second])
    assert group.peers == [first, b]
    assert (first.weight, first.fails) == (4, 1)


def test_a_peer_whose_backup_flag_changed_moves_tier_with_its_state():
    group, _ = make_group(server("a"), server("b"), server("c", backup=True))
    a, b = group.peers
    (c,) = group.backups
    b.fails = 1
    group.reconfigure(upstream(server("a"), server("b", backup=True), server("c")))
    assert (group.peers, group.backups) == ([a, c], [b])
    assert (b.backup, b.fails, c.backup) == (True, 1, False)
    assert group.single is False


def test_the_balancing_method_changes_and_a_request_in_flight_drops_its_old_state():
    group, _ = make_group(server("a"), server("b"), server("c"), balance="ip_hash")
    attempts = group.attempts()
    first = group.acquire(attempts, PickContext(remote_addr="192.0.2.1"))
    first.release(Outcome.FAILED)
    assert attempts.balancer_state is not None

    # (hash's per-request state has a field ip_hash's lacks: it would break the pick)
    group.reconfigure(upstream(server("a"), server("b"), server("c"), balance="hash"))

    second = group.acquire(attempts, PickContext(remote_addr="192.0.2.1", hash_key="k"))
    assert second is not None and second.peer is not first.peer
    assert type(attempts.balancer_state).__name__ == "_HashState"
    second.release(Outcome.OK)


def test_a_removed_queue_fails_its_waiting_requests_and_a_changed_one_keeps_them():
    group, clock = make_group(server("a", max_conns=1), queue=QueueSettings(10, 60.0))
    busy = group.acquire(group.attempts())
    waiting = group.wait(group.attempts())
    failures = []
    waiting.addErrback(failures.append)

    group.reconfigure(upstream(server("a", max_conns=1), queue=QueueSettings(3, 5.0)))
    assert (len(group.queue), group.queue.max_size, group.queue.timeout) == (1, 3, 5.0)
    assert failures == []

    group.reconfigure(upstream(server("a", max_conns=1)))
    assert group.queue is None
    assert [f.type for f in failures] == [QueueClosed]
    busy.release(Outcome.OK)


def test_a_queue_added_by_a_reload_serves_requests_when_a_peer_frees():
    group, _ = make_group(server("a", max_conns=1))
    group.reconfigure(upstream(server("a", max_conns=1), queue=QueueSettings(10, 60.0)))
    busy = group.acquire(group.attempts())
    served = []
    group.wait(group.attempts()).addCallback(served.append)
    busy.release(Outcome.OK)
    assert names(lease.peer for lease in served) == ["a"]


def test_peers_from_dns_stay_with_their_entry_until_the_next_answer():
    resolving = server("svc", resolve=True)
    group, _ = make_group(server("a"), resolving)
    group.update_resolved(resolving, [peer_address("10.0.0.1", 80),
                                      peer_address("10.0.0.2", 80)])
    one, two = group.resolved_peers(resolving)
    one.fails = 1

    new_entry = server("svc", resolve=True, weight=4)
    added, removed = group.reconfigure(upstream(server("a"), new_entry))

    assert (added, removed) == ([], [])
    assert group.resolved_peers(new_entry) == [one, two]
    assert (one.name, one.weight, one.fails) == ("10.0.0.1:80", 4, 1)
    added, removed = group.update_resolved(new_entry, [peer_address("10.0.0.2", 80)])
    assert (added, removed) == ([], [one])


def test_a_dns_entry_that_left_takes_its_peers_with_it():
    resolving = server("svc", resolve=True)
    group, _ = make_group(server("a"), resolving)
    group.update_resolved(resolving, [peer_address("10.0.0.1", 80)])
    (peer,) = group.resolved_peers(resolving)
    added, removed = group.reconfigure(upstream(server("a")))
    assert (added, removed) == ([], [peer])
    assert names(group.peers) == ["a"] and group.resolve_servers == ()


def test_a_group_of_backups_only_is_refused_before_anything_changes():
    group, _ = make_group(server("a"))
    with pytest.raises(ValueError):
        group.reconfigure(upstream(server("a", backup=True)))
    assert names(group.peers) == ["a"] and group.peers[0].backup is False


def test_the_manager_matches_groups_by_name():
    clock = Clock()
    manager = UpstreamManager({"app": upstream(server("a")),
                               "old": upstream(server("o"), name="old")}, clock)
    app, old = manager.group("app"), manager.group("old")
    in_flight = old.acquire(old.attempts())

    changes = manager.reconfigure({"new": upstream(server("n"), name="new"),
                                   "app": upstream(server("a"), server("b"))})

    assert (changes.added, changes.removed) == (["new"], {"old": old})
    assert names(changes.kept["app"][0]) == ["b"]
    assert manager.group("app") is app and "old" not in manager
    assert list(manager.groups) == ["new", "app"]
    in_flight.release(Outcome.OK)
    assert serve(manager.group("new")) == "n"
