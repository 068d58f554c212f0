"""The small types shared by the upstream package and its callers.

This module owns the vocabulary of one upstream attempt: how it ended (``Outcome``),
what a balancer may look at when choosing (``PickContext``) and what a balancer is
(``Balancer``). It holds no state and no logic; peers live in ``peer.py``, the
per-request bookkeeping and the acquire/release pair in ``group.py``, and each
balancing method in its own module under ``balancers/``.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Optional, Protocol

#: a ``gateway.upstream.peer.Peer`` (not imported: peer.py builds on this module)
Peer = Any


class Outcome(enum.Enum):
    """How one attempt on one peer ended, as told to ``Lease.release``.

    These are nginx's ``free`` states: ``OK`` is state 0 (success, or an end that is no
    fault of the peer, such as the client going away), ``NEXT`` is ``NGX_PEER_NEXT``
    (the peer answered, but the answer is retried elsewhere without counting against the
    peer: nginx does this for ``http_403`` and ``http_404``), and ``FAILED`` is
    ``NGX_PEER_FAILED`` (counts towards ``max_fails``).
    """

    OK = "ok"
    FAILED = "failed"
    NEXT = "next"


@dataclass(frozen=True)
class PickContext:
    """Per-request inputs a balancer may use: the client address (``ip_hash``,
    ``random``) and the evaluated ``hash_key`` (``hash``). Round robin ignores it."""

    remote_addr: str = ""
    hash_key: str = ""


class Candidates(Protocol):
    """What a balancer may ask of one request's attempts (``group.Attempts``).

    ``balancer_state`` is the balancer's own per-request value kept across retries
    (None at the first pick), for methods that continue where the last pick stopped.
    """

    balancer_state: Any

    def eligible(self, peer: Peer, now: float) -> bool:
        """May ``peer`` be tried by this request now?"""


class Balancer(Protocol):
    """One balancing method over one tier (primary or backup) of a group.

    A balancer only *chooses*: it returns the peer to try next, or ``None`` when no
    peer of its tier may be tried. It must skip every peer for which
    ``attempts.eligible(peer, now)`` is false (down, failed within ``fail_timeout``, at
    ``max_conns``, already tried by this request) and may update the selection state
    it owns (``current_weight``, ``effective_weight``). Counting the connection,
    marking the peer tried and starting a ``fail_timeout`` probe are done by
    ``UpstreamGroup.acquire``; recording the result by ``Lease.release``.
    """

    #: False when ``pick`` ignores its context (the caller may then pass None)
    needs_context: bool

    def __init__(self, peers: list[Peer]) -> None: ...

    def pick(
        self, attempts: Candidates, context: PickContext, now: float
    ) -> Optional[Peer]: ...

    def peers_changed(self) -> None:
        """The tier's peer list (the list given to ``__init__``, changed in place) has
        gained or lost peers (``resolve = true``): rebuild what is derived from it."""
