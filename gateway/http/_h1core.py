"""The sans-IO core of the HTTP/1.1 server: request bytes in, events out; response
heads serialised.

Theory of operation
-------------------
:class:`RequestParser` wraps one llhttp parser (httptools) per connection. ``feed``
parses everything it is given, pipelined requests included, and appends small
immutable events to ``events``::

    RequestStarted(head, server, head_length)   a validated head
    BodyData(data)                              de-chunked body bytes
    RequestTrailers(headers)                    a chunked body's trailer fields
    BODY_END                                    the body (possibly empty) is complete
    Rejected(status, reason, head)              the request is refused; parsing stops
    Upgraded(rest)                              llhttp stopped after an Upgrade request

``RequestTrailers`` comes only for a chunked body whose trailer section has fields,
right before its ``BODY_END``; each trailer line is bounded like a header line (431)
and the section like the head ("client sent too large request trailers", 431).
A request's ``BodyData``/``BODY_END``/``Rejected`` events follow its
``RequestStarted``; the shell (``gateway.http.h1``) consumes them one exchange at a
time, so the parser may run ahead of the handlers (the shell bounds that by pausing
the transport). After ``Rejected`` the parser ignores further input.

llhttp is strict by default and refuses on its own: obs-fold, bare CR or LF, control
characters in names and values, whitespace before the colon, duplicate or invalid
Content-Length, Content-Length together with Transfer-Encoding, bad chunk framing,
unknown methods and versions other than 0.9/1.x/2.0. What it lets through and nginx
refuses is checked in ``on_headers_complete``: HTTP/2.0 (505; the h2c preface 400),
TRACE and CONNECT (405), Transfer-Encoding other than ``chunked`` (501) or in HTTP/1.0
(400), missing, duplicate or invalid Host (400), an invalid target (400) and a
Content-Length above ``client_max_body_size`` (413). Size limits follow
``large_client_header_buffers`` of the default server: a longer request line 414, a
longer header line or a head above four buffers 431.

The head limits are exact for the request line (llhttp reports target pieces as
they arrive) and for completed header lines; a header line still being received is
measured from the last line feed of the bytes fed so far.
"""
from __future__ import annotations

from collections import deque
from functools import partial
from typing import NamedTuple, Optional

import httptools

from gateway.config.model import ServerSettings
from gateway.http.errors import status_line
from gateway.http.exchange import RequestHead
from gateway.http.host import validate_host
from gateway.http.uri import InvalidURI, normalize, split_target

__all__ = [
    "RequestParser", "RequestStarted", "BodyData", "BodyEnd", "BODY_END", "Rejected",
    "RequestTrailers", "Upgraded", "serialize_head", "CONTINUE_100",
]


class RequestStarted(NamedTuple):
    head: RequestHead
    server: ServerSettings
    head_length: int


class BodyData(NamedTuple):
    data: bytes


class BodyEnd(NamedTuple):
    pass


BODY_END = BodyEnd()


class RequestTrailers(NamedTuple):
    headers: list      # [(name, value)] as received, trailing whitespace stripped


class Rejected(NamedTuple):
    status: int
    reason: str
    head: Optional[RequestHead]      # best-effort request fields for the access log


class Upgraded(NamedTuple):
    rest: bytes


# A NamedTuple's generated __new__ is a Python-level call; the parser builds the
# events it makes for every request and every body piece through tuple.__new__.
_request_started = partial(tuple.__new__, RequestStarted)
_body_data = partial(tuple.__new__, BodyData)


class _Reject(Exception):
    def __init__(self, status: int, reason: str):
        self.status = status
        self.reason = reason


CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"

# The request headers the parser itself acts on, by lower-cased name. Only names of
# these lengths are lower-cased and looked up, so other headers cost one set lookup.
_HOST, _CONTENT_LENGTH, _TRANSFER_ENCODING, _EXPECT, _UPGRADE = range(5)
_FRAMING_HEADERS = {
    b"host": _HOST, b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING, b"expect": _EXPECT, b"upgrade": _UPGRADE,
}
_FRAMING_LENGTHS = frozenset(len(name) for name in _FRAMING_HEADERS)


class RequestParser:
    """Parses requests of one connection into events (see the module docstring).

    ``selector`` has ``.default`` and ``.select(host)`` returning ``ServerSettings``:
    the head limits come from the default server, the body limit from the server
    chosen by the request's host.
    """

    def __init__(self, selector):
        self.selector = selector
        default = selector.default
        self.line_limit = default.large_client_header_buffers
        self.head_limit = 4 * self.line_limit
        self.events: deque = deque()
        self.failed = False
        self.upgraded = False
        self._held = b""
        self._parser = httptools.HttpRequestParser(self)
        self.on_message_begin()
        self.in_head = False

    # -- input -------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Parse ``data``; events are appended to ``self.events``."""
        if self.failed:
            return
        if self.upgraded:
            self._held += data
            return
        began_before = self.in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._after_upgrade(data[e.args[0]:])
            return
        except _Reject as e:
            self._reject(e.status, e.reason)
            return
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, _Reject):
                self._reject(cause.status, cause.reason)
            else:
                raise
            return
        except httptools.HttpParserError as e:
            self._reject(*self._classify(e))
            return
        if self.in_head:
            self._check_partial_line(data, began_before)
        elif self._last_chunk:
            self._check_partial_trailer(data)

    def resume_after_upgrade(self) -> None:
        """The Upgrade was not taken: parse what followed as ordinary requests."""
        held, self._held = self._held, b""
        self.upgraded = False
        self._parser = httptools.HttpRequestParser(self)
        self.on_message_begin()
        self.in_head = False
        if held:
            self.feed(held)

    def take_held(self) -> bytes:
        """Bytes received after an Upgrade request (for a tunnel taking over)."""
        held, self._held = self._held, b""
        return held

    # -- llhttp callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        # a new request: forget the previous one (also the initial state)
        self.in_head = True
        self._url = b""
        self._headers: list = []
        self._header_bytes = 0
        self._trailers: Optional[list] = None
        self._trailer_bytes = 0
        # after a chunk-size line and before any of its data: possibly the last
        # chunk, whose trailer lines llhttp buffers without telling us
        self._last_chunk = False
        self._partial_trailer = 0
        self._partial_line = 0
        self._body_limit = 0
        self._body_seen = 0
        self._current: Optional[RequestHead] = None
        # the headers of _FRAMING_HEADERS, noted by on_header (the last one wins)
        self._host: Optional[bytes] = None
        self._duplicate_host = False
        self._content_length: Optional[bytes] = None
        self._transfer_encoding: Optional[bytes] = None
        self._expect = False
        self._upgrade = False

    def on_url(self, piece: bytes) -> None:
        url = self._url = self._url + piece
        if len(url) > self.line_limit:
            raise _Reject(414, "client sent too long URI")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 2
        if size > self.line_limit:
            raise _Reject(431, "client sent too long header line")
        if not self.in_head:
            self._trailer(name, value, size)
            return
        header_bytes = self._header_bytes = self._header_bytes + size + 2
        if header_bytes + len(self._url) > self.head_limit:
            raise _Reject(431, "client sent too large request head")
        # llhttp keeps trailing whitespace of a value; nginx strips it
        if value.endswith((b" ", b"\t")):
            value = value.rstrip(b" \t")
        self._headers.append((name, value))
        if len(name) in _FRAMING_LENGTHS:
            kind = _FRAMING_HEADERS.get(name.lower())
            if kind == _HOST:
                # refused in on_headers_complete, after the checks that come first
                if self._host is not None:
                    self._duplicate_host = True
                else:
                    self._host = value
            elif kind == _CONTENT_LENGTH:
                self._content_length = value
            elif kind == _TRANSFER_ENCODING:
                self._transfer_encoding = value
            elif kind == _EXPECT:
                self._expect = value.lower() == b"100-continue"
            elif kind == _UPGRADE:
                self._upgrade = True

    def _trailer(self, name: bytes, value: bytes, size: int) -> None:
        """A field of a chunked body's trailer section (nginx drops these; the
        exchange offers them as ``request_trailers`` for the handler to forward)."""
        trailer_bytes = self._trailer_bytes = self._trailer_bytes + size + 2
        if trailer_bytes > self.head_limit:
            raise _Reject(431, "client sent too large request trailers")
        if value.endswith((b" ", b"\t")):
            value = value.rstrip(b" \t")
        if self._trailers is None:
            self._trailers = [(name, value)]
        else:
            self._trailers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self._parser
        method = parser.get_method().decode("latin-1")
        version = parser.get_http_version()
        target = self._url.decode("latin-1")
        head = RequestHead(method, target, target, "", version, self._headers)
        self._current = head
        if version != "1.1" and version != "1.0":
            if method == "PRI":
                raise _Reject(400, "client sent HTTP/2 preface on HTTP/1.1 connection")
            if version[:1] >= "2":
                raise _Reject(505, "client sent unsupported HTTP version")
            raise _Reject(400, "client sent invalid HTTP version")
        if method == "TRACE":
            raise _Reject(405, "client sent TRACE method")
        if method == "CONNECT":
            raise _Reject(405, "client sent CONNECT method")

        if self._duplicate_host:
            raise _Reject(400, "client sent duplicate host header")
        host_header = self._host
        content_length = self._content_length
        transfer_encoding = self._transfer_encoding

        try:
            # split_target's origin-form answer, without the call
            authority = None if target[:1] == "/" else split_target(target)[0]
            head.path, head.args = normalize(target)
        except InvalidURI:
            raise _Reject(400, "client sent invalid request")
        host = ""
        if host_header is not None:
            checked = validate_host(host_header)
            if checked is None:
                raise _Reject(400, "client sent invalid host header")
            host = checked
        if authority is not None:
            checked = validate_host(authority.encode("latin-1"))
            if checked is None:
                raise _Reject(400, "client sent invalid host in request line")
            host = checked
        if host_header is None and version == "1.1":
            raise _Reject(400, "client sent HTTP/1.1 request without \"Host\" header")
        head.host = host

        if transfer_encoding is not None:
            if version == "1.0":
                raise _Reject(400, "client sent HTTP/1.0 request with Transfer-Encoding header")
            if transfer_encoding.lower() != b"chunked":
                raise _Reject(501, "client sent unknown \"Transfer-Encoding\"")
            head.chunked = True
        elif content_length is not None:
            try:
                head.content_length = int(content_length)
            except ValueError:
                raise _Reject(400, "client sent invalid \"Content-Length\" header")

        server = self.selector.select(host)
        limit = server.client_max_body_size
        if limit and head.content_length is not None and head.content_length > limit:
            raise _Reject(413, "client intended to send too large body")
        self._body_limit = limit
        head.keep_alive = parser.should_keep_alive()
        head.expect_continue = self._expect and version == "1.1"
        head.may_upgrade = self._upgrade
        length = len(self._url) + len(method) + 12 + self._header_bytes
        self.events.append(_request_started((head, server, length)))

    def on_chunk_header(self) -> None:
        self._last_chunk = True
        self._partial_trailer = 0

    def on_body(self, data: bytes) -> None:
        self._last_chunk = False
        if self._body_limit:
            self._body_seen += len(data)
            if self._body_seen > self._body_limit:
                raise _Reject(413, "client intended to send too large chunked body")
        self.events.append(_body_data((data,)))

    def on_message_complete(self) -> None:
        self._last_chunk = False
        if self._trailers is not None:
            self.events.append(RequestTrailers(self._trailers))
            self._trailers = None
        self.events.append(BODY_END)
        self._current = None

    # -- failures ------------------------------------------------------------------

    def _after_upgrade(self, rest: bytes) -> None:
        self.upgraded = True
        self.in_head = False
        self._held = rest
        self.events.append(Upgraded(rest))

    def _reject(self, status: int, reason: str) -> None:
        self.failed = True
        head = self._current
        if head is None:
            head = self._best_effort_head()
        self.events.append(Rejected(status, reason, head))

    def _best_effort_head(self) -> RequestHead:
        try:
            method = self._parser.get_method().decode("latin-1")
        except httptools.HttpParserError:
            method = ""
        try:
            version = self._parser.get_http_version()
        except httptools.HttpParserError:
            version = ""
        target = self._url.decode("latin-1")
        return RequestHead(method, target, target, "", version, self._headers)

    def _classify(self, error: Exception) -> tuple[int, str]:
        message = str(error)
        if "Invalid HTTP version" in message:
            version = self._parser.get_http_version()
            if version[:1] >= "2":
                return 505, "client sent unsupported HTTP version"
        if "PRI/Upgrade" in message:
            return 400, "client sent HTTP/2 preface on HTTP/1.1 connection"
        if self._current is not None:
            return 400, "client sent invalid body: " + message
        return 400, "client sent invalid request: " + message

    def _check_partial_line(self, data: bytes, began_before: bool) -> None:
        # llhttp buffers an unfinished header line without telling us; bound it.
        newline = data.rfind(b"\n")
        if newline < 0 and began_before:
            self._partial_line += len(data)
        else:
            self._partial_line = len(data) - newline - 1
        if self._partial_line > self.line_limit:
            if len(self._url) + 16 > self.line_limit and not self._headers:
                self._reject(414, "client sent too long URI")
            else:
                self._reject(431, "client sent too long header line")
        elif self._partial_line + self._header_bytes + len(self._url) > self.head_limit:
            self._reject(431, "client sent too large request head")

    def _check_partial_trailer(self, data: bytes) -> None:
        # The bytes after the last chunk-size line carry no body data, so past the
        # last line feed they are a trailer line still being received: bound it as
        # a header line. (The chunk-size line itself ends with a line feed fed in
        # the same call that reported it.)
        newline = data.rfind(b"\n")
        if newline < 0:
            self._partial_trailer += len(data)
        else:
            self._partial_trailer = len(data) - newline - 1
        if self._partial_trailer > self.line_limit:
            self._reject(431, "client sent too long header line")
        elif self._partial_trailer + self._trailer_bytes > self.head_limit:
            self._reject(431, "client sent too large request trailers")


# -- responses --------------------------------------------------------------------


def serialize_head(version: bytes, status: int, reason: Optional[bytes], headers,
                   date: Optional[bytes], framing: bytes, connection: bytes,
                   server: bool = True) -> bytes:
    """The response head: status line, ``Server``, ``Date``, the handler's headers,
    then the framing header (``b"Content-Length: 0\\r\\n"``, ``b"Transfer-Encoding:
    chunked\\r\\n"`` or ``b""``) and the ``Connection`` line (or ``b""``).

    ``server=False`` / ``date=None`` leave out the gateway's own line because the
    handler passes one (``proxy_pass_header``), as nginx does."""
    if server and date is not None:
        parts = [status_line(version, status, reason), b"Server: gateway\r\nDate: ", date,
                 b"\r\n"]
    else:
        parts = [status_line(version, status, reason)]
        if server:
            parts.append(b"Server: gateway\r\n")
        if date is not None:
            parts += (b"Date: ", date, b"\r\n")
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts += (framing, connection, b"\r\n")
    return b"".join(parts)
