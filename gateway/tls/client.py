"""TLS towards upstream peers: one client context per upstream group, checked per connection.

This module owns the TLS side of ``proxy_pass https://…`` (and of ``grpcs://`` once it
exists) for one upstream group, from the group's ``tls`` table (CONFIG.md):

- :class:`UpstreamTLS` is built once per group used with ``https://``: one OpenSSL
  context (TLS 1.2 and 1.3, nginx's ``proxy_ssl_protocols`` default) with the trust
  anchors (``ca``, else the system store through OpenSSL's default paths), the client
  certificate for mutual TLS, and the last TLS session of each peer;
- :meth:`UpstreamTLS.for_peer` gives the :class:`PeerTLS` of one connection attempt: an
  ``IOpenSSLClientConnectionCreator`` for ``TLSMemoryBIOFactory`` that sends SNI, offers
  the peer's last session for resumption, and after the handshake says whether the peer
  may be used (:meth:`PeerTLS.check`).

Verification follows nginx's ``ngx_http_upstream_ssl_handshake`` with ``proxy_ssl_verify
on``: OpenSSL completes the handshake while the chain errors are recorded, then the chain
result and the name are checked, in that order, with nginx's messages. Unlike nginx (and
deliberately, as CONFIG.md says) verification is on by default and the name is matched
by ``service_identity`` against the subjectAltName only (RFC 6125 wildcards: a whole
left-most label); a certificate without subjectAltName does not verify, whatever its CN.

Names: ``server_name`` (default: the host of the peer's configured address, the name a
``resolve = true`` peer was found under) is both the SNI and the name verified. IP
addresses are never sent as SNI (RFC 6066 §3, as nginx) and are verified against
iPAddress entries. ``server_name = false`` sends no SNI; the configured host is then
still the name verified.

Sessions (nginx's ``proxy_ssl_session_reuse``): a session is kept per peer only after its
connection verified, replaced by the newest one (TLS 1.3 tickets arrive after the
handshake, so the connection offers its session again when its first data arrives), and
dropped when a handshake with the peer fails.

Opening connections, the handshake timeout and turning failures into upstream errors
are :mod:`gateway.http.client`'s; reading the files at configuration time is
:func:`check_files`, which :mod:`gateway.config._upstreams` calls.
"""
from __future__ import annotations

import ipaddress
import weakref
from typing import TYPE_CHECKING, Optional

from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from service_identity.hazmat import DNS_ID, IPAddress_ID, verify_service_identity
from service_identity.pyopenssl import extract_patterns
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from gateway.tls import _files

if TYPE_CHECKING:  # the configuration package imports this module (check_files)
    from gateway.config.model import UpstreamTLSSettings

__all__ = ["PeerTLS", "UpstreamTLS", "check_files", "verify_error_text"]

try:
    # the running OpenSSL's own words, as nginx prints them (the numbering of the
    # rarer codes differs between OpenSSL versions); pyOpenSSL has no public API
    from OpenSSL._util import ffi as _ffi, lib as _lib
    _error_string = _lib.X509_verify_cert_error_string
except (ImportError, AttributeError):  # pragma: no cover - other pyOpenSSL builds
    _error_string = None

# the codes that have meant the same since OpenSSL 1.0, for when the binding is missing
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
}


def verify_error_text(code: int) -> str:
    """nginx's ``(%l:%s)`` part of "upstream SSL certificate verify error"."""
    text = None
    if _error_string is not None:
        text = _ffi.string(_error_string(code)).decode("ascii", "replace")
    if not text:
        text = _VERIFY_ERRORS.get(code, "certificate verify error")
    return f"({code}:{text})"


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def client_context(settings: "UpstreamTLSSettings", verify_callback=None) -> SSL.Context:
    """The OpenSSL context of one upstream group (raises ``SSL.Error``/``OSError`` on
    unusable files; :func:`check_files` reports those at configuration time).
    ``verify_callback`` is OpenSSL's, called for each certificate of the chain."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    # an EOF without close_notify ends a response like a clean close, as nginx sets
    # SSL_OP_IGNORE_UNEXPECTED_EOF; framing errors are still the response reader's
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_IGNORE_UNEXPECTED_EOF)
    if settings.verify:
        if settings.ca:
            context.load_verify_locations(settings.ca)
        else:
            context.set_default_verify_paths()
        context.set_verify(SSL.VERIFY_PEER, verify_callback or (lambda *args: args[-1]))
    else:
        context.set_verify(SSL.VERIFY_NONE)
    if settings.certificate:
        context.use_certificate_chain_file(settings.certificate)
        context.use_privatekey_file(settings.key)
        context.check_privatekey()
    return context


class UpstreamTLS:
    """TLS towards the peers of one upstream group: built once, shared by every
    connection (proxied requests and health probes alike)."""

    def __init__(self, settings: Optional["UpstreamTLSSettings"] = None):
        if settings is None:   # proxy_pass https:// to a group without a tls table
            from gateway.config.model import UpstreamTLSSettings
            settings = UpstreamTLSSettings()
        self.settings = settings
        self.verify = self.settings.verify
        self.context = client_context(self.settings, self._verify_callback)
        #: the last verified session of each peer, by peer name
        self.sessions: dict[str, SSL.Session] = {}
        #: the attempt each live OpenSSL connection belongs to (Twisted keeps the
        #: connection's app data for its TLS protocol)
        self._attempts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._names: dict[str, tuple[Optional[bytes], str, object]] = {}

    def names(self, configured_host: Optional[str]) -> tuple[Optional[bytes], str, object]:
        """(SNI or None, the name verified, its service_identity ID or None when the
        name cannot be one) for a peer configured with ``configured_host`` (None for a
        unix socket); worked out once per configured host."""
        host = configured_host or "localhost"   # $proxy_host of a unix socket
        known = self._names.get(host)
        if known is None:
            wanted = self.settings.server_name
            name = host if wanted is None or wanted is False else wanted
            is_ip = _is_ip(name)
            sni = None if wanted is False or is_ip else name.encode("idna")
            try:
                identity = IPAddress_ID(name) if is_ip else DNS_ID(name)
            except ValueError:
                identity = None
            known = self._names[host] = (sni, name, identity)
        return known

    def for_peer(self, peer) -> "PeerTLS":
        """The TLS of one new connection to ``peer`` (an upstream ``Peer``)."""
        sni, name, identity = self.names(peer.settings.address.host)
        return PeerTLS(self, peer.name, sni, name, identity)

    def _verify_callback(self, connection: SSL.Connection, _cert, errnum: int,
                         _depth: int, ok: int) -> bool:
        """Remember the first chain error of the connection and go on: the handshake
        finishes and the error is reported in nginx's words afterwards, as nginx's
        ``ngx_ssl_verify_callback`` lets it (nothing is sent before the check)."""
        if not ok:
            attempt = self._attempts.get(connection)
            if attempt is not None and attempt.verify_error is None:
                attempt.verify_error = errnum
        return True

    def forget(self, peer_name: str) -> None:
        """``peer_name`` left the group: drop its session."""
        self.sessions.pop(peer_name, None)


@implementer(IOpenSSLClientConnectionCreator)
class PeerTLS:
    """One TLS connection attempt to one peer (a fresh one per connect)."""

    __slots__ = ("group", "peer_name", "sni", "name", "identity", "verify_error",
                 "resumed")

    def __init__(self, group: UpstreamTLS, peer_name: str, sni: Optional[bytes],
                 name: str, identity):
        self.group = group
        self.peer_name = peer_name
        self.sni = sni
        self.name = name
        self.identity = identity
        #: the first X509_V_ERR_* code OpenSSL reported for the chain, if any
        self.verify_error: Optional[int] = None
        #: whether a saved session was offered (resumption is the server's choice)
        self.resumed = False

    def clientConnectionForTLS(self, tls_protocol) -> SSL.Connection:
        connection = SSL.Connection(self.group.context, None)
        self.group._attempts[connection] = self
        connection.set_connect_state()
        if self.sni is not None:
            connection.set_tlsext_host_name(self.sni)
        session = self.group.sessions.get(self.peer_name)
        if session is not None:
            connection.set_session(session)
            self.resumed = True
        return connection

    def check(self, connection: SSL.Connection) -> Optional[str]:
        """After the handshake: None when the peer may be used, else nginx's reason."""
        if not self.group.verify:
            return None
        if self.verify_error is not None:
            return "upstream SSL certificate verify error: " + verify_error_text(
                self.verify_error)
        certificate = connection.get_peer_certificate()
        if certificate is None:
            return "upstream sent no SSL certificate"
        if self.identity is None:
            return f'upstream SSL certificate does not match "{self.name}"'
        try:
            verify_service_identity(
                cert_patterns=extract_patterns(certificate),
                obligatory_ids=[self.identity], optional_ids=[])
        except CertificateError as e:
            # service_identity's word for a certificate without any subjectAltName
            return f'upstream SSL certificate does not match "{self.name}" ({e})'
        except VerificationError:
            return f'upstream SSL certificate does not match "{self.name}"'
        return None

    def save_session(self, connection: SSL.Connection) -> None:
        """Keep the connection's (verified) session for the next connection."""
        session = connection.get_session()
        if session is not None:
            self.group.sessions[self.peer_name] = session

    def drop_session(self) -> None:
        """A handshake with the peer failed: do not offer its old session again."""
        self.group.sessions.pop(self.peer_name, None)

    @staticmethod
    def describe_failure(reason) -> str:
        """nginx's words for a connection lost during the handshake (``reason`` is the
        ``Failure`` the TLS layer reported)."""
        error = reason.value if reason is not None else None
        if isinstance(error, SSL.Error):
            details = [item[-1] for item in (error.args[0] if error.args else ())
                       if isinstance(item, tuple) and item]
            text = ":".join(str(d) for d in details) or "handshake failure"
            return f"SSL_do_handshake() failed (SSL: {text})"
        if reason is None or reason.check(ConnectionDone, ConnectionLost):
            return "peer closed connection in SSL handshake"
        return f"SSL_do_handshake() failed ({reason.getErrorMessage()})"


def check_files(settings: "UpstreamTLSSettings") -> list[tuple[str, str]]:
    """Problems with the files of an upstream ``tls`` table as (key, message), worded
    as the server side's (:mod:`gateway.tls._files`): unreadable, no PEM certificate in
    ``ca`` or ``certificate``, no usable ``key``, or a key that is not the
    certificate's."""
    problems: list[tuple[str, str]] = []
    if settings.ca:
        try:
            _files._certificates("ca", "ca", settings.ca)
        except _files.TLSFilesError as e:
            problems.append((e.key, str(e)))
    chain = key = None
    if settings.certificate:
        try:
            chain = _files._certificates("certificate", "certificate", settings.certificate)
        except _files.TLSFilesError as e:
            problems.append((e.key, str(e)))
    if settings.key:
        try:
            key = _files._private_key(settings.key)
        except _files.TLSFilesError as e:
            problems.append((e.key, str(e)))
    if chain is not None and key is not None:
        spki = _files._SPKI
        if chain[0].public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            problems.append(("key", f'the key "{settings.key}" does not match the '
                                    f'certificate "{settings.certificate}"'))
    return problems
