"""Routing: listener → virtual server → location, and the URI sent upstream.

This module owns three pure decisions, each a port of nginx's:

- :class:`ServerSelector` picks the ``[[servers]]`` entry for a request's host among
  the servers sharing one listener (``ngx_http_find_virtual_server``);
- :class:`LocationMatcher` picks the location for a normalised path, including the
  automatic 301 that a ``proxy_pass``/``grpc_pass`` location ending in ``/`` answers
  for the same path without the slash (``ngx_http_core_find_location``);
- :func:`upstream_uri` builds the request-target for the upstream request
  (``ngx_http_proxy_create_request``).

Everything here is precomputed from frozen config objects at construction and does no
I/O. Host validation, path normalisation and percent-decoding happen earlier (the
server protocol and ``gateway.http.uri``); answering 301/404 is the caller's.

Paths are ``str``: the percent-decoded request path is expected to have been decoded
as UTF-8 with ``surrogateescape`` (so any byte sequence round-trips), and the
re-escaping done by :func:`upstream_uri` encodes it back the same way
(:data:`PATH_ENCODING`, :data:`PATH_ERRORS`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

from gateway.config.model import LocationSettings, ProxyPass, ServerSettings

__all__ = [
    "LocationMatch",
    "LocationMatcher",
    "ServerSelector",
    "escape_uri",
    "upstream_uri",
]

PATH_ENCODING = "utf-8"
PATH_ERRORS = "surrogateescape"


# -- virtual servers ----------------------------------------------------------------


class ServerSelector:
    """Choose the virtual server for a host among the servers on one listener.

    ``servers`` are in file order. Precedence is nginx's: an exact name; the longest
    wildcard starting with ``*`` (``*.example.com``, or ``.example.com`` which also
    matches ``example.com`` itself); the longest wildcard ending with ``*``
    (``www.example.*``); the first regular expression (``~…``) in file order that
    matches; otherwise :attr:`default`, the ``default = true`` server or else the
    first one. When two servers claim the same name the first one keeps it (nginx
    warns "conflicting server name" and ignores the later one).

    Hosts are expected lower-cased, without port or trailing dot. The empty host (an
    HTTP/1.0 request without Host) goes to a server naming ``""`` explicitly, else to
    the default; regular expressions are never tried on it, as in nginx.
    """

    def __init__(self, servers: Sequence[ServerSettings]) -> None:
        if not servers:
            raise ValueError("a listener needs at least one server")
        self.servers = tuple(servers)
        self.default: ServerSettings = next(
            (server for server in self.servers if server.default), self.servers[0]
        )
        self._exact: dict[str, ServerSettings] = {}
        # "*.example.com" and ".example.com" keyed by "example.com"
        self._head: dict[str, ServerSettings] = {}
        # "www.example.*" keyed by "www.example"
        self._tail: dict[str, ServerSettings] = {}
        self._regexes: list[tuple[re.Pattern, ServerSettings]] = []
        for server in self.servers:
            for name in server.server_name:
                self._add(name, server)

    def _add(self, name: str, server: ServerSettings) -> None:
        if name.startswith("~"):
            source = name[1:]
            # nginx compiles a server_name regex caselessly only when it contains an
            # upper-case letter; hosts are lower-case, so this mostly matters for
            # patterns like "~^API\d+\.".
            flags = re.IGNORECASE if any("A" <= c <= "Z" for c in source) else 0
            self._regexes.append((re.compile(source, flags), server))
            return
        name = name.lower()
        if name.startswith("*."):
            self._head.setdefault(name[2:], server)
        elif name.startswith("."):
            # ".example.com" is "*.example.com" plus "example.com" itself; nginx
            # reserves the bare name in the exact table for conflict checks.
            self._exact.setdefault(name[1:], server)
            self._head.setdefault(name[1:], server)
        elif name.endswith(".*"):
            self._tail.setdefault(name[:-2], server)
        else:
            self._exact.setdefault(name, server)

    def select(self, host: str) -> ServerSettings:
        """The server for ``host`` (lower-case, no port)."""
        server = self._exact.get(host)
        if server is not None:
            return server
        if not host:
            return self.default
        if self._head:
            # proper suffixes after each dot, longest first
            dot = host.find(".")
            while dot != -1:
                server = self._head.get(host[dot + 1:])
                if server is not None:
                    return server
                dot = host.find(".", dot + 1)
        if self._tail:
            # proper prefixes before each dot, longest first; something must follow
            dot = host.rfind(".")
            while dot > 0:
                if dot + 1 < len(host):
                    server = self._tail.get(host[:dot])
                    if server is not None:
                        return server
                dot = host.rfind(".", 0, dot)
        for regex, server in self._regexes:
            if regex.search(host) is not None:
                return server
        return self.default


# -- locations ----------------------------------------------------------------------


@dataclass(frozen=True)
class LocationMatch:
    """The outcome of matching a path.

    ``location`` is None when nothing matched (the caller answers 404). ``redirect``
    is set for nginx's automatic redirect: the caller answers 301 with
    ``Location: redirect`` (plus ``?args`` when the request had any); ``location`` is
    then the location that asked for it (nginx applies its configuration to the 301).
    """

    location: Optional[LocationSettings]
    redirect: Optional[str] = None


NO_MATCH = LocationMatch(None)

_PREFIX_MODIFIERS = ("", "^~")
_REGEX_MODIFIERS = ("~", "~*")


class LocationMatcher:
    """Choose the location for a normalised, percent-decoded path, as nginx does.

    1. an exact (``=``) location equal to the path wins at once;
    2. otherwise the longest matching prefix among plain and ``^~`` locations is
       remembered; if it is ``^~``, it wins;
    3. otherwise regular expressions (``~``, ``~*``) are tried in file order and the
       first match wins;
    4. otherwise the remembered prefix wins, or nothing (404).

    Automatic redirect (``ngx_http_core_find_static_location``): a location whose
    handler is ``proxy_pass`` or ``grpc_pass`` and whose path ends with ``/`` (a
    prefix, ``^~`` or ``=`` location) answers a request for the same path without the
    slash with a 301 to the path with it — unless an exact or prefix location equals
    the requested path itself. The redirect is decided by the static tree alone:
    regular expressions are not consulted for such a request, even one that matches.
    Prefix comparison is case-sensitive, as nginx on Linux.
    """

    def __init__(self, locations: Sequence[LocationSettings]) -> None:
        self.locations = tuple(locations)
        self._exact: dict[str, LocationMatch] = {}
        by_length: dict[int, dict[str, LocationMatch]] = {}
        self._regexes: list[tuple[re.Pattern, LocationMatch]] = []
        self._redirects: dict[str, LocationMatch] = {}
        for location in self.locations:
            plain = LocationMatch(location)
            modifier = location.modifier
            if modifier == "=":
                self._exact.setdefault(location.pattern, plain)
            elif modifier in _PREFIX_MODIFIERS:
                by_length.setdefault(len(location.pattern), {}).setdefault(
                    location.pattern, plain
                )
            elif modifier in _REGEX_MODIFIERS:
                self._regexes.append((_location_regex(location), plain))
            else:
                raise ValueError(f"unknown location modifier {modifier!r}")
            if modifier not in _REGEX_MODIFIERS and _auto_redirect(location):
                redirect = LocationMatch(location, location.pattern)
                # nginx joins "= /a/" and "/a/" into one node and prefers the exact
                known = self._redirects.get(location.pattern)
                if known is None or (modifier == "=" and known.location.modifier != "="):
                    self._redirects[location.pattern] = redirect
        # longest first: each step is one slice and one dict lookup
        self._prefixes: tuple[tuple[int, dict[str, LocationMatch]], ...] = tuple(
            sorted(by_length.items(), reverse=True)
        )

    def match(self, path: str) -> LocationMatch:
        """The location (or redirect) for ``path``; :data:`NO_MATCH` when none."""
        found = self._exact.get(path)
        if found is not None:
            return found
        length = len(path)
        prefix: Optional[LocationMatch] = None
        for size, patterns in self._prefixes:
            if size <= length:
                prefix = patterns.get(path[:size])
                if prefix is not None:
                    break
        if self._redirects and (prefix is None or len(prefix.location.pattern) != length):
            redirect = self._redirects.get(path + "/")
            if redirect is not None:
                return redirect
        if prefix is not None and prefix.location.modifier == "^~":
            return prefix
        for regex, candidate in self._regexes:
            if regex.search(path) is not None:
                return candidate
        return prefix if prefix is not None else NO_MATCH


def _location_regex(location: LocationSettings) -> re.Pattern:
    if location.regex is not None:
        return location.regex
    flags = re.IGNORECASE if location.modifier == "~*" else 0
    return re.compile(location.pattern, flags)


def _auto_redirect(location: LocationSettings) -> bool:
    """nginx sets ``auto_redirect`` in ``proxy_pass`` and ``grpc_pass`` (and the
    fastcgi/uwsgi/scgi/memcached twins) for a location name ending in ``/``."""
    return (
        (location.proxy_pass is not None or location.grpc_pass is not None)
        and location.pattern.endswith("/")
    )


# -- the upstream request URI -------------------------------------------------------


def _escape_table() -> tuple[bool, ...]:
    """nginx's ``NGX_ESCAPE_URI`` set: controls, space, ``" # % < > ? \\ ^ ` { | }``,
    DEL and every byte >= 0x80."""
    escaped = set(range(0x00, 0x21)) | set(range(0x7F, 0x100))
    escaped |= {ord(c) for c in '"#%<>?\\^`{|}'}
    return tuple(b in escaped for b in range(256))


_ESCAPE = _escape_table()
_ESCAPED_BYTE = tuple(
    f"%{b:02X}" if _ESCAPE[b] else chr(b) for b in range(256)
)


def escape_uri(path: str) -> str:
    """``ngx_escape_uri(…, NGX_ESCAPE_URI)`` of a decoded path: the bytes nginx does
    not allow unescaped in a URI path become ``%XX`` (upper-case hex); ``/``, ``+``,
    ``;``, ``=``, ``&``, ``@`` and the like stay as they are."""
    data = path.encode(PATH_ENCODING, PATH_ERRORS)
    table = _ESCAPE
    if not any(table[b] for b in data):
        return path
    return "".join([_ESCAPED_BYTE[b] for b in data])


def request_path_and_query(target: str) -> str:
    """The origin-form of a request-target: an absolute-form target
    (``http://host/p?q``) loses its scheme and authority; an empty path becomes
    ``/`` as in nginx (``http://host?q`` → ``/?q``; a bare fragment is dropped, as
    ``gateway.http.uri.split_target`` does). Other forms are returned as they are."""
    if target.startswith("/"):
        return target
    scheme_end = target.find("://")
    if scheme_end == -1:
        return target
    rest_start = scheme_end + 3
    for index in range(rest_start, len(target)):
        char = target[index]
        if char == "/":
            return target[index:]
        if char == "?":
            return "/" + target[index:]
        if char == "#":
            break
    return "/"


def upstream_uri(
    proxy_pass: ProxyPass,
    location: LocationSettings,
    target: str,
    path: str,
    args: str,
) -> str:
    """The request-target nginx would send upstream (``ngx_http_proxy_create_request``).

    - ``proxy_pass`` without a URI part: the client's request-target unchanged
      (``target``, not normalised; for an absolute-form target only its path and
      query).
    - with a URI part: the normalised ``path`` with the matched location's prefix
      (``len(location.pattern)`` characters, nginx's ``loc_len``) replaced by the URI
      part — literally, so ``location /app/`` with ``proxy_pass http://u/v1`` sends
      ``/v1x`` for ``/app/x`` — then ``?args`` when there are args. The remainder is
      re-escaped with :func:`escape_uri` when the client's path was percent-encoded
      (nginx's ``quoted_uri``), otherwise copied as decoded (it then holds no byte
      that needs escaping, except raw non-ASCII which nginx passes raw too).

    nginx refuses a URI part in a regular-expression location; should one reach here,
    nothing is replaced (``loc_len`` 0) and the URI part is prepended.
    """
    uri_part = proxy_pass.uri
    if not uri_part:
        return request_path_and_query(target)
    if location.modifier in _REGEX_MODIFIERS:
        loc_len = 0
    else:
        loc_len = len(location.pattern)
    rest = path[loc_len:]
    if _quoted(target):
        rest = escape_uri(rest)
    if args:
        return f"{uri_part}{rest}?{args}"
    return uri_part + rest


def _quoted(target: str) -> bool:
    """nginx sets ``quoted_uri`` when a ``%`` appears in the path of the request
    line (not in the query string)."""
    if not target.startswith("/"):
        target = request_path_and_query(target)
    query = target.find("?")
    return "%" in (target if query == -1 else target[:query])
