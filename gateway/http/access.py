"""Access rules: a location's ordered ``allow``/``deny`` list, as ``ngx_http_access_module``.

This module owns the decision "may this client address use this location?". Parsing
the rule text is the config loader's (it builds :class:`~gateway.config.model.AccessRule`);
answering 403 is the caller's.

nginx keeps one rule list per address family: IPv4 rules, IPv6 rules and ``unix:``
rules, with ``all`` appended to every list in its place. A client is checked against
its family's list only, first match wins, and a client no rule matches is allowed. An
IPv4-mapped IPv6 client (``::ffff:10.0.0.1``, a dual-stack listener) is checked as the
IPv4 address against the IPv4 list — provided there is an IPv4 list at all (an IPv4
rule or ``all``); otherwise it is checked as IPv6.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Sequence

from gateway.config.model import AccessRule

__all__ = ["AccessList"]

# one compiled rule: (allow, network address as int, mask as int)
_Compiled = tuple[bool, int, int]

_V4_MAPPED_PREFIX = 0xFFFF << 32
_V4_MAPPED_MASK = ((1 << 128) - 1) ^ ((1 << 32) - 1)


class AccessList:
    """The ``access`` rules of one location, precompiled per address family."""

    def __init__(self, rules: Sequence[AccessRule]) -> None:
        self.rules = tuple(rules)
        v4: list[_Compiled] = []
        v6: list[_Compiled] = []
        unix: list[bool] = []
        self._all_only: list[bool] = []   # for addresses that do not parse
        for rule in self.rules:
            if rule.all:
                v4.append((rule.allow, 0, 0))
                v6.append((rule.allow, 0, 0))
                unix.append(rule.allow)
                self._all_only.append(rule.allow)
            elif rule.unix:
                unix.append(rule.allow)
            elif rule.network is not None:
                network = ipaddress.ip_network(rule.network, strict=False)
                compiled = (rule.allow, int(network.network_address), int(network.netmask))
                (v4 if network.version == 4 else v6).append(compiled)
            else:
                raise ValueError(f"access rule {rule!r} names no address")
        self._v4 = tuple(v4)
        self._v6 = tuple(v6)
        self._unix = tuple(unix)
        self.empty = not self.rules

    def allows(self, remote_addr: str) -> bool:
        """Whether ``remote_addr`` (``"10.0.0.1"``, ``"::1"``, ``"unix:"``) may pass."""
        if self.empty:
            return True
        if remote_addr == "unix:" or remote_addr.startswith("unix:"):
            return self._unix[0] if self._unix else True
        # inet_pton is strict (no "10.1" shorthands) and several times faster than
        # ipaddress on this per-request path
        try:
            if ":" in remote_addr:
                zone = remote_addr.find("%")
                if zone != -1:
                    remote_addr = remote_addr[:zone]
                value = int.from_bytes(socket.inet_pton(socket.AF_INET6, remote_addr), "big")
                is_v4 = False
            else:
                value = int.from_bytes(socket.inet_pton(socket.AF_INET, remote_addr), "big")
                is_v4 = True
        except (OSError, ValueError):
            return self._all_only[0] if self._all_only else True
        if is_v4:
            rules = self._v4
        elif self._v4 and value & _V4_MAPPED_MASK == _V4_MAPPED_PREFIX:
            rules = self._v4
            value &= 0xFFFFFFFF
        else:
            rules = self._v6
        for allow, network, mask in rules:
            if value & mask == network:
                return allow
        return True
