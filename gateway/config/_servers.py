"""``[[servers]]`` tables → ``ServerSettings``: listen, names, limits, TLS, locations.

This module owns one virtual server's keys (``listen``, ``server_name``, ``default``,
the client limits and timeouts, ``tls``, ``http2``, the real-IP keys) and the checks
across servers and their locations: at most one ``default = true`` server per listen
description, servers sharing a listen description all with ``tls`` or all without, and
no two locations with the same path (``"^~ /x"`` and ``"/x"`` are one, as in nginx).
Each location's keys are ``_locations``'s; ``server_tls`` is shared with ``load``'s
``[[grpc_servers]]`` and reads the certificate files it names
(``gateway.tls._files.check_files``): unreadable, unparsable or mismatched
certificates and keys are errors at their key's path.
"""
from __future__ import annotations

import re

from gateway.config._addresses import Addresses
from gateway.config._locations import LocationReader, access_address
from gateway.config._reader import (
    Errors,
    Table,
    boolean,
    choice,
    header_name,
    integer,
    nonempty_string,
    positive_duration,
    positive_size,
    string,
)
from gateway.config.model import LocationSettings, ServerSettings, ServerTLSSettings
from gateway.config.units import parse_duration, parse_size, show
from gateway.tls._files import check_files

SERVER_KEYS = ("listen", "server_name", "default", "tls", "http2", "client_max_body_size",
               "client_header_timeout", "client_body_timeout", "keepalive_timeout",
               "keepalive_requests", "large_client_header_buffers", "real_ip_header",
               "set_real_ip_from", "locations")
SERVER_TLS_KEYS = ("certificate", "key", "protocols", "ciphers", "client_ca",
                   "verify_client")
TLS_PROTOCOLS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")

_DEFAULT_SERVER = ServerSettings(index=0, listen=(), locations=())


def _real_ip_source(value: object) -> str:
    """A ``set_real_ip_from`` entry: an address or CIDR (host bits are dropped, as
    nginx does after its warning) or ``"unix:"``. Unlike access rules there is no
    ``all``, and unlike nginx no host name (it would be resolved at load)."""
    if value != "all":
        try:
            return access_address(value, allow=True).network or "unix:"
        except ValueError:
            pass
    raise ValueError(f'must be an IPv4/IPv6 address, a CIDR or "unix:", got {show(value)}')


def _real_ip_header(value: object) -> str:
    """``real_ip_header``: a header name. nginx's ``proxy_protocol`` needs the PROXY
    protocol on ``listen``, which the gateway does not accept."""
    name = header_name(value)
    if name == "proxy_protocol":
        raise ValueError('"proxy_protocol" is not supported: listeners do not accept the '
                         "PROXY protocol; name the header your proxy sets, e.g. "
                         '"X-Forwarded-For"')
    return name


def _server_name(value: object) -> str:
    name = string(value)
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


class ServerReader:
    """Reads ``[[servers]]`` tables, reporting into ``errors``; ``locations`` reads
    each server's ``[[servers.locations]]``."""

    def __init__(self, errors: Errors, addresses: Addresses, locations: LocationReader):
        self.errors = errors
        self.addresses = addresses
        self.locations = locations

    def server(self, index: int, path: str, value: object) -> ServerSettings:
        t = Table(self.errors, path, value, SERVER_KEYS)
        d = _DEFAULT_SERVER
        listen = t.list("listen", self.addresses.listen, required=True)
        if t.has("listen") and t.data["listen"] == []:
            t.error("listen", "must list at least one endpoint description")
        for i, description in enumerate(listen):
            if description in listen[:i]:
                t.error("listen", f"{show(description)} is listed twice")
        server_name = t.list("server_name", _server_name)
        default = t.get("default", d.default, boolean)
        limits = {
            "client_max_body_size": t.get("client_max_body_size", d.client_max_body_size,
                                          parse_size),
            "client_header_timeout": t.get("client_header_timeout",
                                           d.client_header_timeout, positive_duration),
            "client_body_timeout": t.get("client_body_timeout", d.client_body_timeout,
                                         positive_duration),
            "keepalive_timeout": t.get("keepalive_timeout", d.keepalive_timeout,
                                       parse_duration),
            "keepalive_requests": t.get("keepalive_requests", d.keepalive_requests,
                                        integer(1)),
            "large_client_header_buffers": t.get("large_client_header_buffers",
                                                 d.large_client_header_buffers,
                                                 positive_size),
        }
        tls = None
        if t.has("tls"):
            tls = self.server_tls(t.at("tls"), t.data["tls"])
        http2 = t.get("http2", d.http2, boolean)
        real_ip_header = t.get("real_ip_header", d.real_ip_header, _real_ip_header)
        set_real_ip_from = t.list("set_real_ip_from", _real_ip_source)

        locations = tuple(self.locations.location(p, item)
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

    def check_listener_tls(self, servers: tuple[ServerSettings, ...]) -> None:
        """Servers sharing a listen description are all TLS or all cleartext: one
        socket cannot be both (nginx's ``listen … ssl`` is per address, too)."""
        first: dict[str, ServerSettings] = {}
        for server in servers:
            for description in server.listen:
                other = first.setdefault(description, server)
                if (other.tls is None) != (server.tls is None):
                    self.errors.add(
                        f"servers[{server.index}].listen",
                        f"{show(description)} is shared with servers[{other.index}], "
                        f"which has {'no ' if other.tls is None else ''}tls: all servers "
                        "on one listen description need tls, or none")

    def check_duplicate_locations(self, t: Table, locations: tuple[LocationSettings, ...]
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
        t = Table(self.errors, path, value, SERVER_TLS_KEYS)
        d = ServerTLSSettings(certificate="", key="")
        protocols = t.list("protocols", choice(*TLS_PROTOCOLS), default=d.protocols,
                           single=False)
        if t.has("protocols") and t.data["protocols"] == []:
            t.error("protocols", "must list at least one protocol")
        client_ca = t.get("client_ca", d.client_ca, self.addresses.file_path)
        verify_client = t.get("verify_client", d.verify_client,
                              choice("off", "optional", "on"))
        if verify_client != "off" and client_ca is None:
            t.error("verify_client", f'"{verify_client}" needs client_ca')
        settings = ServerTLSSettings(
            certificate=t.get("certificate", None, self.addresses.file_path, required=True),
            key=t.get("key", None, self.addresses.file_path, required=True),
            protocols=protocols or d.protocols,
            ciphers=t.get("ciphers", d.ciphers, nonempty_string),
            client_ca=client_ca,
            verify_client=verify_client,
        )
        if settings.certificate is not None and settings.key is not None:
            # the files are read now, so --check and a reload report unreadable,
            # unparsable or mismatched ones with their key's path
            for problem in check_files(settings):
                t.error(problem.key, str(problem))
        return settings
