"""Secrets at rest: AES-256-GCM under a master key kept in the data directory (mode 0600).

Each sealed blob is `nonce(12) || ciphertext+tag`, bound to its record by associated data (for
example the record's id), so a blob copied onto another record does not open.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bus.credentials import read_private, write_private

NONCE_BYTES = 12


class SealingError(ValueError):
    """A blob did not open: wrong master key, tampering, or a blob of another record."""


class MasterKey:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a master key is 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def load_or_create(cls, path: Path) -> "MasterKey":
        """Load the key at `path`, generating it on first start; refuse a file others can read."""
        if not path.exists():
            write_private(path, AESGCM.generate_key(bit_length=256))
        return cls(read_private(path))

    def seal(self, plaintext: bytes, associated: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, associated)

    def unseal(self, blob: bytes, associated: bytes) -> bytes:
        if len(blob) < NONCE_BYTES + 16:
            raise SealingError("sealed blob is truncated")
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated)
        except InvalidTag:
            raise SealingError("sealed blob does not open with this master key") from None
