"""``[upstreams.NAME].health_check``: every key loads as written, the forms of
``status``, keys that do not fit the chosen ``type``, and the ``grpc`` keys."""
import tomllib

import pytest

from gateway.config import ConfigError, parse_config
from gateway.config.model import HealthCheckSettings

MINIMAL = """
[[servers]]
listen = ["tcp:8080"]
locations = [{ path = "/", return = { status = 200 } }]
"""


def with_check(check: str) -> str:
    return f"""
[upstreams.app]
servers = [{{ address = "127.0.0.1:3000" }}, {{ address = "127.0.0.1:3001", backup = true }}]
health_check = {{ {check} }}
""" + MINIMAL


def health_check(check: str) -> HealthCheckSettings:
    config = parse_config(tomllib.loads(with_check(check)), "/srv/gw/site.toml")
    return config.upstreams["app"].health_check


def errors_of(check: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(with_check(check)), "/srv/gw/site.toml")
    return caught.value.errors


def test_an_empty_table_gets_every_default_of_config_md():
    assert health_check("") == HealthCheckSettings(
        type="http", uri="/", grpc_service="", interval=5.0, timeout=2.0, fails=1,
        passes=1, status=((200, 399),), body=None, headers=())


def test_no_table_means_no_checks():
    config = parse_config(tomllib.loads("""
[upstreams.app]
servers = [{ address = "127.0.0.1:3000" }]
""" + MINIMAL), "/srv/gw/site.toml")
    assert config.upstreams["app"].health_check is None


def test_every_http_key_loads_as_written():
    assert health_check(
        'type = "http", uri = "/health?deep=1", interval = "100ms", timeout = "1s", '
        'fails = 3, passes = 2, status = ["200", "301-303"], body = "READY", '
        'headers = { Host = "app.example", X-Probe = "yes" }'
    ) == HealthCheckSettings(
        type="http", uri="/health?deep=1", interval=0.1, timeout=1.0, fails=3,
        passes=2, status=((200, 200), (301, 303)), body="READY",
        headers=(("Host", "app.example"), ("X-Probe", "yes")))


@pytest.mark.parametrize("status, ranges", [
    ('"200"', ((200, 200),)),
    ("204", ((204, 204),)),
    ('"200-399"', ((200, 399),)),
    ('[200, "204", "300-308"]', ((200, 200), (204, 204), (300, 308))),
])
def test_status_is_a_code_a_range_or_a_list_of_them(status, ranges):
    assert health_check(f"status = {status}").status == ranges


def test_tcp_takes_the_timing_keys():
    assert health_check('type = "tcp", interval = "2s", timeout = "500ms", fails = 2') == (
        HealthCheckSettings(type="tcp", interval=2.0, timeout=0.5, fails=2))


def test_http_only_keys_with_tcp_are_errors_at_their_paths():
    assert errors_of('type = "tcp", uri = "/x", status = "200", body = "ok", '
                     'headers = { X-A = "1" }') == [
        f'upstreams.app.health_check.{key}: only allowed with type = "http"'
        for key in ("uri", "status", "body", "headers")
    ]


def test_grpc_service_without_type_grpc_is_an_error():
    assert errors_of('grpc_service = "helloworld.Greeter"') == [
        'upstreams.app.health_check.grpc_service: only allowed with type = "grpc"']


def test_type_grpc_reads_its_service_and_unimplemented_policy():
    """``type = "grpc"``: ``grpc_service`` asked about, ``grpc_unimplemented`` (what a
    peer without a health service counts as; healthy by default)."""
    settings = health_check('type = "grpc", grpc_service = "helloworld.Greeter"')
    assert (settings.type, settings.grpc_service, settings.grpc_unimplemented) == (
        "grpc", "helloworld.Greeter", "healthy")
    settings = health_check('type = "grpc", grpc_unimplemented = "unhealthy"')
    assert settings.grpc_unimplemented == "unhealthy"
    assert errors_of('type = "grpc", grpc_unimplemented = "maybe"') == [
        "upstreams.app.health_check.grpc_unimplemented: must be one of \"healthy\", "
        "\"unhealthy\", got \"maybe\""]
    assert errors_of('grpc_unimplemented = "healthy"') == [
        'upstreams.app.health_check.grpc_unimplemented: only allowed with type = "grpc"']


def test_type_grpc_with_http_keys_is_an_error():
    assert errors_of('type = "grpc", uri = "/health"') == [
        'upstreams.app.health_check.uri: only allowed with type = "http"']


def test_a_bad_type_reports_only_the_type():
    assert errors_of('type = "udp", uri = "/health"') == [
        'upstreams.app.health_check.type: must be one of "http", "grpc", "tcp", got "udp"']


def test_unknown_keys_get_a_suggestion():
    assert errors_of('intervall = "1s"') == [
        'upstreams.app.health_check.intervall: unknown key (did you mean "interval"?)']
