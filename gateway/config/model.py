"""The configuration model: frozen dataclasses built once from the TOML file.

This module owns the *shape* of a loaded configuration and its defaults (those of
CONFIG.md). It does no parsing or validation: ``gateway.config.load`` turns a TOML
document into these objects and reports every error with its TOML path. Services receive
these objects, never dicts. Durations are float seconds, sizes are int bytes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Union


# -- [gateway] and [admin] ---------------------------------------------------------


@dataclass(frozen=True)
class GatewaySettings:
    """The process-wide ``[gateway]`` table."""

    workers: int = 1
    access_log: Optional[str] = "-"          # path, "-" (stdout) or None (false)
    access_log_format: str = "combined"      # "combined" | "upstream" | "json" | custom
    error_log: str = "-"
    resolver: tuple[str, ...] = ()
    resolver_valid: float = 30.0
    shutdown_timeout: float = 30.0


@dataclass(frozen=True)
class AdminSettings:
    """The ``[admin]`` table; ``listen`` is None when disabled (``listen = false``)."""

    listen: Optional[str] = "tcp:9901:interface=127.0.0.1"


# -- upstreams --------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """Where a peer listens: ``host:port``, ``[v6]:port`` or ``unix:/path``.

    ``text`` is the address exactly as written in the file (used in logs, in
    ``$upstream_addr`` and as the peer's identity across reloads).
    """

    text: str
    host: Optional[str] = None     # None for unix sockets; no brackets for IPv6
    port: Optional[int] = None
    path: Optional[str] = None     # unix socket path

    @property
    def is_unix(self) -> bool:
        return self.path is not None


@dataclass(frozen=True)
class PeerSettings:
    """One entry of an upstream's ``servers`` array."""

    address: Address
    weight: int = 1
    max_fails: int = 1
    fail_timeout: float = 10.0
    max_conns: int = 0
    backup: bool = False
    down: bool = False
    slow_start: float = 0.0
    resolve: bool = False


@dataclass(frozen=True)
class QueueSettings:
    size: int = 100
    timeout: float = 60.0


@dataclass(frozen=True)
class HealthCheckSettings:
    type: str = "http"
    uri: str = "/"
    grpc_service: str = ""
    grpc_unimplemented: str = "healthy"    # a grpc probe answered UNIMPLEMENTED
    interval: float = 5.0
    timeout: float = 2.0
    fails: int = 1
    passes: int = 1
    status: tuple[tuple[int, int], ...] = ((200, 399),)   # inclusive ranges
    body: Optional[str] = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class UpstreamTLSSettings:
    verify: bool = True
    ca: Optional[str] = None
    server_name: Union[str, bool, None] = None   # None = host of address; False = no SNI
    certificate: Optional[str] = None
    key: Optional[str] = None


@dataclass(frozen=True)
class UpstreamSettings:
    """One ``[upstreams.NAME]`` group.

    An implicit group (a literal ``proxy_pass http://host:port``) has ``implicit=True``
    and is named after the ``host:port`` text, as nginx does.
    """

    name: str
    servers: tuple[PeerSettings, ...]
    balance: str = "round_robin"
    hash_key: Optional[str] = None
    consistent: bool = False
    two: bool = False
    keepalive: int = 32
    keepalive_requests: int = 1000
    keepalive_timeout: float = 60.0
    keepalive_time: float = 3600.0
    queue: Optional[QueueSettings] = None
    health_check: Optional[HealthCheckSettings] = None
    tls: Optional[UpstreamTLSSettings] = None
    implicit: bool = False


# -- servers and locations --------------------------------------------------------


@dataclass(frozen=True)
class ServerTLSSettings:
    certificate: str
    key: str
    protocols: tuple[str, ...] = ("TLSv1.2", "TLSv1.3")
    ciphers: Optional[str] = None
    client_ca: Optional[str] = None
    verify_client: str = "off"


@dataclass(frozen=True)
class ProxyPass:
    """A parsed ``proxy_pass`` value.

    ``upstream`` names the group (declared or implicit). ``uri`` is the URI part after
    the host (``None`` when absent: the request URI is passed unchanged; ``"/"`` or
    longer: it replaces the matched location prefix, nginx's rule).
    """

    scheme: str            # "http" | "https"
    upstream: str          # group name (for a literal host:port, that text)
    uri: Optional[str] = None
    text: str = ""         # as written, for messages


@dataclass(frozen=True)
class GrpcPass:
    """A parsed ``grpc_pass`` value with the location's ``grpc_*`` keys (the twins of
    the ``proxy_*`` keys, same defaults and meanings).

    ``upstream`` names the group (declared, or implicit for a literal ``host:port``:
    default port 80, 443 for ``grpcs``, as nginx). ``read_timeout`` is None unless
    ``grpc_read_timeout`` is set: only then does it cap a call's deadline.
    """

    scheme: str            # "grpc" | "grpcs"
    upstream: str          # group name (for a literal host:port, that text)
    text: str = ""         # as written, for messages
    set_header: tuple[tuple[str, str], ...] = ()
    hide_header: tuple[str, ...] = ()
    pass_header: tuple[str, ...] = ()
    next_upstream: frozenset[str] = frozenset({"error", "timeout"})
    next_upstream_tries: int = 0
    next_upstream_timeout: float = 0.0
    connect_timeout: float = 60.0
    send_timeout: float = 60.0
    read_timeout: Optional[float] = None


@dataclass(frozen=True)
class ReturnAction:
    """``return = { status = …, url = … }`` or ``{ status = …, body = … }``."""

    status: int
    url: Optional[str] = None
    body: Optional[str] = None


@dataclass(frozen=True)
class AccessRule:
    """One ``access`` rule: ``allow``/``deny`` an address, a CIDR, ``all`` or ``unix:``."""

    allow: bool
    network: Optional[str] = None    # ipaddress network text; None with all/unix
    all: bool = False
    unix: bool = False


@dataclass(frozen=True)
class LimitReqSettings:
    zone: str
    burst: int = 0
    nodelay: bool = False


@dataclass(frozen=True)
class LocationSettings:
    """One location table. ``modifier`` is ``""``, ``"="``, ``"^~"``, ``"~"`` or ``"~*"``;
    ``pattern`` is the prefix/exact path or the regex source. ``regex`` is compiled
    for ``~``/``~*`` (``re.IGNORECASE`` for ``~*``)."""

    path: str
    modifier: str
    pattern: str
    regex: Optional[re.Pattern] = field(default=None, compare=False)
    proxy_pass: Optional[ProxyPass] = None
    grpc_pass: Optional[GrpcPass] = None
    return_: Optional[ReturnAction] = None
    # header handling: (name, value template) in file order; "" value removes
    proxy_set_header: tuple[tuple[str, str], ...] = ()
    proxy_hide_header: tuple[str, ...] = ()
    proxy_pass_header: tuple[str, ...] = ()
    add_header: tuple[tuple[str, str], ...] = ()
    # retries: a frozenset of condition names; empty = "off"
    proxy_next_upstream: frozenset[str] = frozenset({"error", "timeout"})
    proxy_next_upstream_tries: int = 0
    proxy_next_upstream_timeout: float = 0.0
    proxy_connect_timeout: float = 60.0
    proxy_send_timeout: float = 60.0
    proxy_read_timeout: float = 60.0
    proxy_buffering: bool = True
    proxy_request_buffering: bool = True
    proxy_websocket: bool = True
    access: tuple[AccessRule, ...] = ()
    limit_req: Optional[LimitReqSettings] = None
    proxy_cache: Optional[str] = None
    proxy_cache_valid: tuple[tuple[str, float], ...] = ()
    proxy_cache_key: str = "$scheme$request_method$host$request_uri"
    proxy_cache_use_stale: tuple[str, ...] = ()
    proxy_cache_lock: bool = False
    proxy_cache_background_update: bool = False


@dataclass(frozen=True)
class ServerSettings:
    """One ``[[servers]]`` virtual server. ``index`` is its position in the file."""

    index: int
    listen: tuple[str, ...]
    locations: tuple[LocationSettings, ...]
    server_name: tuple[str, ...] = ()
    default: bool = False
    tls: Optional[ServerTLSSettings] = None
    http2: bool = True
    client_max_body_size: int = 1024 * 1024
    client_header_timeout: float = 60.0
    client_body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    keepalive_requests: int = 1000
    large_client_header_buffers: int = 8 * 1024
    real_ip_header: Optional[str] = None       # None: "X-Real-IP", nginx's default
    set_real_ip_from: tuple[str, ...] = ()     # network texts ("10.0.0.0/8") and "unix:"


# -- zones, caches, gRPC front doors ----------------------------------------------


@dataclass(frozen=True)
class LimitReqZone:
    name: str
    key: str
    rate: float          # requests per second
    status: int = 503


@dataclass(frozen=True)
class CacheSettings:
    name: str
    path: str
    max_size: Optional[int] = None
    inactive: float = 600.0


@dataclass(frozen=True)
class GrpcServerSettings:
    """One ``[[grpc_servers]]`` front door. ``listen`` is a grpcio address; ``grpc_pass``
    the text as written, ``upstream`` the group it names (implicit for a literal
    ``host:port``) and ``scheme`` ``"grpc"`` or ``"grpcs"``."""

    listen: str
    grpc_pass: str
    tls: Optional[ServerTLSSettings] = None
    grpc_next_upstream: tuple[str, ...] = ("error", "timeout", "unavailable")
    upstream: str = ""
    scheme: str = "grpc"


# -- the whole file ---------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """A complete, validated configuration."""

    path: str
    gateway: GatewaySettings
    admin: AdminSettings
    upstreams: dict[str, UpstreamSettings]      # declared and implicit groups by name
    servers: tuple[ServerSettings, ...]
    limit_req_zones: dict[str, LimitReqZone] = field(default_factory=dict)
    caches: dict[str, CacheSettings] = field(default_factory=dict)
    grpc_servers: tuple[GrpcServerSettings, ...] = ()

    def listeners(self) -> dict[str, tuple[ServerSettings, ...]]:
        """Each listen description with the servers on it, in file order."""
        by_listen: dict[str, list[ServerSettings]] = {}
        for server in self.servers:
            for description in server.listen:
                by_listen.setdefault(description, []).append(server)
        return {k: tuple(v) for k, v in by_listen.items()}

    def uses_grpc(self) -> bool:
        """Whether anything needs grpcio (and so the asyncio reactor): a ``grpc_pass``
        location, a ``[[grpc_servers]]`` front door or a ``grpc`` health check."""
        return bool(
            self.grpc_servers
            or any(location.grpc_pass is not None
                   for server in self.servers for location in server.locations)
            or any(group.health_check is not None and group.health_check.type == "grpc"
                   for group in self.upstreams.values())
        )
