"""Balancing methods by the name used in ``balance = "…"``.

One method per module, each a port of the nginx module of the same name. A method is
a class following ``gateway.upstream._interfaces.Balancer``; ``UpstreamGroup`` builds
one instance per tier. Methods of the next release (``least_conn``, ``ip_hash``,
``hash``, ``random``) are added here by name.
"""
from __future__ import annotations

from gateway.upstream.balancers.round_robin import RoundRobin

BALANCERS: dict[str, type] = {
    "round_robin": RoundRobin,
}


def balancer_class(name: str) -> type:
    """The class for ``balance = name``; ``ValueError`` when this build has none."""
    try:
        return BALANCERS[name]
    except KeyError:
        raise ValueError(
            f"balancing method {name!r} is not available"
            f" (available: {', '.join(sorted(BALANCERS))})"
        ) from None


__all__ = ["BALANCERS", "RoundRobin", "balancer_class"]
