"""One upstream peer and its passive health state (nginx's ``ngx_http_upstream_rr_peer_t``).

This module owns a peer's counters and the two rules every balancing method shares:
whether a peer may be tried now (``Peer.available``), and what the end of an attempt
does to it (``Peer.record``, the body of nginx's
``ngx_http_upstream_free_round_robin_peer``). It does not choose peers (``balancers/``),
keep per-request state or count connections (``group.py``), or log.

Times are the injected clock's seconds (floats); nginx uses whole seconds, the rules
are otherwise the same:

- a failure sets ``fails += 1`` and ``accessed = checked = now``, and lowers
  ``effective_weight`` by ``weight // max_fails`` (not below 0); a balancer raises it
  again by 1 each time it considers the peer;
- with ``max_fails`` failures and ``now - checked <= fail_timeout`` the peer is skipped;
- once ``fail_timeout`` has passed, the next pick sets ``checked = now``: that request
  is the one probe for the next ``fail_timeout``;
- a success (or ``NEXT``) resets ``fails`` only when ``accessed < checked``, i.e. when
  it is such a probe. Successes inside the window leave the count alone.

``max_fails = 0`` turns the rules off: ``fails`` still counts (as in nginx) but never
makes the peer unavailable and never lowers its weight.

``slow_start`` (NGINX Plus): a peer that comes back — its probe after ``fail_timeout``
succeeded while it was disabled, active health checks found it healthy again
(``set_healthy``), or ``down`` was cleared (``set_down``) — ramps its weight linearly
from a small value to ``weight`` over ``slow_start`` seconds (``weight_now``). Peers
are not ramped at start-up. The snapshot a status page reads is ``Peer.snapshot``.
"""
from __future__ import annotations

from typing import Optional

from gateway.config.model import Address, PeerSettings
from gateway.upstream._interfaces import Outcome


#: how many steps the ``slow_start`` ramp takes from ``weight / RAMP_STEPS`` to ``weight``
RAMP_STEPS = 64


class Peer:
    """A server of an upstream group, shared by every request to that group."""

    __slots__ = (
        "settings", "address", "name", "weight", "effective_weight",
        "current_weight", "conns", "fails", "accessed", "checked", "max_fails",
        "fail_timeout", "max_conns", "down", "backup", "requests", "failures",
        "healthy", "health_last", "health_latency", "slow_start", "ramp_start",
        "last_error", "last_error_at", "draining",
    )

    def __init__(self, settings: PeerSettings):
        self.settings = settings
        self.address: Address = settings.address
        self.name: str = settings.address.text
        self.weight: int = settings.weight
        self.effective_weight: int = settings.weight
        self.current_weight: int = 0
        self.conns: int = 0
        self.fails: int = 0
        self.accessed: float = 0.0     # time of the last failure
        self.checked: float = 0.0      # start of the current failure window / probe
        self.max_fails: int = settings.max_fails
        self.fail_timeout: float = settings.fail_timeout
        self.max_conns: int = settings.max_conns
        self.down: bool = settings.down
        self.backup: bool = settings.backup
        # Totals for status pages and metrics; nginx has no equivalent of these two.
        self.requests: int = 0
        self.failures: int = 0
        #: set by active health checks (``gateway.health``); an unhealthy peer is
        #: skipped like a failed one. A peer is healthy until its first probe says not.
        self.healthy: bool = True
        #: the last active probe's ``health.ProbeResult`` and its duration in seconds
        #: (None until a probe completes), for status pages
        self.health_last = None
        self.health_latency = None
        #: ``slow_start`` in seconds (0: off), and when the current ramp began (None:
        #: not ramping). See ``weight_now``.
        self.slow_start: float = settings.slow_start
        self.ramp_start: Optional[float] = None
        #: the text and clock time of the last error an attempt reported on release
        #: (``Lease.release(outcome, error)``), for status pages
        self.last_error: Optional[str] = None
        self.last_error_at: Optional[float] = None
        #: ``drain`` (admin API, NGINX Plus): no new attempts, those in flight finish
        self.draining: bool = False

    def __repr__(self) -> str:
        return (
            f"<Peer {self.name} weight={self.weight}/{self.effective_weight}"
            f" current={self.current_weight} conns={self.conns} fails={self.fails}"
            f"{' down' if self.down else ''}{' backup' if self.backup else ''}>"
        )

    def failed_at(self, now: float) -> bool:
        """True while ``max_fails`` failures keep the peer out (inside ``fail_timeout``)."""
        return bool(
            self.max_fails
            and self.fails >= self.max_fails
            and now - self.checked <= self.fail_timeout
        )

    def at_max_conns(self) -> bool:
        return bool(self.max_conns and self.conns >= self.max_conns)

    def available(self, now: float) -> bool:
        """May a new attempt go to this peer? (Whether *this request* already tried
        it is the request's business: ``Attempts.eligible``.)

        ``failed_at`` and ``at_max_conns`` written out: this runs for every candidate
        of every pick."""
        if self.down or not self.healthy or self.draining:
            return False
        if (self.max_fails and self.fails >= self.max_fails
                and now - self.checked <= self.fail_timeout):
            return False
        return not (self.max_conns and self.conns >= self.max_conns)

    def set_healthy(self, healthy: bool, now: float) -> None:
        """Active health checks' verdict (``gateway.upstream.health``). Becoming
        healthy again starts ``slow_start``."""
        if healthy and not self.healthy:
            self._start_ramp(now)
        self.healthy = healthy

    def set_down(self, down: bool, now: float) -> None:
        """Mark the peer ``down`` or bring it back (runtime API, reload). Coming back
        starts ``slow_start``."""
        if self.down and not down:
            self._start_ramp(now)
        self.down = down

    def set_weight(self, weight: int) -> None:
        """A new ``weight`` at run time (admin API). ``effective_weight`` moves by the
        same amount, so a peer not lowered by failures is at full weight at once and
        one that is keeps its deficit (still climbing back by one per pick). Balancers
        that cache totals must be told: ``UpstreamGroup.weights_changed``."""
        if weight < 1:
            raise ValueError(f"weight must be at least 1, got {weight}")
        self.effective_weight = max(0, min(weight, self.effective_weight + weight - self.weight))
        self.weight = weight

    def reconfigure(self, settings: PeerSettings, now: float) -> None:
        """A reload kept this peer (same ``address`` in the same group): take the new
        file's parameters and keep the state (``conns``, ``fails`` and the failure
        window, ``effective_weight``'s deficit, health, counters, a ``slow_start`` ramp
        in progress).

        The file wins over the runtime API: ``down`` and ``weight`` become the file's
        values and ``drain`` is cleared (the file has no such key), as NGINX Plus does
        for changes not kept in a ``state`` file. ``current_weight`` restarts at 0, so
        the new weights start a fresh smooth round robin cycle, as nginx's new workers
        do. ``address`` and ``name`` are the caller's: a ``resolve = true`` peer keeps
        its resolved ``ip:port``.
        """
        self.settings = settings
        self.max_fails = settings.max_fails
        self.fail_timeout = settings.fail_timeout
        self.max_conns = settings.max_conns
        self.backup = settings.backup
        self.slow_start = settings.slow_start
        if settings.weight != self.weight:
            self.set_weight(settings.weight)
        self.set_down(settings.down, now)
        self.draining = False
        self.current_weight = 0

    def _start_ramp(self, now: float) -> None:
        if self.slow_start > 0:
            self.ramp_start = now

    def weight_now(self, now: float) -> float:
        """The weight balancers that honour ``slow_start`` use at ``now``: ``weight``,
        or less while the peer ramps up after recovering.

        The ramp is linear in ``RAMP_STEPS`` steps: during step ``k`` (0-based) of
        the ``slow_start`` period the weight is ``weight * (k + 1) / RAMP_STEPS``. It
        never starts at exactly 0, so a ramping peer is still chosen now and then
        (and always when it is the only one available), and a step is a binary
        fraction, so smooth round robin's sums stay exact.
        """
        start = self.ramp_start
        if start is None:
            return self.weight
        elapsed = now - start
        if elapsed >= self.slow_start or elapsed < 0:
            self.ramp_start = None       # over (or the clock went back): full weight
            return self.weight
        return self.weight * (int(elapsed * RAMP_STEPS / self.slow_start) + 1) / RAMP_STEPS

    def state(self, now: float) -> str:
        """The peer's state in the operator's words, most serious first: ``down``
        (configured or set), ``draining`` (admin API), ``unhealthy`` (active checks),
        ``failed`` (``max_fails`` within ``fail_timeout``), else ``up``."""
        if self.down:
            return "down"
        if self.draining:
            return "draining"
        if not self.healthy:
            return "unhealthy"
        if self.failed_at(now):
            return "failed"
        return "up"

    def snapshot(self, now: float) -> dict:
        """Plain, JSON-serialisable data about the peer at ``now`` (a copy: changing
        it changes nothing). ``effective_weight`` is the weight round robin uses now:
        ``effective_weight`` capped by the ``slow_start`` ramp."""
        error = None
        if self.last_error is not None:
            error = {"text": self.last_error, "time": self.last_error_at}
        return {
            "name": self.name,
            "address": self.address.text,
            "backup": self.backup,
            "state": self.state(now),
            "weight": self.weight,
            "effective_weight": min(self.effective_weight, self.weight_now(now)),
            "active": self.conns,
            "max_conns": self.max_conns,
            "fails": self.fails,
            "requests": self.requests,
            "failures": self.failures,
            "healthy": self.healthy,
            "health_check": self._health_snapshot(),
            "last_error": error,
        }

    def _health_snapshot(self):
        """The last active probe (``gateway.upstream.health``), None before any."""
        last = self.health_last
        if last is None:
            return None
        return {"passed": last.passed, "reason": last.reason,
                "latency": self.health_latency}

    def start_probe_if_due(self, now: float) -> None:
        """Called when the peer is picked: once ``fail_timeout`` has passed since the
        window began, this pick opens a new window (and is the probe if it had failed)."""
        if now - self.checked > self.fail_timeout:
            self.checked = now

    def record(self, outcome: Outcome, now: float) -> bool:
        """Account for the end of an attempt (not the connection count: see ``Lease``).

        Returns True when this failure leaves the peer temporarily disabled
        (``fails >= max_fails``), so the caller can log it as nginx does.
        """
        if outcome is not Outcome.FAILED:
            if self.accessed < self.checked:
                # the probe after fail_timeout: a success brings a disabled peer back
                if self.max_fails and self.fails >= self.max_fails:
                    self._start_ramp(now)
                self.fails = 0
            return False

        self.failures += 1
        self.fails += 1
        self.accessed = now
        self.checked = now
        if not self.max_fails:
            return False
        self.effective_weight = max(0, self.effective_weight - self.weight // self.max_fails)
        return self.fails >= self.max_fails
