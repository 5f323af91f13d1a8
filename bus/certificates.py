"""X.509 for teebus's own CAs: a CA, leaf certificates issued from it, and their files.

Used wherever teebus runs its own PKI: the TLS of a NATS cluster across machines
(bus/cluster_tls.py) and any system's (a gRPC socket's mutual TLS, say); each decides its layout
and policy, this module only makes and stores certificates. Keys are EC P-256 with ECDSA-SHA256
(grpcio's BoringSSL refuses Ed25519 certificates; nats-server and Python's ssl take P-256 too).
Validity: a CA 10 years, a leaf 5 years but never beyond its CA, each starting 5 minutes in the
past to absorb clock skew. Private keys are written 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bus.credentials import write_durably, write_private

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=5 * 365)
CLOCK_SKEW = dt.timedelta(minutes=5)
SERVER, CLIENT = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH

Key = ec.EllipticCurvePrivateKey


def new_ca(common_name: str) -> tuple[x509.Certificate, Key]:
    """A self-signed CA that may sign leaves only (path length 0)."""
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "teebus"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(ca_cert: x509.Certificate, ca_key: Key, common_name: str, *, usages: Iterable[x509.ObjectIdentifier],
          names: Iterable[str] = ()) -> tuple[x509.Certificate, Key]:
    """A leaf signed by the CA for `usages` (SERVER, CLIENT), valid for `names` (DNS names or IP
    addresses, as the subject alternative names a TLS client checks)."""
    key = new_key()
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "teebus"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    alternative = [_general_name(name) for name in dict.fromkeys(names)]
    if alternative:
        builder = builder.add_extension(x509.SubjectAlternativeName(alternative), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def load_pair(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, Key]:
    """A certificate and its key; ValueError when the key is not the certificate's."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, Key) or key.public_key() != cert.public_key():
        raise ValueError(f"{key_path} does not belong to {cert_path}")
    return cert, key


def write_new_pair(cert_path: Path, cert: x509.Certificate, key_path: Path, key: Key) -> None:
    """Store a pair without ever overwriting: the certificate is claimed first (atomically, never
    over an existing file), then its key; a failure in between removes the certificate."""
    write_durably(cert_path, cert_pem(cert), 0o644, overwrite=False)
    try:
        write_durably(key_path, key_pem(key), 0o600, overwrite=False)
    except BaseException:
        cert_path.unlink(missing_ok=True)
        raise


def replace_pair(cert_path: Path, cert: x509.Certificate, key_path: Path, key: Key) -> None:
    """Store a pair over an older one (each file replaced atomically, the key first)."""
    write_private(key_path, key_pem(key))
    write_private(cert_path, cert_pem(cert))


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: Key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
                         crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
