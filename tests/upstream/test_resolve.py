"""``resolve = true``: answers → addresses, the re-resolution schedule, and group
membership that follows DNS (on a ``task.Clock`` with a scripted resolver)."""
from __future__ import annotations

import tomllib

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.names import client, dns, error, hosts
from twisted.python.failure import Failure

from gateway.config import parse_config
from gateway.config.model import Address, GatewaySettings, PeerSettings
from gateway.service import GatewayService
from gateway.upstream import Outcome, UpstreamGroup, UpstreamManager
from gateway.upstream.resolve import (
    HOST_NOT_FOUND, LOOKUP_TIMEOUT, ResolveService, Resolution, ServerResolver,
    configured_nameservers, interpret, make_resolver, peer_address, resolves,
    system_nameservers,
)

from tests.upstream.helpers import sequence, serve, server, upstream

NAME = b"app.test"


def a(ip: str, ttl: int = 60) -> dns.RRHeader:
    return dns.RRHeader(NAME, dns.A, ttl=ttl, payload=dns.Record_A(ip, ttl))


def aaaa(ip: str, ttl: int = 60) -> dns.RRHeader:
    return dns.RRHeader(NAME, dns.AAAA, ttl=ttl, payload=dns.Record_AAAA(ip, ttl))


def cname(target: bytes, ttl: int) -> dns.RRHeader:
    return dns.RRHeader(NAME, dns.CNAME, ttl=ttl, payload=dns.Record_CNAME(target, ttl))


def answered(*records) -> tuple[bool, object]:
    return (True, (list(records), [], []))


def failed(exc: Exception) -> tuple[bool, object]:
    return (False, Failure(exc))


def resolving(address: str = "app.test:8080", **options) -> PeerSettings:
    host, _, port = address.rpartition(":")
    return PeerSettings(address=Address(text=address, host=host, port=int(port)),
                        resolve=True, **options)


def addresses(*ips: str, port: int = 8080) -> list[Address]:
    return [peer_address(ip, port) for ip in ips]


class FakeResolver:
    """Records each A/AAAA lookup; the test answers the pending pair."""

    def __init__(self):
        self.lookups: list[tuple[str, str, tuple, defer.Deferred]] = []

    def lookupAddress(self, name, timeout=None):
        return self._lookup("A", name, timeout)

    def lookupIPV6Address(self, name, timeout=None):
        return self._lookup("AAAA", name, timeout)

    def _lookup(self, kind, name, timeout):
        d = defer.Deferred()
        self.lookups.append((kind, name, timeout, d))
        return d

    @property
    def pending(self) -> list[tuple[str, str]]:
        return [(kind, name) for kind, name, _, d in self.lookups if not d.called]

    def answer(self, a_records=(), aaaa_records=(), a_error=None, aaaa_error=None):
        """Answer the oldest pending A and AAAA lookups."""
        for kind, records, exc in (("A", a_records, a_error),
                                   ("AAAA", aaaa_records, aaaa_error)):
            d = next(d for k, _, _, d in self.lookups if k == kind and not d.called)
            if exc is not None:
                d.errback(exc)
            else:
                d.callback((list(records), [], []))


# -- answers → addresses (nginx's ngx_resolver_process_a rules) -----------------------


def test_addresses_are_a_then_aaaa_and_ttl_is_the_smallest_answer_ttl():
    """Both families become peers; the TTL is the minimum over every answer record,
    the CNAME of the chain included (nginx's rn->ttl)."""
    result = interpret([
        answered(cname(b"real.test", 40), a("10.0.0.1", 300), a("10.0.0.2", 120)),
        answered(aaaa("2001:db8:0:0::1", 90)),
    ])
    assert result == Resolution(("10.0.0.1", "10.0.0.2", "2001:db8::1"), ttl=40.0)


def test_duplicate_records_give_one_address():
    result = interpret([answered(a("10.0.0.1"), a("10.0.0.1", 30)), answered()])
    assert result == Resolution(("10.0.0.1",), ttl=30.0)


def test_nxdomain_means_the_name_has_no_address():
    """NXDOMAIN is an answer, not a failure: the name has no peers (nginx sets
    ``naddrs = 0`` and removes them)."""
    result = interpret([failed(error.DNSNameError()), failed(error.DNSNameError())])
    assert result == Resolution((), error=HOST_NOT_FOUND)


def test_no_a_and_no_aaaa_record_is_host_not_found():
    assert interpret([answered(), answered()]) == Resolution((), error=HOST_NOT_FOUND)


def test_only_ipv4_records_is_an_answer():
    """AAAA answered with no data (NOERROR): the A records alone are the answer."""
    assert interpret([answered(a("10.0.0.1", 20)), answered()]) == Resolution(
        ("10.0.0.1",), ttl=20.0)


@pytest.mark.parametrize("exc, text", [
    (error.DNSServerError(), "2: Server failure"),
    (error.DNSQueryRefusedError(), "5: Operation refused"),
    (error.DNSFormatError(), "1: Format error"),
    (defer.TimeoutError(), "110: Operation timed out"),
])
def test_an_error_on_either_query_fails_the_whole_lookup(exc, text):
    """As nginx: an error on the AAAA query fails the lookup even when A answered, so
    the last known peers stay."""
    assert interpret([answered(a("10.0.0.1")), failed(exc)]) == Resolution(None, error=text)


def test_peer_names_are_ip_port_with_brackets_for_ipv6():
    assert peer_address("10.0.0.1", 80) == Address("10.0.0.1:80", "10.0.0.1", 80)
    assert peer_address("2001:db8::1", 443) == Address("[2001:db8::1]:443",
                                                       "2001:db8::1", 443)


def test_resolve_with_an_ip_literal_is_a_static_server():
    """nginx ignores ``resolve`` when the address is already an IP."""
    assert resolves(resolving("app.test:80"))
    assert not resolves(resolving("127.0.0.2:80"))
    assert not resolves(PeerSettings(address=Address("[::1]:80", "::1", 80), resolve=True))
    assert not resolves(server("app.test"))


# -- the group: membership from DNS ----------------------------------------------------


def test_a_resolve_server_has_no_peer_before_the_first_answer():
    """The group is valid with zero peers; a request then finds no live upstream."""
    group = UpstreamGroup(upstream(resolving()), Clock())
    assert group.peers == [] and group.backups == []
    assert group.resolve_servers == (resolving(),)
    attempts = group.attempts()
    assert attempts.tries == 0
    assert group.acquire(attempts) is None


def test_static_servers_serve_while_the_resolve_server_is_unresolved():
    group = UpstreamGroup(upstream(server("s"), resolving()), Clock())
    assert [p.name for p in group.peers] == ["s"]
    assert group.single
    assert sequence(group, 2) == ["s", "s"]


def test_only_backup_servers_is_still_an_error():
    with pytest.raises(ValueError, match="no servers in upstream 'app'"):
        UpstreamGroup(upstream(resolving(backup=True)), Clock())


def test_each_address_becomes_a_peer_with_the_entry_parameters():
    entry = resolving(weight=3, max_fails=2, fail_timeout=5.0, max_conns=7)
    group = UpstreamGroup(upstream(entry), Clock())

    added, removed = group.update_resolved(entry, addresses("10.0.0.1", "2001:db8::1"))

    assert removed == []
    assert added == group.peers
    assert [p.name for p in group.peers] == ["10.0.0.1:8080", "[2001:db8::1]:8080"]
    assert [p.address.host for p in group.peers] == ["10.0.0.1", "2001:db8::1"]
    for peer in group.peers:
        assert peer.settings is entry       # the host name stays known (TLS names)
        assert (peer.weight, peer.effective_weight, peer.max_fails, peer.fail_timeout,
                peer.max_conns) == (3, 3, 2, 5.0, 7)
    assert not group.single
    assert group.attempts().tries == 2


def test_smooth_round_robin_runs_over_resolved_peers():
    entry = resolving()
    group = UpstreamGroup(upstream(server("s", weight=2), entry), Clock())
    group.update_resolved(entry, addresses("10.0.0.1"))
    assert sequence(group, 6) == ["s", "10.0.0.1:8080", "s"] * 2


def test_peers_that_stay_keep_their_state_and_gone_ones_leave():
    entry = resolving()
    group = UpstreamGroup(upstream(entry), Clock())
    group.update_resolved(entry, addresses("10.0.0.1", "10.0.0.2"))
    kept, gone = group.peers
    kept.fails, kept.current_weight, kept.effective_weight, kept.healthy = 1, 3, 0, False
    primary_list = group.peers

    added, removed = group.update_resolved(entry, addresses("10.0.0.3", "10.0.0.1"))

    assert removed == [gone]
    assert [p.name for p in added] == ["10.0.0.3:8080"]
    assert group.peers is primary_list          # changed in place: balancers keep it
    assert group.peers == [kept, added[0]]
    assert (kept.fails, kept.current_weight, kept.effective_weight, kept.healthy) == (
        1, 3, 0, False)
    assert group.resolved_peers(entry) == [kept, added[0]]


def test_the_same_answer_changes_nothing_and_notifies_nobody():
    entry = resolving()
    group = UpstreamGroup(upstream(entry), Clock())
    events = []
    group.membership_observers.append(lambda added, removed: events.append(
        ([p.name for p in added], [p.name for p in removed])))
    group.update_resolved(entry, addresses("10.0.0.1"))
    assert group.update_resolved(entry, addresses("10.0.0.1")) == ([], [])
    group.update_resolved(entry, [])
    assert events == [(["10.0.0.1:8080"], []), ([], ["10.0.0.1:8080"])]
    assert group.peers == []


def test_single_follows_membership():
    """nginx's ``ngx_http_upstream_zone_set_single``: one peer and no backup."""
    entry = resolving()
    group = UpstreamGroup(upstream(entry), Clock())
    group.update_resolved(entry, addresses("10.0.0.1"))
    assert group.single
    group.update_resolved(entry, addresses("10.0.0.1", "10.0.0.2"))
    assert not group.single
    group.update_resolved(entry, addresses("10.0.0.2"))
    assert group.single and [p.name for p in group.peers] == ["10.0.0.2:8080"]


def test_a_backup_resolve_server_fills_the_backup_tier():
    entry = resolving("backup.test:9000", backup=True)
    group = UpstreamGroup(upstream(server("p", max_fails=1), entry), Clock())
    group.update_resolved(entry, addresses("10.0.1.1", port=9000))
    assert [p.name for p in group.backups] == ["10.0.1.1:9000"]
    assert not group.single
    attempts = group.attempts()
    lease = group.acquire(attempts)
    assert lease.peer.name == "p"
    lease.release(Outcome.FAILED)
    assert group.acquire(attempts).peer.name == "10.0.1.1:9000"


def test_a_lease_on_a_removed_peer_is_released_normally():
    entry = resolving()
    group = UpstreamGroup(upstream(entry), Clock())
    group.update_resolved(entry, addresses("10.0.0.1", "10.0.0.2"))
    lease = group.acquire(group.attempts())
    peer = lease.peer
    assert peer.conns == 1

    group.update_resolved(entry, [])
    lease.release(Outcome.OK)

    assert peer.conns == 0 and peer.requests == 1
    assert serve(group) is None


# -- the loop: when to ask again ------------------------------------------------------


def make_loop(entry=None, valid=30.0, static=()):
    entry = entry or resolving()
    clock = Clock()
    group = UpstreamGroup(upstream(*static, entry), clock)
    resolver = FakeResolver()
    loop = ServerResolver(group, entry, resolver, clock, valid)
    return loop, group, resolver, clock


def names(group):
    return [p.name for p in group.peers]


def test_the_first_lookup_goes_out_at_start():
    loop, group, resolver, clock = make_loop()
    loop.start()
    assert resolver.pending == [("A", "app.test"), ("AAAA", "app.test")]
    assert [t for _, _, t, _ in resolver.lookups] == [LOOKUP_TIMEOUT, LOOKUP_TIMEOUT]
    resolver.answer([a("10.0.0.1"), a("10.0.0.2")])
    assert names(group) == ["10.0.0.1:8080", "10.0.0.2:8080"]


def test_a_short_ttl_is_honoured():
    loop, group, resolver, clock = make_loop(valid=30.0)
    loop.start()
    resolver.answer([a("10.0.0.1", ttl=5)])
    clock.advance(4.9)
    assert resolver.pending == []
    clock.advance(0.1)
    assert resolver.pending == [("A", "app.test"), ("AAAA", "app.test")]


def test_resolver_valid_caps_a_long_ttl():
    loop, group, resolver, clock = make_loop(valid=30.0)
    loop.start()
    resolver.answer([a("10.0.0.1", ttl=3600)])
    clock.advance(29.9)
    assert resolver.pending == []
    clock.advance(0.1)
    assert len(resolver.pending) == 2


def test_a_zero_ttl_is_asked_again_after_one_second():
    loop, group, resolver, clock = make_loop()
    loop.start()
    resolver.answer([a("10.0.0.1", ttl=0)])
    clock.advance(0.99)
    assert resolver.pending == []
    clock.advance(0.01)
    assert len(resolver.pending) == 2


def test_membership_follows_successive_answers():
    loop, group, resolver, clock = make_loop(valid=10.0)
    loop.start()
    resolver.answer([a("10.0.0.1"), a("10.0.0.2")])
    first = group.peers[0]
    clock.advance(10)
    resolver.answer([a("10.0.0.1")], [aaaa("::1")])
    assert names(group) == ["10.0.0.1:8080", "[::1]:8080"]
    assert group.peers[0] is first


def test_a_failed_lookup_keeps_the_last_known_peers():
    """SERVFAIL, timeouts, refusals: nothing changes, nginx's error is logged, and the
    name is asked again after ``resolver_valid``."""
    loop, group, resolver, clock = make_loop(valid=20.0)
    loop.start()
    resolver.answer([a("10.0.0.1", ttl=5)])
    before = list(group.peers)
    clock.advance(5)
    with capturedLogs() as events:
        resolver.answer(a_error=error.DNSServerError(), aaaa_error=defer.TimeoutError())
    assert [formatEvent(e) for e in events] == [
        "app.test could not be resolved (110: Operation timed out) in upstream app;"
        " keeping 1 known address(es)"]
    assert events[0]["log_level"] is LogLevel.error
    assert group.peers == before
    assert loop.last == Resolution(None, error="110: Operation timed out")
    clock.advance(19.9)
    assert resolver.pending == []
    clock.advance(0.1)
    assert len(resolver.pending) == 2


def test_nxdomain_removes_the_peers_like_nginx():
    loop, group, resolver, clock = make_loop(valid=15.0, static=[server("s")])
    loop.start()
    resolver.answer([a("10.0.0.1")])
    assert names(group) == ["s", "10.0.0.1:8080"]
    clock.advance(15)
    resolver.answer(a_error=error.DNSNameError(), aaaa_error=error.DNSNameError())
    assert names(group) == ["s"]
    assert group.single
    clock.advance(15)
    resolver.answer([a("10.0.0.9")])
    assert names(group) == ["s", "10.0.0.9:8080"]


def test_one_lookup_at_a_time():
    """A lookup slower than the interval is not overlapped by the next one."""
    loop, group, resolver, clock = make_loop(valid=1.0)
    loop.start()
    clock.advance(100)
    loop.resolve()
    assert len(resolver.lookups) == 2
    resolver.answer([a("10.0.0.1", ttl=0)])
    clock.advance(1)
    assert len(resolver.lookups) == 4


def test_stop_cancels_the_timer_and_ignores_a_late_answer():
    loop, group, resolver, clock = make_loop()
    loop.start()
    resolver.answer([a("10.0.0.1")])
    assert clock.getDelayedCalls()
    assert loop.stop() is None
    assert clock.getDelayedCalls() == []

    loop.start()
    ended = loop.stop()
    assert not ended.called
    resolver.answer([a("10.0.0.2")])
    assert ended.called
    assert names(group) == ["10.0.0.1:8080"]
    assert clock.getDelayedCalls() == []


# -- the service ----------------------------------------------------------------------


def test_the_service_runs_one_loop_per_resolve_server_of_every_group():
    clock = Clock()
    manager = UpstreamManager({
        "app": upstream(resolving("one.test:80"), server("s"), resolving("two.test:81")),
        "other": upstream(server("t"), name="other"),
    }, clock)
    resolver = FakeResolver()
    service = ResolveService(manager, GatewaySettings(resolver_valid=7.0), clock,
                             resolver=resolver)

    service.startService()

    assert [(loop.group.name, loop.settings.address.text, loop.valid)
            for loop in service.loops] == [("app", "one.test:80", 7.0),
                                           ("app", "two.test:81", 7.0)]
    assert resolver.pending == [("A", "one.test"), ("AAAA", "one.test"),
                                ("A", "two.test"), ("AAAA", "two.test")]
    resolver.answer([a("10.0.0.1")])
    resolver.answer([a("10.0.0.2")])
    assert [p.name for p in manager.group("app").peers] == [
        "s", "10.0.0.1:80", "10.0.0.2:81"]

    assert service.stopService() is None
    assert clock.getDelayedCalls() == []


def test_the_service_waits_briefly_for_lookups_in_flight_at_stop():
    clock = Clock()
    manager = UpstreamManager({"app": upstream(resolving())}, clock)
    resolver = FakeResolver()
    service = ResolveService(manager, GatewaySettings(), clock, resolver=resolver)
    service.startService()

    stopped = service.stopService()
    assert not stopped.called
    clock.advance(2)            # the DNS server never answers: stop anyway
    assert stopped.called
    assert clock.getDelayedCalls() == []


def test_without_resolve_servers_the_service_builds_nothing():
    clock = Clock()
    manager = UpstreamManager({"app": upstream(server("s"))}, clock)
    service = ResolveService(manager, GatewaySettings(resolver=("127.0.0.1:53",)), clock)
    service.startService()
    assert service.resolver is None and service.loops == []
    service.stopService()


def test_resolver_addresses_are_parsed_for_the_dns_client():
    assert configured_nameservers(
        ("127.0.0.1:5353", "[::1]:5300", "10.0.0.53", "[2001:db8::53]")) == [
        ("127.0.0.1", 5353), ("::1", 5300), ("10.0.0.53", 53), ("2001:db8::53", 53)]


def test_system_name_servers_come_from_resolv_conf(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch example.com\nnameserver 10.0.0.53\n"
                    "nameserver ::1\nnameserver bogus\noptions ndots:2\n")
    assert system_nameservers(str(conf)) == [("10.0.0.53", 53), ("::1", 53)]
    assert system_nameservers(str(tmp_path / "missing")) == [("127.0.0.1", 53)]


# -- the wiring in GatewayService ------------------------------------------------------


def test_gateway_service_starts_resolvers_and_follows_membership_changes():
    """The service runs the loops; a change drops the idle pooled connections of a
    peer that left and gives new peers health-check loops."""
    config = parse_config(tomllib.loads("""
        [gateway]
        access_log = false
        [upstreams.app]
        servers = [{ address = "app.test:8080", resolve = true }]
        health_check = { type = "tcp", interval = "5s" }
        [[servers]]
        listen = ["tcp:0:interface=127.0.0.1"]
        locations = [{ path = "/", proxy_pass = "http://app" }]
    """), "/tmp/site.toml")
    reactor = MemoryReactorClock()
    service = GatewayService(config, reactor)
    resolver = service.resolvers.resolver = FakeResolver()
    closed = []

    class Idle:
        reusable, requests, created_at = True, 0, 0.0

        def _enter_pool(self, dropped, deadline):
            pass

        def _leave_pool(self):
            pass

        def close(self):
            closed.append(self)

    service.startService()
    assert resolver.pending == [("A", "app.test"), ("AAAA", "app.test")]
    resolver.answer([a("10.0.0.1"), a("10.0.0.2")])
    group = service.manager.group("app")
    checker = service.health_checkers["app"]
    assert set(checker.checks) == set(group.peers)
    pool = service.pools["app"]
    idle = Idle()
    assert pool.put("10.0.0.1:8080", idle)

    reactor.advance(60)
    resolver.answer([a("10.0.0.2"), a("10.0.0.3")])

    assert [p.name for p in group.peers] == ["10.0.0.2:8080", "10.0.0.3:8080"]
    assert set(checker.checks) == set(group.peers)
    assert closed == [idle] and len(pool) == 0
    service.stopService()


def test_the_dns_client_asks_only_the_configured_resolvers():
    """With ``[gateway].resolver`` nothing else is asked (no /etc/hosts, as nginx);
    without it /etc/hosts comes first, then the resolv.conf name servers. No cache:
    the loops decide when to ask again."""
    reactor = MemoryReactorClock()
    configured = make_resolver(GatewaySettings(resolver=("127.0.0.1:5353",)), reactor)
    assert isinstance(configured, client.Resolver)
    assert configured.servers == [("127.0.0.1", 5353)]
    assert configured.timeout == LOOKUP_TIMEOUT

    system = make_resolver(GatewaySettings(), reactor)
    first, second = system.resolvers
    assert isinstance(first, hosts.Resolver) and first.file == b"/etc/hosts"
    assert isinstance(second, client.Resolver)
    assert second.servers == system_nameservers("/etc/resolv.conf")
    assert reactor.getDelayedCalls() == []


def test_asking_early_replaces_the_scheduled_lookup():
    loop, group, resolver, clock = make_loop(valid=30.0)
    loop.start()
    resolver.answer([a("10.0.0.1")])
    clock.advance(10)
    loop.resolve()
    resolver.answer([a("10.0.0.2")])
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(29.9)
    assert len(resolver.lookups) == 4
    clock.advance(0.1)
    assert len(resolver.lookups) == 6
