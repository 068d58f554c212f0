"""Reason phrases and the gateway's own error pages, as nginx writes them.

This module owns two byte tables: the reason phrase put on a status line (nginx's
``ngx_http_status_lines``, so ``408 Request Time-out`` and ``503 Service Temporarily
Unavailable`` read as an nginx operator expects) and the small HTML page nginx sends
for a status it produces itself (``ngx_http_special_response.c``), with ``nginx``
replaced by ``gateway``. It knows nothing of connections or framing; the HTTP/1.1
and HTTP/2 server protocols put these bytes on the wire.
"""
from __future__ import annotations

from http import HTTPStatus
from typing import Optional

__all__ = ["reason_phrase", "error_page", "status_line"]

# nginx's ngx_http_status_lines; codes it has no line for fall back to the IANA phrase.
_NGINX_REASONS = {
    100: b"Continue",
    101: b"Switching Protocols",
    200: b"OK",
    201: b"Created",
    202: b"Accepted",
    204: b"No Content",
    206: b"Partial Content",
    301: b"Moved Permanently",
    302: b"Moved Temporarily",
    303: b"See Other",
    304: b"Not Modified",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    402: b"Payment Required",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Not Allowed",
    406: b"Not Acceptable",
    408: b"Request Time-out",
    409: b"Conflict",
    410: b"Gone",
    411: b"Length Required",
    412: b"Precondition Failed",
    413: b"Request Entity Too Large",
    414: b"Request-URI Too Large",
    415: b"Unsupported Media Type",
    416: b"Requested Range Not Satisfiable",
    421: b"Misdirected Request",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Temporarily Unavailable",
    504: b"Gateway Time-out",
    505: b"HTTP Version Not Supported",
    507: b"Insufficient Storage",
}

# Titles of nginx's special-response pages (they differ from the status line for 302
# and 401). 431 is not an nginx page (nginx answers 400 "Request Header Or Cookie Too
# Large"); it is written in the same style.
_PAGE_TITLES = {
    301: "301 Moved Permanently",
    302: "302 Found",
    303: "303 See Other",
    307: "307 Temporary Redirect",
    308: "308 Permanent Redirect",
    400: "400 Bad Request",
    401: "401 Authorization Required",
    402: "402 Payment Required",
    403: "403 Forbidden",
    404: "404 Not Found",
    405: "405 Not Allowed",
    406: "406 Not Acceptable",
    408: "408 Request Time-out",
    409: "409 Conflict",
    410: "410 Gone",
    411: "411 Length Required",
    412: "412 Precondition Failed",
    413: "413 Request Entity Too Large",
    414: "414 Request-URI Too Large",
    415: "415 Unsupported Media Type",
    416: "416 Requested Range Not Satisfiable",
    421: "421 Misdirected Request",
    429: "429 Too Many Requests",
    431: "431 Request Header Fields Too Large",
    500: "500 Internal Server Error",
    501: "501 Not Implemented",
    502: "502 Bad Gateway",
    503: "503 Service Temporarily Unavailable",
    504: "504 Gateway Time-out",
    505: "505 HTTP Version Not Supported",
    507: "507 Insufficient Storage",
}

_TAIL = b"<hr><center>gateway</center>\r\n</body>\r\n</html>\r\n"


def _page(title: str) -> bytes:
    return (
        "<html>\r\n<head><title>%s</title></head>\r\n<body>\r\n"
        "<center><h1>%s</h1></center>\r\n" % (title, title)
    ).encode("ascii") + _TAIL


_PAGES = {status: _page(title) for status, title in _PAGE_TITLES.items()}
_REASON_CACHE: dict[int, bytes] = {}
_STATUS_LINES: dict[tuple[bytes, int], bytes] = {}


def reason_phrase(status: int) -> bytes:
    """The reason phrase nginx puts after ``status`` (``b""`` when none is known)."""
    try:
        return _NGINX_REASONS[status]
    except KeyError:
        pass
    phrase = _REASON_CACHE.get(status)
    if phrase is None:
        try:
            phrase = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            phrase = b""
        _REASON_CACHE[status] = phrase
    return phrase


def status_line(version: bytes, status: int, reason: Optional[bytes] = None) -> bytes:
    """``b"HTTP/1.1 404 Not Found\\r\\n"``; cached for the default reasons."""
    if reason is not None:
        return b"%s %d %s\r\n" % (version, status, reason)
    key = (version, status)
    line = _STATUS_LINES.get(key)
    if line is None:
        line = _STATUS_LINES[key] = b"%s %d %s\r\n" % (version, status, reason_phrase(status))
    return line


def error_page(status: int) -> bytes:
    """nginx's HTML body for ``status`` ("gateway" for "nginx"); ``b""`` for statuses
    nginx sends with an empty body (204, 1xx, unknown codes)."""
    return _PAGES.get(status, b"")
