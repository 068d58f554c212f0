"""``[[servers.locations]]`` tables → ``LocationSettings``: path, handler, proxy keys.

This module owns one location's keys: the path and its modifier (``=``, ``^~``, ``~``,
``~*`` or a prefix), the handler (``proxy_pass``, ``grpc_pass`` or ``return``, exactly
one), the ``proxy_*`` keys and their ``grpc_*`` twins, ``add_header``, the access rules
(``access``, then the ``allow`` / ``deny`` shorthand), ``limit_req`` and the
``proxy_cache*`` keys. It resolves a handler's target against the declared upstream
groups and creates an implicit group for a literal ``proxy_pass http://host:port``
(``implicit``, nginx's rule); the zone and cache names it checks against are given to it.

Which locations a server has, and whether two of them collide, is ``_servers``'s; the
groups themselves are ``_upstreams``'s; the ``Config`` is assembled by ``load``.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Any, Optional

from gateway.config._addresses import Addresses
from gateway.config._reader import (
    UNSUPPORTED,
    Errors,
    Table,
    boolean,
    choice,
    conditions,
    header_name,
    header_table,
    integer,
    key_path,
    nonempty_string,
    positive_duration,
    string,
    suggest,
    template,
)
from gateway.config.model import (
    AccessRule,
    Address,
    GrpcPass,
    LimitReqSettings,
    LocationSettings,
    PeerSettings,
    ProxyPass,
    ReturnAction,
    UpstreamSettings,
)
from gateway.config.units import parse_duration, show

HANDLER_KEYS = ("proxy_pass", "grpc_pass", "return")
_UPSTREAM_KEY_SUFFIXES = ("set_header", "hide_header", "pass_header", "next_upstream",
                          "next_upstream_tries", "next_upstream_timeout",
                          "connect_timeout", "send_timeout", "read_timeout")
LOCATION_KEYS = (
    ("path",) + HANDLER_KEYS
    + tuple(f"proxy_{s}" for s in _UPSTREAM_KEY_SUFFIXES)
    + tuple(f"grpc_{s}" for s in _UPSTREAM_KEY_SUFFIXES)
    + ("add_header", "proxy_buffering", "proxy_request_buffering", "proxy_websocket",
       "allow", "deny", "access", "limit_req", "proxy_cache", "proxy_cache_valid",
       "proxy_cache_key", "proxy_cache_use_stale", "proxy_cache_lock",
       "proxy_cache_background_update")
)
RETURN_KEYS = ("status", "url", "body")
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
LIMIT_REQ_KEYS = ("zone", "burst", "nodelay")
NEXT_UPSTREAM_CONDITIONS = ("error", "timeout", "invalid_header", "http_500", "http_502",
                            "http_503", "http_504", "http_403", "http_404", "http_429",
                            "non_idempotent")
# gRPC status names a grpc_next_upstream may also retry on (CONFIG.md's example uses one)
GRPC_NEXT_UPSTREAM_CONDITIONS = NEXT_UPSTREAM_CONDITIONS + (
    "unavailable", "deadline_exceeded", "resource_exhausted", "internal")
CACHE_USE_STALE = ("error", "timeout", "updating", "http_500", "http_502", "http_503",
                   "http_504")

_LOCATION_MODIFIER = re.compile(r"(=|\^~|~\*|~)\s*(.*)", re.DOTALL)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)
_DEFAULT_LOCATION = LocationSettings(path="", modifier="", pattern="")


def access_address(value: object, allow: bool) -> AccessRule:
    """``"all"``, ``"unix:"``, an address or a CIDR (also ``set_real_ip_from``'s)."""
    if value == "all":
        return AccessRule(allow=allow, all=True)
    if value == "unix:":
        return AccessRule(allow=allow, unix=True)
    try:
        if not isinstance(value, str):
            raise ValueError
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError('must be an IPv4/IPv6 address, a CIDR, "all" or "unix:", '
                         f"got {show(value)}") from None
    return AccessRule(allow=allow, network=str(network))


def _access_rule(value: object) -> AccessRule:
    words = value.split() if isinstance(value, str) else []
    if len(words) != 2 or words[0] not in ("allow", "deny"):
        raise ValueError(f'must be "allow ADDRESS" or "deny ADDRESS", got {show(value)}')
    return access_address(words[1], allow=words[0] == "allow")


def _cache_codes(text: str) -> None:
    codes = text.split()
    if not codes or not all(c == "any" or (c.isdigit() and 100 <= int(c) <= 599)
                            for c in codes):
        raise ValueError('keys must be status codes separated by spaces or "any"')


def _location_path(value: object) -> tuple[str, str, str, Optional[re.Pattern]]:
    """``"= /x"``, ``"^~ /x"``, ``"~ re"``, ``"~* re"`` or ``"/prefix"`` →
    (path, modifier, pattern, compiled regex or None)."""
    text = nonempty_string(value).strip()
    if text.startswith("@"):
        raise ValueError(f'named locations ("@name") are not supported, got {show(value)}')
    match = _LOCATION_MODIFIER.fullmatch(text)
    modifier, pattern = match.groups() if match else ("", text)
    if not pattern:
        raise ValueError(f"empty pattern, got {show(value)}")
    regex = None
    if modifier in ("~", "~*"):
        try:
            regex = re.compile(pattern, re.IGNORECASE if modifier == "~*" else 0)
        except re.error as e:
            raise ValueError(f"invalid regular expression {show(pattern)}: {e}") from None
    return value, modifier, pattern, regex


class LocationReader:
    """Reads location tables, reporting into ``errors``; ``declared``, ``zones`` and
    ``caches`` are the names of the file's ``[upstreams.NAME]``, ``[limit_req_zones.NAME]``
    and ``[caches.NAME]``; ``implicit`` collects the groups literal targets create."""

    def __init__(self, errors: Errors, addresses: Addresses, declared: set[str],
                 zones: set[str], caches: set[str]):
        self.errors = errors
        self.addresses = addresses
        self.declared = declared
        self.zones = zones
        self.caches = caches
        self.implicit: dict[str, UpstreamSettings] = {}

    def location(self, path: str, value: object) -> LocationSettings:
        t = Table(self.errors, path, value, LOCATION_KEYS)
        d = _DEFAULT_LOCATION
        text, modifier, pattern, regex = t.get("path", ("", "", "", None),
                                               _location_path, required=True)
        handlers = [k for k in HANDLER_KEYS if t.has(k)]
        if len(handlers) != 1 and not t.broken:
            found = " and ".join(handlers) if handlers else "none"
            self.errors.add(path, "needs exactly one handler (proxy_pass, grpc_pass or "
                                  f"return), got {found}")
        proxy_pass = t.get("proxy_pass", None,
                           lambda v: self.proxy_pass(v, modifier))
        grpc_pass = t.get("grpc_pass", None, self.grpc_target)
        return_ = self.return_(t.at("return"), t.data["return"]) if t.has("return") else None

        proxy = self.upstream_keys(t, "proxy", NEXT_UPSTREAM_CONDITIONS)
        grpc = self.upstream_keys(t, "grpc", GRPC_NEXT_UPSTREAM_CONDITIONS)
        if grpc_pass is not None:
            # the grpc_* twins travel with the target; on a proxy_pass location they
            # are validated and, as in nginx, have no effect
            grpc_pass = dataclasses.replace(
                grpc_pass,
                set_header=grpc["set_header"],
                hide_header=grpc["hide_header"],
                pass_header=grpc["pass_header"],
                next_upstream=grpc["next_upstream"],
                next_upstream_tries=grpc["next_upstream_tries"],
                next_upstream_timeout=grpc["next_upstream_timeout"],
                connect_timeout=grpc["connect_timeout"],
                send_timeout=grpc["send_timeout"],
                read_timeout=(grpc["read_timeout"] if t.has("grpc_read_timeout")
                              else None),
            )

        proxy_websocket = t.get("proxy_websocket", d.proxy_websocket, boolean)
        access = (t.list("access", _access_rule, single=False)
                  + t.list("allow", lambda v: access_address(v, allow=True))
                  + t.list("deny", lambda v: access_address(v, allow=False)))
        limit_req = None
        if t.has("limit_req"):
            limit_req = self.limit_req(t.at("limit_req"), t.data["limit_req"])
            t.unsupported("limit_req")
        cache = self.location_cache(t)
        return LocationSettings(
            path=text,
            modifier=modifier,
            pattern=pattern,
            regex=regex,
            proxy_pass=proxy_pass,
            grpc_pass=grpc_pass,
            return_=return_,
            proxy_set_header=proxy["set_header"],
            proxy_hide_header=proxy["hide_header"],
            proxy_pass_header=proxy["pass_header"],
            add_header=header_table(t, "add_header"),
            proxy_next_upstream=proxy["next_upstream"],
            proxy_next_upstream_tries=proxy["next_upstream_tries"],
            proxy_next_upstream_timeout=proxy["next_upstream_timeout"],
            proxy_connect_timeout=proxy["connect_timeout"],
            proxy_send_timeout=proxy["send_timeout"],
            proxy_read_timeout=proxy["read_timeout"],
            proxy_buffering=t.get("proxy_buffering", d.proxy_buffering, boolean),
            proxy_request_buffering=t.get("proxy_request_buffering",
                                          d.proxy_request_buffering, boolean),
            proxy_websocket=proxy_websocket,
            access=access,
            limit_req=limit_req,
            **cache,
        )

    def upstream_keys(self, t: Table, prefix: str, allowed: tuple[str, ...]
                      ) -> dict[str, Any]:
        """The ``proxy_*`` keys, or their ``grpc_*`` twins, validated alike."""
        d = _DEFAULT_LOCATION

        def key(suffix: str) -> str:
            return f"{prefix}_{suffix}"

        return {
            "set_header": header_table(t, key("set_header")),
            "hide_header": t.list(key("hide_header"), header_name),
            "pass_header": t.list(key("pass_header"), header_name),
            "next_upstream": conditions(t, key("next_upstream"), allowed,
                                        d.proxy_next_upstream),
            "next_upstream_tries": t.get(key("next_upstream_tries"),
                                         d.proxy_next_upstream_tries, integer(0)),
            "next_upstream_timeout": t.get(key("next_upstream_timeout"),
                                           d.proxy_next_upstream_timeout, parse_duration),
            "connect_timeout": t.get(key("connect_timeout"), d.proxy_connect_timeout,
                                     positive_duration),
            "send_timeout": t.get(key("send_timeout"), d.proxy_send_timeout,
                                  positive_duration),
            "read_timeout": t.get(key("read_timeout"), d.proxy_read_timeout,
                                  positive_duration),
        }

    def proxy_pass(self, value: object, modifier: str) -> ProxyPass:
        """``http(s)://NAME[/uri]`` naming a declared group, or a literal host[:port]
        that becomes an implicit group (nginx's rule)."""
        text = nonempty_string(value)
        match = _SCHEME.fullmatch(text)
        scheme = match.group(1).lower() if match else None
        if scheme not in ("http", "https"):
            raise ValueError(f'must start with "http://" or "https://", got {show(text)}')
        if "$" in text:
            raise ValueError(UNSUPPORTED)
        rest = match.group(2)
        if rest.startswith("unix:"):
            # nginx's form: http://unix:/path/to.sock[:/uri]
            socket, colon, uri_text = rest[len("unix:"):].partition(":")
            authority, uri = "unix:" + socket, (uri_text if colon else None)
            if not socket or (colon and not uri_text.startswith("/")):
                raise ValueError('must be "http://unix:/path/to.sock[:/uri]" for a unix '
                                 f"socket, got {show(text)}")
        else:
            authority, slash, uri_text = rest.partition("/")
            uri = "/" + uri_text if slash else None
            if not authority or any(c in authority for c in "?#@"):
                raise ValueError(f"must name an upstream or a host, got {show(text)}")
        if uri is not None and modifier in ("~", "~*"):
            raise ValueError("cannot have a URI part in a location given by a regular "
                             f"expression, got {show(text)}")
        if authority in self.declared:
            return ProxyPass(scheme=scheme, upstream=authority, uri=uri, text=text)
        name = self._implicit_group(
            self.addresses.address(authority, default_port=443 if scheme == "https" else 80))
        return ProxyPass(scheme=scheme, upstream=name, uri=uri, text=text)

    def grpc_target(self, value: object) -> GrpcPass:
        """``grpc(s)://NAME`` naming a declared group, or a literal ``host[:port]`` (or
        ``unix:/path``) that becomes an implicit group, as for ``proxy_pass``; the
        default port is nginx's (80, 443 for grpcs)."""
        text = nonempty_string(value)
        match = _SCHEME.fullmatch(text)
        scheme = match.group(1).lower() if match else None
        if scheme not in ("grpc", "grpcs"):
            raise ValueError(f'must start with "grpc://" or "grpcs://", got {show(text)}')
        if "$" in text:
            raise ValueError(UNSUPPORTED)
        authority = match.group(2)
        if authority in self.declared:
            return GrpcPass(scheme=scheme, upstream=authority, text=text)
        if not authority or (not authority.startswith("unix:")
                             and any(c in authority for c in "/?#@")):
            # nginx: grpc_pass takes no URI part
            raise ValueError(f"must name an upstream or a host, got {show(text)}")
        name = self._implicit_group(
            self.addresses.address(authority, default_port=443 if scheme == "grpcs" else 80))
        return GrpcPass(scheme=scheme, upstream=name, text=text)

    def grpc_pass(self, value: object) -> str:
        """A ``[[grpc_servers]]`` ``grpc_pass``: checked as :meth:`grpc_target` (its
        implicit group created), returned as written."""
        return self.grpc_target(value).text

    def _implicit_group(self, address: Address) -> str:
        """The implicit group of a literal target (nginx names it ``host:port``)."""
        if address.is_unix:
            name = address.text
        else:
            host = f"[{address.host}]" if ":" in address.host else address.host
            name = f"{host}:{address.port}"
            address = Address(text=name, host=address.host, port=address.port)
        if name not in self.implicit:
            self.implicit[name] = UpstreamSettings(
                name=name, servers=(PeerSettings(address=address),), implicit=True)
        return name

    def return_(self, path: str, value: object) -> ReturnAction:
        t = Table(self.errors, path, value, RETURN_KEYS)
        status = t.get("status", None, integer(0, 999), required=True)
        url = t.get("url", None, nonempty_string)
        body = t.get("body", None, string)
        if t.has("url") and t.has("body"):
            self.errors.add(path, "set url or body, not both")
        elif status in REDIRECT_STATUSES and not t.has("url"):
            t.error("url", f"required with status {status}")
        elif status is not None and status not in REDIRECT_STATUSES and t.has("url"):
            t.error("url", "only allowed with status 301, 302, 303, 307 or 308")
        template(self.errors, t.at("url"), url)
        template(self.errors, t.at("body"), body)
        return ReturnAction(status=status, url=url, body=body)

    def limit_req(self, path: str, value: object) -> LimitReqSettings:
        t = Table(self.errors, path, value, LIMIT_REQ_KEYS)
        zone = t.get("zone", None, nonempty_string, required=True)
        if zone is not None and zone not in self.zones:
            t.error("zone", f"no [limit_req_zones.{zone}] is declared"
                            + suggest(zone, self.zones))
        return LimitReqSettings(zone=zone, burst=t.get("burst", 0, integer(0)),
                                nodelay=t.get("nodelay", False, boolean))

    def location_cache(self, t: Table) -> dict[str, Any]:
        d = _DEFAULT_LOCATION

        def cache_name(v: object) -> Optional[str]:
            if v is False:
                return None
            if not isinstance(v, str) or not v:
                raise ValueError(f"must be the name of a [caches.NAME] or false, got {show(v)}")
            name = v
            if name not in self.caches:
                raise ValueError(f"no [caches.{name}] is declared"
                                 + suggest(name, self.caches))
            return name

        proxy_cache = t.get("proxy_cache", d.proxy_cache, cache_name)
        if t.has("proxy_cache") and t.data["proxy_cache"] is not False:
            t.unsupported("proxy_cache")
        valid: list[tuple[str, float]] = []
        if t.has("proxy_cache_valid"):
            value = t.data["proxy_cache_valid"]
            if not isinstance(value, dict):
                t.error("proxy_cache_valid",
                        f'must be a table like {{ "200 302" = "10m" }}, got {show(value)}')
            else:
                for codes, duration in value.items():
                    path = key_path(t.at("proxy_cache_valid"), codes)
                    try:
                        _cache_codes(codes)
                        valid.append((codes, parse_duration(duration)))
                    except ValueError as e:
                        self.errors.add(path, str(e))
                if value:
                    t.unsupported("proxy_cache_valid")
        key = t.get("proxy_cache_key", d.proxy_cache_key, nonempty_string)
        template(self.errors, t.at("proxy_cache_key"), key)
        use_stale = t.list("proxy_cache_use_stale", choice("off", *CACHE_USE_STALE))
        if "off" in use_stale and len(use_stale) > 1:
            t.error("proxy_cache_use_stale", '"off" cannot be combined with other values')
        use_stale = tuple(v for v in use_stale if v != "off")
        if use_stale:
            t.unsupported("proxy_cache_use_stale")
        result = {
            "proxy_cache": proxy_cache,
            "proxy_cache_valid": tuple(valid),
            "proxy_cache_key": key,
            "proxy_cache_use_stale": use_stale,
        }
        for flag in ("proxy_cache_lock", "proxy_cache_background_update"):
            result[flag] = t.get(flag, getattr(d, flag), boolean)
            if result[flag]:
                t.unsupported(flag)
        return result
