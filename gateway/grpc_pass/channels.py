"""Per-peer ``grpc.aio`` channels: the upstream side of every gRPC call.

This module owns the channel each peer is called over (DESIGN.md, decision 4): one
``grpc.aio`` channel per (group, peer, scheme), created lazily by the first call or
health probe that needs it, shared by every call to that peer, and closed when the peer
leaves its group (``resolve = true`` or a reload: the service's membership observer
calls ``close_peer``) or when the service stops. Calls in flight on a channel that is
closed because its peer left get :data:`LEAVE_GRACE` seconds to finish, as an HTTP
lease on a removed peer finishes normally.

Channel options, and why:

- ``grpc.initial_reconnect_backoff_ms`` / ``grpc.max_reconnect_backoff_ms`` low
  (100 ms / 1 s): grpcio's defaults (1 s growing to 120 s) keep a recovered peer looking
  dead for minutes, while the upstream manager (``max_fails``/``fail_timeout``, health
  checks) is what decides whether a peer is used;
- ``grpc.use_local_subchannel_pool``: each channel owns its connection, so closing a
  peer's channel really closes it and two groups naming one address do not share state;
- message limits of :data:`MAX_MESSAGE` (16 MiB) each way, grpcio's default receive
  limit being 4 MiB;
- keepalive pings every 30 s while calls are open (a peer that vanished without a FIN is
  noticed in 40 s), never on an idle connection, so default servers' ping policing
  (``too_many_pings``) is never triggered.

``grpcs://`` uses the group's ``tls`` table (CONFIG.md): the trust anchors of ``ca``
(else the system store's bundle, else grpcio's own roots), the client certificate for
mutual TLS, and ``server_name`` (default: the host of the server's configured address)
as the name sent in SNI and verified, through ``grpc.ssl_target_name_override``.
grpcio cannot turn verification off or omit SNI for a host name, so
``verify = false`` with ``grpcs://`` is refused by the configuration loader and
``server_name = false`` only matters for IP addresses (which never get SNI).

What is said on a channel (the calls, their metadata and accounting) is
:mod:`gateway.grpc_pass.relay`'s; health probes are :mod:`gateway.grpc_pass.health`'s.
"""
from __future__ import annotations

import asyncio
import ipaddress
import ssl
from typing import Optional

import grpc
from grpc import aio
from twisted.internet.defer import Deferred, succeed

from gateway.config.model import Address, UpstreamTLSSettings

__all__ = ["CHANNEL_OPTIONS", "Channels", "LEAVE_GRACE", "MAX_MESSAGE", "channel_target"]

#: the largest message passed either way (both hops), in bytes
MAX_MESSAGE = 16 * 1024 * 1024
#: seconds the calls in flight on a departed peer's channel get before it is closed
LEAVE_GRACE = 30.0
#: method callables kept per channel
MAX_METHODS = 1024

#: the options of every upstream channel (see the module docstring)
CHANNEL_OPTIONS: tuple[tuple[str, object], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 2),
)


def channel_target(address: Address) -> str:
    """The grpcio target for a peer address: IP literals with the ``ipv4:``/``ipv6:``
    schemes (no resolver involved), unix sockets as ``unix:PATH``, other host names
    through grpcio's DNS resolver."""
    if address.is_unix:
        return f"unix:{address.path}"
    host, port = address.host, address.port
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"dns:///{host}:{port}"
    if ip.version == 6:
        return f"ipv6:[{host}]:{port}"
    return f"ipv4:{host}:{port}"


def _read(path: Optional[str]) -> Optional[bytes]:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def _system_roots() -> Optional[bytes]:
    """The system trust store as one PEM bundle (OpenSSL's default file), or None:
    grpcio then uses its own bundled roots."""
    cafile = ssl.get_default_verify_paths().cafile
    try:
        return _read(cafile)
    except OSError:
        return None


class _TLS:
    """The ``grpcs://`` credentials and name options of one group (built once)."""

    def __init__(self, settings: UpstreamTLSSettings):
        self.settings = settings
        roots = _read(settings.ca) if settings.ca else _system_roots()
        self.credentials = grpc.ssl_channel_credentials(
            root_certificates=roots,
            private_key=_read(settings.key),
            certificate_chain=_read(settings.certificate),
        )

    def options(self, configured: Address) -> tuple[tuple[str, object], ...]:
        """The name the peer's certificate must carry: ``server_name``, else the host
        of the configured address (a ``resolve = true`` peer is dialled by IP but
        verified by the name it was found under)."""
        name = self.settings.server_name
        if not isinstance(name, str):
            name = configured.host if not configured.is_unix else "localhost"
        return (("grpc.ssl_target_name_override", name),)


class Channels:
    """Every upstream channel of one process, by (group name, peer name, TLS or not).

    ``get`` must be called on the reactor's (asyncio) thread; ``close_peer`` and
    ``close_all`` may be called at any time after. The service calls ``close_peer``
    for each peer that leaves a group (``resolve = true``, a reload).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 options: tuple[tuple[str, object], ...] = CHANNEL_OPTIONS):
        self.loop = loop
        self.options = options
        self._channels: dict[tuple[str, str, bool], aio.Channel] = {}
        #: each channel's raw-bytes stream-stream callables, by method
        self._methods: dict[tuple[str, str, bool], dict[str, object]] = {}
        self._tls: dict[str, _TLS] = {}
        self._closing: set[asyncio.Task] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._channels)

    @property
    def closed(self) -> bool:
        """True once ``close_all`` ran (the service stopped): no new channels."""
        return self._closed

    def __contains__(self, key: object) -> bool:
        return key in self._channels

    def get(self, group, peer, tls: bool = False) -> aio.Channel:
        """The channel to ``peer`` of ``group`` (an ``UpstreamGroup``), created on
        first use; ``tls`` for ``grpcs://``, with the group's ``tls`` table."""
        key = (group.name, peer.name, tls)
        channel = self._channels.get(key)
        if channel is None:
            if self._closed:
                raise RuntimeError("gRPC channels are closed (the service stopped)")
            channel = self._channels[key] = self._create(group, peer, tls)
        return channel

    def stream_stream(self, group, peer, tls: bool, method: str):
        """The raw-bytes (no (de)serializers) stream-stream callable of ``method`` on
        the channel to ``peer``, made once per channel and method."""
        key = (group.name, peer.name, tls)
        channel = self.get(group, peer, tls)
        methods = self._methods.setdefault(key, {})
        callable_ = methods.get(method)
        if callable_ is None:
            if len(methods) >= MAX_METHODS:     # any method passes: stay bounded
                methods.clear()
            callable_ = methods[method] = channel.stream_stream(
                method, request_serializer=None, response_deserializer=None)
        return callable_

    def _create(self, group, peer, tls: bool) -> aio.Channel:
        target = channel_target(peer.address)
        if not tls:
            return aio.insecure_channel(target, options=self.options)
        settings = group.settings.tls or UpstreamTLSSettings()
        group_tls = self._tls.get(group.name)
        if group_tls is None or group_tls.settings != settings:
            # built once per group, and again after a reload changed its table (the
            # channels already open keep theirs until their peer leaves)
            group_tls = self._tls[group.name] = _TLS(settings)
        return aio.secure_channel(
            target, group_tls.credentials,
            options=self.options + group_tls.options(peer.settings.address))

    def close_peer(self, group: str, peer_name: str, grace: float = LEAVE_GRACE) -> None:
        """Close the channels to ``peer_name`` of the group named ``group`` (both
        schemes); calls in flight get ``grace`` seconds."""
        for tls in (False, True):
            self._methods.pop((group, peer_name, tls), None)
            channel = self._channels.pop((group, peer_name, tls), None)
            if channel is not None:
                self._close(channel, grace)

    def close_all(self, grace: Optional[float] = None) -> Deferred:
        """Close every channel (service stop); fires when all are closed. Calls still
        in flight are cancelled after ``grace`` seconds (None: at once)."""
        self._closed = True
        channels, self._channels = list(self._channels.values()), {}
        self._methods.clear()
        for channel in channels:
            self._close(channel, grace)
        if not self._closing:
            return succeed(None)
        waiting = asyncio.gather(*self._closing, return_exceptions=True)
        return Deferred.fromFuture(waiting).addCallback(lambda _: None)

    def _close(self, channel: aio.Channel, grace: Optional[float]) -> None:
        task = self.loop.create_task(channel.close(grace))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
