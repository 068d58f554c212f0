"""The upstream manager: every group of the configuration, by name.

This module owns building ``UpstreamGroup`` objects from the loaded settings (declared
groups and the implicit ones of literal ``proxy_pass host:port`` alike) and looking them
up. Each handler (HTTP proxy, tunnels, gRPC) asks the same manager, so a peer's
connection count and failure state are shared by every protocol. Peer selection and
accounting are ``group.py``'s.
"""
from __future__ import annotations

from typing import Iterator, Mapping

from twisted.internet.interfaces import IReactorTime

from gateway.config.model import UpstreamSettings
from gateway.upstream.group import UpstreamGroup


class UpstreamManager:
    """All upstream groups of one process (state is per worker, as nginx without
    ``zone``)."""

    def __init__(self, upstreams: Mapping[str, UpstreamSettings], clock: IReactorTime):
        self.clock = clock
        self.groups: dict[str, UpstreamGroup] = {
            name: UpstreamGroup(settings, clock) for name, settings in upstreams.items()
        }

    def group(self, name: str) -> UpstreamGroup:
        """The group called ``name``; ``KeyError`` when there is none."""
        return self.groups[name]

    def __contains__(self, name: object) -> bool:
        return name in self.groups

    def __iter__(self) -> Iterator[UpstreamGroup]:
        return iter(self.groups.values())

    def snapshot(self) -> dict[str, dict]:
        """``UpstreamGroup.snapshot`` of every group, by name: plain, JSON-serialisable
        data for the status page and the API."""
        return {name: group.snapshot() for name, group in self.groups.items()}
