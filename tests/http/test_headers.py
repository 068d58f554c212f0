"""Request and response header plans: exact heads in, exact heads out."""
from __future__ import annotations

from gateway.config.model import LocationSettings
from gateway.http.exchange import UpstreamState
from gateway.http.headers import (
    RequestHeaderPlan,
    ResponseHeaderPlan,
    connection_tokens,
)
from tests.http.test_variables import context, make_exchange, make_server


def location(**kwargs) -> LocationSettings:
    return LocationSettings(path="/", modifier="", pattern="/", **kwargs)


DEFAULTS = (b"Host: example.com\r\n"
            b"X-Real-IP: 192.0.2.7\r\n"
            b"X-Forwarded-For: 192.0.2.7\r\n"
            b"X-Forwarded-Proto: http\r\n"
            b"X-Forwarded-Host: example.com\r\n"
            b"X-Request-ID: 0123456789abcdef0123456789abcdef\r\n")


def build(plan, exchange=None, *, method="GET", uri="/x?a=1&B=2", framing=(),
          trusted=False, **kwargs) -> bytes:
    exchange = exchange or make_exchange()
    return plan.build(exchange, context(exchange, trusted=trusted), method, uri,
                      list(framing), **kwargs)


# -- request ------------------------------------------------------------------------


def test_default_request_head_without_keepalive_closes_the_connection():
    plan = RequestHeaderPlan(location(), keepalive=False)
    assert build(plan) == (b"GET /x?a=1&B=2 HTTP/1.1\r\n" + DEFAULTS
                           + b"User-Agent: curl/8.5.0\r\n"
                           + b"Connection: close\r\n\r\n")


def test_default_request_head_with_keepalive_sends_no_connection_header():
    plan = RequestHeaderPlan(location(), keepalive=True)
    assert build(plan) == (b"GET /x?a=1&B=2 HTTP/1.1\r\n" + DEFAULTS
                           + b"User-Agent: curl/8.5.0\r\n\r\n")


def test_body_framing_headers_follow_the_client_headers():
    plan = RequestHeaderPlan(location(), keepalive=True)
    exchange = make_exchange([(b"Host", b"example.com"), (b"Content-Length", b"5"),
                              (b"Transfer-Encoding", b"chunked"),
                              (b"Content-Type", b"text/plain")])
    assert build(plan, exchange, method="POST", uri="/up",
                 framing=[(b"Content-Length", b"5")]) == (
        b"POST /up HTTP/1.1\r\n" + DEFAULTS
        + b"Content-Type: text/plain\r\nContent-Length: 5\r\n\r\n")


def test_proxy_set_header_overrides_defaults_in_place_and_adds_new_ones():
    plan = RequestHeaderPlan(location(proxy_set_header=(
        ("host", "$proxy_host"),
        ("X-Forwarded-Proto", "https"),
        ("X-Upstream-Key", "$arg_a-$http_user_agent"),
        ("X-Static", "yes"),
    )), keepalive=True)
    exchange = make_exchange(variables={"proxy_host": "app"})
    assert build(plan, exchange) == (
        b"GET /x?a=1&B=2 HTTP/1.1\r\n"
        b"host: app\r\n"
        b"X-Real-IP: 192.0.2.7\r\n"
        b"X-Forwarded-For: 192.0.2.7\r\n"
        b"X-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: example.com\r\n"
        b"X-Request-ID: 0123456789abcdef0123456789abcdef\r\n"
        b"X-Upstream-Key: 1-curl/8.5.0\r\n"
        b"X-Static: yes\r\n"
        b"User-Agent: curl/8.5.0\r\n\r\n")


def test_empty_proxy_set_header_removes_the_header_and_the_clients_copy():
    plan = RequestHeaderPlan(location(proxy_set_header=(
        ("X-Real-IP", ""), ("x-forwarded-host", ""), ("User-Agent", ""),
        ("X-Request-ID", ""),
    )), keepalive=True)
    assert build(plan) == (
        b"GET /x?a=1&B=2 HTTP/1.1\r\n"
        b"Host: example.com\r\n"
        b"X-Forwarded-For: 192.0.2.7\r\n"
        b"X-Forwarded-Proto: http\r\n\r\n")


def test_a_header_whose_value_renders_empty_is_not_sent():
    plan = RequestHeaderPlan(location(proxy_set_header=(("X-Maybe", "$http_x_missing"),)),
                             keepalive=True)
    assert b"X-Maybe" not in build(plan)


def test_host_falls_back_to_proxy_host_when_the_request_has_none():
    plan = RequestHeaderPlan(location(), keepalive=True)
    exchange = make_exchange([], host="", server=make_server(),
                             variables={"proxy_host": "app"})
    head = build(plan, exchange)
    assert head.startswith(b"GET /x?a=1&B=2 HTTP/1.1\r\nHost: app\r\n")
    assert b"X-Forwarded-Host" not in head


def test_hop_by_hop_headers_are_not_forwarded():
    plan = RequestHeaderPlan(location(), keepalive=True)
    exchange = make_exchange([
        (b"Host", b"example.com"), (b"Connection", b"keep-alive, Upgrade"),
        (b"Keep-Alive", b"timeout=5"), (b"Proxy-Connection", b"keep-alive"),
        (b"TE", b"trailers"), (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"websocket"), (b"Trailer", b"X-Checksum"),
        (b"Expect", b"100-continue"), (b"Accept", b"*/*"),
    ])
    assert build(plan, exchange) == (b"GET /x?a=1&B=2 HTTP/1.1\r\n" + DEFAULTS
                                     + b"Accept: */*\r\n\r\n")


def test_headers_named_by_connection_are_not_forwarded():
    plan = RequestHeaderPlan(location(), keepalive=True)
    exchange = make_exchange([
        (b"Host", b"example.com"), (b"Connection", b"close, X-Secret"),
        (b"connection", b"x-other"), (b"X-Secret", b"s"), (b"X-Other", b"o"),
        (b"X-Kept", b"k"),
    ])
    assert build(plan, exchange) == (b"GET /x?a=1&B=2 HTTP/1.1\r\n" + DEFAULTS
                                     + b"X-Kept: k\r\n\r\n")


def test_untrusted_clients_forwarding_headers_are_replaced():
    plan = RequestHeaderPlan(location(), keepalive=True)
    exchange = make_exchange([
        (b"Host", b"example.com"), (b"X-Forwarded-For", b"203.0.113.9"),
        (b"X-Real-IP", b"203.0.113.9"), (b"X-Request-ID", b"client-id"),
        (b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-Host", b"evil.example"),
    ])
    assert build(plan, exchange) == b"GET /x?a=1&B=2 HTTP/1.1\r\n" + DEFAULTS + b"\r\n"


def test_trusted_clients_forwarded_for_is_extended_and_request_id_kept():
    plan = RequestHeaderPlan(location(), keepalive=True)
    exchange = make_exchange([
        (b"Host", b"example.com"), (b"X-Forwarded-For", b"203.0.113.9"),
        (b"X-Request-ID", b"client-id"),
    ])
    assert build(plan, exchange, trusted=True) == (
        b"GET /x?a=1&B=2 HTTP/1.1\r\n"
        b"Host: example.com\r\n"
        b"X-Real-IP: 192.0.2.7\r\n"
        b"X-Forwarded-For: 203.0.113.9, 192.0.2.7\r\n"
        b"X-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: example.com\r\n"
        b"X-Request-ID: client-id\r\n\r\n")


def test_client_header_names_keep_their_case_and_order():
    plan = RequestHeaderPlan(location(), keepalive=True)
    exchange = make_exchange([(b"host", b"example.com"), (b"x-lower", b"1"),
                              (b"X-UPPER", b"2"), (b"x-lower", b"3")])
    assert build(plan, exchange).endswith(
        b"x-lower: 1\r\nX-UPPER: 2\r\nx-lower: 3\r\n\r\n")


def test_upgrade_request_sends_upgrade_and_connection_upgrade():
    plan = RequestHeaderPlan(location(), keepalive=False)
    exchange = make_exchange([(b"Host", b"example.com"), (b"Connection", b"Upgrade"),
                              (b"Upgrade", b"websocket"),
                              (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ==")])
    assert build(plan, exchange, upgrade=b"websocket") == (
        b"GET /x?a=1&B=2 HTTP/1.1\r\n" + DEFAULTS
        + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        + b"Upgrade: websocket\r\nConnection: upgrade\r\n\r\n")


def test_nginx_style_upgrade_headers_are_sent_once():
    """``proxy_set_header Upgrade $http_upgrade`` and ``Connection "upgrade"``, as nginx
    configurations have them, replace the automatic pair instead of doubling it."""
    plan = RequestHeaderPlan(location(proxy_set_header=(
        ("Upgrade", "$http_upgrade"), ("Connection", "upgrade"))), keepalive=False)
    exchange = make_exchange([(b"Host", b"example.com"), (b"Connection", b"Upgrade"),
                              (b"Upgrade", b"websocket")])
    head = build(plan, exchange, upgrade=b"websocket")
    assert head.count(b"Upgrade: websocket\r\n") == 1
    assert head.count(b"Connection: ") == 1
    assert head.endswith(b"Upgrade: websocket\r\nConnection: upgrade\r\n\r\n")


def test_proxy_set_header_connection_replaces_the_automatic_one():
    plan = RequestHeaderPlan(location(proxy_set_header=(("Connection", "keep-alive"),)),
                             keepalive=False)
    head = build(plan)
    assert head.count(b"Connection") == 1
    assert b"Connection: keep-alive\r\n" in head


def test_framing_headers_cannot_be_set_by_proxy_set_header():
    plan = RequestHeaderPlan(location(proxy_set_header=(("Content-Length", "1"),
                                                        ("Transfer-Encoding", "x"))),
                             keepalive=True)
    head = build(plan)
    assert b"Content-Length" not in head and b"Transfer-Encoding" not in head


def test_a_variable_cannot_inject_a_header_line():
    plan = RequestHeaderPlan(location(proxy_set_header=(("X-Path", "$uri"),)),
                             keepalive=True)
    exchange = make_exchange(path="/a\r\nX-Evil: 1")
    assert b"X-Path: /a  X-Evil: 1\r\n" in build(plan, exchange)


def test_connection_tokens():
    assert connection_tokens([(b"Connection", b" Close ,X-A,, x-b "),
                              (b"Other", b"y")]) == {b"close", b"x-a", b"x-b"}


# -- response -----------------------------------------------------------------------


UPSTREAM_HEADERS = [
    (b"Content-Type", b"text/html"), (b"Content-Length", b"12"),
    (b"Date", b"Sat, 21 Nov 2026 21:01:58 GMT"), (b"Server", b"gunicorn"),
    (b"X-Pad", b"avoid browser bug"), (b"X-Accel-Expires", b"10"),
    (b"X-Accel-Redirect", b"/internal"), (b"X-Accel-Limit-Rate", b"1024"),
    (b"X-Accel-Buffering", b"no"), (b"X-Accel-Charset", b"utf-8"),
    (b"Connection", b"keep-alive, X-Hop"), (b"Keep-Alive", b"timeout=5"),
    (b"X-Hop", b"1"), (b"Transfer-Encoding", b"chunked"), (b"Trailer", b"X-Sum"),
    (b"Upgrade", b"h2c"), (b"Proxy-Connection", b"keep-alive"),
    (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"X-App", b"yes"),
]


def test_response_filter_drops_hop_by_hop_and_default_hidden_headers():
    plan = ResponseHeaderPlan(location())
    assert plan.filter(UPSTREAM_HEADERS) == [
        (b"Content-Type", b"text/html"), (b"Content-Length", b"12"),
        (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"X-App", b"yes"),
    ]


def test_proxy_pass_header_passes_default_hidden_headers():
    plan = ResponseHeaderPlan(location(proxy_pass_header=("server", "X-Accel-Buffering")))
    assert plan.filter(UPSTREAM_HEADERS) == [
        (b"Content-Type", b"text/html"), (b"Content-Length", b"12"),
        (b"Server", b"gunicorn"), (b"X-Accel-Buffering", b"no"),
        (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"X-App", b"yes"),
    ]


def test_proxy_pass_header_does_not_pass_hop_by_hop_headers():
    plan = ResponseHeaderPlan(location(proxy_pass_header=("Connection", "Keep-Alive")))
    assert (b"Connection", b"keep-alive, X-Hop") not in plan.filter(UPSTREAM_HEADERS)
    assert (b"Keep-Alive", b"timeout=5") not in plan.filter(UPSTREAM_HEADERS)


def test_proxy_hide_header_hides_more():
    plan = ResponseHeaderPlan(location(proxy_hide_header=("x-app", "Set-Cookie")))
    assert plan.filter(UPSTREAM_HEADERS) == [
        (b"Content-Type", b"text/html"), (b"Content-Length", b"12"),
    ]


def test_filter_returns_a_new_list():
    plan = ResponseHeaderPlan(location())
    headers = [(b"X-A", b"1")]
    assert plan.filter(headers) is not headers


def test_add_header_appends_rendered_values():
    plan = ResponseHeaderPlan(location(add_header=(
        ("X-Upstream", "$upstream_addr"), ("X-Static", "on"),
        ("X-Empty", "$upstream_cache_status"), ("X-Request-ID", "$request_id"),
    )))
    exchange = make_exchange(variables={"upstream": UpstreamState(
        addrs=["10.0.0.1:80", "10.0.0.2:80"])})
    headers = [(b"Content-Type", b"text/plain")]
    result = plan.add(headers, context(exchange))
    assert result is headers
    assert headers == [
        (b"Content-Type", b"text/plain"),
        (b"X-Upstream", b"10.0.0.1:80, 10.0.0.2:80"),
        (b"X-Static", b"on"),
        (b"X-Request-ID", b"0123456789abcdef0123456789abcdef"),
    ]


def test_add_header_also_works_on_the_gateways_own_error_responses():
    """No upstream was reached (e.g. 502 "no live upstreams"): the group's name."""
    plan = ResponseHeaderPlan(location(add_header=(("X-Upstream", "$upstream_addr"),)))
    exchange = make_exchange(status=502, variables={"upstream": UpstreamState(
        addrs=["app"], statuses=["502"])})
    assert plan.add([], context(exchange)) == [(b"X-Upstream", b"app")]
    assert plan.add([], context(make_exchange(status=403))) == []
