"""The upstream queue (NGINX Plus's ``queue``): requests waiting for a peer at ``max_conns``.

This module owns the FIFO of one group's waiting requests, their timeouts and the order
in which they are served. Whether a request may wait at all, and what "serve" means
(an ``acquire`` with the request's own ``Attempts``), are ``UpstreamGroup``'s: the group
calls :meth:`RequestQueue.add` when ``acquire`` found no peer while a peer this request
could use is at ``max_conns``, and :meth:`RequestQueue.dispatch` whenever capacity may
have come back (a lease released, a new request arriving, a peer recovering).

Rules, as the NGINX Plus documentation states them and as an operator expects:

- a full queue (``size`` waiting) fails the newcomer at once (``QueueFull``, a 502);
- a request still waiting after ``timeout`` fails (``QueueTimeout``, a 502);
- a request whose client went away leaves the queue: cancelling the Deferred returned by
  ``add`` removes it and its timer, and it is never served;
- waiting requests are served first come, first served. Each dispatch walks the queue
  from the head and offers each waiter a peer; one that still cannot go keeps its
  place. A waiter that has tried no peer yet and still finds none ends the walk: by the
  ``Balancer`` contract its balancer found no eligible peer in either tier, so nobody
  behind it can go either (a waiter that already tried some peers may be unable to use
  the one that freed while someone behind it can, so the walk goes on past it).

Timers: one ``callLater`` per *waiting* request, cancelled when it leaves the queue; the
path of a request that gets a peer at once creates none.
"""
from __future__ import annotations

from typing import Callable, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from gateway.config.model import QueueSettings


class QueueError(Exception):
    """A request could not wait for a peer: the client gets 502."""

    #: the error log text, completed by the caller ("… while connecting to upstream")
    message = "upstream queue error"

    def __str__(self) -> str:
        return self.message


class QueueFull(QueueError):
    """The queue already held ``size`` requests."""

    message = "upstream queue is full"


class QueueTimeout(QueueError):
    """No peer could be chosen within the queue's ``timeout``."""

    message = "upstream queue timed out"


class QueueClosed(QueueError):
    """A reload removed the group's ``queue`` while the request waited in it."""

    message = "upstream queue removed by a reload"


class _Waiter:
    __slots__ = ("attempts", "context", "deferred", "since", "timer")

    def __init__(self, attempts, context, since: float):
        self.attempts = attempts
        self.context = context
        self.since = since
        self.deferred: Optional[defer.Deferred] = None
        self.timer: Optional[IDelayedCall] = None


class RequestQueue:
    """The waiting requests of one group, in arrival order."""

    def __init__(self, settings: QueueSettings, clock: IReactorTime):
        self.max_size = settings.size
        self.timeout = settings.timeout
        self.clock = clock
        # a dict is an ordered set with O(1) removal from the middle (cancellation)
        self._waiting: dict[_Waiter, None] = {}
        self._dispatching = False
        self._again = False
        #: totals for status pages: requests refused because the queue was full, and
        #: requests that waited ``timeout`` in vain
        self.overflows = 0
        self.timeouts = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def __repr__(self) -> str:
        return f"<RequestQueue {len(self._waiting)}/{self.max_size}>"

    def add(self, attempts, context) -> defer.Deferred:
        """Queue a request: a Deferred firing with its ``Lease`` once a peer is found,
        failing with ``QueueFull`` (at once) or ``QueueTimeout``; cancel it when the
        client goes away."""
        if len(self._waiting) >= self.max_size:
            self.overflows += 1
            return defer.fail(QueueFull())
        waiter = _Waiter(attempts, context, self.clock.seconds())
        waiter.deferred = defer.Deferred(lambda d: self._cancel(waiter))
        waiter.timer = self.clock.callLater(self.timeout, self._expire, waiter)
        self._waiting[waiter] = None
        return waiter.deferred

    def dispatch(self, acquire: Callable) -> None:
        """Serve waiting requests while peers can be found for them:
        ``acquire(attempts, context) -> Lease | None`` is tried for each in order.

        Re-entrant calls (a served request that fails at once and releases its lease,
        or a new request arriving from a callback) only ask for another walk once the
        current one is over, so the queue is never walked by two loops at a time."""
        if self._dispatching:
            self._again = True
            return
        self._dispatching = True
        try:
            again = True
            while again:
                self._again = False
                self._walk(acquire)
                again = self._again and bool(self._waiting)
        finally:
            self._dispatching = False

    def _walk(self, acquire: Callable) -> None:
        for waiter in list(self._waiting):
            if waiter not in self._waiting:
                continue        # served, cancelled or expired by an earlier callback
            lease = acquire(waiter.attempts, waiter.context)
            if lease is None:
                if not waiter.attempts.tried:
                    break       # no eligible peer at all: nobody behind can go either
                continue
            del self._waiting[waiter]
            waiter.timer.cancel()
            waiter.deferred.callback(lease)

    def _cancel(self, waiter: _Waiter) -> None:
        if waiter in self._waiting:
            del self._waiting[waiter]
            waiter.timer.cancel()

    def _expire(self, waiter: _Waiter) -> None:
        if waiter in self._waiting:
            del self._waiting[waiter]
            self.timeouts += 1
            waiter.deferred.errback(QueueTimeout())

    def close(self) -> None:
        """Fail every waiting request with ``QueueClosed`` (a reload removed the
        ``queue``: nothing would serve them any more)."""
        waiting, self._waiting = list(self._waiting), {}
        for waiter in waiting:
            waiter.timer.cancel()
            waiter.deferred.errback(QueueClosed())

    def snapshot(self) -> dict:
        """Plain data for status pages (NGINX Plus API names: ``size`` is the number
        waiting now, ``max_size`` the configured ``size``)."""
        return {
            "size": len(self._waiting),
            "max_size": self.max_size,
            "timeout": self.timeout,
            "overflows": self.overflows,
            "timeouts": self.timeouts,
        }
