"""``resolve = true``, ``[gateway].resolver`` and ``resolver_valid`` at load time."""
import tomllib

import pytest

from gateway.config import ConfigError, parse_config
from gateway.config.model import Address, GatewaySettings, PeerSettings

MINIMAL = """
[[servers]]
listen = ["tcp:8080"]
locations = [{ path = "/", return = { status = 200, body = "ok\\n" } }]
"""


def parse(text: str):
    return parse_config(tomllib.loads(text), "/srv/gw/site.toml")


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return caught.value.errors


def group(servers: str, gateway: str = "") -> str:
    return f"""
[gateway]
{gateway}
[upstreams.app]
servers = [{servers}]
""" + MINIMAL


def test_resolve_and_resolver_load():
    config = parse(group(
        '{ address = "app.test:8080", resolve = true, weight = 2 },'
        ' { address = "backup.test:81", resolve = true, backup = true }',
        gateway='resolver = ["127.0.0.53:5353", "[::1]"]\nresolver_valid = "5s"',
    ))
    assert config.gateway == GatewaySettings(resolver=("127.0.0.53:5353", "[::1]"),
                                             resolver_valid=5.0)
    assert config.upstreams["app"].servers == (
        PeerSettings(address=Address("app.test:8080", "app.test", 8080), weight=2,
                     resolve=True),
        PeerSettings(address=Address("backup.test:81", "backup.test", 81), backup=True,
                     resolve=True),
    )


def test_resolve_without_resolver_uses_the_system_resolvers():
    config = parse(group('{ address = "app.test", resolve = true }'))
    assert config.gateway.resolver == ()
    assert config.gateway.resolver_valid == 30.0
    assert config.upstreams["app"].servers[0].address.port == 80


def test_resolve_with_an_ip_literal_is_accepted():
    """nginx accepts ``resolve`` on an IP address (it then changes nothing)."""
    config = parse(group('{ address = "127.0.0.2:80", resolve = true }'))
    assert config.upstreams["app"].servers[0].resolve is True


def test_resolve_with_a_unix_socket_is_an_error():
    assert errors_of(group('{ address = "unix:/run/app.sock", resolve = true }')) == [
        "upstreams.app.servers[0].resolve: not allowed with a unix: address"]


@pytest.mark.parametrize("value, message", [
    ('["dns.local:53"]', 'gateway.resolver[0]: must be an "ip:port" address,'
                         ' got "dns.local:53"'),
    ('["unix:/run/dns"]', 'gateway.resolver[0]: must be "host:port", "[v6addr]:port",'
                          ' got "unix:/run/dns"'),
    ('["127.0.0.1:0"]', 'gateway.resolver[0]: port must be from 1 to 65535,'
                        ' got "127.0.0.1:0"'),
])
def test_resolver_entries_must_be_ip_addresses(value, message):
    assert errors_of(group('{ address = "app.test:80", resolve = true }',
                           gateway=f"resolver = {value}")) == [message]


def test_resolver_valid_must_be_positive():
    assert errors_of(group('{ address = "app.test:80", resolve = true }',
                           gateway='resolver_valid = "0s"')) == [
        'gateway.resolver_valid: must be a duration greater than 0, got "0s"']
