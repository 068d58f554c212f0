"""Random choice by weight: a port of nginx's ``ngx_http_upstream_get_random_peer`` and
``ngx_http_upstream_get_random2_peer``
(src/http/modules/ngx_http_upstream_random_module.c).

Every peer of the tier owns a range of ``[0, total_weight)`` as wide as its weight,
in configuration order (``down`` peers keep theirs). A draw ``x = rng.randrange(total)``
(nginx: ``ngx_random() % total_weight``) picks the peer whose range holds ``x``.

- ``random``: a drawn peer that may not be tried (down, failed, at ``max_conns``,
  already tried by this request) costs a try and the draw is repeated.
- ``random two`` (``RandomTwo``): draws until it holds two *distinct* peers that may
  be tried, then sends to the one with fewer active connections relative to weight
  (``conns_b * weight_a > conns_a * weight_b`` keeps the first, so a tie goes to the
  second). Every draw but the one completing the pair costs a try (nginx counts
  the first peer kept as well as wasted draws).

In both, once more than 20 tries have been counted (across one request's retries, in
``attempts.balancer_state``) the request falls back to round robin over the tier, as
nginx does; so does a tier of fewer than two peers.

The source of randomness is injected: ``rng`` is anything with ``randrange(n)``
(``random.Random()`` by default), so tests script the draws. Worked trace for
``random two``, peers a, b, c (weights 1), draws 0 0 2 then 1 2::

    pick 1   draw 0 -> a (first);  draw 0 -> a again (wasted);  draw 2 -> c
             conns a=0, c=0: a tie goes to the second       -> c   (c now holds 1)
    pick 2   draw 1 -> b (first);  draw 2 -> c
             conns b=0, c=1: b has fewer                    -> b

    → c b.
"""
from __future__ import annotations

import bisect
import random as _random
from typing import Any, Optional

from gateway.upstream._interfaces import Candidates, PickContext
from gateway.upstream.balancers.ip_hash import MAX_REHASHES as MAX_TRIES
from gateway.upstream.balancers.round_robin import RoundRobin
from gateway.upstream.peer import Peer


class Random:
    """nginx's ``random``, over the (only) tier of a group."""

    name = "random"
    needs_context = False

    def __init__(self, peers: list[Peer], rng: Any = None):
        self.peers = peers
        #: the source of draws: ``rng.randrange(total_weight)``
        self.rng = rng if rng is not None else _random.Random()
        self.round_robin = RoundRobin(peers)
        self.peers_changed()

    def peers_changed(self) -> None:
        """Rebuild the weight ranges (nginx's ``ngx_http_upstream_update_random``)."""
        starts = []
        total = 0
        for peer in self.peers:
            starts.append(total)
            total += peer.weight
        self.starts = starts
        self.total_weight = total

    def draw(self) -> Peer:
        """One weighted draw (nginx's ``ngx_http_upstream_peek_random_peer``)."""
        x = self.rng.randrange(self.total_weight)
        return self.peers[bisect.bisect_right(self.starts, x) - 1]

    def pick(self, attempts: Candidates, context: PickContext, now: float) -> Optional[Peer]:
        tries = attempts.balancer_state or 0
        if tries > MAX_TRIES or len(self.peers) < 2:
            return self.round_robin.pick(attempts, context, now)
        while True:
            peer = self.draw()
            if attempts.eligible(peer, now):
                attempts.balancer_state = tries
                return peer
            tries += 1
            if tries > MAX_TRIES:
                attempts.balancer_state = tries
                return self.round_robin.pick(attempts, context, now)


class RandomTwo(Random):
    """nginx's ``random two``: the less loaded of two distinct weighted draws."""

    def pick(self, attempts: Candidates, context: PickContext, now: float) -> Optional[Peer]:
        tries = attempts.balancer_state or 0
        if tries > MAX_TRIES or len(self.peers) < 2:
            return self.round_robin.pick(attempts, context, now)
        first: Optional[Peer] = None
        while True:
            peer = self.draw()
            if peer is not first and attempts.eligible(peer, now):
                if first is not None:
                    attempts.balancer_state = tries
                    if peer.conns * first.weight > first.conns * peer.weight:
                        return first
                    return peer
                first = peer
            # nginx counts the first draw kept, too: it falls through to "next".
            tries += 1
            if tries > MAX_TRIES:
                attempts.balancer_state = tries
                return self.round_robin.pick(attempts, context, now)
