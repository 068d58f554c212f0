"""The admin listener on real sockets: /status and /metrics follow traffic, and the
runtime API's down, drain and weight change where requests go, without a reload."""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections import Counter
from urllib.parse import quote

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.trial import unittest

from tests.integration.harness import (
    WAIT, connect, get, request, sleep, start_backends, start_gateway,
)

CONFIG = """
[gateway]
access_log = false
[admin]
listen = "tcp:0:interface=127.0.0.1"
[upstreams.app]
servers = [ %s ]
[[servers]]
listen = ["tcp:0:interface=127.0.0.1"]
server_name = ["example.test"]
locations = [ { path = "/", proxy_pass = "http://app" },
              { path = "= /ping", return = { status = 200, body = "pong" } } ]
"""


def holding(name):
    """A backend that holds requests to /hold until the test releases them."""

    def behaviour(req, conn):
        if req.path.startswith("/hold"):
            conn.hold().addCallback(lambda _: conn.respond(200, name.encode()))
        else:
            conn.respond(200, name.encode())

    return behaviour


async def until(predicate, timeout: float = WAIT):
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not reached in %ss" % timeout)
        await sleep(0.005)


async def start(testcase, servers: str, backends):
    service, port = await start_gateway(testcase, CONFIG % servers, backends)
    return service, port, service.admin_listener.port.getHost().port


async def admin(port: int, method: str, path: str, data=None):
    """One call to the admin listener: (status, parsed JSON or text)."""
    body = json.dumps(data).encode() if data is not None else b""
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    client, responses = await request(port, head.encode() + body)
    await client.wait_closed()
    response = responses[0]
    if (response.header("Content-Type") or "").startswith("application/json"):
        return response.status, json.loads(response.body)
    return response.status, response.body.decode()


def server_path(address: str) -> str:
    return "/api/upstreams/app/servers/" + quote(address, safe="")


async def bodies(port, count, path="/"):
    return [(await get(port, path, host="example.test")).body.decode() for _ in range(count)]


def samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class StatusAndMetrics(unittest.TestCase):
    async def test_status_counts_the_requests_each_peer_served(self):
        backends = start_backends(self, "a", "b")
        _, port, admin_port = await start(
            self, '{ address = "{b0}", weight = 2 }, { address = "{b1}" }', backends)
        self.assertEqual(Counter(await bodies(port, 6)), {"a": 4, "b": 2})
        status, document = await admin(admin_port, "GET", "/status")
        self.assertEqual(status, 200)
        peers = document["upstreams"]["app"]["peers"]
        self.assertEqual([(p["name"], p["state"], p["weight"], p["requests"], p["active"])
                          for p in peers],
                         [(backends[0].address, "up", 2, 4, 0),
                          (backends[1].address, "up", 1, 2, 0)])
        gateway = document["gateway"]
        self.assertEqual((gateway["requests"], gateway["config"]),
                         (6, "/tmp/gateway-test.toml"))
        self.assertGreaterEqual(gateway["uptime"], 0)

    async def test_metrics_parse_and_counters_move_with_traffic(self):
        backends = start_backends(self, "a")
        _, port, admin_port = await start(self, '{ address = "{b0}" }', backends)
        peer = backends[0].address
        requests = ("gateway_http_requests_total",
                    (("location", "/"), ("server", "example.test"), ("status", "200")))
        upstream = ("gateway_upstream_requests_total", (("peer", peer), ("upstream", "app")))
        latency = ("gateway_upstream_response_seconds_count",
                   (("peer", peer), ("upstream", "app")))

        _, before = await admin(admin_port, "GET", "/metrics")
        before = samples(before)
        self.assertEqual(before[upstream], 0)
        self.assertNotIn(requests, before)

        await bodies(port, 3)
        await bodies(port, 2, "/ping")
        _, after = await admin(admin_port, "GET", "/metrics")
        after = samples(after)
        self.assertEqual(after[requests], 3)
        self.assertEqual(after[("gateway_http_requests_total", (
            ("location", "= /ping"), ("server", "example.test"), ("status", "200")))], 2)
        self.assertEqual(after[upstream], 3)
        self.assertEqual(after[latency], 3)
        self.assertEqual(after[("gateway_upstream_response_seconds_bucket",
                                (("le", "+Inf"), ("peer", peer), ("upstream", "app")))], 3)

    async def test_with_an_access_log_each_request_is_logged_and_counted(self):
        backends = start_backends(self, "a")
        directory = tempfile.mkdtemp(prefix="gateway-admin-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "access.log")
        text = (CONFIG % '{ address = "{b0}" }').replace(
            "access_log = false", f'access_log = "{path}"')
        service, port = await start_gateway(self, text, backends)
        admin_port = service.admin_listener.port.getHost().port
        await bodies(port, 2)
        service.access_log.flush()
        with open(path) as f:
            self.assertEqual(len(f.read().splitlines()), 2)
        _, text = await admin(admin_port, "GET", "/metrics")
        self.assertEqual(samples(text)[("gateway_http_requests_total", (
            ("location", "/"), ("server", "example.test"), ("status", "200")))], 2)

    async def test_open_client_connections_are_a_gauge(self):
        backends = start_backends(self, "a")
        service, port, admin_port = await start(self, '{ address = "{b0}" }', backends)
        gauge = ("gateway_client_connections", ())
        clients = [await connect(port) for _ in range(3)]
        # the gateway accepts a moment after the client's connect completes
        await until(lambda: service.metrics.client_connections() == 3)
        _, text = await admin(admin_port, "GET", "/metrics")
        self.assertEqual(samples(text)[gauge], 3)      # the admin connection is not one
        for client in clients:
            client.transport.loseConnection()
            await client.wait_closed()
        await until(lambda: service.metrics.client_connections() == 0)
        _, text = await admin(admin_port, "GET", "/metrics")
        self.assertEqual(samples(text)[gauge], 0)


class RuntimeApi(unittest.TestCase):
    async def test_a_peer_taken_down_gets_no_traffic_until_brought_back(self):
        backends = start_backends(self, "a", "b")
        _, port, admin_port = await start(
            self, '{ address = "{b0}" }, { address = "{b1}" }', backends)
        status, peer = await admin(admin_port, "PATCH", server_path(backends[0].address),
                                   {"down": True})
        self.assertEqual((status, peer["state"], peer["down"]), (200, "down", True))
        served_before = len(backends[0].requests)
        self.assertEqual(await bodies(port, 6), ["b"] * 6)
        self.assertEqual(len(backends[0].requests), served_before)

        await admin(admin_port, "PATCH", server_path(backends[0].address), {"down": False})
        self.assertEqual(Counter(await bodies(port, 4)), {"a": 2, "b": 2})

    async def test_drain_lets_the_held_request_finish_while_new_ones_go_elsewhere(self):
        backends = start_backends(self, ("a", holding("a")), ("b", holding("b")))
        _, port, admin_port = await start(
            self, '{ address = "{b0}" }, { address = "{b1}" }', backends)
        busy = await connect(port)
        busy.transport.write(b"GET /hold HTTP/1.1\r\nHost: example.test\r\n\r\n")
        await until(lambda: backends[0].held)

        status, peer = await admin(admin_port, "PATCH", server_path(backends[0].address),
                                   {"drain": True})
        self.assertEqual((status, peer["state"], peer["active"]), (200, "draining", 1))
        self.assertEqual(await bodies(port, 4), ["b"] * 4)

        backends[0].held[0].callback(None)
        (response,) = await busy.wait_responses(1)
        self.assertEqual((response.status, response.body), (200, b"a"))
        _, peer = await admin(admin_port, "GET", server_path(backends[0].address))
        self.assertEqual((peer["state"], peer["active"], peer["requests"]),
                         ("draining", 0, 1))

    async def test_a_new_weight_shows_in_the_distribution(self):
        backends = start_backends(self, "a", "b")
        _, port, admin_port = await start(
            self, '{ address = "{b0}" }, { address = "{b1}" }', backends)
        self.assertEqual(Counter(await bodies(port, 4)), {"a": 2, "b": 2})
        status, peer = await admin(admin_port, "PATCH", server_path(backends[1].address),
                                   {"weight": 3})
        self.assertEqual((status, peer["weight"]), (200, 3))
        self.assertEqual(Counter(await bodies(port, 8)), {"a": 2, "b": 6})

    async def test_a_bad_change_is_a_json_400_and_changes_nothing(self):
        backends = start_backends(self, "a", "b")
        _, port, admin_port = await start(
            self, '{ address = "{b0}" }, { address = "{b1}" }', backends)
        status, error = await admin(admin_port, "PATCH", server_path(backends[0].address),
                                    {"weight": 0})
        self.assertEqual((status, error["error"]["status"]), (400, 400))
        status, error = await admin(admin_port, "PATCH", server_path("127.0.0.1:1"),
                                    {"down": True})
        self.assertEqual(status, 404)
        self.assertEqual(Counter(await bodies(port, 4)), {"a": 2, "b": 2})

    async def test_the_proxy_listener_does_not_serve_the_api(self):
        backends = start_backends(self, "a")
        _, port, _ = await start(self, '{ address = "{b0}" }', backends)
        response = await get(port, "/api/upstreams", host="example.test")
        self.assertEqual(response.body, b"a")        # proxied like any other path


class Startup(unittest.TestCase):
    def test_an_admin_port_in_use_stops_startup_with_one_line(self):
        from gateway.config import parse_config
        from gateway.service import GatewayService

        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        config = parse_config({
            "gateway": {"access_log": False},
            "admin": {"listen": f"tcp:{port}:interface=127.0.0.1"},
            "upstreams": {"app": {"servers": [{"address": "127.0.0.1:1"}]}},
            "servers": [{"listen": ["tcp:0:interface=127.0.0.1"],
                         "locations": [{"path": "/", "proxy_pass": "http://app"}]}],
        }, "/tmp/gateway-test.toml")
        service = GatewayService(config, reactor)
        self.addCleanup(service.stopService)
        with self.assertRaises(SystemExit) as caught:
            service.startService()
        self.assertEqual(
            str(caught.exception),
            f"gateway: cannot listen on admin.listen tcp:{port}:interface=127.0.0.1: "
            "[Errno 98] Address already in use",
        )
