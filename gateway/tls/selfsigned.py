"""A throwaway self-signed certificate for trying TLS on localhost.

``python -m gateway.tls.selfsigned DIR`` writes ``DIR/localhost.pem`` and
``DIR/localhost.key`` (mode 0600) unless both exist already: an EC P-256 key and a
certificate for ``localhost``, ``127.0.0.1`` and ``::1``, valid for a year. ``make
run`` uses it for the TLS listener of ``conf/site.toml``; clients must be told not to
verify it (``curl -k``). It is for demos and tests, never for a real site. This module
only writes files; loading them is :mod:`gateway.tls._files`'s.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["write_localhost_certificate"]

VALID_DAYS = 365


def write_localhost_certificate(directory: str, now: datetime.datetime | None = None
                                ) -> tuple[str, str]:
    """Write ``localhost.pem`` and ``localhost.key`` into ``directory`` (created if
    needed) unless both are there; return their paths."""
    certificate_path = os.path.join(directory, "localhost.pem")
    key_path = os.path.join(directory, "localhost.key")
    if os.path.exists(certificate_path) and os.path.exists(key_path):
        return certificate_path, key_path
    os.makedirs(directory, exist_ok=True)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                         "gateway throwaway certificate")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(certificate_path, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    return certificate_path, key_path


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m gateway.tls.selfsigned DIRECTORY", file=sys.stderr)
        return 2
    certificate_path, key_path = write_localhost_certificate(argv[1])
    print(f"{certificate_path} and {key_path}: a self-signed certificate for localhost")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
