"""A finished proxied request leaves no reference cycle behind.

Per-request objects (exchange, proxy request, variable context, attempts…) that form a
cycle are freed only by the cyclic garbage collector, which under load runs while
hundreds of them are still in flight and promotes them into older generations: CPU the
gateway spends for nothing. These tests drive the real service (HTTP/1.1 server, site,
proxy, upstream client, pool) over in-memory transports and ask the collector whether
the requests left anything for it.
"""
from __future__ import annotations

import gc
import tomllib

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest

from gateway.config import parse_config
from gateway.service import GatewayService

CONFIG = """
[gateway]
access_log = false
[admin]
listen = false
[upstreams.app]
servers = [ { address = "127.0.0.1:19001" }, { address = "127.0.0.1:19002" } ]
[[servers]]
listen = ["tcp:19000:interface=127.0.0.1"]
locations = [ { path = "/", proxy_pass = "http://app" } ]
"""

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
            b"Connection: keep-alive\r\n\r\nok\n")
CHUNKED_RESPONSE = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"3\r\nok\n\r\n0\r\n\r\n")


class NoReferenceCycles(unittest.TestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_700_000_000)
        config = parse_config(tomllib.loads(CONFIG), "/tmp/gateway-test.toml")
        self.service = GatewayService(config, self.reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        factory = self.reactor.tcpServers[0][1]
        peer = IPv4Address("TCP", "127.0.0.1", 50000)
        self.client = StringTransport(
            peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 19000))
        self.proto = factory.buildProtocol(peer)
        self.proto.makeConnection(self.client)
        # the client leaves before the gateway stops: a graceful stop waits for its
        # connections to close, which a StringTransport never reports by itself
        self.addCleanup(lambda: self.proto.connectionLost(None))
        self.upstreams = {}
        self.addCleanup(gc.enable)

    def _exchange(self, request: bytes, response: bytes) -> bytes:
        self.proto.dataReceived(request)
        while self.reactor.tcpClients:
            _host, port, factory, _timeout, _bind = self.reactor.tcpClients.pop(0)
            proto = factory.buildProtocol(None)
            transport = StringTransport()
            proto.makeConnection(transport)
            self.upstreams[port] = (proto, transport)
        answered = 0
        for proto, transport in self.upstreams.values():
            if transport.value():
                transport.clear()
                proto.dataReceived(response)
                answered += 1
        self.assertEqual(answered, 1)
        out = self.client.value()
        self.client.clear()
        return out

    def _assert_no_garbage(self, request: bytes, response: bytes) -> None:
        # warm up: both peers connected and pooled, caches filled
        for _ in range(4):
            self._exchange(request, response)
        gc.collect()
        gc.disable()
        for _ in range(10):
            out = self._exchange(request, response)
            self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"), out)
        self.assertEqual(gc.collect(), 0)

    def test_get(self):
        self._assert_no_garbage(
            b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n", RESPONSE)

    def test_post_with_a_buffered_body(self):
        self._assert_no_garbage(
            b"POST /x HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello",
            RESPONSE)

    def test_chunked_response(self):
        self._assert_no_garbage(
            b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n", CHUNKED_RESPONSE)
