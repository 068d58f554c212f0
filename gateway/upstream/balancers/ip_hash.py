"""Client-address hashing: a port of nginx's ``ngx_http_upstream_get_ip_hash_peer``
(src/http/modules/ngx_http_upstream_ip_hash_module.c).

The key is the client address: the first three octets of an IPv4 address (so a whole
/24 goes to one peer), all sixteen bytes of an IPv6 address, and nginx's pseudo address
``0.0.0`` for anything else (unix-socket clients). Starting from 89, each byte folds in
as ``hash = (hash * 113 + byte) % 6271``. The peer is found by weight:
``w = hash % total_weight``, then walking the tier in configuration order subtracting
each peer's ``weight`` until ``w`` falls inside one (``total_weight`` counts every peer
of the tier, ``down`` ones included, so marking a peer down moves only its own clients).

When the peer found may not be tried (down, failed, at ``max_conns``, already tried by
this request) the bytes are folded in once more, continuing from the last hash, and
the new hash is looked up. After 20 such re-hashes (21 lookups, counted across the
retries of one request) the request falls back to round robin over the tier, as
nginx does. The hash of the last peer chosen is kept in ``attempts.balancer_state``,
so a retry continues from it rather than landing on the same peer again.

Worked trace, clients 127.0.i.2 over peers a, b (weights 1, total 2)::

    hash of 127, 0          (89*113 + 127) % 6271 = 3913;  (3913*113 + 0) % 6271 = 3199
    third octet i           (3199*113 + i) % 6271 = 4040 + i
    i = 1: 4041 % 2 = 1 -> b    i = 2: 4042 % 2 = 0 -> a    i = 3: 4043 % 2 = 1 -> b

    → b a b a for i = 1..4, and over peers a, b, c: 4041 % 3 = 0 → a b c a b c.

The fourth octet never matters: 127.0.1.2 and 127.0.1.200 go to the same peer.
"""
from __future__ import annotations

import ipaddress
from typing import Optional

from gateway.upstream._interfaces import Candidates, PickContext
from gateway.upstream.balancers.round_robin import RoundRobin
from gateway.upstream.peer import Peer

#: nginx's ``ngx_http_upstream_ip_hash_pseudo_addr``: three zero bytes
PSEUDO_ADDR = b"\0\0\0"
#: re-hashes allowed after the first lookup before falling back to round robin
MAX_REHASHES = 20


def address_bytes(remote_addr: str) -> bytes:
    """The bytes nginx hashes for a client: 3 for IPv4, 16 for IPv6, else the pseudo
    address (``"unix:"`` and anything that is not an IP address)."""
    try:
        ip = ipaddress.ip_address(remote_addr)
    except ValueError:
        return PSEUDO_ADDR
    return ip.packed[:3] if ip.version == 4 else ip.packed


class _State:
    """Per request (nginx's ``iphp->hash`` and ``iphp->tries``)."""

    __slots__ = ("hash", "tries")

    def __init__(self) -> None:
        self.hash = 89
        self.tries = 0


def weighted_peer(peers: list[Peer], value: int) -> Peer:
    """nginx's walk: the peer whose weight range holds ``value % total_weight``.

    The total is summed here rather than kept: the walk is linear anyway, and a
    weight changed at run time can then never leave it stale."""
    w = value % sum(peer.weight for peer in peers)
    for peer in peers:
        w -= peer.weight
        if w < 0:
            return peer
    raise AssertionError("unreachable: w < total_weight")


class IPHash:
    """nginx's ``ip_hash``, over the (only) tier of a group."""

    name = "ip_hash"
    needs_context = True

    def __init__(self, peers: list[Peer]):
        self.peers = peers
        self.round_robin = RoundRobin(peers)

    def peers_changed(self) -> None:
        pass   # the total weight is summed per lookup

    def pick(self, attempts: Candidates, context: PickContext, now: float) -> Optional[Peer]:
        state = attempts.balancer_state
        if state is None:
            state = attempts.balancer_state = _State()
        if state.tries > MAX_REHASHES or len(self.peers) < 2:
            return self.round_robin.pick(attempts, context, now)

        key = address_bytes(context.remote_addr)
        peers = self.peers
        value = state.hash
        while True:
            for byte in key:
                value = (value * 113 + byte) % 6271
            peer = weighted_peer(peers, value)
            if attempts.eligible(peer, now):
                state.hash = value
                return peer
            state.tries += 1
            if state.tries > MAX_REHASHES:
                return self.round_robin.pick(attempts, context, now)
