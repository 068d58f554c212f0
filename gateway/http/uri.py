"""Request-target normalisation, as nginx's ``ngx_http_parse_complex_uri`` does it.

This module owns turning the request-target a client sent into ``$uri`` and
``$args``: the host of an absolute-form target is split off (Host validation is
``gateway.http.host``'s), the query is cut at the first ``?`` (a ``#`` fragment is
dropped), the path is percent-decoded, repeated slashes are merged, and ``.`` and
``..`` segments are resolved. A target nginx refuses raises :class:`InvalidURI` and
the server protocol answers 400. The raw target stays with the request as
``$request_uri``; this module never re-encodes.
"""
from __future__ import annotations

from typing import Optional

__all__ = ["InvalidURI", "normalize", "split_target"]

_HEX = {c: int(c, 16) for c in "0123456789abcdefABCDEF"}


class InvalidURI(ValueError):
    """The request-target cannot be normalised (nginx: "client sent invalid request")."""


def split_target(target: str) -> tuple[Optional[str], str]:
    """``(authority, rest)`` for an absolute-form ``http(s)://authority/rest`` target,
    ``(None, target)`` for origin-form. ``rest`` always starts with ``/`` or ``?``
    (``"/"`` when the absolute form has no path)."""
    if target[:1] == "/":
        return None, target
    scheme, sep, remainder = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise InvalidURI(target)
    end = len(remainder)
    for stop in "/?#":
        i = remainder.find(stop)
        if 0 <= i < end:
            end = i
    authority, rest = remainder[:end], remainder[end:]
    if "@" in authority or not authority:
        raise InvalidURI(target)
    if not rest or rest[0] == "#":
        rest = "/"
    elif rest[0] == "?":
        rest = "/" + rest
    return authority, rest


def _unquote(path: str) -> str:
    parts = path.split("%")
    out = bytearray(parts[0].encode("latin-1"))
    for part in parts[1:]:
        hi = _HEX.get(part[:1])
        lo = _HEX.get(part[1:2])
        if hi is None or lo is None:
            raise InvalidURI(path)
        value = hi * 16 + lo
        if value == 0:
            raise InvalidURI(path)
        out.append(value)
        out += part[2:].encode("latin-1")
    return out.decode("utf-8", "surrogateescape")


def _resolve(path: str) -> str:
    segments = path[1:].split("/")
    out: list[str] = []
    trailing = False
    for segment in segments:
        trailing = False
        if segment == "" or segment == ".":
            trailing = True
        elif segment == "..":
            if not out:
                raise InvalidURI(path)
            out.pop()
            trailing = True
        else:
            out.append(segment)
    if not out:
        return "/"
    return "/" + "/".join(out) + ("/" if trailing else "")


def normalize(target: str) -> tuple[str, str]:
    """``(path, args)`` for a request-target, as nginx's ``$uri`` and ``$args``.

    >>> normalize("/a//b/./c/../d%20e?x=1")
    ('/a/b/d e', 'x=1')
    """
    # Fast path for the usual origin-form target: with none of the characters
    # _normalize_complex acts on, it would return ``path`` and ``args`` as split here.
    path, _, args = target.partition("?")
    if (path[:1] == "/" and "#" not in target and "%" not in path and "//" not in path
            and "/." not in path and "\x00" not in path):
        return path, args
    return _normalize_complex(target)


def _normalize_complex(target: str) -> tuple[str, str]:
    _, rest = split_target(target)
    path, _, args = rest.partition("?")
    if "#" in path:
        path = path.partition("#")[0]
        args = ""
    elif "#" in args:
        args = args.partition("#")[0]
    if "%" in path:
        path = _unquote(path)
    if "\x00" in path:
        raise InvalidURI(target)
    if "//" in path or "/." in path:
        path = _resolve(path)
    return path, args
