"""``real_ip_header`` and ``set_real_ip_from`` in ``[[servers]]``: what loads, in which
parsed form, what is refused and how the site reads the defaults."""
import tomllib

import pytest

from gateway.config import ConfigError, parse_config
from gateway.http.realip import server_realip


def server(fields: str) -> str:
    return f"""
[[servers]]
listen = ["tcp:8080"]
locations = [{{ path = "/", return = {{ status = 204 }} }}]
{fields}
"""


def load(text: str):
    (srv,) = parse_config(tomllib.loads(text), "/srv/gw/site.toml").servers
    return srv


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(text), "/srv/gw/site.toml")
    return caught.value.errors


def test_sources_load_as_networks_with_host_bits_dropped():
    srv = load(server(
        'real_ip_header = "X-Forwarded-For"\n'
        'set_real_ip_from = ["10.0.0.0/8", "192.0.2.1", "2001:db8::/32", "unix:", '
        '"10.1.2.3/8", "::1"]'))
    assert srv.real_ip_header == "X-Forwarded-For"
    assert srv.set_real_ip_from == ("10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32",
                                    "unix:", "10.0.0.0/8", "::1/128")


def test_one_source_may_be_given_without_an_array():
    assert load(server('set_real_ip_from = "127.0.0.1"')).set_real_ip_from \
        == ("127.0.0.1/32",)


def test_sources_without_a_header_read_x_real_ip_as_nginx_does():
    srv = load(server('set_real_ip_from = ["127.0.0.1"]'))
    assert srv.real_ip_header is None
    assert server_realip(srv).header == "X-Real-IP"


def test_a_header_without_sources_loads_and_does_nothing_as_in_nginx():
    srv = load(server('real_ip_header = "X-Forwarded-For"'))
    assert (srv.real_ip_header, srv.set_real_ip_from) == ("X-Forwarded-For", ())
    assert server_realip(srv) is None


def test_any_header_name_is_accepted_as_written():
    srv = load(server('real_ip_header = "CF-Connecting-IP"\nset_real_ip_from = ["::1"]'))
    assert server_realip(srv).header == "CF-Connecting-IP"


@pytest.mark.parametrize("value", ['"all"', '"example.com"', '"10.0.0.0/33"', "5",
                                   '"unix:/run/lb.sock"', '"10.0.0.0/"'])
def test_sources_must_be_addresses_networks_or_unix(value):
    assert errors_of(server(f"set_real_ip_from = [{value}]")) == [
        f'servers[0].set_real_ip_from[0]: must be an IPv4/IPv6 address, a CIDR or '
        f'"unix:", got {value}']


def test_every_bad_source_is_reported_with_its_index():
    assert errors_of(server('set_real_ip_from = ["127.0.0.1", "all", "x"]')) == [
        'servers[0].set_real_ip_from[1]: must be an IPv4/IPv6 address, a CIDR or '
        '"unix:", got "all"',
        'servers[0].set_real_ip_from[2]: must be an IPv4/IPv6 address, a CIDR or '
        '"unix:", got "x"',
    ]


def test_proxy_protocol_is_refused_with_the_reason():
    assert errors_of(server('real_ip_header = "proxy_protocol"\n'
                            'set_real_ip_from = ["127.0.0.1"]')) == [
        'servers[0].real_ip_header: "proxy_protocol" is not supported: listeners do not '
        'accept the PROXY protocol; name the header your proxy sets, e.g. '
        '"X-Forwarded-For"']


def test_the_header_must_be_a_header_name():
    assert errors_of(server('real_ip_header = "X Real"')) == [
        'servers[0].real_ip_header: must be a header name (an HTTP token), got "X Real"']
