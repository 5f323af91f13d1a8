"""The mutual-TLS material of the Aurae gRPC socket, created on first start and never overwritten.

Aurae required a client certificate from its own CA on every call; teebus keeps that. Layout
(`<data-dir>/aurae/pki/`): `ca.crt` and `ca.key` (the CA's key stays here so that
`teebus aurae cert NAME` can issue more clients), `server.crt`/`server.key` for
`server.unsafe.aurae.io`, and client pairs `<name>.crt`/`<name>.key`, the first being `client`.

Certificates, keys and validity are bus/certificates.py's (EC P-256: grpcio's BoringSSL refuses
Ed25519 certificates, NO_COMMON_SIGNATURE_ALGORITHMS with grpcio 1.85). Renewal is by
removal: a missing server pair is reissued from the existing CA on the next start, a client by
issuing a new name. Private keys are written 0600, the folder is created 0700. Once the pairs
exist, `ca.key` may be kept offline: only issuing needs it, and says so when it is missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from bus import certificates

SERVER_NAME = "server.unsafe.aurae.io"
FIRST_CLIENT = "client"
RESERVED = frozenset({"ca", "server"})
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

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
    cert, key = certificates.new_ca("teebus aurae CA")
    certificates.write_new_pair(paths.ca_cert, cert, paths.ca_key, key)


def _load_ca(paths: Paths) -> tuple[x509.Certificate, certificates.Key]:
    if not paths.ca_key.exists():
        raise PkiError(f"{paths.ca_key} is missing, so no certificate can be issued: restore it")
    try:
        return certificates.load_pair(paths.ca_cert, paths.ca_key)
    except ValueError as exc:
        raise PkiError(str(exc)) from None


def _issue(cert_path: Path, key_path: Path, ca_cert: x509.Certificate, ca_key: certificates.Key,
           common_name: str, *, server: bool) -> None:
    """A leaf pair signed by the CA, for `server.unsafe.aurae.io` or for the client `common_name`."""
    cert, key = certificates.issue(ca_cert, ca_key, common_name,
                                   usages=[certificates.SERVER if server else certificates.CLIENT],
                                   names=[SERVER_NAME] if server else [])
    certificates.write_new_pair(cert_path, cert, key_path, key)
