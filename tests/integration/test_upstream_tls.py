"""proxy_pass https:// end to end: verification, SNI, client certificates, session reuse,
the handshake inside proxy_connect_timeout, keepalive, and probes over TLS.

The backends are Twisted protocols speaking TLS through the standard library's
``ssl.SSLObject`` (a TLS stack independent of the gateway's pyOpenSSL code), with
certificates made by ``trustme``. Each records what its handshakes looked like: the SNI
it saw, whether the session was resumed, the client certificate. A backend answers
``sni=NAME`` (``-`` when none) so a test reads the SNI in the response too.
"""
from __future__ import annotations

import datetime
import os
import shutil
import tempfile
import ssl
from dataclasses import dataclass
from typing import Optional

import httptools
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import protocol, reactor
from twisted.trial import unittest

from tests.integration.harness import WAIT, get, sleep, start_gateway

SERVER_NAME = "app.example.test"
SNI_BODY = b"sni=" + SERVER_NAME.encode()


@dataclass
class Handshake:
    sni: Optional[str]
    reused: bool
    client_cn: Optional[list]     # the client certificate's commonName(s), if one came


class TLSBackendConnection(protocol.Protocol):
    """One connection: TLS through an ``SSLObject`` on memory BIOs, then HTTP/1.1
    keep-alive requests answered with the SNI seen. A connection whose first byte is
    not a TLS record (0x16) is served in cleartext, answering ``cleartext``."""

    def connectionMade(self):
        self.backend = self.factory
        self.backend.connections += 1
        self.tls = None
        self.handshaken = False
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def dataReceived(self, data):
        if self.tls is None and not self.handshaken:
            if data[:1] != b"\x16":
                self.handshaken = True      # cleartext from here on
                self.tls = False
            else:
                self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
                self.tls = self.backend.context.wrap_bio(
                    self.incoming, self.outgoing, server_side=True)
                self.tls.sni = None
        if self.tls is False:
            self.parser.feed_data(data)
            return
        self.incoming.write(data)
        if not self.handshaken:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except ssl.SSLError as e:
                self.backend.failures.append(e.reason)
                self._flush()
                self.transport.loseConnection()
                return
            self.handshaken = True
            cert = self.tls.getpeercert()
            subject = None
            if cert:
                subject = [v for rdn in cert["subject"] for k, v in rdn if k == "commonName"]
            self.backend.handshakes.append(
                Handshake(self.tls.sni, self.tls.session_reused, subject))
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._flush()
                self.transport.loseConnection()
                return
            except ssl.SSLError as e:
                self.backend.failures.append(e.reason)
                self._flush()
                self.transport.loseConnection()
                return
            if not chunk:
                break
            self.parser.feed_data(chunk)
        self._flush()

    def _flush(self):
        data = self.outgoing.read()
        if data:
            self.transport.write(data)

    # httptools callbacks
    def on_url(self, url):
        self.url += url

    def on_message_complete(self):
        self.backend.paths.append(self.url.decode())
        self.url = b""
        if self.tls is False:
            body = b"cleartext"
        else:
            body = b"sni=" + (self.tls.sni or "-").encode()
        if self.backend.close_delimited:
            # the body ends with the TCP connection, without a TLS close_notify
            self.tls.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)
            self._flush()
            self.transport.loseConnection()
            return
        response = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
        if self.tls is False:
            self.transport.write(response)
        else:
            self.tls.write(response)


class TLSBackend(protocol.ServerFactory):
    protocol = TLSBackendConnection

    def __init__(self, context: ssl.SSLContext):
        self.context = context
        context.sni_callback = self._sni
        self.handshakes: list[Handshake] = []
        self.failures: list[str] = []
        self.paths: list[str] = []
        self.connections = 0
        self.close_delimited = False
        self.port = None

    @staticmethod
    def _sni(sslobj, name, _context):
        sslobj.sni = name

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.port.getHost().port


class Silent(protocol.Protocol):
    """Accepts the connection and never answers the ClientHello."""

    def dataReceived(self, data):
        self.factory.received += len(data)


class Certificates:
    """A CA, the files a test config points at, and server contexts for backends."""

    def __init__(self, testcase: unittest.TestCase):
        self.dir = tempfile.mkdtemp(prefix="gateway-upstream-tls-")
        testcase.addCleanup(shutil.rmtree, self.dir, True)
        self.ca = trustme.CA()
        self.ca_file = self.path("ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def server_context(self, *names: str, common_name: Optional[str] = None,
                       ca: Optional[trustme.CA] = None) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        (ca or self.ca).issue_cert(*names, common_name=common_name).configure_cert(context)
        return context

    def context_without_san(self, common_name: str) -> ssl.SSLContext:
        """A server certificate signed by the CA whose only name is its CN."""
        ca_key = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        cert_file, key_file = self.path("nosan.pem"), self.path("nosan.key")
        with open(cert_file, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_file, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        return context


def start_tls_backend(testcase, context: ssl.SSLContext) -> TLSBackend:
    backend = TLSBackend(context)
    backend.port = reactor.listenTCP(0, backend, interface="127.0.0.1")
    testcase.addCleanup(backend.port.stopListening)
    return backend


def config(address: str, tls: str = "", upstream_extra: str = "", location_extra: str = "",
           scheme: str = "https") -> str:
    return """
    [gateway]
    access_log = false
    [upstreams.app]
    servers = [ { address = "%s" } ]
    %s
    %s
    [[servers]]
    listen = ["tcp:0:interface=127.0.0.1"]
    locations = [ { path = "/", proxy_pass = "%s://app", add_header = { X-Upstream-Status = "$upstream_status" } %s } ]
    """ % (address, "tls = { %s }" % tls if tls else "", upstream_extra, scheme,
           location_extra)


class Verification(unittest.TestCase):
    """The verification matrix: chain first, then the name against subjectAltName."""

    def setUp(self):
        self.certs = Certificates(self)

    async def _fetch(self, context, tls=None):
        backend = start_tls_backend(self, context)
        tls = tls or f'ca = "{self.certs.ca_file}", server_name = "{SERVER_NAME}"'
        _, port = await start_gateway(self, config(backend.address, tls))
        return await get(port), backend

    async def test_certificate_with_the_name_in_its_san_verifies(self):
        response, backend = await self._fetch(self.certs.server_context(SERVER_NAME))
        self.assertEqual((response.status, response.body), (200, SNI_BODY))
        self.assertEqual(len(backend.handshakes), 1)

    async def test_wildcard_san_covers_one_leftmost_label(self):
        response, _ = await self._fetch(self.certs.server_context("*.example.test"))
        self.assertEqual((response.status, response.body), (200, SNI_BODY))

    async def test_wildcard_san_does_not_cover_two_labels(self):
        response, _ = await self._fetch(
            self.certs.server_context("*.example.test"),
            tls=f'ca = "{self.certs.ca_file}", server_name = "a.app.example.test"')
        self.assertEqual(response.status, 502)

    async def test_common_name_is_ignored_when_the_san_does_not_match(self):
        response, backend = await self._fetch(
            self.certs.server_context("other.example.test", common_name=SERVER_NAME))
        self.assertEqual(response.status, 502)
        self.assertEqual(response.header("X-Upstream-Status"), "502")
        self.assertEqual(backend.paths, [])   # nothing was sent to an unverified peer

    async def test_certificate_without_san_does_not_verify(self):
        response, backend = await self._fetch(self.certs.context_without_san(SERVER_NAME))
        self.assertEqual(response.status, 502)
        self.assertEqual(backend.paths, [])

    async def test_certificate_from_another_ca_gives_502(self):
        other = trustme.CA()
        response, backend = await self._fetch(
            self.certs.server_context(SERVER_NAME, ca=other))
        self.assertEqual(response.status, 502)
        self.assertEqual(backend.paths, [])

    async def test_system_trust_store_does_not_trust_a_test_ca(self):
        response, _ = await self._fetch(self.certs.server_context(SERVER_NAME),
                                        tls=f'server_name = "{SERVER_NAME}"')
        self.assertEqual(response.status, 502)

    async def test_verify_off_accepts_any_certificate(self):
        other = trustme.CA()
        response, _ = await self._fetch(
            self.certs.server_context("other.example.test", ca=other),
            tls=f'verify = false, server_name = "{SERVER_NAME}"')
        self.assertEqual((response.status, response.body), (200, SNI_BODY))

    async def test_ip_address_peer_verifies_against_ip_san_and_sends_no_sni(self):
        response, backend = await self._fetch(self.certs.server_context("127.0.0.1"),
                                              tls=f'ca = "{self.certs.ca_file}"')
        self.assertEqual((response.status, response.body), (200, b"sni=-"))
        self.assertEqual(backend.handshakes[0].sni, None)


class ServerName(unittest.TestCase):
    """SNI: the host of the address by default, server_name when set, none with false."""

    def setUp(self):
        self.certs = Certificates(self)

    async def _sni(self, tls):
        backend = start_tls_backend(self, self.certs.server_context("localhost",
                                                                    SERVER_NAME))
        address = "localhost:%d" % backend.port.getHost().port
        _, port = await start_gateway(self, config(address, tls))
        response = await get(port)
        self.assertEqual(response.status, 200)
        return response.body, backend.handshakes[0].sni

    async def test_default_sni_is_the_host_of_the_address(self):
        self.assertEqual(await self._sni(f'ca = "{self.certs.ca_file}"'),
                         (b"sni=localhost", "localhost"))

    async def test_server_name_is_sent_and_verified(self):
        self.assertEqual(
            await self._sni(f'ca = "{self.certs.ca_file}", server_name = "{SERVER_NAME}"'),
            (b"sni=" + SERVER_NAME.encode(), SERVER_NAME))

    async def test_server_name_false_sends_no_sni(self):
        self.assertEqual(await self._sni(f'ca = "{self.certs.ca_file}", server_name = false'),
                         (b"sni=-", None))


class ClientCertificate(unittest.TestCase):
    """Mutual TLS: the group's certificate and key are presented to a peer asking."""

    async def _backend(self, certs):
        context = certs.server_context(SERVER_NAME)
        context.verify_mode = ssl.CERT_REQUIRED
        certs.ca.configure_trust(context)
        return start_tls_backend(self, context)

    async def test_client_certificate_is_presented_when_configured(self):
        certs = Certificates(self)
        client = certs.ca.issue_cert("gateway.example.test", common_name="gateway")
        cert_file, key_file = certs.path("client.pem"), certs.path("client.key")
        client.cert_chain_pems[0].write_to_path(cert_file)
        client.private_key_pem.write_to_path(key_file)
        backend = await self._backend(certs)
        tls = (f'ca = "{certs.ca_file}", server_name = "{SERVER_NAME}", '
               f'certificate = "{cert_file}", key = "{key_file}"')
        _, port = await start_gateway(self, config(backend.address, tls))
        response = await get(port)
        self.assertEqual(response.status, 200)
        self.assertEqual(backend.handshakes[0].client_cn, ["gateway"])

    async def test_peer_requiring_a_certificate_refuses_a_gateway_without_one(self):
        certs = Certificates(self)
        backend = await self._backend(certs)
        tls = f'ca = "{certs.ca_file}", server_name = "{SERVER_NAME}"'
        _, port = await start_gateway(self, config(backend.address, tls))
        response = await get(port)
        self.assertEqual(response.status, 502)
        self.assertEqual(backend.handshakes, [])
        self.assertEqual(backend.paths, [])


class Connections(unittest.TestCase):
    def setUp(self):
        self.certs = Certificates(self)
        self.tls = f'ca = "{self.certs.ca_file}", server_name = "{SERVER_NAME}"'

    async def test_new_connection_resumes_the_peers_last_session(self):
        backend = start_tls_backend(self, self.certs.server_context(SERVER_NAME))
        # keepalive = 0: every request opens a new connection
        _, port = await start_gateway(self, config(backend.address, self.tls,
                                                   "keepalive = 0"))
        for _ in range(3):
            self.assertEqual((await get(port)).status, 200)
        self.assertEqual(backend.connections, 3)
        self.assertEqual([h.reused for h in backend.handshakes], [False, True, True])

    async def test_tls_connection_is_kept_alive_and_reused(self):
        backend = start_tls_backend(self, self.certs.server_context(SERVER_NAME))
        _, port = await start_gateway(self, config(backend.address, self.tls))
        for _ in range(3):
            self.assertEqual((await get(port)).status, 200)
        self.assertEqual((backend.connections, len(backend.handshakes)), (1, 1))
        self.assertEqual(backend.paths, ["/", "/", "/"])

    async def test_group_used_with_both_schemes_keeps_tls_and_cleartext_apart(self):
        backend = start_tls_backend(self, self.certs.server_context(SERVER_NAME))
        toml = """
        [gateway]
        access_log = false
        [upstreams.app]
        servers = [ { address = "{b}" } ]
        tls = { %s }
        [[servers]]
        listen = ["tcp:0:interface=127.0.0.1"]
        locations = [ { path = "/plain/", proxy_pass = "http://app" },
                      { path = "/tls/", proxy_pass = "https://app" } ]
        """ % self.tls
        _, port = await start_gateway(self, toml, b=backend.address)
        bodies = [(await get(port, path)).body
                  for path in ("/plain/", "/tls/", "/plain/", "/tls/")]
        self.assertEqual(bodies, [b"cleartext", b"sni=" + SERVER_NAME.encode()] * 2)
        self.assertEqual(backend.connections, 2)   # one of each, both reused

    async def test_body_ended_by_a_close_without_close_notify_is_complete(self):
        """As nginx (SSL_OP_IGNORE_UNEXPECTED_EOF): a TCP close ends a close-delimited
        body over TLS like a clean close_notify would."""
        backend = start_tls_backend(self, self.certs.server_context(SERVER_NAME))
        backend.close_delimited = True
        _, port = await start_gateway(self, config(backend.address, self.tls))
        response = await get(port)
        self.assertEqual((response.status, response.body),
                         (200, b"sni=" + SERVER_NAME.encode()))

    async def test_handshake_that_never_completes_is_a_connect_timeout(self):
        factory = protocol.ServerFactory.forProtocol(Silent)
        factory.received = 0
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        address = "127.0.0.1:%d" % listening.getHost().port
        _, port = await start_gateway(
            self, config(address, self.tls, location_extra=', proxy_connect_timeout = "0.5s"'))
        started = reactor.seconds()
        response = await get(port)
        elapsed = reactor.seconds() - started
        self.assertEqual(response.status, 504)
        self.assertEqual(response.header("X-Upstream-Status"), "504")
        self.assertGreater(factory.received, 0)          # a ClientHello was sent
        self.assertTrue(0.5 <= elapsed < WAIT / 2, elapsed)


class HealthProbes(unittest.TestCase):
    async def test_probes_of_a_group_used_with_https_speak_tls(self):
        certs = Certificates(self)
        backend = start_tls_backend(self, certs.server_context(SERVER_NAME))
        tls = f'ca = "{certs.ca_file}", server_name = "{SERVER_NAME}"'
        service, _ = await start_gateway(self, config(
            backend.address, tls,
            'health_check = { uri = "/health", interval = "0.1s", body = "sni=" }'))
        peer = service.manager.group("app").peers[0]
        for _ in range(int(WAIT / 0.05)):
            if peer.health_last is not None:
                break
            await sleep(0.05)
        self.assertEqual((peer.health_last.passed, peer.healthy), (True, True))
        self.assertEqual(backend.paths[0], "/health")
        self.assertEqual(backend.handshakes[0].sni, SERVER_NAME)

