"""A server's ``tls`` files → a pyOpenSSL ``Context``, with the errors ``--check`` prints.

This module owns reading and checking the files of one ``[[servers]].tls`` table (the
certificate with its chain, the private key, the ``client_ca`` bundle), the settings
that become OpenSSL options (``protocols``, ``ciphers``, ``verify_client``, the session
cache and tickets), and building the ``Context`` from them, as nginx's
``ngx_ssl_create`` / ``ngx_ssl_certificate`` / ``ngx_ssl_client_certificate`` /
``ngx_ssl_session_cache`` do:

* the certificate file holds the server certificate first, then its chain (nginx's
  ``ssl_certificate``); the key must match the certificate;
* ``protocols`` enables exactly the listed versions (a gap such as TLSv1 + TLSv1.2
  disables TLSv1.1 too);
* ``ciphers`` is an OpenSSL cipher string for TLS ≤ 1.2 (OpenSSL's default when unset);
* ``verify_client`` ``on``/``optional``: the client is asked for a certificate, any
  certificate is accepted during the handshake and the verification result is kept
  for the request (nginx's ``ngx_ssl_verify_callback`` returns 1 always); the depth
  is nginx's default ``ssl_verify_depth 1``; the CA names sent to the client are the
  subjects in ``client_ca``;
* sessions: nginx's default ``ssl_session_cache none`` (the server says it can resume
  but stores nothing) with session tickets on and ``ssl_session_timeout 5m``; the
  session id context is a digest of the certificate and client CAs, so a session is
  resumed only by the server (and client-certificate settings) that created it.

Errors are ``(key, message)`` pairs, ``key`` being the ``tls`` key at fault
(``certificate``, ``key``, ``client_ca``, ``ciphers``); the configuration loader adds
the TOML path. What happens per connection (SNI, ALPN, the ``$ssl_*`` values) is
:mod:`gateway.tls.server`'s.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Optional

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

from gateway.tls._openssl import accept_any_client_certificate

__all__ = ["TLSFilesError", "build_context", "check_files"]

#: nginx's ssl_session_timeout default
SESSION_TIMEOUT = 300
#: nginx's ssl_verify_depth default: the client certificate and the CA that issued it
VERIFY_DEPTH = 1

_VERSIONS = (("TLSv1", SSL.TLS1_VERSION, SSL.OP_NO_TLSv1),
             ("TLSv1.1", SSL.TLS1_1_VERSION, SSL.OP_NO_TLSv1_1),
             ("TLSv1.2", SSL.TLS1_2_VERSION, SSL.OP_NO_TLSv1_2),
             ("TLSv1.3", SSL.TLS1_3_VERSION, SSL.OP_NO_TLSv1_3))
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class TLSFilesError(ValueError):
    """One problem with a ``tls`` table: ``key`` is the key at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class _Material:
    chain: tuple[x509.Certificate, ...]      # the server certificate first
    key: object                              # a cryptography private key
    client_cas: tuple[x509.Certificate, ...]


def _read(key: str, what: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSFilesError(key, f'cannot load {what} "{path}": {e.strerror or e}') from None


def _certificates(key: str, what: str, path: str) -> tuple[x509.Certificate, ...]:
    data = _read(key, what, path)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TLSFilesError(key, f'cannot load {what} "{path}": no PEM certificate in it')
    try:
        return tuple(x509.load_pem_x509_certificates(data))
    except ValueError:
        raise TLSFilesError(key, f'cannot load {what} "{path}": invalid PEM certificate'
                            ) from None


def _private_key(path: str):
    data = _read("key", "certificate key", path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSFilesError("key", f'cannot load certificate key "{path}": the key is '
                            "encrypted (password-protected keys are not supported)"
                            ) from None
    except (ValueError, crypto.Error, SSL.Error):
        raise TLSFilesError("key", f'cannot load certificate key "{path}": no PEM '
                            "private key in it") from None


def _material(settings, errors: list[TLSFilesError]) -> Optional[_Material]:
    """Read every file of ``settings``; problems are appended to ``errors``."""
    chain = key = None
    client_cas: tuple[x509.Certificate, ...] = ()
    try:
        chain = _certificates("certificate", "certificate", settings.certificate)
    except TLSFilesError as e:
        errors.append(e)
    try:
        key = _private_key(settings.key)
    except TLSFilesError as e:
        errors.append(e)
    if chain is not None and key is not None:
        if chain[0].public_key().public_bytes(*_SPKI) != key.public_key().public_bytes(*_SPKI):
            errors.append(TLSFilesError(
                "key", f'the key "{settings.key}" does not match the certificate '
                       f'"{settings.certificate}"'))
    if settings.client_ca is not None:
        try:
            client_cas = _certificates("client_ca", "client_ca", settings.client_ca)
        except TLSFilesError as e:
            errors.append(e)
    if errors:
        return None
    return _Material(chain, key, client_cas)


def _session_id_context(material: _Material, verify_client: str) -> bytes:
    digest = hashlib.sha256(verify_client.encode())
    for certificate in material.chain[:1] + material.client_cas:
        digest.update(certificate.public_bytes(serialization.Encoding.DER))
    return digest.digest()     # 32 bytes, SSL_MAX_SID_CTX_LENGTH


def _context(settings, material: _Material) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    enabled = [(version, flag) for name, version, flag in _VERSIONS
               if name in settings.protocols]
    ctx.set_min_proto_version(enabled[0][0])
    ctx.set_max_proto_version(enabled[-1][0])
    options = SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION
    for name, version, flag in _VERSIONS:
        if name not in settings.protocols:
            options |= flag
    ctx.set_options(options)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    if settings.ciphers is not None:
        try:
            ctx.set_cipher_list(settings.ciphers.encode("ascii", "replace"))
        except SSL.Error:
            raise TLSFilesError("ciphers", f'OpenSSL accepts no cipher of "{settings.ciphers}"'
                                ) from None
    ctx.use_certificate(crypto.X509.from_cryptography(material.chain[0]))
    for certificate in material.chain[1:]:
        ctx.add_extra_chain_cert(crypto.X509.from_cryptography(certificate))
    try:
        ctx.use_privatekey(crypto.PKey.from_cryptography_key(material.key))
        ctx.check_privatekey()
    except (TypeError, ValueError, SSL.Error, crypto.Error):
        raise TLSFilesError("key", f'cannot use the key "{settings.key}" with the '
                            f'certificate "{settings.certificate}"') from None
    if settings.verify_client != "off":
        accept_any_client_certificate(ctx, VERIFY_DEPTH)
        store = ctx.get_cert_store()
        names = []
        for certificate in material.client_cas:
            store.add_cert(crypto.X509.from_cryptography(certificate))
            name = crypto.X509.from_cryptography(certificate).get_subject()
            if all(name.der() != seen.der() for seen in names):
                names.append(name)
        ctx.set_client_ca_list(names)
    ctx.set_session_id(_session_id_context(material, settings.verify_client))
    ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER | SSL.SESS_CACHE_NO_AUTO_CLEAR
                               | SSL.SESS_CACHE_NO_INTERNAL_STORE)
    ctx.set_timeout(SESSION_TIMEOUT)
    return ctx


def check_files(settings) -> list[TLSFilesError]:
    """Every problem of a ``tls`` table's files and OpenSSL settings (empty when a
    context can be built): unreadable or unparsable files, a key that does not match
    the certificate, a ``ciphers`` string OpenSSL refuses."""
    errors: list[TLSFilesError] = []
    material = _material(settings, errors)
    if material is not None:
        try:
            _context(settings, material)
        except TLSFilesError as e:
            errors.append(e)
    return errors


def build_context(settings, configure: Optional[Callable[[SSL.Context], None]] = None
                  ) -> SSL.Context:
    """The ``Context`` of one server's ``tls`` settings; ``configure`` adds the
    per-endpoint callbacks (SNI, ALPN). Raises :class:`TLSFilesError` (the first
    problem; the configuration check reports them all)."""
    errors: list[TLSFilesError] = []
    material = _material(settings, errors)
    if material is None:
        raise errors[0]
    ctx = _context(settings, material)
    if configure is not None:
        configure(ctx)
    return ctx
