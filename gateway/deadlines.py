"""Coarse deadlines: one periodic sweep instead of a timer per request.

Connections (client and upstream side) carry idle and read deadlines that change on
every request or read. Creating and cancelling a ``callLater`` for each would cost more
than the rest of a small request, so owners just store an absolute ``deadline`` (clock
seconds, or ``None``) and this sweep, ticking every ``resolution`` seconds while anyone
is registered, calls ``deadline_expired()`` on owners whose deadline has passed. A
deadline therefore fires up to ``resolution`` late, never early.

This module owns only the sweep; what an expiry means (408, 504, closing an idle
connection) is the owner's business.
"""
from __future__ import annotations

from typing import Optional, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()


class DeadlineOwner(Protocol):
    deadline: Optional[float]

    def deadline_expired(self) -> None:
        """Called once per sweep in which ``deadline`` has passed. The owner sets a new
        deadline, clears it (``None``) or unregisters."""


class Deadlines:
    """The sweep. ``add``/``discard`` are O(1); a tick is O(registered owners)."""

    def __init__(self, clock: IReactorTime, resolution: float = 0.1):
        self.clock = clock
        self.resolution = resolution
        self._owners: set = set()
        self._loop: Optional[LoopingCall] = None

    def add(self, owner: DeadlineOwner) -> None:
        self._owners.add(owner)
        if self._loop is None:
            self._loop = LoopingCall(self._sweep)
            self._loop.clock = self.clock
            self._loop.start(self.resolution, now=False)

    def discard(self, owner: DeadlineOwner) -> None:
        self._owners.discard(owner)
        if not self._owners:
            self.stop()

    def stop(self) -> None:
        if self._loop is not None:
            loop, self._loop = self._loop, None
            if loop.running:
                loop.stop()

    def __len__(self) -> int:
        return len(self._owners)

    def _sweep(self) -> None:
        now = self.clock.seconds()
        expired = [
            owner for owner in self._owners
            if owner.deadline is not None and owner.deadline <= now
        ]
        for owner in expired:
            if owner in self._owners:
                try:
                    owner.deadline_expired()
                except Exception:
                    log.failure("deadline handler of {owner!r} failed", owner=owner)
        if not self._owners:
            self.stop()
