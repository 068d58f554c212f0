"""An upstream group: its two tiers of peers and the acquire/release pair.

This module owns what nginx keeps in ``ngx_http_upstream_get_round_robin_peer``,
``ngx_http_upstream_free_round_robin_peer`` and the per-request
``ngx_http_upstream_rr_peer_data_t``, for every balancing method alike:

- ``Attempts``: one per request — the peers tried, the tier in use, the tries left;
- ``UpstreamGroup.acquire``: asks the tier's balancer for a peer, falls over to the
  backup tier, counts the connection, marks the peer tried, starts a probe;
- ``Lease.release``: the only place that uncounts the connection and records the
  outcome on the peer.

Retry policy (which failures are retried, ``proxy_next_upstream_timeout``) belongs to
the handlers: they stop when ``attempts.tries`` reaches 0 or ``acquire`` returns None.

A group of exactly one primary server and no backups is *single*, as in nginx: only
``down`` and ``max_conns`` make it unavailable, its failures never count against it
(``fails`` is cleared), and after its attempt ``tries`` drops to 0 — there is nowhere
else to retry.
"""
from __future__ import annotations

from typing import Optional

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.config.model import UpstreamSettings
from gateway.upstream._interfaces import Balancer, Outcome, PickContext
from gateway.upstream.balancers import balancer_class
from gateway.upstream.peer import Peer

log = Logger()

_NO_CONTEXT = PickContext()


class Attempts:
    """Per-request state across retries (nginx's ``rrp`` plus ``pc->tries``).

    ``tries`` is how many attempts are left: the non-down peers of both tiers, capped
    by ``proxy_next_upstream_tries`` when that is not 0. ``tried`` lists every peer
    acquired, in order (for ``$upstream_addr``).
    """

    __slots__ = ("group", "tries", "tried", "balancer_state", "_backup", "_tried_in_tier")

    def __init__(self, group: UpstreamGroup, tries: int):
        self.group = group
        self.tries = tries
        self.tried: list[Peer] = []
        #: per-request state a balancer keeps across retries (nginx's
        #: ``iphp->hash``/``hp->hash``); None until the balancer sets it
        self.balancer_state = None
        self._backup = False
        # nginx's ``tried`` bitmap: only for the tier in use, cleared on the switch.
        self._tried_in_tier: set[Peer] = set()

    @property
    def in_backup(self) -> bool:
        """True once this request has moved to the backup tier (it never moves back)."""
        return self._backup

    def eligible(self, peer: Peer, now: float) -> bool:
        """The one availability test every balancer applies to every candidate."""
        return peer not in self._tried_in_tier and peer.available(now)

    def _mark_tried(self, peer: Peer) -> None:
        self._tried_in_tier.add(peer)

    def _switch_to_backup(self) -> None:
        self._backup = True
        self._tried_in_tier.clear()

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

    def release(self, outcome: Outcome) -> None:
        """Record how the attempt ended. Call exactly once, in a ``finally``."""
        if self._released:
            raise RuntimeError(f"lease on {self.peer.name} released twice")
        self._released = True
        self._group._release(self, outcome)

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<Lease {self._group.name} {self.peer.name} {state}>"


class UpstreamGroup:
    """The peers of one ``[upstreams.NAME]`` (or implicit) group and their state."""

    def __init__(self, settings: UpstreamSettings, clock: IReactorTime):
        self.name = settings.name
        self.settings = settings
        self.clock = clock
        self.peers: list[Peer] = [Peer(s) for s in settings.servers if not s.backup]
        self.backups: list[Peer] = [Peer(s) for s in settings.servers if s.backup]
        if not self.peers:
            raise ValueError(f"no servers in upstream {self.name!r}")
        self._all = self.peers + self.backups
        cls = balancer_class(settings.balance)
        #: whether the balancer reads PickContext (round robin does not), so callers
        #: can skip building one per request
        self.needs_context: bool = getattr(cls, "needs_context", True)
        self._primary: Balancer = cls(self.peers)
        # nginx's least_conn serves its backup tier by plain round robin
        backup_cls = getattr(cls, "backup_balancer", cls)
        self._backup: Optional[Balancer] = backup_cls(self.backups) if self.backups else None
        self.single = len(self.peers) == 1 and not self.backups

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
        now = self.clock.seconds()
        peer = self._pick(attempts, context or _NO_CONTEXT, now)
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
            if peer.down or peer.at_max_conns():
                return None
            return peer

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

    def _release(self, lease: Lease, outcome: Outcome) -> None:
        peer, attempts = lease.peer, lease.attempts
        peer.conns -= 1
        if self.single:
            # nginx never marks the only server failed; there is no other to retry.
            if outcome is Outcome.FAILED:
                peer.failures += 1
            peer.fails = 0
            attempts.tries = 0
            return

        if peer.record(outcome, self.clock.seconds()):
            log.warn(
                "upstream server temporarily disabled: {peer} in upstream {upstream}"
                " after {fails} failures",
                peer=peer.name, upstream=self.name, fails=peer.fails,
            )
        if attempts.tries:
            attempts.tries -= 1
