"""Certificates made by the tests (trustme): a CA, server and client certificates as
PEM files in a temporary directory, and ``ServerSettings`` naming them."""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Optional

import trustme
from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.config.model import (
    LocationSettings,
    ReturnAction,
    ServerSettings,
    ServerTLSSettings,
)


class PKI:
    """A CA trusted for client certificates (``ca``), another one nobody trusts
    (``stranger``), and files written under ``directory``."""

    def __init__(self, testcase=None):
        self.directory = tempfile.mkdtemp(prefix="gateway-tls-")
        if testcase is not None:
            testcase.addCleanup(shutil.rmtree, self.directory, True)
        self.ca = trustme.CA(organization_name="Gateway Test CA")
        self.stranger = trustme.CA(organization_name="Nobody Trusts Me")
        self.ca_path = self.path("ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_path)

    def close(self) -> None:
        shutil.rmtree(self.directory, True)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def write(self, name: str, data: bytes) -> str:
        path = self.path(name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def server_files(self, name: str, *hosts: str) -> tuple[str, str]:
        """``name.pem`` (certificate then chain) and ``name.key`` for ``hosts``."""
        issued = self.ca.issue_cert(*hosts)
        certificate = self.write(name + ".pem", b"".join(p.bytes() for p in
                                                          issued.cert_chain_pems))
        key = self.write(name + ".key", issued.private_key_pem.bytes())
        return certificate, key

    def client_files(self, name: str, common_name: str = "client one",
                     organization: str = "Example, Inc.", ca: Optional[trustme.CA] = None
                     ) -> tuple[str, str]:
        issued = (ca or self.ca).issue_cert(name + "@clients.example",
                                            common_name=common_name,
                                            organization_name=organization)
        certificate = self.write(name + ".pem", issued.cert_chain_pems[0].bytes())
        key = self.write(name + ".key", issued.private_key_pem.bytes())
        return certificate, key

    @staticmethod
    def names_in(pem_or_certificate) -> list[str]:
        """The DNS names of a certificate (a cryptography object or PEM bytes)."""
        certificate = (pem_or_certificate if isinstance(pem_or_certificate, x509.Certificate)
                       else x509.load_pem_x509_certificate(pem_or_certificate))
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return san.value.get_values_for_type(x509.DNSName)

    @staticmethod
    def unit_of(certificate_path: str) -> str:
        """The OU trustme gave a certificate (random text)."""
        with open(certificate_path, "rb") as f:
            certificate = x509.load_pem_x509_certificate(f.read())
        return certificate.subject.get_attributes_for_oid(
            NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value

    def server(self, index: int, names: tuple[str, ...], hosts: tuple[str, ...] = (),
               default: bool = False, http2: bool = True, body: str = "",
               **tls) -> ServerSettings:
        """A TLS server on ``tcp:8443`` answering ``body`` (``$`` variables allowed)
        with a certificate for ``hosts`` (``names`` when not given)."""
        certificate, key = self.server_files(f"server{index}", *(hosts or names))
        location = LocationSettings(path="/", modifier="", pattern="/",
                                    return_=ReturnAction(status=200, body=body or f"s{index}"))
        return ServerSettings(index=index, listen=("tcp:8443",), locations=(location,),
                              server_name=names, default=default, http2=http2,
                              tls=ServerTLSSettings(certificate=certificate, key=key, **tls))
