"""The keepalive pool of one upstream group: idle upstream connections kept for reuse.

This module owns nginx's ``ngx_http_upstream_keepalive_module`` semantics for one group:

- ``take(peer)`` hands out the most recently pooled idle connection to that peer (the
  one most likely still open) and counts a hit or a miss;
- ``put(peer, conn)`` keeps a connection only when its last exchange left it
  ``reusable``, it served fewer than ``keepalive_requests`` requests and is younger than
  ``keepalive_time``; beyond ``keepalive`` idle connections in the whole group the least
  recently used one is closed;
- an idle connection that the peer closes, that receives anything, or that stays idle
  for ``keepalive_timeout`` leaves the pool and is closed (the connection notices all
  three itself, the timeout through the shared deadline sweep, and tells the pool).

Connecting, running requests and deciding reusability belong to
:mod:`gateway.http.client`; choosing the peer belongs to the upstream group.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

from gateway.deadlines import Deadlines
from gateway.http.client import UpstreamConnection

__all__ = ["ConnectionPool"]


class ConnectionPool:
    """Idle connections of one upstream group, keyed by peer name."""

    def __init__(self, clock, deadlines: Deadlines, *, keepalive: int,
                 keepalive_requests: int, keepalive_timeout: float, keepalive_time: float):
        self.clock = clock
        self.deadlines = deadlines
        self.keepalive = keepalive
        self.keepalive_requests = keepalive_requests
        self.keepalive_timeout = keepalive_timeout
        self.keepalive_time = keepalive_time
        self.hits = 0
        self.misses = 0
        self._by_peer: dict[str, list[UpstreamConnection]] = {}   # oldest … newest
        self._lru: OrderedDict[UpstreamConnection, str] = OrderedDict()  # group-wide

    def __len__(self) -> int:
        """Idle connections held now."""
        return len(self._lru)

    def idle(self, peer_name: str) -> int:
        return len(self._by_peer.get(peer_name, ()))

    def take(self, peer_name: str) -> Optional[UpstreamConnection]:
        """The most recently pooled idle connection to ``peer_name`` (marked
        ``reused``), or None."""
        stack = self._by_peer.get(peer_name)
        if stack:
            connection = stack.pop()
            del self._lru[connection]
            connection._leave_pool()
            connection.reused = True
            self.hits += 1
            return connection
        self.misses += 1
        return None

    def put(self, peer_name: str, connection: UpstreamConnection) -> bool:
        """Keep ``connection`` for reuse if nginx would; close it otherwise.

        Returns whether it was kept.
        """
        now = self.clock.seconds()
        if (self.keepalive <= 0
                or not connection.reusable
                or connection.requests >= self.keepalive_requests
                or now - connection.created_at >= self.keepalive_time):
            connection.close()
            return False
        stack = self._by_peer.get(peer_name)
        if stack is None:
            stack = self._by_peer[peer_name] = []
        stack.append(connection)
        self._lru[connection] = peer_name
        connection._enter_pool(self._dropped, now + self.keepalive_timeout)
        while len(self._lru) > self.keepalive:
            oldest, oldest_peer = self._lru.popitem(last=False)
            self._by_peer[oldest_peer].remove(oldest)
            oldest._leave_pool()
            oldest.close()
        return True

    def reconfigure(self, *, keepalive: int, keepalive_requests: int,
                    keepalive_timeout: float, keepalive_time: float) -> None:
        """A reload's limits for the group. Idle connections stay (their idle
        deadlines run on) except those beyond a lower ``keepalive``, least recently
        used first; the new limits apply from the next ``put``."""
        self.keepalive = keepalive
        self.keepalive_requests = keepalive_requests
        self.keepalive_timeout = keepalive_timeout
        self.keepalive_time = keepalive_time
        while len(self._lru) > max(keepalive, 0):
            oldest, oldest_peer = self._lru.popitem(last=False)
            self._by_peer[oldest_peer].remove(oldest)
            oldest._leave_pool()
            oldest.close()

    def close_all(self) -> None:
        """Close every idle connection (reload, shutdown)."""
        connections = list(self._lru)
        self._lru.clear()
        self._by_peer.clear()
        for connection in connections:
            connection._leave_pool()
            connection.close()

    def close_peer(self, peer_name: str) -> int:
        """Close every idle connection to ``peer_name``, a peer that left the group
        (``resolve = true``). Returns how many were closed."""
        connections = self._by_peer.pop(peer_name, [])
        for connection in connections:
            del self._lru[connection]
            connection._leave_pool()
            connection.close()
        return len(connections)

    def _dropped(self, connection: UpstreamConnection) -> None:
        """An idle connection closed itself (peer closed, spoke, or timed out)."""
        peer_name = self._lru.pop(connection, None)
        if peer_name is not None:
            self._by_peer[peer_name].remove(connection)
