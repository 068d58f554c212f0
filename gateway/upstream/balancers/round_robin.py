"""Smooth weighted round robin: a port of nginx's ``ngx_http_upstream_get_peer``.

Each pick walks the tier in configuration order. Every peer the request may try adds
its ``effective_weight`` to its ``current_weight`` (and to ``total``), and its
``effective_weight`` climbs back by one towards ``weight`` (it drops after failures,
see ``peer.py``). The peer with the highest ``current_weight`` wins (the first one on
a tie) and pays ``total`` back. Over any run of ``sum(weights)`` picks each peer is
chosen ``weight`` times, spread out rather than in bursts.

Worked trace, weights a=5, b=1, c=1 (``total`` = 7), ``current_weight`` shown after
adding and, for the winner, after subtracting ``total``:

    pick   a          b          c          chosen
    1      5 -> -2    1          1          a
    2      3 -> -4    2          2          a
    3      1          3 -> -4    3          b   (tie with c: first wins)
    4      6 -> -1   -3          4          a
    5      4         -2          5 -> -2    c
    6      9 ->  2   -1         -1          a
    7      7 ->  0    0          0          a

    → a a b a c a a, and every current_weight is back at 0.

``slow_start``: while a peer ramps up after recovering, what it adds is its
``effective_weight`` capped by ``Peer.weight_now`` (from ``weight / 64`` up to
``weight``), so its share grows linearly over the period. A ramping peer that is the
only candidate is still chosen: the winner is the highest ``current_weight`` among the
candidates, whatever the weights.

This module owns only that choice. Skipping peers that are down, failed, at
``max_conns`` or already tried is ``Attempts.eligible``; counting the connection and
marking the peer tried is ``UpstreamGroup.acquire``; single-server groups and the
backup tier are handled there too, so every balancing method shares them.
"""
from __future__ import annotations

from typing import Optional

from gateway.upstream._interfaces import Candidates, PickContext
from gateway.upstream.peer import Peer


class RoundRobin:
    """nginx's default balancing method, over one tier of a group."""

    name = "round_robin"
    needs_context = False

    def __init__(self, peers: list[Peer]):
        self.peers = peers

    def peers_changed(self) -> None:
        pass   # nothing derived from the list

    def pick(self, attempts: Candidates, context: PickContext, now: float) -> Optional[Peer]:
        best: Optional[Peer] = None
        total = 0
        for peer in self.peers:
            if not attempts.eligible(peer, now):
                continue
            weight = peer.effective_weight
            if peer.ramp_start is not None:
                # slow_start: the ramp caps what the peer adds (checked here rather
                # than calling weight_now for every candidate of every pick)
                ramp = peer.weight_now(now)
                if ramp < weight:
                    weight = ramp
            peer.current_weight += weight
            total += weight
            if peer.effective_weight < peer.weight:
                peer.effective_weight += 1
            if best is None or peer.current_weight > best.current_weight:
                best = peer
        if best is not None:
            best.current_weight -= total
        return best
