"""``set_real_ip_from`` / ``real_ip_header`` end to end: every test connects from
127.0.0.1, which is the trusted proxy in ``TRUSTED`` and an ordinary client in
``UNTRUSTED``."""
import re

from twisted.trial import unittest

from tests.integration.harness import get, request, start_backends, start_gateway

TRUSTED = """
[gateway]
access_log = false
[upstreams.app]
servers = [ { address = "{b0}" } ]
[[servers]]
listen = ["tcp:0:interface=127.0.0.1"]
set_real_ip_from = ["10.0.0.0/8", "127.0.0.1"]
real_ip_header = "X-Forwarded-For"
locations = [
  { path = "/", proxy_pass = "http://app" },
  { path = "/office/", proxy_pass = "http://app", access = ["allow 198.51.100.0/24", "deny all"] },
  { path = "= /whoami", return = { status = 200, body = "$remote_addr|$remote_port|$realip_remote_addr" } },
]
"""

UNTRUSTED = TRUSTED.replace('["10.0.0.0/8", "127.0.0.1"]', '["10.0.0.0/8"]')

IP_HASH = """
[gateway]
access_log = false
[upstreams.app]
balance = "ip_hash"
servers = [ { address = "{b0}" }, { address = "{b1}" } ]
[[servers]]
listen = ["tcp:0:interface=127.0.0.1"]
set_real_ip_from = ["127.0.0.1"]
locations = [ { path = "/", proxy_pass = "http://app" } ]
"""

FORWARDED = "X-Forwarded-For: 203.0.113.7, 198.51.100.1\r\nX-Request-ID: from-the-proxy\r\n"


class Trusted(unittest.TestCase):
    async def test_the_backend_gets_headers_built_from_the_real_address(self):
        """X-Real-IP is the real client; X-Forwarded-For is the proxy's header plus
        ``$remote_addr`` (nginx's ``$proxy_add_x_forwarded_for``, so the real client
        appears twice); the proxy's X-Request-ID is kept."""
        backends = start_backends(self, "a")
        _, port = await start_gateway(self, TRUSTED, backends)
        response = await get(port, headers=FORWARDED)
        self.assertEqual(response.status, 200)
        (seen,) = backends[0].requests
        self.assertEqual(
            (seen.headers["x-real-ip"], seen.headers["x-forwarded-for"],
             seen.headers["x-request-id"]),
            ("198.51.100.1", "203.0.113.7, 198.51.100.1, 198.51.100.1", "from-the-proxy"))

    async def test_variables_show_the_real_client_and_the_proxy(self):
        _, port = await start_gateway(self, TRUSTED, start_backends(self, "a"))
        with_port = await get(port, "/whoami",
                              headers="X-Forwarded-For: [2001:db8::9]:5555\r\n")
        without = await get(port, "/whoami", headers="X-Forwarded-For: 198.51.100.1\r\n")
        invalid = await get(port, "/whoami", headers="X-Forwarded-For: unknown\r\n")
        self.assertEqual(with_port.body, b"2001:db8::9|5555|127.0.0.1")
        self.assertEqual(without.body, b"198.51.100.1||127.0.0.1")
        self.assertRegex(invalid.body.decode(), r"^127\.0\.0\.1\|\d+\|127\.0\.0\.1$")

    async def test_access_rules_apply_to_the_real_address(self):
        backends = start_backends(self, "a")
        _, port = await start_gateway(self, TRUSTED, backends)
        inside = await get(port, "/office/", headers="X-Forwarded-For: 198.51.100.1\r\n")
        outside = await get(port, "/office/", headers="X-Forwarded-For: 203.0.113.7\r\n")
        no_header = await get(port, "/office/")
        self.assertEqual((inside.status, outside.status, no_header.status), (200, 403, 403))
        self.assertEqual([r.path for r in backends[0].requests], ["/office/"])

    async def test_each_request_on_a_keepalive_connection_is_decided_alone(self):
        _, port = await start_gateway(self, TRUSTED, start_backends(self, "a"))
        client, responses = await request(
            port,
            b"GET /whoami HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.1\r\n\r\n"
            b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /whoami HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.2\r\n"
            b"Connection: close\r\n\r\n",
            count=3)
        await client.wait_closed()
        self.assertEqual([r.body.split(b"|")[0] for r in responses],
                         [b"198.51.100.1", b"127.0.0.1", b"198.51.100.2"])


class Untrusted(unittest.TestCase):
    async def test_headers_of_a_connection_not_in_set_real_ip_from_are_ignored(self):
        backends = start_backends(self, "a")
        _, port = await start_gateway(self, UNTRUSTED, backends)
        response = await get(port, headers=FORWARDED)
        whoami = await get(port, "/whoami", headers=FORWARDED)
        office = await get(port, "/office/", headers="X-Forwarded-For: 198.51.100.1\r\n")
        (seen,) = backends[0].requests
        self.assertEqual(response.status, 200)
        self.assertEqual((seen.headers["x-real-ip"], seen.headers["x-forwarded-for"]),
                         ("127.0.0.1", "127.0.0.1"))
        self.assertTrue(re.fullmatch("[0-9a-f]{32}", seen.headers["x-request-id"]),
                        seen.headers["x-request-id"])
        self.assertRegex(whoami.body.decode(), r"^127\.0\.0\.1\|\d+\|127\.0\.0\.1$")
        self.assertEqual(office.status, 403)


class IpHash(unittest.TestCase):
    async def test_ip_hash_hashes_the_real_address(self):
        """All connections come from 127.0.0.1, yet the peers follow the forwarded
        addresses: 127.0.1.x hashes to the second peer, 127.0.2.x to the first (the
        worked trace of gateway.upstream.balancers.ip_hash)."""
        backends = start_backends(self, "a", "b")
        _, port = await start_gateway(self, IP_HASH, backends)
        bodies = []
        for client in ("127.0.1.2", "127.0.2.2", "127.0.1.200", "127.0.2.9", "127.0.1.2"):
            response = await get(port, headers="X-Real-IP: %s\r\n" % client)
            bodies.append(response.body.decode())
        self.assertEqual(bodies, ["b", "a", "b", "a", "b"])
