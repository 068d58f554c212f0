"""The upstream manager: every group of the configuration, by name.

This module owns building ``UpstreamGroup`` objects from the loaded settings (declared
groups and the implicit ones of literal ``proxy_pass host:port`` alike) and looking them
up. Each handler (HTTP proxy, tunnels, gRPC) asks the same manager, so a peer's
connection count and failure state are shared by every protocol. A reload hands it the
new settings (``reconfigure``): groups are matched by name and peers by address, so
kept ones keep their state. Peer selection and accounting are ``group.py``'s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping

from twisted.internet.interfaces import IReactorTime

from gateway.config.model import UpstreamSettings
from gateway.upstream.group import UpstreamGroup
from gateway.upstream.peer import Peer


@dataclass
class ManagerChanges:
    """What ``UpstreamManager.reconfigure`` did: the names of new groups, the groups
    that left, and for each kept group its peers ``(added, removed)``."""

    added: list[str] = field(default_factory=list)
    removed: dict[str, UpstreamGroup] = field(default_factory=dict)
    kept: dict[str, tuple[list[Peer], list[Peer]]] = field(default_factory=dict)


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

    def reconfigure(self, upstreams: Mapping[str, UpstreamSettings]) -> ManagerChanges:
        """A reload: make the groups those of ``upstreams``. A new name is a new group;
        a name that disappeared leaves (requests in flight keep its object); a kept
        name keeps its ``UpstreamGroup`` and takes the new settings
        (``UpstreamGroup.reconfigure``: the file's values replace changes made through
        the runtime API, even when the group's settings are unchanged). The order of
        the groups becomes the file's."""
        changes = ManagerChanges()
        # validate everything before changing anything (the loader already has)
        fresh = {name: UpstreamGroup(settings, self.clock)
                 for name, settings in upstreams.items() if name not in self.groups}
        groups: dict[str, UpstreamGroup] = {}
        for name, settings in upstreams.items():
            group = self.groups.get(name)
            if group is None:
                groups[name] = fresh[name]
                changes.added.append(name)
                continue
            changes.kept[name] = group.reconfigure(settings)
            groups[name] = group
        changes.removed = {name: group for name, group in self.groups.items()
                           if name not in groups}
        self.groups = groups
        return changes

    def snapshot(self) -> dict[str, dict]:
        """``UpstreamGroup.snapshot`` of every group, by name: plain, JSON-serialisable
        data for the status page and the API."""
        return {name: group.snapshot() for name, group in self.groups.items()}
