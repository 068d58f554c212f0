"""The real client address behind trusted proxies (``ngx_http_realip_module``).

Address syntax is nginx's (``ngx_parse_addr_port``), the choice of address is
``ngx_http_get_forwarded_addr``'s, and what the rest of a request sees — variables,
access rules, the proxy handler's balancer context, the access log — is checked
through the site dispatcher.
"""
from __future__ import annotations

import io
import time
import tomllib
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from gateway.accesslog import AccessLog
from gateway.config import parse_config
from gateway.config.model import GatewaySettings
from gateway.http.proxy import ProxyHandler
from gateway.http.realip import RealIP, forwarded_address, parse_addr_port
from gateway.http.site import Site
from gateway.http.variables import VariableContext, compile_template
from tests.http.test_variables import FakeExchange, make_clock, make_exchange

# -- address syntax: ngx_parse_addr_port + ngx_sock_ntop ----------------------------


@pytest.mark.parametrize("text, parsed", [
    (b"192.0.2.1", ("192.0.2.1", 0)),
    (b"192.0.2.1:8080", ("192.0.2.1", 8080)),
    (b"010.000.0.01", ("10.0.0.1", 0)),            # decimal octets, leading zeros
    (b"10..0.1", ("10.0.0.1", 0)),                 # an empty octet is 0
    (b"10.0.0.", ("10.0.0.0", 0)),
    (b"255.255.255.255", None),                    # INADDR_NONE
    (b"256.0.0.1", None),
    (b"10.0.1", None),
    (b"10.0.0.1.2", None),
    (b"192.0.2.1:0", None),
    (b"192.0.2.1:65536", None),
    (b"192.0.2.1:+80", None),
    (b"192.0.2.1:80:81", None),
    (b"192.0.2.1:0000080", ("192.0.2.1", 80)),
    (b"192.0.2.1:" + b"9" * 5000, None),          # no int() of a huge number
    (b"2001:DB8::1", ("2001:db8::1", 0)),
    (b"2001:db8:0:0:1:0:0:1", ("2001:db8::1:0:0:1", 0)),   # the first longest zero run
    (b"2001:db8::1:80", ("2001:db8::1:80", 0)),   # no brackets: all of it is the address
    (b"[2001:db8::1]:443", ("2001:db8::1", 443)),
    (b"[2001:db8::1]", None),
    (b"[2001:db8::1]:", None),
    (b"[192.0.2.1]:80", ("192.0.2.1", 80)),
    (b"::1", ("::1", 0)),
    (b"::", ("::", 0)),
    (b"::ffff:192.0.2.1", ("::ffff:192.0.2.1", 0)),
    (b"0:0:0:0:0:ffff:c000:201", ("::ffff:192.0.2.1", 0)),
    (b"::c000:201", ("::192.0.2.1", 0)),           # nginx prints IPv4-compatible so
    (b"1:2:3:4:5:6:7:8:9", None),
    (b"12345::1", None),
    (b"fe80::1%eth0", None),
    (b"unknown", None),
    (b"example.com:80", None),
    (b"", None),
])
def test_address_syntax_is_nginxs(text, parsed):
    assert parse_addr_port(text) == parsed


# -- which address: ngx_http_get_forwarded_addr -------------------------------------

PROXY = ("127.0.0.1", 40000)


def trusts(*sources: str):
    return RealIP(sources).trusts


@pytest.mark.parametrize("values, real", [
    ([b"192.0.2.9"], ("192.0.2.9", 0)),
    ([b"203.0.113.1, 198.51.100.1"], ("198.51.100.1", 0)),
    ([b"203.0.113.1,198.51.100.1"], ("198.51.100.1", 0)),
    ([b"203.0.113.1 198.51.100.1"], ("198.51.100.1", 0)),
    ([b"198.51.100.1 , ,"], ("198.51.100.1", 0)),           # trailing separators skipped
    ([b"203.0.113.1", b"198.51.100.1:5555"], ("198.51.100.1", 5555)),   # the last line
    ([b"198.51.100.1, unknown"], None),                     # the last address is invalid
    ([b"198.51.100.1\t203.0.113.1"], None),                # a tab does not separate
    ([b""], None),
    ([b",198.51.100.1"], None),     # nginx never looks at the first byte for a separator
])
def test_without_recursion_the_last_address_of_the_last_line_counts(values, real):
    assert forwarded_address(PROXY, values, trusts("127.0.0.1")) == real


def test_a_connection_not_in_set_real_ip_from_gives_no_address():
    assert forwarded_address(("192.0.2.50", 1), [b"198.51.100.1"], trusts("127.0.0.1")) \
        is None


@pytest.mark.parametrize("values, real", [
    ([b"203.0.113.7, 10.0.0.2, 10.0.0.1"], ("203.0.113.7", 0)),
    ([b"10.0.0.3, 203.0.113.7, 10.0.0.1"], ("203.0.113.7", 0)),   # first untrusted
    ([b"10.0.0.3, 10.0.0.2"], ("10.0.0.3", 0)),                  # all trusted: leftmost
    ([b"203.0.113.7", b"10.0.0.2"], ("203.0.113.7", 0)),         # across lines
    ([b"10.0.0.9", b"203.0.113.7", b"10.0.0.2"], ("203.0.113.7", 0)),
    ([b"unknown, 10.0.0.2"], ("10.0.0.2", 0)),                   # stops at the invalid
    ([b"unknown", b"10.0.0.2"], ("10.0.0.2", 0)),
])
def test_recursion_takes_the_last_address_not_in_set_real_ip_from(values, real):
    trusted = trusts("127.0.0.1", "10.0.0.0/8")
    assert forwarded_address(PROXY, values, trusted, recursive=True) == real


def test_without_recursion_a_trusted_last_address_is_taken_as_it_is():
    trusted = trusts("127.0.0.1", "10.0.0.0/8")
    assert forwarded_address(PROXY, [b"203.0.113.7, 10.0.0.2"], trusted) \
        == ("10.0.0.2", 0)


# -- one exchange ---------------------------------------------------------------------


def proxied_exchange(headers, remote_addr="127.0.0.1", remote_port=40000):
    return make_exchange([(b"Host", b"example.com")] + list(headers),
                         remote_addr=remote_addr, remote_port=remote_port)


def render(text: str, exchange) -> str:
    return compile_template(text).render(VariableContext(exchange, make_clock()))


CLIENT_VARIABLES = "$remote_addr|$remote_port|$realip_remote_addr|$realip_remote_port"


def test_an_untrusted_connection_is_left_exactly_as_it_was():
    exchange = proxied_exchange([(b"X-Real-IP", b"198.51.100.1")], remote_addr="192.0.2.50")
    accepted = exchange.connection
    RealIP(["127.0.0.1"])(exchange)
    assert exchange.connection is accepted
    assert not VariableContext(exchange, make_clock()).trusted
    assert render(CLIENT_VARIABLES, exchange) == "192.0.2.50|40000|192.0.2.50|40000"


def test_x_real_ip_is_the_default_header_and_its_first_line_counts():
    exchange = proxied_exchange([(b"X-Real-IP", b"198.51.100.1"),
                                 (b"x-real-ip", b"198.51.100.2"),
                                 (b"X-Forwarded-For", b"203.0.113.9")])
    accepted = exchange.connection
    RealIP(["127.0.0.1"])(exchange)
    assert (exchange.connection.remote_addr, exchange.connection.remote_port) \
        == ("198.51.100.1", 0)
    assert exchange.connection.trusted
    assert exchange.connection.original is accepted
    assert (accepted.remote_addr, accepted.trusted) == ("127.0.0.1", False)
    assert render(CLIENT_VARIABLES, exchange) == "198.51.100.1||127.0.0.1|40000"


def test_x_forwarded_for_uses_the_last_address_of_the_last_line():
    exchange = proxied_exchange([(b"X-Forwarded-For", b"203.0.113.1, 203.0.113.2"),
                                 (b"x-forwarded-for", b"198.51.100.1:5555")])
    RealIP(["127.0.0.0/8"], "X-Forwarded-For")(exchange)
    assert render(CLIENT_VARIABLES, exchange) == "198.51.100.1|5555|127.0.0.1|40000"


def test_any_other_header_name_matches_case_insensitively_first_line_only():
    exchange = proxied_exchange([(b"cf-connecting-ip", b"2001:db8::7"),
                                 (b"CF-Connecting-IP", b"198.51.100.2")])
    RealIP(["127.0.0.1"], "CF-Connecting-IP")(exchange)
    assert render("$remote_addr", exchange) == "2001:db8::7"


def test_x_forwarded_for_spelled_otherwise_is_a_plain_header_as_in_nginx():
    """nginx picks its X-Forwarded-For handling by a case-sensitive compare; any other
    spelling reads the first line like any header."""
    headers = [(b"X-Forwarded-For", b"198.51.100.1"), (b"X-Forwarded-For", b"198.51.100.2")]
    plain = proxied_exchange(headers)
    RealIP(["127.0.0.1"], "x-forwarded-for")(plain)
    special = proxied_exchange(headers)
    RealIP(["127.0.0.1"], "X-Forwarded-For")(special)
    assert (render("$remote_addr", plain), render("$remote_addr", special)) \
        == ("198.51.100.1", "198.51.100.2")


@pytest.mark.parametrize("headers", [
    [],
    [(b"X-Real-IP", b"unknown")],
    [(b"X-Real-IP", b"198.51.100.1:0")],
    [(b"X-Real-IP", b"")],
], ids=["missing", "not_an_address", "port_zero", "empty"])
def test_without_a_valid_value_the_address_stays_but_the_connection_is_trusted(headers):
    exchange = proxied_exchange(headers)
    accepted = exchange.connection
    RealIP(["127.0.0.1"])(exchange)
    assert exchange.connection is not accepted
    assert exchange.connection.trusted
    assert render(CLIENT_VARIABLES, exchange) == "127.0.0.1|40000|127.0.0.1|40000"


def test_unix_trusts_every_unix_socket_client():
    exchange = proxied_exchange([(b"X-Real-IP", b"198.51.100.1")],
                                remote_addr="unix:", remote_port=0)
    RealIP(["10.0.0.0/8", "unix:"])(exchange)
    assert render(CLIENT_VARIABLES, exchange) == "198.51.100.1||unix:|"


def test_unix_clients_are_not_trusted_without_unix():
    exchange = proxied_exchange([(b"X-Real-IP", b"198.51.100.1")],
                                remote_addr="unix:", remote_port=0)
    RealIP(["0.0.0.0/0", "::/0"])(exchange)
    assert render("$remote_addr", exchange) == "unix:"


def test_an_ipv4_mapped_connection_is_matched_as_ipv4():
    """ngx_cidr_match: ``::ffff:127.0.0.1`` (a dual-stack listener) is 127.0.0.1, and
    is not in an IPv6 network that spells the mapped range."""
    trusted_v4 = proxied_exchange([(b"X-Real-IP", b"198.51.100.1")],
                                  remote_addr="::ffff:127.0.0.1")
    RealIP(["127.0.0.1"])(trusted_v4)
    mapped_v6 = proxied_exchange([(b"X-Real-IP", b"198.51.100.1")],
                                 remote_addr="::ffff:127.0.0.1")
    RealIP(["::ffff:0:0/96"])(mapped_v6)
    assert (render("$remote_addr", trusted_v4), render("$remote_addr", mapped_v6)) \
        == ("198.51.100.1", "::ffff:127.0.0.1")


def test_ipv6_connections_match_ipv6_networks():
    exchange = proxied_exchange([(b"X-Real-IP", b"[2001:db8::5]:8443")],
                                remote_addr="2001:db8:ffff::1", remote_port=50000)
    RealIP(["2001:db8:ffff::/48"])(exchange)
    assert render(CLIENT_VARIABLES, exchange) == "2001:db8::5|8443|2001:db8:ffff::1|50000"


def test_a_trusted_clients_forwarded_for_is_extended_with_the_real_address():
    """As nginx: ``$proxy_add_x_forwarded_for`` is the client's header plus
    ``$remote_addr``, so the real address appears twice when it came from that
    header; an untrusted client's header is replaced."""
    trusted = proxied_exchange([(b"X-Forwarded-For", b"203.0.113.7, 198.51.100.1")])
    RealIP(["127.0.0.1"], "X-Forwarded-For")(trusted)
    untrusted = proxied_exchange([(b"X-Forwarded-For", b"203.0.113.7, 198.51.100.1")],
                                 remote_addr="192.0.2.50")
    RealIP(["127.0.0.1"], "X-Forwarded-For")(untrusted)
    assert render("$proxy_add_x_forwarded_for", trusted) \
        == "203.0.113.7, 198.51.100.1, 198.51.100.1"
    assert render("$proxy_add_x_forwarded_for", untrusted) == "192.0.2.50"


def test_an_explicit_trusted_flag_still_wins():
    exchange = proxied_exchange([(b"X-Real-IP", b"198.51.100.1")])
    RealIP(["127.0.0.1"])(exchange)
    assert VariableContext(exchange, make_clock(), trusted=False).trusted is False
    assert VariableContext(exchange, make_clock()).trusted is True


def test_an_empty_source_list_is_refused():
    with pytest.raises(ValueError):
        RealIP([])


# -- through the site: everything after sees the real client ------------------------


@dataclass
class SiteExchange(FakeExchange):
    """A FakeExchange that records what the site answers."""

    answers: list = field(default_factory=list)

    def send_error(self, status, headers=()):
        self.answers.append((status, b""))

    def send_head(self, status, headers, reason=None):
        self.answers.append((status, b""))

    def send_body(self, data):
        status, body = self.answers[-1]
        self.answers[-1] = (status, body + data)

    def finish(self):
        pass

    def abort(self):
        self.answers.append(("abort", b""))


SITE = """
[[servers]]
listen = ["tcp:8080"]
server_name = ["behind.example"]
set_real_ip_from = ["127.0.0.1"]
real_ip_header = "X-Forwarded-For"
locations = [
  { path = "/", return = { status = 200, body = "$remote_addr $realip_remote_addr" } },
  { path = "/office/", return = { status = 200, body = "in" }, access = ["allow 198.51.100.0/24", "deny all"] },
  { path = "/app/", proxy_pass = "http://127.0.0.1:9" },
]

[[servers]]
listen = ["tcp:8080"]
server_name = ["direct.example"]
locations = [
  { path = "/", return = { status = 200, body = "$remote_addr" } },
  { path = "/app/", proxy_pass = "http://127.0.0.1:9" },
]
"""


class Recorder:
    """Stands in for the proxy handler: records the connection each exchange had."""

    def __init__(self):
        self.seen = []

    def make(self, location, response_plan):
        return lambda exchange: self.seen.append(exchange.connection)


def site_and_servers():
    config = parse_config(tomllib.loads(SITE), "/srv/gw/site.toml")
    recorder = Recorder()
    return Site(config.servers, recorder.make, make_clock()), config.servers, recorder


def site_exchange(server, path, forwarded=None, remote_addr="127.0.0.1"):
    headers = [(b"Host", b"x")]
    if forwarded is not None:
        headers.append((b"X-Forwarded-For", forwarded))
    exchange = make_exchange(headers, target=path, path=path, args="",
                             remote_addr=remote_addr, remote_port=40000, server=server)
    return SiteExchange(**{name: getattr(exchange, name)
                           for name in exchange.__dataclass_fields__})


def test_the_site_replaces_the_address_before_the_location_answers():
    site, (behind, _), _ = site_and_servers()
    exchange = site_exchange(behind, "/", b"198.51.100.1")
    site(exchange)
    assert exchange.answers == [(200, b"198.51.100.1 127.0.0.1")]


@pytest.mark.parametrize("forwarded, remote_addr, status", [
    (b"198.51.100.1", "127.0.0.1", 200),
    (b"203.0.113.7", "127.0.0.1", 403),
    (None, "127.0.0.1", 403),                    # no header: the proxy's own address
    (b"198.51.100.1", "192.0.2.50", 403),        # untrusted: its header is ignored
])
def test_access_rules_see_the_real_address(forwarded, remote_addr, status):
    site, (behind, _), _ = site_and_servers()
    exchange = site_exchange(behind, "/office/", forwarded, remote_addr)
    site(exchange)
    assert [status for status, _ in exchange.answers] == [status]


def test_the_proxy_handler_gets_the_real_address():
    site, (behind, _), recorder = site_and_servers()
    site(site_exchange(behind, "/app/", b"198.51.100.1"))
    (connection,) = recorder.seen
    assert (connection.remote_addr, connection.trusted, connection.original.remote_addr) \
        == ("198.51.100.1", True, "127.0.0.1")


def test_the_balancer_context_holds_the_real_address():
    """``ProxyHandler.pick_context`` (ip_hash, hash on ``$remote_addr``) reads the
    exchange's connection, which the site has replaced."""
    site, (behind, _), _ = site_and_servers()
    exchange = site_exchange(behind, "/", b"198.51.100.1")
    site(exchange)
    handler = SimpleNamespace(group=SimpleNamespace(needs_context=True),
                              hash_key=compile_template("$remote_addr").renderer)
    pick = ProxyHandler.pick_context(handler, exchange,
                                     VariableContext(exchange, make_clock()))
    assert (pick.remote_addr, pick.hash_key) == ("198.51.100.1", "198.51.100.1")


def test_a_server_without_set_real_ip_from_changes_nothing():
    site, (_, direct), recorder = site_and_servers()
    answered = site_exchange(direct, "/", b"198.51.100.1")
    accepted = answered.connection
    site(answered)
    proxied = site_exchange(direct, "/app/", b"198.51.100.1")
    site(proxied)
    assert answered.connection is accepted
    assert answered.answers == [(200, b"127.0.0.1")]
    assert recorder.seen == [proxied.connection]
    assert recorder.seen[0].trusted is False


def test_the_access_log_records_the_real_address(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        site, (behind, _), _ = site_and_servers()
        exchange = site_exchange(behind, "/", b"198.51.100.1")
        site(exchange)
        exchange.status = 200
        stream = io.BytesIO()
        access_log = AccessLog(GatewaySettings(access_log_format="combined"),
                               make_clock(), stream)
        access_log.log(exchange)
        access_log.close()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert stream.getvalue().startswith(b"198.51.100.1 - - [21/Nov/2026:21:01:58 +0000]")
