"""``resolve = true`` servers: group membership that follows DNS without a reload.

This module owns re-resolving the host name of each ``resolve = true`` server entry
and turning the answers into peers, a port of nginx's (1.27.3+, formerly NGINX Plus)
``ngx_http_upstream_zone_resolve_timer``/``ngx_http_upstream_zone_resolve_handler``:

- ``interpret`` (pure): the A and AAAA answers of one lookup → the addresses, the TTL,
  or why there are none. Its rules are nginx's resolver's (``ngx_resolver_process_a``):
  an error on either query (SERVFAIL, REFUSED, FORMERR, timeout…) fails the whole
  lookup; NXDOMAIN, or no A and no AAAA record at all, means the name has *no*
  addresses ("Host not found"); otherwise the addresses are the A then AAAA records
  and the TTL is the smallest TTL of the answer records (CNAMEs included).
- ``ServerResolver``: one loop per server entry on the injected clock. A failed lookup
  keeps the last known peers and tries again after ``resolver_valid`` (nginx: after
  ``resolver_timeout``, also 30s by default); "Host not found" removes the entry's
  peers, as nginx does (``ctx->naddrs = 0``), and asks again after ``resolver_valid``;
  a good answer is applied and asked again after ``min(TTL, resolver_valid)``, at least
  one second after the answer (nginx waits ``valid - now + 1`` seconds).
- ``ResolveService``: builds the DNS client (``[gateway].resolver``, else the name
  servers of ``/etc/resolv.conf`` after ``/etc/hosts``) and runs every loop between
  ``startService`` and ``stopService``. The first lookups go out at start.

Applying an answer (new addresses become peers with the entry's parameters, vanished
ones leave, kept ones keep their state) is ``UpstreamGroup.update_resolved``'s; closing
pooled connections of removed peers and telling health checks is done by whoever
subscribes to ``group.membership_observers`` (``gateway.service``).
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Optional, Sequence

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.names import client, dns, error, hosts
from twisted.names import resolve as names_resolve
from twisted.python.failure import Failure

from gateway.config.model import Address, GatewaySettings, PeerSettings

log = Logger()

#: seconds between retransmissions of one query; the lookup fails after the last
#: (30s in all, nginx's default ``resolver_timeout``)
LOOKUP_TIMEOUT = (1, 3, 11, 15)
#: an answer is asked again no sooner than this after it came (nginx adds one second
#: to the TTL; a TTL of 0 would otherwise mean a query loop)
MIN_INTERVAL = 1.0
#: how long ``stopService`` waits for lookups in flight before giving up on them
STOP_WAIT = 2.0

RESOLV_CONF = "/etc/resolv.conf"
HOSTS_FILE = "/etc/hosts"

# nginx's ngx_resolver_strerror codes and texts, for the log line
_TIMEDOUT = (110, "Operation timed out")
_ERRORS = (
    (error.DNSFormatError, (1, "Format error")),
    (error.DNSServerError, (2, "Server failure")),
    (error.DNSNameError, (3, "Host not found")),
    (error.DNSNotImplementedError, (4, "Unimplemented")),
    (error.DNSQueryRefusedError, (5, "Operation refused")),
    (defer.TimeoutError, _TIMEDOUT),
    (error.DNSQueryTimeoutError, _TIMEDOUT),
)
HOST_NOT_FOUND = "3: Host not found"


def is_ip(host: Optional[str]) -> bool:
    try:
        ipaddress.ip_address(host or "")
    except ValueError:
        return False
    return True


def resolves(settings: PeerSettings) -> bool:
    """Does this server entry get its peers from DNS? ``resolve = true`` with a host
    name; with an IP literal the flag changes nothing (as in nginx)."""
    return settings.resolve and not settings.address.is_unix and not is_ip(
        settings.address.host)


def peer_address(ip: str, port: int) -> Address:
    """A resolved address as a peer address: ``ip:port`` or ``[v6]:port``, as
    nginx's ``ngx_sock_ntop`` names resolved peers."""
    text = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    return Address(text=text, host=ip, port=port)


@dataclass(frozen=True)
class Resolution:
    """What one lookup (A and AAAA) says about a name.

    ``addresses`` is None when the lookup failed (keep what is known), an empty tuple
    when the name has no address (``error`` is then "3: Host not found"). ``ttl`` is
    the smallest TTL of the answer records, None when there were none.
    """

    addresses: Optional[tuple[str, ...]]
    ttl: Optional[float] = None
    error: Optional[str] = None


def describe(failure: Failure) -> str:
    """A failed query in nginx's words: ``"2: Server failure"``."""
    for kind, (code, text) in _ERRORS:
        if failure.check(kind):
            return f"{code}: {text}"
    return f"0: {failure.getErrorMessage() or failure.type.__name__}"


def _record_ip(record: dns.RRHeader) -> Optional[str]:
    if record.type == dns.A:
        return record.payload.dottedQuad()
    if record.type == dns.AAAA:
        packed = record.payload.address
        return str(ipaddress.IPv6Address(socket.inet_ntop(socket.AF_INET6, packed)))
    return None


def interpret(results: Sequence[tuple[bool, object]]) -> Resolution:
    """The A and AAAA lookups' outcomes (``DeferredList`` pairs: success flag, then
    ``(answers, authority, additional)`` or a ``Failure``) → one ``Resolution``."""
    errors, not_found = [], False
    addresses: list[str] = []
    ttl: Optional[float] = None
    for ok, value in results:
        if not ok:
            if value.check(error.DNSNameError):
                not_found = True
            else:
                errors.append(describe(value))
            continue
        for record in value[0]:
            ttl = record.ttl if ttl is None else min(ttl, record.ttl)
            ip = _record_ip(record)
            if ip is not None and ip not in addresses:
                addresses.append(ip)
    if errors:
        return Resolution(None, error=errors[-1])
    if not_found or not addresses:
        return Resolution((), error=HOST_NOT_FOUND)
    return Resolution(tuple(addresses), ttl=float(ttl))


class ServerResolver:
    """The loop that keeps one ``resolve = true`` entry's peers in step with DNS.

    ``resolver`` is a ``twisted.names`` ``IResolver`` (tests pass a fake); ``valid``
    is ``resolver_valid``. At most one lookup is in flight; the next is scheduled when
    it ends, so a slow DNS server never piles up queries.
    """

    def __init__(self, group, settings: PeerSettings, resolver, clock: IReactorTime,
                 valid: float):
        self.group = group
        self.settings = settings
        self.host: str = settings.address.host
        self.port: int = settings.address.port
        self.resolver = resolver
        self.clock = clock
        self.valid = valid
        self.running = False
        #: the last lookup's ``Resolution`` (None before the first answer)
        self.last: Optional[Resolution] = None
        self._call: Optional[IDelayedCall] = None
        self._lookup: Optional[defer.Deferred] = None

    def __repr__(self) -> str:
        return f"<ServerResolver {self.group.name} {self.settings.address.text}>"

    def start(self) -> None:
        """Start the loop with a lookup now."""
        if self.running:
            return
        self.running = True
        self.resolve()

    def stop(self) -> Optional[defer.Deferred]:
        """Stop the loop. A lookup in flight is abandoned (its answer is ignored);
        returns a Deferred that fires when it has ended, or None when none is."""
        self.running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._lookup is None:
            return None
        ended = defer.Deferred()
        self._lookup.addBoth(lambda _: ended.called or ended.callback(None))
        return ended

    def resolve(self) -> None:
        """Ask for the A and AAAA records of the host now (unless a lookup is in
        flight: its end schedules the next)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._lookup is not None:
            return
        lookups = [
            defer.maybeDeferred(self.resolver.lookupAddress, self.host,
                                timeout=LOOKUP_TIMEOUT),
            defer.maybeDeferred(self.resolver.lookupIPV6Address, self.host,
                                timeout=LOOKUP_TIMEOUT),
        ]
        self._lookup = defer.DeferredList(lookups, consumeErrors=True)
        self._lookup.addCallback(self._answered)
        self._lookup.addErrback(self._bug)

    def _answered(self, results) -> None:
        self._lookup = None
        if not self.running:
            return
        self.apply(interpret(results))

    def apply(self, resolution: Resolution) -> None:
        """Apply one lookup's outcome to the group and schedule the next lookup."""
        self.last = resolution
        if resolution.addresses is None:
            log.error(
                "{host} could not be resolved ({error}) in upstream {upstream};"
                " keeping {count} known address(es)",
                host=self.host, error=resolution.error, upstream=self.group.name,
                count=len(self.group.resolved_peers(self.settings)),
            )
            self._schedule(self.valid)
            return
        if not resolution.addresses:
            log.error(
                "{host} could not be resolved ({error}) in upstream {upstream}",
                host=self.host, error=resolution.error, upstream=self.group.name,
            )
        addresses = [peer_address(ip, self.port) for ip in resolution.addresses]
        added, removed = self.group.update_resolved(self.settings, addresses)
        if added or removed:
            log.info(
                "upstream {upstream}: {host} resolved to {addresses}"
                " (added {added}, removed {removed})",
                upstream=self.group.name, host=self.host,
                addresses=[a.text for a in addresses],
                added=[p.name for p in added], removed=[p.name for p in removed],
            )
        if resolution.ttl is None:
            self._schedule(self.valid)
        else:
            self._schedule(min(max(resolution.ttl, MIN_INTERVAL), self.valid))

    def _schedule(self, delay: float) -> None:
        if self.running:
            self._call = self.clock.callLater(delay, self.resolve)

    def _bug(self, failure: Failure) -> None:
        # a bug in applying an answer must not end the loop for good
        self._lookup = None
        log.failure("resolving {host} for upstream {upstream}", failure,
                    host=self.host, upstream=self.group.name)
        self._schedule(self.valid)


def system_nameservers(path: str = RESOLV_CONF) -> list[tuple[str, int]]:
    """The ``nameserver`` lines of a ``resolv.conf`` file, as ``(ip, 53)``;
    ``127.0.0.1`` when there are none or the file is missing (as Twisted and libc)."""
    servers = []
    try:
        with open(path, encoding="latin-1") as f:
            for line in f:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver" and is_ip(words[1]):
                    servers.append((words[1], dns.PORT))
    except OSError:
        pass
    return servers or [("127.0.0.1", dns.PORT)]


def configured_nameservers(resolver: Sequence[str]) -> list[tuple[str, int]]:
    """``[gateway].resolver`` entries (``"ip[:port]"``, ``"[v6][:port]"``, validated
    by the loader; the port defaults to 53) as ``(ip, port)``."""
    servers = []
    for text in resolver:
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port = rest[1:] if rest else ""
        else:
            host, _, port = text.partition(":")
        servers.append((host, int(port) if port else dns.PORT))
    return servers


def make_resolver(settings: GatewaySettings, reactor):
    """The DNS client for ``resolve = true`` servers.

    With ``[gateway].resolver`` only those servers are asked, as nginx's ``resolver``.
    Without it, ``/etc/hosts`` first, then the name servers of ``/etc/resolv.conf``
    (read once, at start). No cache: each loop decides itself when to ask again.
    """
    if settings.resolver:
        return client.Resolver(servers=configured_nameservers(settings.resolver),
                               timeout=LOOKUP_TIMEOUT, reactor=reactor)
    dns_client = client.Resolver(servers=system_nameservers(), timeout=LOOKUP_TIMEOUT,
                                 reactor=reactor)
    return names_resolve.ResolverChain([hosts.Resolver(HOSTS_FILE.encode()), dns_client])


class ResolveService(Service):
    """Every ``resolve = true`` loop of one configuration.

    ``resolver`` overrides the DNS client built from ``settings`` (tests). Nothing is
    built when no group has a ``resolve = true`` server.
    """

    def __init__(self, manager, settings: GatewaySettings, reactor, resolver=None):
        self.manager = manager
        self.settings = settings
        self.reactor = reactor
        self.resolver = resolver
        self.loops: list[ServerResolver] = []

    def startService(self) -> None:
        super().startService()
        entries = [(group, s) for group in self.manager for s in group.resolve_servers]
        if not entries:
            return
        if self.resolver is None:
            self.resolver = make_resolver(self.settings, self.reactor)
        self.loops = [
            ServerResolver(group, s, self.resolver, self.reactor,
                           self.settings.resolver_valid)
            for group, s in entries
        ]
        for loop in self.loops:
            loop.start()

    def stopService(self):
        super().stopService()
        loops, self.loops = self.loops, []
        pending = [d for d in (loop.stop() for loop in loops) if d is not None]
        if not pending:
            return None
        # Lookups in flight hold a UDP port and a retransmit timer until they end;
        # wait for them (a responsive server answers in milliseconds), but not long.
        done = defer.Deferred()

        def finish(_=None):
            if timer.active():
                timer.cancel()
            if not done.called:
                done.callback(None)

        timer = self.reactor.callLater(STOP_WAIT, finish)
        defer.DeferredList(pending).addBoth(finish)
        return done


__all__ = [
    "HOST_NOT_FOUND", "LOOKUP_TIMEOUT", "ResolveService", "Resolution", "ServerResolver",
    "interpret", "make_resolver", "peer_address", "resolves",
]
