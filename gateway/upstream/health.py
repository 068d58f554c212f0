"""Active health checks: when to probe each peer, and what the results do to it.

This module owns the state machine and the schedule of one group's ``health_check``
(CONFIG.md; NGINX Plus's ``health_check`` directive, which open source nginx lacks):

- one probe loop per peer of both tiers, on the injected clock. The first probes go out
  soon after start, spread over at most a second (``min(interval, 1s)``) so a large
  group does not fire at once; after that each peer is probed ``interval`` after its
  previous probe *ended*, so a slow peer is never probed twice at a time;
- a probe that does not finish within ``timeout`` is cancelled and counts as failed, as
  does any error it reports (refused, reset, a wrong answer);
- hysteresis on consecutive results: ``fails`` failed probes in a row make a healthy
  peer unhealthy, ``passes`` passed probes in a row make an unhealthy one healthy again.
  A peer is healthy until its probes say otherwise (NGINX Plus without ``mandatory``).
  Every change goes through ``Peer.set_healthy`` (which also starts ``slow_start``) and
  is logged with ``upstream``, ``peer`` and ``reason`` fields;
- ``down`` peers are not probed (their loop idles until they are up again);
- the last result and its latency are kept on the peer (``health_last``,
  ``health_latency``) for the status page.

What a probe *is* (an HTTP request, a TCP connect, later a gRPC ``Check``) is not here:
the checker is given a ``probe(peer) -> Deferred[ProbeResult]`` callable, built by
``gateway.http.probes`` and wired by ``gateway.service``, so this package never imports
the protocol packages. Probes ignore ``max_conns`` and are not requests: they never
touch ``conns``, ``requests`` or the passive ``fails``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.config.model import HealthCheckSettings
from gateway.upstream.peer import Peer

log = Logger()

#: the first probes of a group are spread over at most this many seconds
FIRST_PROBE_SPREAD = 1.0


@dataclass(frozen=True)
class ProbeResult:
    """The verdict of one probe: ``passed``, and in a few words why (``"status 200"``,
    ``"status 500"``, ``"connect() failed (111: Connection refused) …"``)."""

    passed: bool
    reason: str = ""


#: ``probe(peer)`` → Deferred firing with a ``ProbeResult`` (an errback is a failed
#: probe). Cancelling the Deferred must abandon the probe (close its connection).
Probe = Callable[[Peer], defer.Deferred]


class _PeerCheck:
    """The probe loop of one peer: its timer, the probe in flight, the streaks."""

    __slots__ = ("checker", "peer", "passes", "fails", "_timer", "_probing",
                 "_started", "_stopped")

    def __init__(self, checker: HealthChecker, peer: Peer):
        self.checker = checker
        self.peer = peer
        self.passes = 0          # consecutive passed probes
        self.fails = 0           # consecutive failed probes
        self._timer: Optional[IDelayedCall] = None
        self._probing: Optional[defer.Deferred] = None
        self._started = 0.0
        self._stopped = False

    def schedule(self, delay: float) -> None:
        self._timer = self.checker.clock.callLater(delay, self._run)

    def stop(self) -> None:
        """Cancel the timer and abandon a probe in flight; its result is ignored."""
        self._stopped = True
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        probing, self._probing = self._probing, None
        if probing is not None:
            probing.cancel()

    def _run(self) -> None:
        self._timer = None
        checker = self.checker
        if self.peer.down:
            self.schedule(checker.settings.interval)
            return
        clock = checker.clock
        self._started = clock.seconds()
        d = defer.maybeDeferred(checker.probe, self.peer)
        self._probing = d
        d.addTimeout(checker.settings.timeout, clock)
        d.addCallbacks(self._result, self._failure)
        d.addErrback(self._bug)

    def _failure(self, failure: Failure) -> None:
        if failure.check(defer.TimeoutError):
            reason = f"timed out after {show_seconds(self.checker.settings.timeout)}"
        else:
            reason = failure.getErrorMessage() or failure.type.__name__
        self._result(ProbeResult(False, reason))

    def _result(self, result: ProbeResult) -> None:
        if self._stopped:
            return
        self._probing = None
        try:
            self._record(result)
        finally:
            self.schedule(self.checker.settings.interval)

    def _record(self, result: ProbeResult) -> None:
        checker, peer = self.checker, self.peer
        now = checker.clock.seconds()
        peer.health_last = result
        peer.health_latency = now - self._started
        settings = checker.settings
        if result.passed:
            self.fails = 0
            self.passes += 1
            if not peer.healthy and self.passes >= settings.passes:
                peer.set_healthy(True, now)
                # capacity back without a release: requests in the queue go first
                checker.group.capacity_changed()
                log.info(
                    "upstream server {peer} in upstream {upstream} is healthy again"
                    " after {passes} passed health checks: {reason}",
                    peer=peer.name, upstream=checker.group.name, passes=self.passes,
                    reason=result.reason, healthy=True,
                )
        else:
            self.passes = 0
            self.fails += 1
            if peer.healthy and self.fails >= settings.fails:
                peer.set_healthy(False, now)
                log.warn(
                    "upstream server {peer} in upstream {upstream} is unhealthy"
                    " after {fails} failed health checks: {reason}",
                    peer=peer.name, upstream=checker.group.name, fails=self.fails,
                    reason=result.reason, healthy=False,
                )

    def _bug(self, failure: Failure) -> None:
        log.failure("health check of {peer} in upstream {upstream} broke",
                    failure, peer=self.peer.name, upstream=self.checker.group.name)


def show_seconds(seconds: float) -> str:
    """``0.5`` → ``"500ms"``, ``2.0`` → ``"2s"``: durations as the config writes them."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


class HealthChecker(Service):
    """The active checks of one upstream group: a loop per peer while running.

    ``startService``/``stopService`` (or ``start``/``stop``) begin and end every loop.
    When the group's peer lists change at run time (``resolve = true``), call
    :meth:`peers_changed`: new peers get a loop (their first probe soon), removed ones
    lose theirs. ``checks`` maps each probed peer to its loop.
    """

    def __init__(self, group, settings: HealthCheckSettings, probe: Probe,
                 clock: IReactorTime):
        self.group = group
        self.settings = settings
        self.probe = probe
        self.clock = clock
        self.checks: dict[Peer, _PeerCheck] = {}

    def __repr__(self) -> str:
        return f"<HealthChecker {self.group.name} {self.settings.type} peers={len(self.checks)}>"

    def startService(self) -> None:
        super().startService()
        self._add(self._group_peers())

    def stopService(self):
        super().stopService()
        checks, self.checks = self.checks, {}
        for check in checks.values():
            check.stop()

    start = startService
    stop = stopService

    def peers_changed(self) -> None:
        """Rescan the group's tiers: start loops for new peers, stop those of peers
        that left. Harmless when nothing changed or the checker is not running."""
        if not self.running:
            return
        current = self._group_peers()
        present = set(current)
        for peer in [p for p in self.checks if p not in present]:
            self.checks.pop(peer).stop()
        self._add([p for p in current if p not in self.checks])

    def forget(self) -> None:
        """Stop, and mark every peer healthy again: for a reload that removes the
        group's ``health_check`` while keeping its peers."""
        peers = list(self.checks) or self._group_peers()
        if self.running:
            self.stopService()
        now = self.clock.seconds()
        back = False
        for peer in peers:
            if not peer.healthy:
                peer.set_healthy(True, now)
                back = True
        if back:
            self.group.capacity_changed()

    def _group_peers(self) -> list[Peer]:
        return list(self.group.peers) + list(self.group.backups)

    def _add(self, peers: list[Peer]) -> None:
        if not peers:
            return
        step = min(self.settings.interval, FIRST_PROBE_SPREAD) / len(peers)
        for index, peer in enumerate(peers):
            check = _PeerCheck(self, peer)
            self.checks[peer] = check
            check.schedule(index * step)


__all__ = ["FIRST_PROBE_SPREAD", "HealthChecker", "Probe", "ProbeResult", "show_seconds"]
