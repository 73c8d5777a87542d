"""TLS for the ext_proc port: the given certificate, or a self-signed one made at start.

The reference serves ext_proc over TLS by default (``--secure-serving=true``) with a
self-signed certificate when no ``--cert-path`` is given; Envoy is configured not to verify
it. igw does the same, generating an EC P-256 key and a one-year certificate in memory with
the ``cryptography`` package. The observer port (``h2_transport.py``) serves the same
certificate through Python's ``ssl``, which loads it only from files: they live in a private
temporary directory for the moment it takes to load them.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile

import grpc


def self_signed(common_name: str = "igw-epp") -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) of a fresh self-signed certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def load_cert_dir(cert_path: str) -> tuple[bytes, bytes]:
    """``tls.crt`` and ``tls.key`` from ``cert_path`` (the reference's layout)."""
    crt, key = os.path.join(cert_path, "tls.crt"), os.path.join(cert_path, "tls.key")
    for path in (crt, key):
        if not os.path.isfile(path):
            raise ValueError(f"--cert-path: {path} not found; expected tls.crt and tls.key")
    with open(crt, "rb") as f_crt, open(key, "rb") as f_key:
        return f_crt.read(), f_key.read()


def certificate_pair(cert_path: str | None) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM): from ``cert_path``, or self-signed when it is not given."""
    return load_cert_dir(cert_path) if cert_path else self_signed()


def server_credentials(cert_path: str | None) -> tuple[grpc.ServerCredentials, bytes]:
    """Server credentials and the certificate PEM (clients in tests trust it)."""
    cert_pem, key_pem = certificate_pair(cert_path)
    return grpc_credentials(cert_pem, key_pem), cert_pem


def grpc_credentials(cert_pem: bytes, key_pem: bytes) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(key_pem, cert_pem)])


def ssl_server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A TLS server context offering HTTP/2 by ALPN, as gRPC clients (Envoy too) require."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory(prefix="igw-tls-") as folder:
        cert_file, key_file = os.path.join(folder, "tls.crt"), os.path.join(folder, "tls.key")
        for path, pem in ((cert_file, cert_pem), (key_file, key_pem)):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
                out.write(pem)
        context.load_cert_chain(cert_file, key_file)
    return context
