"""The Exchange: one client request and its response, whatever protocol carried it.

HTTP/1.1 (``gateway.http.h1``) and, later, HTTP/2 produce exchanges; routing and every
handler consume them. This module owns the data types and the interfaces between the
two sides; it does no I/O and knows no framing:

- the server protocol fills a :class:`RequestHead` (validated: Host normalised, body
  framing known, smuggling attempts already refused) and :class:`ConnectionInfo`;
- the handler reads the request body through :meth:`Exchange.read_body` (flow-controlled
  by ``pause_body``/``resume_body``; its trailer fields in ``request_trailers`` once it
  ended) and answers through ``send_head`` / ``send_body`` / ``send_trailers`` /
  ``finish`` (or ``abort`` when the response cannot be completed, so the client can
  tell it is truncated);
- the server protocol decides framing (Content-Length, chunked, close-delimited),
  ``Connection``, ``Date`` and ``Server``; handlers never write those.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

from twisted.internet.address import IPv4Address, IPv6Address

Headers = list  # list[tuple[bytes, bytes]]: names as received (case kept), values raw


@dataclass
class ConnectionInfo:
    """Addresses of one client connection (``$remote_addr`` … ``$server_port``).

    The server protocol makes one per accepted connection and gives it to each of its
    exchanges. On a server with ``set_real_ip_from``, when the connection comes from
    one of those addresses, :mod:`gateway.http.realip` gives that exchange a copy
    instead: ``trusted`` is set, ``remote_addr``/``remote_port`` hold the client
    address taken from ``real_ip_header`` (when it had a valid one), and ``original``
    is the connection as accepted (``$realip_remote_addr``). The copy lives as long as
    its exchange, as nginx restores the connection's address after each request.
    ``scheme`` is ``"https"`` and ``tls`` set on TLS connections
    (:func:`gateway.tls.server.connection_tls_info`).
    """

    remote_addr: str          # "127.0.0.1", "::1", or "unix:" for unix sockets
    remote_port: int          # 0 for unix sockets (and for a real IP sent without port)
    server_addr: str
    server_port: int
    scheme: str = "http"      # "https" on TLS listeners
    listener: str = ""        # the endpoint description this connection arrived on
    trusted: bool = False     # the connection comes from the server's set_real_ip_from
    original: Optional["ConnectionInfo"] = None   # as accepted, on a trusted copy
    #: None on cleartext; on TLS a :class:`gateway.tls.server.TLSInfo` (``protocol``,
    #: ``cipher``, ``server_name``, ``client_s_dn``, ``client_verify``), read lazily
    #: from the connection since the handshake ends after the connection is accepted
    tls: Optional[object] = None

    @classmethod
    def of(cls, transport, scheme: str, listener: str,
           tls: Optional[object] = None) -> "ConnectionInfo":
        """The addresses of an accepted ``transport`` (IPv4/IPv6, or ``"unix:"`` and
        port 0 for unix sockets); ``scheme`` becomes ``"https"`` when ``tls`` is set."""
        peer, host = transport.getPeer(), transport.getHost()
        if isinstance(peer, (IPv4Address, IPv6Address)):
            remote_addr, remote_port = peer.host, peer.port
        else:
            remote_addr, remote_port = "unix:", 0
        if isinstance(host, (IPv4Address, IPv6Address)):
            server_addr, server_port = host.host, host.port
        else:
            server_addr, server_port = "unix:", 0
        return cls(remote_addr, remote_port, server_addr, server_port,
                   "https" if tls is not None else scheme, listener, tls=tls)


@dataclass
class RequestHead:
    """A parsed, validated request head.

    ``target`` is the request-target exactly as sent (``$request_uri``). ``path`` is the
    normalised, percent-decoded path (``$uri``) and ``args`` the query string without
    ``?`` (``$args``); both come from ``gateway.http.uri.normalize``. ``host`` is the
    validated, lower-cased host without port or trailing dot (from the absolute-form
    target if any, else the Host header), or ``""`` when neither was given (HTTP/1.0).
    """

    method: str
    target: str
    path: str
    args: str
    version: str                       # "1.0" or "1.1"
    headers: Headers
    host: str = ""
    content_length: Optional[int] = None
    chunked: bool = False
    keep_alive: bool = True
    expect_continue: bool = False
    #: False when the request certainly has no ``Upgrade`` header (the HTTP/1.1
    #: parser knows), so asking for a tunnel costs no header scan
    may_upgrade: bool = True

    def header(self, name: bytes) -> Optional[bytes]:
        """The first value of header ``name`` (lower-case bytes), or None."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def header_values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name]

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


class BodyReceiver(Protocol):
    """What a handler gives :meth:`Exchange.read_body` to receive the request body."""

    def body_data(self, data: bytes) -> None: ...

    def body_end(self) -> None: ...

    def body_error(self, reason: str) -> None:
        """The body will not complete (client gone, 408, 413); the server protocol
        answers the client itself where it still can."""


class Exchange(Protocol):
    """One request/response pair as handlers see it."""

    request: RequestHead
    connection: ConnectionInfo
    start_time: float                  # clock seconds when the request head was complete
    request_id: str                    # 32 hex digits ($request_id)
    # filled in by the handler side for logs and variables:
    variables: dict                    # handler-set values: "upstream_addr", "upstream_status", …
    # response progress (kept by the server protocol):
    status: int                        # 0 until send_head
    body_bytes_sent: int
    bytes_sent: int
    #: The request's trailer fields ``[(name, value)]`` as received (HTTP/1.1: a
    #: chunked body's trailer section; HTTP/2: a trailing HEADERS frame). Empty until
    #: the body ended; set before ``receiver.body_end()`` is called.
    request_trailers: Headers
    #: The client will read response trailers: HTTP/1.1 when the request's ``TE``
    #: header lists ``trailers``; HTTP/2 always.
    accepts_trailers: bool

    def read_body(self, receiver: BodyReceiver) -> None:
        """Start delivering the request body to ``receiver``. Sends ``100 Continue``
        first when the client asked for it. For a request without a body,
        ``receiver.body_end()`` is called at once."""

    def pause_body(self) -> None: ...

    def resume_body(self) -> None: ...

    def send_head(self, status: int, headers: Headers, reason: Optional[bytes] = None) -> None:
        """Start the response. ``headers`` are end-to-end headers only; a
        ``Content-Length`` among them is honoured for framing."""

    def send_body(self, data: bytes) -> None: ...

    def send_trailers(self, headers: Headers) -> None:
        """Trailer fields for the end of the response: called at most once, after the
        last ``send_body`` and right before ``finish``. The handler filters them
        (no hop-by-hop, framing or other fields RFC 9110 §6.5.1 keeps out of
        trailers). HTTP/1.1 writes them in the last chunk of a chunked response when
        :attr:`accepts_trailers`, else drops them; HTTP/2 sends a HEADERS frame that
        ends the stream."""

    def finish(self) -> None:
        """The response is complete. Further pipelined requests may proceed."""

    def abort(self) -> None:
        """The response cannot be completed: close the connection without a proper end
        (no final chunk), so the client sees a truncated response."""

    def send_error(self, status: int, headers: Headers = ()) -> None:
        """A complete error response with nginx's HTML body for ``status``."""

    def register_producer(self, producer) -> None:
        """Backpressure for the response: ``producer.pauseProducing()`` is called
        while the client is not keeping up (a streaming IPushProducer)."""

    def unregister_producer(self) -> None: ...

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` if the client connection goes away before ``finish``."""


#: A handler takes an exchange and answers it, now or later.
Handler = Callable[[Exchange], None]


@dataclass
class UpstreamState:
    """Per-request upstream bookkeeping for ``$upstream_*`` variables: one entry per
    tried peer, in order.

    An entry is text as it is printed (an address, ``"-"`` for a step a try never
    reached, a status or a time written as text) or, as the proxy records them without
    formatting per request, a number: a time as float seconds, a status or a byte count
    as an int. :func:`upstream_text` prints either as nginx does.
    """

    addrs: list[str] = field(default_factory=list)
    statuses: list = field(default_factory=list)
    connect_times: list = field(default_factory=list)
    header_times: list = field(default_factory=list)
    response_times: list = field(default_factory=list)
    #: ``$upstream_queue_time`` (NGINX Plus): time spent in the group's ``queue``
    #: before each try, 0 when it did not wait
    queue_times: list = field(default_factory=list)
    #: ``$upstream_bytes_received`` / ``$upstream_bytes_sent``: bytes read from and
    #: written to the peer for each try (0 for a try that never connected); an
    #: upgraded connection's tunnel bytes included
    bytes_received: list = field(default_factory=list)
    bytes_sent: list = field(default_factory=list)


def upstream_text(value) -> str:
    """One :class:`UpstreamState` entry as nginx prints it: text as it is, seconds with
    millisecond precision (never negative), integers in decimal."""
    kind = value.__class__
    if kind is str:
        return value
    if kind is float:
        return "%.3f" % (value if value > 0.0 else 0.0)
    return str(value)
