"""Host validation: a port of nginx's ``ngx_http_validate_host``.

This module owns turning the authority a client sent (Host header or the host of an
absolute-form request target) into the name routing matches: lower-cased, port and
one trailing dot removed, IPv6 literals kept with their brackets. Anything nginx
refuses (``..``, a path separator, control characters, space, NUL, nothing left)
is refused here with ``None``; the caller answers 400. Matching the name against
``server_name`` is routing's business.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

__all__ = ["validate_host"]

_USUAL, _LITERAL, _REST = 0, 1, 2


# A pure function of a value most clients repeat on every request: the byte-by-byte
# scan below costs about twenty times a cache hit. Bounded, so odd hosts cannot grow it.
@lru_cache(maxsize=1024)
def validate_host(raw: bytes) -> Optional[str]:
    """The validated host of ``raw`` (a Host header value or a request-line host), or
    ``None`` when nginx would answer 400 ("client sent invalid host header")."""
    state = _USUAL
    length = len(raw)
    host_len = length
    dot_pos = -2
    for i, ch in enumerate(raw):
        if ch == 0x2E:  # "."
            if dot_pos == i - 1:
                return None
            dot_pos = i
        elif ch == 0x3A:  # ":"
            if state == _USUAL:
                host_len = i
                state = _REST
        elif ch == 0x5B:  # "["
            if i == 0:
                state = _LITERAL
        elif ch == 0x5D:  # "]"
            if state == _LITERAL:
                host_len = i + 1
                state = _REST
        elif ch <= 0x20 or ch == 0x7F or ch == 0x2F or ch == 0x5C:
            # NUL, controls, space, DEL, and the path separators "/" and "\"
            return None
    if dot_pos == host_len - 1:
        host_len -= 1
    if host_len <= 0:
        return None
    return raw[:host_len].lower().decode("latin-1")
