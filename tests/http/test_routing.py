"""Server and location selection: nginx's precedence, as transcripts.

Each table row is one request: what arrives and what nginx would pick. The servers and
locations are built straight from the config model.
"""
from __future__ import annotations

import re
from typing import Optional

import pytest

from gateway.config.model import LocationSettings, ProxyPass, ServerSettings
from gateway.http.routing import LocationMatch, LocationMatcher, ServerSelector


# -- helpers ------------------------------------------------------------------------


def server(index: int, *names: str, default: bool = False) -> ServerSettings:
    return ServerSettings(
        index=index, listen=("tcp:8080",), locations=(), server_name=names,
        default=default,
    )


def location(path: str, handler: str = "proxy", uri: Optional[str] = None) -> LocationSettings:
    """A location as the loader builds it from ``path = "…"``; ``handler`` is
    ``"proxy"`` (proxy_pass), ``"grpc"`` (grpc_pass) or ``"return"``."""
    modifier, _, pattern = path.partition(" ")
    if modifier not in ("=", "^~", "~", "~*"):
        modifier, pattern = "", path
    regex = None
    if modifier in ("~", "~*"):
        regex = re.compile(pattern, re.IGNORECASE if modifier == "~*" else 0)
    kwargs = {}
    if handler == "proxy":
        kwargs["proxy_pass"] = ProxyPass("http", "u", uri, "http://u" + (uri or ""))
    elif handler == "grpc":
        kwargs["grpc_pass"] = "grpc://u"
    else:
        from gateway.config.model import ReturnAction
        kwargs["return_"] = ReturnAction(200, body="ok")
    return LocationSettings(path=path, modifier=modifier, pattern=pattern, regex=regex, **kwargs)


def picked(matcher: LocationMatcher, path: str) -> Optional[str]:
    """The ``path`` text of the chosen location, ``"301 <url>"`` for a redirect, or
    None for no match."""
    result = matcher.match(path)
    assert isinstance(result, LocationMatch)
    if result.redirect is not None:
        return f"301 {result.redirect}"
    return None if result.location is None else result.location.path


# -- server_name --------------------------------------------------------------------

# One listener, servers in file order (index is the file position).
SERVERS = (
    server(0, "first.test"),
    server(1, "example.com", "www.example.com"),
    server(2, "*.example.com"),
    server(3, "*.api.example.com"),
    server(4, ".example.org"),
    server(5, "www.example.*"),
    server(6, "www.*"),
    server(7, "~^app\\d+\\.example\\.net$", "~^app1\\."),
    server(8, "~^(?P<sub>[a-z]+)\\.example\\.net$"),
    server(9, "default.test", default=True),
    server(10, "*.example.net", "mail.*"),
    server(11, "~^API\\d+\\.example\\.io$"),
    server(12, "Mixed.Case.Test"),
)


@pytest.mark.parametrize(
    "host, index",
    [
        # exact names
        ("first.test", 0),
        ("example.com", 1),
        ("www.example.com", 1),              # exact beats *.example.com and www.example.*
        ("mixed.case.test", 12),             # names are compared lower-cased
        # leading wildcards: any depth, longest wins, the bare domain is not matched
        ("a.example.com", 2),
        ("a.b.example.com", 2),
        ("api.example.com", 2),              # *.api.example.com needs one more label
        ("v1.api.example.com", 3),           # longest leading wildcard
        ("x.v1.api.example.com", 3),
        ("notexample.com", 9),               # label boundary: falls to the default
        # ".example.org" matches the domain and its subdomains
        ("example.org", 4),
        ("www.example.org", 4),              # leading wildcard beats www.example.*
        ("a.b.example.org", 4),
        # trailing wildcards: longest wins, the host must go on after the dot
        ("www.example.net", 10),             # leading wildcard *.example.net first
        ("www.example.de", 5),
        ("www.example.co.uk", 5),
        ("www.other.de", 6),
        ("www", 9),                          # "www.*" needs a dot and more
        ("www.example", 6),                  # "www.example.*" needs more after it
        ("mail.example.de", 10),
        # regular expressions in file order, only after all wildcards
        ("app1.example.net", 10),            # *.example.net is a wildcard: it wins
        ("app1.other", 7),                   # second regex of server 7
        ("app2.other", 9),
        ("api7.example.io", 11),             # upper case in the regex: caseless
        # no match → the default server, not the first
        ("unknown.test", 9),
        ("", 9),                             # HTTP/1.0 without Host
    ],
)
def test_server_name_precedence(host: str, index: int) -> None:
    """exact > longest *.wildcard > longest wildcard.* > first regex > default."""
    assert ServerSelector(SERVERS).select(host).index == index


@pytest.mark.parametrize(
    "host, index",
    [
        ("x.example.net", 1),                # regex of server 1 is first in file order
        ("app.example.net", 0),              # both regexes match: file order decides
        ("b.example.net", 1),
        ("c.example.net", 1),
        ("c.other", 2),                      # exact name before any regex
        ("d.other", 0),                      # no match: the first server
    ],
)
def test_regex_server_names_are_tried_in_file_order(host: str, index: int) -> None:
    """The first matching regex in file order wins, across servers."""
    servers = (
        server(0, "~^app\\."),
        server(1, "~^[ab]", "~\\.example\\.net$"),
        server(2, "c.other"),
    )
    assert ServerSelector(servers).select(host).index == index


def test_default_is_first_server_without_default_flag() -> None:
    """Without ``default = true`` the first server on the listener is the default."""
    selector = ServerSelector((server(0, "a.test"), server(1, "b.test")))
    assert selector.default.index == 0
    assert selector.select("c.test").index == 0
    assert selector.select("b.test").index == 1


def test_default_flag_wins_over_file_order() -> None:
    selector = ServerSelector((server(0, "a.test"), server(1, "b.test", default=True)))
    assert selector.default.index == 1
    assert selector.select("").index == 1
    assert selector.select("zzz").index == 1


def test_empty_server_name_catches_hostless_requests() -> None:
    """``server_name ""`` (explicit) takes requests without Host, as in nginx;
    regexes are never tried on an empty host."""
    selector = ServerSelector((
        server(0, "~.*"),
        server(1, "a.test", default=True),
        server(2, ""),
    ))
    assert selector.select("").index == 2
    assert selector.select("anything").index == 0
    no_empty = ServerSelector((server(0, "~.*"), server(1, "a.test", default=True)))
    assert no_empty.select("").index == 1


def test_conflicting_names_keep_the_first_server() -> None:
    """nginx warns "conflicting server name … ignored": the earlier server keeps it."""
    selector = ServerSelector((
        server(0, "dup.test", "*.dup.test", "dup.*"),
        server(1, "dup.test", "*.dup.test", "dup.*", ".dup.test"),
    ))
    assert selector.select("dup.test").index == 0
    assert selector.select("a.dup.test").index == 0
    assert selector.select("dup.org").index == 0


def test_dot_form_bare_name_conflicts_with_exact_name() -> None:
    """".example.com" claims "example.com" itself: the earlier of the two wins."""
    first_dot = ServerSelector((server(0, ".example.com"), server(1, "example.com")))
    assert first_dot.select("example.com").index == 0
    first_exact = ServerSelector((server(0, "example.com"), server(1, ".example.com")))
    assert first_exact.select("example.com").index == 0
    assert first_exact.select("www.example.com").index == 1


def test_regex_without_upper_case_is_case_sensitive() -> None:
    """nginx compiles a server_name regex caselessly only if it has an upper-case
    letter; hosts arrive lower-cased, so a lower-case regex sees lower-case."""
    selector = ServerSelector((server(0, "x.test"), server(1, "~^api\\.")))
    assert selector.select("api.test").index == 1
    assert selector.select("API.test").index == 0


def test_no_servers_is_an_error() -> None:
    with pytest.raises(ValueError):
        ServerSelector(())


# -- locations ----------------------------------------------------------------------


LOCATIONS = (
    location("/"),
    location("/app/"),
    location("/app/static/"),
    location("= /app/exact"),
    location("^~ /assets/"),
    location("~ \\.php$"),
    location("~* \\.(png|jpg)$"),
    location("~ ^/app/static/.*\\.css$"),
    location("/app/static/img/"),
    location("= /"),
    location("^~ /assets/deep/"),
    location("/docs/", handler="return"),
)


@pytest.mark.parametrize(
    "path, chosen",
    [
        # exact wins at once, over prefixes and regexes
        ("/", "= /"),
        ("/app/exact", "= /app/exact"),
        ("/app/exact/", "/app/"),                # exact only matches exactly
        ("/app/exactly", "/app/"),
        # longest prefix when no regex matches
        ("/index.html", "/"),
        ("/app/x", "/app/"),
        ("/app/static/x.js", "/app/static/"),
        ("/app/static/img/a.svg", "/app/static/img/"),
        # regexes beat a plain prefix, in file order
        ("/index.php", "~ \\.php$"),
        ("/app/static/x.css", "~ ^/app/static/.*\\.css$"),
        ("/app/static/img/a.png", "~* \\.(png|jpg)$"),   # regex beats longest prefix
        ("/a.JPG", "~* \\.(png|jpg)$"),           # ~* is case-insensitive
        ("/a.PHP", "/"),                          # ~ is case-sensitive
        ("/x.png.php", "~ \\.php$"),
        # ^~ stops the regex search, longest ^~ wins
        ("/assets/a.png", "^~ /assets/"),
        ("/assets/a.php", "^~ /assets/"),
        ("/assets/deep/a.php", "^~ /assets/deep/"),
        ("/assetsx/a.php", "~ \\.php$"),
        # prefixes are case-sensitive
        ("/APP/x", "/"),
        # a return location: no auto-redirect
        ("/docs", "/"),
        ("/docs/x", "/docs/"),
    ],
)
def test_location_precedence(path: str, chosen: str) -> None:
    assert picked(LocationMatcher(LOCATIONS), path) == chosen


@pytest.mark.parametrize(
    "locations, path, chosen",
    [
        # = vs prefix of the same name
        (["/a", "= /a"], "/a", "= /a"),
        (["/a", "= /a"], "/a/b", "/a"),
        # = vs regex
        (["~ ^/a$", "= /a"], "/a", "= /a"),
        # = vs ^~
        (["^~ /a", "= /a"], "/a", "= /a"),
        # prefix vs regex: the regex wins even when the prefix is longer
        (["/a/b/c/", "~ /a"], "/a/b/c/d", "~ /a"),
        # a prefix equal to the path still lets regexes run (nginx NGX_AGAIN)
        (["/a", "~ ^/a$"], "/a", "~ ^/a$"),
        # ^~ vs regex: ^~ wins only when it is the longest prefix
        (["^~ /a/", "~ /a/b"], "/a/b", "^~ /a/"),
        (["^~ /a/", "/a/b/", "~ /a/b"], "/a/b/c", "~ /a/b"),
        (["/a/", "^~ /a/b/", "~ /a/b"], "/a/b/c", "^~ /a/b/"),
        # ^~ vs prefix: longest wins whatever the modifier
        (["^~ /a/", "/a/b/"], "/a/b/c", "/a/b/"),
        (["/a/", "^~ /a/b/"], "/a/b/c", "^~ /a/b/"),
        # ~ vs ~*: file order
        (["~* ^/A", "~ ^/a"], "/a", "~* ^/A"),
        (["~ ^/a", "~* ^/A"], "/a", "~ ^/a"),
        (["~ ^/a", "~* ^/A"], "/A", "~* ^/A"),
        # regexes search anywhere (unanchored) in the decoded path
        (["/", "~ b/c"], "/a/b/c", "~ b/c"),
        (["/", "~ caf\u00e9"], "/menu/caf\u00e9", "~ caf\u00e9"),
        # no location matches: nothing
        (["/a/"], "/b", None),
        (["= /a"], "/a/b", None),
        (["~ ^/x"], "/y", None),
        ([], "/", None),
        # the first of two equal prefixes (the loader rejects duplicates)
        (["/a", "^~ /a"], "/a/x", "/a"),
    ],
)
def test_modifier_pairs(locations: list[str], path: str, chosen: Optional[str]) -> None:
    matcher = LocationMatcher([location(text) for text in locations])
    assert picked(matcher, path) == chosen


def test_no_match_is_location_none() -> None:
    result = LocationMatcher([location("/a/")]).match("/b")
    assert result == LocationMatch(None, None)


def test_uncompiled_regex_is_compiled_from_pattern() -> None:
    """A LocationSettings without ``regex`` still matches (compiled once here)."""
    bare = LocationSettings(path="~* ^/X", modifier="~*", pattern="^/X",
                            proxy_pass=ProxyPass("http", "u"))
    assert LocationMatcher([bare]).match("/x/y").location is bare


def test_unknown_modifier_is_an_error() -> None:
    bad = LocationSettings(path="@named", modifier="@", pattern="named")
    with pytest.raises(ValueError):
        LocationMatcher([bad])


# -- auto-redirect ------------------------------------------------------------------


@pytest.mark.parametrize(
    "locations, path, chosen",
    [
        # the basic case: proxy_pass location ending in "/", path without it
        (["/app/"], "/app", "301 /app/"),
        (["/", "/app/"], "/app", "301 /app/"),
        (["/app/"], "/app/", "/app/"),
        (["/app/"], "/ap", None),
        (["/app/"], "/app/x", "/app/"),
        # grpc_pass does it too; a return location does not
        ([("/svc/", "grpc")], "/svc", "301 /svc/"),
        ([("/", "proxy"), ("/docs/", "return")], "/docs", "/"),
        # ^~ and = locations ending in "/" redirect as well (nginx's tree node flag)
        (["^~ /app/"], "/app", "301 /app/"),
        (["= /app/"], "/app", "301 /app/"),
        (["= /app/"], "/app/", "= /app/"),
        # an exact location for the slash-less path takes precedence
        (["/app/", "= /app"], "/app", "= /app"),
        (["= /app", "/app/"], "/app", "= /app"),
        # so does a prefix location equal to the path (then regexes run as usual)
        (["/app/", "/app"], "/app", "/app"),
        (["/app/", "/app", "~ ^/app$"], "/app", "~ ^/app$"),
        # a shorter prefix does not: the redirect wins
        (["/ap", "/app/"], "/app", "301 /app/"),
        (["^~ /ap", "/app/"], "/app", "301 /app/"),
        # regexes are not consulted before the redirect, even one matching exactly
        (["/app/", "~ ^/app$"], "/app", "301 /app/"),
        (["/", "/app/", "~* app"], "/app", "301 /app/"),
        # only exactly one missing slash
        (["/app/"], "/ap", None),
        (["/a/b/"], "/a/b", "301 /a/b/"),
        (["/a/b/"], "/a", None),
        # a location not ending in "/" never redirects
        (["/app"], "/ap", None),
        # a regex location never redirects
        (["~ ^/app/$"], "/app", None),
    ],
)
def test_auto_redirect(locations, path: str, chosen: Optional[str]) -> None:
    built = [
        location(item) if isinstance(item, str) else location(item[0], item[1])
        for item in locations
    ]
    assert picked(LocationMatcher(built), path) == chosen


def test_auto_redirect_names_the_redirecting_location() -> None:
    """The match carries the location that asked for the redirect (nginx applies its
    configuration to the 301), and the redirect target has no args."""
    app = location("/app/")
    result = LocationMatcher([location("/"), app]).match("/app")
    assert result == LocationMatch(app, "/app/")


def test_exact_redirect_preferred_over_prefix_of_same_name() -> None:
    """"= /a/" and "/a/" are one nginx tree node; its redirect uses the exact one."""
    prefix, exact = location("/a/"), location("= /a/")
    assert LocationMatcher([prefix, exact]).match("/a").location is exact
    assert LocationMatcher([exact, prefix]).match("/a").location is exact


def test_match_returns_shared_objects() -> None:
    """Matching allocates nothing: the same LocationMatch comes back each time."""
    matcher = LocationMatcher([location("/"), location("~ x$")])
    assert matcher.match("/a") is matcher.match("/b")
    assert matcher.match("/ax") is matcher.match("/bx")
