"""TLS on listeners: the certificate SNI chooses, ALPN, client certificates, ``$ssl_*``.

Theory of operation. A listen description whose servers have ``tls`` gets one
:class:`EndpointTLS`, the connection creator handed to Twisted's
``TLSMemoryBIOFactory`` (which wraps whatever protocol factory serves the listener).
Each server has its own OpenSSL ``Context`` (:mod:`gateway.tls._files`). A connection
starts on the default server's context (the ``default = true`` server of the listen
description, else the first); when the client sends SNI, the name is validated and
looked up with nginx's ``server_name`` precedence (exact, longest leading wildcard,
longest trailing wildcard, first matching regex: :class:`ServerSelector`'s) and, when
a server matches, the connection switches to that server's context: its certificate,
client CA list and verify mode, as nginx's ``ngx_http_ssl_servername`` does. No SNI or
an unknown name keeps the default server's certificate. As in nginx, the protocol
versions and cipher list in force are the default server's (OpenSSL has chosen the
version before the SNI callback runs), and SNI chooses only the certificate: the
request's Host still chooses the server that answers.

ALPN follows ``ngx_http_ssl_alpn_select``: the server chosen by SNI offers
``h2`` (when it has ``http2`` and the listener can speak HTTP/2), ``http/1.1`` and
``http/1.0``, in that order of preference; a client offering none of them gets the
``no_application_protocol`` alert.

Client certificates (``verify_client``) are asked for in the handshake and never
refused there; :class:`ClientCertificateCheck` judges each request as nginx's
``ngx_http_process_request`` does: a certificate that did not verify → 400 "The SSL
certificate error"; ``on`` and no certificate → 400 "No required SSL certificate was
sent"; and, from ``ngx_http_set_virtual_server``, a request whose Host names another
server than the SNI chose, when the server it reaches verifies clients → 421.

A client that speaks cleartext HTTP to a TLS port gets nginx's 400 "The plain HTTP
request was sent to HTTPS port" (its 497 page) at once, and the connection closes.

:func:`connection_tls_info` gives the HTTP protocols a :class:`TLSInfo` per connection
(``None`` on cleartext), read lazily from OpenSSL: ``$ssl_protocol``, ``$ssl_cipher``,
``$ssl_server_name``, ``$ssl_client_s_dn``, ``$ssl_client_verify``,
``$ssl_session_reused``.

Which HTTP protocol serves a negotiated ``h2`` is :mod:`gateway.http.negotiate`'s;
choosing the server by Host is :mod:`gateway.http.routing`'s; TLS to upstreams is
:mod:`gateway.tls.client`'s.
"""
from __future__ import annotations

from email.utils import formatdate
from typing import Callable, Optional, Sequence

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.logger import Logger
from zope.interface import implementer

from gateway.http.host import validate_host
from gateway.http.routing import ServerSelector
from gateway.tls._dn import rfc2253_name
from gateway.tls._files import TLSFilesError, build_context
from gateway.tls._openssl import (
    X509_V_OK,
    session_reused,
    set_verify_mode,
    verify_error_string,
    verify_result,
)

__all__ = [
    "ALPN_HTTP1", "ALPN_HTTP2", "ClientCertificateCheck", "EndpointTLS", "TLSFilesError",
    "TLSInfo", "client_certificate_check", "connection_tls_info", "tls_factory",
]

log = Logger()

ALPN_HTTP2 = b"h2"
#: nginx's NGX_HTTP_ALPN_PROTOS without "http/0.9", which the gateway does not serve
ALPN_HTTP1 = (b"http/1.1", b"http/1.0")

# ngx_http_special_response.c's 495, 496 and 497 pages, sent with status 400
_TAIL = b"<hr><center>gateway</center>\r\n</body>\r\n</html>\r\n"
CERT_ERROR_PAGE = (
    b"<html>\r\n<head><title>400 The SSL certificate error</title></head>\r\n<body>\r\n"
    b"<center><h1>400 Bad Request</h1></center>\r\n"
    b"<center>The SSL certificate error</center>\r\n" + _TAIL)
NO_CERT_PAGE = (
    b"<html>\r\n<head><title>400 No required SSL certificate was sent</title></head>\r\n"
    b"<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n"
    b"<center>No required SSL certificate was sent</center>\r\n" + _TAIL)

PLAIN_HTTP_PAGE = (
    b"<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title>"
    b"</head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n"
    b"<center>The plain HTTP request was sent to HTTPS port</center>\r\n" + _TAIL)


class NoApplicationProtocol(SSL.Error):
    """Raised in the ALPN callback so OpenSSL sends ``no_application_protocol`` and the
    handshake fails (Twisted closes the connection on an ``SSL.Error``)."""


class _NameMatcher(ServerSelector):
    """``server_name`` lookup that tells "no server has this name" (None) apart from
    a match: for SNI, where no match keeps the default certificate, and for the 421
    check, which applies only when the SNI name matched a server."""

    def __init__(self, servers: Sequence) -> None:
        super().__init__(servers)
        self.default = None        # ServerSelector.select falls back to this


# -- per connection -----------------------------------------------------------------


class TLSInfo:
    """The TLS side of one client connection, read from OpenSSL when asked (the
    handshake completes after the HTTP protocol's ``connectionMade``; requests arrive
    only after it). Values are nginx's variables of the same names."""

    __slots__ = ("_conn", "_client_s_dn")

    def __init__(self, connection: SSL.Connection):
        self._conn = connection
        self._client_s_dn: Optional[str] = None

    @property
    def protocol(self) -> str:
        """``$ssl_protocol``: ``"TLSv1.3"``, ``"TLSv1.2"``…"""
        return self._conn.get_protocol_version_name()

    @property
    def cipher(self) -> str:
        """``$ssl_cipher``: OpenSSL's name, ``"TLS_AES_256_GCM_SHA384"``…"""
        return self._conn.get_cipher_name() or ""

    @property
    def server_name(self) -> str:
        """``$ssl_server_name``: the SNI the client sent, or ``""``."""
        name = self._conn.get_servername()
        return name.decode("latin-1") if name else ""

    @property
    def alpn_protocol(self) -> str:
        """The protocol ALPN negotiated (``"h2"``, ``"http/1.1"``) or ``""``."""
        return self._conn.get_alpn_proto_negotiated().decode("latin-1")

    @property
    def session_reused(self) -> str:
        """``$ssl_session_reused``: ``"r"`` when the session was resumed, else ``"."``."""
        return "r" if session_reused(self._conn) else "."

    @property
    def has_client_certificate(self) -> bool:
        return self._conn.get_peer_certificate() is not None

    @property
    def verify_result(self) -> int:
        """OpenSSL's ``X509_V_*`` code for the client certificate (0: verified, or none
        was sent)."""
        return verify_result(self._conn)

    @property
    def client_s_dn(self) -> str:
        """``$ssl_client_s_dn``: the client certificate's subject in RFC 2253 form, as
        nginx ≥ 1.11.6 prints it, or ``""``."""
        if self._client_s_dn is None:
            peer = self._conn.get_peer_certificate()
            if peer is None:
                return ""
            self._client_s_dn = rfc2253_name(peer.get_subject().der())
        return self._client_s_dn

    @property
    def client_verify(self) -> str:
        """``$ssl_client_verify``: ``"NONE"`` (no certificate), ``"SUCCESS"``, or
        ``"FAILED:"`` and OpenSSL's reason, as ``ngx_ssl_get_client_verify``."""
        if self._conn.get_peer_certificate() is None:
            return "NONE"
        result = verify_result(self._conn)
        if result == X509_V_OK:
            return "SUCCESS"
        return "FAILED:" + verify_error_string(result)


def connection_tls_info(transport) -> Optional[TLSInfo]:
    """The :class:`TLSInfo` of a connection whose transport is TLS (Twisted's
    ``TLSMemoryBIOProtocol``), or ``None`` on cleartext."""
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    handle = get_handle()
    return TLSInfo(handle) if isinstance(handle, SSL.Connection) else None


# -- per listen description -----------------------------------------------------------


@implementer(IOpenSSLServerConnectionCreator)
class EndpointTLS:
    """TLS for one listen description whose servers all have ``tls``.

    ``offer_h2`` says whether the listener's protocol factory speaks HTTP/2; a server
    offers ``h2`` by ALPN only when it is true and the server has ``http2``.
    Raises :class:`TLSFilesError` when a server's files cannot be used.
    """

    def __init__(self, servers: Sequence, offer_h2: bool = True):
        self.servers = tuple(servers)
        self.default = ServerSelector(self.servers).default
        self._names = _NameMatcher(self.servers)
        self._contexts: dict[int, SSL.Context] = {}
        for server in self.servers:
            alpn = ((ALPN_HTTP2,) if offer_h2 and server.http2 else ()) + ALPN_HTTP1
            self._contexts[server.index] = build_context(server.tls, _alpn_setup(alpn))
        self._default_context = self._contexts[self.default.index]
        self._default_context.set_tlsext_servername_callback(self._servername)
        self._default_verify_mode = self._default_context.get_verify_mode()

    def serverConnectionForTLS(self, tls_protocol) -> SSL.Connection:
        return SSL.Connection(self._default_context, None)

    def _servername(self, connection: SSL.Connection) -> None:
        name = connection.get_servername()
        if not name:
            return
        host = validate_host(name)
        server = self._names.select(host) if host is not None else None
        if server is None or server.index == self.default.index:
            return
        context = self._contexts[server.index]
        connection.set_context(context)
        # SSL_set_SSL_CTX changes the certificate only; nginx sets the verify mode too
        mode = context.get_verify_mode()
        if mode != self._default_verify_mode:
            set_verify_mode(connection, mode)


class _ServerTLSProtocol(TLSMemoryBIOProtocol):
    """Twisted's TLS protocol (not its buffering subclass, which schedules a
    ``callLater(0)`` per write burst; the HTTP protocols already write a response
    head with its body), answering a cleartext HTTP request as nginx does."""

    _first_read = True

    def dataReceived(self, data: bytes) -> None:
        if self._first_read:
            self._first_read = False
            # ngx_http_ssl_handshake: a first byte that starts no TLS (0x16) or SSLv2
            # record (high bit) is plain HTTP on the TLS port
            if data and data[0] != 0x16 and data[0] < 0x80:
                self._plain_http()
                return
        super().dataReceived(data)

    def _plain_http(self) -> None:
        date = formatdate(self.factory.clock.seconds(), usegmt=True).encode()
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\nServer: gateway\r\nDate: " + date
            + b"\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
              b"Connection: close\r\n\r\n" % len(PLAIN_HTTP_PAGE) + PLAIN_HTTP_PAGE)
        self.transport.loseConnection()


class _ServerTLSFactory(TLSMemoryBIOFactory):
    protocol = _ServerTLSProtocol

    def __init__(self, creator, factory, clock):
        super().__init__(creator, False, factory, clock=clock)
        self.clock = clock


def tls_factory(servers: Sequence, factory, clock) -> TLSMemoryBIOFactory:
    """``factory`` (the listener's protocol factory) behind TLS for ``servers``.
    ``h2`` is offered when ``factory.alpn_protocols`` lists it (the negotiating
    factory has an HTTP/2 side). A client speaking cleartext HTTP to the port gets
    nginx's 400 "The plain HTTP request was sent to HTTPS port" and a close."""
    offer_h2 = ALPN_HTTP2 in getattr(factory, "alpn_protocols", ())
    return _ServerTLSFactory(EndpointTLS(servers, offer_h2=offer_h2), factory, clock)


def _alpn_setup(offered: tuple[bytes, ...]) -> Callable[[SSL.Context], None]:
    def select(connection: SSL.Connection, client_protocols: list[bytes]) -> bytes:
        # SSL_select_next_proto: the first of the server's list the client offers
        for protocol in offered:
            if protocol in client_protocols:
                return protocol
        raise NoApplicationProtocol("no application protocol in common")

    def setup(context: SSL.Context) -> None:
        # always set explicitly: see DESIGN.md's trap about Twisted's default callback
        context.set_alpn_select_callback(select)

    return setup


# -- per request ------------------------------------------------------------------------


class ClientCertificateCheck:
    """The handler of a TLS listener with ``verify_client`` on some server: nginx's
    checks before a request is processed, then ``handler``."""

    def __init__(self, handler: Callable, servers: Sequence):
        self.handler = handler
        self._names = _NameMatcher(servers)

    def __call__(self, exchange) -> None:
        tls = exchange.connection.tls
        settings = exchange.server.tls
        if tls is None or settings is None or settings.verify_client == "off":
            self.handler(exchange)
            return
        sni = tls.server_name
        if sni:
            sni_host = validate_host(sni.encode("latin-1"))
            if (sni_host is not None and sni_host != exchange.request.host
                    and self._names.select(sni_host) is not None):
                log.info("client attempted to request the server name different from "
                         "the one that was negotiated")
                exchange.send_error(421)
                return
        result = tls.verify_result
        if result != X509_V_OK:
            log.info("client SSL certificate verify error: ({result}:{reason})",
                     result=result, reason=verify_error_string(result))
            _bad_request(exchange, CERT_ERROR_PAGE)
            return
        if settings.verify_client == "on" and not tls.has_client_certificate:
            log.info("client sent no required SSL certificate")
            _bad_request(exchange, NO_CERT_PAGE)
            return
        self.handler(exchange)


def client_certificate_check(handler: Callable, servers: Sequence) -> Callable:
    """``handler`` wrapped in :class:`ClientCertificateCheck` when a server of the
    listener verifies client certificates, else ``handler`` itself."""
    if any(s.tls is not None and s.tls.verify_client != "off" for s in servers):
        return ClientCertificateCheck(handler, servers)
    return handler


def _bad_request(exchange, page: bytes) -> None:
    # nginx answers 495/496 as 400 with their own page and drops keepalive
    if hasattr(exchange, "keep_alive"):
        exchange.keep_alive = False
    exchange.send_head(400, [(b"Content-Type", b"text/html"),
                             (b"Content-Length", b"%d" % len(page))])
    if exchange.request.method != "HEAD":
        exchange.send_body(page)
    exchange.finish()
