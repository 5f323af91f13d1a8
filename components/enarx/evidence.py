"""The Nil backend's evidence: a measurement of the loader and a fresh keep key with its certificate.

Nil has no hardware root of trust, so the measurement is the SHA-256 of the keep loader's own code
(every module of this package, in name order): a client can compare it with the value from a build
it trusts. The keep key is generated in the keep's memory and never leaves it; the self-signed
certificate is what the wasmldr serves HTTPS with, so the client pins it for the workload upload.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PACKAGE = Path(__file__).resolve().parent
CERTIFICATE_DAYS = 30


@lru_cache(maxsize=1)
def measurement() -> bytes:
    """SHA-256 over the loader's modules (path and bytes of each), stable across hosts."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.digest()


@dataclass(frozen=True)
class KeepIdentity:
    """The keep's private key (PEM, stays in the keep) and its self-signed certificate (PEM)."""

    key_pem: bytes
    certificate_pem: bytes


def new_identity(kuuid: str, host: str) -> KeepIdentity:
    """A fresh P-256 key and a certificate naming the keep, valid for `host` (IP or DNS name)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"enarx keep {kuuid}"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "teebus Nil keep")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder()
                   .subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
                   .add_extension(x509.SubjectAlternativeName(_alt_names(host)), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return KeepIdentity(key_pem, certificate.public_bytes(serialization.Encoding.PEM))


def evidence(identity: KeepIdentity) -> dict:
    """The loader's answer to "request-evidence" (DESIGN.md, Enarx Nil keep conversation)."""
    return {"evidence": {"backend": "Nil", "measurement": measurement(),
                         "certificate_as_pem": identity.certificate_pem}}


def _alt_names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    if host != "127.0.0.1":
        names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    return names
