"""TOML file → ``gateway.config.model.Config``, with every error reported at once.

This module owns reading and validating the site configuration (CONFIG.md): key names,
types, ranges, enums, references between tables, relative-path resolution, and the
"not supported yet" gate of this release (the HTTP/1.1 proxy only). It leaves the shape
and defaults of the result to ``model``, unit grammars to ``units`` and the variable
catalogue to ``gateway.http.variables``. It resolves no host names, opens no files other
than the configuration itself and listens on nothing.

Every problem is collected as ``<toml.path>: <message>``
(``upstreams.app.servers[2].weight: must be an integer >= 1, got "x"``) and raised
together as one ``ConfigError``. Unknown keys are errors everywhere, with a "did you
mean" suggestion when one is close.

Rules worth knowing when reading a result:

* A literal ``proxy_pass http://host:port`` (a host that is not a declared
  ``[upstreams.NAME]``, or any host with a port) creates an implicit upstream group named
  ``host:port`` (default port 80, or 443 for https), as nginx does.
* Location ``allow`` / ``deny`` (a string or a list of addresses) are shorthand appended
  after ``access``: first every ``allow`` entry, then every ``deny`` entry.
* Relative paths (logs, TLS files, cache directories, unix sockets, also in ``listen``
  and in ``proxy_pass http://unix:…``) are made absolute against the configuration
  file's directory.
* A value that switches on a feature a later release builds is reported as
  ``<path>: not supported yet`` once the value itself is valid; off/default values pass.
"""
from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from typing import Any, Callable, Iterable, Optional, TypeVar

from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor

from gateway.config.model import (
    AccessRule,
    AdminSettings,
    Address,
    CacheSettings,
    Config,
    GatewaySettings,
    GrpcServerSettings,
    HealthCheckSettings,
    LimitReqSettings,
    LimitReqZone,
    LocationSettings,
    PeerSettings,
    ProxyPass,
    QueueSettings,
    ReturnAction,
    ServerSettings,
    ServerTLSSettings,
    UpstreamSettings,
    UpstreamTLSSettings,
)
from gateway.config.units import parse_duration, parse_size, show

__all__ = ["ConfigError", "load_config", "parse_config"]

T = TypeVar("T")
UNSUPPORTED = "not supported yet"


class ConfigError(Exception):
    """An invalid configuration; ``errors`` holds every ``<path>: <message>`` line."""

    def __init__(self, errors: Iterable[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


def load_config(path: str) -> Config:
    """Read, parse and validate the TOML file at ``path``; raise ``ConfigError``."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror or e}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: invalid TOML: {e}"]) from None
    return parse_config(data, path)


def parse_config(data: dict, path: str) -> Config:
    """Validate a decoded TOML document; ``path`` is the file it came from (relative
    paths inside resolve against its directory). Raise ``ConfigError`` with every error."""
    return _Loader(path).config(data)


# -- key sets --------------------------------------------------------------------

TOP_KEYS = ("gateway", "admin", "upstreams", "servers", "limit_req_zones", "caches",
            "grpc_servers")
GATEWAY_KEYS = ("workers", "access_log", "access_log_format", "error_log", "resolver",
                "resolver_valid", "shutdown_timeout")
ACCESS_LOG_FORMATS = ("combined", "upstream", "json")
ADMIN_KEYS = ("listen",)
UPSTREAM_KEYS = ("balance", "hash_key", "consistent", "two", "keepalive",
                 "keepalive_requests", "keepalive_timeout", "keepalive_time", "queue",
                 "servers", "health_check", "tls")
BALANCES = ("round_robin", "least_conn", "ip_hash", "hash", "random")
NO_BACKUP_BALANCES = ("ip_hash", "hash", "random")
PEER_KEYS = ("address", "weight", "max_fails", "fail_timeout", "max_conns", "backup",
             "down", "slow_start", "resolve")
QUEUE_KEYS = ("size", "timeout")
HEALTH_CHECK_KEYS = ("type", "uri", "grpc_service", "interval", "timeout", "fails",
                     "passes", "status", "body", "headers")
UPSTREAM_TLS_KEYS = ("verify", "ca", "server_name", "certificate", "key")
SERVER_KEYS = ("listen", "server_name", "default", "tls", "http2", "client_max_body_size",
               "client_header_timeout", "client_body_timeout", "keepalive_timeout",
               "keepalive_requests", "large_client_header_buffers", "real_ip_header",
               "set_real_ip_from", "locations")
SERVER_TLS_KEYS = ("certificate", "key", "protocols", "ciphers", "client_ca",
                   "verify_client")
TLS_PROTOCOLS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
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
LIMIT_REQ_ZONE_KEYS = ("key", "rate", "status")
CACHE_KEYS = ("path", "max_size", "inactive")
GRPC_SERVER_KEYS = ("listen", "tls", "grpc_pass", "grpc_next_upstream")

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_UPSTREAM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_LOCATION_MODIFIER = re.compile(r"(=|\^~|~\*|~)\s*(.*)", re.DOTALL)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)
_RATE = re.compile(r"(\d+(?:\.\d+)?)r/([sm])")
_STATUS_RANGE = re.compile(r"(\d{3})(?:-(\d{3}))?")

_INVALID = object()   # a getter's default where "bad value" must differ from "absent"
_DEFAULT_UPSTREAM = UpstreamSettings(name="", servers=())
_DEFAULT_SERVER = ServerSettings(index=0, listen=(), locations=())
_DEFAULT_LOCATION = LocationSettings(path="", modifier="", pattern="")


# -- value parsers: value -> result, or ValueError(message) ------------------------


def _integer(minimum: Optional[int] = None, maximum: Optional[int] = None
             ) -> Callable[[object], int]:
    if minimum is not None and maximum is not None:
        wanted = f"an integer from {minimum} to {maximum}"
    elif minimum is not None:
        wanted = f"an integer >= {minimum}"
    else:
        wanted = "an integer"

    def parse(value: object) -> int:
        if (isinstance(value, bool) or not isinstance(value, int)
                or (minimum is not None and value < minimum)
                or (maximum is not None and value > maximum)):
            raise ValueError(f"must be {wanted}, got {show(value)}")
        return value

    return parse


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {show(value)}")
    return value


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {show(value)}")
    return value


def _nonempty_string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, got {show(value)}")
    return value


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _choice(*options: str) -> Callable[[object], str]:
    listed = ", ".join(f'"{o}"' for o in options)

    def parse(value: object) -> str:
        if not isinstance(value, str) or value not in options:
            hint = _suggest(value, options) if isinstance(value, str) else ""
            raise ValueError(f"must be one of {listed}, got {show(value)}{hint}")
        return value

    return parse


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be a duration greater than 0, got {show(value)}")
    return seconds


def _positive_size(value: object) -> int:
    size = parse_size(value)
    if size <= 0:
        raise ValueError(f"must be a size greater than 0, got {show(value)}")
    return size


def _header_name(value: object) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ValueError(f"must be a header name (an HTTP token), got {show(value)}")
    return value


def _access_address(value: object, allow: bool) -> AccessRule:
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
    return _access_address(words[1], allow=words[0] == "allow")


def _real_ip_source(value: object) -> str:
    return (_access_address(value, allow=True).network or "unix:")


def _server_name(value: object) -> str:
    name = _string(value)
    if name.startswith("~"):
        if len(name) == 1:
            raise ValueError(f"empty regular expression, got {show(value)}")
        try:
            re.compile(name[1:])
        except re.error as e:
            raise ValueError(f"invalid regular expression {show(name[1:])}: {e}") from None
        return name
    name = name.lower()
    if any(c.isspace() or c in "/\\" for c in name):
        raise ValueError(f"must be a host name, got {show(value)}")
    star = name.find("*")
    if star != -1 and not (
        (name.startswith("*.") and len(name) > 2 and "*" not in name[1:])
        or (name.endswith(".*") and len(name) > 2 and "*" not in name[:-1])
    ):
        raise ValueError('a "*" is allowed only as "*.example.com" or "example.*", '
                         f"got {show(value)}")
    return name


def _health_status(value: object) -> tuple[tuple[int, int], ...]:
    items = value if isinstance(value, list) else [value]
    wanted = 'must be a status like "200", "200-399" or a list of them'
    if not items:
        raise ValueError(f"{wanted}, got {show(value)}")
    ranges = []
    for item in items:
        text = str(item) if isinstance(item, int) and not isinstance(item, bool) else item
        match = _STATUS_RANGE.fullmatch(text) if isinstance(text, str) else None
        if not match:
            raise ValueError(f"{wanted}, got {show(value)}")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if not 100 <= low <= high <= 599:
            raise ValueError(f"status codes must be from 100 to 599, low to high, "
                             f"got {show(value)}")
        ranges.append((low, high))
    return tuple(ranges)


def _rate(value: object) -> float:
    match = _RATE.fullmatch(value) if isinstance(value, str) else None
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f'must be a rate like "10r/s" or "30r/m", got {show(value)}')
    number = float(match.group(1))
    return number if match.group(2) == "s" else number / 60.0


def _cache_codes(text: str) -> None:
    codes = text.split()
    if not codes or not all(c == "any" or (c.isdigit() and 100 <= int(c) <= 599)
                            for c in codes):
        raise ValueError('keys must be status codes separated by spaces or "any"')


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _key_path(parent: str, key: str) -> str:
    segment = key if _BARE_KEY.fullmatch(key) else show(key)
    return f"{parent}.{segment}" if parent else segment


# -- one TOML table being read -----------------------------------------------------


class _Errors:
    """Every error of one load, in the order found."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.messages.append(f"{path}: {message}")


class _Table:
    """Typed access to one TOML table at ``path``.

    Unknown keys are reported on construction. Getters record a failed value as an error
    at the key's path and return the default, so reading goes on and every error of the
    file is found in one pass.
    """

    def __init__(self, errors: _Errors, path: str, value: object, keys: Iterable[str]):
        self.errors = errors
        self.path = path
        # a non-table is reported once; its "required" keys are not reported again
        self.broken = not isinstance(value, dict)
        if self.broken:
            errors.add(path, f"must be a table, got {show(value)}")
            value = {}
        self.data: dict = value
        known = tuple(keys)
        for key in value:
            if key not in known:
                errors.add(self.at(key), "unknown key" + _suggest(key, known))

    def at(self, key: str) -> str:
        return _key_path(self.path, key)

    def has(self, key: str) -> bool:
        return key in self.data

    def error(self, key: str, message: str) -> None:
        self.errors.add(self.at(key), message)

    def unsupported(self, key: str) -> None:
        self.error(key, UNSUPPORTED)

    def get(self, key: str, default: T, parse: Callable[[object], T],
            required: bool = False) -> T:
        if key not in self.data:
            if required and not self.broken:
                self.error(key, "required")
            return default
        try:
            return parse(self.data[key])
        except ValueError as e:
            self.error(key, str(e))
            return default

    def list(self, key: str, parse: Callable[[object], T], default: tuple = (),
             required: bool = False, single: bool = True) -> tuple[T, ...]:
        """An array (or, when ``single``, one bare value) parsed item by item; each bad
        item is an error at ``key[i]``."""
        if key not in self.data:
            if required and not self.broken:
                self.error(key, "required")
            return default
        value = self.data[key]
        if isinstance(value, list):
            items = [(f"{self.at(key)}[{i}]", v) for i, v in enumerate(value)]
        elif single and not isinstance(value, dict):
            items = [(self.at(key), value)]
        else:
            self.error(key, f"must be an array, got {show(value)}")
            return default
        parsed = []
        for path, item in items:
            try:
                parsed.append(parse(item))
            except ValueError as e:
                self.errors.add(path, str(e))
        return tuple(parsed)

    def tables(self, key: str, required: bool = False) -> list[tuple[str, object]]:
        """An array of tables as ``(path, item)`` pairs; items are checked by the caller."""
        if key not in self.data:
            if required and not self.broken:
                self.error(key, "required")
            return []
        value = self.data[key]
        if not isinstance(value, list):
            self.error(key, f"must be an array of tables, got {show(value)}")
            return []
        return [(f"{self.at(key)}[{i}]", item) for i, item in enumerate(value)]


# -- the loader ------------------------------------------------------------------


class _Loader:
    """One load: the errors found so far and the cross-references between tables."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.base = os.path.dirname(self.path)
        self.errors = _Errors()
        self.declared: set[str] = set()
        self.implicit: dict[str, UpstreamSettings] = {}
        self.zones: set[str] = set()
        self.caches: set[str] = set()

    def config(self, data: dict) -> Config:
        top = _Table(self.errors, "", data, TOP_KEYS)
        upstreams_value = top.data.get("upstreams", {})
        if isinstance(upstreams_value, dict):
            self.declared = set(upstreams_value)
        zones_value = top.data.get("limit_req_zones", {})
        self.zones = set(zones_value) if isinstance(zones_value, dict) else set()
        caches_value = top.data.get("caches", {})
        self.caches = set(caches_value) if isinstance(caches_value, dict) else set()

        gateway = self.gateway(top.data.get("gateway", {}))
        admin = self.admin(top.data["admin"]) if top.has("admin") else AdminSettings()
        upstreams = self.named(top, "upstreams", self.upstream)
        zones = self.named(top, "limit_req_zones", self.limit_req_zone)
        caches = self.named(top, "caches", self.cache)
        servers = tuple(self.server(i, path, item)
                        for i, (path, item) in enumerate(top.tables("servers")))
        self.check_defaults(servers)
        grpc_servers = tuple(self.grpc_server(path, item)
                             for path, item in top.tables("grpc_servers"))
        if not top.has("servers") and not top.has("grpc_servers"):
            top.error("servers", "at least one [[servers]] table is required")

        if self.errors.messages:
            raise ConfigError(self.errors.messages)
        return Config(
            path=self.path,
            gateway=gateway,
            admin=admin,
            upstreams={**upstreams, **self.implicit},
            servers=servers,
            limit_req_zones=zones,
            caches=caches,
            grpc_servers=grpc_servers,
        )

    def named(self, top: _Table, key: str, build: Callable[[str, str, object], T]
              ) -> dict[str, T]:
        """A table of named tables (``[upstreams.NAME]``) built one by one."""
        value = top.data.get(key, {})
        if not isinstance(value, dict):
            top.error(key, f"must be a table of [{key}.NAME] tables, got {show(value)}")
            return {}
        return {name: build(name, _key_path(key, name), body)
                for name, body in value.items()}

    # -- small shared readers ----------------------------------------------------

    def resolve(self, path: str) -> str:
        return os.path.normpath(os.path.join(self.base, path))

    def file_path(self, value: object) -> str:
        return self.resolve(_nonempty_string(value))

    def template(self, path: str, text: Optional[str]) -> None:
        """Report each unknown ``$variable`` of ``text`` as an error at ``path``."""
        if not text or "$" not in text:
            return
        from gateway.http.variables import unknown_variables

        for name in unknown_variables(text):
            self.errors.add(path, f'unknown variable "${name.lstrip("$")}"')

    def header_table(self, t: _Table, key: str, templates: bool = True
                     ) -> tuple[tuple[str, str], ...]:
        if not t.has(key):
            return ()
        value = t.data[key]
        if not isinstance(value, dict):
            t.error(key, f"must be a table of header = value, got {show(value)}")
            return ()
        headers: list[tuple[str, str]] = []
        seen: dict[str, str] = {}
        for name, text in value.items():
            path = _key_path(t.at(key), name)
            if not _TOKEN.fullmatch(name):
                self.errors.add(path, "header names must be HTTP tokens")
                continue
            if name.lower() in seen:
                self.errors.add(path, f'duplicate header (also "{seen[name.lower()]}")')
                continue
            seen[name.lower()] = name
            if not isinstance(text, str):
                self.errors.add(path, f"must be a string, got {show(text)}")
                continue
            if templates:
                self.template(path, text)
            headers.append((name, text))
        return tuple(headers)

    def conditions(self, t: _Table, key: str, allowed: tuple[str, ...],
                   default: frozenset[str]) -> frozenset[str]:
        """``proxy_next_upstream``-style: a condition, a list of them, or ``"off"``."""
        names = t.list(key, _choice("off", *allowed), default=None)
        if names is None:
            return default
        if not names and isinstance(t.data[key], list) and not t.data[key]:
            t.error(key, 'must list at least one condition, or be "off"')
        if "off" in names:
            if len(names) > 1:
                t.error(key, '"off" cannot be combined with other conditions')
            return frozenset()
        return frozenset(names)

    def address(self, value: object, default_port: int = 80,
                allow_unix: bool = True) -> Address:
        """``host[:port]``, ``[v6][:port]`` or ``unix:/path`` (path made absolute)."""
        text = _nonempty_string(value)
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
        description = _nonempty_string(value)
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

    # -- [gateway] and [admin] -------------------------------------------------------

    def gateway(self, value: object) -> GatewaySettings:
        t = _Table(self.errors, "gateway", value, GATEWAY_KEYS)
        d = GatewaySettings()
        workers = t.get("workers", d.workers, _integer(0))
        if workers != 1:
            t.unsupported("workers")
        access_log = t.get("access_log", d.access_log, self.access_log)
        access_log_format = t.get("access_log_format", d.access_log_format,
                                  _nonempty_string)
        if access_log_format not in ACCESS_LOG_FORMATS:
            self.template(t.at("access_log_format"), access_log_format)
        error_log = t.get("error_log", d.error_log, self.log_path)
        resolver = t.list("resolver", self.resolver_address, single=False)
        if resolver:
            t.unsupported("resolver")
        return GatewaySettings(
            workers=workers,
            access_log=access_log,
            access_log_format=access_log_format,
            error_log=error_log,
            resolver=resolver,
            resolver_valid=t.get("resolver_valid", d.resolver_valid, _positive_duration),
            shutdown_timeout=t.get("shutdown_timeout", d.shutdown_timeout, parse_duration),
        )

    def log_path(self, value: object) -> str:
        text = _nonempty_string(value)
        return text if text == "-" else self.resolve(text)

    def access_log(self, value: object) -> Optional[str]:
        if value is False:
            return None
        if not isinstance(value, str) or not value:
            raise ValueError(f'must be a path, "-" or false, got {show(value)}')
        return self.log_path(value)

    def resolver_address(self, value: object) -> str:
        address = self.address(value, default_port=53, allow_unix=False)
        try:
            ipaddress.ip_address(address.host)
        except ValueError:
            raise ValueError(f'must be an "ip:port" address, got {show(value)}') from None
        return address.text

    def admin(self, value: object) -> AdminSettings:
        t = _Table(self.errors, "admin", value, ADMIN_KEYS)
        d = AdminSettings()

        def listen(v: object) -> Optional[str]:
            if v is False:
                return None
            if not isinstance(v, str):
                raise ValueError(f"must be an endpoint description or false, got {show(v)}")
            return self.listen(v)

        result = t.get("listen", _INVALID, listen)
        if result is _INVALID:
            return d
        if result is not None:
            t.unsupported("listen")
        return AdminSettings(listen=result)

    # -- [upstreams.NAME] --------------------------------------------------------------

    def upstream(self, name: str, path: str, value: object) -> UpstreamSettings:
        if not _UPSTREAM_NAME.fullmatch(name):
            self.errors.add(path, 'upstream names may use letters, digits, "_", "-" and '
                                  '"." only')
        t = _Table(self.errors, path, value, UPSTREAM_KEYS)
        d = _DEFAULT_UPSTREAM
        balance = t.get("balance", d.balance, _choice(*BALANCES))
        if balance != "round_robin":
            t.unsupported("balance")
        hash_key = t.get("hash_key", d.hash_key, _nonempty_string)
        if hash_key is not None:
            self.template(t.at("hash_key"), hash_key)
            if balance != "hash":
                t.error("hash_key", 'only allowed with balance = "hash"')
            t.unsupported("hash_key")
        elif balance == "hash" and not t.has("hash_key"):
            t.error("hash_key", 'required with balance = "hash"')
        consistent = t.get("consistent", d.consistent, _boolean)
        if consistent:
            if balance != "hash":
                t.error("consistent", 'only allowed with balance = "hash"')
            t.unsupported("consistent")
        two = t.get("two", d.two, _boolean)
        if two:
            if balance != "random":
                t.error("two", 'only allowed with balance = "random"')
            t.unsupported("two")
        pooling = {
            "keepalive": t.get("keepalive", d.keepalive, _integer(0)),
            "keepalive_requests": t.get("keepalive_requests", d.keepalive_requests,
                                        _integer(1)),
            "keepalive_timeout": t.get("keepalive_timeout", d.keepalive_timeout,
                                       parse_duration),
            "keepalive_time": t.get("keepalive_time", d.keepalive_time,
                                    _positive_duration),
        }

        queue = None
        if t.has("queue"):
            queue = self.queue(t.at("queue"), t.data["queue"])
            t.unsupported("queue")
        health_check = None
        if t.has("health_check"):
            health_check = self.health_check(t.at("health_check"), t.data["health_check"])
            t.unsupported("health_check")
        tls = None
        if t.has("tls"):
            tls = self.upstream_tls(t.at("tls"), t.data["tls"])
            t.unsupported("tls")

        peers = tuple(self.peer(p, item, balance)
                      for p, item in t.tables("servers", required=True))
        if t.has("servers") and isinstance(t.data["servers"], list) and not peers:
            t.error("servers", "at least one server is required")
        return UpstreamSettings(
            name=name,
            servers=peers,
            balance=balance,
            hash_key=hash_key,
            consistent=consistent,
            two=two,
            queue=queue,
            health_check=health_check,
            tls=tls,
            **pooling,
        )

    def peer(self, path: str, value: object, balance: str) -> PeerSettings:
        t = _Table(self.errors, path, value, PEER_KEYS)
        d = PeerSettings(address=Address(text=""))
        address = t.get("address", None, self.address, required=True)
        backup = t.get("backup", d.backup, _boolean)
        if backup and balance in NO_BACKUP_BALANCES:
            t.error("backup", f'not allowed with balance = "{balance}"')
        slow_start = t.get("slow_start", d.slow_start, parse_duration)
        if slow_start > 0:
            t.unsupported("slow_start")
        resolve = t.get("resolve", d.resolve, _boolean)
        if resolve:
            if address is not None and address.is_unix:
                t.error("resolve", "not allowed with a unix: address")
            t.unsupported("resolve")
        return PeerSettings(
            address=address,
            weight=t.get("weight", d.weight, _integer(1)),
            max_fails=t.get("max_fails", d.max_fails, _integer(0)),
            fail_timeout=t.get("fail_timeout", d.fail_timeout, parse_duration),
            max_conns=t.get("max_conns", d.max_conns, _integer(0)),
            backup=backup,
            down=t.get("down", d.down, _boolean),
            slow_start=slow_start,
            resolve=resolve,
        )

    def queue(self, path: str, value: object) -> QueueSettings:
        t = _Table(self.errors, path, value, QUEUE_KEYS)
        d = QueueSettings()
        return QueueSettings(size=t.get("size", d.size, _integer(1)),
                             timeout=t.get("timeout", d.timeout, parse_duration))

    def health_check(self, path: str, value: object) -> HealthCheckSettings:
        t = _Table(self.errors, path, value, HEALTH_CHECK_KEYS)
        d = HealthCheckSettings()

        def uri(v: object) -> str:
            if not isinstance(v, str) or not v.startswith("/"):
                raise ValueError(f'must be a path starting with "/", got {show(v)}')
            return v

        return HealthCheckSettings(
            type=t.get("type", d.type, _choice("http", "grpc", "tcp")),
            uri=t.get("uri", d.uri, uri),
            grpc_service=t.get("grpc_service", d.grpc_service, _string),
            interval=t.get("interval", d.interval, _positive_duration),
            timeout=t.get("timeout", d.timeout, _positive_duration),
            fails=t.get("fails", d.fails, _integer(1)),
            passes=t.get("passes", d.passes, _integer(1)),
            status=t.get("status", d.status, _health_status),
            body=t.get("body", d.body, _nonempty_string),
            headers=self.header_table(t, "headers", templates=False),
        )

    def upstream_tls(self, path: str, value: object) -> UpstreamTLSSettings:
        t = _Table(self.errors, path, value, UPSTREAM_TLS_KEYS)
        d = UpstreamTLSSettings()

        def server_name(v: object) -> str | bool:
            if v is False:
                return False
            if not isinstance(v, str) or not v:
                raise ValueError(f"must be a host name or false, got {show(v)}")
            return v

        certificate = t.get("certificate", d.certificate, self.file_path)
        key = t.get("key", d.key, self.file_path)
        if t.has("certificate") != t.has("key"):
            t.error("key" if t.has("certificate") else "certificate",
                    "required with " + ("certificate" if t.has("certificate") else "key"))
        return UpstreamTLSSettings(
            verify=t.get("verify", d.verify, _boolean),
            ca=t.get("ca", d.ca, self.file_path),
            server_name=t.get("server_name", d.server_name, server_name),
            certificate=certificate,
            key=key,
        )

    # -- [[servers]] ---------------------------------------------------------------

    def server(self, index: int, path: str, value: object) -> ServerSettings:
        t = _Table(self.errors, path, value, SERVER_KEYS)
        d = _DEFAULT_SERVER
        listen = t.list("listen", self.listen, required=True)
        if t.has("listen") and t.data["listen"] == []:
            t.error("listen", "must list at least one endpoint description")
        for i, description in enumerate(listen):
            if description in listen[:i]:
                t.error("listen", f"{show(description)} is listed twice")
        server_name = t.list("server_name", _server_name)
        default = t.get("default", d.default, _boolean)
        limits = {
            "client_max_body_size": t.get("client_max_body_size", d.client_max_body_size,
                                          parse_size),
            "client_header_timeout": t.get("client_header_timeout",
                                           d.client_header_timeout, _positive_duration),
            "client_body_timeout": t.get("client_body_timeout", d.client_body_timeout,
                                         _positive_duration),
            "keepalive_timeout": t.get("keepalive_timeout", d.keepalive_timeout,
                                       parse_duration),
            "keepalive_requests": t.get("keepalive_requests", d.keepalive_requests,
                                        _integer(1)),
            "large_client_header_buffers": t.get("large_client_header_buffers",
                                                 d.large_client_header_buffers,
                                                 _positive_size),
        }
        tls = None
        if t.has("tls"):
            tls = self.server_tls(t.at("tls"), t.data["tls"])
            t.unsupported("tls")
        http2 = t.get("http2", d.http2, _boolean)
        if t.data.get("http2") is True:
            t.unsupported("http2")
        real_ip_header = t.get("real_ip_header", d.real_ip_header, _header_name)
        if real_ip_header is not None:
            t.unsupported("real_ip_header")
        set_real_ip_from = t.list("set_real_ip_from", _real_ip_source)
        if set_real_ip_from:
            t.unsupported("set_real_ip_from")

        locations = tuple(self.location(p, item)
                          for p, item in t.tables("locations", required=True))
        if t.has("locations") and t.data["locations"] == []:
            t.error("locations", "at least one location is required")
        self.check_duplicate_locations(t, locations)
        return ServerSettings(
            index=index,
            listen=listen,
            locations=locations,
            server_name=server_name,
            default=default,
            tls=tls,
            http2=http2,
            real_ip_header=real_ip_header,
            set_real_ip_from=set_real_ip_from,
            **limits,
        )

    def check_defaults(self, servers: tuple[ServerSettings, ...]) -> None:
        """At most one ``default = true`` server per listen description."""
        first: dict[str, int] = {}
        for server in servers:
            if not server.default:
                continue
            for description in server.listen:
                if description in first:
                    self.errors.add(
                        f"servers[{server.index}].default",
                        f"{show(description)} already has a default server "
                        f"(servers[{first[description]}])")
                else:
                    first[description] = server.index

    def check_duplicate_locations(self, t: _Table, locations: tuple[LocationSettings, ...]
                                  ) -> None:
        # as nginx: "^~ /x" and "/x" are the same prefix location
        seen: dict[tuple[str, str], int] = {}
        for i, location in enumerate(locations):
            if not location.pattern:
                continue
            kind = "" if location.modifier == "^~" else location.modifier
            key = (kind, location.pattern)
            if key in seen:
                self.errors.add(f"{t.at('locations')}[{i}].path",
                                f"duplicate location {show(location.path)} "
                                f"(also locations[{seen[key]}])")
            else:
                seen[key] = i

    def server_tls(self, path: str, value: object) -> ServerTLSSettings:
        t = _Table(self.errors, path, value, SERVER_TLS_KEYS)
        d = ServerTLSSettings(certificate="", key="")
        protocols = t.list("protocols", _choice(*TLS_PROTOCOLS), default=d.protocols,
                           single=False)
        if t.has("protocols") and t.data["protocols"] == []:
            t.error("protocols", "must list at least one protocol")
        client_ca = t.get("client_ca", d.client_ca, self.file_path)
        verify_client = t.get("verify_client", d.verify_client,
                              _choice("off", "optional", "on"))
        if verify_client != "off" and client_ca is None:
            t.error("verify_client", f'"{verify_client}" needs client_ca')
        return ServerTLSSettings(
            certificate=t.get("certificate", None, self.file_path, required=True),
            key=t.get("key", None, self.file_path, required=True),
            protocols=protocols,
            ciphers=t.get("ciphers", d.ciphers, _nonempty_string),
            client_ca=client_ca,
            verify_client=verify_client,
        )

    # -- locations -----------------------------------------------------------------

    def location(self, path: str, value: object) -> LocationSettings:
        t = _Table(self.errors, path, value, LOCATION_KEYS)
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
        if proxy_pass is not None and proxy_pass.scheme == "https":
            t.unsupported("proxy_pass")
        grpc_pass = t.get("grpc_pass", None, self.grpc_pass)
        if grpc_pass is not None:
            t.unsupported("grpc_pass")
        return_ = self.return_(t.at("return"), t.data["return"]) if t.has("return") else None

        proxy = self.upstream_keys(t, "proxy", NEXT_UPSTREAM_CONDITIONS)
        self.upstream_keys(t, "grpc", GRPC_NEXT_UPSTREAM_CONDITIONS)
        for suffix in _UPSTREAM_KEY_SUFFIXES:
            if t.has(f"grpc_{suffix}"):
                t.unsupported(f"grpc_{suffix}")

        proxy_websocket = t.get("proxy_websocket", d.proxy_websocket, _boolean)
        if t.data.get("proxy_websocket") is True:
            t.unsupported("proxy_websocket")
        access = (t.list("access", _access_rule, single=False)
                  + t.list("allow", lambda v: _access_address(v, allow=True))
                  + t.list("deny", lambda v: _access_address(v, allow=False)))
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
            add_header=self.header_table(t, "add_header"),
            proxy_next_upstream=proxy["next_upstream"],
            proxy_next_upstream_tries=proxy["next_upstream_tries"],
            proxy_next_upstream_timeout=proxy["next_upstream_timeout"],
            proxy_connect_timeout=proxy["connect_timeout"],
            proxy_send_timeout=proxy["send_timeout"],
            proxy_read_timeout=proxy["read_timeout"],
            proxy_buffering=t.get("proxy_buffering", d.proxy_buffering, _boolean),
            proxy_request_buffering=t.get("proxy_request_buffering",
                                          d.proxy_request_buffering, _boolean),
            proxy_websocket=proxy_websocket,
            access=access,
            limit_req=limit_req,
            **cache,
        )

    def upstream_keys(self, t: _Table, prefix: str, conditions: tuple[str, ...]
                      ) -> dict[str, Any]:
        """The ``proxy_*`` keys, or their ``grpc_*`` twins, validated alike."""
        d = _DEFAULT_LOCATION

        def key(suffix: str) -> str:
            return f"{prefix}_{suffix}"

        return {
            "set_header": self.header_table(t, key("set_header")),
            "hide_header": t.list(key("hide_header"), _header_name),
            "pass_header": t.list(key("pass_header"), _header_name),
            "next_upstream": self.conditions(t, key("next_upstream"), conditions,
                                             d.proxy_next_upstream),
            "next_upstream_tries": t.get(key("next_upstream_tries"),
                                         d.proxy_next_upstream_tries, _integer(0)),
            "next_upstream_timeout": t.get(key("next_upstream_timeout"),
                                           d.proxy_next_upstream_timeout, parse_duration),
            "connect_timeout": t.get(key("connect_timeout"), d.proxy_connect_timeout,
                                     _positive_duration),
            "send_timeout": t.get(key("send_timeout"), d.proxy_send_timeout,
                                  _positive_duration),
            "read_timeout": t.get(key("read_timeout"), d.proxy_read_timeout,
                                  _positive_duration),
        }

    def proxy_pass(self, value: object, modifier: str) -> ProxyPass:
        """``http(s)://NAME[/uri]`` naming a declared group, or a literal host[:port]
        that becomes an implicit group (nginx's rule)."""
        text = _nonempty_string(value)
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
        address = self.address(authority, default_port=443 if scheme == "https" else 80)
        if address.is_unix:
            name = address.text
        else:
            host = f"[{address.host}]" if ":" in address.host else address.host
            name = f"{host}:{address.port}"
            address = Address(text=name, host=address.host, port=address.port)
        if name not in self.implicit:
            self.implicit[name] = UpstreamSettings(
                name=name, servers=(PeerSettings(address=address),), implicit=True)
        return ProxyPass(scheme=scheme, upstream=name, uri=uri, text=text)

    def grpc_pass(self, value: object) -> str:
        """``grpc(s)://NAME`` or a literal ``host[:port]``; checked, not yet wired."""
        text = _nonempty_string(value)
        match = _SCHEME.fullmatch(text)
        scheme = match.group(1).lower() if match else None
        if scheme not in ("grpc", "grpcs"):
            raise ValueError(f'must start with "grpc://" or "grpcs://", got {show(text)}')
        authority = match.group(2)
        if authority not in self.declared:
            self.address(authority, default_port=443 if scheme == "grpcs" else 80)
        return text

    def return_(self, path: str, value: object) -> ReturnAction:
        t = _Table(self.errors, path, value, RETURN_KEYS)
        status = t.get("status", None, _integer(0, 999), required=True)
        url = t.get("url", None, _nonempty_string)
        body = t.get("body", None, _string)
        if t.has("url") and t.has("body"):
            self.errors.add(path, "set url or body, not both")
        elif status in REDIRECT_STATUSES and not t.has("url"):
            t.error("url", f"required with status {status}")
        elif status is not None and status not in REDIRECT_STATUSES and t.has("url"):
            t.error("url", "only allowed with status 301, 302, 303, 307 or 308")
        self.template(t.at("url"), url)
        self.template(t.at("body"), body)
        return ReturnAction(status=status, url=url, body=body)

    def limit_req(self, path: str, value: object) -> LimitReqSettings:
        t = _Table(self.errors, path, value, LIMIT_REQ_KEYS)
        zone = t.get("zone", None, _nonempty_string, required=True)
        if zone is not None and zone not in self.zones:
            t.error("zone", f"no [limit_req_zones.{zone}] is declared"
                            + _suggest(zone, self.zones))
        return LimitReqSettings(zone=zone, burst=t.get("burst", 0, _integer(0)),
                                nodelay=t.get("nodelay", False, _boolean))

    def location_cache(self, t: _Table) -> dict[str, Any]:
        d = _DEFAULT_LOCATION

        def cache_name(v: object) -> Optional[str]:
            if v is False:
                return None
            if not isinstance(v, str) or not v:
                raise ValueError(f"must be the name of a [caches.NAME] or false, got {show(v)}")
            name = v
            if name not in self.caches:
                raise ValueError(f"no [caches.{name}] is declared"
                                 + _suggest(name, self.caches))
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
                    path = _key_path(t.at("proxy_cache_valid"), codes)
                    try:
                        _cache_codes(codes)
                        valid.append((codes, parse_duration(duration)))
                    except ValueError as e:
                        self.errors.add(path, str(e))
                if value:
                    t.unsupported("proxy_cache_valid")
        key = t.get("proxy_cache_key", d.proxy_cache_key, _nonempty_string)
        self.template(t.at("proxy_cache_key"), key)
        use_stale = t.list("proxy_cache_use_stale", _choice("off", *CACHE_USE_STALE))
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
            result[flag] = t.get(flag, getattr(d, flag), _boolean)
            if result[flag]:
                t.unsupported(flag)
        return result

    # -- [limit_req_zones.NAME], [caches.NAME], [[grpc_servers]] ------------------------

    def limit_req_zone(self, name: str, path: str, value: object) -> LimitReqZone:
        t = _Table(self.errors, path, value, LIMIT_REQ_ZONE_KEYS)
        key = t.get("key", None, _string, required=True)
        self.template(t.at("key"), key)
        zone = LimitReqZone(name=name, key=key,
                            rate=t.get("rate", None, _rate, required=True),
                            status=t.get("status", 503, _integer(400, 599)))
        self.errors.add(path, UNSUPPORTED)
        return zone

    def cache(self, name: str, path: str, value: object) -> CacheSettings:
        t = _Table(self.errors, path, value, CACHE_KEYS)
        cache = CacheSettings(name=name,
                              path=t.get("path", None, self.file_path, required=True),
                              max_size=t.get("max_size", None, _positive_size),
                              inactive=t.get("inactive", 600.0, _positive_duration))
        self.errors.add(path, UNSUPPORTED)
        return cache

    def grpc_server(self, path: str, value: object) -> GrpcServerSettings:
        t = _Table(self.errors, path, value, GRPC_SERVER_KEYS)
        d = GrpcServerSettings(listen="", grpc_pass="")
        listen = t.get("listen", None,
                       lambda v: self.address(v, allow_unix=True).text, required=True)
        tls = self.server_tls(t.at("tls"), t.data["tls"]) if t.has("tls") else None
        grpc_pass = t.get("grpc_pass", None, self.grpc_pass, required=True)
        retry = self.conditions(t, "grpc_next_upstream", GRPC_NEXT_UPSTREAM_CONDITIONS,
                                frozenset(d.grpc_next_upstream))
        self.errors.add(path, UNSUPPORTED)
        return GrpcServerSettings(listen=listen, grpc_pass=grpc_pass, tls=tls,
                                  grpc_next_upstream=tuple(sorted(retry)))


def _location_path(value: object) -> tuple[str, str, str, Optional[re.Pattern]]:
    """``"= /x"``, ``"^~ /x"``, ``"~ re"``, ``"~* re"`` or ``"/prefix"`` →
    (path, modifier, pattern, compiled regex or None)."""
    text = _nonempty_string(value).strip()
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
