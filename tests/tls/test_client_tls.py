"""TLS towards upstreams without sockets: the connector's TLS path driven over in-memory
transports against a Twisted TLS server, on a MemoryReactorClock.

Each test pumps bytes between the gateway's connection (``UpstreamConnector.connect``
with a ``PeerTLS``) and a ``TLSMemoryBIOProtocol`` server holding a trustme
certificate, then asserts what the connect Deferred did: fire with a ready connection
only after the handshake verified, or fail with nginx's words.
"""
from __future__ import annotations

import datetime
import os
import shutil
import tempfile

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import error as ierror
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial import unittest

from gateway.config import ConfigError, parse_config
from gateway.config.model import Address, PeerSettings, UpstreamTLSSettings
from gateway.deadlines import Deadlines
from gateway.http.client import (
    MSG_HANDSHAKE_TIMEOUT,
    ConnectionState,
    UpstreamConnection,
    UpstreamConnector,
    UpstreamError,
)
from gateway.tls.client import UpstreamTLS, verify_error_text
from gateway.upstream.peer import Peer

try:
    import tomllib
except ImportError:  # pragma: no cover
    import tomli as tomllib

NAME = "app.example.test"
CA = trustme.CA()


def peer(address: str = "127.0.0.1:8443") -> Peer:
    host, _, port = address.rpartition(":")
    return Peer(PeerSettings(address=Address(address, host, int(port))))


def write(tmpdir: str, name: str, blob) -> str:
    path = os.path.join(tmpdir, name)
    blob.write_to_path(path)
    return path


class _PEM:
    def __init__(self, data: bytes):
        self.data = data

    def bytes(self) -> bytes:
        return self.data


class CertWithoutSAN:
    """A server certificate from ``CA`` whose only name is its CN (trustme always
    writes a subjectAltName)."""

    def __init__(self, common_name: str):
        ca_key = serialization.load_pem_private_key(CA.private_key_pem.bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(CA.cert_pem.bytes())
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
        self.private_key_and_cert_chain_pem = _PEM(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
            + cert.public_bytes(serialization.Encoding.PEM))


class Received(Protocol):
    def connectionMade(self):
        self.data = b""
        self.factory.instances.append(self)

    def dataReceived(self, data):
        self.data += data


class Wire:
    """A gateway connect attempt with TLS wired to an in-memory TLS server."""

    def __init__(self, testcase, server_cert, settings: UpstreamTLSSettings = None,
                 target: Peer = None, timeout: float = 5.0, tls: UpstreamTLS = None,
                 tcp_delay: float = 0.0):
        self.clock = MemoryReactorClock()
        self.deadlines = Deadlines(self.clock)
        testcase.addCleanup(self.deadlines.stop)
        self.tls = tls or UpstreamTLS(settings)
        self.peer = target or peer()
        self.attempt = self.tls.for_peer(self.peer)
        self.results = []
        self.deferred = UpstreamConnector(self.clock, self.deadlines).connect(
            self.peer.address, timeout, tls=self.attempt)
        self.deferred.addBoth(self.results.append)
        self.clock.advance(tcp_delay)   # the TCP connect took this long
        server_factory = Factory.forProtocol(Received)
        server_factory.instances = []
        self.server_factory = server_factory
        options = PrivateCertificate.loadPEM(
            server_cert.private_key_and_cert_chain_pem.bytes()).options()
        self.server = TLSMemoryBIOFactory(options, False, server_factory,
                                          clock=self.clock).buildProtocol(None)
        self.server_transport = StringTransport()
        self.server.makeConnection(self.server_transport)
        self.client = self.clock.tcpClients[0][2].buildProtocol(None)
        self.client_transport = StringTransport()
        self.client.makeConnection(self.client_transport)
        self.connection = self.client.wrappedProtocol

    def pump(self) -> None:
        for _ in range(50):
            to_server = self.client_transport.value()
            self.client_transport.clear()
            if to_server and not self.server_transport.disconnecting:
                self.server.dataReceived(to_server)
            to_client = self.server_transport.value()
            self.server_transport.clear()
            if to_client and not self.client_transport.disconnecting:
                self.client.dataReceived(to_client)
            if not to_server and not to_client:
                return

    @property
    def error(self) -> UpstreamError:
        self.assert_failed()
        return self.results[0].value

    def assert_failed(self) -> None:
        assert len(self.results) == 1 and isinstance(self.results[0], Failure), self.results


def verifying(ca_file: str, **extra) -> UpstreamTLSSettings:
    return UpstreamTLSSettings(ca=ca_file, server_name=extra.pop("server_name", NAME),
                               **extra)


class Handshake(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="gateway-upstream-tls-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.ca_file = write(self.dir, "ca.pem", CA.cert_pem)

    def test_connect_fires_only_once_the_handshake_verified(self):
        wire = Wire(self, CA.issue_cert(NAME), verifying(self.ca_file))
        self.assertEqual(wire.results, [])
        self.assertNotEqual(wire.client_transport.value(), b"")   # the ClientHello
        self.assertEqual(wire.connection.state, ConnectionState.CONNECTING)
        wire.pump()
        self.assertEqual(wire.results, [wire.connection])
        self.assertIsInstance(wire.connection, UpstreamConnection)
        self.assertEqual(wire.connection.state, ConnectionState.READY)
        self.assertIsNone(wire.connection.deadline)
        self.assertEqual(wire.server.getHandle().get_servername(), NAME.encode())

    def test_request_bytes_reach_the_server_decrypted(self):
        wire = Wire(self, CA.issue_cert(NAME), verifying(self.ca_file))
        wire.pump()
        wire.connection.transport.write(b"GET / HTTP/1.1\r\n\r\n")
        wire.pump()
        self.assertEqual(wire.server_factory.instances[0].data, b"GET / HTTP/1.1\r\n\r\n")

    def test_unknown_ca_fails_with_nginx_verify_error_and_sends_nothing(self):
        other = trustme.CA()
        wire = Wire(self, other.issue_cert(NAME), verifying(self.ca_file))
        wire.pump()
        error = wire.error
        self.assertEqual(
            (error.kind, error.message, error.nothing_received),
            ("error", "upstream SSL certificate verify error: (20:unable to get local "
                      "issuer certificate) while SSL handshaking to upstream", True))
        self.assertTrue(wire.client_transport.disconnected)    # aborted
        self.assertEqual(wire.connection.state, ConnectionState.CLOSED)

    def test_name_not_in_san_fails_even_when_the_cn_matches(self):
        wire = Wire(self, CA.issue_cert("other.example.test", common_name=NAME),
                    verifying(self.ca_file))
        wire.pump()
        self.assertEqual(wire.error.message, f'upstream SSL certificate does not match '
                                             f'"{NAME}" while SSL handshaking to upstream')

    def test_certificate_without_san_does_not_verify_whatever_its_cn(self):
        wire = Wire(self, CertWithoutSAN(NAME), verifying(self.ca_file))
        wire.pump()
        message = wire.error.message
        self.assertTrue(
            message.startswith(f'upstream SSL certificate does not match "{NAME}" ('), message)
        self.assertIn("subjectAltName", message)
        self.assertTrue(wire.client_transport.disconnected)

    def test_wildcard_matches_exactly_one_leftmost_label(self):
        wire = Wire(self, CA.issue_cert("*.example.test"), verifying(self.ca_file))
        wire.pump()
        self.assertEqual(wire.results, [wire.connection])
        deeper = Wire(self, CA.issue_cert("*.example.test"),
                      verifying(self.ca_file, server_name="a.b.example.test"))
        deeper.pump()
        self.assertEqual(deeper.error.message, 'upstream SSL certificate does not match '
                                               '"a.b.example.test" while SSL handshaking '
                                               'to upstream')

    def test_ip_address_is_verified_against_ip_san_and_not_sent_as_sni(self):
        wire = Wire(self, CA.issue_cert("127.0.0.1"), UpstreamTLSSettings(ca=self.ca_file))
        wire.pump()
        self.assertEqual(wire.results, [wire.connection])
        self.assertIsNone(wire.server.getHandle().get_servername())
        mismatch = Wire(self, CA.issue_cert("127.0.0.2"),
                        UpstreamTLSSettings(ca=self.ca_file))
        mismatch.pump()
        self.assertEqual(mismatch.error.message, 'upstream SSL certificate does not match '
                                                 '"127.0.0.1" while SSL handshaking to '
                                                 'upstream')

    def test_verify_off_accepts_an_unknown_ca_and_a_wrong_name(self):
        other = trustme.CA()
        wire = Wire(self, other.issue_cert("other.example.test"),
                    UpstreamTLSSettings(verify=False, server_name=NAME))
        wire.pump()
        self.assertEqual(wire.results, [wire.connection])
        self.assertEqual(wire.server.getHandle().get_servername(), NAME.encode())

    def test_without_ca_the_system_trust_store_is_used(self):
        # OpenSSL's default paths honour SSL_CERT_FILE: point it at the test CA
        previous = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = self.ca_file
        self.addCleanup(lambda: os.environ.pop("SSL_CERT_FILE") if previous is None
                        else os.environ.__setitem__("SSL_CERT_FILE", previous))
        trusted = Wire(self, CA.issue_cert(NAME), UpstreamTLSSettings(server_name=NAME))
        trusted.pump()
        self.assertEqual(trusted.results, [trusted.connection])
        other = Wire(self, trustme.CA().issue_cert(NAME), UpstreamTLSSettings(server_name=NAME))
        other.pump()
        self.assertEqual(other.error.message[:50],
                         "upstream SSL certificate verify error: (20:unable ")

    def test_handshake_timeout_is_a_connect_timeout_counted_from_the_connect(self):
        # 3 of the 5 seconds went to the TCP connect: the handshake gets the other 2
        wire = Wire(self, CA.issue_cert(NAME), verifying(self.ca_file), timeout=5.0,
                    tcp_delay=3.0)
        wire.clock.advance(1.9)
        self.assertEqual(wire.results, [])
        wire.clock.advance(0.2)
        error = wire.error
        self.assertEqual((error.kind, error.message, error.nothing_received),
                         ("timeout", MSG_HANDSHAKE_TIMEOUT, True))
        self.assertTrue(wire.client_transport.disconnected)

    def test_peer_closing_during_the_handshake_is_an_error(self):
        wire = Wire(self, CA.issue_cert(NAME), verifying(self.ca_file))
        wire.client.connectionLost(Failure(ierror.ConnectionDone()))
        self.assertEqual(wire.error.message, "peer closed connection in SSL handshake "
                                             "while SSL handshaking to upstream")
        self.assertEqual(wire.error.kind, "error")

    def test_handshake_failure_names_openssls_reason(self):
        wire = Wire(self, CA.issue_cert(NAME), verifying(self.ca_file))
        wire.client.dataReceived(b"\x15\x03\x03\x00\x02\x02\x28")  # fatal alert 40
        wire.client.connectionLost(Failure(ierror.ConnectionDone()))
        message = wire.error.message
        self.assertTrue(message.startswith("SSL_do_handshake() failed (SSL: "), message)
        self.assertTrue(message.endswith(") while SSL handshaking to upstream"), message)

    def test_cancelling_during_the_handshake_aborts_the_connection(self):
        wire = Wire(self, CA.issue_cert(NAME), verifying(self.ca_file))
        wire.deferred.cancel()
        self.assertEqual(len(wire.results), 1)
        self.assertTrue(wire.client_transport.disconnected)
        self.assertEqual(wire.connection.state, ConnectionState.CLOSED)

    def test_client_certificate_is_sent_when_configured(self):
        client = CA.issue_cert("gateway.example.test", common_name="gateway")
        settings = verifying(self.ca_file,
                             certificate=write(self.dir, "c.pem", client.cert_chain_pems[0]),
                             key=write(self.dir, "c.key", client.private_key_pem))
        server_cert = CA.issue_cert(NAME)
        wire = Wire(self, server_cert, settings)
        # ask for a certificate, accepting any, to see what the client sends
        from OpenSSL import SSL
        wire.server.getHandle().set_verify(SSL.VERIFY_PEER, lambda *a: True)
        wire.pump()
        self.assertEqual(wire.results, [wire.connection])
        sent = wire.server.getHandle().get_peer_certificate()
        self.assertEqual(sent.get_subject().commonName, "gateway")

    def test_closing_an_idle_tls_connection_sends_close_notify_and_closes(self):
        wire = Wire(self, CA.issue_cert(NAME), verifying(self.ca_file))
        wire.pump()
        wire.connection.close()
        self.assertNotEqual(wire.client_transport.value(), b"")   # the close_notify alert
        self.assertTrue(wire.client_transport.disconnecting)
        self.assertFalse(wire.client_transport.disconnected)     # not an abort


class Sessions(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="gateway-upstream-tls-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.settings = verifying(write(self.dir, "ca.pem", CA.cert_pem))
        self.cert = CA.issue_cert(NAME)

    def test_a_verified_connection_leaves_its_session_for_the_next(self):
        tls = UpstreamTLS(self.settings)
        first = Wire(self, self.cert, tls=tls)
        self.assertFalse(first.attempt.resumed)
        first.pump()
        self.assertIn("127.0.0.1:8443", tls.sessions)
        second = Wire(self, self.cert, tls=tls)
        self.assertTrue(second.attempt.resumed)
        second.pump()
        self.assertEqual(second.results, [second.connection])

    def test_sessions_are_kept_per_peer(self):
        tls = UpstreamTLS(self.settings)
        Wire(self, self.cert, tls=tls).pump()
        other = Wire(self, self.cert, tls=tls, target=peer("127.0.0.1:9443"))
        self.assertFalse(other.attempt.resumed)

    def test_a_failed_handshake_drops_the_peers_session(self):
        tls = UpstreamTLS(self.settings)
        Wire(self, self.cert, tls=tls).pump()
        failing = Wire(self, trustme.CA().issue_cert(NAME), tls=tls)
        self.assertTrue(failing.attempt.resumed)
        failing.client.connectionLost(Failure(ierror.ConnectionDone()))
        failing.assert_failed()
        self.assertNotIn("127.0.0.1:8443", tls.sessions)

    def test_forget_drops_the_session_of_a_peer_that_left(self):
        tls = UpstreamTLS(self.settings)
        Wire(self, self.cert, tls=tls).pump()
        tls.forget("127.0.0.1:8443")
        self.assertEqual(tls.sessions, {})


class Names(unittest.TestCase):
    """What is sent as SNI and what is verified, per configured address."""

    def names(self, server_name, host):
        return UpstreamTLS(UpstreamTLSSettings(verify=False,
                                               server_name=server_name)).names(host)[:2]

    def test_default_is_the_configured_host(self):
        self.assertEqual(self.names(None, "api.internal"), (b"api.internal", "api.internal"))

    def test_ip_addresses_are_verified_but_never_sent(self):
        self.assertEqual(self.names(None, "127.0.0.1"), (None, "127.0.0.1"))
        self.assertEqual(self.names(None, "::1"), (None, "::1"))

    def test_server_name_replaces_both(self):
        self.assertEqual(self.names(NAME, "127.0.0.1"), (NAME.encode(), NAME))

    def test_false_sends_nothing_and_verifies_the_host(self):
        self.assertEqual(self.names(False, "api.internal"), (None, "api.internal"))

    def test_unix_socket_peer_is_localhost(self):
        self.assertEqual(self.names(None, None), (b"localhost", "localhost"))

    def test_resolved_peer_uses_the_name_it_was_configured_with(self):
        settings = PeerSettings(address=Address("app.internal:443", "app.internal", 443))
        resolved = Peer(settings)
        resolved.address = Address("127.0.0.5:443", "127.0.0.5", 443)
        resolved.name = "127.0.0.5:443"
        attempt = UpstreamTLS(UpstreamTLSSettings(verify=False)).for_peer(resolved)
        self.assertEqual((attempt.sni, attempt.name, attempt.peer_name),
                         (b"app.internal", "app.internal", "127.0.0.5:443"))

    def test_verify_error_text_is_nginxs(self):
        self.assertEqual(verify_error_text(10), "(10:certificate has expired)")
        self.assertEqual(verify_error_text(18), "(18:self-signed certificate)")


class Configuration(unittest.TestCase):
    """The upstream tls table's files are checked at load, with TOML paths."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="gateway-upstream-tls-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def load(self, tls: str, proxy_pass: str = "https://app"):
        text = f"""
[upstreams.app]
servers = [{{ address = "127.0.0.1:8443" }}]
tls = {{ {tls} }}
[[servers]]
listen = ["tcp:8080"]
locations = [{{ path = "/", proxy_pass = "{proxy_pass}" }}]
"""
        return parse_config(tomllib.loads(text), os.path.join(self.dir, "gw.toml"))

    def errors(self, tls: str) -> list[str]:
        with self.assertRaises(ConfigError) as caught:
            self.load(tls)
        return str(caught.exception).splitlines()

    def test_valid_files_load_with_relative_paths_made_absolute(self):
        client = CA.issue_cert("gateway")
        write(self.dir, "ca.pem", CA.cert_pem)
        write(self.dir, "c.pem", client.cert_chain_pems[0])
        write(self.dir, "c.key", client.private_key_pem)
        config = self.load('ca = "ca.pem", certificate = "c.pem", key = "c.key", '
                           'server_name = "app.internal"')
        tls = config.upstreams["app"].tls
        self.assertEqual((tls.ca, tls.certificate, tls.key, tls.server_name, tls.verify),
                         (os.path.join(self.dir, "ca.pem"), os.path.join(self.dir, "c.pem"),
                          os.path.join(self.dir, "c.key"), "app.internal", True))
        self.assertEqual(config.servers[0].locations[0].proxy_pass.scheme, "https")

    def test_unreadable_and_unparsable_files_are_errors_at_their_keys(self):
        write(self.dir, "junk.pem", CA.private_key_pem)     # a key where a cert belongs
        missing = os.path.join(self.dir, "missing.pem")
        junk = os.path.join(self.dir, "junk.pem")
        self.assertEqual(self.errors(f'ca = "missing.pem", certificate = "junk.pem", '
                                     f'key = "missing.pem"'), [
            f'upstreams.app.tls.ca: cannot load ca "{missing}": No such file or directory',
            f'upstreams.app.tls.certificate: cannot load certificate "{junk}": no PEM '
            f'certificate in it',
            f'upstreams.app.tls.key: cannot load certificate key "{missing}": No such file '
            f'or directory',
        ])

    def test_key_of_another_certificate_is_an_error(self):
        one, two = CA.issue_cert("one"), CA.issue_cert("two")
        cert = write(self.dir, "one.pem", one.cert_chain_pems[0])
        key = write(self.dir, "two.key", two.private_key_pem)
        self.assertEqual(self.errors('certificate = "one.pem", key = "two.key"'), [
            f'upstreams.app.tls.key: the key "{key}" does not match the certificate '
            f'"{cert}"'])

    def test_literal_https_upstream_defaults_to_port_443(self):
        text = """
[[servers]]
listen = ["tcp:8080"]
locations = [{ path = "/", proxy_pass = "https://backend.internal/api/" }]
"""
        config = parse_config(tomllib.loads(text), os.path.join(self.dir, "gw.toml"))
        group = config.upstreams["backend.internal:443"]
        self.assertEqual(group.servers[0].address,
                         Address("backend.internal:443", "backend.internal", 443))
        self.assertIsNone(group.tls)      # the defaults: verify, system CAs, SNI = host

    def test_grpcs_names_an_implicit_group_on_port_443_by_default(self):
        text = """
[[servers]]
listen = ["tcp:8080"]
locations = [{ path = "/", grpc_pass = "grpcs://127.0.0.1" }]
"""
        config = parse_config(tomllib.loads(text), os.path.join(self.dir, "gw.toml"))
        target = config.servers[0].locations[0].grpc_pass
        self.assertEqual((target.scheme, target.upstream), ("grpcs", "127.0.0.1:443"))
        self.assertIsNone(config.upstreams["127.0.0.1:443"].tls)
