"""TLS for a NATS cluster across machines: the servers' client ports and the routes between them.

`teebus cluster init` makes the cluster's CA (`<data-dir>/nats/tls/ca.crt` and `ca.key`), which is
copied to every machine with the other shared files. Each `teebus cluster node` issues its server
a certificate from it at every start, for the address it is reached at (`--nats-host`, and
loopback), usable both ways: clients check it, and the routes between nodes check each other's.
Every teebus process whose data directory holds the CA then speaks TLS from the first byte
(`handshake_first`: no plaintext INFO a network attacker could use to talk a client out of TLS),
verifying the server against the CA. A single `teebus up` and `teebus cluster up` (loopback) make
no CA and stay plain.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from bus import users

DIRECTORY = "tls"                  # under the data directory's nats/
CA_CERT, CA_KEY = "ca.crt", "ca.key"
LOOPBACK = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class NodeTls:
    """One node's TLS files, as its configuration names them."""

    cert: Path
    key: Path
    ca: Path


def directory(data_dir: Path) -> Path:
    return users.directory(data_dir) / DIRECTORY


def ca_files(data_dir: Path) -> tuple[Path, Path]:
    return directory(data_dir) / CA_CERT, directory(data_dir) / CA_KEY


def enabled(data_dir: Path) -> bool:
    """Whether this data directory belongs to a TLS cluster (it holds the cluster's CA)."""
    return ca_files(data_dir)[0].exists()


def ensure_ca(data_dir: Path) -> list[Path]:
    """The cluster's CA, made when missing (never replaced: every machine must hold the same)."""
    from bus import certificates     # x509 loads only where certificates are made: clients never need it

    cert_path, key_path = ca_files(data_dir)
    if not cert_path.exists():
        directory(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        cert, key = certificates.new_ca("teebus NATS cluster CA")
        certificates.write_new_pair(cert_path, cert, key_path, key)
    return [cert_path, key_path]


def node_files(data_dir: Path, node: str, hosts: Iterable[str]) -> NodeTls:
    """A fresh certificate for node `node`, valid for `hosts` and loopback, from the cluster's CA."""
    from bus import certificates

    ca_cert_path, ca_key_path = ca_files(data_dir)
    if not ca_key_path.exists():
        raise FileNotFoundError(f"{ca_key_path} is missing: copy nats/tls/ from the machine that ran "
                                "`teebus cluster init` (it lists the files)")
    ca_cert, ca_key = certificates.load_pair(ca_cert_path, ca_key_path)
    cert, key = certificates.issue(ca_cert, ca_key, f"teebus NATS node {node}",
                                   usages=[certificates.SERVER, certificates.CLIENT], names=[*hosts, *LOOPBACK])
    files = NodeTls(directory(data_dir) / f"node-{node}.crt", directory(data_dir) / f"node-{node}.key", ca_cert_path)
    certificates.replace_pair(files.cert, cert, files.key, key)
    return files


def client_context(data_dir: Path) -> ssl.SSLContext | None:
    """What a client needs to reach a TLS cluster's servers (None when the data directory has no CA)."""
    if not enabled(data_dir):
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_files(data_dir)[0]))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def config_blocks(files: NodeTls) -> tuple[str, str]:
    """The server's `tls` block for clients, and the one inside `cluster` for routes."""
    paths = f'cert_file: "{files.cert}", key_file: "{files.key}", ca_file: "{files.ca}", timeout: 2'
    return (f"tls {{ {paths}, handshake_first: true }}\n",
            f"  tls {{ {paths}, verify: true }}\n")
