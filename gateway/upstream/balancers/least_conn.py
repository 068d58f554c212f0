"""Least connections: a port of nginx's ``ngx_http_upstream_get_least_conn_peer``
(src/http/modules/ngx_http_upstream_least_conn_module.c).

Each pick walks the tier in configuration order and keeps the candidate with the fewest
active connections relative to its weight, comparing ``conns_a * weight_b`` with
``conns_b * weight_a`` (cross-multiplied, no division). When several candidates share
that lowest ratio, smooth weighted round robin (``current_weight`` and
``effective_weight`` exactly as in ``round_robin.py``) chooses among *those* peers only,
walking from the first of them; a lone winner is taken without touching any
``current_weight``.

Worked trace, weights a=2, b=1, c=1, every request still in flight (each pick adds one
connection to its peer); ``cw`` is ``current_weight`` after the pick:

    pick  conns a b c   lowest ratio   tied     cw a  b  c   chosen
    1           0 0 0   0              a b c    -2  1  1     a   (2+1+1 = 4 paid by a)
    2           1 0 0   0              b c      -2  0  2     b   (2 = 2: first wins)
    3           1 1 0   0              c        -2  0  2     c   (alone: cw untouched)
    4           1 1 1   1/2            a        -2  0  2     a
    5           2 1 1   1              a b c     0  1 -1     c
    6           2 1 2   1              a b      -1  2 -1     a   (2 = 2: first wins)

    → a b c a c a, and a holds 3 of the 6 connections (weight 2 of 4).

The backup tier is chosen the same way: nginx's least_conn, having found no primary,
points the request at the backup list and calls itself again
(``rrp->peers = peers->next``), so backups are balanced by least connections too.

This module owns only that choice. Skipping peers that are down, failed, at
``max_conns`` or already tried is ``Attempts.eligible``; counting the connection is
``UpstreamGroup.acquire`` (so the ``conns`` read here include every request in
flight, tunnels and gRPC calls alike). ``Peer.weight_now`` is the weight compared, and
it caps what a peer adds in the tie-break, so a peer ramping up after ``slow_start``
gets its share gradually.
"""
from __future__ import annotations

from typing import Optional

from gateway.upstream._interfaces import Candidates, PickContext
from gateway.upstream.peer import Peer


class LeastConn:
    """nginx's ``least_conn``, over one tier of a group."""

    name = "least_conn"
    needs_context = False

    def __init__(self, peers: list[Peer]):
        self.peers = peers

    def peers_changed(self) -> None:
        pass   # nothing derived from the list

    def pick(self, attempts: Candidates, context: PickContext, now: float) -> Optional[Peer]:
        peers = self.peers
        best: Optional[Peer] = None
        best_weight = 0.0
        first = 0
        many = False
        for i, peer in enumerate(peers):
            if not attempts.eligible(peer, now):
                continue
            weight = peer.weight_now(now)
            if best is None or peer.conns * best_weight < best.conns * weight:
                best, best_weight, first, many = peer, weight, i, False
            elif peer.conns * best_weight == best.conns * weight:
                many = True
        if best is None or not many:
            return best

        # Several peers share the lowest ratio: smooth weighted round robin among them,
        # starting from the first one (nginx's "many" loop).
        lowest, lowest_weight = best, best_weight
        total = 0
        for peer in peers[first:]:
            if not attempts.eligible(peer, now):
                continue
            weight = peer.weight_now(now)
            if peer.conns * lowest_weight != lowest.conns * weight:
                continue
            # as in round_robin.py: a peer ramping up (slow_start) adds at most its
            # ramped weight; otherwise weight_now is weight >= effective_weight
            if weight > peer.effective_weight:
                weight = peer.effective_weight
            peer.current_weight += weight
            total += weight
            if peer.effective_weight < peer.weight:
                peer.effective_weight += 1
            if peer.current_weight > best.current_weight:
                best = peer
        best.current_weight -= total
        return best
