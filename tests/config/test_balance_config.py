"""``balance`` and its companions (``hash_key``, ``consistent``, ``two``) in
``[upstreams.NAME]``: every method loads, the companions are checked against the
method, and ``backup`` is refused where nginx refuses it (ip_hash, hash, random)."""
import tomllib

import pytest

from gateway.config import ConfigError, parse_config

MINIMAL = """
[[servers]]
listen = ["tcp:8080"]
locations = [{ path = "/", proxy_pass = "http://app" }]
"""


def upstream(fields: str, servers: str = '{ address = "127.0.0.1:3000" }, '
                                         '{ address = "127.0.0.1:3001" }') -> str:
    return f"""
[upstreams.app]
servers = [{servers}]
{fields}
""" + MINIMAL


def load(text: str):
    return parse_config(tomllib.loads(text), "/srv/gw/site.toml").upstreams["app"]


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(text), "/srv/gw/site.toml")
    return caught.value.errors


@pytest.mark.parametrize("fields, expected", [
    ('balance = "least_conn"', ("least_conn", None, False, False)),
    ('balance = "ip_hash"', ("ip_hash", None, False, False)),
    ('balance = "hash"\nhash_key = "$request_uri"', ("hash", "$request_uri", False, False)),
    ('balance = "hash"\nhash_key = "$arg_user$cookie_s"\nconsistent = true',
     ("hash", "$arg_user$cookie_s", True, False)),
    ('balance = "random"', ("random", None, False, False)),
    ('balance = "random"\ntwo = true', ("random", None, False, True)),
], ids=["least_conn", "ip_hash", "hash", "hash_consistent", "random", "random_two"])
def test_every_balancing_method_loads_with_its_settings(fields, expected):
    """Each method of CONFIG.md is accepted (no "not supported yet") and keeps its
    companions exactly as written."""
    app = load(upstream(fields))
    assert (app.balance, app.hash_key, app.consistent, app.two) == expected


def test_backup_is_allowed_with_least_conn():
    """least_conn keeps a backup tier, as nginx's least_conn does."""
    app = load(upstream('balance = "least_conn"', servers=(
        '{ address = "127.0.0.1:3000" }, { address = "127.0.0.1:3001", backup = true }')))
    assert [s.backup for s in app.servers] == [False, True]


@pytest.mark.parametrize("fields, method", [
    ('balance = "ip_hash"', "ip_hash"),
    ('balance = "hash"\nhash_key = "$request_uri"', "hash"),
    ('balance = "hash"\nhash_key = "$request_uri"\nconsistent = true', "hash"),
    ('balance = "random"', "random"),
    ('balance = "random"\ntwo = true', "random"),
], ids=["ip_hash", "hash", "hash_consistent", "random", "random_two"])
def test_backup_is_an_error_with_ip_hash_hash_and_random(fields, method):
    """nginx refuses ``backup`` with these methods ("invalid parameter"); so do we, at
    the server's TOML path, and nothing else is reported."""
    text = upstream(fields, servers=(
        '{ address = "127.0.0.1:3000" }, { address = "127.0.0.1:3001", backup = true }'))
    assert errors_of(text) == [
        f'upstreams.app.servers[1].backup: not allowed with balance = "{method}"']


@pytest.mark.parametrize("fields, expected", [
    ('balance = "hash"', ['upstreams.app.hash_key: required with balance = "hash"']),
    ('balance = "hash"\nconsistent = true',
     ['upstreams.app.hash_key: required with balance = "hash"']),
    ('balance = "ip_hash"\nhash_key = "$remote_addr"',
     ['upstreams.app.hash_key: only allowed with balance = "hash"']),
    ('balance = "random"\nconsistent = true',
     ['upstreams.app.consistent: only allowed with balance = "hash"']),
    ('balance = "least_conn"\ntwo = true',
     ['upstreams.app.two: only allowed with balance = "random"']),
    ('balance = "hash"\nhash_key = "$request_uri"\ntwo = true',
     ['upstreams.app.two: only allowed with balance = "random"']),
    ('balance = "hash"\nhash_key = ""',
     ['upstreams.app.hash_key: must be a non-empty string, got ""']),
    ('balance = "hash"\nhash_key = "$nope"',
     ['upstreams.app.hash_key: unknown variable "$nope"']),
], ids=["hash_without_key", "consistent_without_key", "key_with_ip_hash",
        "consistent_with_random", "two_with_least_conn", "two_with_hash", "empty_key",
        "unknown_variable"])
def test_companion_keys_are_checked_against_the_method(fields, expected):
    assert errors_of(upstream(fields)) == expected


def test_switched_off_companions_are_accepted_with_any_method():
    """``consistent = false`` and ``two = false`` are the defaults: never an error."""
    app = load(upstream('balance = "least_conn"\nconsistent = false\ntwo = false'))
    assert (app.balance, app.consistent, app.two) == ("least_conn", False, False)


def test_a_group_of_backups_only_is_an_error():
    """nginx refuses an upstream without a primary server ("no servers in upstream");
    so does the loader, rather than the group failing to build when the gateway
    starts."""
    text = upstream("", servers='{ address = "127.0.0.1:3001", backup = true }')
    assert errors_of(text) == [
        "upstreams.app.servers: at least one server that is not a backup is required"]
