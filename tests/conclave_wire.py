"""Conclave's wire format written again, from conclave-wire.md alone, for the tests.

The tests build the mail they send and read the mail and attestations they get with this module,
never with teebus's encoder (components/conclave/mail.py, eii.py): a client written against Conclave's
published format must work, not one written from our code. Small on purpose: Noise X as §3 spells
it, one packet per mail (a reader accepts any split, §5), no padding.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

NAME = b"Noise_X_25519_AESGCM_SHA256"


def x25519_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _dh(private: bytes, public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(public))


def _hkdf(ck: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    t = hmac.digest(ck, ikm, "sha256")
    first = hmac.digest(t, b"\x01", "sha256")
    return first, hmac.digest(t, first + b"\x02", "sha256")


def _nonce(n: int) -> bytes:
    return b"\x00" * 4 + struct.pack(">Q", n)


def prologue(sequence: int, topic: str, key_derivation: bytes = b"\x00", envelope: bytes = b"") -> bytes:
    """§2: protocol 1, i64 sequence, writeUTF topic, u16+envelope, u16+key derivation."""
    raw_topic = topic.encode()
    return (b"\x01" + struct.pack(">q", sequence) + struct.pack(">H", len(raw_topic)) + raw_topic
            + struct.pack(">H", len(envelope)) + envelope + struct.pack(">H", len(key_derivation)) + key_derivation)


def write_mail(body: bytes, *, sender_private: bytes, recipient_public: bytes, sequence: int, topic: str = "default",
               ephemeral_private: bytes, key_derivation: bytes = b"\x00", envelope: bytes = b"") -> bytes:
    """One mail as Conclave's MailEncryptingStream writes it (§1-5), one data packet, no padding."""
    head = prologue(sequence, topic, key_derivation, envelope)
    h = NAME + b"\x00" * (32 - len(NAME))
    ck = h
    h = hashlib.sha256(h + head).digest()
    h = hashlib.sha256(h + recipient_public).digest()
    e_pub = x25519_public(ephemeral_private)
    h = hashlib.sha256(h + e_pub).digest()
    ck, k = _hkdf(ck, _dh(ephemeral_private, recipient_public))
    s_sealed = AESGCM(k).encrypt(_nonce(0), x25519_public(sender_private), h)
    h = hashlib.sha256(h + s_sealed).digest()
    ck, k = _hkdf(ck, _dh(sender_private, recipient_public))
    payload = AESGCM(k).encrypt(_nonce(0), b"\x00", h)
    transport, _ = _hkdf(ck, b"")
    plain = struct.pack(">I", 0) + body                      # §4: no private header
    data_packet = AESGCM(transport).encrypt(_nonce(0), plain + struct.pack(">H", len(plain)), None)
    terminator = AESGCM(transport).encrypt(_nonce(1), b"\x00\x00", None)
    packets = b"".join(struct.pack(">H", len(p)) + p for p in (data_packet, terminator))
    return struct.pack(">H", len(head)) + head + e_pub + s_sealed + payload + packets


@dataclass
class ReadMail:
    sequence: int
    topic: str
    sender: bytes
    private_header: bytes
    body: bytes


def read_mail(data: bytes, recipient_private: bytes) -> ReadMail:
    """Open a mail (§1-5) as Conclave's MailDecryptingStream does; raises on any failure."""
    (length,) = struct.unpack_from(">H", data)
    head, pos = data[2:2 + length], 2 + length
    assert head[0] == 1, "protocol 1"
    (sequence,) = struct.unpack_from(">q", head, 1)
    (topic_length,) = struct.unpack_from(">H", head, 9)
    topic = head[11:11 + topic_length].decode()
    h = NAME + b"\x00" * (32 - len(NAME))
    ck = h
    h = hashlib.sha256(h + head).digest()
    h = hashlib.sha256(h + x25519_public(recipient_private)).digest()
    e_pub, s_sealed, payload = data[pos:pos + 32], data[pos + 32:pos + 80], data[pos + 80:pos + 97]
    h = hashlib.sha256(h + e_pub).digest()
    ck, k = _hkdf(ck, _dh(recipient_private, e_pub))
    sender = AESGCM(k).decrypt(_nonce(0), s_sealed, h)
    h = hashlib.sha256(h + s_sealed).digest()
    ck, k = _hkdf(ck, _dh(recipient_private, sender))
    AESGCM(k).decrypt(_nonce(0), payload, h)
    transport, _ = _hkdf(ck, b"")
    pos += 97
    user, counter = b"", 0
    while True:
        (packet_length,) = struct.unpack_from(">H", data, pos)
        plain = AESGCM(transport).decrypt(_nonce(counter), data[pos + 2:pos + 2 + packet_length], None)
        pos, counter = pos + 2 + packet_length, counter + 1
        (used,) = struct.unpack(">H", plain[-2:])
        if len(plain) == 2:
            break
        user += plain[:used]
    (header_length,) = struct.unpack_from(">I", user)
    return ReadMail(sequence, topic, sender, user[4:4 + header_length], user[4 + header_length:])


@dataclass
class Attestation:
    signing_key: bytes
    encryption_key: bytes
    attestation_type: int
    code_hash: bytes
    code_signer: bytes
    product_id: int
    revocation_level: int
    report_data: bytes


def read_eii(data: bytes) -> Attestation:
    """§11: "EII", i32+signing key, i32+encryption key, u8 type, i32+attestation; Mock report body."""
    assert data[:3] == b"EII"
    pos = 3
    (n,) = struct.unpack_from(">i", data, pos)
    signing = data[pos + 4:pos + 4 + n]
    pos += 4 + n
    (n,) = struct.unpack_from(">i", data, pos)
    encryption = data[pos + 4:pos + 4 + n]
    pos += 4 + n
    kind = data[pos]
    (n,) = struct.unpack_from(">i", data, pos + 1)
    attestation = data[pos + 5:pos + 5 + n]
    body = attestation[12:12 + 384]
    return Attestation(signing, encryption, kind, body[64:96], body[128:160], struct.unpack_from("<H", body, 256)[0],
                       struct.unpack_from("<H", body, 258)[0] - 1, body[320:384])
