"""TLS on a real listener: SNI, protocols, sessions, client certificates, ``$ssl_*``.

The gateway listens on 127.0.0.1 port 0 with several TLS servers on one listen
description; clients are Twisted TLS connections (pyOpenSSL, always offering ALPN, as
curl and browsers do) carrying raw HTTP/1.1. Certificates are made by the test
(trustme, :mod:`tests.tls.pki`).
"""
from __future__ import annotations

import os
import subprocess
import sys

from OpenSSL import SSL
from twisted.internet import defer, protocol, reactor
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest
from zope.interface import implementer

from gateway.tls.server import CERT_ERROR_PAGE, NO_CERT_PAGE, PLAIN_HTTP_PAGE
from tests.integration.harness import (
    WAIT,
    RawClient,
    request,
    start_backends,
    start_gateway,
)
from tests.tls.pki import PKI

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIG = """
[gateway]
access_log = false
[upstreams.app]
servers = [ { address = "{b0}" } ]
[[servers]]
listen = ["tcp:0:interface=127.0.0.1"]
server_name = ["default.test"]
default = true
tls = { certificate = "{default_pem}", key = "{default_key}" }
locations = [ { path = "/", return = { status = 200, body = "default|$ssl_server_name|$ssl_protocol|$ssl_cipher|$scheme|$https|$ssl_session_reused" } } ]
[[servers]]
listen = ["tcp:0:interface=127.0.0.1"]
server_name = ["first.test", "app.test"]
tls = { certificate = "{app_pem}", key = "{app_key}" }
locations = [ { path = "/", proxy_pass = "http://app" } ]
[[servers]]
listen = ["tcp:0:interface=127.0.0.1"]
server_name = ["*.wild.test"]
tls = { certificate = "{wild_pem}", key = "{wild_key}" }
locations = [ { path = "/", return = { status = 200, body = "wild" } } ]
[[servers]]
listen = ["tcp:0:interface=127.0.0.1"]
server_name = ["~^node\\\\d+\\\\.test$"]
tls = { certificate = "{node_pem}", key = "{node_key}" }
locations = [ { path = "/", return = { status = 200, body = "regex $host" } } ]
[[servers]]
listen = ["tcp:0:interface=127.0.0.1"]
server_name = ["secure.test"]
tls = { certificate = "{secure_pem}", key = "{secure_key}", client_ca = "{ca}", verify_client = "on" }
locations = [ { path = "/", return = { status = 200, body = "secure|$ssl_client_verify|$ssl_client_s_dn" } } ]
[[servers]]
listen = ["tcp:0:interface=127.0.0.1"]
server_name = ["optional.test"]
tls = { certificate = "{optional_pem}", key = "{optional_key}", client_ca = "{ca}", verify_client = "optional" }
locations = [ { path = "/", return = { status = 200, body = "optional|$ssl_client_verify|$ssl_client_s_dn" } } ]
"""


@implementer(IOpenSSLClientConnectionCreator)
class ClientOptions:
    """A pyOpenSSL client connection as the test wants it."""

    def __init__(self, server_name=None, alpn=(b"http/1.1",), versions=None, ciphers=None,
                 certificate=None, resume=None):
        self.server_name = server_name
        self.alpn = alpn
        self.versions = versions
        self.ciphers = ciphers
        self.certificate = certificate
        self.resume = resume            # an earlier client's SSL.Connection

    def clientConnectionForTLS(self, tls_protocol) -> SSL.Connection:
        if self.resume is not None:
            conn = SSL.Connection(self.resume.get_context(), None)
            conn.set_session(self.resume.get_session())
        else:
            ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
            if self.versions is not None:
                ctx.set_min_proto_version(self.versions[0])
                ctx.set_max_proto_version(self.versions[1])
            if self.ciphers is not None:
                ctx.set_cipher_list(self.ciphers)
            if self.certificate is not None:
                ctx.use_certificate_file(self.certificate[0])
                ctx.use_privatekey_file(self.certificate[1])
            conn = SSL.Connection(ctx, None)
        if self.server_name is not None:
            conn.set_tlsext_host_name(self.server_name.encode())
        if self.alpn:
            conn.set_alpn_protos(list(self.alpn))
        return conn


class _ClientFactory(protocol.ClientFactory):
    def __init__(self, client):
        self.client = client

    def buildProtocol(self, addr):
        return self.client

    def clientConnectionFailed(self, connector, reason):
        self.client.handshake.errback(reason)


@implementer(IHandshakeListener)
class TLSClient(RawClient):
    """A raw HTTP client over TLS; ``handshake`` fires when it completes (or fails
    with the reason the connection was lost)."""

    def __init__(self):
        super().__init__()
        self.handshake = defer.Deferred()

    def handshakeCompleted(self):
        self.handshake.callback(None)

    def connectionLost(self, reason):
        if not self.handshake.called:
            self.handshake.errback(reason)
        super().connectionLost(reason)

    @property
    def tls(self) -> SSL.Connection:
        return self.transport.getHandle()

    def served_names(self) -> list[str]:
        return PKI.names_in(self.tls.get_peer_certificate().to_cryptography())


class TLSCase(unittest.TestCase):
    async def start(self):
        self.pki = PKI(self)
        paths = {"ca": self.pki.ca_path}
        for name, hosts in [("default", ["default.test"]), ("app", ["app.test", "first.test"]),
                            ("wild", ["*.wild.test"]), ("node", ["nodes.test"]),
                            ("secure", ["secure.test"]), ("optional", ["optional.test"])]:
            paths[name + "_pem"], paths[name + "_key"] = self.pki.server_files(name, *hosts)
        self.backends = start_backends(self, "backend")
        self.service, self.port = await start_gateway(self, CONFIG, self.backends, **paths)

    async def connect(self, **options) -> TLSClient:
        client = TLSClient()
        factory = TLSMemoryBIOFactory(ClientOptions(**options), True,
                                      _ClientFactory(client),
                                      clock=reactor)
        reactor.connectTCP("127.0.0.1", self.port, factory, timeout=WAIT)
        self.addCleanup(self._close, client)
        await client.handshake.addTimeout(WAIT, reactor)
        return client

    @staticmethod
    def _close(client):
        if not client.is_closed and client.transport is not None:
            client.transport.loseConnection()
            return client.wait_closed()
        return None

    async def get(self, client: TLSClient, host: str, path: str = "/", headers: str = ""):
        client.transport.write((f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n")
                               .encode())
        responses = await client.wait_responses(len(client.responses) + 1)
        return responses[-1]

    async def fetch(self, host: str, **options):
        """One request on a new connection; (response, client)."""
        client = await self.connect(**options)
        return await self.get(client, host), client

    async def handshake_failure(self, **options) -> Exception:
        client = TLSClient()
        factory = TLSMemoryBIOFactory(ClientOptions(**options), True,
                                      _ClientFactory(client),
                                      clock=reactor)
        reactor.connectTCP("127.0.0.1", self.port, factory, timeout=WAIT)
        try:
            await client.handshake.addTimeout(WAIT, reactor)
        except Exception as e:
            await client.wait_closed()
            return e
        self.fail("the handshake succeeded")


class ServerNameIndication(TLSCase):
    async def test_sni_picks_the_certificate_and_host_still_picks_the_server(self):
        await self.start()
        cases = [
            # (SNI, Host, names on the certificate served, body)
            ("app.test", "app.test", ["app.test", "first.test"], b"backend"),
            ("first.test", "first.test", ["app.test", "first.test"], b"backend"),
            ("x.wild.test", "x.wild.test", ["*.wild.test"], b"wild"),
            ("node42.test", "node42.test", ["nodes.test"], b"regex node42.test"),
            # SNI chooses the certificate only: the Host header chooses the server
            ("x.wild.test", "node7.test", ["*.wild.test"], b"regex node7.test"),
        ]
        for sni, host, names, body in cases:
            response, client = await self.fetch(host, server_name=sni)
            self.assertEqual((client.served_names(), response.status, response.body),
                             (names, 200, body), (sni, host))

    async def test_no_sni_or_an_unknown_name_gets_the_default_certificate(self):
        await self.start()
        for sni in (None, "unknown.test"):
            response, client = await self.fetch("default.test", server_name=sni)
            self.assertEqual(client.served_names(), ["default.test"])
            self.assertEqual(response.body.split(b"|")[:2],
                             [b"default", (sni or "").encode()])

    async def test_tls_variables_scheme_and_forwarded_proto(self):
        await self.start()
        response, client = await self.fetch("default.test", server_name="default.test")
        protocol_name = client.tls.get_protocol_version_name()
        cipher = client.tls.get_cipher_name()
        self.assertEqual(response.body.decode(), "|".join([
            "default", "default.test", protocol_name, cipher, "https", "on", "."]))
        self.assertEqual(protocol_name, "TLSv1.3")
        await self.fetch("app.test", server_name="app.test")
        self.assertEqual(self.backends[0].requests[0].headers["x-forwarded-proto"], "https")

    async def test_a_second_connection_resumes_the_session(self):
        await self.start()
        response, first = await self.fetch("default.test", server_name="default.test")
        self.assertEqual(response.body.rsplit(b"|", 1)[1], b".")
        response, second = await self.fetch("default.test", server_name="default.test",
                                            resume=first.tls)
        self.assertEqual(response.body.rsplit(b"|", 1)[1], b"r")


class Protocols(TLSCase):
    async def test_tls_1_1_client_is_refused(self):
        await self.start()
        failure = await self.handshake_failure(
            versions=(SSL.TLS1_1_VERSION, SSL.TLS1_1_VERSION),
            ciphers=b"DEFAULT:@SECLEVEL=0")            # so the client can speak it
        self.assertIsInstance(failure, SSL.Error)
        self.assertIn("alert protocol version", str(failure))

    async def test_alpn_offering_clients_negotiate_h2_or_http11(self):
        await self.start()
        client = await self.connect(server_name="default.test", alpn=(b"h2", b"http/1.1"))
        self.assertEqual(client.tls.get_alpn_proto_negotiated(), b"h2")
        response, client = await self.fetch("default.test", server_name="default.test",
                                            alpn=(b"http/1.1",))
        self.assertEqual((client.tls.get_alpn_proto_negotiated(), response.status),
                         (b"http/1.1", 200))


class PlainHTTP(TLSCase):
    async def test_cleartext_http_on_the_tls_port_is_400_plain_http_request(self):
        await self.start()
        client, responses = await request(
            self.port, b"GET / HTTP/1.1\r\nHost: default.test\r\n\r\n")
        await client.wait_closed()
        self.assertEqual((responses[0].status, responses[0].body,
                          responses[0].header("Connection")),
                         (400, PLAIN_HTTP_PAGE, "close"))
        self.assertIn(b"<center>The plain HTTP request was sent to HTTPS port</center>",
                      PLAIN_HTTP_PAGE)


class ClientCertificates(TLSCase):
    async def test_verify_on_without_certificate_is_400_no_required_certificate(self):
        await self.start()
        response, client = await self.fetch("secure.test", server_name="secure.test")
        self.assertEqual((response.status, response.body, response.header("Connection")),
                         (400, NO_CERT_PAGE, "close"))
        await client.wait_closed()

    async def test_verify_on_with_a_good_certificate_passes_with_the_subject(self):
        await self.start()
        files = self.pki.client_files("alice", common_name="alice")
        response, _ = await self.fetch("secure.test", server_name="secure.test",
                                       certificate=files)
        self.assertEqual((response.status, response.body.decode()), (
            200, f"secure|SUCCESS|CN=alice,OU={PKI.unit_of(files[0])},O=Example\\, Inc."))

    async def test_verify_optional_passes_without_certificate(self):
        await self.start()
        response, _ = await self.fetch("optional.test", server_name="optional.test")
        self.assertEqual((response.status, response.body), (200, b"optional|NONE|"))

    async def test_verify_optional_with_a_good_certificate_is_success(self):
        await self.start()
        files = self.pki.client_files("bob", common_name="bob", organization="Bob+Co")
        response, _ = await self.fetch("optional.test", server_name="optional.test",
                                       certificate=files)
        self.assertEqual(response.body.decode(),
                         f"optional|SUCCESS|CN=bob,OU={PKI.unit_of(files[0])},O=Bob\\+Co")

    async def test_verify_optional_with_an_untrusted_certificate_is_400_certificate_error(self):
        await self.start()
        files = self.pki.client_files("mallory", ca=self.pki.stranger)
        response, client = await self.fetch("optional.test", server_name="optional.test",
                                            certificate=files)
        self.assertEqual((response.status, response.body, response.header("Connection")),
                         (400, CERT_ERROR_PAGE, "close"))

    async def test_host_of_a_verifying_server_after_another_sni_name_is_421(self):
        await self.start()
        response, _ = await self.fetch("secure.test", server_name="app.test")
        self.assertEqual(response.status, 421)


class CheckCommand(unittest.TestCase):
    def test_check_reports_a_key_that_does_not_match_its_certificate(self):
        pki = PKI(self)
        certificate, _ = pki.server_files("one", "a.test")
        _, key = pki.server_files("two", "b.test")
        path = pki.write("bad.toml", (
            '[[servers]]\nlisten = ["tcp:0"]\n'
            'tls = { certificate = "one.pem", key = "two.key" }\n'
            'locations = [ { path = "/", return = { status = 200 } } ]\n').encode())
        result = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "gateway", "-c", path, "--check"],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn(f'servers[0].tls.key: the key "{key}" does not match the certificate '
                      f'"{certificate}"', result.stderr)
