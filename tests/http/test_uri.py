"""Request-target normalisation as nginx's ngx_http_parse_complex_uri."""
import pytest

from gateway.http.uri import InvalidURI, normalize, split_target


@pytest.mark.parametrize("target, path, args", [
    ("/", "/", ""),
    ("/a/b?x=1&y", "/a/b", "x=1&y"),
    ("/a//b///c", "/a/b/c", ""),
    ("/a/./b/.", "/a/b/", ""),
    ("/a/b/../c", "/a/c", ""),
    ("/a/..", "/", ""),
    ("/a%20b", "/a b", ""),
    ("/a/%2e%2e/b", "/b", ""),
    ("/a%2Fb", "/a/b", ""),
    ("/a%3Fb?c", "/a?b", "c"),
    ("/caf%C3%A9", "/caf\u00e9", ""),
    ("/a#frag", "/a", ""),
    ("/a?b#frag", "/a", "b"),
    ("http://example.com/x?y", "/x", "y"),
    ("HTTP://example.com", "/", ""),
    ("https://example.com?q", "/", "q"),
])
def test_normalize(target, path, args):
    assert normalize(target) == (path, args)


@pytest.mark.parametrize("target", [
    "/..", "/a/../..", "/%2e%2e/", "/a%zz", "/a%4", "/a%00b", "*", "example.com:443",
    "ftp://example.com/", "http:///x", "http://user@example.com/",
])
def test_invalid_targets_raise(target):
    with pytest.raises(InvalidURI):
        normalize(target)


def test_split_target_returns_authority_of_absolute_form():
    assert split_target("http://Example.com:8080/a?b") == ("Example.com:8080", "/a?b")
    assert split_target("/a?b") == (None, "/a?b")


@pytest.mark.parametrize("target", [
    "/", "/a/b?x=1&y", "/a?b/../c", "/a?b//c", "/a?%zz", "/a?b#c", "/a#b?c", "/a.b/c.d",
    "/a/.b", "/a/b.", "/a//b", "/a/./b", "/a/../b", "/a%20b", "/a\x00b", "/a?\x00",
    "/?", "?a", "", "*", "http://a/b?c", "http://a/b/../c", "/caf\u00e9?q=\u00e9",
])
def test_normalize_fast_path_answers_as_the_complete_algorithm(target):
    """The shortcut for plain origin-form targets changes no answer: same result,
    or the same refusal."""
    from gateway.http.uri import _normalize_complex

    try:
        expected = _normalize_complex(target)
    except InvalidURI:
        with pytest.raises(InvalidURI):
            normalize(target)
    else:
        assert normalize(target) == expected
