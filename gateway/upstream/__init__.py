"""Upstream groups, peer selection and passive health, with nginx's semantics.

Usage by a handler, one ``Attempts`` per request and one lease per attempt::

    group = manager.group("app")
    attempts = group.attempts(location.proxy_next_upstream_tries)
    while True:
        lease = group.acquire(attempts, PickContext(remote_addr=client_ip))
        if lease is None:
            waiting = group.wait(attempts, context)   # queue, and a peer at max_conns?
            ...  # None: "no live upstreams", 502; else a Deferred[Lease] that may
                 # fail with QueueFull or QueueTimeout (502); cancel it if the client goes
        try:
            ...  # talk to lease.peer.address
        finally:
            lease.release(outcome, error_text_or_None)
        if outcome is Outcome.OK or attempts.tries == 0:
            break
"""
from gateway.upstream._interfaces import Balancer, Outcome, PickContext
from gateway.upstream.balancers import BALANCERS, balancer_class
from gateway.upstream.group import Attempts, Lease, UpstreamGroup
from gateway.upstream.manager import UpstreamManager
from gateway.upstream.peer import Peer
from gateway.upstream.queue import (
    QueueClosed, QueueError, QueueFull, QueueTimeout, RequestQueue,
)

__all__ = [
    "Attempts", "BALANCERS", "Balancer", "Lease", "Outcome", "Peer", "PickContext",
    "QueueClosed", "QueueError", "QueueFull", "QueueTimeout", "RequestQueue",
    "UpstreamGroup", "UpstreamManager", "balancer_class",
]
