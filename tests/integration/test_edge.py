"""The client side end to end: smuggling attempts, limits, timeouts, routing, access."""
import os
import shutil
import subprocess
import sys
import tempfile

from twisted.trial import unittest

from gateway.config import load_config
from gateway.tls.selfsigned import write_localhost_certificate
from tests.integration.harness import connect, get, request, start_backends, start_gateway

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIG = """
[gateway]
access_log = false
[upstreams.app]
servers = [ { address = "{b0}" } ]
[[servers]]
listen = ["tcp:0:interface=127.0.0.1"]
client_max_body_size = "1k"
client_header_timeout = "0.3s"
client_body_timeout = "0.3s"
large_client_header_buffers = "1k"
locations = [
  { path = "/", proxy_pass = "http://app" },
  { path = "/api/", proxy_pass = "http://app/v2/" },
  { path = "= /ping", return = { status = 200, body = "pong $remote_addr\\n" } },
  { path = "/private/", proxy_pass = "http://app", access = ["deny 127.0.0.1", "allow all"] },
  { path = "= /gone", return = { status = 444 } },
  { path = "= /moved", return = { status = 302, url = "/new?from=$uri" } },
]
"""


class Smuggling(unittest.TestCase):
    async def _rejected(self, raw: bytes, status: int = 400):
        backends = start_backends(self, "b")
        _, port = await start_gateway(self, CONFIG, backends)
        client, responses = await request(port, raw)
        await client.wait_closed()
        self.assertEqual(responses[0].status, status, client.received)
        self.assertEqual(responses[0].header("Connection"), "close")
        self.assertEqual(backends[0].requests, [])

    def test_content_length_with_transfer_encoding_is_400(self):
        return self._rejected(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        )

    def test_conflicting_content_length_is_400(self):
        return self._rejected(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"
        )

    def test_invalid_chunk_size_is_400(self):
        return self._rejected(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
        )

    def test_obs_fold_is_400(self):
        return self._rejected(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n")

    def test_bare_cr_is_400(self):
        return self._rejected(b"GET / HTTP/1.1\r\nHost: x\rX-A: 1\r\n\r\n")

    def test_missing_host_in_http11_is_400(self):
        return self._rejected(b"GET / HTTP/1.1\r\n\r\n")

    def test_duplicate_host_is_400(self):
        return self._rejected(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")


class Limits(unittest.TestCase):
    async def test_body_over_client_max_body_size_is_413(self):
        backends = start_backends(self, "b")
        _, port = await start_gateway(self, CONFIG, backends)
        client, responses = await request(
            port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n" + b"a" * 2000
        )
        self.assertEqual(responses[0].status, 413)
        self.assertEqual(backends[0].requests, [])

    async def test_long_request_line_is_414(self):
        backends = start_backends(self, "b")
        _, port = await start_gateway(self, CONFIG, backends)
        _, responses = await request(
            port, b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        self.assertEqual(responses[0].status, 414)

    async def test_long_header_line_is_431(self):
        backends = start_backends(self, "b")
        _, port = await start_gateway(self, CONFIG, backends)
        _, responses = await request(
            port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
        )
        self.assertEqual(responses[0].status, 431)

    async def test_slow_request_head_is_408(self):
        backends = start_backends(self, "b")
        _, port = await start_gateway(self, CONFIG, backends)
        client, responses = await request(port, b"GET / HTTP/1.1\r\nHost: x\r\n")
        await client.wait_closed()
        self.assertEqual(responses[0].status, 408)

    async def test_slow_request_body_is_408(self):
        backends = start_backends(self, "b")
        _, port = await start_gateway(self, CONFIG, backends)
        client, responses = await request(
            port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"
        )
        await client.wait_closed()
        self.assertEqual(responses[0].status, 408)
        self.assertEqual(backends[0].requests, [])


class Routing(unittest.TestCase):
    async def test_uri_part_of_proxy_pass_replaces_the_location_prefix(self):
        def echo_path(req, conn):
            conn.respond(200, req.path.encode())

        backends = start_backends(self, ("b", echo_path))
        _, port = await start_gateway(self, CONFIG, backends)
        self.assertEqual((await get(port, "/api/users?id=3")).body, b"/v2/users?id=3")
        self.assertEqual((await get(port, "/other/x?y")).body, b"/other/x?y")

    async def test_prefix_location_without_its_slash_redirects_301(self):
        backends = start_backends(self, "b")
        _, port = await start_gateway(self, CONFIG, backends)
        response = await get(port, "/api?x=1", host="example.org")
        self.assertEqual(response.status, 301)
        self.assertEqual(response.header("Location"), "http://example.org:%d/api/?x=1" % port)

    async def test_return_location_renders_variables(self):
        backends = start_backends(self, "b")
        _, port = await start_gateway(self, CONFIG, backends)
        response = await get(port, "/ping")
        self.assertEqual((response.status, response.body), (200, b"pong 127.0.0.1\n"))

    async def test_return_444_closes_the_connection_without_a_response(self):
        backends = start_backends(self, "b")
        _, port = await start_gateway(self, CONFIG, backends)
        client, responses = await request(port, b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.wait_closed()
        self.assertEqual((responses, client.received), ([], b""))

    async def test_relative_return_url_is_made_absolute_as_nginx_does(self):
        backends = start_backends(self, "b")
        _, port = await start_gateway(self, CONFIG, backends)
        response = await get(port, "/moved", host="example.org")
        self.assertEqual(response.status, 302)
        self.assertEqual(
            response.header("Location"), "http://example.org:%d/new?from=/moved" % port
        )
        self.assertIn(b"<title>302 Found</title>", response.body)

    async def test_denied_address_gets_403_and_never_reaches_the_peer(self):
        backends = start_backends(self, "b")
        _, port = await start_gateway(self, CONFIG, backends)
        response = await get(port, "/private/x")
        self.assertEqual(response.status, 403)
        self.assertEqual(backends[0].requests, [])

    async def test_request_headers_reach_the_peer_as_documented(self):
        def echo(req, conn):
            conn.respond(200, b"ok")

        backends = start_backends(self, ("b", echo))
        _, port = await start_gateway(self, CONFIG, backends)
        await get(port, "/h", host="Example.ORG.:8080",
                  headers="X-Forwarded-For: 6.6.6.6\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\n")
        headers = backends[0].requests[0].headers
        self.assertEqual(headers["host"], "example.org")
        self.assertEqual(headers["x-real-ip"], "127.0.0.1")
        self.assertEqual(headers["x-forwarded-for"], "127.0.0.1")
        self.assertEqual(headers["x-forwarded-proto"], "http")
        self.assertEqual(headers["x-forwarded-host"], "example.org")
        self.assertEqual(len(headers["x-request-id"]), 32)
        self.assertNotIn("x-secret", headers)


class SiteConfiguration(unittest.TestCase):
    def _site_copy(self) -> str:
        """The shipped conf/site.toml copied into a temporary directory, with the
        throwaway certificate its TLS listener names written next to it by the same
        generator ``make run`` uses (conf/tls/ is never committed)."""
        directory = tempfile.mkdtemp(prefix="gateway-site-")
        self.addCleanup(shutil.rmtree, directory)
        os.mkdir(os.path.join(directory, "conf"))
        shutil.copy(os.path.join(ROOT, "conf", "site.toml"), os.path.join(directory, "conf"))
        write_localhost_certificate(os.path.join(directory, "conf", "tls"))
        return directory

    def test_the_shipped_site_toml_loads(self):
        directory = self._site_copy()
        config = load_config(os.path.join(directory, "conf", "site.toml"))
        self.assertEqual(list(config.listeners()),
                         ["tcp:8080:interface=127.0.0.1", "tcp:8443:interface=127.0.0.1",
                          "tcp:8090:interface=127.0.0.1"])
        self.assertEqual(
            [p.address.text for p in config.upstreams["demo"].servers],
            ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"],
        )
        tls = config.servers[1].tls
        self.assertEqual((tls.certificate, tls.key),
                         (os.path.join(directory, "conf", "tls", "localhost.pem"),
                          os.path.join(directory, "conf", "tls", "localhost.key")))

    def _twistd(self, *args, cwd=ROOT):
        return subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *args],
            cwd=cwd, capture_output=True, text=True, timeout=60,
        )

    def test_check_prints_configuration_ok(self):
        result = self._twistd("-n", "--pidfile=", "gateway", "-c", "conf/site.toml", "--check",
                              cwd=self._site_copy())
        self.assertEqual((result.returncode, result.stdout), (0, "configuration ok\n"), result.stderr)

    def test_check_prints_every_error_with_its_path_and_exits_1(self):
        directory = tempfile.mkdtemp(prefix="gateway-check-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "bad.toml")
        with open(path, "w") as f:
            f.write(
                '[upstreams.app]\nservers = [ { address = "127.0.0.1:1", weight = "x" } ]\n'
                '[[servers]]\nlisten = ["tcp:0"]\n'
                'locations = [ { path = "/", proxy_pas = "http://app" } ]\n'
            )
        result = self._twistd("-n", "--pidfile=", "gateway", "-c", path, "--check")
        self.assertEqual(result.returncode, 1)
        self.assertIn("upstreams.app.servers[0].weight:", result.stderr)
        self.assertIn('servers[0].locations[0].proxy_pas: unknown key (did you mean "proxy_pass"?)', result.stderr)

    def test_grpc_on_the_epoll_reactor_stops_startup_with_one_line(self):
        directory = tempfile.mkdtemp(prefix="gateway-epoll-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "grpc.toml")
        with open(path, "w") as f:
            f.write(
                '[admin]\nlisten = false\n'
                '[upstreams.g]\nservers = [ { address = "127.0.0.1:1" } ]\n'
                '[[servers]]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
                'locations = [ { path = "/", grpc_pass = "grpc://g" } ]\n'
            )
        result = self._twistd("--reactor=epoll", "-n", "--pidfile=", "gateway", "-c", path)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn(
            f"gateway: {path} uses gRPC (grpc_pass, grpc_servers or a grpc health check),"
            " which needs the asyncio reactor; run without --reactor (this one is"
            " EPollReactor)", result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def test_twistd_help_lists_the_gateway_plugin(self):
        result = self._twistd("--help")
        self.assertIn("gateway", result.stdout)


class AccessLogFile(unittest.TestCase):
    async def test_upstream_format_line_is_written_for_a_proxied_request(self):
        backends = start_backends(self, "b")
        directory = tempfile.mkdtemp(prefix="gateway-log-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "access.log")
        service, port = await start_gateway(self, """
            [gateway]
            access_log = "{path}"
            access_log_format = "upstream"
            [upstreams.app]
            servers = [ { address = "{b0}" } ]
            [[servers]]
            listen = ["tcp:0:interface=127.0.0.1"]
            locations = [ { path = "/", proxy_pass = "http://app" } ]
            """, backends, path=path)
        await get(port, "/logged?x=1", headers="User-Agent: tester\r\n")
        service.access_log.flush()
        with open(path) as f:
            line = f.read()
        self.assertRegex(
            line,
            r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] '
            r'"GET /logged\?x=1 HTTP/1\.1" 200 1 "-" "tester" '
            r'upstream=%s upstream_status=200 upstream_response_time=\d+\.\d{3} '
            r'request_time=\d+\.\d{3}\n$' % backends[0].address.replace(".", "\\."),
        )


class Startup(unittest.TestCase):
    def test_a_port_in_use_stops_startup_with_one_line_naming_the_listener(self):
        import socket

        from twisted.internet import reactor

        from gateway.config import parse_config
        from gateway.service import GatewayService

        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        config = parse_config({
            "gateway": {"access_log": False},
            "upstreams": {"app": {"servers": [{"address": "127.0.0.1:1"}]}},
            "servers": [{"listen": [f"tcp:{port}:interface=127.0.0.1"],
                         "locations": [{"path": "/", "proxy_pass": "http://app"}]}],
        }, "/tmp/gateway-test.toml")
        service = GatewayService(config, reactor)
        with self.assertRaises(SystemExit) as caught:
            service.startService()
        self.assertEqual(
            str(caught.exception),
            f"gateway: cannot listen on tcp:{port}:interface=127.0.0.1: "
            "[Errno 98] Address already in use",
        )
