"""``[upstreams.NAME]`` tables → ``UpstreamSettings``: peers, pooling, queue, checks, TLS.

This module owns one upstream group's keys: the balancing method and its companions
(``hash_key``, ``consistent``, ``two``), connection pooling, the ``servers`` (peers),
``queue``, ``health_check`` and ``tls``. Groups named by a literal ``proxy_pass``
(implicit groups) are made by ``_locations``; collecting the groups into the ``Config``
is ``load``'s.
"""
from __future__ import annotations

import re

from gateway.config._addresses import Addresses
from gateway.config._reader import (
    Errors,
    Table,
    boolean,
    choice,
    header_table,
    integer,
    nonempty_string,
    positive_duration,
    string,
    template,
)
from gateway.config.model import (
    Address,
    HealthCheckSettings,
    PeerSettings,
    QueueSettings,
    UpstreamSettings,
    UpstreamTLSSettings,
)
from gateway.config.units import parse_duration, show
from gateway.tls.client import check_files

UPSTREAM_KEYS = ("balance", "hash_key", "consistent", "two", "keepalive",
                 "keepalive_requests", "keepalive_timeout", "keepalive_time", "queue",
                 "servers", "health_check", "tls")
BALANCES = ("round_robin", "least_conn", "ip_hash", "hash", "random")
NO_BACKUP_BALANCES = ("ip_hash", "hash", "random")
NO_SLOW_START_BALANCES = ("ip_hash", "hash", "random")
PEER_KEYS = ("address", "weight", "max_fails", "fail_timeout", "max_conns", "backup",
             "down", "slow_start", "resolve")
QUEUE_KEYS = ("size", "timeout")
HEALTH_CHECK_KEYS = ("type", "uri", "grpc_service", "grpc_unimplemented", "interval",
                     "timeout", "fails", "passes", "status", "body", "headers")
HTTP_HEALTH_CHECK_KEYS = ("uri", "status", "body", "headers")
UPSTREAM_TLS_KEYS = ("verify", "ca", "server_name", "certificate", "key")

_UPSTREAM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_STATUS_RANGE = re.compile(r"(\d{3})(?:-(\d{3}))?")
_DEFAULT_UPSTREAM = UpstreamSettings(name="", servers=())


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


class UpstreamReader:
    """Reads ``[upstreams.NAME]`` tables, reporting into ``errors``."""

    def __init__(self, errors: Errors, addresses: Addresses):
        self.errors = errors
        self.addresses = addresses

    def upstream(self, name: str, path: str, value: object) -> UpstreamSettings:
        if not _UPSTREAM_NAME.fullmatch(name):
            self.errors.add(path, 'upstream names may use letters, digits, "_", "-" and '
                                  '"." only')
        t = Table(self.errors, path, value, UPSTREAM_KEYS)
        d = _DEFAULT_UPSTREAM
        balance = t.get("balance", d.balance, choice(*BALANCES))
        hash_key = t.get("hash_key", d.hash_key, nonempty_string)
        if hash_key is not None:
            template(self.errors, t.at("hash_key"), hash_key)
            if balance != "hash":
                t.error("hash_key", 'only allowed with balance = "hash"')
        elif balance == "hash" and not t.has("hash_key"):
            t.error("hash_key", 'required with balance = "hash"')
        consistent = t.get("consistent", d.consistent, boolean)
        if consistent:
            if balance != "hash":
                t.error("consistent", 'only allowed with balance = "hash"')
        two = t.get("two", d.two, boolean)
        if two:
            if balance != "random":
                t.error("two", 'only allowed with balance = "random"')
        pooling = {
            "keepalive": t.get("keepalive", d.keepalive, integer(0)),
            "keepalive_requests": t.get("keepalive_requests", d.keepalive_requests,
                                        integer(1)),
            "keepalive_timeout": t.get("keepalive_timeout", d.keepalive_timeout,
                                       parse_duration),
            "keepalive_time": t.get("keepalive_time", d.keepalive_time,
                                    positive_duration),
        }

        queue = None
        if t.has("queue"):
            queue = self.queue(t.at("queue"), t.data["queue"])
        health_check = None
        if t.has("health_check"):
            health_check = self.health_check(t.at("health_check"), t.data["health_check"])
        tls = None
        if t.has("tls"):
            tls = self.upstream_tls(t.at("tls"), t.data["tls"])

        peers = tuple(self.peer(p, item, balance)
                      for p, item in t.tables("servers", required=True))
        if t.has("servers") and isinstance(t.data["servers"], list) and not peers:
            t.error("servers", "at least one server is required")
        elif (peers and all(p.backup for p in peers)
              and balance not in NO_BACKUP_BALANCES):   # there: the backup error
            # nginx: "no servers in upstream" (ngx_http_upstream_init_round_robin)
            t.error("servers", "at least one server that is not a backup is required")
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
        t = Table(self.errors, path, value, PEER_KEYS)
        d = PeerSettings(address=Address(text=""))
        address = t.get("address", None, self.addresses.address, required=True)
        backup = t.get("backup", d.backup, boolean)
        if backup and balance in NO_BACKUP_BALANCES:
            t.error("backup", f'not allowed with balance = "{balance}"')
        slow_start = t.get("slow_start", d.slow_start, parse_duration)
        if slow_start > 0 and balance in NO_SLOW_START_BALANCES:
            # NGINX Plus: "cannot be used along with the hash, ip_hash, and random"
            t.error("slow_start", f'not allowed with balance = "{balance}"')
        resolve = t.get("resolve", d.resolve, boolean)
        # with an IP literal resolve changes nothing, as in nginx (gateway.upstream.resolve)
        if resolve and address is not None and address.is_unix:
            t.error("resolve", "not allowed with a unix: address")
        return PeerSettings(
            address=address,
            weight=t.get("weight", d.weight, integer(1)),
            max_fails=t.get("max_fails", d.max_fails, integer(0)),
            fail_timeout=t.get("fail_timeout", d.fail_timeout, parse_duration),
            max_conns=t.get("max_conns", d.max_conns, integer(0)),
            backup=backup,
            down=t.get("down", d.down, boolean),
            slow_start=slow_start,
            resolve=resolve,
        )

    def queue(self, path: str, value: object) -> QueueSettings:
        t = Table(self.errors, path, value, QUEUE_KEYS)
        d = QueueSettings()
        return QueueSettings(size=t.get("size", d.size, integer(1)),
                             timeout=t.get("timeout", d.timeout, positive_duration))

    def health_check(self, path: str, value: object) -> HealthCheckSettings:
        t = Table(self.errors, path, value, HEALTH_CHECK_KEYS)
        d = HealthCheckSettings()

        def uri(v: object) -> str:
            if not isinstance(v, str) or not v.startswith("/"):
                raise ValueError(f'must be a path starting with "/", got {show(v)}')
            return v

        settings = HealthCheckSettings(
            type=t.get("type", d.type, choice("http", "grpc", "tcp")),
            uri=t.get("uri", d.uri, uri),
            grpc_service=t.get("grpc_service", d.grpc_service, string),
            grpc_unimplemented=t.get("grpc_unimplemented", d.grpc_unimplemented,
                                     choice("healthy", "unhealthy")),
            interval=t.get("interval", d.interval, positive_duration),
            timeout=t.get("timeout", d.timeout, positive_duration),
            fails=t.get("fails", d.fails, integer(1)),
            passes=t.get("passes", d.passes, integer(1)),
            status=t.get("status", d.status, _health_status),
            body=t.get("body", d.body, nonempty_string),
            headers=header_table(t, "headers", templates=False),
        )
        # keys that mean nothing for the chosen type are mistakes, not silent no-ops
        if settings.type != "http":
            for key in HTTP_HEALTH_CHECK_KEYS:
                if t.has(key):
                    t.error(key, 'only allowed with type = "http"')
        if settings.type != "grpc" and settings.grpc_service:
            t.error("grpc_service", 'only allowed with type = "grpc"')
        if settings.type != "grpc" and t.has("grpc_unimplemented"):
            t.error("grpc_unimplemented", 'only allowed with type = "grpc"')
        return settings

    def upstream_tls(self, path: str, value: object) -> UpstreamTLSSettings:
        t = Table(self.errors, path, value, UPSTREAM_TLS_KEYS)
        d = UpstreamTLSSettings()

        def server_name(v: object) -> str | bool:
            if v is False:
                return False
            if not isinstance(v, str) or not v:
                raise ValueError(f"must be a host name or false, got {show(v)}")
            return v

        certificate = t.get("certificate", d.certificate, self.addresses.file_path)
        key = t.get("key", d.key, self.addresses.file_path)
        if t.has("certificate") != t.has("key"):
            t.error("key" if t.has("certificate") else "certificate",
                    "required with " + ("certificate" if t.has("certificate") else "key"))
        settings = UpstreamTLSSettings(
            verify=t.get("verify", d.verify, boolean),
            ca=t.get("ca", d.ca, self.addresses.file_path),
            server_name=t.get("server_name", d.server_name, server_name),
            certificate=certificate,
            key=key,
        )
        # unreadable or mismatched files are configuration errors (--check), not a
        # failure of the first request
        for key_name, message in check_files(settings):
            t.error(key_name, message)
        return settings
