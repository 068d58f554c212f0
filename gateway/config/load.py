"""TOML file → ``gateway.config.model.Config``, with every error reported at once.

The loader reads and validates the site configuration (CONFIG.md): key names, types,
ranges, enums, references between tables, relative-path resolution, and the "not
supported yet" gate of this release (the HTTP/1.1 proxy only). This module owns its
entry points (``load_config``, ``parse_config``, ``ConfigError``), the top level of the
file and the small sections: ``[gateway]``, ``[admin]``, ``[limit_req_zones.NAME]``,
``[caches.NAME]`` and ``[[grpc_servers]]``. The rest is read by private modules:
``_reader`` (the error collector, the table reader and generic value parsers),
``_addresses`` (paths, addresses, listen endpoints), ``_upstreams``
(``[upstreams.NAME]``), ``_servers`` (``[[servers]]``) and ``_locations`` (their
locations). The shape and defaults of the result are ``model``'s, unit grammars
``units``'s and the variable catalogue ``gateway.http.variables``'s. The loader
resolves no host names, opens no files other than the configuration itself and the TLS
certificate and key files it names (read to report bad ones), and listens on nothing.

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

import ipaddress
import os
import re
import tomllib
from typing import Callable, Iterable, Optional

from gateway.config._addresses import Addresses
from gateway.config._locations import GRPC_NEXT_UPSTREAM_CONDITIONS, LocationReader
from gateway.config._reader import (
    UNSUPPORTED,
    Errors,
    T,
    Table,
    conditions,
    integer,
    key_path,
    nonempty_string,
    positive_duration,
    positive_size,
    string,
    template,
)
from gateway.config._servers import ServerReader
from gateway.config._upstreams import UpstreamReader
from gateway.config.model import (
    AdminSettings,
    CacheSettings,
    Config,
    GatewaySettings,
    GrpcServerSettings,
    LimitReqZone,
)
from gateway.config.units import parse_duration, show

__all__ = ["ConfigError", "load_config", "parse_config"]


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
    return _Loader(path, data).config()


# -- key sets --------------------------------------------------------------------

TOP_KEYS = ("gateway", "admin", "upstreams", "servers", "limit_req_zones", "caches",
            "grpc_servers")
GATEWAY_KEYS = ("workers", "access_log", "access_log_format", "error_log", "resolver",
                "resolver_valid", "shutdown_timeout")
ACCESS_LOG_FORMATS = ("combined", "upstream", "json")
ADMIN_KEYS = ("listen",)
LIMIT_REQ_ZONE_KEYS = ("key", "rate", "status")
CACHE_KEYS = ("path", "max_size", "inactive")
GRPC_SERVER_KEYS = ("listen", "tls", "grpc_pass", "grpc_next_upstream")

_RATE = re.compile(r"(\d+(?:\.\d+)?)r/([sm])")
_INVALID = object()   # a getter's default where "bad value" must differ from "absent"


def _rate(value: object) -> float:
    match = _RATE.fullmatch(value) if isinstance(value, str) else None
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f'must be a rate like "10r/s" or "30r/m", got {show(value)}')
    number = float(match.group(1))
    return number if match.group(2) == "s" else number / 60.0


# -- the loader ------------------------------------------------------------------


class _Loader:
    """One load: the errors found so far and a reader for each kind of table, the
    location reader knowing the names declared at the top level."""

    def __init__(self, path: str, data: dict):
        self.path = os.path.abspath(path)
        self.errors = Errors()
        self.top = Table(self.errors, "", data, TOP_KEYS)
        self.addresses = Addresses(os.path.dirname(self.path))
        self.upstreams = UpstreamReader(self.errors, self.addresses)
        self.locations = LocationReader(self.errors, self.addresses,
                                        declared=self.names("upstreams"),
                                        zones=self.names("limit_req_zones"),
                                        caches=self.names("caches"))
        self.servers = ServerReader(self.errors, self.addresses, self.locations)

    def names(self, key: str) -> set[str]:
        """The NAMEs of the top-level ``[key.NAME]`` tables (checked later)."""
        value = self.top.data.get(key, {})
        return set(value) if isinstance(value, dict) else set()

    def config(self) -> Config:
        top = self.top
        gateway = self.gateway(top.data.get("gateway", {}))
        admin = self.admin(top.data["admin"]) if top.has("admin") else AdminSettings()
        upstreams = self.named("upstreams", self.upstreams.upstream)
        zones = self.named("limit_req_zones", self.limit_req_zone)
        caches = self.named("caches", self.cache)
        servers = tuple(self.servers.server(i, path, item)
                        for i, (path, item) in enumerate(top.tables("servers")))
        self.servers.check_defaults(servers)
        self.servers.check_listener_tls(servers)
        grpc_servers = tuple(self.grpc_server(path, item)
                             for path, item in top.tables("grpc_servers"))
        if not top.has("servers") and not top.has("grpc_servers"):
            top.error("servers", "at least one [[servers]] table is required")
        self.check_workers(gateway, servers, grpc_servers)
        self.check_grpcs_verify(upstreams, servers, grpc_servers)

        if self.errors.messages:
            raise ConfigError(self.errors.messages)
        return Config(
            path=self.path,
            gateway=gateway,
            admin=admin,
            upstreams={**upstreams, **self.locations.implicit},
            servers=servers,
            limit_req_zones=zones,
            caches=caches,
            grpc_servers=grpc_servers,
        )

    def named(self, key: str, build: Callable[[str, str, object], T]) -> dict[str, T]:
        """A table of named tables (``[upstreams.NAME]``) built one by one."""
        top = self.top
        value = top.data.get(key, {})
        if not isinstance(value, dict):
            top.error(key, f"must be a table of [{key}.NAME] tables, got {show(value)}")
            return {}
        return {name: build(name, key_path(key, name), body)
                for name, body in value.items()}

    # -- [gateway] and [admin] -------------------------------------------------------

    def gateway(self, value: object) -> GatewaySettings:
        t = Table(self.errors, "gateway", value, GATEWAY_KEYS)
        d = GatewaySettings()
        workers = t.get("workers", d.workers, integer(0))
        access_log = t.get("access_log", d.access_log, self.access_log)
        access_log_format = t.get("access_log_format", d.access_log_format,
                                  nonempty_string)
        if access_log_format not in ACCESS_LOG_FORMATS:
            template(self.errors, t.at("access_log_format"), access_log_format)
        error_log = t.get("error_log", d.error_log, self.log_path)
        resolver = t.list("resolver", self.resolver_address, single=False)
        return GatewaySettings(
            workers=workers,
            access_log=access_log,
            access_log_format=access_log_format,
            error_log=error_log,
            resolver=resolver,
            resolver_valid=t.get("resolver_valid", d.resolver_valid, positive_duration),
            shutdown_timeout=t.get("shutdown_timeout", d.shutdown_timeout, parse_duration),
        )

    def check_workers(self, gateway: GatewaySettings, servers, grpc_servers) -> None:
        """``workers != 1`` (a master and worker processes, :mod:`gateway.master`):
        every listener must be one the master can bind and pass on, and the gRPC front
        door, a grpcio server that cannot adopt a socket, runs in one process only."""
        if gateway.workers == 1:
            return
        from gateway.master.sockets import shareable

        seen = set()
        for server in servers:
            for description in server.listen:
                if description not in seen and not shareable(description):
                    self.errors.add("gateway.workers", (
                        f"listener {show(description)} cannot be shared by worker "
                        "processes: only tcp:, tcp6: and unix: listeners can (or set "
                        "workers = 1)"))
                seen.add(description)
        if grpc_servers:
            self.errors.add("gateway.workers", (
                "[[grpc_servers]] run in one process only: set workers = 1, or serve "
                "gRPC with grpc_pass locations of a [[servers]] listener, which work "
                "with any number of workers"))

    def log_path(self, value: object) -> str:
        text = nonempty_string(value)
        return text if text == "-" else self.addresses.resolve(text)

    def access_log(self, value: object) -> Optional[str]:
        if value is False:
            return None
        if not isinstance(value, str) or not value:
            raise ValueError(f'must be a path, "-" or false, got {show(value)}')
        return self.log_path(value)

    def resolver_address(self, value: object) -> str:
        address = self.addresses.address(value, default_port=53, allow_unix=False)
        try:
            ipaddress.ip_address(address.host)
        except ValueError:
            raise ValueError(f'must be an "ip:port" address, got {show(value)}') from None
        return address.text

    def admin(self, value: object) -> AdminSettings:
        t = Table(self.errors, "admin", value, ADMIN_KEYS)
        d = AdminSettings()

        def listen(v: object) -> Optional[str]:
            if v is False:
                return None
            if not isinstance(v, str):
                raise ValueError(f"must be an endpoint description or false, got {show(v)}")
            return self.addresses.listen(v)

        result = t.get("listen", _INVALID, listen)
        if result is _INVALID:
            return d
        return AdminSettings(listen=result)

    # -- [limit_req_zones.NAME], [caches.NAME], [[grpc_servers]] ------------------------

    def limit_req_zone(self, name: str, path: str, value: object) -> LimitReqZone:
        t = Table(self.errors, path, value, LIMIT_REQ_ZONE_KEYS)
        key = t.get("key", None, string, required=True)
        template(self.errors, t.at("key"), key)
        zone = LimitReqZone(name=name, key=key,
                            rate=t.get("rate", None, _rate, required=True),
                            status=t.get("status", 503, integer(400, 599)))
        self.errors.add(path, UNSUPPORTED)
        return zone

    def cache(self, name: str, path: str, value: object) -> CacheSettings:
        t = Table(self.errors, path, value, CACHE_KEYS)
        cache = CacheSettings(name=name,
                              path=t.get("path", None, self.addresses.file_path,
                                         required=True),
                              max_size=t.get("max_size", None, positive_size),
                              inactive=t.get("inactive", 600.0, positive_duration))
        self.errors.add(path, UNSUPPORTED)
        return cache

    def grpc_server(self, path: str, value: object) -> GrpcServerSettings:
        """One ``[[grpc_servers]]`` front door (``gateway.grpc_pass.front_door``)."""
        t = Table(self.errors, path, value, GRPC_SERVER_KEYS)
        d = GrpcServerSettings(listen="", grpc_pass="")
        listen = t.get("listen", None, self.grpc_listen, required=True)
        tls = None
        if t.has("tls"):
            tls = self.servers.server_tls(t.at("tls"), t.data["tls"])
            given = t.data["tls"] if isinstance(t.data["tls"], dict) else {}
            # grpcio's own TLS: its protocols and ciphers are not configurable per
            # server, and a client certificate is either required or not asked for
            for key in ("protocols", "ciphers"):
                if key in given:
                    self.errors.add(key_path(t.at("tls"), key),
                                    "not supported by a gRPC front door (grpcio's TLS)")
            if tls.verify_client == "optional":
                self.errors.add(key_path(t.at("tls"), "verify_client"),
                                'must be "on" or "off" for a gRPC front door (grpcio '
                                "requires a client certificate or asks for none)")
        target = t.get("grpc_pass", None, self.locations.grpc_target, required=True)
        retry = conditions(t, "grpc_next_upstream", GRPC_NEXT_UPSTREAM_CONDITIONS,
                           frozenset(d.grpc_next_upstream))
        return GrpcServerSettings(
            listen=listen, grpc_pass=target.text if target else "", tls=tls,
            grpc_next_upstream=tuple(sorted(retry)),
            upstream=target.upstream if target else "",
            scheme=target.scheme if target else "grpc")

    def grpc_listen(self, value: object) -> str:
        """A grpcio address: ``"host:port"``, ``"[v6]:port"`` (port 0: any free port)
        or ``"unix:/path"`` (made absolute)."""
        text = nonempty_string(value)
        if text.startswith("unix:"):
            return "unix:" + self.addresses.address(text).path
        head, colon, port = text.rpartition(":")
        if not colon or head.endswith(":") or (head.count(":") and not head.endswith("]")):
            raise ValueError(f'must be "host:port", "[v6addr]:port" or "unix:/path", '
                             f"got {show(value)}")
        if port == "0":
            self.addresses.address(head + ":1")
            return text
        return self.addresses.address(text).text

    def check_grpcs_verify(self, upstreams: dict, servers, grpc_servers) -> None:
        """``grpcs://`` to a group whose ``tls.verify = false``: grpcio always verifies
        the peer's certificate, so the group's setting cannot be honoured."""
        used = {(s.upstream, "[[grpc_servers]]") for s in grpc_servers
                if s.scheme == "grpcs"}
        used |= {(location.grpc_pass.upstream, "a grpc_pass location")
                 for server in servers for location in server.locations
                 if getattr(location.grpc_pass, "scheme", None) == "grpcs"}
        for name, user in sorted(used):
            settings = upstreams.get(name)
            if settings is not None and settings.tls is not None and not settings.tls.verify:
                self.errors.add(key_path(key_path("upstreams", name), "tls") + ".verify",
                                f"must be true: the group is used with grpcs:// by {user}, "
                                "and grpcio always verifies the peer")
