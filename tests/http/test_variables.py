"""Variables and templates: nginx's parsing rules and each variable's exact value."""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Optional

import pytest
from twisted.internet.task import Clock

from gateway.config.model import LocationSettings, ServerSettings
from gateway.http.exchange import ConnectionInfo, RequestHead, UpstreamState
from gateway.http.variables import (
    SIMPLE_VARIABLES,
    TemplateError,
    VariableContext,
    compile_template,
    is_known_variable,
    template_errors,
    unknown_variables,
)

#: 2026-11-21 21:01:58 UTC
NOW = 1795294918.0


@dataclass
class FakeExchange:
    """The attributes of the concrete exchange that variables read."""

    request: RequestHead
    connection: ConnectionInfo
    server: Optional[ServerSettings] = None
    variables: dict = field(default_factory=dict)
    start_time: float = NOW - 0.005
    request_id: str = "0123456789abcdef0123456789abcdef"
    status: int = 0
    body_bytes_sent: int = 0
    bytes_sent: int = 0
    request_length: int = 0


def make_server(*names: str) -> ServerSettings:
    location = LocationSettings(path="/", modifier="", pattern="/")
    return ServerSettings(index=0, listen=("tcp:8080",), locations=(location,),
                          server_name=names)


def make_exchange(headers=None, *, method="GET", target="/x?a=1&B=2",
                  path="/x", args="a=1&B=2", version="1.1", host="example.com",
                  remote_addr="192.0.2.7", remote_port=51234, scheme="http",
                  server=None, **kwargs) -> FakeExchange:
    if headers is None:
        headers = [(b"Host", b"example.com"), (b"User-Agent", b"curl/8.5.0")]
    request = RequestHead(method=method, target=target, path=path, args=args,
                          version=version, headers=list(headers), host=host)
    connection = ConnectionInfo(remote_addr=remote_addr, remote_port=remote_port,
                                server_addr="127.0.0.1", server_port=8080,
                                scheme=scheme, listener="tcp:8080")
    return FakeExchange(request=request, connection=connection,
                        server=server if server is not None else make_server("example.com"),
                        **kwargs)


def make_clock(now: float = NOW) -> Clock:
    clock = Clock()
    clock.advance(now)
    return clock


def context(exchange=None, *, now: float = NOW, trusted: bool = False) -> VariableContext:
    return VariableContext(exchange or make_exchange(), make_clock(now), trusted=trusted)


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# -- template parsing ---------------------------------------------------------------


def test_template_without_variables_is_constant_and_renders_as_written():
    template = compile_template("no variables here")
    assert template.is_constant
    assert template.render(context()) == "no variables here"


def test_template_with_plain_and_bracketed_names():
    """``${name}`` ends a name where more name characters follow, as in nginx."""
    template = compile_template("$scheme://${host}_x:$server_port$uri")
    assert not template.is_constant
    assert template.variables == ["scheme", "host", "server_port", "uri"]
    assert template.render(context()) == "http://example.com_x:8080/x"


def test_a_name_runs_over_letters_digits_and_underscores():
    """``$host_x`` is the (unknown) variable ``host_x``, not ``$host`` + ``_x``."""
    assert unknown_variables("$host_x") == ["host_x"]
    assert compile_template("$host-x").render(context()) == "example.com-x"


def test_variable_names_are_case_insensitive():
    assert compile_template("$HOST $Request_Method").render(context()) == "example.com GET"


def test_a_lone_dollar_is_an_error_as_in_nginx():
    """nginx has no escape for ``$``: one not followed by a name is refused."""
    for text in ("cost: $", "a $ b", "$-"):
        with pytest.raises(TemplateError, match="invalid variable name"):
            compile_template(text)
    assert unknown_variables("a $ b") == [""]


def test_an_unclosed_bracket_is_an_error():
    with pytest.raises(TemplateError, match='closing bracket in "host" variable is missing'):
        compile_template("${host")
    assert unknown_variables("x${host") == ["{host"]
    assert template_errors("${host") == ['the closing bracket in "host" variable is missing']


def test_unknown_variable_is_refused_by_compile_and_reported():
    with pytest.raises(TemplateError, match='unknown "nope" variable'):
        compile_template("$nope")
    assert unknown_variables("$nope $host ${other} $nope $http_x_y $arg_q $cookie_c") \
        == ["nope", "other"]
    assert unknown_variables("$scheme$request_method$host$request_uri") == []
    assert template_errors("$nope") == ['unknown "nope" variable']


def test_every_documented_variable_is_known():
    documented = """host hostname remote_addr remote_port server_addr server_port
        server_name scheme request request_method request_uri uri args arg_NAME
        http_NAME cookie_NAME content_type content_length request_id request_time
        status body_bytes_sent bytes_sent time_local time_iso8601 proxy_host
        proxy_add_x_forwarded_for upstream_addr upstream_status upstream_response_time
        upstream_connect_time upstream_header_time upstream_cache_status ssl_protocol
        ssl_cipher ssl_server_name ssl_client_s_dn http2 msec connection
        remote_user""".split()
    assert [name for name in documented if not is_known_variable(name)] == []


def test_regex_captures_one_to_nine():
    exchange = make_exchange(variables={"captures": ("/api/v1", "v1")})
    template = compile_template("[$1][$2]")
    assert template.render(context(exchange)) == "[v1][]"
    assert unknown_variables("$0") == ["0"]


def test_missing_values_render_empty():
    assert compile_template("<$http_missing$arg_none$cookie_none$upstream_addr>") \
        .render(context()) == "<>"


# -- request variables --------------------------------------------------------------


def render(text: str, exchange=None, **kwargs) -> str:
    return compile_template(text).render(context(exchange, **kwargs))


def test_request_line_variables():
    exchange = make_exchange(method="POST", target="/a%20b?x=1", path="/a b", args="x=1")
    assert render("$request", exchange) == "POST /a%20b?x=1 HTTP/1.1"
    assert render("$request_method", exchange) == "POST"
    assert render("$request_uri", exchange) == "/a%20b?x=1"
    assert render("$uri", exchange) == "/a b"
    assert render("$args", exchange) == "x=1"
    assert render("$is_args|$query_string|$document_uri", exchange) == "?|x=1|/a b"
    assert render("$server_protocol", make_exchange(version="1.0")) == "HTTP/1.0"


def test_host_prefers_the_request_host_then_the_first_server_name():
    assert render("$host") == "example.com"
    no_host = make_exchange(host="", server=make_server("a.example", "b.example"))
    assert render("$host", no_host) == "a.example"
    assert render("$host", make_exchange(host="", server=make_server())) == ""
    assert render("$server_name", no_host) == "a.example"


def test_connection_variables():
    exchange = make_exchange(remote_addr="::1", remote_port=40000, scheme="https")
    assert render("$remote_addr $remote_port $server_addr $server_port $scheme",
                  exchange) == "::1 40000 127.0.0.1 8080 https"
    assert render("$https") == ""
    assert render("$https", exchange) == "on"


def test_unix_socket_ports_are_empty():
    exchange = make_exchange(remote_addr="unix:", remote_port=0)
    assert render("[$remote_addr][$remote_port]", exchange) == "[unix:][]"


def test_hostname_and_pid():
    assert render("$hostname") == socket.gethostname()
    assert render("$pid") == str(os.getpid())


def test_arg_takes_the_first_raw_value_and_matches_names_case_insensitively():
    exchange = make_exchange(args="a=1&b=x%20y&a=2&empty=&flag&B2=z")
    assert render("$arg_a", exchange) == "1"
    assert render("$arg_b", exchange) == "x%20y"
    assert render("$arg_A", exchange) == "1"
    assert render("$arg_b2", exchange) == "z"
    assert render("[$arg_empty][$arg_flag][$arg_]", exchange) == "[][][]"


def test_arg_needs_the_name_at_the_start_of_a_pair():
    exchange = make_exchange(args="xa=1&a=2")
    assert render("$arg_a", exchange) == "2"


def test_http_header_lookup_ignores_case_and_reads_dashes_as_underscores():
    exchange = make_exchange([(b"X-Custom-Thing", b"v1"), (b"user-agent", b"UA/1")])
    assert render("$http_x_custom_thing|$http_user_agent|$HTTP_X_CUSTOM_THING",
                  exchange) == "v1|UA/1|v1"


def test_repeated_headers_are_joined_as_nginx_1_23_does():
    """nginx ≥ 1.23 joins every repeated header with ", " and Cookie with "; "."""
    exchange = make_exchange([
        (b"X-Forwarded-For", b"10.0.0.1"), (b"Cookie", b"a=1"),
        (b"x-forwarded-for", b"10.0.0.2, 10.0.0.3"), (b"Cookie", b"b=2"),
        (b"Accept", b"text/html"), (b"Accept", b"*/*"),
    ])
    assert render("$http_x_forwarded_for", exchange) == "10.0.0.1, 10.0.0.2, 10.0.0.3"
    assert render("$http_cookie", exchange) == "a=1; b=2"
    assert render("$http_accept", exchange) == "text/html, */*"


def test_header_bytes_survive_as_latin1():
    exchange = make_exchange([(b"X-Name", "café".encode())])
    assert render("$http_x_name", exchange).encode("latin-1") == "café".encode()


def test_cookie_lookup():
    exchange = make_exchange([
        (b"Cookie", b"session=abc; theme = dark ;x=1,y=2"),
        (b"Cookie", b"late=z; session=second"),
    ])
    assert render("$cookie_session", exchange) == "abc"
    assert render("$cookie_theme", exchange) == "dark "
    assert render("$cookie_SESSION", exchange) == "abc"
    assert render("$cookie_x", exchange) == "1,y=2"      # values end at ";" only
    assert render("$cookie_y", exchange) == "2"          # pairs also split at ","
    assert render("$cookie_late", exchange) == "z"
    assert render("[$cookie_sess][$cookie_missing]", exchange) == "[][]"


def test_content_type_and_length():
    exchange = make_exchange([(b"Content-Type", b"application/json"),
                              (b"Content-Length", b"42")])
    assert render("$content_type $content_length", exchange) == "application/json 42"
    assert render("[$content_type][$content_length]") == "[][]"


def test_request_id_and_connection_and_remote_user():
    exchange = make_exchange()
    exchange.connection_number = 17
    assert render("$request_id", exchange) == "0123456789abcdef0123456789abcdef"
    assert render("$connection", exchange) == "17"
    assert render("[$remote_user]", exchange) == "[]"


# -- response progress and timing ---------------------------------------------------


def test_status_is_three_digits_and_000_before_a_response():
    assert render("$status") == "000"
    assert render("$status", make_exchange(status=204)) == "204"


def test_bytes_sent_and_request_length():
    exchange = make_exchange(status=200, body_bytes_sent=1234, bytes_sent=1400,
                             request_length=78)
    assert render("$body_bytes_sent $bytes_sent $request_length", exchange) \
        == "1234 1400 78"
    assert render("$body_bytes_sent") == "0"


def test_request_time_has_millisecond_resolution():
    exchange = make_exchange(start_time=NOW - 0.005)
    assert render("$request_time", exchange) == "0.005"
    assert render("$request_time", make_exchange(start_time=NOW - 12.3456)) == "12.345"
    assert render("$request_time", make_exchange(start_time=NOW)) == "0.000"
    assert render("$request_time", make_exchange(start_time=NOW + 1)) == "0.000"


def test_request_time_is_read_when_rendered():
    exchange = make_exchange(start_time=NOW)
    clock = make_clock()
    ctx = VariableContext(exchange, clock)
    template = compile_template("$request_time")
    assert template.render(ctx) == "0.000"
    clock.advance(1.25)
    assert template.render(ctx) == "1.250"


def test_msec():
    assert render("$msec", now=NOW + 0.123) == "1795294918.123"


def test_time_local_and_iso8601_in_utc(utc):
    assert render("$time_local") == "21/Nov/2026:21:01:58 +0000"
    assert render("$time_iso8601") == "2026-11-21T21:01:58+00:00"


def test_time_local_carries_the_local_offset(monkeypatch):
    monkeypatch.setenv("TZ", "EST+5")
    time.tzset()
    try:
        assert render("$time_local") == "21/Nov/2026:16:01:58 -0500"
        assert render("$time_iso8601") == "2026-11-21T16:01:58-05:00"
    finally:
        monkeypatch.undo()
        time.tzset()


# -- proxy and upstream -------------------------------------------------------------


def test_proxy_host():
    exchange = make_exchange(variables={"proxy_host": "app"})
    assert render("$proxy_host", exchange) == "app"
    assert render("[$proxy_host]") == "[]"


def test_proxy_add_x_forwarded_for_replaces_an_untrusted_clients_header():
    exchange = make_exchange([(b"X-Forwarded-For", b"203.0.113.9")])
    assert render("$proxy_add_x_forwarded_for", exchange) == "192.0.2.7"
    assert render("$proxy_add_x_forwarded_for", make_exchange()) == "192.0.2.7"


def test_proxy_add_x_forwarded_for_extends_a_trusted_clients_header():
    exchange = make_exchange([(b"X-Forwarded-For", b"203.0.113.9"),
                              (b"X-Forwarded-For", b"10.1.1.1")])
    assert render("$proxy_add_x_forwarded_for", exchange, trusted=True) \
        == "203.0.113.9, 10.1.1.1, 192.0.2.7"
    assert render("$proxy_add_x_forwarded_for", make_exchange(), trusted=True) \
        == "192.0.2.7"


def test_upstream_variables_list_every_try():
    state = UpstreamState(addrs=["10.0.0.1:80", "10.0.0.2:80"], statuses=["502", "200"],
                          connect_times=["0.001", "0.002"], header_times=["-", "0.010"],
                          response_times=["0.004", "0.012"])
    exchange = make_exchange(variables={"upstream": state, "upstream_cache_status": "MISS"})
    assert render("$upstream_addr|$upstream_status|$upstream_connect_time|"
                  "$upstream_header_time|$upstream_response_time|$upstream_cache_status",
                  exchange) == ("10.0.0.1:80, 10.0.0.2:80|502, 200|0.001, 0.002|"
                                "-, 0.010|0.004, 0.012|MISS")


def test_upstream_entries_recorded_as_numbers_print_as_nginx():
    # the proxy records float seconds and int statuses and byte counts, unformatted
    state = UpstreamState(addrs=["10.0.0.1:80", "10.0.0.2:80"], statuses=[502, 200],
                          connect_times=[0.0004, 0.0025], header_times=["-", 0.01],
                          response_times=[-0.0001, 12.3456], queue_times=[0.0, 1.5],
                          bytes_received=[0, 1234], bytes_sent=[0, 87])
    exchange = make_exchange(variables={"upstream": state})
    assert render("$upstream_status|$upstream_connect_time|$upstream_header_time|"
                  "$upstream_response_time|$upstream_queue_time|"
                  "$upstream_bytes_received|$upstream_bytes_sent", exchange) == (
        "502, 200|0.000, 0.003|-, 0.010|0.000, 12.346|0.000, 1.500|0, 1234|0, 87")


def test_upstream_addr_names_the_group_when_no_peer_was_live():
    exchange = make_exchange(variables={"upstream": UpstreamState(addrs=["app"],
                                                                  statuses=["502"])})
    assert render("$upstream_addr $upstream_status", exchange) == "app 502"


def test_tls_and_http2_variables_are_empty_without_tls_or_http2():
    assert render("[$ssl_protocol$ssl_cipher$ssl_server_name$ssl_client_s_dn$http2]") \
        == "[]"
    assert render("$http2", make_exchange(version="2.0")) == "h2c"
    assert render("$http2", make_exchange(version="2.0", scheme="https")) == "h2"


def test_every_simple_variable_renders_a_string():
    ctx = context(make_exchange(variables={"upstream": UpstreamState()}))
    for name in SIMPLE_VARIABLES:
        assert isinstance(ctx.get(name), str), name
    assert ctx.get("unknown_thing") == ""
