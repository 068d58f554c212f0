"""Reload on real sockets: a new file applied by diff while traffic runs.

Each test writes its configuration to a temporary file, starts a ``GatewayService``
from it and reloads with ``service.reload()`` (what SIGHUP and ``POST /api/reload``
call) after rewriting the file. Held backends (hold-and-release) keep requests in
flight across the reload; every wait is bounded.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import textwrap

from twisted.internet import reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest

from gateway.config import load_config
from gateway.service import GatewayService
from tests.integration.harness import (
    WAIT, close_clients, closed_port, connect, get, request, start_backends,
)
from tests.integration.test_tls import ClientOptions, TLSClient, _ClientFactory
from tests.integration.test_websocket import (
    close_ws_clients, start_ws_backends, wait_for, ws_connect,
)
from tests.tls.pki import PKI

LISTEN = "tcp:0:interface=127.0.0.1"
#: a second description of the same kind (another listener, another port 0)
OTHER = "tcp:0:interface=127.0.0.1:backlog=50"
SERVERS_CHANGED = "servers and locations: the new ones serve new requests"


class FileGateway:
    """A gateway run from a real file, which tests rewrite before reloading.
    ``{b0}``… are the backends' addresses, other ``{name}`` the keywords given."""

    def __init__(self, testcase, backends=(), **addresses):
        self.testcase = testcase
        self.values = {"b%d" % i: b.address for i, b in enumerate(backends)}
        self.values.update(addresses)
        directory = tempfile.mkdtemp(prefix="gateway-reload-")
        testcase.addCleanup(shutil.rmtree, directory)
        self.path = os.path.join(directory, "site.toml")
        self.service = None

    def write(self, toml: str) -> None:
        text = textwrap.dedent(toml)
        for key, value in self.values.items():
            text = text.replace("{%s}" % key, value)
        if "[admin]" not in text:
            text += "\n[admin]\nlisten = false\n"
        with open(self.path, "w") as f:
            f.write(text)

    async def start(self, toml: str) -> GatewayService:
        self.write(toml)
        self.service = GatewayService(load_config(self.path), reactor)
        self.service.startService()
        self.testcase.addCleanup(self.service.stopService)
        self.testcase.addCleanup(close_clients)
        self.testcase.addCleanup(close_ws_clients)
        await self.service.listening()
        return self.service

    def port(self, description: str = LISTEN) -> int:
        return self.service.getServiceNamed(description).port.getHost().port

    async def reload(self, toml: str):
        self.write(toml)
        return await self.service.reload()


def held(name: str):
    """Answers ``name``, except ``/hold…`` which waits for the test to release it."""

    def behaviour(req, conn):
        if req.path.startswith("/hold"):
            conn.hold().addCallback(lambda _: conn.respond(200, b"held by " + name.encode()))
        else:
            conn.respond(200, name.encode())

    return behaviour


def streaming(req, conn):
    """A chunked response: its first chunk now, the rest when released."""
    conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\npart1\r\n")
    conn.hold().addCallback(lambda _: conn.write(b"5\r\npart2\r\n0\r\n\r\n"))


async def bodies(port: int, count: int) -> list[str]:
    """``count`` GETs one after the other, each on its own connection."""
    return [(await get(port)).body.decode() for _ in range(count)]


class ReloadWhileTrafficRuns(unittest.TestCase):
    BEFORE = """
    [gateway]
    access_log = false
    [upstreams.app]
    servers = [ { address = "{b0}" }, { address = "{b1}" } ]
    [upstreams.slow]
    servers = [ { address = "{slow}" } ]
    [upstreams.ws]
    servers = [ { address = "{ws}" } ]
    [[servers]]
    listen = ["tcp:0:interface=127.0.0.1"]
    locations = [
      { path = "/", proxy_pass = "http://app" },
      { path = "/slow", proxy_pass = "http://slow", proxy_buffering = false },
      { path = "/ws", proxy_pass = "http://ws" },
    ]
    """
    AFTER = BEFORE.replace(
        'servers = [ { address = "{b0}" }, { address = "{b1}" } ]',
        'servers = [ { address = "{b0}", weight = 3 }, { address = "{b1}" },'
        ' { address = "{b2}" } ]')

    async def test_tunnel_and_slow_response_complete_untouched_and_new_requests_use_new_weights(self):
        """A reload that changes weights and adds a peer, while a WebSocket tunnel and
        a streaming response are open: both finish on the old configuration, and the
        requests after it follow the new weights (a fresh smooth round robin cycle:
        weights 3,1,1 give a b a c a)."""
        a, b, c, slow = start_backends(self, "a", "b", "c", ("slow", streaming))
        (ws,) = start_ws_backends(self, "ws")
        gateway = FileGateway(self, (a, b, c), slow=slow.address, ws=ws.address)
        service = await gateway.start(self.BEFORE)
        port = gateway.port()
        self.assertEqual(await bodies(port, 2), ["a", "b"])

        tunnel = await ws_connect(port, "/ws")
        await tunnel.accepted
        tunnel.send("before")
        self.assertEqual(await tunnel.next_message(), "before")
        stream = await connect(port)
        stream.transport.write(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await wait_for(lambda: b"part1" in stream.received)

        result = await gateway.reload(self.AFTER)
        self.assertEqual((result.ok, result.errors), (True, []))
        self.assertIn(f"upstream app: added {c.address}", result.changes)

        self.assertEqual(await bodies(port, 5), ["a", "b", "a", "c", "a"])
        tunnel.send("after")
        self.assertEqual(await tunnel.next_message(), "after")
        self.assertEqual(ws.connections[0].backend.received, ["before", "after"])
        slow.held[0].callback(None)
        (response,) = await stream.wait_responses(1)
        self.assertEqual((response.status, response.body), (200, b"part1part2"))
        # accepted before the reload: it finishes its response, then closes (nginx's
        # old worker does the same)
        await stream.wait_closed()
        tunnel.close()
        await tunnel.wait_closed()
        self.assertEqual(service.metrics.reloads, {"ok": 1})

    async def test_an_idle_keepalive_connection_is_closed_and_the_next_one_sees_the_new_file(self):
        """An idle keepalive connection accepted before the reload is closed by it;
        a new connection gets the new routing."""
        gateway = FileGateway(self)
        await gateway.start("""
            [[servers]]
            listen = ["tcp:0:interface=127.0.0.1"]
            locations = [ { path = "/", return = { status = 200, body = "one" } } ]
            """)
        port = gateway.port()
        client, (first,) = await request(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(first.body, b"one")
        result = await gateway.reload("""
            [[servers]]
            listen = ["tcp:0:interface=127.0.0.1"]
            locations = [ { path = "/", return = { status = 200, body = "two" } } ]
            """)
        self.assertTrue(result.ok)
        await client.wait_closed()
        self.assertEqual((await get(port)).body, b"two")


class ReloadOfAnInvalidFile(unittest.TestCase):
    CONFIG = """
    [gateway]
    access_log = false
    [admin]
    listen = "tcp:0:interface=127.0.0.1"
    [upstreams.app]
    servers = [ { address = "{b0}" }, { address = "{b1}" } ]
    [[servers]]
    listen = ["tcp:0:interface=127.0.0.1"]
    locations = [ { path = "/", proxy_pass = "http://app" } ]
    """
    BROKEN = CONFIG.replace('{ address = "{b0}" }', '{ address = "{b0}", weight = "x" }'
                            ).replace('proxy_pass = "http://app"', 'proxy_pas = "http://app"')
    ERRORS = [
        'upstreams.app.servers[0].weight: must be an integer >= 1, got "x"',
        'servers[0].locations[0].proxy_pas: unknown key (did you mean "proxy_pass"?)',
        'servers[0].locations[0]: needs exactly one handler (proxy_pass, grpc_pass or'
        ' return), got none',
    ]

    async def test_nothing_changes_and_the_api_answers_422_with_every_error(self):
        a, b = start_backends(self, "a", "b")
        gateway = FileGateway(self, (a, b))
        service = await gateway.start(self.CONFIG)
        port = gateway.port()
        admin = service.admin_listener.port.getHost().port
        group = service.manager.group("app")
        peers = list(group.peers)
        site = service.site
        gateway.write(self.BROKEN)

        client, (answer,) = await request(
            admin, b"POST /api/reload HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                   b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        self.assertEqual(answer.status, 422)
        self.assertEqual(json.loads(answer.body), {
            "reloaded": False, "ok": False, "errors": self.ERRORS, "changes": []})

        result = await service.reload()
        self.assertEqual((result.applied, result.invalid, result.errors, result.status),
                         (False, True, self.ERRORS, 422))
        self.assertIs(service.manager.group("app"), group)
        self.assertEqual(group.peers, peers)
        self.assertIs(service.site, site)
        self.assertEqual(await bodies(port, 2), ["a", "b"])
        self.assertEqual(service.metrics.reloads, {"failed": 2})

    async def test_the_reload_route_takes_a_json_post_only(self):
        gateway = FileGateway(self, start_backends(self, "a", "b"))
        service = await gateway.start(self.CONFIG)
        admin = service.admin_listener.port.getHost().port
        _, (wrong_method,) = await request(
            admin, b"GET /api/reload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertEqual((wrong_method.status, wrong_method.header("Allow")), (405, "POST"))
        _, (form,) = await request(
            admin, b"POST /api/reload HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                   b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        self.assertEqual(form.status, 415)
        self.assertEqual(service.metrics.reloads, {})
        _, (done,) = await request(
            admin, b"POST /api/reload HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                   b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        self.assertEqual(done.status, 200)
        self.assertEqual(json.loads(done.body)["reloaded"], True)


class ReloadOfListeners(unittest.TestCase):
    def config(self, listen: list[str], body: str = "one", more: str = "") -> str:
        return """
        [gateway]
        access_log = false
        [upstreams.app]
        servers = [ { address = "{b0}" } ]
        [[servers]]
        listen = %s
        locations = [ { path = "/", return = { status = 200, body = "%s" } },
                      { path = "/hold", proxy_pass = "http://app" } ]
        %s
        """ % (json.dumps(listen), body, more)

    async def test_a_removed_listener_stops_accepting_and_its_request_in_flight_finishes(self):
        (backend,) = start_backends(self, ("a", held("a")))
        gateway = FileGateway(self, (backend,))
        await gateway.start(self.config([LISTEN, OTHER]))
        port, other = gateway.port(LISTEN), gateway.port(OTHER)
        client = await connect(other)
        client.transport.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_for(lambda: backend.held)

        result = await gateway.reload(self.config([LISTEN]))
        self.assertEqual((result.ok, result.changes), (True, [
            SERVERS_CHANGED, f"listener {OTHER} removed"]))
        with self.assertRaises(ConnectionRefusedError):
            await connect(other)
        self.assertEqual((await get(port)).body, b"one")

        backend.held[0].callback(None)
        (response,) = await client.wait_responses(1)
        self.assertEqual(response.body, b"held by a")
        await client.wait_closed()

    async def test_a_port_moves_to_a_changed_description_of_the_same_socket(self):
        """A changed description is a listener closed and another opened: the old one
        closes first, so the new one can bind the same port."""
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        before = f"tcp:{port}:interface=127.0.0.1"
        after = f"tcp:{port}:interface=127.0.0.1:backlog=60"
        gateway = FileGateway(self, start_backends(self, "a"))
        await gateway.start(self.config([before]))
        self.assertEqual((await get(port)).body, b"one")

        result = await gateway.reload(self.config([after], body="two"))
        self.assertEqual((result.ok, result.changes), (True, [
            SERVERS_CHANGED, f"listener {before} removed", f"listener {after} added"]))
        self.assertEqual((await get(port)).body, b"two")

    async def test_a_port_in_use_is_reported_and_the_rest_of_the_reload_stands(self):
        """nginx refuses the whole reload when a bind fails; here the rest applies and
        the failure is reported (the admin API answers 500)."""
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        self.addCleanup(busy.close)
        busy_port = busy.getsockname()[1]
        taken = "tcp:%d:interface=127.0.0.1" % busy_port
        gateway = FileGateway(self, start_backends(self, "a"))
        service = await gateway.start(self.config([LISTEN]))
        port = gateway.port()

        result = await gateway.reload(self.config([LISTEN, taken], body="two"))
        self.assertEqual((result.applied, result.status), (True, 500))
        self.assertEqual(result.errors, [
            f"cannot listen on {taken}: [Errno 98] Address already in use"])
        self.assertEqual((await get(port)).body, b"two")
        self.assertNotIn(taken, service.listener_factories)
        self.assertEqual([s.name for s in service if s.name == taken], [])
        self.assertEqual(service.metrics.reloads, {"failed": 1})

        # the next reload tries again, and opens it once the port is free
        busy.close()
        result = await gateway.reload(self.config([LISTEN, taken], body="three"))
        self.assertEqual((result.ok, result.changes), (True, [
            SERVERS_CHANGED, f"listener {taken} added"]))
        self.assertEqual((await get(busy_port)).body, b"three")

    async def test_an_admin_listener_that_could_not_be_opened_is_tried_again(self):
        """As a proxy listener: the next reload of the same file opens it once its
        port is free."""
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        self.addCleanup(busy.close)
        busy_port = busy.getsockname()[1]
        taken = "tcp:%d:interface=127.0.0.1" % busy_port
        gateway = FileGateway(self, start_backends(self, "a"))
        service = await gateway.start(self.config([LISTEN]))

        admin = '[admin]\nlisten = "%s"' % taken
        result = await gateway.reload(self.config([LISTEN], more=admin))
        self.assertEqual((result.applied, result.status), (True, 500))
        self.assertEqual(result.errors, [
            f"cannot listen on admin.listen {taken}: [Errno 98] Address already in use"])
        self.assertIsNone(service.admin_listener)

        busy.close()
        result = await gateway.reload(self.config([LISTEN], more=admin))
        self.assertEqual((result.ok, result.changes), (True, [
            f"admin listener: {taken}", f"listener admin.listen {taken} added"]))
        response = await get(busy_port, "/status")
        self.assertEqual(response.status, 200)


class ReloadKeepsPeerState(unittest.TestCase):
    CONFIG = """
    [gateway]
    access_log = false
    [upstreams.app]
    servers = [ { address = "{b0}" }, { address = "{dead}" } ]
    [[servers]]
    listen = ["tcp:0:interface=127.0.0.1"]
    locations = [ { path = "/", proxy_pass = "http://app" } ]
    """
    AFTER = CONFIG.replace('{ address = "{b0}" }', '{ address = "{b0}", weight = 2 }'
                           ).replace('{ address = "{dead}" }',
                                     '{ address = "{dead}" }, { address = "{b1}" }')

    async def test_peers_matched_by_address_keep_failures_connections_and_pooled_connections(self):
        a, c = start_backends(self, ("a", held("a")), "c")
        dead = closed_port()
        gateway = FileGateway(self, (a, c), dead=dead)
        service = await gateway.start(self.CONFIG)
        port = gateway.port()
        group = service.manager.group("app")
        peer_a, peer_dead = group.peers
        holding = await connect(port)
        holding.transport.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")   # → a
        await wait_for(lambda: a.held)
        # → the dead peer (refused: it fails, max_fails = 1), retried on a, whose
        # connection is then pooled
        self.assertEqual((await get(port)).body, b"a")
        self.assertEqual((peer_a.conns, peer_dead.fails, a.connections), (1, 1, 2))
        self.assertEqual(service.pools["app"].idle(a.address), 1)

        result = await gateway.reload(self.AFTER)
        self.assertEqual(result.changes, [f"upstream app: added {c.address}"])
        self.assertEqual(group.peers[:2], [peer_a, peer_dead])
        self.assertEqual((peer_a.weight, peer_a.conns), (2, 1))
        now = reactor.seconds()
        self.assertEqual((peer_dead.fails, peer_dead.state(now)), (1, "failed"))
        self.assertEqual(service.pools["app"].idle(a.address), 1)

        # the failed peer is skipped; a (weight 2) first; its pooled connection reused
        self.assertEqual(await bodies(port, 3), ["a", "c", "a"])
        self.assertEqual(a.connections, 2)
        a.held[0].callback(None)
        (response,) = await holding.wait_responses(1)
        self.assertEqual(response.body, b"held by a")
        self.assertEqual(peer_a.conns, 0)


class ReloadOfCertificates(unittest.TestCase):
    CONFIG = """
    [gateway]
    access_log = false
    [upstreams.app]
    servers = [ { address = "{b0}" } ]
    [[servers]]
    listen = ["tcp:0:interface=127.0.0.1"]
    tls = { certificate = "{pem}", key = "{key}" }
    locations = [ { path = "/", proxy_pass = "http://app" } ]
    """

    async def tls_connect(self, port: int):
        client = TLSClient()
        factory = TLSMemoryBIOFactory(ClientOptions(server_name="site.test"), True,
                                      _ClientFactory(client), clock=reactor)
        reactor.connectTCP("127.0.0.1", port, factory, timeout=WAIT)
        await client.handshake.addTimeout(WAIT, reactor)
        return client

    async def test_a_renewed_certificate_serves_new_handshakes_and_old_ones_finish(self):
        """The certificate files are read again on reload, even under the same paths
        (a renewal), while a TLS connection accepted before finishes its request."""
        pki = PKI(self)
        pem, key = pki.server_files("site", "site.test", "old.test")
        (backend,) = start_backends(self, ("a", held("a")))
        gateway = FileGateway(self, (backend,), pem=pem, key=key)
        await gateway.start(self.CONFIG)
        port = gateway.port()
        before = await self.tls_connect(port)
        self.addCleanup(lambda: before.transport.abortConnection())
        self.assertEqual(before.served_names(), ["site.test", "old.test"])
        before.transport.write(b"GET /hold HTTP/1.1\r\nHost: site.test\r\n\r\n")
        await wait_for(lambda: backend.held)

        self.assertEqual(pki.server_files("site", "site.test", "new.test"), (pem, key))
        result = await gateway.reload(self.CONFIG)
        self.assertTrue(result.ok)

        after = await self.tls_connect(port)
        self.addCleanup(lambda: after.transport.abortConnection())
        self.assertEqual(after.served_names(), ["site.test", "new.test"])
        backend.held[0].callback(None)
        (response,) = await before.wait_responses(1)
        self.assertEqual(response.body, b"held by a")
        self.assertEqual(before.served_names(), ["site.test", "old.test"])


class ReloadOfChecksAndLogs(unittest.TestCase):
    async def test_removing_a_health_check_brings_its_unhealthy_peer_back(self):
        def sick(req, conn):
            conn.respond(500 if req.path == "/health" else 200, b"b")

        a, b = start_backends(self, "a", ("b", sick))
        config = """
        [gateway]
        access_log = false
        [upstreams.app]
        servers = [ { address = "{b0}" }, { address = "{b1}" } ]
        %s
        [[servers]]
        listen = ["tcp:0:interface=127.0.0.1"]
        locations = [ { path = "/", proxy_pass = "http://app" } ]
        """
        gateway = FileGateway(self, (a, b))
        service = await gateway.start(
            config % 'health_check = { uri = "/health", interval = "100ms" }')
        port = gateway.port()
        peer_b = service.manager.group("app").peers[1]
        await wait_for(lambda: not peer_b.healthy)
        self.assertEqual(await bodies(port, 2), ["a", "a"])

        result = await gateway.reload(config % "")
        self.assertTrue(result.ok)
        self.assertTrue(peer_b.healthy)
        self.assertEqual(service.health_checkers, {})
        self.assertEqual(await bodies(port, 2), ["a", "b"])

    async def test_a_new_access_log_path_and_format_take_effect(self):
        gateway = FileGateway(self, start_backends(self, "a"))
        directory = os.path.dirname(gateway.path)
        first, second = (os.path.join(directory, name) for name in ("one.log", "two.log"))
        config = """
        [gateway]
        access_log = "%s"
        access_log_format = "%s"
        [upstreams.app]
        servers = [ { address = "{b0}" } ]
        [[servers]]
        listen = ["tcp:0:interface=127.0.0.1"]
        locations = [ { path = "/", proxy_pass = "http://app" } ]
        """
        service = await gateway.start(config % (first, "$request_uri"))
        port = gateway.port()
        await get(port, "/first")
        result = await gateway.reload(config % (second, "json"))
        self.assertIn(f"access log: {second} (json)", result.changes)
        await get(port, "/second")
        service.access_log.flush()
        with open(first) as f:
            self.assertEqual(f.read(), "/first\n")
        with open(second) as f:
            line = json.loads(f.read())
        self.assertEqual((line["request_uri"], line["status"]), ("/second", "200"))
