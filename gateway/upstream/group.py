"""An upstream group: its two tiers of peers and the acquire/release pair.

This module owns what nginx keeps in ``ngx_http_upstream_get_round_robin_peer``,
``ngx_http_upstream_free_round_robin_peer`` and the per-request
``ngx_http_upstream_rr_peer_data_t``, for every balancing method alike:

- ``Attempts``: one per request — the peers tried, the tier in use, the tries left;
- ``UpstreamGroup.acquire``: asks the tier's balancer for a peer, falls over to the
  backup tier, counts the connection, marks the peer tried, starts a probe;
- ``Lease.release``: the only place that uncounts the connection and records the
  outcome (and the error text, if any) on the peer;
- ``UpstreamGroup.wait``: with a ``queue``, a request that found no peer while one it
  could use is at ``max_conns`` waits for it (the FIFO itself is ``queue.py``); every
  release, and every new request, first serves the waiting ones;
- ``UpstreamGroup.snapshot``: plain data about the group and its peers for status pages;
- ``UpstreamGroup.reconfigure``: a reload's new settings for the group, keeping the
  state of every peer whose ``address`` stays.

Retry policy (which failures are retried, ``proxy_next_upstream_timeout``) belongs to
the handlers: they stop when ``attempts.tries`` reaches 0 or ``acquire`` returns None.

A group of exactly one primary server and no backups is *single*, as in nginx: only
``down`` and ``max_conns`` make it unavailable, its failures never count against it
(``fails`` is cleared), and after its attempt ``tries`` drops to 0 — there is nowhere
else to retry.
"""
from __future__ import annotations

from typing import Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.config.model import Address, PeerSettings, UpstreamSettings
from gateway.upstream._interfaces import Balancer, Outcome, PickContext
from gateway.upstream.balancers import balancer_class
from gateway.upstream.peer import Peer
from gateway.upstream.queue import RequestQueue
from gateway.upstream.resolve import resolves

log = Logger()

_NO_CONTEXT = PickContext()


class Attempts:
    """Per-request state across retries (nginx's ``rrp`` plus ``pc->tries``).

    ``tries`` is how many attempts are left: the non-down peers of both tiers, capped
    by ``proxy_next_upstream_tries`` when that is not 0. ``tried`` lists every peer
    acquired, in order (for ``$upstream_addr``).
    """

    __slots__ = ("group", "tries", "tried", "balancer_state", "balancers", "_backup",
                 "_tried_in_tier")

    def __init__(self, group: UpstreamGroup, tries: int):
        self.group = group
        self.tries = tries
        self.tried: list[Peer] = []
        #: per-request state a balancer keeps across retries (nginx's
        #: ``iphp->hash``/``hp->hash``); None until the balancer sets it
        self.balancer_state = None
        #: the group's balancers this request started with: a reload that replaces
        #: them makes ``balancer_state`` meaningless (see ``UpstreamGroup._pick``)
        self.balancers = group.balancers
        self._backup = False
        # nginx's ``tried`` bitmap: only for the tier in use, cleared on the switch.
        self._tried_in_tier: set[Peer] = set()

    @property
    def in_backup(self) -> bool:
        """True once this request has moved to the backup tier (it only moves back
        when it waited in the queue: ``_restart_tiers``)."""
        return self._backup

    def eligible(self, peer: Peer, now: float) -> bool:
        """The one availability test every balancer applies to every candidate."""
        return peer not in self._tried_in_tier and peer.available(now)

    def _mark_tried(self, peer: Peer) -> None:
        self._tried_in_tier.add(peer)

    def _switch_to_backup(self) -> None:
        self._backup = True
        # nginx clears the bitmap; a request back from the queue keeps its backups tried
        self._tried_in_tier = {peer for peer in self.tried if peer.backup}

    def _restart_tiers(self) -> None:
        """A request served from the queue starts again at the primary tier (it
        waited for whichever peer frees first), still skipping the peers it tried."""
        self._backup = False
        self._tried_in_tier = {peer for peer in self.tried if not peer.backup}

    def __repr__(self) -> str:
        tier = "backup" if self._backup else "primary"
        names = ",".join(p.name for p in self.tried)
        return f"<Attempts {self.group.name} tier={tier} tries={self.tries} tried=[{names}]>"


class Lease:
    """One attempt on one peer, counted in ``peer.conns`` until released."""

    __slots__ = ("peer", "attempts", "_group", "_released")

    def __init__(self, group: UpstreamGroup, attempts: Attempts, peer: Peer):
        self.peer = peer
        self.attempts = attempts
        self._group = group
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self, outcome: Outcome, error: Optional[str] = None) -> None:
        """Record how the attempt ended. Call exactly once, in a ``finally``.
        ``error`` is the text of what went wrong, if anything (kept on the peer as
        ``last_error`` for status pages)."""
        if self._released:
            raise RuntimeError(f"lease on {self.peer.name} released twice")
        self._released = True
        self._group._release(self, outcome, error)

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<Lease {self._group.name} {self.peer.name} {state}>"


class UpstreamGroup:
    """The peers of one ``[upstreams.NAME]`` (or implicit) group and their state."""

    def __init__(self, settings: UpstreamSettings, clock: IReactorTime):
        self.name = settings.name
        self.settings = settings
        self.clock = clock
        #: ``resolve = true`` entries with a host name: their peers come from DNS
        #: (``gateway.upstream.resolve``), none until the first answer
        self.resolve_servers: tuple[PeerSettings, ...] = tuple(
            s for s in settings.servers if resolves(s))
        _check_servers(settings)
        static = [s for s in settings.servers if not resolves(s)]
        self.peers: list[Peer] = [Peer(s) for s in static if not s.backup]
        self.backups: list[Peer] = [Peer(s) for s in static if s.backup]
        self._all = self.peers + self.backups
        self._resolved: dict[int, list[Peer]] = {id(s): [] for s in self.resolve_servers}
        #: callables ``(added, removed)`` (lists of peers) called after the peer lists
        #: changed at run time: pools drop idle connections, health checks add loops
        self.membership_observers: list[Callable[[list[Peer], list[Peer]], None]] = []
        #: how many balancers were built (a new pair per reload of the group)
        self.balancers = 0
        self._build_balancers()
        #: the ``queue`` of requests waiting for a peer at ``max_conns`` (None: no queue)
        self.queue: Optional[RequestQueue] = None
        if settings.queue is not None:
            self.queue = RequestQueue(settings.queue, clock)
            # a peer added by DNS is capacity the waiting requests may use
            self.membership_observers.append(self._membership_capacity)

    def _build_balancers(self) -> None:
        cls = balancer_class(self.settings.balance, self.settings)
        #: whether the balancer reads PickContext (round robin does not), so callers
        #: can skip building one per request
        self.needs_context: bool = getattr(cls, "needs_context", True)
        self._primary: Balancer = cls(self.peers)
        # the backup tier uses the same method (nginx's least_conn does too)
        self._backup: Optional[Balancer] = (
            cls(self.backups)
            if self.backups or any(s.backup for s in self.resolve_servers) else None)
        self.single = len(self.peers) == 1 and not self.backups
        self.balancers += 1

    def _membership_capacity(self, added, removed) -> None:
        self.capacity_changed()

    def __repr__(self) -> str:
        return f"<UpstreamGroup {self.name} peers={self.peers} backups={self.backups}>"

    def attempts(self, max_tries: int = 0) -> Attempts:
        """Start a request: nginx's ``init_round_robin_peer`` plus the
        ``proxy_next_upstream_tries`` cap of ``ngx_http_upstream_init_request``."""
        tries = 0
        for peer in self._all:
            if not peer.down:
                tries += 1
        if max_tries and tries > max_tries:
            tries = max_tries
        return Attempts(self, tries)

    def acquire(
        self, attempts: Attempts, context: Optional[PickContext] = None
    ) -> Optional[Lease]:
        """Choose the peer for the next attempt and count it; None means
        "no live upstreams" (nothing in either tier may be tried). ``attempts.tries``
        is not consulted here: stopping at 0 is the retry policy's decision."""
        if attempts.group is not self:
            raise ValueError(f"attempts of {attempts.group.name!r} used with {self.name!r}")
        if self.queue:       # a RequestQueue is false while nobody waits
            # first come, first served: capacity that came back without a release
            # (fail_timeout over, a check passed) goes to the waiting requests first
            self.queue.dispatch(self._acquire_queued)
        return self._acquire(attempts, context or _NO_CONTEXT)

    def _acquire(self, attempts: Attempts, context: PickContext) -> Optional[Lease]:
        now = self.clock.seconds()
        peer = self._pick(attempts, context, now)
        if peer is None:
            # The caller logs "no live upstreams" with its request's context, as nginx
            # does in ngx_http_upstream_connect.
            return None
        peer.conns += 1
        peer.requests += 1
        attempts.tried.append(peer)
        return Lease(self, attempts, peer)

    def _pick(self, attempts: Attempts, context: PickContext, now: float) -> Optional[Peer]:
        if self.single:
            peer = self.peers[0]
            # active health checks (and drain) do take the only server out (NGINX Plus: 502)
            if peer.down or not peer.healthy or peer.draining or peer.at_max_conns():
                return None
            return peer

        if attempts.balancers != self.balancers:
            # a reload rebuilt the balancers since this request's last pick: the state
            # the old one kept for it (a hash, a rehash count) may mean nothing now
            attempts.balancers = self.balancers
            attempts.balancer_state = None
        peer = None
        if not attempts.in_backup:
            peer = self._primary.pick(attempts, context, now)
            if peer is None and self._backup is not None:
                attempts._switch_to_backup()
        if peer is None and attempts.in_backup:
            peer = self._backup.pick(attempts, context, now)
        if peer is None:
            return None
        attempts._mark_tried(peer)
        peer.start_probe_if_due(now)
        return peer

    def _release(self, lease: Lease, outcome: Outcome, error: Optional[str] = None) -> None:
        peer, attempts = lease.peer, lease.attempts
        peer.conns -= 1
        if error is not None:
            peer.last_error = error
            peer.last_error_at = self.clock.seconds()
        if self.single:
            # nginx never marks the only server failed; there is no other to retry.
            if outcome is Outcome.FAILED:
                peer.failures += 1
            peer.fails = 0
            attempts.tries = 0
        else:
            if peer.record(outcome, self.clock.seconds()):
                log.warn(
                    "upstream server temporarily disabled: {peer} in upstream {upstream}"
                    " after {fails} failures",
                    peer=peer.name, upstream=self.name, fails=peer.fails,
                )
            if attempts.tries:
                attempts.tries -= 1
        if self.queue:
            self.queue.dispatch(self._acquire_queued)

    # -- the queue (NGINX Plus ``queue``; gateway.upstream.queue) -----------------------

    def wait(
        self, attempts: Attempts, context: Optional[PickContext] = None
    ) -> Optional[Deferred]:
        """After ``acquire`` returned None: wait in the group's queue for a peer.

        Returns None when waiting cannot help — the group has no ``queue``, or no peer
        this request could use is merely at ``max_conns`` (all are down, failed,
        unhealthy or already tried) — and the caller answers "no live upstreams" as
        without a queue. Otherwise a Deferred that fires with the ``Lease`` when a
        peer frees up, or fails with ``QueueFull`` (at once) or ``QueueTimeout``.
        Cancel it if the client goes away: the request leaves the queue.
        """
        if self.queue is None or not self._worth_waiting(attempts, self.clock.seconds()):
            return None
        return self.queue.add(attempts, context or _NO_CONTEXT)

    def _worth_waiting(self, attempts: Attempts, now: float) -> bool:
        """Is some peer this request has not tried unavailable only because it is at
        ``max_conns`` (so a release would make it eligible)?"""
        if self.single:
            peer = self.peers[0]
            return (not peer.down and peer.healthy and not peer.draining
                    and peer.at_max_conns())
        tried = attempts.tried
        for peer in self._all:
            if (peer.max_conns and peer.conns >= peer.max_conns and peer not in tried
                    and not peer.down and peer.healthy and not peer.draining
                    and not peer.failed_at(now)):
                return True
        return False

    def _acquire_queued(self, attempts: Attempts, context: PickContext) -> Optional[Lease]:
        attempts._restart_tiers()
        return self._acquire(attempts, context)

    def capacity_changed(self) -> None:
        """A peer may have become available outside acquire/release (a health check
        passed, ``down`` cleared, DNS added a peer): serve waiting requests now."""
        if self.queue:
            self.queue.dispatch(self._acquire_queued)

    def weights_changed(self) -> None:
        """A peer's ``weight`` changed at run time (``Peer.set_weight``, admin API):
        balancers that derive totals from the weights (random, consistent hash)
        rebuild them."""
        self._primary.peers_changed()
        if self._backup is not None:
            self._backup.peers_changed()

    # -- status ------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """Plain, JSON-serialisable data about the group now, for status pages and the
        API (a copy: changing it changes nothing): its name, balancing method, queue
        (None without one) and every peer of both tiers in configuration order
        (``Peer.snapshot``)."""
        now = self.clock.seconds()
        return {
            "name": self.name,
            "balance": self.settings.balance,
            "queue": self.queue.snapshot() if self.queue is not None else None,
            "peers": [peer.snapshot(now) for peer in self.peers + self.backups],
        }

    # -- reload (gateway.reload) ----------------------------------------------------------

    def reconfigure(self, settings: UpstreamSettings) -> tuple[list[Peer], list[Peer]]:
        """Take a reload's settings for this group (same name); returns the peers
        ``(added, removed)``.

        Peers are matched by ``address`` text; a server listed more than once is
        matched in file order. A matched peer keeps its object and so its state
        (connections, failures, health, counters, pooled connections keyed by its
        name) and takes the new parameters (``Peer.reconfigure``), moving to the
        other tier when ``backup`` changed. ``resolve = true`` entries are matched the
        same way and keep the peers DNS gave them until the next lookup. Unmatched new
        entries become fresh peers; unmatched old ones leave the group (leases held on
        them finish normally: they hold the ``Peer``). The tier lists change in place;
        the balancers are rebuilt (``balance`` and its options may have changed), and
        requests in flight drop the state the old ones kept for them. A ``queue``
        removed by the reload fails its waiting requests (``QueueClosed``); a changed
        one keeps them. ``membership_observers`` are not called: the reload tells
        pools and health checks itself.
        """
        if settings.name != self.name:
            raise ValueError(f"settings of {settings.name!r} given to {self.name!r}")
        _check_servers(settings)
        now = self.clock.seconds()
        resolved_ids = {id(p) for peers in self._resolved.values() for p in peers}
        by_entry = {id(p.settings): p for p in self._all if id(p) not in resolved_ids}
        # the peers of the old static entries, and the old resolve entries, by address
        old_static: dict[str, list[Peer]] = {}
        for entry in self.settings.servers:
            peer = by_entry.get(id(entry))
            if peer is not None:
                old_static.setdefault(entry.address.text, []).append(peer)
        old_resolve: dict[str, list[PeerSettings]] = {}
        for entry in self.resolve_servers:
            old_resolve.setdefault(entry.address.text, []).append(entry)
        old_resolved = dict(self._resolved)

        primaries: list[Peer] = []
        backups: list[Peer] = []
        added: list[Peer] = []
        resolved: dict[int, list[Peer]] = {}
        resolve_servers: list[PeerSettings] = []
        for entry in settings.servers:
            if resolves(entry):
                resolve_servers.append(entry)
                olds = old_resolve.get(entry.address.text)
                peers = old_resolved.pop(id(olds.pop(0))) if olds else []
                for peer in peers:
                    peer.reconfigure(entry, now)
                resolved[id(entry)] = peers
                continue
            olds = old_static.get(entry.address.text)
            if olds:
                peer = olds.pop(0)
                peer.address = entry.address
                peer.reconfigure(entry, now)
            else:
                peer = Peer(entry)
                added.append(peer)
            (backups if entry.backup else primaries).append(peer)
        # DNS peers follow the static ones of their tier, as when they were resolved
        for entry in resolve_servers:
            (backups if entry.backup else primaries).extend(resolved[id(entry)])
        removed = [p for peers in old_static.values() for p in peers]
        removed += [p for peers in old_resolved.values() for p in peers]

        self.settings = settings
        self.resolve_servers = tuple(resolve_servers)
        self._resolved = resolved
        self.peers[:] = primaries
        self.backups[:] = backups
        self._all[:] = primaries + backups
        self._build_balancers()
        self._reconfigure_queue(settings)
        return added, removed

    def _reconfigure_queue(self, settings: UpstreamSettings) -> None:
        queue = self.queue
        if settings.queue is None:
            if queue is not None:
                self.queue = None
                # whoever can go now goes; nothing would serve the rest any more
                queue.dispatch(self._acquire_queued)
                queue.close()
            return
        if queue is None:
            self.queue = RequestQueue(settings.queue, self.clock)
            if self._membership_capacity not in self.membership_observers:
                self.membership_observers.append(self._membership_capacity)
            return
        # the requests waiting keep their place and their timers
        queue.max_size = settings.queue.size
        queue.timeout = settings.queue.timeout

    # -- resolve = true: membership that follows DNS (gateway.upstream.resolve) ---------

    def resolved_peers(self, settings: PeerSettings) -> list[Peer]:
        """The peers that ``settings`` (one of ``resolve_servers``) holds now."""
        return list(self._resolved[id(settings)])

    def update_resolved(
        self, settings: PeerSettings, addresses: list[Address]
    ) -> tuple[list[Peer], list[Peer]]:
        """Make the peers of the ``resolve = true`` entry ``settings`` match
        ``addresses`` (nginx's ``ngx_http_upstream_zone_resolve_handler``).

        A peer whose address stays keeps its state (``fails``, ``conns``, weights,
        health); a new address becomes a peer with the entry's parameters, appended to
        its tier; a vanished one leaves the tier (leases held on it finish normally:
        they hold the ``Peer``). The tier lists are changed in place, so balancers
        keep them; each is told by ``peers_changed``. ``peer.settings`` stays the entry
        (its ``address`` is the host name, e.g. for TLS names), ``peer.address`` and
        ``peer.name`` are the resolved ``ip:port``. Returns ``(added, removed)`` and,
        when either is non-empty, calls every ``membership_observers`` with them.
        """
        current = self._resolved[id(settings)]
        wanted = {a.text: a for a in addresses}
        removed = [p for p in current if p.name not in wanted]
        known = {p.name for p in current}
        added = []
        for text, address in wanted.items():
            if text not in known:
                peer = Peer(settings)
                peer.address = address
                peer.name = text
                added.append(peer)
        if not added and not removed:
            return [], []
        tier = self.backups if settings.backup else self.peers
        for peer in removed:
            tier.remove(peer)
            current.remove(peer)
        tier.extend(added)
        current.extend(added)
        self._all[:] = self.peers + self.backups
        self.single = len(self.peers) == 1 and not self.backups
        self._primary.peers_changed()
        if self._backup is not None:
            self._backup.peers_changed()
        for observer in list(self.membership_observers):
            observer(added, removed)
        return added, removed


def _check_servers(settings: UpstreamSettings) -> None:
    """A group needs a primary server, static or ``resolve = true`` (the loader
    refuses anything else; this guards direct construction and reloads)."""
    if all(s.backup for s in settings.servers):
        raise ValueError(f"no servers in upstream {settings.name!r}")
