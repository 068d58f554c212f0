"""Balancing methods by the name used in ``balance = "…"``.

One method per module, each a port of the nginx module of the same name. A method is
a class following ``gateway.upstream._interfaces.Balancer``; ``UpstreamGroup`` builds
one instance per tier with ``cls(peers)``. Where a setting selects a different nginx
``get`` function (``hash … consistent``, ``random two``), ``balancer_class`` returns
that variant's class, so the group needs no knowledge of the settings.
"""
from __future__ import annotations

from typing import Optional

from gateway.config.model import UpstreamSettings
from gateway.upstream.balancers.hash import ConsistentHash, Hash
from gateway.upstream.balancers.ip_hash import IPHash
from gateway.upstream.balancers.least_conn import LeastConn
from gateway.upstream.balancers.random import Random, RandomTwo
from gateway.upstream.balancers.round_robin import RoundRobin

BALANCERS: dict[str, type] = {
    "round_robin": RoundRobin,
    "least_conn": LeastConn,
    "ip_hash": IPHash,
    "hash": Hash,
    "random": Random,
}


def balancer_class(name: str, settings: Optional[UpstreamSettings] = None) -> type:
    """The class for ``balance = name``; with the group's ``settings``, the variant
    they select (``consistent = true``: ``ConsistentHash``; ``two = true``:
    ``RandomTwo``). ``ValueError`` when this build has no such method."""
    try:
        cls = BALANCERS[name]
    except KeyError:
        raise ValueError(
            f"balancing method {name!r} is not available"
            f" (available: {', '.join(sorted(BALANCERS))})"
        ) from None
    if settings is not None:
        if cls is Hash and settings.consistent:
            return ConsistentHash
        if cls is Random and settings.two:
            return RandomTwo
    return cls


__all__ = [
    "BALANCERS", "ConsistentHash", "Hash", "IPHash", "LeastConn", "Random", "RandomTwo",
    "RoundRobin", "balancer_class",
]
