"""The admin listener's HTTP side as transcripts: bytes in, a response out, on a Clock
and a StringTransport (gateway.admin.site, status.py, the page)."""
from __future__ import annotations

import json
import re
import tomllib

import httptools
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest

from gateway.admin import Admin, AdminSite, ProcessInfo
from gateway.admin.status import status_page
from gateway.config import parse_config
from gateway.metrics import Metrics
from gateway.service import GatewayService
from gateway.upstream import UpstreamManager

CONFIG = """
[gateway]
access_log = false
[admin]
listen = "tcp:9901:interface=127.0.0.1"
[upstreams.app]
servers = [ { address = "127.0.0.1:8081" }, { address = "unix:/run/app.sock" } ]
[[servers]]
listen = ["tcp:8080"]
locations = [ { path = "/", proxy_pass = "http://app" } ]
"""


class Response:
    def __init__(self, raw: bytes):
        self.headers = {}
        self.body = b""
        self.complete = False
        parser = httptools.HttpResponseParser(self)
        parser.feed_data(raw)
        self.status = parser.get_status_code()

    def on_header(self, name, value):
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, data):
        self.body += data

    def on_message_complete(self):
        self.complete = True

    def json(self):
        return json.loads(self.body)


def admin_site(config_text: str = CONFIG):
    config = parse_config(tomllib.loads(config_text), "/etc/gateway/site.toml")
    clock = MemoryReactorClock()
    clock.advance(1_700_000_000)
    manager = UpstreamManager(config.upstreams, clock)
    metrics = Metrics(config, clock)
    admin = Admin(manager, metrics, ProcessInfo(clock.seconds() - 90, config.path, pid=4242,
                                                version="1.2.3"))
    return AdminSite(admin, clock), admin, clock


def call(site, method: str, path: str, body: bytes = b"", headers: str = "") -> Response:
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    protocol.dataReceived(head.encode() + b"\r\n" + body)
    response = Response(transport.value())
    protocol.connectionLost(None)
    return response


class Paths(unittest.TestCase):
    def setUp(self):
        self.site, self.admin, self.clock = admin_site()

    def test_status_is_json_with_the_process_and_every_upstream_peer(self):
        response = call(self.site, "GET", "/status")
        self.assertEqual((response.status, response.headers["content-type"]),
                         (200, "application/json"))
        document = response.json()
        self.assertEqual(document["gateway"], {
            "version": "1.2.3", "pid": 4242, "config": "/etc/gateway/site.toml",
            "start_time": 1_699_999_910.0, "now": 1_700_000_000.0, "uptime": 90.0,
            "connections": 0, "tunnels": 0, "requests": 0,
        })
        self.assertEqual(document["upstreams"], self.admin.manager.snapshot())
        self.assertEqual([p["name"] for p in document["upstreams"]["app"]["peers"]],
                         ["127.0.0.1:8081", "unix:/run/app.sock"])
        self.assertEqual(response.headers["cache-control"], "no-store")

    def test_metrics_are_prometheus_text(self):
        response = call(self.site, "GET", "/metrics")
        self.assertEqual(response.headers["content-type"],
                         "text/plain; version=0.0.4; charset=utf-8")
        names = {f.name for f in text_string_to_metric_families(response.body.decode())}
        self.assertTrue({"gateway_http_requests", "gateway_upstream_requests",
                         "gateway_upstream_response_seconds", "gateway_client_connections",
                         "gateway_tunnels", "gateway_grpc_calls", "gateway_reloads",
                         "gateway_info"} <= names, names)

    def test_the_page_embeds_the_status_and_loads_nothing_from_elsewhere(self):
        response = call(self.site, "GET", "/")
        self.assertEqual(response.headers["content-type"], "text/html; charset=utf-8")
        self.assertIn("default-src 'none'", response.headers["content-security-policy"])
        page = response.body.decode()
        self.assertNotRegex(page, r'(src|href)="(https?:)?//')
        self.assertNotIn("<link", page)
        embedded = re.search(r"const INITIAL = (.*);\n", page).group(1)
        self.assertEqual(json.loads(embedded)["upstreams"]["app"]["name"], "app")
        self.assertIn('fetch("status"', page)
        self.assertIn('name="viewport"', page)

    def test_the_embedded_document_cannot_close_the_script_element(self):
        page = status_page({"gateway": {}, "upstreams": {"x": "</script><b>"}}).decode()
        self.assertNotIn("</script><b>", page)
        self.assertIn("\\u003c/script>\\u003cb>", page)

    def test_head_answers_headers_only(self):
        response = call(self.site, "HEAD", "/status")
        self.assertEqual((response.status, response.body), (200, b""))

    def test_a_trailing_slash_is_the_same_path(self):
        self.assertEqual(call(self.site, "GET", "/status/").status, 200)

    def test_unknown_paths_are_json_404(self):
        for path in ("/nope", "/api", "/api/upstreams/app/peers", "/api/upstreams/app/servers/a/b"):
            response = call(self.site, "GET", path)
            self.assertEqual((response.status, response.headers["content-type"]),
                             (404, "application/json"), path)
            self.assertEqual(response.json()["error"]["status"], 404)


class Api(unittest.TestCase):
    def setUp(self):
        self.site, self.admin, self.clock = admin_site()

    def patch(self, path, data, content_type="application/json", method="PATCH"):
        return call(self.site, method, path, json.dumps(data).encode(),
                    headers=f"Content-Type: {content_type}\r\n" if content_type else "")

    def test_patch_changes_the_server_named_by_its_url_encoded_address(self):
        response = self.patch("/api/upstreams/app/servers/unix%3A%2Frun%2Fapp.sock",
                              {"down": True})
        self.assertEqual(response.status, 200)
        self.assertEqual((response.json()["name"], response.json()["state"]),
                         ("unix:/run/app.sock", "down"))
        self.assertTrue(self.admin.manager.group("app").peers[1].down)

    def test_post_is_the_same_as_patch(self):
        response = self.patch("/api/upstreams/app/servers/127.0.0.1%3A8081",
                              {"weight": 5}, method="POST")
        self.assertEqual((response.status, response.json()["weight"]), (200, 5))

    def test_get_reads_groups_servers_and_one_server(self):
        self.assertEqual(list(call(self.site, "GET", "/api/upstreams").json()), ["app"])
        self.assertEqual(call(self.site, "GET", "/api/upstreams/app").json()["name"], "app")
        servers = call(self.site, "GET", "/api/upstreams/app/servers").json()
        self.assertEqual([s["name"] for s in servers], ["127.0.0.1:8081", "unix:/run/app.sock"])
        one = call(self.site, "GET", "/api/upstreams/app/servers/127.0.0.1:8081").json()
        self.assertEqual((one["name"], one["down"], one["drain"]), ("127.0.0.1:8081", False, False))

    def test_errors_are_json_with_the_right_status(self):
        cases = [
            (self.patch("/api/upstreams/nope/servers/x", {"down": True}), 404),
            (self.patch("/api/upstreams/app/servers/x", {"down": True}), 404),
            (self.patch("/api/upstreams/app/servers/127.0.0.1:8081", {"down": "no"}), 400),
            (self.patch("/api/upstreams/app/servers/127.0.0.1:8081", {"down": True},
                        content_type="text/plain"), 415),
            (self.patch("/api/upstreams/app/servers/127.0.0.1:8081", {"down": True},
                        content_type=None), 415),
            (call(self.site, "DELETE", "/api/upstreams/app/servers/127.0.0.1:8081"), 405),
            (self.patch("/status", {"down": True}), 405),
            (self.patch("/api/upstreams/app", {"down": True}), 405),
        ]
        for response, status in cases:
            self.assertEqual((response.status, response.headers["content-type"]),
                             (status, "application/json"))
            self.assertEqual(response.json()["error"]["status"], status)
        self.assertEqual(cases[5][0].headers["allow"], "GET, HEAD, PATCH, POST")
        self.assertEqual(cases[6][0].headers["allow"], "GET, HEAD")
        self.assertFalse(self.admin.manager.group("app").peers[0].down)


class Wiring(unittest.TestCase):
    def service(self, admin: str):
        text = CONFIG.replace('listen = "tcp:9901:interface=127.0.0.1"', admin)
        config = parse_config(tomllib.loads(text), "/etc/gateway/site.toml")
        reactor = MemoryReactorClock()
        service = GatewayService(config, reactor)
        return service, reactor

    def test_the_admin_listener_listens_on_its_description_after_the_proxy_listeners(self):
        service, reactor = self.service('listen = "tcp:9901:interface=127.0.0.1"')
        service.startService()
        self.addCleanup(service.stopService)
        ports = [(port, interface) for port, _, _, interface in reactor.tcpServers]
        self.assertEqual(ports, [(8080, ""), (9901, "127.0.0.1")])
        self.assertIsInstance(reactor.tcpServers[1][1], AdminSite)
        self.assertIs(reactor.tcpServers[1][1].admin, service.admin)
        self.assertEqual(service.admin_listener.name,
                         "admin.listen tcp:9901:interface=127.0.0.1")
        self.assertIs(service.admin.metrics, service.metrics)

    def test_listen_false_starts_no_admin_listener_and_counts_nothing(self):
        service, reactor = self.service("listen = false")
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([port for port, *_ in reactor.tcpServers], [8080])
        self.assertIsNone(service.admin)
        # no metrics hook on the request path when nothing can read the counters
        self.assertEqual(service.on_exchange_done, service.access_log.log)

    def test_with_the_admin_listener_finished_exchanges_are_counted(self):
        service, _ = self.service('listen = "tcp:9901"')
        self.assertEqual(service.on_exchange_done, service.metrics.record)
