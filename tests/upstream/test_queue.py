"""The group's queue (NGINX Plus ``queue``): who waits, in what order, for how long."""
from __future__ import annotations

from twisted.internet.defer import CancelledError

from gateway.config.model import QueueSettings
from gateway.upstream import Outcome, QueueFull, QueueTimeout
from gateway.upstream.resolve import peer_address
from tests.upstream.helpers import make_group, server


def queued_group(*servers, size=10, timeout=5.0, **options):
    return make_group(*servers, queue=QueueSettings(size=size, timeout=timeout), **options)


class Waiter:
    """One request: its attempts and what its wait produced."""

    def __init__(self, group, name: str, events: list):
        self.group = group
        self.name = name
        self.events = events
        self.attempts = group.attempts()
        self.lease = None
        self.error = None
        self.deferred = None

    def start(self):
        """acquire, and wait when that finds nothing (as the proxy does)."""
        self.lease = self.group.acquire(self.attempts)
        if self.lease is not None:
            self.events.append((self.name, self.lease.peer.name))
            return self
        self.wait()
        return self

    def wait(self):
        self.deferred = self.group.wait(self.attempts)
        if self.deferred is None:
            self.events.append((self.name, "no live upstreams"))
            return self
        self.deferred.addCallbacks(self._served, self._failed)
        return self

    def _served(self, lease):
        self.lease = lease
        self.events.append((self.name, lease.peer.name))

    def _failed(self, failure):
        self.error = failure.value
        self.events.append((self.name, type(failure.value).__name__))


def test_request_waits_while_every_peer_is_at_max_conns_and_takes_the_freed_one():
    group, clock = queued_group(server("a", max_conns=1), server("b", max_conns=1))
    events = []
    Waiter(group, "r1", events).start()
    second = Waiter(group, "r2", events).start()
    third = Waiter(group, "r3", events).start()
    assert events == [("r1", "a"), ("r2", "b")]
    assert len(group.queue) == 1
    assert third.deferred is not None and not third.deferred.called

    second.lease.release(Outcome.OK)
    assert events[-1] == ("r3", "b")
    assert len(group.queue) == 0
    assert [p.conns for p in group.peers] == [1, 1]
    assert third.attempts.tried == [group.peers[1]]
    assert clock.getDelayedCalls() == []        # its timer went with it


def test_waiting_requests_are_served_first_come_first_served():
    group, _ = queued_group(server("a", max_conns=1), server("b", max_conns=1))
    events = []
    holders = [Waiter(group, f"h{i}", events).start() for i in range(2)]
    waiters = [Waiter(group, f"w{i}", events).start() for i in range(3)]
    assert len(group.queue) == 3
    del events[:]

    holders[1].lease.release(Outcome.OK)        # b frees: w0
    holders[0].lease.release(Outcome.OK)        # a frees: w1
    waiters[0].lease.release(Outcome.OK)        # b frees again: w2
    assert events == [("w0", "b"), ("w1", "a"), ("w2", "b")]
    assert len(group.queue) == 0


def test_a_full_queue_refuses_at_once_and_counts_the_overflow():
    group, clock = queued_group(server("a", max_conns=1), size=2)
    events = []
    Waiter(group, "h", events).start()
    waiters = [Waiter(group, f"w{i}", events).start() for i in range(3)]
    assert events == [("h", "a"), ("w2", "QueueFull")]
    assert isinstance(waiters[2].error, QueueFull)
    assert str(waiters[2].error) == "upstream queue is full"
    assert len(group.queue) == 2
    assert group.queue.overflows == 1
    assert len(clock.getDelayedCalls()) == 2    # one timer per waiting request only


def test_a_request_waiting_longer_than_timeout_fails_and_leaves_the_queue():
    group, clock = queued_group(server("a", max_conns=1), timeout=5.0)
    events = []
    holder = Waiter(group, "h", events).start()
    clock.advance(1)
    late = Waiter(group, "w1", events).start()      # queued at t=1
    clock.advance(2)
    Waiter(group, "w2", events).start()             # queued at t=3
    clock.advance(2.5)                              # t=5.5
    assert events == [("h", "a")]
    clock.advance(0.5)                              # t=6: w1 waited 5s
    assert events == [("h", "a"), ("w1", "QueueTimeout")]
    assert isinstance(late.error, QueueTimeout)
    assert len(group.queue) == 1
    assert group.queue.timeouts == 1

    holder.lease.release(Outcome.OK)                # w2 is next, not the expired w1
    assert events[-1] == ("w2", "a")
    assert group.peers[0].conns == 1


def test_a_cancelled_wait_leaves_the_queue_and_is_never_served():
    group, clock = queued_group(server("a", max_conns=1))
    events = []
    holder = Waiter(group, "h", events).start()
    gone = Waiter(group, "gone", events).start()
    stays = Waiter(group, "stays", events).start()
    gone.deferred.cancel()
    assert events == [("h", "a"), ("gone", "CancelledError")]
    assert isinstance(gone.error, CancelledError)
    assert len(group.queue) == 1
    assert len(clock.getDelayedCalls()) == 1

    holder.lease.release(Outcome.OK)
    assert events[-1] == ("stays", "a")
    assert gone.lease is None
    assert group.peers[0].conns == 1 and group.peers[0].requests == 2


def test_cancelling_after_being_served_changes_nothing():
    group, _ = queued_group(server("a", max_conns=1))
    events = []
    holder = Waiter(group, "h", events).start()
    waiter = Waiter(group, "w", events).start()
    holder.lease.release(Outcome.OK)
    waiter.deferred.cancel()
    assert events == [("h", "a"), ("w", "a")]
    assert group.peers[0].conns == 1


def test_no_waiting_without_a_queue_or_when_no_peer_is_merely_at_max_conns():
    plain, _ = make_group(server("a", max_conns=1), server("b", max_conns=1))
    events = []
    for name in ("h1", "h2", "r"):
        Waiter(plain, name, events).start()
    assert events[-1] == ("r", "no live upstreams")

    # b is down, c failed: nothing a release could bring back
    group, _ = queued_group(server("a", down=True), server("b"), server("c"))
    lease = group.acquire(group.attempts())
    lease.release(Outcome.FAILED)                   # b failed (max_fails 1)
    lease = group.acquire(group.attempts())
    lease.release(Outcome.FAILED)                   # c failed
    events = []
    Waiter(group, "r", events).start()
    assert events == [("r", "no live upstreams")]
    assert len(group.queue) == 0


def test_a_request_does_not_wait_for_a_peer_it_already_tried():
    """a failed for r (max_fails 0 keeps it in) and is busy again: r has nothing to
    wait for, a fresh request does."""
    group, _ = queued_group(server("a", max_conns=1, max_fails=0), server("b", down=True))
    events = []
    retrying = Waiter(group, "r", events).start()
    retrying.lease.release(Outcome.FAILED)
    Waiter(group, "h", events).start()
    assert events == [("r", "a"), ("h", "a")]
    retrying.start()
    assert events[-1] == ("r", "no live upstreams")
    fresh = Waiter(group, "f", events).start()
    assert fresh.deferred is not None and len(group.queue) == 1


def test_a_waiter_that_cannot_use_the_freed_peer_keeps_its_place():
    """r1 tried a and waits for b; when a frees, r2 (behind it) takes a; when b frees,
    r1 takes b."""
    group, _ = queued_group(server("a", max_conns=1, max_fails=0),
                            server("b", max_conns=1))
    events = []
    retrying = Waiter(group, "r1", events).start()
    hold_b = Waiter(group, "hb", events).start()
    assert events == [("r1", "a"), ("hb", "b")]
    retrying.lease.release(Outcome.FAILED)          # r1's try on a failed: retry
    hold_a = Waiter(group, "ha", events).start()    # a busy again
    assert events[-1] == ("ha", "a")
    retrying.wait()                                 # r1 waits for b (a is tried)
    fresh = Waiter(group, "r2", events).start()     # r2 waits for a or b
    assert len(group.queue) == 2

    hold_a.lease.release(Outcome.OK)
    assert events[-1] == ("r2", "a")
    assert len(group.queue) == 1
    hold_b.lease.release(Outcome.OK)
    assert events[-1] == ("r1", "b")
    assert [p.name for p in retrying.attempts.tried] == ["a", "b"]
    assert fresh.lease.peer.name == "a"


def test_a_newcomer_finds_the_queue_served_first():
    """Capacity that comes back without a release (b's fail_timeout ends) goes to the
    waiting request when the next request arrives; the newcomer waits behind it."""
    group, clock = queued_group(server("a", max_conns=1),
                                server("b", fail_timeout=10, max_conns=1), timeout=30)
    events = []
    bad = Waiter(group, "bad", events).start()
    assert events == [("bad", "a")]
    second = Waiter(group, "x", events).start()
    assert events[-1] == ("x", "b")
    second.lease.release(Outcome.FAILED)            # b failed at t=0 for 10s
    waiter = Waiter(group, "w", events).start()     # a busy, b failed: waits for a
    assert len(group.queue) == 1
    clock.advance(11)                               # b's window is over
    newcomer = Waiter(group, "n", events).start()
    # w went first (to b, the probe); then n found a busy and b in its probe: queued
    assert events[-1:] == [("w", "b")]
    assert len(group.queue) == 1
    assert newcomer.deferred is not None
    bad.lease.release(Outcome.OK)
    assert events[-1] == ("n", "a")
    assert waiter.lease.peer.name == "b"


def test_a_request_in_the_backup_tier_goes_back_to_the_primaries_from_the_queue():
    group, _ = queued_group(server("a", max_conns=1), server("c", backup=True, max_conns=1))
    events = []
    hold_a = Waiter(group, "ha", events).start()
    hold_c = Waiter(group, "hc", events).start()
    assert events == [("ha", "a"), ("hc", "c")]
    first = Waiter(group, "w1", events).start()
    second = Waiter(group, "w2", events).start()
    assert first.attempts.in_backup and second.attempts.in_backup
    assert len(group.queue) == 2

    hold_a.lease.release(Outcome.OK)                # a primary frees: w1 takes it
    assert events[-1] == ("w1", "a")
    assert not first.attempts.in_backup
    hold_c.lease.release(Outcome.OK)                # then the backup: w2
    assert events[-1] == ("w2", "c")
    assert second.attempts.in_backup


def test_a_served_request_that_releases_at_once_lets_the_next_one_go():
    """Dispatch is re-entrant: a waiter whose connect fails synchronously releases
    its lease inside the callback, and the next waiter is served then."""
    group, _ = queued_group(server("a", max_conns=1))
    events = []
    holder = Waiter(group, "h", events).start()
    first = group.wait(group.attempts())
    second = Waiter(group, "w2", events).wait()

    def fail_at_once(lease):
        events.append(("w1", lease.peer.name))
        lease.release(Outcome.OK)
    first.addCallback(fail_at_once)
    holder.lease.release(Outcome.OK)
    assert events == [("h", "a"), ("w1", "a"), ("w2", "a")]
    assert len(group.queue) == 0
    assert group.peers[0].conns == 1
    assert second.lease is not None


def test_single_server_group_queues_at_max_conns():
    group, clock = queued_group(server("a", max_conns=2))
    events = []
    holders = [Waiter(group, f"h{i}", events).start() for i in range(2)]
    Waiter(group, "w", events).start()
    assert len(group.queue) == 1
    holders[0].lease.release(Outcome.FAILED)
    assert events[-1] == ("w", "a")
    assert clock.getDelayedCalls() == []


def test_capacity_changed_serves_waiters_when_a_peer_comes_back():
    group, clock = queued_group(server("a", max_conns=1), server("b", down=True))
    events = []
    Waiter(group, "h", events).start()
    Waiter(group, "w", events).start()
    assert len(group.queue) == 1
    group.peers[1].set_down(False, clock.seconds())
    group.capacity_changed()
    assert events == [("h", "a"), ("w", "b")]


def test_no_timer_and_no_queue_entry_when_a_peer_is_free():
    group, clock = queued_group(server("a", max_conns=1), server("b"))
    events = []
    for i in range(4):
        Waiter(group, f"r{i}", events).start()
    assert [peer for _, peer in events] == ["a", "b", "b", "b"]
    assert clock.getDelayedCalls() == []
    assert len(group.queue) == 0


def test_a_peer_added_by_dns_serves_the_waiting_requests():
    group, _ = queued_group(server("a", max_conns=1), server("app.internal", resolve=True))
    events = []
    Waiter(group, "h", events).start()
    Waiter(group, "w", events).start()
    assert len(group.queue) == 1
    group.update_resolved(group.resolve_servers[0], [peer_address("10.0.0.7", 80)])
    assert events == [("h", "a"), ("w", "10.0.0.7:80")]
