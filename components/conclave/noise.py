"""Noise_X_25519_AESGCM_SHA256, the one-way handshake under Conclave Mail (conclave-wire.md §3).

Only what Mail needs: the symmetric state of Noise rev 34 (h, ck, MixHash, MixKey, HKDF), an AES-GCM
cipher state, and pattern X for both sides:

    <- s
    ...
    -> e, es, s, ss

The writer of a mail is the initiator, its reader the responder. Keys are raw 32-byte X25519 values.
Every primitive comes from `cryptography`; nothing here knows about the Mail format.
"""

from __future__ import annotations

import functools

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PROTOCOL_NAME = b"Noise_X_25519_AESGCM_SHA256"
DH_LEN = 32
TAG_LEN = 16
# e.pub, then s.pub encrypted; the payload's ciphertext (len(payload) + 16) follows.
HANDSHAKE_OVERHEAD = DH_LEN + DH_LEN + TAG_LEN + TAG_LEN

_NONCE_PREFIX = bytes(4)
_MAX_NONCE = 2**64 - 1  # reserved by Noise (§5.1), never used for a message


class NoiseError(ValueError):
    """A handshake or packet that does not authenticate, or a key that cannot be used."""


def _sha256(*parts: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    for part in parts:
        digest.update(part)
    return digest.finalize()


def _hmac(key: bytes, *parts: bytes) -> bytes:
    mac = hmac.HMAC(key, hashes.SHA256())
    for part in parts:
        mac.update(part)
    return mac.finalize()


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """Noise's HKDF with two outputs (§4.3): the new chaining key and a cipher key."""
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    return out1, _hmac(temp, out1, b"\x02")


def _private(key32: bytes) -> X25519PrivateKey:
    if len(key32) != DH_LEN:
        raise NoiseError(f"an X25519 private key is {DH_LEN} bytes, not {len(key32)}")
    return _load_private(bytes(key32))


@functools.lru_cache(maxsize=256)
def _load_private(key32: bytes) -> X25519PrivateKey:
    """Loading a key computes its public half, a scalar multiplication as dear as a DH: the same
    few static keys (an enclave's, a post office's) sign every mail, so they are kept loaded."""
    return X25519PrivateKey.from_private_bytes(key32)


def _dh(private: X25519PrivateKey, public32: bytes) -> bytes:
    """X25519; `cryptography` refuses low-order points (all-zero result), noise-java did not (§3)."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(bytes(public32)))
    except ValueError as exc:
        raise NoiseError("X25519 with a low-order or malformed public key") from exc


def public_key(private32: bytes) -> bytes:
    """The raw X25519 public key of a raw private key."""
    return _private(private32).public_key().public_bytes_raw()


def _nonce(n: int) -> bytes:
    """4 zero bytes then the counter as u64 big-endian (Noise's AESGCM)."""
    if n >= _MAX_NONCE:
        raise NoiseError("cipher state nonce exhausted")
    return _NONCE_PREFIX + n.to_bytes(8, "big")


class CipherState:
    """One AES-GCM key and its message counter; Mail packets use it with empty associated data.

    `handshake_hash` is the final h of the handshake that produced it (what test vectors call
    handshake_hash); empty for a cipher made directly from a key.
    """

    __slots__ = ("_aead", "n", "handshake_hash")

    def __init__(self, key: bytes, handshake_hash: bytes = b"") -> None:
        self._aead = AESGCM(key)
        self.n = 0
        self.handshake_hash = handshake_hash

    def encrypt(self, plaintext: bytes, ad: bytes | None = None) -> bytes:
        ciphertext = self._aead.encrypt(_nonce(self.n), plaintext, ad)
        self.n += 1
        return ciphertext

    def decrypt(self, ciphertext: bytes, ad: bytes | None = None) -> bytes:
        """The plaintext; raises NoiseError when the tag does not verify (the counter then stays)."""
        try:
            plaintext = self._aead.decrypt(_nonce(self.n), ciphertext, ad)
        except InvalidTag as exc:
            raise NoiseError("AES-GCM tag does not verify") from exc
        self.n += 1
        return plaintext


class SymmetricState:
    """h, ck and the handshake cipher of Noise §5.2, as conclave-wire.md §3 writes them out."""

    __slots__ = ("h", "ck", "_cipher")

    def __init__(self, protocol_name: bytes = PROTOCOL_NAME) -> None:
        # A name of at most HASHLEN bytes is zero-padded, a longer one hashed.
        h = protocol_name.ljust(32, b"\x00") if len(protocol_name) <= 32 else _sha256(protocol_name)
        self.h = h
        self.ck = h
        self._cipher: CipherState | None = None

    def mix_hash(self, data: bytes) -> None:
        self.h = _sha256(self.h, data)

    def mix_key(self, ikm: bytes) -> None:
        self.ck, key = _hkdf2(self.ck, ikm)
        self._cipher = CipherState(key)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = plaintext if self._cipher is None else self._cipher.encrypt(plaintext, self.h)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = ciphertext if self._cipher is None else self._cipher.decrypt(ciphertext, self.h)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """The initiator→responder and responder→initiator ciphers; one-way X uses only the first."""
        k1, k2 = _hkdf2(self.ck, b"")
        return CipherState(k1, self.h), CipherState(k2, self.h)


def _start(prologue: bytes, responder_static_public: bytes) -> SymmetricState:
    state = SymmetricState()
    state.mix_hash(prologue)
    state.mix_hash(responder_static_public)  # pre-message "<- s"
    return state


def initiator_handshake(
    prologue: bytes,
    s_private32: bytes,
    rs_public32: bytes,
    payload: bytes = b"",
    e_private32: bytes | None = None,
) -> tuple[bytes, CipherState]:
    """Write the single X message to the holder of `rs_public32`: (message, sending cipher).

    The message is e.pub (32) | AESGCM(s.pub) (48) | AESGCM(payload) (len + 16). `e_private32` is
    only for test vectors; normally a fresh ephemeral key is made.
    """
    if len(rs_public32) != DH_LEN:
        raise NoiseError(f"an X25519 public key is {DH_LEN} bytes, not {len(rs_public32)}")
    s = _private(s_private32)
    e = X25519PrivateKey.generate() if e_private32 is None else _private(e_private32)
    e_public = e.public_key().public_bytes_raw()
    state = _start(prologue, rs_public32)
    state.mix_hash(e_public)  # e
    state.mix_key(_dh(e, rs_public32))  # es
    encrypted_s = state.encrypt_and_hash(s.public_key().public_bytes_raw())  # s
    state.mix_key(_dh(s, rs_public32))  # ss
    encrypted_payload = state.encrypt_and_hash(payload)
    return b"".join((e_public, encrypted_s, encrypted_payload)), state.split()[0]


def responder_handshake(prologue: bytes, s_private32: bytes, message: bytes) -> tuple[bytes, bytes, CipherState]:
    """Read the X message: (the initiator's authenticated static public key, payload, receiving
    cipher). Raises NoiseError if anything, prologue included, was changed or the key is wrong."""
    if len(message) < HANDSHAKE_OVERHEAD:
        raise NoiseError(f"an X handshake message is at least {HANDSHAKE_OVERHEAD} bytes, not {len(message)}")
    s = _private(s_private32)
    state = _start(prologue, s.public_key().public_bytes_raw())
    re = bytes(message[:DH_LEN])
    state.mix_hash(re)  # e
    state.mix_key(_dh(s, re))  # es
    rs = state.decrypt_and_hash(bytes(message[DH_LEN : 2 * DH_LEN + TAG_LEN]))  # s
    state.mix_key(_dh(s, rs))  # ss
    payload = state.decrypt_and_hash(bytes(message[2 * DH_LEN + TAG_LEN :]))
    return rs, payload, state.split()[0]
