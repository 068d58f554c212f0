"""The runtime API: read and change upstream peers without a reload.

``/api/upstreams/NAME/servers/ADDRESS`` (``ADDRESS`` is the peer's name — its
``address`` as written, or ``ip:port`` for a ``resolve = true`` peer — URL-encoded):

- ``GET`` shows the peer (its status snapshot plus ``down`` and ``drain``);
- ``PATCH`` (or ``POST``) with a JSON object changes it, all fields or none:

  - ``{"down": true|false}``: no new requests while down (in-flight ones finish);
    bringing it back starts ``slow_start`` and serves queued requests at once;
  - ``{"drain": true|false}``: NGINX Plus's ``drain``: no new requests, those in flight
    and open tunnels finish (there are no sticky sessions to keep);
  - ``{"weight": N}``: the new weight (an integer ≥ 1), used by the next pick.

Also ``GET /api/upstreams`` (every group), ``/api/upstreams/NAME`` (one group) and
``/api/upstreams/NAME/servers`` (its peers). Errors are JSON ``{"error": {"status",
"text"}}`` with 400 (bad body), 404 (unknown group or server), 405 (method) or 415 (a
change not sent as ``application/json``: a cross-site form cannot send that without
a CORS preflight, which is never granted). Every change is logged with structured
fields (``upstream``, ``server``, ``field``, ``old``, ``new``, ``client``).

This module owns validating and applying changes; routing and HTTP are ``site.py``'s.
"""
from __future__ import annotations

import json
from typing import Optional

from twisted.logger import Logger

__all__ = ["ApiError", "UpstreamAPI"]

log = Logger()

#: what a PATCH may set, and its check
SETTABLE = ("down", "drain", "weight")


class ApiError(Exception):
    """An error answered as JSON with ``status``."""

    def __init__(self, status: int, text: str, allow: Optional[tuple[str, ...]] = None):
        super().__init__(text)
        self.status = status
        self.text = text
        #: the methods allowed, for a 405's ``Allow`` header
        self.allow = allow

    def document(self) -> dict:
        return {"error": {"status": self.status, "text": self.text}}


def parse_changes(body: bytes) -> dict:
    """The changes a PATCH body asks for, validated (``ApiError(400)`` otherwise)."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, 'the body must be a JSON object such as {"down": true}')
    unknown = sorted(set(data) - set(SETTABLE))
    if unknown:
        raise ApiError(400, "unknown field(s) %s: only %s may be changed" % (
            ", ".join(json.dumps(k) for k in unknown), ", ".join(SETTABLE)))
    if not data:
        raise ApiError(400, "nothing to change: give down, drain or weight")
    for key in ("down", "drain"):
        if key in data and not isinstance(data[key], bool):
            raise ApiError(400, f"{key} must be true or false, got {json.dumps(data[key])}")
    if "weight" in data:
        weight = data["weight"]
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ApiError(400, f"weight must be an integer of at least 1, "
                                f"got {json.dumps(weight)}")
    return data


class UpstreamAPI:
    """Reads and changes the peers of one ``UpstreamManager``."""

    def __init__(self, manager):
        self.manager = manager

    def _group(self, name: str):
        if name not in self.manager:
            raise ApiError(404, f"no upstream group {name!r}")
        return self.manager.group(name)

    def _peers(self, group, address: str) -> list:
        """Every peer of ``group`` called ``address`` (the same server listed twice
        is changed as one)."""
        peers = [p for p in list(group.peers) + list(group.backups) if p.name == address]
        if not peers:
            raise ApiError(404, f"no server {address!r} in upstream {group.name!r}")
        return peers

    def peer_document(self, peer) -> dict:
        data = peer.snapshot(self.manager.clock.seconds())
        data["down"] = peer.down
        data["drain"] = peer.draining
        return data

    # -- reads ---------------------------------------------------------------------------

    def groups(self) -> dict:
        return self.manager.snapshot()

    def group(self, name: str) -> dict:
        return self._group(name).snapshot()

    def servers(self, name: str) -> list:
        group = self._group(name)
        return [self.peer_document(p) for p in list(group.peers) + list(group.backups)]

    def server(self, name: str, address: str) -> dict:
        return self.peer_document(self._peers(self._group(name), address)[0])

    # -- changes -------------------------------------------------------------------------

    def change_server(self, name: str, address: str, body: bytes, client: str = "") -> dict:
        """Apply a PATCH body to the server; the peer as it is now."""
        group = self._group(name)
        peers = self._peers(group, address)
        changes = parse_changes(body)
        now = self.manager.clock.seconds()
        capacity = weights = False
        for peer in peers:
            if "down" in changes:
                old = peer.down
                peer.set_down(changes["down"], now)
                capacity |= old and not peer.down
                self._logged(group, peer, "down", old, peer.down, client)
            if "drain" in changes:
                old = peer.draining
                peer.draining = changes["drain"]
                capacity |= old and not peer.draining
                self._logged(group, peer, "drain", old, peer.draining, client)
            if "weight" in changes:
                old = peer.weight
                peer.set_weight(changes["weight"])
                weights |= old != peer.weight
                self._logged(group, peer, "weight", old, peer.weight, client)
        if weights:
            group.weights_changed()
        if capacity:
            # requests waiting in the group's queue may use the peer now
            group.capacity_changed()
        return self.peer_document(peers[0])

    @staticmethod
    def _logged(group, peer, field: str, old, new, client: str) -> None:
        log.info(
            "admin API: upstream {upstream} server {server}: {change} (from {client})",
            upstream=group.name, server=peer.name, field=field, old=old, new=new,
            change=f"{field} {json.dumps(old)} -> {json.dumps(new)}",
            client=client or "-",
        )
