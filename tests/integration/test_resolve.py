"""``resolve = true`` end to end: a DNS server run by the test, backends on several
loopback addresses, and membership that follows DNS changes without a reload."""
from collections import Counter

from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.names import authority, common, dns, server
from twisted.trial import unittest

from tests.integration.harness import WAIT, Backend, get, sleep, start_gateway

ZONE = b"test"


class MemoryAuthority(authority.FileAuthority):
    """An authority for ``test.`` whose records the test edits in place."""

    def __init__(self):
        common.ResolverBase.__init__(self)
        self.soa = (ZONE, dns.Record_SOA(mname=b"ns.test", rname=b"admin.test",
                                         serial=1, refresh=60, retry=60, expire=60,
                                         minimum=1, ttl=1))
        self.records: dict[bytes, list] = {}

    def set(self, name: str, *ips: str, ttl: int = 1) -> None:
        self.records[name.encode()] = [dns.Record_A(ip, ttl) for ip in ips]


def start_dns(testcase) -> tuple[MemoryAuthority, int]:
    """A DNS server on 127.0.0.1 (UDP, port 0) answering from a ``MemoryAuthority``."""
    zone = MemoryAuthority()
    factory = server.DNSServerFactory(authorities=[zone])
    factory.noisy = False
    port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return zone, port.getHost().port


def start_backends_on(testcase, hosts: list[str]) -> tuple[dict[str, Backend], int]:
    """One backend per loopback address, all on the same port (the port of a
    ``name:port`` server), each answering with its address."""
    for _ in range(20):
        backends, ports = {}, []
        try:
            for host in hosts:
                backend = Backend(host)
                backend.port = reactor.listenTCP(ports[0] if ports else 0, backend,
                                                 interface=host)
                ports.append(backend.port.getHost().port)
                backends[host] = backend
        except CannotListenError:
            for backend in backends.values():
                backend.stop()
            continue
        for backend in backends.values():
            testcase.addCleanup(backend.stop)
        return backends, ports[0]
    raise RuntimeError("no port free on every loopback address")


async def until(condition, what: str) -> None:
    """Wait (bounded) until ``condition()`` holds: DNS answers arrive on their own."""
    for _ in range(int(WAIT / 0.02)):
        if condition():
            return
        await sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def gateway_config(dns_port: int, backend_port: int) -> str:
    return f"""
    [gateway]
    access_log = false
    resolver = ["127.0.0.1:{dns_port}"]
    resolver_valid = "1s"
    [upstreams.app]
    servers = [ {{ address = "app.test:{backend_port}", resolve = true }} ]
    [[servers]]
    listen = ["tcp:0:interface=127.0.0.1"]
    locations = [ {{ path = "/", proxy_pass = "http://app", add_header = {{ X-Upstream = "$upstream_addr" }} }} ]
    """


async def answers(port: int, count: int) -> list[tuple[int, str, str]]:
    result = []
    for _ in range(count):
        response = await get(port)
        result.append((response.status, response.body.decode(),
                       response.header("X-Upstream")))
    return result


class ResolvedMembership(unittest.TestCase):
    async def test_requests_spread_over_resolved_addresses_and_follow_dns(self):
        """Two A records → two peers in round robin; a DNS change (one address
        gone, one new) is picked up without a reload, the kept peer keeps its
        counters, and the idle connection to the gone one is closed."""
        zone, dns_port = start_dns(self)
        backends, port = start_backends_on(self, ["127.0.0.2", "127.0.0.3", "127.0.0.4"])
        zone.set("app.test", "127.0.0.2", "127.0.0.3")
        service, gw = await start_gateway(self, gateway_config(dns_port, port))
        group = service.manager.group("app")

        await until(lambda: len(group.peers) == 2, "the first answer")
        names = [p.name for p in group.peers]
        self.assertEqual(names, [f"127.0.0.2:{port}", f"127.0.0.3:{port}"])
        first = await answers(gw, 4)
        self.assertEqual(Counter(first), {
            (200, "127.0.0.2", f"127.0.0.2:{port}"): 2,
            (200, "127.0.0.3", f"127.0.0.3:{port}"): 2,
        })
        kept = group.peers[1]
        self.assertEqual(service.pools["app"].idle(f"127.0.0.2:{port}"), 1)

        zone.set("app.test", "127.0.0.3", "127.0.0.4")
        await until(lambda: {p.name for p in group.peers}
                    == {f"127.0.0.3:{port}", f"127.0.0.4:{port}"}, "the DNS change")

        self.assertIs(group.peers[0], kept)
        self.assertEqual(kept.requests, 2)
        self.assertEqual(service.pools["app"].idle(f"127.0.0.2:{port}"), 0)
        gone = backends["127.0.0.2"]
        await until(lambda: gone.closed == gone.connections == 1,
                    "the idle connection to the removed peer to close")
        second = await answers(gw, 4)
        self.assertEqual(Counter(body for _, body, _ in second),
                         {"127.0.0.3": 2, "127.0.0.4": 2})
        self.assertEqual(len(gone.requests), 2)

    async def test_unknown_name_gives_no_live_upstreams_until_it_appears(self):
        """Before the name exists (NXDOMAIN) the group has no peer: 502. Once the
        record is added it is found at the next re-resolution."""
        zone, dns_port = start_dns(self)
        backends, port = start_backends_on(self, ["127.0.0.2"])
        service, gw = await start_gateway(self, gateway_config(dns_port, port))
        group = service.manager.group("app")

        response = await get(gw)
        self.assertEqual((response.status, response.header("X-Upstream")), (502, "app"))

        zone.set("app.test", "127.0.0.2")
        await until(lambda: len(group.peers) == 1, "the new record")
        response = await get(gw)
        self.assertEqual((response.status, response.body), (200, b"127.0.0.2"))
