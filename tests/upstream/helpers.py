"""Builders shared by the upstream tests: settings from short peer names, a group on a
``task.Clock``, and a "one request" driver that records which peer served it."""
from __future__ import annotations

from twisted.internet.task import Clock

from gateway.config.model import Address, PeerSettings, UpstreamSettings
from gateway.upstream import Outcome, UpstreamGroup


def server(name: str, **options) -> PeerSettings:
    """A peer called ``name`` (its address text), with PeerSettings options."""
    return PeerSettings(address=Address(text=name, host=name, port=80), **options)


def upstream(*servers: PeerSettings, name: str = "app", **options) -> UpstreamSettings:
    return UpstreamSettings(name=name, servers=tuple(servers), **options)


def make_group(*servers: PeerSettings, **options) -> tuple[UpstreamGroup, Clock]:
    clock = Clock()
    return UpstreamGroup(upstream(*servers, **options), clock), clock


def serve(group: UpstreamGroup, outcome: Outcome = Outcome.OK) -> str:
    """One request with one attempt: acquire, release with ``outcome``, return the
    peer's name (or ``None`` when no peer was live)."""
    lease = group.acquire(group.attempts())
    if lease is None:
        return None
    lease.release(outcome)
    return lease.peer.name


def sequence(group: UpstreamGroup, count: int) -> list[str]:
    """The peers of ``count`` successful one-attempt requests, in order."""
    return [serve(group) for _ in range(count)]
