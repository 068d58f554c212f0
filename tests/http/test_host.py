"""Host validation follows nginx's ngx_http_validate_host."""
import pytest

from gateway.http.host import validate_host


@pytest.mark.parametrize("raw, host", [
    (b"example.com", "example.com"),
    (b"Example.COM:8080", "example.com"),
    (b"example.com.", "example.com"),
    (b"example.com.:80", "example.com"),
    (b"[::1]:8080", "[::1]"),
    (b"[::1]", "[::1]"),
    (b"127.0.0.1:80", "127.0.0.1"),
    (b"a:b:c", "a"),
    (b"xn--bcher-kva.example", "xn--bcher-kva.example"),
])
def test_valid_hosts_are_lowercased_without_port_and_trailing_dot(raw, host):
    assert validate_host(raw) == host


@pytest.mark.parametrize("raw", [
    b"", b".", b":80", b"a..b", b"a/b", b"a\\b", b"a b", b"a\x00b", b"a\x01b",
    b"a\x7fb", b"a:1..2", b"..",
])
def test_invalid_hosts_are_refused(raw):
    assert validate_host(raw) is None
