"""``queue`` and ``slow_start`` in ``[upstreams.NAME]``: accepted, validated, refused
where NGINX Plus refuses them."""
import tomllib

import pytest

from gateway.config import ConfigError, parse_config
from gateway.config.model import QueueSettings

MINIMAL = """
[[servers]]
listen = ["tcp:8080"]
locations = [{ path = "/", return = { status = 200, body = "ok\\n" } }]
"""


def upstream(fields: str, servers: str) -> str:
    return f"""
[upstreams.app]
servers = [{servers}]
{fields}
""" + MINIMAL


def parse(text: str):
    return parse_config(tomllib.loads(text), "/srv/gw/site.toml")


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return caught.value.errors


def test_queue_is_read_with_its_defaults():
    config = parse(upstream("queue = { size = 10 }",
                            '{ address = "127.0.0.1:3000", max_conns = 5 }'))
    assert config.upstreams["app"].queue == QueueSettings(size=10, timeout=60.0)
    config = parse(upstream('queue = { size = 1, timeout = "250ms" }',
                            '{ address = "127.0.0.1:3000" }'))
    assert config.upstreams["app"].queue == QueueSettings(size=1, timeout=0.25)
    config = parse(upstream("", '{ address = "127.0.0.1:3000" }'))
    assert config.upstreams["app"].queue is None


def test_queue_timeout_must_be_positive_and_size_at_least_one():
    assert errors_of(upstream('queue = { size = 0, timeout = "0s" }',
                              '{ address = "127.0.0.1:3000" }')) == [
        "upstreams.app.queue.size: must be an integer >= 1, got 0",
        'upstreams.app.queue.timeout: must be a duration greater than 0, got "0s"',
    ]


@pytest.mark.parametrize("balance", ["round_robin", "least_conn"])
def test_slow_start_is_accepted_with_round_robin_and_least_conn(balance):
    config = parse(upstream(f'balance = "{balance}"',
                            '{ address = "127.0.0.1:3000", slow_start = "30s" }, '
                            '{ address = "127.0.0.1:3001" }'))
    assert [s.slow_start for s in config.upstreams["app"].servers] == [30.0, 0.0]


@pytest.mark.parametrize("balance, extra", [
    ("ip_hash", ""), ("hash", 'hash_key = "$request_uri"'), ("random", ""),
])
def test_slow_start_with_hash_ip_hash_or_random_is_an_error(balance, extra):
    text = upstream(f'balance = "{balance}"\n{extra}',
                    '{ address = "127.0.0.1:3000" }, '
                    '{ address = "127.0.0.1:3001", slow_start = "10s" }')
    assert errors_of(text) == [
        f'upstreams.app.servers[1].slow_start: not allowed with balance = "{balance}"'
    ]


def test_slow_start_zero_is_fine_with_every_method():
    config = parse(upstream('balance = "ip_hash"',
                            '{ address = "127.0.0.1:3000", slow_start = "0s" }'))
    assert config.upstreams["app"].servers[0].slow_start == 0.0
