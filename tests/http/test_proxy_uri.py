"""The request-target sent upstream: nginx's proxy_pass URI rules, as transcripts.

Each row: the location, the proxy_pass URI part (None = absent), the request-target
as the client sent it, the normalised path and args the server protocol derived from
it, and the request-target nginx sends upstream.
"""
from __future__ import annotations

from typing import Optional

import pytest

from gateway.config.model import LocationSettings, ProxyPass
from gateway.http.routing import escape_uri, request_path_and_query, upstream_uri


def location(path: str, uri: Optional[str]) -> tuple[ProxyPass, LocationSettings]:
    modifier, _, pattern = path.partition(" ")
    if modifier not in ("=", "^~", "~", "~*"):
        modifier, pattern = "", path
    proxy_pass = ProxyPass("http", "u", uri, "http://u" + (uri or ""))
    return proxy_pass, LocationSettings(
        path=path, modifier=modifier, pattern=pattern, proxy_pass=proxy_pass
    )


@pytest.mark.parametrize(
    "loc, uri, target, path, args, expected",
    [
        # -- no URI part: the request-target unchanged, not normalised -------------
        ("/app/", None, "/app/x?y=1", "/app/x", "y=1", "/app/x?y=1"),
        ("/", None, "/a//b/../c?q", "/a/c", "q", "/a//b/../c?q"),
        ("/", None, "/caf%C3%A9?x=%20", "/caf\u00e9", "x=%20", "/caf%C3%A9?x=%20"),
        ("/", None, "/?", "/", "", "/?"),
        # absolute-form: only path and query
        ("/", None, "http://h.test:8080/p/q?x=1", "/p/q", "x=1", "/p/q?x=1"),
        ("/", None, "http://h.test", "/", "", "/"),
        ("/", None, "http://h.test?x=1", "/", "x=1", "/?x=1"),
        ("/", None, "https://h.test/", "/", "", "/"),
        # -- URI part replaces the matched prefix ------------------------------------
        ("/app/", "/", "/app/x?y=1", "/app/x", "y=1", "/x?y=1"),
        ("/app/", "/", "/app/", "/app/", "", "/"),
        ("/app", "/v1", "/app/x", "/app/x", "", "/v1/x"),
        ("/app", "/v1", "/app", "/app", "", "/v1"),
        ("/app", "/v1", "/application", "/application", "", "/v1lication"),
        ("/app/", "/v1/", "/app/x/y", "/app/x/y", "", "/v1/x/y"),
        # the missing slash is taken literally, as nginx does
        ("/app/", "/v1", "/app/x", "/app/x", "", "/v1x"),
        ("/", "/v1/", "/x", "/x", "", "/v1/x"),
        ("^~ /static/", "/files/", "/static/a.css", "/static/a.css", "", "/files/a.css"),
        # exact locations: the whole path is replaced
        ("= /exact", "/other", "/exact", "/exact", "", "/other"),
        ("= /exact", "/other", "/exact?a=b", "/exact", "a=b", "/other?a=b"),
        ("= /exact/", "/", "/exact/", "/exact/", "", "/"),
        # args are passed as received; "?" only when there are args
        ("/app/", "/", "/app/x?", "/app/x", "", "/x"),
        ("/app/", "/", "/app/x?a=%20&b=+", "/app/x", "a=%20&b=+", "/x?a=%20&b=+"),
        # normalisation has merged slashes and resolved dots before replacement
        ("/app/", "/", "/app//x//y", "/app/x/y", "", "/x/y"),
        ("/app/", "/v2/", "/app/a/../b", "/app/b", "", "/v2/b"),
        ("/app/", "/", "//app///x", "/app/x", "", "/x"),
        # -- quoted requests are re-escaped (ngx_escape_uri, NGX_ESCAPE_URI) ---------
        ("/app/", "/", "/app/a%20b", "/app/a b", "", "/a%20b"),
        ("/app/", "/", "/app/caf%C3%A9", "/app/caf\u00e9", "", "/caf%C3%A9"),
        ("/app/", "/", "/app/caf%c3%a9", "/app/caf\u00e9", "", "/caf%C3%A9"),   # upper hex
        ("/app/", "/", "/app/%3F%23%25", "/app/?#%", "", "/%3F%23%25"),
        ("/app/", "/", "/app/a%2Fb", "/app/a/b", "", "/a/b"),      # %2F is not kept
        ("/app/", "/", "/app/%41%42", "/app/AB", "", "/AB"),       # unreserved decoded
        ("/app/", "/", "/app/%22%3C%3E%5C%5E%60%7B%7C%7D", '/app/"<>\\^`{|}', "",
         "/%22%3C%3E%5C%5E%60%7B%7C%7D"),
        ("/app/", "/", "/app/%21%24%26%27%28%29%2A%2B%2C%3B%3D%3A%40%7E",
         "/app/!$&'()*+,;=:@~", "", "/!$&'()*+,;=:@~"),
        ("/app/", "/", "/app/%09%7F", "/app/\t\x7f", "", "/%09%7F"),
        ("/app/", "/", "/app/a%20b?q=%20", "/app/a b", "q=%20", "/a%20b?q=%20"),
        # an undecodable byte (kept as a surrogate by the decoder) round-trips
        ("/app/", "/", "/app/%FF", "/app/\udcff", "", "/%FF"),
        # absolute-form with a quoted path
        ("/app/", "/", "http://h.test/app/a%20b", "/app/a b", "", "/a%20b"),
        # -- unquoted requests are copied: nothing to escape, raw bytes stay raw -----
        ("/app/", "/", "/app/a+b;c=d", "/app/a+b;c=d", "", "/a+b;c=d"),
        ("/app/", "/", "/app/caf\u00e9", "/app/caf\u00e9", "", "/caf\u00e9"),
        # "%" only in the query does not make the path quoted
        ("/app/", "/", "/app/caf\u00e9?x=%41", "/app/caf\u00e9", "x=%41", "/caf\u00e9?x=%41"),
    ],
)
def test_upstream_uri(loc, uri, target, path, args, expected) -> None:
    proxy_pass, settings = location(loc, uri)
    assert upstream_uri(proxy_pass, settings, target, path, args) == expected


def test_regex_location_with_uri_part_prepends_it() -> None:
    """nginx refuses a URI part in a regex location; if one gets here nothing is
    stripped (loc_len 0)."""
    proxy_pass, settings = location("~ ^/app", "/v1")
    assert upstream_uri(proxy_pass, settings, "/app/x", "/app/x", "") == "/v1/app/x"


def test_regex_location_without_uri_part_passes_target() -> None:
    proxy_pass, settings = location("~* \\.php$", None)
    assert upstream_uri(proxy_pass, settings, "/A.PHP?x", "/A.PHP", "x") == "/A.PHP?x"


@pytest.mark.parametrize(
    "decoded, escaped",
    [
        ("/plain/path-_.~", "/plain/path-_.~"),
        (" ", "%20"),
        ("\x00\x1f", "%00%1F"),
        ("\u00e9", "%C3%A9"),
        ("\u2603", "%E2%98%83"),
        ("a?b#c%d", "a%3Fb%23c%25d"),
        ("[]", "[]"),
    ],
)
def test_escape_uri_table(decoded: str, escaped: str) -> None:
    """The NGX_ESCAPE_URI set, byte by byte (upper-case hex)."""
    assert escape_uri(decoded) == escaped


@pytest.mark.parametrize(
    "target, expected",
    [
        ("/a?b", "/a?b"),
        ("*", "*"),
        ("http://h/a?b", "/a?b"),
        ("http://user@h:1/a", "/a"),
        ("http://h", "/"),
        ("http://h?q", "/?q"),
        ("HTTP://h/x", "/x"),
        ("http://h#frag", "/"),
    ],
)
def test_request_path_and_query(target: str, expected: str) -> None:
    assert request_path_and_query(target) == expected
