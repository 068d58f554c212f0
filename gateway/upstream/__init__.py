"""Upstream groups, peer selection and passive health, with nginx's semantics.

Usage by a handler, one ``Attempts`` per request and one lease per attempt::

    group = manager.group("app")
    attempts = group.attempts(location.proxy_next_upstream_tries)
    while True:
        lease = group.acquire(attempts, PickContext(remote_addr=client_ip))
        if lease is None:
            ...  # "no live upstreams": 502
        try:
            ...  # talk to lease.peer.address
        finally:
            lease.release(outcome)
        if outcome is Outcome.OK or attempts.tries == 0:
            break
"""
from gateway.upstream._interfaces import Balancer, Outcome, PickContext
from gateway.upstream.balancers import BALANCERS, balancer_class
from gateway.upstream.group import Attempts, Lease, UpstreamGroup
from gateway.upstream.manager import UpstreamManager
from gateway.upstream.peer import Peer

__all__ = [
    "Attempts", "BALANCERS", "Balancer", "Lease", "Outcome", "Peer", "PickContext",
    "UpstreamGroup", "UpstreamManager", "balancer_class",
]
