"""The few OpenSSL calls pyOpenSSL does not wrap, through cryptography's bindings.

nginx's client-certificate semantics need the verification result OpenSSL keeps in
the session (``SSL_get_verify_result``, right for resumed sessions too), and so a
verify callback that accepts every certificate *without* clearing the error:
pyOpenSSL's callback wrapper resets the error to ``X509_V_OK`` whenever the Python
callback returns true, which would make every certificate look verified. This module
installs a plain cffi callback returning 1 instead (``ngx_ssl_verify_callback``), and
reads ``SSL_session_reused``, ``X509_verify_cert_error_string`` and OpenSSL's short
names of name attributes (``OBJ_nid2sn``). Everything here touches pyOpenSSL objects
through their ``_context`` / ``_ssl`` handles; nothing else in the gateway does.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL

__all__ = [
    "X509_V_OK", "accept_any_client_certificate", "session_reused", "set_verify_mode",
    "short_name", "verify_error_string", "verify_result",
]

_binding = Binding()
_lib, _ffi = _binding.lib, _binding.ffi

X509_V_OK = 0


@_ffi.callback("int (*)(int, X509_STORE_CTX *)")
def _accept_any(ok, store):
    # ngx_ssl_verify_callback: accept, keep the error for SSL_get_verify_result
    return 1


def accept_any_client_certificate(context: SSL.Context, depth: int) -> None:
    """Ask clients for a certificate and accept any, keeping the verification
    result for the request (nginx's ``ssl_verify_client on|optional``)."""
    _lib.SSL_CTX_set_verify(context._context, SSL.VERIFY_PEER, _accept_any)
    context.set_verify_depth(depth)


def set_verify_mode(connection: SSL.Connection, mode: int) -> None:
    """The verify mode of one connection, as ``SSL_set_verify`` after an SNI switch
    (``SSL_set_SSL_CTX`` changes the certificate only)."""
    _lib.SSL_set_verify(connection._ssl, mode, _accept_any if mode else _ffi.NULL)


def verify_result(connection: SSL.Connection) -> int:
    """``SSL_get_verify_result``: ``X509_V_OK`` or the ``X509_V_ERR_*`` code."""
    return _lib.SSL_get_verify_result(connection._ssl)


def verify_error_string(code: int) -> str:
    return _ffi.string(_lib.X509_verify_cert_error_string(code)).decode("latin-1")


def session_reused(connection: SSL.Connection) -> bool:
    return bool(_lib.SSL_session_reused(connection._ssl))


@lru_cache(maxsize=256)
def short_name(oid: str) -> Optional[str]:
    """OpenSSL's short name for a dotted ``oid`` (``"CN"``, ``"emailAddress"``), or
    None when OpenSSL does not know it."""
    nid = _lib.OBJ_txt2nid(oid.encode("ascii"))
    if nid == 0:
        return None
    name = _lib.OBJ_nid2sn(nid)
    return _ffi.string(name).decode("ascii") if name != _ffi.NULL else None
