"""The mutual-TLS material of the Aurae gRPC socket, created on first start and never overwritten.

Aurae required a client certificate from its own CA on every call; teebus keeps that. Layout
(`<data-dir>/aurae/pki/`): `ca.crt` and `ca.key` (the CA's key stays here so that
`teebus aurae cert NAME` can issue more clients), `server.crt`/`server.key` for
`server.unsafe.aurae.io`, and client pairs `<name>.crt`/`<name>.key`, the first being `client`.

Keys are EC P-256 with ECDSA-SHA256 signatures: grpcio's BoringSSL accepts them for server and
client authentication, while Ed25519 certificates fail its handshake (NO_COMMON_SIGNATURE_ALGORITHMS,
checked with grpcio 1.85). Validity: the CA 10 years, every leaf 5 years
but never beyond its CA, all starting 5 minutes in the past to absorb clock skew. Renewal is by
removal: a missing server pair is reissued from the existing CA on the next start, a client by
issuing a new name. Private keys are written 0600, the folder is created 0700. Once the pairs
exist, `ca.key` may be kept offline: only issuing needs it, and says so when it is missing.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bus.credentials import write_private

SERVER_NAME = "server.unsafe.aurae.io"
FIRST_CLIENT = "client"
CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=5 * 365)
CLOCK_SKEW = dt.timedelta(minutes=5)
RESERVED = frozenset({"ca", "server"})
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

Key = ec.EllipticCurvePrivateKey


class PkiError(RuntimeError):
    """The PKI folder is in a state teebus will not repair by itself (it never overwrites)."""


@dataclass(frozen=True)
class Paths:
    """Where each file of the PKI lives; `client_cert`/`client_key` are the first client pair."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def of(cls, directory: Path) -> Paths:
        d = Path(directory)
        return cls(d, d / "ca.crt", d / "ca.key", d / "server.crt", d / "server.key",
                   d / f"{FIRST_CLIENT}.crt", d / f"{FIRST_CLIENT}.key")

    def pair(self, name: str) -> tuple[Path, Path]:
        """The certificate and key paths of the client `name` (validated)."""
        check_name(name)
        return self.directory / f"{name}.crt", self.directory / f"{name}.key"


def check_name(name: str) -> str:
    """A client name becomes a file name and a certificate CN: letters, digits, `_.-`, at most 64."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"bad client name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
                         "starting with a letter or digit")
    if name in RESERVED:
        raise ValueError(f"bad client name {name!r}: {sorted(RESERVED)} name the CA and server files")
    return name


def ensure(pki_dir: Path) -> Paths:
    """Create whatever is missing (CA, server pair, first client pair); change nothing that exists."""
    paths = Paths.of(pki_dir)
    paths.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    need_server = _missing_pair(paths.server_cert, paths.server_key)
    need_client = _missing_pair(paths.client_cert, paths.client_key)
    if not paths.ca_cert.exists():
        _create_ca(paths)
    if need_server or need_client:
        ca_cert, ca_key = _load_ca(paths)
        if need_server:
            _issue(paths.server_cert, paths.server_key, ca_cert, ca_key, SERVER_NAME, server=True)
        if need_client:
            _issue(paths.client_cert, paths.client_key, ca_cert, ca_key, FIRST_CLIENT, server=False)
    return paths


def issue_client(pki_dir: Path, name: str) -> tuple[Path, Path]:
    """Issue the client pair `<name>.crt`/`<name>.key` from the CA (creating the PKI on first use).

    Refuses a bad name and an existing pair (FileExistsError): a certificate someone holds is
    never replaced behind their back.
    """
    check_name(name)
    paths = ensure(pki_dir)
    cert_path, key_path = paths.pair(name)
    for path in (cert_path, key_path):
        if path.exists():
            raise FileExistsError(f"{path} already exists: choose another name, or remove the old pair first")
    ca_cert, ca_key = _load_ca(paths)
    _issue(cert_path, key_path, ca_cert, ca_key, name, server=False)
    return cert_path, key_path


def _missing_pair(cert: Path, key: Path) -> bool:
    """True if neither file exists; an error if only one does (a half pair is not ours to fix)."""
    if cert.exists() and key.exists():
        return False
    if cert.exists() or key.exists():
        present, absent = (cert, key) if cert.exists() else (key, cert)
        raise PkiError(f"{present} exists but {absent} does not: restore {absent.name}, "
                       f"or remove {present.name} to have the pair issued anew")
    return True


def _create_ca(paths: Paths) -> None:
    """A new self-signed CA, only into an empty folder: certificates of a lost CA must not linger."""
    leftovers = [p for p in (paths.ca_key, paths.server_cert, paths.client_cert) if p.exists()]
    if leftovers:
        names = ", ".join(p.name for p in leftovers)
        raise PkiError(f"{paths.ca_cert} is missing but {names} exist: restore ca.crt, or move the "
                       f"folder {paths.directory} aside to start a new CA")
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "teebus"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "teebus aurae CA")])
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
    _write_pair(paths.ca_cert, cert, paths.ca_key, key)


def _load_ca(paths: Paths) -> tuple[x509.Certificate, Key]:
    if not paths.ca_key.exists():
        raise PkiError(f"{paths.ca_key} is missing, so no certificate can be issued: restore it")
    cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    if not isinstance(key, Key) or key.public_key() != cert.public_key():
        raise PkiError(f"{paths.ca_key} does not belong to {paths.ca_cert}")
    return cert, key


def _issue(cert_path: Path, key_path: Path, ca_cert: x509.Certificate, ca_key: Key,
           common_name: str, *, server: bool) -> None:
    """A leaf pair signed by the CA, for `server.unsafe.aurae.io` or for the client `common_name`."""
    key = _new_key()
    now = _now()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
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
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
    _write_pair(cert_path, builder.sign(ca_key, hashes.SHA256()), key_path, key)


def _write_pair(cert_path: Path, cert: x509.Certificate, key_path: Path, key: Key) -> None:
    """The certificate is claimed first (atomically, never over an existing file), then its key;
    a failure in between removes the certificate, so no half pair is left and none is overwritten."""
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    try:
        if key_path.exists():
            raise FileExistsError(f"{key_path} already exists; it is left as it was")
        write_private(key_path, _key_pem(key))
    except BaseException:
        cert_path.unlink(missing_ok=True)
        raise


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
                         crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: Key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _write_new(path: Path, data: bytes) -> None:
    """Write a public file (0644) atomically and durably; FileExistsError if it already exists."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} already exists; it is left as it was") from None
    finally:
        os.unlink(tmp)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
