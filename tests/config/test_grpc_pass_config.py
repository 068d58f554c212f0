"""``grpc_pass`` locations in site.toml: the target, implicit groups and the grpc_* twins."""
import tomllib

import pytest

from gateway.check import unresolvable_hosts
from gateway.config import ConfigError, parse_config
from gateway.config.model import Address, GrpcPass, PeerSettings, UpstreamSettings

L = "servers[0].locations[0]"


def parse(text: str):
    return parse_config(tomllib.loads(text), "/srv/gw/site.toml")


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return caught.value.errors


def location(fields: str) -> str:
    return f"""
[upstreams.app]
servers = [{{ address = "127.0.0.1:50051" }}]

[[servers]]
listen = ["tcp:8080"]
locations = [{{ path = "/", {fields} }}]
"""


def test_grpc_pass_names_a_declared_group_with_nginx_defaults():
    config = parse(location('grpc_pass = "grpc://app"'))
    assert config.servers[0].locations[0].grpc_pass == GrpcPass(
        scheme="grpc", upstream="app", text="grpc://app",
        next_upstream=frozenset({"error", "timeout"}), next_upstream_tries=0,
        next_upstream_timeout=0.0, connect_timeout=60.0, send_timeout=60.0,
        read_timeout=None)
    assert config.servers[0].locations[0].proxy_pass is None


def test_the_grpc_twins_configure_the_target():
    config = parse(location(
        'grpc_pass = "grpcs://app", grpc_next_upstream = ["error", "unavailable"], '
        'grpc_next_upstream_tries = 2, grpc_next_upstream_timeout = "5s", '
        'grpc_connect_timeout = "1s", grpc_send_timeout = "2s", grpc_read_timeout = "3s", '
        'grpc_set_header = { x-client = "$remote_addr", x-drop = "" }, '
        'grpc_hide_header = ["x-internal"], grpc_pass_header = ["server"], '
        'proxy_read_timeout = "9s"'))
    target = config.servers[0].locations[0].grpc_pass
    assert target == GrpcPass(
        scheme="grpcs", upstream="app", text="grpcs://app",
        set_header=(("x-client", "$remote_addr"), ("x-drop", "")),
        hide_header=("x-internal",), pass_header=("server",),
        next_upstream=frozenset({"error", "unavailable"}), next_upstream_tries=2,
        next_upstream_timeout=5.0, connect_timeout=1.0, send_timeout=2.0,
        read_timeout=3.0)


@pytest.mark.parametrize("text, name, port", [
    ("grpc://127.0.0.1:50051", "127.0.0.1:50051", 50051),
    ("grpc://localhost", "localhost:80", 80),
    ("grpcs://localhost", "localhost:443", 443),
    ("grpc://[::1]:9000", "[::1]:9000", 9000),
])
def test_a_literal_target_is_an_implicit_group(text, name, port):
    config = parse(location(f'grpc_pass = "{text}"'))
    assert config.servers[0].locations[0].grpc_pass.upstream == name
    group = config.upstreams[name]
    assert group.implicit
    assert group.servers[0].address.port == port


def test_proxy_pass_and_grpc_pass_share_an_implicit_group():
    config = parse("""
[[servers]]
listen = ["tcp:8080"]
locations = [
  { path = "/", proxy_pass = "http://127.0.0.1:9000" },
  { path = "/pkg.Svc/", grpc_pass = "grpc://127.0.0.1:9000" },
]
""")
    assert list(config.upstreams) == ["127.0.0.1:9000"]
    assert config.upstreams["127.0.0.1:9000"] == UpstreamSettings(
        name="127.0.0.1:9000", implicit=True, servers=(PeerSettings(address=Address(
            text="127.0.0.1:9000", host="127.0.0.1", port=9000)),))


@pytest.mark.parametrize("value, message", [
    ('"http://app"', 'must start with "grpc://" or "grpcs://", got "http://app"'),
    ('"app"', 'must start with "grpc://" or "grpcs://", got "app"'),
    ('"grpc://app/pkg"', 'must name an upstream or a host, got "grpc://app/pkg"'),
    ('"grpc://"', 'must name an upstream or a host, got "grpc://"'),
    ('"grpc://$host"', "not supported yet"),
    ("1", "must be a non-empty string, got 1"),
])
def test_bad_targets_are_reported_at_their_path(value, message):
    assert errors_of(location(f"grpc_pass = {value}")) == [f"{L}.grpc_pass: {message}"]


def test_grpc_twins_on_a_proxy_pass_location_are_accepted_and_unused():
    """As in nginx, a grpc_* directive where no grpc_pass is has no effect."""
    config = parse(location('proxy_pass = "http://app", grpc_read_timeout = "1s"'))
    assert config.servers[0].locations[0].grpc_pass is None


def test_check_resolves_the_hosts_of_literal_grpc_targets():
    config = parse(location('grpc_pass = "grpc://nosuch.invalid:50051"'))

    def resolve(host, port):
        raise OSError(-2, "Name or service not known")

    assert unresolvable_hosts(config, resolve) == [
        f'{L}.grpc_pass: host not found in upstream "nosuch.invalid:50051" '
        "(Name or service not known)"]
