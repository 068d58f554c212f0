"""Paths, addresses and listen endpoints, made absolute against the configuration file.

This module owns the values that name a place: file paths (relative ones resolve against
the configuration file's directory), ``host[:port]`` / ``[v6][:port]`` / ``unix:/path``
addresses and Twisted server endpoint descriptions (constructed on a ``MemoryReactor`` to
validate them, never listened on; a relative ``unix:`` socket is made absolute). Each
reader is a value parser in ``_reader``'s sense: it returns the result or raises
``ValueError`` with the message. It resolves no host names and opens no files; which
keys hold such values is left to the section modules.
"""
from __future__ import annotations

import ipaddress
import os
import re

from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor

from gateway.config._reader import nonempty_string
from gateway.config.model import Address
from gateway.config.units import show

_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


class Addresses:
    """The value parsers that need the configuration file's directory ``base``."""

    def __init__(self, base: str):
        self.base = base

    def resolve(self, path: str) -> str:
        return os.path.normpath(os.path.join(self.base, path))

    def file_path(self, value: object) -> str:
        return self.resolve(nonempty_string(value))

    def address(self, value: object, default_port: int = 80,
                allow_unix: bool = True) -> Address:
        """``host[:port]``, ``[v6][:port]`` or ``unix:/path`` (path made absolute)."""
        text = nonempty_string(value)
        wanted = '"host:port", "[v6addr]:port"' + (' or "unix:/path"' if allow_unix else "")
        if text.startswith("unix:"):
            if not allow_unix or len(text) == len("unix:"):
                raise ValueError(f"must be {wanted}, got {show(value)}")
            return Address(text=text, path=self.resolve(text[len("unix:"):]))
        if text.startswith("["):
            host, sep, port_text = text[1:].partition("]")
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"must be {wanted}, got {show(value)}") from None
            if port_text and not port_text.startswith(":"):
                raise ValueError(f"must be {wanted}, got {show(value)}")
            port_text = port_text[1:] if sep and port_text else None
        elif text.count(":") > 1:
            if _is_ipv6(text) or _is_ipv6(text.rpartition(":")[0]):
                raise ValueError('IPv6 addresses must be in brackets, like "[::1]:8080", '
                                 f"got {show(value)}")
            raise ValueError(f"must be {wanted}, got {show(value)}")
        else:
            host, sep, port_text = text.partition(":")
            port_text = port_text if sep else None
            if not _HOST.fullmatch(host):
                raise ValueError(f"must be {wanted}, got {show(value)}")
        if port_text is None:
            port = default_port
        elif port_text.isdigit() and 1 <= int(port_text) <= 65535:
            port = int(port_text)
        else:
            raise ValueError(f"port must be from 1 to 65535, got {show(value)}")
        return Address(text=text, host=host, port=port)

    def listen(self, value: object) -> str:
        """A Twisted server endpoint description, constructed (never listened on) to
        validate it; a relative ``unix:`` path is made absolute."""
        description = nonempty_string(value)
        try:
            endpoint = serverFromString(MemoryReactor(), description)
        except Exception as e:   # any constructor failure is the user's description
            raise ValueError(f"invalid endpoint description {show(description)}: "
                             f"{e}") from None
        port = getattr(endpoint, "_port", None)
        if isinstance(port, int) and not 0 <= port <= 65535:
            raise ValueError(f"port must be from 0 to 65535, got {show(description)}")
        return self.absolute_unix_listen(description)

    def absolute_unix_listen(self, description: str) -> str:
        if not description.startswith("unix:"):
            return description
        rest = description[len("unix:"):]
        # the socket path runs to the first unescaped ":" (Twisted's quoting)
        match = re.match(r"((?:[^:\\]|\\.)*)(.*)", rest, re.DOTALL)
        quoted, options = match.group(1), match.group(2)
        path = re.sub(r"\\(.)", r"\1", quoted)
        if not path or "=" in path or os.path.isabs(path):
            return description
        absolute = self.resolve(path).replace("\\", "\\\\").replace(":", "\\:")
        return f"unix:{absolute}{options}"
