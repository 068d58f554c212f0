"""Sans-IO reading of upstream HTTP/1.x responses: bytes in, events out.

Theory of operation
-------------------
One :class:`ResponseReader` lives as long as one upstream connection. Before each
request the shell calls :meth:`ResponseReader.start` with the request method; then every
chunk received goes through :meth:`feed` and the end of the stream through
:meth:`feed_eof`. Both return a list of events, in order:

- a :class:`ResponseHead` (exactly once per response, interim 1xx responses skipped),
- ``bytes`` (a piece of the decoded body: chunk framing removed),
- :class:`ResponseTrailers` (the trailer section of a chunked body, when it has
  fields; always right before the end),
- :data:`RESPONSE_END` (the response is complete and well framed),
- an :class:`UpstreamError` (the response cannot be completed; nothing follows).

The framing rules are nginx's (``ngx_http_proxy_process_status_line`` /
``_process_header`` and the proxy input filters):

- responses to HEAD and 204/304 responses have no body whatever Content-Length says;
- Content-Length is exact: a body ends after the declared length, bytes beyond it are
  dropped and make the connection unusable for keepalive ("upstream sent more data
  than specified in Content-Length header"), EOF before it is an error;
- chunked bodies end with the last chunk; malformed chunks are an error after the head;
- the trailer fields after the last chunk are collected as received (llhttp reports
  them through ``on_header`` after ``on_headers_complete``), bounded like the head
  ("upstream sent too big trailers", ``ngx_http_proxy_process_trailer``); which of
  them reach the client is the proxy's decision;
- a response with neither is close-delimited: it ends (well) at EOF, never kept alive;
- a status line or header llhttp refuses, Content-Length together with
  Transfer-Encoding, a duplicate Content-Length or an unknown Transfer-Encoding is
  ``invalid_header`` before any head is delivered.

After the end the reader states whether the connection may carry another request
(:attr:`ResponseReader.reusable`). Parsing itself is llhttp through
``httptools.HttpResponseParser``; this module adds the rules llhttp leaves to the caller
(HEAD, head size, keepalive, extra bytes) and nginx's wording for every failure. It does
no I/O and knows no timers: timeouts and writing the request belong to
``gateway.http.client``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import httptools

__all__ = [
    "RESPONSE_END",
    "ResponseHead",
    "ResponseReader",
    "ResponseTrailers",
    "UpstreamError",
    "DEFAULT_MAX_HEAD_SIZE",
]

#: Bound on a response head (status line plus headers), like nginx's
#: ``proxy_buffer_size`` but roomier: beyond it "upstream sent too big header".
DEFAULT_MAX_HEAD_SIZE = 64 * 1024

MSG_CLOSED_HEADER = "upstream prematurely closed connection while reading response header from upstream"
MSG_CLOSED_BODY = "upstream prematurely closed connection while reading upstream"
MSG_INVALID_HEADER = "upstream sent invalid header"
MSG_NO_VALID_HEADER = "upstream sent no valid HTTP/1.0 header"
MSG_TOO_BIG_HEADER = "upstream sent too big header while reading response header from upstream"
MSG_INVALID_CHUNKED = "upstream sent invalid chunked response while reading upstream"
MSG_CL_AND_TE = 'upstream sent "Content-Length" and "Transfer-Encoding" headers at the same time'
MSG_DUPLICATE_CL = 'upstream sent duplicate header line: "Content-Length"'
MSG_UNKNOWN_TE = 'upstream sent unknown "Transfer-Encoding"'
MSG_TOO_BIG_TRAILERS = "upstream sent too big trailers while reading upstream"


class UpstreamError(Exception):
    """Why an upstream exchange failed, in nginx's terms.

    ``kind`` is the ``proxy_next_upstream`` condition it matches (``"error"``,
    ``"timeout"`` or ``"invalid_header"``). ``response_started`` is True once the
    response head was delivered (no retry is possible then). ``nothing_received`` is
    True when not a single response byte arrived; on a reused keepalive connection
    that means the connection was stale.
    """

    def __init__(self, kind: str, message: str, *, response_started: bool = False,
                 nothing_received: bool = False):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.response_started = response_started
        self.nothing_received = nothing_received

    def __repr__(self) -> str:
        return (f"UpstreamError({self.kind!r}, {self.message!r}, "
                f"response_started={self.response_started}, "
                f"nothing_received={self.nothing_received})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UpstreamError):
            return NotImplemented
        return (self.kind, self.message, self.response_started, self.nothing_received) == (
            other.kind, other.message, other.response_started, other.nothing_received)

    __hash__ = Exception.__hash__


@dataclass(slots=True)
class ResponseHead:
    """A final (non-1xx) response head as the upstream sent it.

    ``headers`` keep the upstream's order, name case and raw values. ``content_length``
    is None unless the body is Content-Length delimited; it is 0 for responses that
    cannot have a body (HEAD, 204, 304). ``keep_alive`` is the head's own verdict
    (version, ``Connection`` and framing); whether the connection is actually reused
    is decided after the body (:attr:`ResponseReader.reusable`).
    """

    status: int
    reason: bytes
    version: str
    headers: list
    content_length: Optional[int]
    chunked: bool
    keep_alive: bool


@dataclass(slots=True)
class ResponseTrailers:
    """The trailer fields of a chunked response, in the upstream's order, name case
    and raw values."""

    headers: list


class _End:
    __slots__ = ()

    def __repr__(self) -> str:
        return "RESPONSE_END"


#: The event that says the response is complete and well framed.
RESPONSE_END = _End()

Event = Union[ResponseHead, bytes, ResponseTrailers, _End, UpstreamError]

# reader states
_IDLE, _HEAD, _BODY, _DONE, _FAILED = range(5)


class _Stop(Exception):
    """Raised from a parser callback to stop llhttp at bytes that follow a response."""


class _Invalid(Exception):
    """Raised from a parser callback when the head breaks one of nginx's rules."""


# Header names the framing depends on, by length: one set lookup rules out the rest
# (Server, Date, Content-Type, ...) without lowering them.
_FRAMING_NAME_LENGTHS = frozenset((10, 14, 17))


class ResponseReader:
    """Parses the responses of one upstream connection (one at a time, no pipelining)."""

    __slots__ = (
        "max_head_size", "_parser", "_parser_clean", "_state", "_events", "_method_head",
        "_sizing", "_reason", "_headers", "_head_size", "_content_length", "_te",
        "_cl_seen", "_conn_close", "_conn_keep_alive", "_close_delimited",
        "_trailers", "_trailer_size", "_last_chunk", "_partial_trailer",
        "received", "extra", "head", "upgrade_data",
    )

    def __init__(self, max_head_size: int = DEFAULT_MAX_HEAD_SIZE):
        self.max_head_size = max_head_size
        self._parser = httptools.HttpResponseParser(self)
        self._parser_clean = True
        self._state = _IDLE
        self._events: Optional[list] = None
        self._method_head = False
        # Counting the head's size only matters once more bytes than the bound
        # arrived (a head is never larger than the bytes that carried it), so the
        # count starts then and small responses skip it.
        self._sizing = False
        self._reset_head()
        #: response bytes received for the current request (0 = nothing arrived)
        self.received = 0
        #: bytes after the end of a response (dropped; the connection is not reusable)
        self.extra = False
        #: the head of the current response once delivered
        self.head: Optional[ResponseHead] = None
        #: after a 101 response: the bytes that followed its head (another protocol)
        self.upgrade_data = b""

    def _reset_head(self) -> None:
        self._reason = b""
        self._headers: list = []
        self._head_size = 0
        self._content_length: Optional[int] = None
        self._te: Optional[bytes] = None
        self._cl_seen = False
        self._conn_close = False
        self._conn_keep_alive = False
        self._close_delimited = False
        self._trailers: Optional[list] = None
        self._trailer_size = 0
        # after a chunk-size line and before any of its data: possibly the last
        # chunk, whose trailer lines llhttp buffers without telling us
        self._last_chunk = False
        self._partial_trailer = 0

    # -- the shell's side --------------------------------------------------------

    @property
    def in_progress(self) -> bool:
        """A request was started and its response is neither complete nor failed."""
        return self._state == _HEAD or self._state == _BODY

    @property
    def complete(self) -> bool:
        return self._state == _DONE

    @property
    def head_received(self) -> bool:
        return self.head is not None

    @property
    def reusable(self) -> bool:
        """The last response ended well framed, kept alive, with nothing after it."""
        head = self.head
        return (self._state == _DONE and head is not None and head.keep_alive
                and not self.extra and head.status != 101)

    def start(self, method: str) -> None:
        """Expect the response to a request made with ``method``."""
        if not self._parser_clean:
            # after a HEAD response llhttp still waits for the body the head announced
            self._parser = httptools.HttpResponseParser(self)
            self._parser_clean = True
        self._method_head = method == "HEAD"
        self._state = _HEAD
        self._sizing = False
        self._reset_head()
        self.received = 0
        self.extra = False
        self.head = None

    def feed(self, data: bytes) -> list:
        """Feed response bytes; return the events they complete."""
        state = self._state
        if state == _DONE or state == _FAILED or state == _IDLE:
            if data:
                self.extra = True
            return []
        if not data:
            return []
        received = self.received
        if received == 0 and not (data.startswith(b"HTTP/") if len(data) >= 5
                                  else b"HTTP/".startswith(data)):
            # llhttp also accepts RTSP/ and ICE/ status lines; nginx wants HTTP/
            self.received = len(data)
            return [self.fail("invalid_header", MSG_NO_VALID_HEADER)]
        received = self.received = received + len(data)
        if received > self.max_head_size and state == _HEAD and not self._sizing:
            self._start_sizing()
        events = self._events = []
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.upgrade_data = data[upgrade.args[0]:]
        except httptools.HttpParserError as exc:
            self._parse_error(exc)
        if self._state == _HEAD and received > self.max_head_size:
            # every byte so far belongs to a head llhttp is still buffering
            events.append(self.fail("invalid_header", MSG_TOO_BIG_HEADER))
        elif self._last_chunk and self._state == _BODY:
            self._check_partial_trailer(data, events)
        self._events = None
        return events

    def _check_partial_trailer(self, data: bytes, events: list) -> None:
        """Bound the trailer line llhttp is still buffering: past the last line feed,
        the bytes after the last chunk-size line are one (the chunk-size line itself
        ends with a line feed fed in the same call that reported it)."""
        newline = data.rfind(b"\n")
        if newline < 0:
            self._partial_trailer += len(data)
        else:
            self._partial_trailer = len(data) - newline - 1
        if self._partial_trailer + self._trailer_size > self.max_head_size:
            events.append(self.fail("error", MSG_TOO_BIG_TRAILERS))

    def _start_sizing(self) -> None:
        """Count what the head so far holds; the callbacks add the rest."""
        self._sizing = True
        self._head_size = len(self._reason) + sum(
            len(name) + len(value) + 4 for name, value in self._headers)

    def feed_eof(self) -> list:
        """The upstream closed the connection; return the last events."""
        state = self._state
        if state == _BODY:
            if self._close_delimited:
                self._state = _DONE
                return [RESPONSE_END]
            return [self.fail("error", MSG_CLOSED_BODY)]
        if state == _HEAD:
            return [self.fail("error", MSG_CLOSED_HEADER)]
        return []

    def abandon(self) -> None:
        """The shell gave up on this response (timeout, close): ignore what follows."""
        self._state = _FAILED

    def fail(self, kind: str, message: str) -> UpstreamError:
        self._state = _FAILED
        return UpstreamError(kind, message, response_started=self.head is not None,
                             nothing_received=self.received == 0)

    def _parse_error(self, exc: Exception) -> None:
        state = self._state
        if state == _DONE or state == _FAILED:
            # llhttp choked on (or was stopped at) bytes after the response
            self.extra = True
            return
        if state == _HEAD:
            text = str(exc)
            if isinstance(exc.__context__, _Invalid):
                message = exc.__context__.args[0]
            elif "Duplicate Content-Length" in text:
                message = MSG_DUPLICATE_CL
            elif "can't be present with" in text:
                message = MSG_CL_AND_TE
            elif self._reason == b"" and not self._headers:
                message = MSG_NO_VALID_HEADER
            else:
                message = MSG_INVALID_HEADER
            self._events.append(self.fail("invalid_header", message))
            return
        # in the body
        if isinstance(exc.__context__, _Invalid):
            message = exc.__context__.args[0]
        elif self.head is not None and self.head.chunked:
            message = MSG_INVALID_CHUNKED
        else:
            message = f"upstream sent invalid response body while reading upstream ({exc})"
        self._events.append(self.fail("error", message))

    # -- httptools callbacks -----------------------------------------------------

    def on_message_begin(self) -> None:
        if self._state == _DONE:
            self.extra = True
            raise _Stop()

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        if self._sizing:
            self._head_size += len(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._state == _BODY:
            self._trailer(name, value)
            return
        self._headers.append((name, value))
        if self._sizing:
            self._head_size += len(name) + len(value) + 4
            if self._head_size > self.max_head_size:
                raise _Invalid(MSG_TOO_BIG_HEADER)
        length = len(name)
        if length not in _FRAMING_NAME_LENGTHS:
            return
        # the usual spelling first: it spares lower()
        if length == 14 and (name == b"Content-Length" or name.lower() == b"content-length"):
            self._cl_seen = True
            try:
                self._content_length = int(value)
            except ValueError:
                raise _Invalid(MSG_INVALID_HEADER) from None
        elif length == 10 and (name == b"Connection" or name.lower() == b"connection"):
            value = value.lower()
            if value == b"keep-alive":
                self._conn_keep_alive = True
            elif value == b"close":
                self._conn_close = True
            else:
                for token in value.split(b","):
                    token = token.strip()
                    if token == b"close":
                        self._conn_close = True
                    elif token == b"keep-alive":
                        self._conn_keep_alive = True
        elif length == 17 and name.lower() == b"transfer-encoding":
            self._te = value if self._te is None else self._te + b", " + value

    def _trailer(self, name: bytes, value: bytes) -> None:
        """A field of the trailer section after the last chunk (only chunked bodies
        have one). Bounded by the head's limit, as nginx bounds trailers by
        ``proxy_buffer_size``."""
        size = self._trailer_size = self._trailer_size + len(name) + len(value) + 4
        if size > self.max_head_size:
            raise _Invalid(MSG_TOO_BIG_TRAILERS)
        trailers = self._trailers
        if trailers is None:
            self._trailers = [(name, value)]
        else:
            trailers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200 and status >= 100 and status != 101:
            return  # interim: on_message_complete follows, the final head after it
        if self._sizing and self._head_size > self.max_head_size:
            raise _Invalid(MSG_TOO_BIG_HEADER)
        version = parser.get_http_version()
        if version == "1.1":
            keep_alive = not self._conn_close
        elif version == "1.0":
            keep_alive = self._conn_keep_alive and not self._conn_close
        else:
            raise _Invalid(MSG_NO_VALID_HEADER)
        te = self._te
        chunked = False
        if te is not None:
            if self._cl_seen:
                raise _Invalid(MSG_CL_AND_TE)
            if te.strip().lower() != b"chunked":
                raise _Invalid(MSG_UNKNOWN_TE)
            chunked = True
        content_length = self._content_length
        if self._method_head or status == 204 or status == 304 or status == 101:
            if status == 101:
                content_length = None
                keep_alive = False
            else:
                content_length = 0
            head = self.head = ResponseHead(status, self._reason, version, self._headers,
                                            content_length, False, keep_alive)
            self._state = _DONE
            self._events += (head, RESPONSE_END)
            if self._method_head:
                self._parser_clean = False
            return
        if not chunked and content_length is None:
            self._close_delimited = True
            keep_alive = False
        head = self.head = ResponseHead(status, self._reason, version, self._headers,
                                        content_length, chunked, keep_alive)
        self._state = _BODY
        self._events.append(head)

    def on_chunk_header(self) -> None:
        self._last_chunk = True
        self._partial_trailer = 0

    def on_body(self, body: bytes) -> None:
        self._last_chunk = False
        if self._state == _BODY:
            self._events.append(body)
        elif self._state == _DONE:
            self.extra = True
            raise _Stop()

    def on_message_complete(self) -> None:
        state = self._state
        if state == _BODY:
            self._state = _DONE
            self._last_chunk = False
            trailers = self._trailers
            if trailers is not None:
                self._trailers = None
                self._events += (ResponseTrailers(trailers), RESPONSE_END)
            else:
                self._events.append(RESPONSE_END)
        elif state == _HEAD:
            self._reset_head()  # an interim 1xx response ended; the real one follows
        # in _DONE: llhttp's own end of a response we already ended (204, 304, HEAD)
