"""Loading site.toml: defaults, the full example, paths, implicit upstreams, and errors.

Most tests parse TOML text with ``parse_config`` as if it came from
``/srv/gw/site.toml``; file-level behaviour (syntax errors, reading) uses ``tmp_path``.
"""
import re
import tomllib

import pytest

from gateway.config import ConfigError, load_config, parse_config
from gateway.config.model import (
    GrpcServerSettings,
    AccessRule,
    AdminSettings,
    Address,
    GatewaySettings,
    PeerSettings,
    ProxyPass,
    ReturnAction,
    UpstreamSettings,
)

CONFIG_PATH = "/srv/gw/site.toml"

MINIMAL = """
[[servers]]
listen = ["tcp:8080"]
locations = [{ path = "/", return = { status = 200, body = "ok\\n" } }]
"""


def parse(text: str):
    return parse_config(tomllib.loads(text), CONFIG_PATH)


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return caught.value.errors


def location(fields: str) -> str:
    """A one-server, one-location file; the location's keys are ``fields``."""
    return f"""
[upstreams.app]
servers = [{{ address = "127.0.0.1:3000" }}]

[[servers]]
listen = ["tcp:8080"]
locations = [{{ path = "/", {fields} }}]
"""


def proxied(fields: str) -> str:
    return location(f'proxy_pass = "http://app", {fields}')


def server(fields: str) -> str:
    """One server with the given extra keys (TOML lines) and a return location."""
    return f"""
[[servers]]
listen = ["tcp:8080"]
locations = [{{ path = "/", return = {{ status = 204 }} }}]
{fields}
"""


def upstream(fields: str, servers: str = '{ address = "127.0.0.1:3000" }') -> str:
    return f"""
[upstreams.app]
servers = [{servers}]
{fields}
""" + MINIMAL


# -- valid files --------------------------------------------------------------------


def test_minimal_file_gets_every_default():
    """A server with one location is enough; everything else takes CONFIG.md's default."""
    config = parse(MINIMAL)
    assert config.path == CONFIG_PATH
    assert config.gateway == GatewaySettings()
    assert config.admin == AdminSettings()
    assert config.upstreams == {}
    assert config.limit_req_zones == {}
    assert config.caches == {}
    assert config.grpc_servers == ()
    (srv,) = config.servers
    assert (srv.index, srv.listen, srv.server_name, srv.default) == (
        0, ("tcp:8080",), (), False)
    assert (srv.client_max_body_size, srv.client_header_timeout, srv.client_body_timeout,
            srv.keepalive_timeout, srv.keepalive_requests,
            srv.large_client_header_buffers) == (1048576, 60.0, 60.0, 75.0, 1000, 8192)
    assert (srv.tls, srv.http2, srv.real_ip_header, srv.set_real_ip_from) == (
        None, True, None, ())
    (loc,) = srv.locations
    assert (loc.path, loc.modifier, loc.pattern, loc.regex) == ("/", "", "/", None)
    assert loc.return_ == ReturnAction(status=200, body="ok\n")
    assert loc.proxy_pass is None
    assert loc.proxy_next_upstream == frozenset({"error", "timeout"})
    assert (loc.proxy_connect_timeout, loc.proxy_send_timeout, loc.proxy_read_timeout,
            loc.proxy_next_upstream_tries, loc.proxy_next_upstream_timeout) == (
        60.0, 60.0, 60.0, 0, 0.0)
    assert (loc.proxy_buffering, loc.proxy_request_buffering, loc.proxy_websocket) == (
        True, True, True)
    assert (loc.proxy_set_header, loc.add_header, loc.access) == ((), (), ())
    assert loc.proxy_cache_key == "$scheme$request_method$host$request_uri"


def test_upstream_and_peer_defaults_are_filled():
    """An upstream with one bare address gets nginx's and CONFIG.md's defaults."""
    config = parse(upstream(""))
    assert config.upstreams["app"] == UpstreamSettings(
        name="app",
        servers=(PeerSettings(address=Address(text="127.0.0.1:3000", host="127.0.0.1",
                                                port=3000)),),
        balance="round_robin", keepalive=32, keepalive_requests=1000,
        keepalive_timeout=60.0, keepalive_time=3600.0, implicit=False,
    )


FULL_EXAMPLE = """
[gateway]
workers = 1
access_log = "logs/access.log"
access_log_format = "upstream"
error_log = "-"
resolver_valid = "10s"
shutdown_timeout = "1m30s"

[admin]
listen = false

[upstreams.app]
balance = "round_robin"
keepalive = 16
keepalive_requests = 500
keepalive_timeout = "30s"
keepalive_time = "2h"
servers = [
  { address = "127.0.0.1:3000", weight = 3, max_fails = 3, fail_timeout = "30s" },
  { address = "127.0.0.1:3001", max_conns = 100, down = false, slow_start = "0s" },
  { address = "127.0.0.1:3002", backup = true },
]

[[servers]]
listen = ["tcp:8080", "tcp6:8080:interface=\\\\:\\\\:"]
server_name = ["Example.COM", "*.example.com", ".example.org", "www.example.*", "~^api\\\\d+\\\\.example\\\\.com$"]
default = true
http2 = false
client_max_body_size = "10m"
client_header_timeout = "10s"
client_body_timeout = "20s"
keepalive_timeout = "5s"
keepalive_requests = 100
large_client_header_buffers = "16k"
[[servers.locations]]
path = "/"
proxy_pass = "http://app"
proxy_next_upstream = ["error", "timeout", "http_502"]

[[servers.locations]]
path = "= /healthz"
return = { status = 200, body = "ok\\n" }

[[servers.locations]]
path = "^~ /static/"
proxy_pass = "http://127.0.0.1:9000/files/"
proxy_buffering = false

[[servers.locations]]
path = "~* \\\\.php$"
return = { status = 403 }

[[servers.locations]]
path = "/old"
return = { status = 301, url = "https://example.com/new" }

[[servers.locations]]
path = "/admin/"
proxy_pass = "http://app"
access = ["allow 10.0.0.0/8"]
allow = "127.0.0.1"
deny = "all"
proxy_set_header = { Host = "backend", X-Extra = "" }
add_header = { X-Served-By = "gw" }
proxy_hide_header = ["X-Powered-By"]
proxy_pass_header = ["Server"]
proxy_next_upstream = "off"
proxy_next_upstream_tries = 2
proxy_next_upstream_timeout = "5s"
proxy_connect_timeout = "1s"
proxy_send_timeout = "2s"
proxy_read_timeout = "3s"
proxy_request_buffering = false
proxy_websocket = false
"""


def test_full_example_without_unsupported_parts_loads_exactly():
    """CONFIG.md's keys at non-default values (minus unsupported features) load as written."""
    config = parse(FULL_EXAMPLE)
    assert config.gateway == GatewaySettings(
        workers=1, access_log="/srv/gw/logs/access.log", access_log_format="upstream",
        error_log="-", resolver=(), resolver_valid=10.0, shutdown_timeout=90.0)
    assert config.admin == AdminSettings(listen=None)
    app = config.upstreams["app"]
    assert (app.keepalive, app.keepalive_requests, app.keepalive_timeout,
            app.keepalive_time) == (16, 500, 30.0, 7200.0)
    assert [(p.address.text, p.weight, p.max_fails, p.fail_timeout, p.max_conns,
             p.backup) for p in app.servers] == [
        ("127.0.0.1:3000", 3, 3, 30.0, 0, False),
        ("127.0.0.1:3001", 1, 1, 10.0, 100, False),
        ("127.0.0.1:3002", 1, 1, 10.0, 0, True),
    ]
    assert list(config.upstreams) == ["app", "127.0.0.1:9000"]

    (srv,) = config.servers
    assert srv.listen == ("tcp:8080", "tcp6:8080:interface=\\:\\:")
    assert srv.server_name == ("example.com", "*.example.com", ".example.org",
                               "www.example.*", "~^api\\d+\\.example\\.com$")
    assert (srv.default, srv.http2, srv.client_max_body_size, srv.client_header_timeout,
            srv.client_body_timeout, srv.keepalive_timeout, srv.keepalive_requests,
            srv.large_client_header_buffers) == (
        True, False, 10 * 1024 * 1024, 10.0, 20.0, 5.0, 100, 16 * 1024)

    root, health, static, php, old, admin = srv.locations
    assert root.proxy_pass == ProxyPass(scheme="http", upstream="app", uri=None,
                                        text="http://app")
    assert root.proxy_next_upstream == frozenset({"error", "timeout", "http_502"})
    assert (health.modifier, health.pattern, health.return_) == (
        "=", "/healthz", ReturnAction(status=200, body="ok\n"))
    assert (static.modifier, static.pattern, static.proxy_buffering) == (
        "^~", "/static/", False)
    assert static.proxy_pass == ProxyPass(scheme="http", upstream="127.0.0.1:9000",
                                          uri="/files/",
                                          text="http://127.0.0.1:9000/files/")
    assert (php.modifier, php.pattern) == ("~*", "\\.php$")
    assert php.regex.search("/INDEX.PHP") is not None
    assert old.return_ == ReturnAction(status=301, url="https://example.com/new")
    assert admin.access == (
        AccessRule(allow=True, network="10.0.0.0/8"),
        AccessRule(allow=True, network="127.0.0.1/32"),
        AccessRule(allow=False, all=True),
    )
    assert admin.proxy_set_header == (("Host", "backend"), ("X-Extra", ""))
    assert admin.add_header == (("X-Served-By", "gw"),)
    assert (admin.proxy_hide_header, admin.proxy_pass_header) == (
        ("X-Powered-By",), ("Server",))
    assert admin.proxy_next_upstream == frozenset()
    assert (admin.proxy_next_upstream_tries, admin.proxy_next_upstream_timeout,
            admin.proxy_connect_timeout, admin.proxy_send_timeout,
            admin.proxy_read_timeout) == (2, 5.0, 1.0, 2.0, 3.0)
    assert (admin.proxy_request_buffering, admin.proxy_websocket) == (False, False)


def test_load_config_reads_a_file_and_records_its_absolute_path(tmp_path, monkeypatch):
    """load_config takes a relative path too; Config.path and relative paths are absolute."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "site.toml").write_text(
        '[gateway]\naccess_log = "access.log"\n' + MINIMAL)
    monkeypatch.chdir(tmp_path)
    config = load_config("conf/site.toml")
    assert config.path == str(tmp_path / "conf" / "site.toml")
    assert config.gateway.access_log == str(tmp_path / "conf" / "access.log")


def test_relative_paths_resolve_against_the_config_directory():
    """Logs, unix listen sockets and unix peer addresses are made absolute; "-" and
    absolute paths stay."""
    config = parse("""
[gateway]
access_log = "../log/access.log"
error_log = "error.log"

[upstreams.sock]
servers = [{ address = "unix:run/app.sock" }, { address = "unix:/run/abs.sock" }]

[[servers]]
listen = ["unix:run/gw.sock:mode=660", "unix:/run/gw2.sock"]
locations = [{ path = "/", proxy_pass = "http://unix:backend.sock:/api/" }]
""")
    assert config.gateway.access_log == "/srv/log/access.log"
    assert config.gateway.error_log == "/srv/gw/error.log"
    assert [p.address for p in config.upstreams["sock"].servers] == [
        Address(text="unix:run/app.sock", path="/srv/gw/run/app.sock"),
        Address(text="unix:/run/abs.sock", path="/run/abs.sock"),
    ]
    assert config.servers[0].listen == ("unix:/srv/gw/run/gw.sock:mode=660",
                                        "unix:/run/gw2.sock")
    assert config.servers[0].locations[0].proxy_pass == ProxyPass(
        scheme="http", upstream="unix:backend.sock", uri="/api/",
        text="http://unix:backend.sock:/api/")
    assert config.upstreams["unix:backend.sock"].servers[0].address == Address(
        text="unix:backend.sock", path="/srv/gw/backend.sock")


def test_proxy_pass_to_an_absolute_unix_socket_with_and_without_uri():
    """nginx's http://unix:/path[:/uri] form; the socket is an implicit group."""
    config = parse("""
[[servers]]
listen = ["tcp:8080"]
locations = [
  { path = "/a", proxy_pass = "http://unix:/run/app.sock" },
  { path = "/b", proxy_pass = "http://unix:/run/app.sock:/v2/" },
]
""")
    a, b = config.servers[0].locations
    assert (a.proxy_pass.upstream, a.proxy_pass.uri) == ("unix:/run/app.sock", None)
    assert (b.proxy_pass.upstream, b.proxy_pass.uri) == ("unix:/run/app.sock", "/v2/")
    assert config.upstreams["unix:/run/app.sock"].servers == (
        PeerSettings(address=Address(text="unix:/run/app.sock", path="/run/app.sock")),)


def test_access_log_false_disables_it():
    assert parse('[gateway]\naccess_log = false\n' + MINIMAL).gateway.access_log is None


def test_literal_proxy_pass_creates_one_implicit_upstream_per_host_and_port():
    """Locations naming the same literal host:port share one implicit group; the default
    port is 80; names are not resolved."""
    config = parse("""
[[servers]]
listen = ["tcp:8080"]
locations = [
  { path = "/a", proxy_pass = "http://backend.internal" },
  { path = "/b", proxy_pass = "http://backend.internal:80/b/" },
  { path = "/c", proxy_pass = "http://[::1]:9000" },
]
""")
    assert config.upstreams == {
        "backend.internal:80": UpstreamSettings(
            name="backend.internal:80", implicit=True,
            servers=(PeerSettings(address=Address(text="backend.internal:80",
                                                  host="backend.internal", port=80)),)),
        "[::1]:9000": UpstreamSettings(
            name="[::1]:9000", implicit=True,
            servers=(PeerSettings(address=Address(text="[::1]:9000", host="::1",
                                                  port=9000)),)),
    }
    a, b, c = config.servers[0].locations
    assert (a.proxy_pass.upstream, a.proxy_pass.uri) == ("backend.internal:80", None)
    assert (b.proxy_pass.upstream, b.proxy_pass.uri) == ("backend.internal:80", "/b/")
    assert c.proxy_pass.upstream == "[::1]:9000"


def test_proxy_pass_to_a_declared_name_with_a_port_is_a_literal_host():
    """As in nginx, only a bare NAME refers to [upstreams.NAME]."""
    config = parse(location('proxy_pass = "http://app:8080"'))
    assert config.servers[0].locations[0].proxy_pass.upstream == "app:8080"
    assert config.upstreams["app:8080"].implicit is True
    assert config.upstreams["app"].implicit is False


def test_location_path_modifiers_are_parsed_and_regexes_compiled():
    config = parse("""
[[servers]]
listen = ["tcp:8080"]
locations = [
  { path = "/p", return = { status = 204 } },
  { path = "= /x", return = { status = 204 } },
  { path = "=/y", return = { status = 204 } },
  { path = "^~ /s/", return = { status = 204 } },
  { path = "~ ^/R$", return = { status = 204 } },
  { path = "~* ^/i$", return = { status = 204 } },
]
""")
    locs = config.servers[0].locations
    assert [(loc.modifier, loc.pattern) for loc in locs] == [
        ("", "/p"), ("=", "/x"), ("=", "/y"), ("^~", "/s/"), ("~", "^/R$"), ("~*", "^/i$")]
    assert [loc.regex is None for loc in locs[:4]] == [True] * 4
    assert locs[4].regex.match("/R") and not locs[4].regex.match("/r")
    assert locs[5].regex.match("/I") and locs[5].regex.match("/i")
    assert locs[5].regex.flags & re.IGNORECASE


@pytest.mark.parametrize(
    "value, expected",
    [
        ('"http_502"', frozenset({"http_502"})),
        ('"off"', frozenset()),
        ('["off"]', frozenset()),
        ('["error", "non_idempotent", "http_429"]',
         frozenset({"error", "non_idempotent", "http_429"})),
    ],
)
def test_proxy_next_upstream_accepts_a_condition_a_list_or_off(value, expected):
    config = parse(proxied(f"proxy_next_upstream = {value}"))
    assert config.servers[0].locations[0].proxy_next_upstream == expected


def test_access_rules_keep_order_with_allow_then_deny_shorthand_after():
    config = parse(proxied(
        'deny = ["192.168.0.0/16", "unix:"], access = ["deny 10.1.2.3", '
        '"allow 2001:db8::/32"], allow = ["10.0.0.1/8", "::1"]'))
    assert config.servers[0].locations[0].access == (
        AccessRule(allow=False, network="10.1.2.3/32"),
        AccessRule(allow=True, network="2001:db8::/32"),
        AccessRule(allow=True, network="10.0.0.0/8"),
        AccessRule(allow=True, network="::1/128"),
        AccessRule(allow=False, network="192.168.0.0/16"),
        AccessRule(allow=False, unix=True),
    )


def test_off_and_default_values_of_unsupported_features_pass_silently():
    """Switching a later-release feature *off* (or to its default) is not an error."""
    config = parse("""
[gateway]
workers = 1
resolver = []

[admin]

[upstreams.app]
balance = "round_robin"
consistent = false
two = false
servers = [{ address = "127.0.0.1:3000", resolve = false, slow_start = "0s" }]

[[servers]]
listen = ["tcp:8080"]
http2 = false
set_real_ip_from = []
[[servers.locations]]
path = "/"
proxy_pass = "http://app"
proxy_websocket = false
proxy_cache = false
proxy_cache_valid = {}
proxy_cache_use_stale = ["off"]
proxy_cache_lock = false
proxy_cache_background_update = false
proxy_cache_key = "static-key"
""")
    assert config.admin == AdminSettings()
    assert config.servers[0].http2 is False
    loc = config.servers[0].locations[0]
    assert (loc.proxy_websocket, loc.proxy_cache, loc.proxy_cache_valid,
            loc.proxy_cache_use_stale, loc.proxy_cache_key) == (
        False, None, (), (), "static-key")


# -- file-level errors ---------------------------------------------------------------


def test_toml_syntax_error_is_one_error_with_its_line(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text('[gateway]\nworkers = 1\naccess_log = "unterminated\n')
    with pytest.raises(ConfigError) as caught:
        load_config(str(site))
    (message,) = caught.value.errors
    assert message.startswith(f"{site}: invalid TOML: ")
    assert "line 3" in message


def test_missing_file_is_one_error(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(str(missing))
    assert caught.value.errors == [f"{missing}: cannot read: No such file or directory"]


def test_empty_file_needs_a_server():
    assert errors_of("") == ["servers: at least one [[servers]] table is required"]


def test_config_error_text_is_every_error_on_its_own_line():
    error = ConfigError(["a: one", "b: two"])
    assert str(error) == "a: one\nb: two"
    assert error.errors == ["a: one", "b: two"]


def test_every_error_in_the_file_is_reported_at_once(tmp_path):
    """Errors from every section come back together, each with its TOML path."""
    site = tmp_path / "site.toml"
    site.write_text("""
[gateway]
shutdown_timeout = "soon"
colour = "blue"

[upstreams.app]
keepalive = -1
servers = [
  { address = "127.0.0.1:3000" },
  { address = "127.0.0.1:3001" },
  { address = "127.0.0.1:3002", weight = "x" },
]

[[servers]]
listen = ["tcp:8080"]
locations = [
  { path = "/", proxy_pass = "http://app" },
  { path = "/b", proxy_pas = "http://app" },
]
""")
    with pytest.raises(ConfigError) as caught:
        load_config(str(site))
    assert caught.value.errors == [
        'gateway.colour: unknown key',
        'gateway.shutdown_timeout: must be a duration like "500ms", "10s", "5m", "1h", '
        '"1d", "1m30s" or a number of seconds, got "soon"',
        "upstreams.app.keepalive: must be an integer >= 0, got -1",
        'upstreams.app.servers[2].weight: must be an integer >= 1, got "x"',
        'servers[0].locations[1].proxy_pas: unknown key (did you mean "proxy_pass"?)',
        "servers[0].locations[1]: needs exactly one handler (proxy_pass, grpc_pass or "
        "return), got none",
    ]


# -- key-by-key errors -----------------------------------------------------------------

DURATION = ('must be a duration like "500ms", "10s", "5m", "1h", "1d", "1m30s" or a '
            'number of seconds, got "x"')
POSITIVE_DURATION = "must be a duration greater than 0, got 0"
SIZE = 'must be a size like "512k", "1m", "10g" or a number of bytes, got "x"'
L = "servers[0].locations[0]"

ERRORS = [
    # top level and [gateway]
    ("top_level_unknown_key", 'servre = 1\n' + MINIMAL,
     ['servre: unknown key (did you mean "servers"?)']),
    ("top_level_table_not_a_table", 'gateway = 1\n' + MINIMAL,
     ["gateway: must be a table, got 1"]),
    ("workers_type", '[gateway]\nworkers = "2"\n' + MINIMAL,
     ['gateway.workers: must be an integer >= 0, got "2"']),
    ("workers_bool", '[gateway]\nworkers = true\n' + MINIMAL,
     ["gateway.workers: must be an integer >= 0, got true"]),
    ("access_log_true", '[gateway]\naccess_log = true\n' + MINIMAL,
     ['gateway.access_log: must be a path, "-" or false, got true']),
    ("access_log_format_empty", '[gateway]\naccess_log_format = ""\n' + MINIMAL,
     ['gateway.access_log_format: must be a non-empty string, got ""']),
    ("error_log_false", '[gateway]\nerror_log = false\n' + MINIMAL,
     ["gateway.error_log: must be a non-empty string, got false"]),
    ("resolver_not_ip", '[gateway]\nresolver = ["dns.local:53"]\n' + MINIMAL,
     ['gateway.resolver[0]: must be an "ip:port" address, got "dns.local:53"']),
    ("resolver_not_list", '[gateway]\nresolver = "1.1.1.1"\n' + MINIMAL,
     ['gateway.resolver: must be an array, got "1.1.1.1"']),
    ("resolver_valid_zero", '[gateway]\nresolver_valid = 0\n' + MINIMAL,
     [f"gateway.resolver_valid: {POSITIVE_DURATION}"]),
    ("shutdown_timeout", '[gateway]\nshutdown_timeout = "x"\n' + MINIMAL,
     [f"gateway.shutdown_timeout: {DURATION}"]),
    # [admin]
    ("admin_listen_true", "[admin]\nlisten = true\n" + MINIMAL,
     ["admin.listen: must be an endpoint description or false, got true"]),
    ("admin_listen_bad_endpoint", '[admin]\nlisten = "bogus:1"\n' + MINIMAL,
     ['admin.listen: invalid endpoint description "bogus:1": Unknown endpoint type: '
      "'bogus'"]),
    ("admin_unknown_key", "[admin]\nlisen = false\n" + MINIMAL,
     ['admin.lisen: unknown key (did you mean "listen"?)']),
    # [upstreams.NAME]
    ("upstreams_not_table", "upstreams = 1\n" + MINIMAL,
     ["upstreams: must be a table of [upstreams.NAME] tables, got 1"]),
    ("upstream_bad_name", '[upstreams."a:b"]\nservers = [{ address = "h:1" }]\n' + MINIMAL,
     ['upstreams."a:b": upstream names may use letters, digits, "_", "-" and "." only']),
    ("balance_enum", upstream('balance = "rr"'),
     ['upstreams.app.balance: must be one of "round_robin", "least_conn", "ip_hash", '
      '"hash", "random", got "rr"']),
    ("balance_enum_suggests", upstream('balance = "least_con"'),
     ['upstreams.app.balance: must be one of "round_robin", "least_conn", "ip_hash", '
      '"hash", "random", got "least_con" (did you mean "least_conn"?)']),
    ("hash_key_required", upstream('balance = "hash"'),
     ['upstreams.app.hash_key: required with balance = "hash"']),
    ("hash_key_without_hash", upstream('hash_key = "$remote_addr"'),
     ['upstreams.app.hash_key: only allowed with balance = "hash"']),
    ("consistent_type", upstream("consistent = 1"),
     ["upstreams.app.consistent: must be true or false, got 1"]),
    ("two_type", upstream('two = "yes"'),
     ['upstreams.app.two: must be true or false, got "yes"']),
    ("keepalive_range", upstream("keepalive = -1"),
     ["upstreams.app.keepalive: must be an integer >= 0, got -1"]),
    ("keepalive_requests_range", upstream("keepalive_requests = 0"),
     ["upstreams.app.keepalive_requests: must be an integer >= 1, got 0"]),
    ("keepalive_timeout", upstream('keepalive_timeout = "x"'),
     [f"upstreams.app.keepalive_timeout: {DURATION}"]),
    ("keepalive_time", upstream("keepalive_time = 0"),
     [f"upstreams.app.keepalive_time: {POSITIVE_DURATION}"]),
    ("servers_missing", "[upstreams.app]\nkeepalive = 1\n" + MINIMAL,
     ["upstreams.app.servers: required"]),
    ("servers_empty", "[upstreams.app]\nservers = []\n" + MINIMAL,
     ["upstreams.app.servers: at least one server is required"]),
    ("servers_not_array", '[upstreams.app]\nservers = "127.0.0.1:1"\n' + MINIMAL,
     ['upstreams.app.servers: must be an array of tables, got "127.0.0.1:1"']),
    ("server_not_table", upstream("", servers='"127.0.0.1:1"'),
     ['upstreams.app.servers[0]: must be a table, got "127.0.0.1:1"']),
    ("location_not_table", '[[servers]]\nlisten = ["tcp:1"]\nlocations = ["/"]\n',
     ['servers[0].locations[0]: must be a table, got "/"']),
    ("queue_values", upstream('queue = { size = 0, timeout = "x", max = 1 }'),
     ["upstreams.app.queue.max: unknown key",
      "upstreams.app.queue.size: must be an integer >= 1, got 0",
      f"upstreams.app.queue.timeout: {DURATION}"]),
    ("health_check_values", upstream(
        'health_check = { type = "udp", uri = "health", interval = 0, timeout = "x", '
        'fails = 0, passes = 0, status = "2xx", body = "", headers = { "a b" = "x" }, '
        'grpc_service = 1 }'),
     ['upstreams.app.health_check.type: must be one of "http", "grpc", "tcp", got "udp"',
      'upstreams.app.health_check.uri: must be a path starting with "/", got "health"',
      "upstreams.app.health_check.grpc_service: must be a string, got 1",
      f"upstreams.app.health_check.interval: {POSITIVE_DURATION}",
      f"upstreams.app.health_check.timeout: {DURATION}",
      "upstreams.app.health_check.fails: must be an integer >= 1, got 0",
      "upstreams.app.health_check.passes: must be an integer >= 1, got 0",
      'upstreams.app.health_check.status: must be a status like "200", "200-399" or a '
      'list of them, got "2xx"',
      'upstreams.app.health_check.body: must be a non-empty string, got ""',
      'upstreams.app.health_check.headers."a b": header names must be HTTP tokens']),
    ("health_check_status_range", upstream('health_check = { status = ["399-200"] }'),
     ['upstreams.app.health_check.status: status codes must be from 100 to 599, low to '
      'high, got ["399-200"]']),
    ("upstream_tls_values", upstream(
        'tls = { verify = "yes", ca = "", server_name = true, certificate = "c.pem" }'),
     ['upstreams.app.tls.key: required with certificate',
      'upstreams.app.tls.verify: must be true or false, got "yes"',
      'upstreams.app.tls.ca: must be a non-empty string, got ""',
      "upstreams.app.tls.server_name: must be a host name or false, got true",
      'upstreams.app.tls.certificate: cannot load certificate "/srv/gw/c.pem": No such '
      'file or directory']),
    # upstream server tables
    ("address_missing", upstream("", servers="{ weight = 2 }"),
     ["upstreams.app.servers[0].address: required"]),
    ("address_type", upstream("", servers="{ address = 3000 }"),
     ["upstreams.app.servers[0].address: must be a non-empty string, got 3000"]),
    ("address_port_range", upstream("", servers='{ address = "127.0.0.1:70000" }'),
     ['upstreams.app.servers[0].address: port must be from 1 to 65535, got '
      '"127.0.0.1:70000"']),
    ("address_port_zero", upstream("", servers='{ address = "h:0" }'),
     ['upstreams.app.servers[0].address: port must be from 1 to 65535, got "h:0"']),
    ("address_ipv6_needs_brackets", upstream("", servers='{ address = "::1:80" }'),
     ['upstreams.app.servers[0].address: IPv6 addresses must be in brackets, like '
      '"[::1]:8080", got "::1:80"']),
    ("address_bad_ipv6", upstream("", servers='{ address = "[fe::zz]:80" }'),
     ['upstreams.app.servers[0].address: must be "host:port", "[v6addr]:port" or '
      '"unix:/path", got "[fe::zz]:80"']),
    ("address_bad_host", upstream("", servers='{ address = "http://h:80" }'),
     ['upstreams.app.servers[0].address: must be "host:port", "[v6addr]:port" or '
      '"unix:/path", got "http://h:80"']),
    ("address_empty_unix", upstream("", servers='{ address = "unix:" }'),
     ['upstreams.app.servers[0].address: must be "host:port", "[v6addr]:port" or '
      '"unix:/path", got "unix:"']),
    ("peer_values", upstream("", servers=(
        '{ address = "h:1", weight = 0, max_fails = -1, fail_timeout = "x", '
        'max_conns = 1.5, backup = 1, down = "no", slow_start = "x", resolve = 0, '
        'weigth = 2 }')),
     ['upstreams.app.servers[0].weigth: unknown key (did you mean "weight"?)',
      "upstreams.app.servers[0].backup: must be true or false, got 1",
      f"upstreams.app.servers[0].slow_start: {DURATION}",
      "upstreams.app.servers[0].resolve: must be true or false, got 0",
      "upstreams.app.servers[0].weight: must be an integer >= 1, got 0",
      "upstreams.app.servers[0].max_fails: must be an integer >= 0, got -1",
      f"upstreams.app.servers[0].fail_timeout: {DURATION}",
      "upstreams.app.servers[0].max_conns: must be an integer >= 0, got 1.5",
      'upstreams.app.servers[0].down: must be true or false, got "no"']),
    ("backup_with_ip_hash", upstream(
        'balance = "ip_hash"',
        servers='{ address = "h:1" }, { address = "h:2", backup = true }'),
     ['upstreams.app.servers[1].backup: not allowed with balance = "ip_hash"']),
    ("backup_with_random", upstream(
        'balance = "random"', servers='{ address = "h:2", backup = true }'),
     ['upstreams.app.servers[0].backup: not allowed with balance = "random"']),
    ("resolve_with_unix", upstream("", servers='{ address = "unix:/s", resolve = true }'),
     ["upstreams.app.servers[0].resolve: not allowed with a unix: address"]),
    # [[servers]]
    ("servers_not_array_of_tables", "servers = 1\n",
     ["servers: must be an array of tables, got 1"]),
    ("listen_missing", '[[servers]]\nlocations = [{ path = "/", return = { status = 204 } }]',
     ["servers[0].listen: required"]),
    ("listen_empty", '[[servers]]\nlisten = []\n'
                     'locations = [{ path = "/", return = { status = 204 } }]',
     ["servers[0].listen: must list at least one endpoint description"]),
    ("listen_bad_description", '[[servers]]\nlisten = ["tcp:http"]\n'
                               'locations = [{ path = "/", return = { status = 204 } }]',
     ['servers[0].listen[0]: invalid endpoint description "tcp:http": invalid literal '
      "for int() with base 10: 'http'"]),
    ("listen_port_range", '[[servers]]\nlisten = ["tcp:8080", "tcp:70000"]\n'
                          'locations = [{ path = "/", return = { status = 204 } }]',
     ['servers[0].listen[1]: port must be from 0 to 65535, got "tcp:70000"']),
    ("listen_twice", '[[servers]]\nlisten = ["tcp:8080", "tcp:8080"]\n'
                     'locations = [{ path = "/", return = { status = 204 } }]',
     ['servers[0].listen: "tcp:8080" is listed twice']),
    ("server_name_star_inside", server('server_name = ["www.*.com"]'),
     ['servers[0].server_name[0]: a "*" is allowed only as "*.example.com" or '
      '"example.*", got "www.*.com"']),
    ("server_name_star_alone", server('server_name = ["*"]'),
     ['servers[0].server_name[0]: a "*" is allowed only as "*.example.com" or '
      '"example.*", got "*"']),
    ("server_name_bad_regex", server('server_name = ["~^(api"]'),
     ['servers[0].server_name[0]: invalid regular expression "^(api": missing ), '
      "unterminated subpattern at position 1"]),
    ("server_name_slash", server('server_name = ["example.com/x"]'),
     ['servers[0].server_name[0]: must be a host name, got "example.com/x"']),
    ("server_name_type", server("server_name = [1]"),
     ["servers[0].server_name[0]: must be a string, got 1"]),
    ("default_type", server('default = "yes"'),
     ['servers[0].default: must be true or false, got "yes"']),
    ("two_defaults_on_one_listen",
     server("default = true") + server("default = true"),
     ['servers[1].default: "tcp:8080" already has a default server (servers[0])']),
    ("http2_type", server('http2 = "on"'),
     ['servers[0].http2: must be true or false, got "on"']),
    ("size_keys", server('client_max_body_size = "x"\nlarge_client_header_buffers = 0'),
     [f"servers[0].client_max_body_size: {SIZE}",
      "servers[0].large_client_header_buffers: must be a size greater than 0, got 0"]),
    ("server_durations", server(
        'client_header_timeout = "x"\nclient_body_timeout = 0\nkeepalive_timeout = "x"'),
     [f"servers[0].client_header_timeout: {DURATION}",
      f"servers[0].client_body_timeout: {POSITIVE_DURATION}",
      f"servers[0].keepalive_timeout: {DURATION}"]),
    ("server_keepalive_requests", server("keepalive_requests = 0"),
     ["servers[0].keepalive_requests: must be an integer >= 1, got 0"]),
    ("real_ip_header_token", server('real_ip_header = "X Real"'),
     ['servers[0].real_ip_header: must be a header name (an HTTP token), got "X Real"']),
    ("set_real_ip_from_cidr", server('set_real_ip_from = ["10.0.0.0/33"]'),
     ['servers[0].set_real_ip_from[0]: must be an IPv4/IPv6 address, a CIDR or '
      '"unix:", got "10.0.0.0/33"']),
    ("server_tls_values", server(
        'tls = { certificate = "c.pem", protocols = ["SSLv3"], verify_client = "on", '
        'ciphers = "" }'),
     ['servers[0].tls.protocols[0]: must be one of "TLSv1", "TLSv1.1", "TLSv1.2", '
      '"TLSv1.3", got "SSLv3"',
      'servers[0].tls.verify_client: "on" needs client_ca',
      "servers[0].tls.key: required",
      'servers[0].tls.ciphers: must be a non-empty string, got ""']),
    ("locations_missing", '[[servers]]\nlisten = ["tcp:8080"]\n',
     ["servers[0].locations: required"]),
    ("locations_empty", '[[servers]]\nlisten = ["tcp:8080"]\nlocations = []\n',
     ["servers[0].locations: at least one location is required"]),
    # locations
    ("path_missing", location("return = { status = 204 }").replace('path = "/", ', ""),
     [f"{L}.path: required"]),
    ("path_named", location("return = { status = 204 }").replace('"/"', '"@fallback"'),
     [f'{L}.path: named locations ("@name") are not supported, got "@fallback"']),
    ("path_empty_pattern", location("return = { status = 204 }").replace('"/"', '"= "'),
     [f'{L}.path: empty pattern, got "= "']),
    ("path_bad_regex", location("return = { status = 204 }").replace('"/"', '"~ ^/(a"'),
     [f'{L}.path: invalid regular expression "^/(a": missing ), unterminated subpattern '
      "at position 2"]),
    ("duplicate_location", server("").replace(
        '{ path = "/", return = { status = 204 } }',
        '{ path = "/a", return = { status = 204 } }, { path = "/b", return = { status = 204 } }, '
        '{ path = "^~ /a", return = { status = 204 } }'),
     ['servers[0].locations[2].path: duplicate location "^~ /a" (also locations[0])']),
    ("no_handler", location("proxy_buffering = false"),
     [f"{L}: needs exactly one handler (proxy_pass, grpc_pass or return), got none"]),
    ("two_handlers", location('proxy_pass = "http://app", return = { status = 204 }'),
     [f"{L}: needs exactly one handler (proxy_pass, grpc_pass or return), got "
      "proxy_pass and return"]),
    ("return_status_range", location("return = { status = 1000 }"),
     [f"{L}.return.status: must be an integer from 0 to 999, got 1000"]),
    ("return_status_missing", location('return = { body = "x" }'),
     [f"{L}.return.status: required"]),
    ("return_redirect_needs_url", location('return = { status = 302, body = "x" }'),
     [f"{L}.return.url: required with status 302"]),
    ("return_url_and_body", location('return = { status = 301, url = "/a", body = "x" }'),
     [f"{L}.return: set url or body, not both"]),
    ("return_url_needs_redirect", location('return = { status = 200, url = "/a" }'),
     [f"{L}.return.url: only allowed with status 301, 302, 303, 307 or 308"]),
    ("return_unknown_key", location("return = { status = 204, code = 1 }"),
     [f"{L}.return.code: unknown key"]),
    ("return_body_unknown_variable", location('return = { status = 200, body = "$hots" }'),
     [f'{L}.return.body: unknown variable "$hots"']),
    ("return_url_unknown_variable", location('return = { status = 301, url = "https://$hots/" }'),
     [f'{L}.return.url: unknown variable "$hots"']),
    ("proxy_pass_scheme", location('proxy_pass = "ftp://app"'),
     [f'{L}.proxy_pass: must start with "http://" or "https://", got "ftp://app"']),
    ("proxy_pass_no_host", location('proxy_pass = "http:///x"'),
     [f'{L}.proxy_pass: must name an upstream or a host, got "http:///x"']),
    ("proxy_pass_bad_port", location('proxy_pass = "http://h:99999"'),
     [f'{L}.proxy_pass: port must be from 1 to 65535, got "h:99999"']),
    ("proxy_pass_uri_in_regex_location",
     location('proxy_pass = "http://app/x"').replace('"/"', '"~ ^/a"'),
     [f"{L}.proxy_pass: cannot have a URI part in a location given by a regular "
      'expression, got "http://app/x"']),
    ("proxy_pass_unix_without_path", location('proxy_pass = "http://unix::/x"'),
     [f'{L}.proxy_pass: must be "http://unix:/path/to.sock[:/uri]" for a unix socket, '
      'got "http://unix::/x"']),
    ("proxy_pass_query", location('proxy_pass = "http://h?x"'),
     [f'{L}.proxy_pass: must name an upstream or a host, got "http://h?x"']),
    ("proxy_pass_variables", location('proxy_pass = "http://$host"'),
     [f"{L}.proxy_pass: not supported yet"]),
    ("proxy_set_header_values", proxied(
        'proxy_set_header = { "Bad Name" = "x", X-Num = 1, Host = "a", host = "b" }'),
     [f'{L}.proxy_set_header."Bad Name": header names must be HTTP tokens',
      f"{L}.proxy_set_header.X-Num: must be a string, got 1",
      f'{L}.proxy_set_header.host: duplicate header (also "Host")']),
    ("proxy_set_header_not_table", proxied('proxy_set_header = "Host: x"'),
     [f'{L}.proxy_set_header: must be a table of header = value, got "Host: x"']),
    ("add_header_token", proxied('add_header = { "X:Y" = "1" }'),
     [f'{L}.add_header."X:Y": header names must be HTTP tokens']),
    ("hide_header_token", proxied('proxy_hide_header = ["X Y"], proxy_pass_header = [1]'),
     [f'{L}.proxy_hide_header[0]: must be a header name (an HTTP token), got "X Y"',
      f"{L}.proxy_pass_header[0]: must be a header name (an HTTP token), got 1"]),
    ("next_upstream_unknown", proxied('proxy_next_upstream = ["error", "http_501"]'),
     [f'{L}.proxy_next_upstream[1]: must be one of "off", "error", "timeout", '
      '"invalid_header", "http_500", "http_502", "http_503", "http_504", "http_403", '
      '"http_404", "http_429", "non_idempotent", got "http_501" (did you mean '
      '"http_504"?)']),
    ("next_upstream_off_mixed", proxied('proxy_next_upstream = ["off", "error"]'),
     [f'{L}.proxy_next_upstream: "off" cannot be combined with other conditions']),
    ("next_upstream_empty", proxied("proxy_next_upstream = []"),
     [f'{L}.proxy_next_upstream: must list at least one condition, or be "off"']),
    ("proxy_numbers_and_durations", proxied(
        'proxy_next_upstream_tries = -1, proxy_next_upstream_timeout = "x", '
        'proxy_connect_timeout = 0, proxy_send_timeout = "x", proxy_read_timeout = "1y"'),
     [f"{L}.proxy_next_upstream_tries: must be an integer >= 0, got -1",
      f"{L}.proxy_next_upstream_timeout: {DURATION}",
      f"{L}.proxy_connect_timeout: {POSITIVE_DURATION}",
      f"{L}.proxy_send_timeout: {DURATION}",
      f'{L}.proxy_read_timeout: {DURATION[:-len(chr(34) + "x" + chr(34))]}"1y"']),
    ("proxy_bools", proxied(
        "proxy_buffering = 0, proxy_request_buffering = 1, proxy_websocket = 0"),
     [f"{L}.proxy_websocket: must be true or false, got 0",
      f"{L}.proxy_buffering: must be true or false, got 0",
      f"{L}.proxy_request_buffering: must be true or false, got 1"]),
    ("access_rule_form", proxied('access = ["permit all", "allow"]'),
     [f'{L}.access[0]: must be "allow ADDRESS" or "deny ADDRESS", got "permit all"',
      f'{L}.access[1]: must be "allow ADDRESS" or "deny ADDRESS", got "allow"']),
    ("access_rule_address", proxied('access = ["deny 300.0.0.1"], allow = "localhost"'),
     [f'{L}.access[0]: must be an IPv4/IPv6 address, a CIDR, "all" or "unix:", got '
      '"300.0.0.1"',
      f'{L}.allow: must be an IPv4/IPv6 address, a CIDR, "all" or "unix:", got '
      '"localhost"']),
    ("access_not_list", proxied('access = "deny all"'),
     [f'{L}.access: must be an array, got "deny all"']),
    ("limit_req_values", proxied('limit_req = { zone = "nope", burst = -1, nodelay = 1 }'),
     [f"{L}.limit_req.zone: no [limit_req_zones.nope] is declared",
      f"{L}.limit_req.burst: must be an integer >= 0, got -1",
      f"{L}.limit_req.nodelay: must be true or false, got 1",
      f"{L}.limit_req: not supported yet"]),
    ("limit_req_zone_missing", proxied("limit_req = { burst = 1 }"),
     [f"{L}.limit_req.zone: required", f"{L}.limit_req: not supported yet"]),
    ("proxy_cache_unknown", proxied('proxy_cache = "nope"'),
     [f"{L}.proxy_cache: no [caches.nope] is declared",
      f"{L}.proxy_cache: not supported yet"]),
    ("proxy_cache_true", proxied("proxy_cache = true"),
     [f"{L}.proxy_cache: must be the name of a [caches.NAME] or false, got true",
      f"{L}.proxy_cache: not supported yet"]),
    ("proxy_cache_valid_values", proxied('proxy_cache_valid = { "200 abc" = "1m", any = "x" }'),
     [f'{L}.proxy_cache_valid."200 abc": keys must be status codes separated by spaces '
      'or "any"',
      f"{L}.proxy_cache_valid.any: {DURATION}",
      f"{L}.proxy_cache_valid: not supported yet"]),
    ("proxy_cache_use_stale_values", proxied('proxy_cache_use_stale = ["off", "stale"]'),
     [f'{L}.proxy_cache_use_stale[1]: must be one of "off", "error", "timeout", '
      '"updating", "http_500", "http_502", "http_503", "http_504", got "stale"']),
    ("proxy_cache_key_empty", proxied('proxy_cache_key = ""'),
     [f'{L}.proxy_cache_key: must be a non-empty string, got ""']),
    ("grpc_pass_scheme", location('grpc_pass = "http://app"'),
     [f'{L}.grpc_pass: must start with "grpc://" or "grpcs://", got "http://app"']),
    ("grpc_twins_validated", proxied(
        'grpc_connect_timeout = 0, grpc_next_upstream = ["eror"], '
        'grpc_set_header = { "a b" = "1" }'),
     [f'{L}.grpc_set_header."a b": header names must be HTTP tokens',
      f'{L}.grpc_next_upstream[0]: must be one of "off", "error", "timeout", '
      '"invalid_header", "http_500", "http_502", "http_503", "http_504", "http_403", '
      '"http_404", "http_429", "non_idempotent", "unavailable", "deadline_exceeded", '
      '"resource_exhausted", "internal", got "eror" (did you mean "error"?)',
      f"{L}.grpc_connect_timeout: {POSITIVE_DURATION}"]),
    ("location_unknown_key_without_suggestion", proxied("colour = 1"),
     [f"{L}.colour: unknown key"]),
    # [limit_req_zones.NAME], [caches.NAME], [[grpc_servers]]
    ("limit_req_zone_values",
     '[limit_req_zones.one]\nrate = "10r/h"\nstatus = 200\n' + MINIMAL,
     ["limit_req_zones.one.key: required",
      'limit_req_zones.one.rate: must be a rate like "10r/s" or "30r/m", got "10r/h"',
      "limit_req_zones.one.status: must be an integer from 400 to 599, got 200",
      "limit_req_zones.one: not supported yet"]),
    ("cache_values", '[caches.c]\nmax_size = "x"\ninactive = 0\n' + MINIMAL,
     ["caches.c.path: required",
      f"caches.c.max_size: {SIZE}",
      f"caches.c.inactive: {POSITIVE_DURATION}",
      "caches.c: not supported yet"]),
    ("grpc_server_values",
     '[[grpc_servers]]\nlisten = "127.0.0.1:99999"\ngrpc_pass = "app"\n' + MINIMAL,
     ['grpc_servers[0].listen: port must be from 1 to 65535, got "127.0.0.1:99999"',
      'grpc_servers[0].grpc_pass: must start with "grpc://" or "grpcs://", got "app"']),
]


@pytest.mark.parametrize("text, expected", [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_each_bad_value_is_reported_at_its_toml_path(text, expected):
    assert errors_of(text) == expected


# -- not supported yet ---------------------------------------------------------------

UNSUPPORTED = [
    ("proxy_cache_valid", proxied('proxy_cache_valid = { "200 302" = "10m" }'),
     f"{L}.proxy_cache_valid"),
    ("proxy_cache_use_stale", proxied('proxy_cache_use_stale = ["updating"]'),
     f"{L}.proxy_cache_use_stale"),
    ("proxy_cache_lock", proxied("proxy_cache_lock = true"), f"{L}.proxy_cache_lock"),
    ("proxy_cache_background_update", proxied("proxy_cache_background_update = true"),
     f"{L}.proxy_cache_background_update"),
]


@pytest.mark.parametrize("text, path", [u[1:] for u in UNSUPPORTED],
                         ids=[u[0] for u in UNSUPPORTED])
def test_a_valid_value_switching_on_a_later_feature_is_not_supported_yet(text, path):
    paths = [path] if isinstance(path, str) else path
    assert errors_of(text) == [f"{p}: not supported yet" for p in paths]


def test_proxy_websocket_true_is_accepted():
    """Upgrade tunnels are built: ``proxy_websocket = true`` (the default) loads."""
    config = parse_config(tomllib.loads(proxied("proxy_websocket = true")), "/x.toml")
    assert config.servers[0].locations[0].proxy_websocket is True


def test_workers_other_than_one_load_with_shareable_listeners():
    """``workers = 4`` and ``0`` (one per core) load; so do tcp6: and unix: listeners,
    which the master can bind and pass to its workers."""
    for workers in (4, 0):
        config = parse(f"[gateway]\nworkers = {workers}\n" + MINIMAL)
        assert config.gateway.workers == workers
    text = ('[gateway]\nworkers = 2\n' + MINIMAL
            + '[[servers]]\nlisten = ["tcp6:8081", "unix:/run/gw.sock"]\n'
              '[[servers.locations]]\npath = "/"\nreturn = { status = 204 }\n')
    assert parse(text).gateway.workers == 2


def test_workers_refuse_a_listener_the_master_cannot_share():
    """A ``stdio:`` endpoint is not a socket the master can bind and pass on: refused
    with the listener named."""
    text = ('[gateway]\nworkers = 2\n' + MINIMAL
            + '[[servers]]\nlisten = "stdio:"\n'
              '[[servers.locations]]\npath = "/"\nreturn = { status = 204 }\n')
    assert errors_of(text) == [
        'gateway.workers: listener "stdio:" cannot be shared by worker processes: '
        "only tcp:, tcp6: and unix: listeners can (or set workers = 1)"]


def test_workers_refuse_the_grpc_front_door():
    """``[[grpc_servers]]`` is a grpcio server, which cannot take over the master's
    socket: it needs ``workers = 1``, and the error says what works instead."""
    text = ('[gateway]\nworkers = 0\n[[grpc_servers]]\nlisten = "127.0.0.1:50051"\n'
            'grpc_pass = "grpc://127.0.0.1:50052"\n' + MINIMAL)
    assert [e for e in errors_of(text) if e.startswith("gateway.")] == [
        "gateway.workers: [[grpc_servers]] run in one process only: set workers = 1, or "
        "serve gRPC with grpc_pass locations of a [[servers]] listener, which work with "
        "any number of workers"]


def test_admin_listen_takes_an_endpoint_description_or_false():
    """The admin listener is built: any endpoint is accepted, ``false`` turns it off."""
    config = parse_config(tomllib.loads('[admin]\nlisten = "tcp:9901"\n' + MINIMAL), "/x.toml")
    assert config.admin == AdminSettings(listen="tcp:9901")
    config = parse_config(tomllib.loads('[admin]\nlisten = false\n' + MINIMAL), "/x.toml")
    assert config.admin == AdminSettings(listen=None)
    assert errors_of('[admin]\nlisten = 9901\n' + MINIMAL) == [
        "admin.listen: must be an endpoint description or false, got 9901"]


def test_limit_req_with_its_zone_reports_both_as_not_supported_yet():
    text = proxied('limit_req = { zone = "one", burst = 5, nodelay = true }') + """
[limit_req_zones.one]
key = "static"
rate = "30r/m"
"""
    assert errors_of(text) == ["limit_req_zones.one: not supported yet",
                               f"{L}.limit_req: not supported yet"]


def test_proxy_cache_with_its_cache_reports_both_as_not_supported_yet():
    text = proxied('proxy_cache = "c"') + '[caches.c]\npath = "cache"\nmax_size = "1g"\n'
    assert errors_of(text) == ["caches.c: not supported yet",
                               f"{L}.proxy_cache: not supported yet"]


def test_grpc_servers_are_read_with_their_target():
    """A front door: its grpcio address (port 0 allowed), the group its grpc_pass
    names and the scheme, and grpc_next_upstream (sorted; CONFIG.md's default)."""
    text = MINIMAL + """
[upstreams.app]
servers = [{ address = "127.0.0.1:50053" }]

[[grpc_servers]]
listen = "127.0.0.1:50051"
grpc_pass = "grpcs://app"
grpc_next_upstream = ["unavailable", "error"]

[[grpc_servers]]
listen = "[::1]:0"
grpc_pass = "grpc://127.0.0.1:50052"
"""
    config = parse_config(tomllib.loads(text), "/x.toml")
    first, second = config.grpc_servers
    assert first == GrpcServerSettings(
        listen="127.0.0.1:50051", grpc_pass="grpcs://app", upstream="app",
        scheme="grpcs", grpc_next_upstream=("error", "unavailable"))
    assert second == GrpcServerSettings(
        listen="[::1]:0", grpc_pass="grpc://127.0.0.1:50052", upstream="127.0.0.1:50052",
        scheme="grpc", grpc_next_upstream=("error", "timeout", "unavailable"))
    # a literal host:port is an implicit group, as for grpc_pass locations
    assert config.upstreams["127.0.0.1:50052"].implicit


@pytest.mark.parametrize("listen, message", [
    ("127.0.0.1", 'must be "host:port", "[v6addr]:port" or "unix:/path", got "127.0.0.1"'),
    ("::1:50051", 'must be "host:port", "[v6addr]:port" or "unix:/path", got "::1:50051"'),
    ("bad host:1", 'must be "host:port", "[v6addr]:port" or "unix:/path", got "bad host:1"'),
])
def test_grpc_server_listen_is_a_grpcio_address(listen, message):
    text = MINIMAL + f'[[grpc_servers]]\nlisten = "{listen}"\ngrpc_pass = "grpc://a:1"\n'
    assert errors_of(text) == [f"grpc_servers[0].listen: {message}"]


def test_grpcs_to_a_group_that_does_not_verify_is_refused():
    """grpcio always verifies the peer: ``verify = false`` cannot be honoured."""
    text = MINIMAL + """
[upstreams.app]
servers = [{ address = "127.0.0.1:50053" }]
tls = { verify = false }

[[grpc_servers]]
listen = "127.0.0.1:50051"
grpc_pass = "grpcs://app"
"""
    assert errors_of(text) == [
        "upstreams.app.tls.verify: must be true: the group is used with grpcs:// by "
        "[[grpc_servers]], and grpcio always verifies the peer"]


# -- variables and defaults across servers -------------------------------------------


def test_unknown_variables_in_templates_are_reported_where_written():
    """Every template key is checked against the variable catalogue; known names
    (including the $arg_/$http_/$cookie_ families) pass."""
    text = '[gateway]\naccess_log_format = "$remote_addr $nosuch"\n' + proxied(
        'proxy_set_header = { X-A = "$host$bogus", X-B = "$arg_id $http_x_trace $cookie_s" }, '
        'add_header = { X-C = "$upstream_addr $nope" }, proxy_cache_key = "$foo$uri"'
    ) + '[limit_req_zones.z]\nkey = "$zz"\nrate = "1r/s"\n'
    assert errors_of(text) == [
        'gateway.access_log_format: unknown variable "$nosuch"',
        'limit_req_zones.z.key: unknown variable "$zz"',
        "limit_req_zones.z: not supported yet",
        f'{L}.proxy_set_header.X-A: unknown variable "$bogus"',
        f'{L}.proxy_cache_key: unknown variable "$foo"',
        f'{L}.add_header.X-C: unknown variable "$nope"',
    ]


def test_hash_key_variables_are_checked():
    text = upstream('balance = "hash"\nhash_key = "$request_uri$what"')
    assert errors_of(text) == ['upstreams.app.hash_key: unknown variable "$what"']


def test_custom_access_log_format_with_known_variables_loads():
    config = parse('[gateway]\naccess_log_format = "$remote_addr $status $request_time"\n'
                   + MINIMAL)
    assert config.gateway.access_log_format == "$remote_addr $status $request_time"


def test_one_default_server_per_listen_description_is_allowed():
    """Two default servers are fine when they share no listen description."""
    text = server("default = true") + server("default = true").replace("tcp:8080", "tcp:8081")
    config = parse(text)
    assert [(s.listen, s.default) for s in config.servers] == [
        (("tcp:8080",), True), (("tcp:8081",), True)]
    assert config.listeners() == {"tcp:8080": (config.servers[0],),
                                  "tcp:8081": (config.servers[1],)}
