"""nginx variables: template parsing and lazy per-request evaluation.

A *template* is a configuration string with ``$name`` / ``${name}`` references
(``proxy_set_header`` and ``add_header`` values, ``hash_key``, ``limit_req`` keys,
``proxy_cache_key``, access log formats). It is compiled once, at configuration time,
into literal pieces and resolved variable getters, so rendering a template per request
is a join over a few function calls.

Parsing follows ``ngx_http_script_compile``: a name is ``[A-Za-z0-9_]+``, ``${name}``
delimits it from following name characters, ``$1`` … ``$9`` are regex captures, names
are case-insensitive. nginx has no escape for a literal ``$``: a ``$`` not followed by a
name (or at the end of the string) is a configuration error, as is an unclosed ``${``.

:class:`VariableContext` evaluates variables lazily for one exchange: nothing is computed
unless a template asks for it, and nothing is cached, so ``$status`` or
``$request_time`` read at log time see the final values. Every value is a ``str``;
values taken from the wire (headers, the request line) are bytes decoded as latin-1, so
encoding them back with latin-1 restores the exact bytes. Missing values are ``""``.

This module knows the exchange contract (``gateway.http.exchange``) and the server
settings; it does no I/O. How values are escaped (access log) or framed (headers) is
the business of ``gateway.accesslog`` and ``gateway.http.headers``.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Callable, Optional, Union

from gateway.http.exchange import upstream_text

__all__ = [
    "Template",
    "TemplateError",
    "VariableContext",
    "compile_template",
    "unknown_variables",
    "template_errors",
    "is_known_variable",
    "SIMPLE_VARIABLES",
]

Getter = Callable[["VariableContext"], str]


class TemplateError(ValueError):
    """A template that nginx would refuse: bad syntax or an unknown variable."""


# -- the context --------------------------------------------------------------------


class VariableContext:
    """Evaluates variables for one exchange.

    ``clock`` provides ``seconds()`` (the reactor, or ``task.Clock`` in tests) for
    ``$request_time``, ``$msec``, ``$time_local`` and ``$time_iso8601``.

    ``trusted`` says whether the client connection comes from ``set_real_ip_from``
    (``exchange.connection.trusted``, set by :mod:`gateway.http.realip`, unless given):
    a trusted client's ``X-Forwarded-For`` is extended by
    ``$proxy_add_x_forwarded_for`` instead of replaced, and its ``X-Request-ID`` is
    kept by the request header plan.
    """

    __slots__ = ("exchange", "clock", "trusted")

    def __init__(self, exchange, clock, *, trusted: Optional[bool] = None):
        self.exchange = exchange
        self.clock = clock
        self.trusted = exchange.connection.trusted if trusted is None else trusted

    def get(self, name: str) -> str:
        """The value of ``$name`` (without the ``$``); ``""`` when unknown or missing."""
        getter = _resolve(name.lower())
        return getter(self) if getter is not None else ""

    def now(self) -> float:
        return self.clock.seconds()


# -- variable getters ---------------------------------------------------------------

_HOSTNAME = socket.gethostname()
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _latin1(value: Optional[bytes]) -> str:
    return value.decode("latin-1") if value else ""


def _port(port: int) -> str:
    # nginx prints nothing for port 0 (unix sockets)
    return str(port) if 0 < port < 65536 else ""


def _server_names(ctx: VariableContext) -> tuple:
    server = getattr(ctx.exchange, "server", None)
    return getattr(server, "server_name", ()) or ()


def _host(ctx: VariableContext) -> str:
    host = ctx.exchange.request.host
    if host:
        return host
    names = _server_names(ctx)
    return names[0] if names else ""


def _server_name(ctx: VariableContext) -> str:
    names = _server_names(ctx)
    return names[0] if names else ""


def _request_line(ctx: VariableContext) -> str:
    request = ctx.exchange.request
    return f"{request.method} {request.target} HTTP/{request.version}"


def _joined_headers(ctx: VariableContext, lname: bytes, sep: bytes) -> str:
    values = ctx.exchange.request.header_values(lname)
    if not values:
        return ""
    if len(values) == 1:
        return values[0].decode("latin-1")
    return sep.join(values).decode("latin-1")


def _millis(seconds: float) -> int:
    # a hair of slack so that 0.005 s computed as 0.00499999… still reads "0.005"
    return int(seconds * 1000 + 1e-6)


def _format_millis(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"


def _request_time(ctx: VariableContext) -> str:
    start = getattr(ctx.exchange, "start_time", None)
    if start is None:
        return ""
    return _format_millis(max(_millis(ctx.now() - start), 0))


def _msec(ctx: VariableContext) -> str:
    return _format_millis(_millis(ctx.now()))


# Formatting local time costs a few microseconds; like nginx, do it once per second.
_time_cache: list = [None, "", ""]


def _times(ctx: VariableContext) -> list:
    second = int(ctx.now())
    key = (second, time.timezone, time.altzone)
    cache = _time_cache
    if cache[0] != key:
        tm = time.localtime(second)
        offset = tm.tm_gmtoff or 0
        sign = "-" if offset < 0 else "+"
        hours, minutes = divmod(abs(offset) // 60, 60)
        clock = f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
        cache[1] = (f"{tm.tm_mday:02d}/{_MONTHS[tm.tm_mon - 1]}/{tm.tm_year}:{clock}"
                    f" {sign}{hours:02d}{minutes:02d}")
        cache[2] = (f"{tm.tm_year}-{tm.tm_mon:02d}-{tm.tm_mday:02d}T{clock}"
                    f"{sign}{hours:02d}:{minutes:02d}")
        cache[0] = key
    return cache


def _upstream_list(attribute: str) -> Getter:
    def get(ctx: VariableContext) -> str:
        state = ctx.exchange.variables.get("upstream")
        if state is None:
            return ""
        return ", ".join([upstream_text(value) for value in getattr(state, attribute)])
    return get


def _proxy_add_x_forwarded_for(ctx: VariableContext) -> str:
    remote = ctx.exchange.connection.remote_addr
    if ctx.trusted:
        forwarded = _joined_headers(ctx, b"x-forwarded-for", b", ")
        if forwarded:
            return f"{forwarded}, {remote}"
    return remote


def _realip_remote_addr(ctx: VariableContext) -> str:
    # the connection's own address, also after set_real_ip_from replaced $remote_addr
    conn = ctx.exchange.connection
    return (conn.original or conn).remote_addr


def _realip_remote_port(ctx: VariableContext) -> str:
    conn = ctx.exchange.connection
    return _port((conn.original or conn).remote_port)


def _http2(ctx: VariableContext) -> str:
    if not ctx.exchange.request.version.startswith("2"):
        return ""
    return "h2" if ctx.exchange.connection.scheme == "https" else "h2c"


def _from_variables(key: str) -> Getter:
    def get(ctx: VariableContext) -> str:
        value = ctx.exchange.variables.get(key)
        return "" if value is None else str(value)
    return get


def _tls(name: str) -> Getter:
    def get(ctx: VariableContext) -> str:
        tls = ctx.exchange.connection.tls
        return "" if tls is None else getattr(tls, name)
    return get


def _attribute_number(name: str) -> Getter:
    def get(ctx: VariableContext) -> str:
        value = getattr(ctx.exchange, name, None)
        return "" if value is None else str(value)
    return get


def _empty(ctx: VariableContext) -> str:
    return ""


def _content_length(ctx: VariableContext) -> str:
    return _latin1(ctx.exchange.request.header(b"content-length"))


#: Every variable without a parameter, in the order the JSON access log prints them.
SIMPLE_VARIABLES: dict[str, Getter] = {
    "time_local": lambda ctx: _times(ctx)[1],
    "time_iso8601": lambda ctx: _times(ctx)[2],
    "msec": _msec,
    "request_id": lambda ctx: ctx.exchange.request_id,
    "connection": _attribute_number("connection_number"),
    "remote_addr": lambda ctx: ctx.exchange.connection.remote_addr,
    "remote_port": lambda ctx: _port(ctx.exchange.connection.remote_port),
    "remote_user": _empty,
    "realip_remote_addr": _realip_remote_addr,
    "realip_remote_port": _realip_remote_port,
    "server_addr": lambda ctx: ctx.exchange.connection.server_addr,
    "server_port": lambda ctx: _port(ctx.exchange.connection.server_port),
    "server_name": _server_name,
    "hostname": lambda ctx: _HOSTNAME,
    "pid": lambda ctx: str(os.getpid()),
    "scheme": lambda ctx: ctx.exchange.connection.scheme,
    "https": lambda ctx: "on" if ctx.exchange.connection.scheme == "https" else "",
    "http2": _http2,
    "host": _host,
    "request": _request_line,
    "request_method": lambda ctx: ctx.exchange.request.method,
    "request_uri": lambda ctx: ctx.exchange.request.target,
    "uri": lambda ctx: ctx.exchange.request.path,
    "document_uri": lambda ctx: ctx.exchange.request.path,
    "args": lambda ctx: ctx.exchange.request.args,
    "query_string": lambda ctx: ctx.exchange.request.args,
    "is_args": lambda ctx: "?" if ctx.exchange.request.args else "",
    "server_protocol": lambda ctx: f"HTTP/{ctx.exchange.request.version}",
    "content_type": lambda ctx: _joined_headers(ctx, b"content-type", b", "),
    "content_length": _content_length,
    "request_length": _attribute_number("request_length"),
    "request_time": _request_time,
    "status": lambda ctx: f"{ctx.exchange.status:03d}",
    "body_bytes_sent": lambda ctx: str(ctx.exchange.body_bytes_sent),
    "bytes_sent": lambda ctx: str(ctx.exchange.bytes_sent),
    "proxy_host": _from_variables("proxy_host"),
    "proxy_add_x_forwarded_for": _proxy_add_x_forwarded_for,
    "upstream_addr": _upstream_list("addrs"),
    "upstream_status": _upstream_list("statuses"),
    "upstream_connect_time": _upstream_list("connect_times"),
    "upstream_header_time": _upstream_list("header_times"),
    "upstream_response_time": _upstream_list("response_times"),
    "upstream_queue_time": _upstream_list("queue_times"),
    "upstream_bytes_received": _upstream_list("bytes_received"),
    "upstream_bytes_sent": _upstream_list("bytes_sent"),
    "upstream_cache_status": _from_variables("upstream_cache_status"),
    # from the connection's gateway.tls.server.TLSInfo; empty on cleartext
    "ssl_protocol": _tls("protocol"),
    "ssl_cipher": _tls("cipher"),
    "ssl_server_name": _tls("server_name"),
    "ssl_client_s_dn": _tls("client_s_dn"),
    "ssl_client_verify": _tls("client_verify"),
    "ssl_session_reused": _tls("session_reused"),
}


def _arg(name: str) -> Getter:
    """``$arg_NAME``: ``ngx_http_arg`` — the raw value of the first ``NAME=`` that starts
    the query string or follows ``&``; the name compares case-insensitively."""
    wanted = name.lower()

    def get(ctx: VariableContext) -> str:
        args = ctx.exchange.request.args
        if not args or not wanted:
            return ""
        for pair in args.split("&"):
            key, eq, value = pair.partition("=")
            if eq and key.lower() == wanted:
                return value
        return ""
    return get


def _http(name: str) -> Getter:
    """``$http_NAME``: every request header whose lower-cased name, with ``-`` read as
    ``_``, equals NAME; several are joined with ``", "`` (``"; "`` for Cookie), as
    nginx 1.23+ does."""
    wanted = name.encode("latin-1")
    separator = b"; " if wanted == b"cookie" else b", "

    def get(ctx: VariableContext) -> str:
        values = [value for key, value in ctx.exchange.request.headers
                  if key.lower().replace(b"-", b"_") == wanted]
        if not values:
            return ""
        return separator.join(values).decode("latin-1")
    return get


def _cookie_value(header: bytes, name: bytes) -> Optional[bytes]:
    # A port of ngx_http_parse_multi_header_lines: pairs are separated by ";" or ",",
    # but a value runs to the next ";" only.
    start, end, size = 0, len(header), len(name)
    while start < end:
        if header[start:start + size].lower() == name:
            pos = start + size
            while pos < end and header[pos] == 0x20:
                pos += 1
            if pos < end and header[pos] == 0x3D:                    # "="
                pos += 1
                while pos < end and header[pos] == 0x20:
                    pos += 1
                last = header.find(b";", pos)
                return header[pos:last if last >= 0 else end]
        while start < end:
            ch = header[start]
            start += 1
            if ch == 0x3B or ch == 0x2C:                             # ";" ","
                break
        while start < end and header[start] == 0x20:
            start += 1
    return None


def _cookie(name: str) -> Getter:
    """``$cookie_NAME``: the first cookie called NAME (case-insensitive), as nginx
    parses Cookie headers."""
    wanted = name.encode("latin-1")

    def get(ctx: VariableContext) -> str:
        if not wanted:
            return ""
        for header in ctx.exchange.request.header_values(b"cookie"):
            value = _cookie_value(header, wanted)
            if value is not None:
                return value.decode("latin-1")
        return ""
    return get


def _capture(index: int) -> Getter:
    def get(ctx: VariableContext) -> str:
        captures = ctx.exchange.variables.get("captures") or ()
        if index < len(captures) and captures[index] is not None:
            return captures[index]
        return ""
    return get


_PREFIXES: tuple[tuple[str, Callable[[str], Getter]], ...] = (
    ("arg_", _arg),
    ("http_", _http),
    ("cookie_", _cookie),
)


def _resolve(name: str) -> Optional[Getter]:
    """The getter for a lower-cased variable name, or None when unknown."""
    getter = SIMPLE_VARIABLES.get(name)
    if getter is not None:
        return getter
    for prefix, factory in _PREFIXES:
        if name.startswith(prefix):
            return factory(name[len(prefix):])
    if len(name) == 1 and "1" <= name <= "9":
        return _capture(int(name))
    return None


def is_known_variable(name: str) -> bool:
    """Whether ``$name`` (given without the ``$``) is a variable of this gateway."""
    return _resolve(name.lower()) is not None


# -- templates ----------------------------------------------------------------------


class Variable:
    """A resolved ``$name`` inside a template."""

    __slots__ = ("name", "getter")

    def __init__(self, name: str, getter: Getter):
        self.name = name
        self.getter = getter

    def __repr__(self) -> str:
        return f"Variable({self.name!r})"


Part = Union[str, Variable]


def _constant_renderer(text: str) -> Getter:
    return lambda ctx: text


def _join_renderer(pieces: tuple) -> Getter:
    """Literal strings as they are, getters called: the join of a template."""
    def render(ctx: VariableContext) -> str:
        return "".join([p if p.__class__ is str else p(ctx) for p in pieces])
    return render


class Template:
    """A compiled template. ``parts`` are literal strings and :class:`Variable` s.

    ``renderer`` is a function ``ctx -> str`` equal to :meth:`render` that callers on a
    per-request path keep instead: for a template that is one variable (``"$host"``,
    the commonest) it is that variable's getter itself, one call instead of two.
    """

    __slots__ = ("text", "parts", "is_constant", "renderer")

    def __init__(self, text: str, parts: tuple):
        self.text = text
        self.parts = parts
        self.is_constant = not any(isinstance(p, Variable) for p in parts)
        if len(parts) == 1 and isinstance(parts[0], Variable):
            self.renderer: Getter = parts[0].getter
        elif self.is_constant:
            self.renderer = _constant_renderer(text)
        else:
            self.renderer = _join_renderer(tuple(
                p if isinstance(p, str) else p.getter for p in parts))

    @property
    def variables(self) -> list[str]:
        return [p.name for p in self.parts if isinstance(p, Variable)]

    def render(self, ctx: VariableContext) -> str:
        return self.renderer(ctx)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def _is_name_char(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch == "_")


def _scan(text: str):
    """Yield ``("text", s)``, ``("var", name)`` and ``("error", message, fragment)``
    items for ``text``, as ``ngx_http_script_compile`` reads it."""
    i, n = 0, len(text)
    literal_start = 0
    while i < n:
        if text[i] != "$":
            i += 1
            continue
        if i > literal_start:
            yield ("text", text[literal_start:i])
        start = i
        i += 1
        if i < n and "1" <= text[i] <= "9":
            yield ("var", text[i])
            i += 1
            literal_start = i
            continue
        bracket = i < n and text[i] == "{"
        if bracket:
            i += 1
        name_start = i
        while i < n and _is_name_char(text[i]):
            i += 1
        name = text[name_start:i]
        if bracket:
            if i < n and text[i] == "}":
                i += 1
            else:
                yield ("error", f'the closing bracket in "{name}" variable is missing',
                       text[start + 1:i])
                literal_start = i
                continue
        if not name:
            yield ("error", f'invalid variable name in "{text}"', text[start + 1:i])
            literal_start = i
            continue
        yield ("var", name)
        literal_start = i
    if literal_start < n:
        yield ("text", text[literal_start:])


def compile_template(text: str) -> Template:
    """Compile ``text``; raises :class:`TemplateError` for bad syntax or an unknown
    variable (the configuration loader reports those first, with their TOML paths)."""
    parts: list = []
    for item in _scan(text):
        kind = item[0]
        if kind == "text":
            if parts and isinstance(parts[-1], str):
                parts[-1] += item[1]
            else:
                parts.append(item[1])
        elif kind == "var":
            name = item[1].lower()
            getter = _resolve(name)
            if getter is None:
                raise TemplateError(f'unknown "{name}" variable')
            parts.append(Variable(name, getter))
        else:
            raise TemplateError(item[1])
    return Template(text, tuple(parts))


def unknown_variables(text: str) -> list[str]:
    """Names referenced in ``text`` that are not variables, without ``$``, in order and
    without repeats. A malformed reference is reported by the text that follows its
    ``$`` (``""`` for a lone ``$``, ``"{name"`` for an unclosed bracket), so a caller
    printing ``"$" + name`` shows what the user wrote."""
    unknown: list[str] = []
    for item in _scan(text):
        if item[0] == "var":
            name = item[1]
            if _resolve(name.lower()) is None and name not in unknown:
                unknown.append(name)
        elif item[0] == "error" and item[2] not in unknown:
            unknown.append(item[2])
    return unknown


def template_errors(text: str) -> list[str]:
    """Every problem with ``text`` as nginx words it (syntax and unknown names)."""
    errors: list[str] = []
    for item in _scan(text):
        if item[0] == "var" and _resolve(item[1].lower()) is None:
            errors.append(f'unknown "{item[1].lower()}" variable')
        elif item[0] == "error":
            errors.append(item[1])
    return errors
