"""The enclave's sealed state: its key, its sequence watermarks, its reply counters and its
persistent map, sealed together in one file after every mail.

File layout (FACTS.md): `i32 BE header length | header (u8 version = 1, u8 mode: RELEASE 0, DEBUG 1,
SIMULATION 2, MOCK 3) | sealed blob`; the blob is AES-256-GCM (`nonce || ciphertext+tag`, associated
data = the header) over the state as CBOR. A file of another mode is refused. The sealing key is
derived from a secret of this host (or from the KDS) and the enclave's measurement, so an enclave
whose code or signer changed cannot open its predecessor's state and starts with a new key; the old
file is kept aside, never overwritten. Writes are atomic (a temporary file, fsync, rename): a crash
leaves the previous state or the new one.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bus.credentials import read_private, write_private
from bus.sealing import MasterKey, SealingError

VERSION = 1
MODES = {"release": 0, "debug": 1, "simulation": 2, "mock": 3}
HOST_SECRET_FILE = "conclave/host.secret"


class SealedStateError(RuntimeError):
    """The sealed state file cannot be used as it is; the message says what to do."""


@dataclass
class EnclaveState:
    """Everything an enclave must remember across restarts."""

    secret: bytes                                                      # Ed25519 seed = X25519 private key
    watermarks: dict[str, int] = field(default_factory=dict)          # "<sender hex>/<topic>" -> last seen
    replies: dict[str, int] = field(default_factory=dict)             # "<client hex>/<topic>" -> next reply
    persistent_map: dict[str, bytes] = field(default_factory=dict)
    state_id: bytes | None = None                                      # for the mail private header

    def to_cbor(self) -> bytes:
        return cbor2.dumps({"secret": self.secret, "watermarks": self.watermarks, "replies": self.replies,
                            "map": self.persistent_map, "state_id": self.state_id})

    @classmethod
    def from_cbor(cls, data: bytes) -> "EnclaveState":
        value = cbor2.loads(data)
        return cls(value["secret"], dict(value["watermarks"]), dict(value["replies"]), dict(value["map"]),
                   value.get("state_id"))


def host_secret(data_dir: Path) -> bytes:
    """This host's sealing root (what SGX keeps in the CPU), generated once, mode 0600."""
    path = data_dir / HOST_SECRET_FILE
    if not path.exists():
        write_private(path, os.urandom(32))
    return read_private(path)


def default_path(data_dir: Path, enclave: str) -> Path:
    """Where an enclave seals its state unless `--sealed.state.file` says otherwise."""
    return data_dir / "conclave" / enclave / "sealed.state"


def measurement(code_hash: bytes, code_signer: bytes, product_id: int, mode: str) -> bytes:
    """What an enclave's sealing key is bound to: its code, its signer, its product and its mode."""
    return code_hash + code_signer + product_id.to_bytes(2, "big") + header(mode)


def sealing_key(root: bytes, measurement: bytes) -> bytes:
    """The key for one enclave: bound to its measurement (code hash, signer, product, mode)."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"teebus conclave sealed state v1" + measurement).derive(root)


def header(mode: str) -> bytes:
    return bytes([VERSION, MODES[mode]])


def encode(state: EnclaveState, key: bytes, mode: str) -> bytes:
    head = header(mode)
    return struct.pack(">i", len(head)) + head + MasterKey(key).seal(state.to_cbor(), head)


def decode(data: bytes, key: bytes, mode: str, where: str) -> EnclaveState:
    """The state in `data`; SealedStateError for a foreign mode or a damaged file, SealingError
    (a SealedStateError too) when it was sealed for another measurement or host."""
    if len(data) < 4:
        raise SealedStateError(f"{where} is truncated; restore it from a backup or move it away")
    (length,) = struct.unpack_from(">i", data)
    if not 2 <= length <= 64 or len(data) < 4 + length:
        raise SealedStateError(f"{where} is not a sealed state file (bad header length {length})")
    head = data[4:4 + length]
    if head[0] != VERSION:
        raise SealedStateError(f"{where} has version {head[0]}; this enclave reads version {VERSION}")
    if head[1] != MODES[mode]:
        theirs = next((name for name, number in MODES.items() if number == head[1]), f"#{head[1]}")
        raise SealedStateError(f"{where} was sealed by a {theirs.upper()} enclave and this one runs in "
                               f"{mode.upper()} mode: run it in {theirs} mode, or move the file away to "
                               "start with a new key and an empty state")
    try:
        plain = MasterKey(key).unseal(data[4 + length:], head)
    except SealingError:
        raise UnopenableState(f"{where} does not open: it was sealed by an enclave with another measurement "
                              "(code, signer, product id or mode) or on another host") from None
    return EnclaveState.from_cbor(plain)


class UnopenableState(SealedStateError):
    """Sealed for another measurement or host: an enclave that changed gets a new key."""


def load(path: Path, key: bytes, mode: str) -> EnclaveState | None:
    """The state sealed at `path`, or None when there is none yet. A state sealed for another
    measurement is moved aside (kept, never overwritten) and None returned: a new key."""
    if not path.exists():
        return None
    try:
        return decode(path.read_bytes(), key, mode, str(path))
    except UnopenableState:
        aside = path.with_name(f"{path.name}.{int(time.time())}.unopenable")
        os.replace(path, aside)
        return None


def save(path: Path, state: EnclaveState, key: bytes, mode: str) -> None:
    write_private(path, encode(state, key, mode))
