"""Server TLS without sockets: handshakes between ``EndpointTLS``'s connections and
pyOpenSSL clients through memory BIOs, the ``$ssl_*`` values, the per-request client
certificate checks on a recording fake exchange, and the configuration errors."""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace

import pytest
from OpenSSL import SSL, crypto
from twisted.internet.testing import StringTransport

from gateway.config import ConfigError, parse_config
from gateway.config.model import ServerTLSSettings
from gateway.http.exchange import ConnectionInfo, RequestHead
from gateway.tls._dn import rfc2253_name
from gateway.tls._files import check_files
from gateway.tls.server import (
    CERT_ERROR_PAGE,
    NO_CERT_PAGE,
    ClientCertificateCheck,
    EndpointTLS,
    NoApplicationProtocol,
    TLSInfo,
    client_certificate_check,
    connection_tls_info,
)
from tests.tls.pki import PKI


@pytest.fixture
def pki():
    made = PKI()
    yield made
    made.close()


# -- a client and a memory handshake ------------------------------------------------


def client(pki: PKI, server_name=None, alpn=(), versions=None, ciphers=None,
           certificate=None, resume=None) -> SSL.Connection:
    """A client connection; ``resume``: an earlier client connection whose session
    (and so context, as pyOpenSSL requires) this one reuses."""
    if resume is not None:
        conn = SSL.Connection(resume.get_context(), None)
        if server_name is not None:
            conn.set_tlsext_host_name(server_name)
        conn.set_session(resume.get_session())
        conn.set_connect_state()
        return conn
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if versions is not None:
        ctx.set_min_proto_version(versions[0])
        ctx.set_max_proto_version(versions[1])
    if ciphers is not None:
        ctx.set_cipher_list(ciphers)
    if certificate is not None:
        ctx.use_certificate_file(certificate[0])
        ctx.use_privatekey_file(certificate[1])
    conn = SSL.Connection(ctx, None)
    if server_name is not None:
        conn.set_tlsext_host_name(server_name)
    if alpn:
        conn.set_alpn_protos(list(alpn))
    conn.set_connect_state()
    return conn


def _step(conn: SSL.Connection) -> bool:
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        return False
    return True


def _move(source: SSL.Connection, target: SSL.Connection) -> None:
    while True:
        try:
            data = source.bio_read(65536)
        except SSL.WantReadError:
            return
        target.bio_write(data)


class HandshakeFailed(Exception):
    def __init__(self, side: str, error: SSL.Error):
        super().__init__(side, error)
        self.side, self.error = side, error


def handshake(endpoint: EndpointTLS, conn: SSL.Connection) -> SSL.Connection:
    """Complete a handshake in memory; the server's connection. The first TLS error
    is raised as :class:`HandshakeFailed` naming the side that failed."""
    server = endpoint.serverConnectionForTLS(None)
    server.set_accept_state()
    client_done = server_done = False
    for _ in range(20):
        try:
            client_done = client_done or _step(conn)
        except SSL.Error as e:
            raise HandshakeFailed("client", e) from None
        _move(conn, server)
        try:
            server_done = server_done or _step(server)
        except SSL.Error as e:
            _move(server, conn)
            raise HandshakeFailed("server", e) from None
        _move(server, conn)
        if client_done and server_done:
            # TLS 1.3 tickets arrive after the handshake: let the client read them
            try:
                conn.recv(1)
            except SSL.WantReadError:
                pass
            return server
    raise AssertionError("handshake did not finish")


def served_names(conn: SSL.Connection) -> list[str]:
    return PKI.names_in(conn.get_peer_certificate().to_cryptography())


# -- SNI ------------------------------------------------------------------------------


def sni_endpoint(pki: PKI) -> EndpointTLS:
    return EndpointTLS([
        pki.server(0, ("first.example",)),
        pki.server(1, ("*.example.com",)),
        pki.server(2, ("*.api.example.com",)),
        pki.server(3, ("www.example.com",)),
        pki.server(4, ("mail.*",), hosts=("mail.anywhere.example",)),
        pki.server(5, ("~^node\\d+\\.example\\.net$",), hosts=("nodes.example.net",)),
        pki.server(6, ("default.example",), default=True),
    ])


@pytest.mark.parametrize("sni, names", [
    (b"www.example.com", ["www.example.com"]),             # exact beats wildcard
    (b"shop.example.com", ["*.example.com"]),              # leading wildcard
    (b"v1.api.example.com", ["*.api.example.com"]),        # the longest one
    (b"mail.example.org", ["mail.anywhere.example"]),      # trailing wildcard
    (b"node12.example.net", ["nodes.example.net"]),        # regex
    (b"WWW.Example.COM.", ["www.example.com"]),            # validated as a Host is
    (b"first.example", ["first.example"]),
])
def test_sni_picks_the_certificate_by_server_name_precedence(pki, sni, names):
    endpoint = sni_endpoint(pki)
    conn = client(pki, server_name=sni)
    server = handshake(endpoint, conn)
    assert served_names(conn) == names
    assert TLSInfo(server).server_name == sni.decode()


@pytest.mark.parametrize("sni", [None, b"unknown.example.org", b"node1.example.net.x"])
def test_no_or_unknown_sni_gets_the_default_servers_certificate(pki, sni):
    endpoint = sni_endpoint(pki)
    conn = client(pki, server_name=sni)
    server = handshake(endpoint, conn)
    assert served_names(conn) == ["default.example"]
    assert TLSInfo(server).server_name == ("" if sni is None else sni.decode())


def test_without_a_default_flag_the_first_server_is_the_default(pki):
    endpoint = EndpointTLS([pki.server(0, ("a.example",)), pki.server(1, ("b.example",))])
    conn = client(pki)
    handshake(endpoint, conn)
    assert served_names(conn) == ["a.example"]


# -- protocols, ciphers, ALPN -------------------------------------------------------


OLD_CLIENT = dict(ciphers=b"DEFAULT:@SECLEVEL=0")   # lowered so the client can speak it


@pytest.mark.parametrize("version", [SSL.TLS1_VERSION, SSL.TLS1_1_VERSION])
def test_tls_1_0_and_1_1_are_refused_by_default(pki, version):
    endpoint = EndpointTLS([pki.server(0, ("a.example",))])
    with pytest.raises(HandshakeFailed) as caught:
        handshake(endpoint, client(pki, versions=(version, version), **OLD_CLIENT))
    assert caught.value.side == "server"
    assert "unsupported protocol" in str(caught.value.error)


def test_the_same_tls_1_1_client_is_served_when_protocols_allow_it(pki):
    endpoint = EndpointTLS([pki.server(0, ("a.example",), protocols=("TLSv1.1", "TLSv1.2"),
                                       ciphers="DEFAULT:@SECLEVEL=0")])
    server = handshake(endpoint, client(pki, versions=(SSL.TLS1_1_VERSION,
                                                       SSL.TLS1_1_VERSION), **OLD_CLIENT))
    assert TLSInfo(server).protocol == "TLSv1.1"


def test_default_protocols_are_tls_1_2_and_1_3(pki):
    endpoint = EndpointTLS([pki.server(0, ("a.example",))])
    for version, name in ((SSL.TLS1_2_VERSION, "TLSv1.2"), (SSL.TLS1_3_VERSION, "TLSv1.3")):
        server = handshake(endpoint, client(pki, versions=(version, version)))
        assert TLSInfo(server).protocol == name


def test_protocols_limit_the_versions(pki):
    endpoint = EndpointTLS([pki.server(0, ("a.example",), protocols=("TLSv1.3",))])
    with pytest.raises(HandshakeFailed) as caught:
        handshake(endpoint, client(pki, versions=(SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION)))
    assert caught.value.side == "server"
    assert TLSInfo(handshake(endpoint, client(pki))).protocol == "TLSv1.3"


def test_ciphers_choose_the_tls_1_2_cipher(pki):
    endpoint = EndpointTLS([pki.server(0, ("a.example",),
                                       ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")])
    server = handshake(endpoint, client(pki, versions=(SSL.TLS1_2_VERSION,
                                                       SSL.TLS1_2_VERSION)))
    info = TLSInfo(server)
    assert (info.protocol, info.cipher) == ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")


@pytest.mark.parametrize("offer_h2, http2, offered, chosen", [
    (True, True, [b"h2", b"http/1.1"], b"h2"),
    (True, True, [b"http/1.1", b"h2"], b"h2"),            # the server's preference
    (True, True, [b"http/1.1"], b"http/1.1"),
    (True, True, [b"http/1.0"], b"http/1.0"),
    (True, False, [b"h2", b"http/1.1"], b"http/1.1"),     # http2 = false
    (False, True, [b"h2", b"http/1.1"], b"http/1.1"),     # listener without HTTP/2
    (True, True, [], b""),                                # no ALPN at all
])
def test_alpn_offers_h2_only_with_http2(pki, offer_h2, http2, offered, chosen):
    endpoint = EndpointTLS([pki.server(0, ("a.example",), http2=http2)], offer_h2=offer_h2)
    conn = client(pki, alpn=offered)
    server = handshake(endpoint, conn)
    assert conn.get_alpn_proto_negotiated() == chosen
    assert TLSInfo(server).alpn_protocol == chosen.decode()


def test_alpn_without_a_common_protocol_fails_the_handshake(pki):
    endpoint = EndpointTLS([pki.server(0, ("a.example",))])
    conn = client(pki, alpn=[b"spdy/3.1"])
    with pytest.raises(HandshakeFailed) as caught:
        handshake(endpoint, conn)
    assert caught.value.side == "server"
    assert isinstance(caught.value.error, NoApplicationProtocol)
    with pytest.raises(SSL.Error) as alert:      # the alert reached the client
        conn.do_handshake()
    assert "no application protocol" in str(alert.value)


def test_alpn_follows_the_server_sni_chose(pki):
    endpoint = EndpointTLS([pki.server(0, ("a.example",), http2=True),
                            pki.server(1, ("b.example",), http2=False)])
    a = client(pki, server_name=b"a.example", alpn=[b"h2", b"http/1.1"])
    b = client(pki, server_name=b"b.example", alpn=[b"h2", b"http/1.1"])
    handshake(endpoint, a)
    handshake(endpoint, b)
    assert (a.get_alpn_proto_negotiated(), b.get_alpn_proto_negotiated()) == (
        b"h2", b"http/1.1")


# -- sessions -----------------------------------------------------------------------


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
@pytest.mark.parametrize("name", [b"a.example", b"b.example"])
def test_a_session_resumes_with_its_ticket(pki, version, name):
    """On the default server and on one SNI chose; nothing is stored server side."""
    endpoint = EndpointTLS([pki.server(0, ("a.example",)), pki.server(1, ("b.example",))])
    first = client(pki, server_name=name, versions=(version, version))
    assert TLSInfo(handshake(endpoint, first)).session_reused == "."
    second = client(pki, server_name=name, resume=first)
    assert TLSInfo(handshake(endpoint, second)).session_reused == "r"
    assert served_names(second) == [name.decode()]


# -- client certificates --------------------------------------------------------------


def mtls_endpoint(pki: PKI, verify: str = "on") -> EndpointTLS:
    return EndpointTLS([
        pki.server(0, ("open.example",)),
        pki.server(1, ("secure.example",), client_ca=pki.ca_path, verify_client=verify),
    ])


def test_without_client_certificate_the_handshake_completes_and_verify_is_none(pki):
    server = handshake(mtls_endpoint(pki), client(pki, server_name=b"secure.example"))
    info = TLSInfo(server)
    assert (info.client_verify, info.client_s_dn, info.verify_result,
            info.has_client_certificate) == ("NONE", "", 0, False)


def test_a_good_client_certificate_is_success_with_its_subject(pki):
    files = pki.client_files("alice", common_name="alice", organization="Example, Inc.")
    server = handshake(mtls_endpoint(pki),
                       client(pki, server_name=b"secure.example", certificate=files))
    info = TLSInfo(server)
    assert info.client_verify == "SUCCESS"
    assert info.client_s_dn == f"CN=alice,OU={PKI.unit_of(files[0])},O=Example\\, Inc."


def test_a_certificate_from_an_unknown_ca_fails_verification_not_the_handshake(pki):
    files = pki.client_files("mallory", ca=pki.stranger)
    server = handshake(mtls_endpoint(pki),
                       client(pki, server_name=b"secure.example", certificate=files))
    info = TLSInfo(server)
    # OpenSSL's last error for a leaf whose issuer is unknown, as nginx shows it
    assert info.client_verify == "FAILED:unable to verify the first certificate"
    assert info.verify_result == 21
    assert info.client_s_dn.startswith("CN=client one,")


def test_sni_switches_to_the_servers_client_certificate_request(pki):
    endpoint = mtls_endpoint(pki)
    asked = client(pki, server_name=b"secure.example")
    handshake(endpoint, asked)
    not_asked = client(pki, server_name=b"open.example")
    handshake(endpoint, not_asked)
    ca_name = crypto.load_certificate(crypto.FILETYPE_PEM, pki.ca.cert_pem.bytes()).get_subject()
    assert [n.der() for n in asked.get_client_ca_list()] == [ca_name.der()]
    assert not_asked.get_client_ca_list() == []


def test_a_resumed_session_keeps_its_verification_result(pki):
    endpoint = mtls_endpoint(pki, verify="optional")
    files = pki.client_files("mallory", ca=pki.stranger)
    first = client(pki, server_name=b"secure.example", certificate=files)
    handshake(endpoint, first)
    second = client(pki, server_name=b"secure.example", resume=first)
    info = TLSInfo(handshake(endpoint, second))
    assert (info.session_reused, info.client_verify) == (
        "r", "FAILED:unable to verify the first certificate")


# -- the per-request checks -----------------------------------------------------------


@dataclass
class FakeTLS:
    server_name: str = ""
    verify_result: int = 0
    has_client_certificate: bool = False
    client_verify: str = "NONE"


@dataclass
class Exchange:
    """Records what the check answers."""

    request: RequestHead
    connection: ConnectionInfo
    server: object
    events: list = field(default_factory=list)
    keep_alive: bool = True

    def send_error(self, status, headers=()):
        self.events.append(("error", status))

    def send_head(self, status, headers, reason=None):
        self.events.append(("head", status, dict(headers), self.keep_alive))

    def send_body(self, data):
        self.events.append(("body", data))

    def finish(self):
        self.events.append(("finish",))


def check_events(pki, verify, tls, host="secure.example", method="GET", server=1):
    servers = [pki.server(0, ("open.example",)),
               pki.server(1, ("secure.example",), client_ca=pki.ca_path,
                          verify_client=verify)]
    passed = []
    check = client_certificate_check(passed.append, servers)
    request = RequestHead(method=method, target="/", path="/", args="", version="1.1",
                          headers=[], host=host)
    exchange = Exchange(request, ConnectionInfo("127.0.0.1", 1, "127.0.0.1", 8443,
                                                "https", tls=tls), servers[server])
    check(exchange)
    return ["passed"] if passed else exchange.events


def test_verify_on_without_a_certificate_is_nginx_496_as_400(pki):
    assert check_events(pki, "on", FakeTLS()) == [
        ("head", 400, {b"Content-Type": b"text/html",
                       b"Content-Length": b"%d" % len(NO_CERT_PAGE)}, False),
        ("body", NO_CERT_PAGE), ("finish",)]
    assert b"<center>No required SSL certificate was sent</center>" in NO_CERT_PAGE


def test_a_certificate_that_did_not_verify_is_nginx_495_as_400(pki):
    for verify in ("on", "optional"):
        events = check_events(pki, verify, FakeTLS(verify_result=20,
                                                   has_client_certificate=True,
                                                   client_verify="FAILED:x"))
        assert events[0][:2] == ("head", 400) and events[1] == ("body", CERT_ERROR_PAGE)
    assert b"<title>400 The SSL certificate error</title>" in CERT_ERROR_PAGE


def test_head_request_gets_the_400_without_a_body(pki):
    events = check_events(pki, "on", FakeTLS(), method="HEAD")
    assert [e[0] for e in events] == ["head", "finish"]


def test_requests_that_pass_reach_the_handler(pki):
    assert check_events(pki, "optional", FakeTLS()) == ["passed"]
    assert check_events(pki, "on", FakeTLS(has_client_certificate=True,
                                           client_verify="SUCCESS")) == ["passed"]
    # a server without verify_client is not checked
    assert check_events(pki, "on", FakeTLS(), host="open.example", server=0) == ["passed"]


def test_host_other_than_the_sni_name_on_a_verifying_server_is_421(pki):
    good = dict(has_client_certificate=True, client_verify="SUCCESS")
    # SNI chose open.example's certificate, the request asks for secure.example
    assert check_events(pki, "on", FakeTLS(server_name="open.example", **good)) == [
        ("error", 421)]
    # same name (compared as a validated host) passes
    assert check_events(pki, "on", FakeTLS(server_name="Secure.Example.", **good)) == [
        "passed"]
    # an SNI name no server has does not count (nginx: no ssl_servername)
    assert check_events(pki, "on", FakeTLS(server_name="other.example", **good)) == [
        "passed"]


def test_no_check_is_installed_without_verify_client(pki):
    def handler(exchange):
        pass
    servers = [pki.server(0, ("a.example",))]
    assert client_certificate_check(handler, servers) is handler
    assert isinstance(client_certificate_check(handler, [
        pki.server(1, ("b.example",), client_ca=pki.ca_path, verify_client="optional")]),
        ClientCertificateCheck)


def test_cleartext_transports_have_no_tls_info():
    assert connection_tls_info(StringTransport()) is None
    assert connection_tls_info(object()) is None


# -- $ssl_client_s_dn formatting (checked against `openssl x509 -nameopt RFC2253`) ------


def _name_der(*rdns) -> bytes:
    from cryptography import x509
    return x509.Name([x509.RelativeDistinguishedName(list(rdn)) for rdn in rdns]
                     ).public_bytes()


def test_rfc2253_reverses_rdns_and_escapes_like_openssl():
    from cryptography import x509
    from cryptography.x509.name import _ASN1Type
    from cryptography.x509.oid import NameOID as N

    def a(oid, value, kind=None):
        return (x509.NameAttribute(oid, value) if kind is None
                else x509.NameAttribute(oid, value, kind))

    assert rfc2253_name(_name_der([a(N.COUNTRY_NAME, "US")],
                                  [a(N.ORGANIZATION_NAME, "Example, Inc.")],
                                  [a(N.COMMON_NAME, "client")])) == \
        "CN=client,O=Example\\, Inc.,C=US"
    assert rfc2253_name(_name_der([a(N.COMMON_NAME, ' #lead+trail;<>"\\ ')],
                                  [a(N.EMAIL_ADDRESS, "a@b.c")])) == \
        'emailAddress=a@b.c,CN=\\ #lead\\+trail\\;\\<\\>\\"\\\\\\ '
    assert rfc2253_name(_name_der([a(N.COMMON_NAME, "José ü\x01\x7f")])) == \
        "CN=Jos\\C3\\A9 \\C3\\BC\\01\\7F"
    assert rfc2253_name(_name_der([a(N.COMMON_NAME, "#")])) == "CN=#"
    assert rfc2253_name(_name_der([a(N.COMMON_NAME, " ")])) == "CN=\\ "
    assert rfc2253_name(_name_der([a(N.COMMON_NAME, "a"), a(N.USER_ID, "u1")],
                                  [a(N.DOMAIN_COMPONENT, "example")])) == \
        "DC=example,UID=u1+CN=a"
    assert rfc2253_name(_name_der(
        [a(x509.ObjectIdentifier("1.2.3.4.5"), "odd")],
        [a(N.ORGANIZATIONAL_UNIT_NAME, "Ωmega", _ASN1Type.BMPString)])) == \
        "OU=\\CE\\A9mega,1.2.3.4.5=#0C036F6464"


# -- configuration ------------------------------------------------------------------


def load(pki: PKI, tls: str, extra: str = ""):
    text = f"""
    [[servers]]
    listen = ["tcp:8443"]
    tls = {{ {tls} }}
    locations = [ {{ path = "/", return = {{ status = 200 }} }} ]
    {extra}
    """
    return parse_config(tomllib.loads(text), os.path.join(pki.directory, "site.toml"))


def errors_of(pki: PKI, tls: str, extra: str = "") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(pki, tls, extra)
    return caught.value.errors


def test_relative_tls_paths_load_against_the_configuration_directory(pki):
    pki.server_files("site", "a.example")
    config = load(pki, 'certificate = "site.pem", key = "site.key"')
    tls = config.servers[0].tls
    assert (tls.certificate, tls.key, tls.protocols, tls.ciphers, tls.verify_client) == (
        pki.path("site.pem"), pki.path("site.key"), ("TLSv1.2", "TLSv1.3"), None, "off")


def test_missing_and_unreadable_files_are_errors_with_their_paths(pki):
    os.mkdir(pki.path("adir"))
    assert errors_of(pki, 'certificate = "nope.pem", key = "adir"') == [
        f'servers[0].tls.certificate: cannot load certificate "{pki.path("nope.pem")}": '
        "No such file or directory",
        f'servers[0].tls.key: cannot load certificate key "{pki.path("adir")}": '
        "Is a directory",
    ]


def test_files_that_are_not_pem_are_errors(pki):
    certificate, key = pki.server_files("site", "a.example")
    assert errors_of(pki, f'certificate = "{key}", key = "{certificate}"') == [
        f'servers[0].tls.certificate: cannot load certificate "{key}": '
        "no PEM certificate in it",
        f'servers[0].tls.key: cannot load certificate key "{certificate}": '
        "no PEM private key in it",
    ]


def test_a_key_of_another_certificate_is_an_error(pki):
    certificate, _ = pki.server_files("one", "a.example")
    _, key = pki.server_files("two", "b.example")
    assert errors_of(pki, f'certificate = "{certificate}", key = "{key}"') == [
        f'servers[0].tls.key: the key "{key}" does not match the certificate '
        f'"{certificate}"']


def test_an_encrypted_key_is_an_error(pki):
    from cryptography.hazmat.primitives import serialization
    certificate, key = pki.server_files("one", "a.example")
    with open(key, "rb") as f:
        private = serialization.load_pem_private_key(f.read(), None)
    pki.write("one.key", private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    assert errors_of(pki, f'certificate = "{certificate}", key = "{key}"') == [
        f'servers[0].tls.key: cannot load certificate key "{key}": the key is '
        "encrypted (password-protected keys are not supported)"]


def test_the_certificate_file_may_hold_the_chain(pki):
    intermediate = pki.ca.create_child_ca()
    issued = intermediate.issue_cert("chain.example")
    certificate = pki.write("chain.pem", b"".join(p.bytes() for p in issued.cert_chain_pems))
    key = pki.write("chain.key", issued.private_key_pem.bytes())
    settings = ServerTLSSettings(certificate=certificate, key=key)
    assert check_files(settings) == []
    server = replace(pki.server(0, ("chain.example",)), tls=settings)
    conn = client(pki)
    handshake(EndpointTLS([server]), conn)
    assert len(conn.get_peer_cert_chain()) == 2


def test_bad_ciphers_protocols_and_client_ca_are_errors(pki):
    certificate, key = pki.server_files("one", "a.example")
    assert errors_of(pki, f'certificate = "{certificate}", key = "{key}", '
                          'ciphers = "NO-SUCH-CIPHER", protocols = ["TLSv1.2", "SSLv3"], '
                          'client_ca = "missing-ca.pem", verify_client = "on"') == [
        'servers[0].tls.protocols[1]: must be one of "TLSv1", "TLSv1.1", "TLSv1.2", '
        '"TLSv1.3", got "SSLv3"',
        f'servers[0].tls.client_ca: cannot load client_ca "{pki.path("missing-ca.pem")}": '
        "No such file or directory",
    ]
    assert errors_of(pki, f'certificate = "{certificate}", key = "{key}", '
                          'ciphers = "NO-SUCH-CIPHER"') == [
        'servers[0].tls.ciphers: OpenSSL accepts no cipher of "NO-SUCH-CIPHER"']


def test_verify_client_needs_client_ca(pki):
    certificate, key = pki.server_files("one", "a.example")
    assert errors_of(pki, f'certificate = "{certificate}", key = "{key}", '
                          'verify_client = "optional"') == [
        'servers[0].tls.verify_client: "optional" needs client_ca']


def test_servers_on_one_listen_description_are_all_tls_or_none(pki):
    certificate, key = pki.server_files("one", "a.example")
    extra = """
    [[servers]]
    listen = ["tcp:8443", "tcp:8444"]
    locations = [ { path = "/", return = { status = 200 } } ]
    """
    assert errors_of(pki, f'certificate = "{certificate}", key = "{key}"', extra) == [
        'servers[1].listen: "tcp:8443" is shared with servers[0], which has tls: all '
        "servers on one listen description need tls, or none"]


# -- the $ssl_* variables -------------------------------------------------------------


def test_ssl_variables_read_the_connections_tls_info(pki):
    from types import SimpleNamespace

    from twisted.internet.task import Clock

    from gateway.http.variables import VariableContext, compile_template
    files = pki.client_files("carol", common_name="carol")
    conn = client(pki, server_name=b"secure.example", certificate=files)
    info = TLSInfo(handshake(mtls_endpoint(pki), conn))
    exchange = SimpleNamespace(connection=ConnectionInfo(
        "127.0.0.1", 1, "127.0.0.1", 8443, "https", tls=info))
    template = compile_template("$ssl_protocol|$ssl_cipher|$ssl_server_name|"
                                "$ssl_client_verify|$ssl_client_s_dn|$ssl_session_reused|"
                                "$scheme|$https")
    assert template.render(VariableContext(exchange, Clock())) == "|".join([
        "TLSv1.3", conn.get_cipher_name(), "secure.example", "SUCCESS",
        f"CN=carol,OU={PKI.unit_of(files[0])},O=Example\\, Inc.", ".", "https", "on"])
    cleartext = SimpleNamespace(connection=ConnectionInfo("127.0.0.1", 1, "127.0.0.1", 80))
    assert template.render(VariableContext(cleartext, Clock())) == "||||||http|"
