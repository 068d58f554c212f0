"""Header plans for proxying: what goes to the upstream, what comes back to the client.

Both plans are built once per location (at configuration load or reload) and hold
pre-encoded bytes for everything constant, so per request only templates with variables
are rendered.

Request side (:class:`RequestHeaderPlan`): the request line, then the gateway's default
headers (CONFIG.md: ``Host: $host``, ``X-Real-IP``, ``X-Forwarded-For``,
``X-Forwarded-Proto``, ``X-Forwarded-Host``, ``X-Request-ID``) as overridden by
``proxy_set_header`` (case-insensitive; ``""`` removes), then the client's headers minus
hop-by-hop ones, those named in its ``Connection`` header, ``Content-Length`` and
``Expect`` (the caller owns body framing and answers ``100-continue`` itself) and those
the plan sets; then ``Connection: close`` unless the upstream connection is kept alive.
As in nginx, a header whose value renders empty is not sent.

Response side (:class:`ResponseHeaderPlan`): drop hop-by-hop headers, nginx's default
hidden headers (``ngx_http_proxy_hide_headers``) unless ``proxy_pass_header`` lists them,
and ``proxy_hide_header`` names; then ``add_header`` values are appended (nginx's
``always``: the gateway's own error responses get them too).

Header lists are ``[(name, value)]`` of bytes, names in the case received.
"""
from __future__ import annotations

from typing import Iterable, Optional

from gateway.config.model import LocationSettings
from gateway.http.variables import Template, VariableContext, compile_template

__all__ = [
    "HOP_BY_HOP",
    "DEFAULT_REQUEST_HEADERS",
    "DEFAULT_HIDDEN_RESPONSE_HEADERS",
    "RequestHeaderPlan",
    "ResponseHeaderPlan",
    "connection_tokens",
    "to_bytes",
]

#: Never forwarded in either direction (RFC 9110 §7.6.1, plus the legacy ones).
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te",
    b"transfer-encoding", b"upgrade", b"trailer",
})

#: The gateway's request headers before ``proxy_set_header`` (CONFIG.md).
DEFAULT_REQUEST_HEADERS: tuple[tuple[str, str], ...] = (
    ("Host", "$host"),
    ("X-Real-IP", "$remote_addr"),
    ("X-Forwarded-For", "$proxy_add_x_forwarded_for"),
    ("X-Forwarded-Proto", "$scheme"),
    ("X-Forwarded-Host", "$host"),
    ("X-Request-ID", "$request_id"),
)

#: ``ngx_http_proxy_hide_headers``: not passed unless named in ``proxy_pass_header``.
DEFAULT_HIDDEN_RESPONSE_HEADERS = frozenset({
    b"date", b"server", b"x-pad", b"x-accel-expires", b"x-accel-redirect",
    b"x-accel-limit-rate", b"x-accel-buffering", b"x-accel-charset",
})

# Client request headers the plan never copies: framing is the caller's
# (body_framing_headers), and the gateway answers "Expect: 100-continue" itself.
_REQUEST_NOT_COPIED = HOP_BY_HOP | {b"content-length", b"expect"}
# Names proxy_set_header may not set: they would contradict the caller's framing.
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})

_CONNECTION_CLOSE = b"Connection: close\r\n"
_UNSAFE_VALUE_CHARS = str.maketrans({"\r": " ", "\n": " ", "\0": " "})


def to_bytes(value: str) -> bytes:
    """Encode a rendered value: latin-1 keeps wire bytes exact (variables decode them
    that way); text outside latin-1 (from the config file) goes as UTF-8."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def _header_value(value: str) -> bytes:
    # $uri is percent-decoded and may hold CR/LF: never let a variable split a header.
    if "\r" in value or "\n" in value or "\0" in value:
        value = value.translate(_UNSAFE_VALUE_CHARS)
    # to_bytes inlined: this runs for every rendered header of every request
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


# Nearly every upstream response says "Connection: keep-alive" or "close": the few
# values seen are remembered rather than parsed per response. Bounded, as clients
# choose the values of requests.
_TOKEN_CACHE_SIZE = 64
_token_cache: dict[bytes, tuple[bytes, ...]] = {}


def _tokens(value: bytes) -> tuple[bytes, ...]:
    """The lower-cased names listed in one ``Connection`` header value."""
    tokens = _token_cache.get(value)
    if tokens is None:
        stripped = (token.strip(b" \t").lower() for token in value.split(b","))
        tokens = tuple(token for token in stripped if token)
        if len(_token_cache) >= _TOKEN_CACHE_SIZE:
            _token_cache.clear()
        _token_cache[value] = tokens
    return tokens


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset:
    """Lower-cased header names listed in the ``Connection`` headers of ``headers``."""
    tokens: set = set()
    for key, value in headers:
        if key.lower() == b"connection":
            tokens.update(_tokens(value))
    return frozenset(tokens)


def _copy_headers(parts: list, headers: list, not_copied: frozenset) -> Optional[set]:
    """Append the lines of ``headers`` not named in ``not_copied`` to ``parts``.

    Returns the names listed in ``Connection`` headers that ``not_copied`` lacks, or
    None: Connection headers are rare, so they are parsed only when one is met (it is
    in ``not_copied`` as hop-by-hop), and names they add are left to the caller.
    """
    named = None
    for key, value in headers:
        lname = key.lower()
        if lname not in not_copied:
            parts += (key, b": ", value, b"\r\n")
        elif lname == b"connection":
            for token in _tokens(value):
                if token not in not_copied:
                    if named is None:
                        named = set()
                    named.add(token)
    return named


class _SetHeader:
    """One header the request plan sets: constant bytes or a template to render."""

    __slots__ = ("prefix", "render", "line", "host_fallback", "keeps_client_id")

    def __init__(self, name: str, template: Template, default: bool):
        lname = name.lower()
        self.prefix = name.encode("latin-1") + b": "
        self.render = template.renderer
        # an empty constant is not sent at all (nginx skips empty values)
        self.line: Optional[bytes] = None
        if template.is_constant:
            self.line = (self.prefix + _header_value(template.text) + b"\r\n"
                         if template.text else b"")
        # the default Host falls back to $proxy_host when $host is empty
        self.host_fallback = default and lname == "host"
        # the default X-Request-ID keeps a trusted client's own
        self.keeps_client_id = default and lname == "x-request-id"


class RequestHeaderPlan:
    """The request head sent to the upstream for one location.

    ``keepalive`` is whether the upstream connection is pooled (the upstream group's
    ``keepalive > 0``): without it ``Connection: close`` is sent, nginx's default.
    """

    def __init__(self, location: LocationSettings, *, keepalive: bool):
        entries: dict[bytes, tuple[str, str, bool]] = {}
        for name, value in DEFAULT_REQUEST_HEADERS:
            entries[name.lower().encode("latin-1")] = (name, value, True)
        for name, value in location.proxy_set_header:
            lname = name.lower().encode("latin-1")
            if lname in _FRAMING:
                continue
            entries[lname] = (name, value, False)   # in place: keeps the default's slot
        self._set = tuple(
            _SetHeader(name, compile_template(value), default)
            for name, value, default in entries.values() if value != ""
        )
        # Every name the plan handles hides the client's header, removed ones included.
        self._not_copied = _REQUEST_NOT_COPIED | frozenset(entries)
        self.keepalive = keepalive
        self._sets_connection = b"connection" in entries
        # nginx configurations say "proxy_set_header Upgrade $http_upgrade": that one
        # is sent instead of the automatic Upgrade, never both
        self._sets_upgrade = b"upgrade" in entries
        self._proxy_host = compile_template("$proxy_host")

    def build(self, exchange, ctx: VariableContext, method: str, uri: str,
              body_framing_headers: list, *, upgrade: Optional[bytes] = None) -> bytes:
        """The complete request head (request line, headers, the empty line).

        ``body_framing_headers`` are added as given (``Content-Length`` or
        ``Transfer-Encoding: chunked``). ``upgrade`` (the client's ``Upgrade`` value)
        asks for a tunnel: ``Upgrade`` and ``Connection: upgrade`` are sent instead of
        ``Connection: close``.
        """
        request = exchange.request
        trusted = ctx.trusted
        try:
            parts = [f"{method} {uri} HTTP/1.1\r\n".encode("latin-1")]
        except UnicodeEncodeError:
            parts = [to_bytes(method), b" ", to_bytes(uri), b" HTTP/1.1\r\n"]
        for entry in self._set:
            line = entry.line
            if line is not None:
                parts.append(line)
                continue
            if trusted and entry.keeps_client_id:
                client_id = request.header(b"x-request-id")
                if client_id:
                    parts += (entry.prefix, client_id, b"\r\n")
                    continue
            value = entry.render(ctx)
            if not value:
                if not entry.host_fallback:
                    continue
                # HTTP/1.0 without Host and no server_name: nginx's own default
                value = self._proxy_host.render(ctx)
                if not value:
                    continue
            if "\r" in value or "\n" in value or "\0" in value or not value.isascii():
                parts += (entry.prefix, _header_value(value), b"\r\n")
            else:
                # the usual case, without _header_value's call: plain ASCII
                parts += (entry.prefix, value.encode("ascii"), b"\r\n")

        headers = request.headers
        start = len(parts)
        named = _copy_headers(parts, headers, self._not_copied)
        if named:
            # a Connection header named more headers: copy again without them
            del parts[start:]
            _copy_headers(parts, headers, self._not_copied | named)

        for key, value in body_framing_headers:
            parts += (key, b": ", value, b"\r\n")
        if upgrade is not None:
            if not self._sets_upgrade:
                parts += (b"Upgrade: ", upgrade, b"\r\n")
            if not self._sets_connection:
                parts.append(b"Connection: upgrade\r\n")
        elif not self.keepalive and not self._sets_connection:
            parts.append(_CONNECTION_CLOSE)
        parts.append(b"\r\n")
        return b"".join(parts)


class ResponseHeaderPlan:
    """What of the upstream's response headers reaches the client, and what is added."""

    def __init__(self, location: LocationSettings):
        passed = {name.lower().encode("latin-1") for name in location.proxy_pass_header}
        hidden = {name.lower().encode("latin-1") for name in location.proxy_hide_header}
        self._hidden = frozenset((DEFAULT_HIDDEN_RESPONSE_HEADERS - passed)
                                 | hidden | HOP_BY_HOP)
        self._add = tuple(
            (name.encode("latin-1"), compile_template(value).renderer)
            for name, value in location.add_header
        )

    def filter(self, headers: list) -> list:
        """The upstream's headers that may be passed to the client (a new list)."""
        hidden = self._hidden
        passed = []
        named = None
        for header in headers:
            lname = header[0].lower()
            if lname not in hidden:
                passed.append(header)
            elif lname == b"connection":
                # (hidden always holds "connection", being hop-by-hop)
                # "Connection: keep-alive", the usual one, names nothing new
                for token in _tokens(header[1]):
                    if token not in hidden:
                        if named is None:
                            named = set()
                        named.add(token)
        if named:
            passed = [header for header in passed if header[0].lower() not in named]
        return passed

    def add(self, headers: list, ctx: VariableContext) -> list:
        """Append the ``add_header`` values to ``headers`` (in place; also returned).
        A value that renders empty is not added, as in nginx."""
        for name, render in self._add:
            value = render(ctx)
            if value:
                headers.append((name, _header_value(value)))
        return headers
