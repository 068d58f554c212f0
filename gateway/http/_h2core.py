"""The sans-IO decisions of the HTTP/2 server: the configured ``h2`` connection, request
validation, and the flood accounting. No transports, no timers, no exchanges.

Theory of operation
-------------------
The ``h2`` library does the framing, HPACK, stream states, flow-control windows and
most connection errors of RFC 9113 (bad preface, frames on stream 0 that must not be
there, even or decreasing stream ids, WINDOW_UPDATE overflow, bad SETTINGS values, DATA
on closed streams). :func:`new_connection` configures it as the gateway needs:

- inbound header *validation* is ours (:func:`parse_request`), because ``h2`` treats a
  malformed request as a connection error, where RFC 9113 §8.1.1 makes it a stream
  error: the shell answers :class:`Malformed` with ``RST_STREAM PROTOCOL_ERROR`` and
  :class:`Refused` with an HTTP error response on that stream, as nginx does;
- ``SETTINGS_MAX_CONCURRENT_STREAMS`` is advertised as ``MAX_CONCURRENT_STREAMS`` (nginx's
  ``http2_max_concurrent_streams``), and the shell refuses streams beyond it with
  ``RST_STREAM REFUSED_STREAM`` (nginx); ``h2``'s own check, a connection error, only
  fires at twice that, for clients that ignore the setting altogether;
- a header block (HEADERS and its CONTINUATIONs) larger than ``header_block_limit`` or
  split into more than :data:`CONTINUATION_LIMIT` frames is a connection error
  ``ENHANCE_YOUR_CALM`` before it is decoded (the CONTINUATION flood), and so is a
  decoded header list above the advertised ``SETTINGS_MAX_HEADER_LIST_SIZE`` (``h2``);
  a header block HPACK cannot decode is ``COMPRESSION_ERROR`` (``h2`` would say
  ``PROTOCOL_ERROR``);
- the connection receive window is opened to 2^31-1 at once (nginx does the same), so
  only stream windows pace uploads: a stream's window is handed back only as its handler
  consumes the body.

:class:`FloodGuard` counts what costs the gateway work but gives a client nothing of
value (client resets, PING, SETTINGS, PRIORITY, empty DATA frames) per time window and
says when a connection has gone over (``GOAWAY ENHANCE_YOUR_CALM``).

Outbound headers are lower-cased and hop-by-hop ones dropped here too
(:func:`response_headers`), so ``h2``'s outbound validation is switched off.

WebSocket over HTTP/2 (RFC 8441) is decided here as well: ``SETTINGS_ENABLE_CONNECT_PROTOCOL``
is advertised, an extended CONNECT (``:protocol``, with ``:scheme``, ``:path`` and
``:authority``, RFC 8441 §4) with ``:protocol = websocket`` becomes the ``GET`` an
HTTP/1.1 client would have sent (:func:`websocket_handshake`: ``Upgrade``, ``Connection``
and a fresh ``Sec-WebSocket-Key``), and the upstream's ``101`` becomes the ``200`` that
opens the stream's tunnel (:func:`websocket_response_headers`). A plain CONNECT keeps
getting nginx's 405; any other ``:protocol`` gets 501, as no other protocol has a
mapping to an HTTP/1.1 Upgrade here.
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
from typing import NamedTuple, Optional, Union

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import DenialOfServiceError, ProtocolError
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes, Settings
from hpack import Decoder, HPACKError, OversizedHeaderListError
from hyperframe.frame import ContinuationFrame, HeadersFrame

from gateway.http.exchange import RequestHead
from gateway.http.host import validate_host
from gateway.http.uri import InvalidURI, normalize

__all__ = [
    "MAX_CONCURRENT_STREAMS", "CONTINUATION_LIMIT", "FloodGuard", "Malformed", "Refused",
    "Request", "new_connection", "parse_request", "parse_trailers", "response_headers",
    "websocket_accept", "websocket_handshake", "websocket_response_headers",
]

#: nginx's http2_max_concurrent_streams
MAX_CONCURRENT_STREAMS = 128
#: frames one header block may be split into (h2 itself allows 64)
CONTINUATION_LIMIT = 16
#: the connection receive window, opened once at the start (nginx: NGX_HTTP_V2_MAX_WINDOW)
MAX_WINDOW = 2 ** 31 - 1

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Malformed(NamedTuple):
    """A request RFC 9113 calls malformed: ``RST_STREAM PROTOCOL_ERROR``."""
    reason: str


class Refused(NamedTuple):
    """A well-formed request nginx refuses with an HTTP status (400, 405, 413, 431)."""
    status: int
    reason: str
    head: RequestHead


class Calm(NamedTuple):
    """A request that is an attack rather than a mistake: ``GOAWAY ENHANCE_YOUR_CALM``."""
    reason: str


class Request(NamedTuple):
    head: RequestHead
    server: object        # ServerSettings
    head_length: int
    #: the ``:protocol`` of an extended CONNECT (RFC 8441): ``b"websocket"``, its
    #: head already turned into the HTTP/1.1 handshake; None for other requests
    protocol: Optional[bytes] = None


# -- the connection ------------------------------------------------------------------


class _ServerSettings(Settings):
    """Local settings that advertise ``MAX_CONCURRENT_STREAMS`` but let h2 enforce only
    twice that: the shell refuses the streams in between with REFUSED_STREAM."""

    @property
    def max_concurrent_streams(self) -> int:
        return 2 * MAX_CONCURRENT_STREAMS

    @max_concurrent_streams.setter
    def max_concurrent_streams(self, value: int) -> None:
        self[SettingCodes.MAX_CONCURRENT_STREAMS] = value


class _FrameSizeError(ProtocolError):
    error_code = ErrorCodes.FRAME_SIZE_ERROR


class _BoundedFrameBuffer(FrameBuffer):
    """h2's frame buffer with a bound on a header block still being received."""

    header_block_limit = 64 * 1024

    def __next__(self):
        try:
            return FrameBuffer.__next__(self)
        except ProtocolError as e:
            data = self._data
            if type(e) is ProtocolError and len(data) >= 9 and data[3] == 0x4 and data[4] & 1:
                # RFC 9113 §6.5: a SETTINGS ACK with a payload (h2: PROTOCOL_ERROR)
                raise _FrameSizeError("SETTINGS ACK with a payload") from e
            raise

    def _update_header_buffer(self, f):
        pending = self._headers_buffer
        if pending and type(f) is ContinuationFrame:
            if len(pending) >= CONTINUATION_LIMIT:
                raise DenialOfServiceError("too many CONTINUATION frames")
            if sum(len(x.data) for x in pending) + len(f.data) > self.header_block_limit:
                raise DenialOfServiceError("too large header block")
        elif type(f) is HeadersFrame and len(f.data) > self.header_block_limit:
            raise DenialOfServiceError("too large header block")
        return FrameBuffer._update_header_buffer(self, f)


class _CompressionError(ProtocolError):
    error_code = ErrorCodes.COMPRESSION_ERROR


class _Decoder(Decoder):
    """HPACK decoding whose failures are COMPRESSION_ERROR (RFC 9113 §4.3); h2 would
    report them as PROTOCOL_ERROR."""

    def decode(self, data, raw=False):
        try:
            return Decoder.decode(self, data, raw)
        except OversizedHeaderListError:
            raise
        except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as e:
            raise _CompressionError("invalid header block: %s" % e) from e


_CONFIG = H2Configuration(
    client_side=False, header_encoding=None,
    validate_outbound_headers=False, normalize_outbound_headers=False,
    validate_inbound_headers=False, normalize_inbound_headers=True,
)


def new_connection(header_list_limit: int) -> H2Connection:
    """A server-side ``H2Connection`` with the gateway's settings. ``header_list_limit``
    is the largest decoded header list accepted (``SETTINGS_MAX_HEADER_LIST_SIZE``);
    the encoded block is bounded by the same number."""
    conn = H2Connection(_CONFIG)
    conn.local_settings = _ServerSettings(client=False, initial_values={
        SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
        SettingCodes.MAX_HEADER_LIST_SIZE: header_list_limit,
        SettingCodes.ENABLE_PUSH: 0,
        # RFC 8441 §3: extended CONNECT, for WebSocket over HTTP/2
        SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
    })
    conn.decoder = _Decoder()
    conn.decoder.max_header_list_size = header_list_limit
    buffer = _BoundedFrameBuffer(server=True)
    buffer.header_block_limit = header_list_limit
    conn.incoming_buffer = buffer
    return conn


# -- requests ---------------------------------------------------------------------

#: RFC 9113 §8.2.1: a field name must not contain these (nor be empty)
_BAD_NAME = re.compile(rb"[\x00-\x20A-Z:\x7f-\xff]").search
#: nginx's ngx_http_v2_validate_header: NUL, CR, LF in a value
_BAD_VALUE = re.compile(rb"[\x00\r\n]").search
#: RFC 9113 §8.2.2: connection-specific fields make a request malformed
_CONNECTION_SPECIFIC = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
})
_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority", b":protocol"})


def parse_request(headers, selector, ended: bool = False
                  ) -> Union[Request, Malformed, Refused, Calm]:
    """Validate the header list of a new stream (names as ``h2`` decoded them, cookie
    crumbs joined; ``ended``: the HEADERS frame had END_STREAM) and make its
    :class:`RequestHead`.

    ``selector`` has ``.default`` and ``.select(host)``: the size limits come from the
    default server (``large_client_header_buffers``: one field longer is
    ``ENHANCE_YOUR_CALM`` as in nginx, a list above four buffers 431), the body limit
    from the server chosen by the host (``:authority``, or ``Host`` when sent).
    """
    line_limit = selector.default.large_client_header_buffers
    method = scheme = path = authority = protocol = None
    host_header = None
    duplicate_host = False
    content_length = None
    expect = False
    regular: list = []
    total = 0
    for name, value in headers:
        size = len(name) + len(value)
        if len(name) > line_limit or len(value) > line_limit:
            return Calm("client sent too large header field")
        total += size
        if name[:1] == b":":
            if regular:
                return Malformed("client sent pseudo-header after regular header")
            if name not in _PSEUDO:
                return Malformed("client sent invalid pseudo-header %r" % name)
            if _BAD_VALUE(value):
                return Malformed("client sent invalid value of %r" % name)
            if name == b":method":
                if method is not None:
                    return Malformed("client sent duplicate :method")
                method = value
            elif name == b":path":
                if path is not None:
                    return Malformed("client sent duplicate :path")
                path = value
            elif name == b":scheme":
                if scheme is not None:
                    return Malformed("client sent duplicate :scheme")
                scheme = value
            elif name == b":protocol":
                if protocol is not None:
                    return Malformed("client sent duplicate :protocol")
                protocol = value
            else:
                if authority is not None:
                    return Malformed("client sent duplicate :authority")
                authority = value
            continue
        if not name or _BAD_NAME(name):
            return Malformed("client sent invalid header name %r" % name)
        if _BAD_VALUE(value):
            return Malformed("client sent header %r with invalid value" % name)
        if name in _CONNECTION_SPECIFIC:
            return Malformed("client sent connection-specific header %r" % name)
        if name == b"te" and value != b"trailers":
            return Malformed("client sent TE other than \"trailers\"")
        if name == b"host":
            if host_header is not None:
                duplicate_host = True
            host_header = value
        elif name == b"content-length":
            content_length = value
        elif name == b"expect":
            expect = value.lower() == b"100-continue"
        regular.append((name, value))

    if not method:
        return Malformed("client sent no :method")
    method_text = method.decode("latin-1")
    if protocol is not None:
        # RFC 8441 §4: only on CONNECT, which then has the usual :scheme and :path,
        # and :authority as any request; a CONNECT has no content (RFC 9110 §9.3.6)
        if method_text != "CONNECT":
            return Malformed("client sent :protocol in a %s request" % method_text)
        if not protocol or not scheme or not path or not authority:
            return Malformed("client sent invalid extended CONNECT request")
        if content_length is not None:
            return Malformed("client sent Content-Length in extended CONNECT request")
    elif method_text == "CONNECT":
        # RFC 9113 §8.5 CONNECT has no :scheme and :path; nginx refuses it with 405
        if scheme is not None or path is not None or authority is None:
            return Malformed("client sent invalid CONNECT request")
    elif not scheme or not path:
        return Malformed("client sent no :scheme or :path")
    target = path.decode("latin-1") if path is not None else ""
    if authority is not None and host_header is None:
        regular.insert(0, (b"host", authority))
    head = RequestHead(method_text, target, target, "", "2.0", regular)
    if total > 4 * line_limit:
        return Refused(431, "client sent too large request head", head)
    if protocol is not None:
        if protocol.lower() != WEBSOCKET:
            return Refused(501, "client sent unsupported :protocol %r" % protocol, head)
        protocol = WEBSOCKET
        websocket_handshake(head)
    elif method_text in ("CONNECT", "TRACE"):
        return Refused(405, "client sent %s method" % method_text, head)
    if duplicate_host:
        return Refused(400, "client sent duplicate host header", head)
    if target[:1] != "/" and not (target == "*" and method_text == "OPTIONS"):
        return Refused(400, "client sent invalid :path header", head)
    try:
        head.path, head.args = normalize(target)
    except InvalidURI:
        return Refused(400, "client sent invalid request", head)
    host = ""
    raw_host = host_header if host_header is not None else authority
    if raw_host is not None:
        checked = validate_host(raw_host)
        if checked is None:
            return Refused(400, "client sent invalid host header", head)
        host = checked
        if (host_header is not None and authority is not None
                and validate_host(authority) != host):
            # RFC 9113 §8.3.1: a Host naming another entity than :authority
            return Malformed("client sent Host header not matching :authority")
    head.host = host
    if content_length is not None:
        # h2 has refused a non-numeric or conflicting value already, and checks DATA
        # against it, but not a request that ends with its HEADERS
        head.content_length = int(content_length)
        if ended and head.content_length:
            return Malformed("client sent Content-Length but no body")
    server = selector.select(host)
    limit = server.client_max_body_size
    if limit and head.content_length is not None and head.content_length > limit:
        return Refused(413, "client intended to send too large body", head)
    head.expect_continue = expect
    return Request(head, server, total + len(target) + len(method), protocol)


def parse_trailers(headers) -> Optional[list]:
    """Request trailers as a header list, or None when malformed (pseudo-headers or
    invalid fields in a trailer section)."""
    trailers = []
    for name, value in headers:
        if not name or name[:1] == b":" or _BAD_NAME(name) or _BAD_VALUE(value):
            return None
        if name in _CONNECTION_SPECIFIC:
            return None
        trailers.append((name, value))
    return trailers


# -- responses --------------------------------------------------------------------

#: never sent on HTTP/2 responses (RFC 9113 §8.2.2), with the framing h2 owns
_NOT_SENT = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
    b"upgrade", b"te", b"trailer",
})
_SERVER_HEADER = (b"server", b"gateway")
_STATUS = {status: (b":status", b"%d" % status) for status in range(100, 600)}


def response_headers(status: int, headers, date: Optional[bytes]):
    """``(header list, content_length)`` for ``send_head``: ``:status``, ``server`` and
    ``date`` unless the handler passes its own, then the handler's headers lower-cased
    without hop-by-hop ones. A bad ``Content-Length`` raises ``ValueError``."""
    out = [_STATUS.get(status) or (b":status", b"%d" % status)]
    own_server = own_date = True
    content_length = None
    rest = []
    for name, value in headers:
        name = name.lower()
        if name in _NOT_SENT:
            continue
        if name == b"content-length":
            try:
                content_length = int(value)
            except ValueError:
                raise ValueError("invalid Content-Length %r" % (value,))
        elif name == b"server":
            own_server = False
        elif name == b"date":
            own_date = False
        rest.append((name, value))
    if own_server:
        out.append(_SERVER_HEADER)
    if own_date and date is not None:
        out.append((b"date", date))
    out += rest
    return out, content_length


def trailer_headers(headers) -> list:
    """Response trailers lower-cased, without pseudo and hop-by-hop fields."""
    return [(name.lower(), value) for name, value in headers
            if name[:1] != b":" and name.lower() not in _NOT_SENT]


# -- WebSocket over HTTP/2 (RFC 8441) ----------------------------------------------

WEBSOCKET = b"websocket"
#: RFC 6455 §1.3
_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: fields of the peer's 101 that are the HTTP/1.1 handshake's own (RFC 8441 §5: no
#: Sec-WebSocket-Accept on HTTP/2), or that a 2xx to CONNECT must not have (RFC 9110
#: §9.3.6); Upgrade, Connection and the rest of the hop-by-hop fields go as always
_NOT_IN_TUNNEL_RESPONSE = frozenset({b"sec-websocket-accept", b"content-length"})


def websocket_handshake(head: RequestHead) -> None:
    """Make the head of an extended CONNECT ``:protocol = websocket`` the HTTP/1.1
    handshake a WebSocket client sends (RFC 6455 §4.1), in place: ``GET``, with
    ``Upgrade: websocket``, ``Connection: upgrade`` and a fresh ``Sec-WebSocket-Key``
    (RFC 8441 §5: HTTP/2 clients send none; one sent anyway is replaced). The rest —
    ``Sec-WebSocket-Version``, ``-Protocol``, ``-Extensions``, ``Origin`` — is the
    client's, so ``$http_upgrade`` and ``proxy_set_header`` see what they see on
    HTTP/1.1."""
    head.method = "GET"
    headers = [header for header in head.headers if header[0] != b"sec-websocket-key"]
    headers += [
        (b"upgrade", WEBSOCKET),
        (b"connection", b"upgrade"),
        (b"sec-websocket-key", base64.b64encode(os.urandom(16))),
    ]
    head.headers = headers


def websocket_accept(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` a server answers to ``key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _WEBSOCKET_GUID).digest())


def websocket_response_headers(head: RequestHead, headers, date: Optional[bytes]):
    """The ``200`` block that opens the tunnel for a peer's ``101`` to the handshake
    :func:`websocket_handshake` made, or None when the peer's ``Sec-WebSocket-Accept``
    does not answer its key (RFC 6455 §4.1: the handshake failed). The peer's other
    fields pass (``Sec-WebSocket-Protocol``, ``-Extensions`` …) as for any response."""
    key = head.header(b"sec-websocket-key")
    accept = None
    kept = []
    for name, value in headers:
        lower = name.lower()
        if lower in _NOT_IN_TUNNEL_RESPONSE:
            if lower == b"sec-websocket-accept":
                accept = value.strip()
            continue
        kept.append((name, value))
    if key is None or accept != websocket_accept(key):
        return None
    block, _ = response_headers(200, kept, date)
    return block


# -- floods -----------------------------------------------------------------------


class FloodGuard:
    """Per-connection counters of frames that make the gateway work for nothing.

    Counted per ``window`` seconds (the counts restart when a window has passed, checked
    as frames arrive, so no timer): client ``RST_STREAM`` (rapid reset, CVE-2023-44487:
    more than ``max_resets``), and PING, SETTINGS, PRIORITY and empty DATA frames
    (CVE-2019-9512/9515/9516/9518: more than ``max_control``). While the client does not
    read (the shell says so), each of its PING/SETTINGS queues an answer: more than
    ``max_unread_control`` of them in a row is a flood as well.
    """

    __slots__ = ("window", "max_resets", "max_control", "max_unread_control",
                 "_start", "resets", "control", "unread_control")

    def __init__(self, window: float = 10.0, max_resets: int = 200,
                 max_control: int = 10000, max_unread_control: int = 100):
        self.window = window
        self.max_resets = max_resets
        self.max_control = max_control
        self.max_unread_control = max_unread_control
        self._start = 0.0
        self.resets = 0
        self.control = 0
        self.unread_control = 0

    def _roll(self, now: float) -> None:
        if now - self._start >= self.window:
            self._start = now
            self.resets = 0
            self.control = 0

    def reset(self, now: float) -> Optional[str]:
        """A client RST_STREAM; the reason when it is one too many."""
        self._roll(now)
        self.resets += 1
        if self.resets > self.max_resets:
            return "client sent too many RST_STREAM frames (rapid reset)"
        return None

    def control_frame(self, now: float, answered: bool, client_reading: bool
                      ) -> Optional[str]:
        """A PING/SETTINGS (``answered``: we owe an ACK) or PRIORITY/empty DATA frame."""
        self._roll(now)
        self.control += 1
        if self.control > self.max_control:
            return "client sent too many control frames"
        if answered:
            if client_reading:
                self.unread_control = 0
            else:
                self.unread_control += 1
                if self.unread_control > self.max_unread_control:
                    return "client does not read the answers to its control frames"
        return None


ENHANCE_YOUR_CALM = ErrorCodes.ENHANCE_YOUR_CALM
PROTOCOL_ERROR = ErrorCodes.PROTOCOL_ERROR
REFUSED_STREAM = ErrorCodes.REFUSED_STREAM
INTERNAL_ERROR = ErrorCodes.INTERNAL_ERROR
NO_ERROR = ErrorCodes.NO_ERROR
CANCEL = ErrorCodes.CANCEL
