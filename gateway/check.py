"""The parts of ``--check`` that look outside the file: upstream host names resolve.

The loader (``gateway.config``) validates the file itself: every key, every listen
description, every upstream reference, certificates and keys. What it cannot know is
whether the host names of upstream servers resolve on this machine. nginx finds out at
start ("host not found in upstream"); the gateway resolves such names each time it
connects (``resolve = false``) or in the background (``resolve = true``), so a typo
would only show as 502s. ``twistd gateway --check`` therefore resolves every host name
of a server without ``resolve = true`` once, blocking (it serves nothing), and reports
each failure with the TOML path of the address.

This module owns that check only; it is called by ``gateway.tap`` and never while the
gateway serves.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Callable, Iterator, Optional

from gateway.config.model import Address, Config

#: ``getaddrinfo``-like: raises ``OSError`` (``socket.gaierror``) when a name does not
#: resolve
Resolver = Callable[[str, int], object]


def _default_resolver(host: str, port: int) -> object:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _server_addresses(config: Config) -> Iterator[tuple[str, Address]]:
    """``(TOML path, address)`` of every upstream server resolved at connect time."""
    for name, group in config.upstreams.items():
        if group.implicit:
            continue
        for i, peer in enumerate(group.servers):
            if not peer.resolve:
                yield f"upstreams.{name}.servers[{i}].address", peer.address
    # literal ``proxy_pass = "http://host:port"`` (and ``grpc_pass``) groups, at the
    # first location (or front door) using them
    seen: set[str] = set()
    for s, server in enumerate(config.servers):
        for j, location in enumerate(server.locations):
            key, target = (("proxy_pass", location.proxy_pass)
                           if location.grpc_pass is None
                           else ("grpc_pass", location.grpc_pass))
            if target is None or target.upstream in seen:
                continue
            group = config.upstreams.get(target.upstream)
            if group is None or not group.implicit:
                continue
            seen.add(target.upstream)
            for peer in group.servers:
                yield f"servers[{s}].locations[{j}].{key}", peer.address
    # a ``[[grpc_servers]]`` front door's literal ``grpc_pass`` makes one as well
    for i, front_door in enumerate(config.grpc_servers):
        group = config.upstreams.get(front_door.upstream)
        if group is None or not group.implicit or front_door.upstream in seen:
            continue
        seen.add(front_door.upstream)
        for peer in group.servers:
            yield f"grpc_servers[{i}].grpc_pass", peer.address


def unresolvable_hosts(config: Config, resolve: Optional[Resolver] = None) -> list[str]:
    """One error line per upstream host name that does not resolve, in file order, in
    nginx's words (``host not found in upstream "name:port"``), each with its path.
    A name used by several servers is looked up once."""
    if resolve is None:
        resolve = _default_resolver
    errors: list[str] = []
    answers: dict[tuple[str, int], str] = {}
    for path, address in _server_addresses(config):
        if address.is_unix or address.host is None or _is_ip(address.host):
            continue
        key = (address.host, address.port or 80)
        if key not in answers:
            try:
                resolve(*key)
                answers[key] = ""
            except (OSError, UnicodeError) as e:
                reason = getattr(e, "strerror", None) or str(e)
                answers[key] = reason
        if answers[key]:
            errors.append(
                f'{path}: host not found in upstream "{address.text}" ({answers[key]})')
    return errors
