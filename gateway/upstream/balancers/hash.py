"""Hashing a request key: a port of nginx's ``ngx_http_upstream_hash_module.c``, both
``hash $key`` (``ngx_http_upstream_get_hash_peer``, class ``Hash``) and
``hash $key consistent`` (``ngx_http_upstream_get_chash_peer``, ``ConsistentHash``).

The key is the group's ``hash_key`` template rendered for the request
(``PickContext.hash_key``), as bytes (latin-1, the wire bytes, else UTF-8). An empty
key, or a tier of fewer than two peers, is served by round robin.

**hash** is compatible with Cache::Memcached. Lookup *n* (from 0) adds
``(crc32(REHASH KEY) >> 16) & 0x7fff`` to a running 32-bit sum, where ``REHASH`` is
the decimal *n* and is omitted for *n* = 0; the peer is found by weight:
``sum % total_weight``, walking the tier in configuration order (``down`` peers keep
their share of the range, so marking one down moves only its keys). A peer that may
not be tried (down, failed, at ``max_conns``, already tried by this request) leads to
the next lookup; after 20 re-hashes (21 lookups, counted across one request's retries)
the request falls back to round robin over the tier.

Worked trace, key "1" over peers a, b, c (weights 1, total 3)::

    lookup 0   crc32("1")  = 0x83dcefb7;  0x83dc & 0x7fff =   988;  sum   988 % 3 = 1 -> b
    lookup 1   crc32("11") = 0xd65a1577;  0xd65a & 0x7fff = 22106;  sum 23094 % 3 = 0 -> a

    → b, then a on a retry; keys "1".."20" give indexes
    1 2 1 0 1 0 0 2 2 0 2 0 2 2 1 2 0 1 1 2.

**consistent** is ketama, compatible with Cache::Memcached::Fast. Each peer puts
``160 * weight`` points on a ring of 32-bit values: point *j* is
``crc32(HOST "\\0" PORT PREV)``, with ``PREV`` the previous point's value as 4
little-endian bytes (0 for the first). HOST and PORT are split from the server
string as written (``PeerSettings.address.text``): after ``"unix:"`` the rest is the
host and the port is empty; otherwise the port is the digits after the last ``":"``
when there are any (``"[::1]:80"`` → ``"[::1]"``, ``"80"``). The points are sorted and
duplicates dropped (the first kept). A request starts at the first point whose value
is ``>= crc32(key)``, wrapping to the first; the point names a server string, and
among the tier's eligible peers with that string (several after ``resolve``) smooth
weighted round robin chooses. With none eligible the next point is tried; after 20
moves, round robin over the tier. Removing a server removes only its own points, so
only the keys that were on it move.
"""
from __future__ import annotations

import bisect
import struct
import zlib
from typing import Optional

from gateway.upstream._interfaces import Candidates, PickContext
from gateway.upstream.balancers.ip_hash import MAX_REHASHES, weighted_peer
from gateway.upstream.balancers.round_robin import RoundRobin
from gateway.upstream.peer import Peer

#: ketama points per unit of weight, as nginx and Cache::Memcached::Fast
POINTS_PER_WEIGHT = 160

_LITTLE_ENDIAN_U32 = struct.Struct("<I")


def key_bytes(key: str) -> bytes:
    """A rendered key as the bytes nginx would hash: values taken from the wire are
    latin-1 decoded (``gateway.http.variables``), so latin-1 restores them; text from
    the configuration file outside latin-1 goes as UTF-8."""
    try:
        return key.encode("latin-1")
    except UnicodeEncodeError:
        return key.encode("utf-8")


def memcached_hash(key: bytes, rehash: int) -> int:
    """One Cache::Memcached lookup's addend: ``(crc32([REHASH] KEY) >> 16) & 0x7fff``."""
    prefix = b"%d" % rehash if rehash > 0 else b""
    return (zlib.crc32(prefix + key) >> 16) & 0x7FFF


def split_server(server: str) -> tuple[bytes, bytes]:
    """HOST and PORT of a server string, split as ``ngx_http_upstream_update_chash``."""
    data = server.encode("utf-8")
    if data[:5].lower() == b"unix:":
        return data[5:], b""
    for j in range(len(data)):
        c = data[len(data) - j - 1]
        if c == ord(":"):
            return data[: len(data) - j - 1], data[len(data) - j:]
        if not ord("0") <= c <= ord("9"):
            break
    return data, b""


def server_points(server: str, weight: int) -> list[int]:
    """The ketama points of one server string: ``160 * weight`` chained crc32s."""
    host, port = split_server(server)
    base = zlib.crc32(host + b"\0" + port)
    points = []
    prev = 0
    for _ in range(POINTS_PER_WEIGHT * weight):
        prev = zlib.crc32(_LITTLE_ENDIAN_U32.pack(prev), base)
        points.append(prev)
    return points


def server_of(peer: Peer) -> str:
    """The server string a ketama point names: the address as written in the file."""
    return peer.settings.address.text


class _HashState:
    """Per request (nginx's ``hp->hash``, ``hp->rehash``, ``hp->tries``)."""

    __slots__ = ("hash", "rehash", "tries")

    def __init__(self) -> None:
        self.hash = 0
        self.rehash = 0
        self.tries = 0


class Hash:
    """nginx's ``hash $key`` (Cache::Memcached compatible), over one tier."""

    name = "hash"
    needs_context = True

    def __init__(self, peers: list[Peer]):
        self.peers = peers
        self.round_robin = RoundRobin(peers)

    def peers_changed(self) -> None:
        pass   # the total weight is summed per lookup

    def pick(self, attempts: Candidates, context: PickContext, now: float) -> Optional[Peer]:
        state = attempts.balancer_state
        if state is None:
            state = attempts.balancer_state = _HashState()
        key = context.hash_key
        if state.tries > MAX_REHASHES or len(self.peers) < 2 or not key:
            return self.round_robin.pick(attempts, context, now)

        data = key_bytes(key)
        while True:
            state.hash = (state.hash + memcached_hash(data, state.rehash)) & 0xFFFFFFFF
            state.rehash += 1
            peer = weighted_peer(self.peers, state.hash)
            if attempts.eligible(peer, now):
                return peer
            state.tries += 1
            if state.tries > MAX_REHASHES:
                return self.round_robin.pick(attempts, context, now)


class _RingState:
    """Per request: the ring position (nginx's ``hp->hash``) and ``hp->tries``."""

    __slots__ = ("point", "tries")

    def __init__(self, point: int) -> None:
        self.point = point
        self.tries = 0


class ConsistentHash:
    """nginx's ``hash $key consistent`` (ketama), over one tier."""

    name = "hash"
    needs_context = True

    def __init__(self, peers: list[Peer]):
        self.peers = peers
        self.round_robin = RoundRobin(peers)
        self.peers_changed()

    def peers_changed(self) -> None:
        """Rebuild the ring from the tier's peers (their server strings and weights)."""
        points: list[tuple[int, int, str]] = []
        for order, peer in enumerate(self.peers):
            server = server_of(peer)
            points.extend((value, order, server)
                          for value in server_points(server, peer.weight))
        # Sorted by value; of equal values the first in configuration order is kept.
        points.sort()
        hashes: list[int] = []
        servers: list[str] = []
        for value, _, server in points:
            if hashes and hashes[-1] == value:
                continue
            hashes.append(value)
            servers.append(server)
        self.hashes = hashes
        self.servers = servers

    def start(self, key: str) -> int:
        """The ring index of the first point ``>= crc32(key)`` (may equal the ring's
        length: lookups take it modulo the length, so it wraps to the first point)."""
        return bisect.bisect_left(self.hashes, zlib.crc32(key_bytes(key)))

    def pick(self, attempts: Candidates, context: PickContext, now: float) -> Optional[Peer]:
        key = context.hash_key
        state = attempts.balancer_state
        if state is None:
            state = attempts.balancer_state = _RingState(self.start(key) if key else 0)
        if state.tries > MAX_REHASHES or len(self.peers) < 2 or not key:
            return self.round_robin.pick(attempts, context, now)
        if not self.hashes:
            return None

        servers = self.servers
        while True:
            server = servers[state.point % len(servers)]
            best: Optional[Peer] = None
            total = 0
            for peer in self.peers:
                if not attempts.eligible(peer, now) or server_of(peer) != server:
                    continue
                peer.current_weight += peer.effective_weight
                total += peer.effective_weight
                if peer.effective_weight < peer.weight:
                    peer.effective_weight += 1
                if best is None or peer.current_weight > best.current_weight:
                    best = peer
            if best is not None:
                best.current_weight -= total
                return best
            state.point += 1
            state.tries += 1
            if state.tries > MAX_REHASHES:
                return self.round_robin.pick(attempts, context, now)
