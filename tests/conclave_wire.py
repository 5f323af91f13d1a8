"""Conclave's wire format written again, from conclave-wire.md alone: the tests' one independent reference.

The tests build the mail they send and read the mail and attestations they get with this module, never with
teebus's codec (components/conclave/mail.py, noise.py, eii.py): a client written against Conclave's published
format must work, not one written from our code. It shares no code with the codec (stdlib hashlib/hmac and
`cryptography`'s X25519 and AES-GCM only); tests/test_conclave_mail.py holds the codec to it byte for byte.

What implements which section of conclave-wire.md:
- §2 `prologue`: any protocol id, sequence, topic (text, or raw bytes that may be what modified UTF-8
  refuses), envelope, key derivation and extension bytes.
- §3 `handshake` (the writer, Noise initiator) and `open_handshake` (the reader, responder): Noise X as §3
  spells it out, with `x25519_public`, `_dh`, `_hkdf` and `_nonce`; any handshake payload.
- §4 `user_stream`: the decrypted stream of protocol 1, u32 length | private header | body.
- §5 `plaintext` (one packet's plaintext, padding included), `TERMINATOR`, `MAX_PAYLOAD` and
  `packet_plaintexts` (how Conclave's writer splits and pads a stream for a min size).
- §1 `seal`: a whole mail from any prologue, handshake payload and packet plaintexts, with trailing bytes;
  `open_mail`: a whole mail of protocol 0 or 1 opened, every field and each packet's lengths.
- §1-5 as a client uses them: `write_mail` (protocol 1, no private header, no padding: the mail a client's
  post office writes with min size 0) and `read_mail`.
- §11 `read_eii`: an EnclaveInstanceInfo, with the Mock attestation's report body.
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
MAX_PAYLOAD = 65517  # §5: user bytes and padding of one packet, 65535 - 16 (tag) - 2 (user-byte count)


# -- §3: Noise X ----------------------------------------------------------------------------------------

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


def _mixed(head: bytes, recipient_public: bytes, e_pub: bytes) -> tuple[bytes, bytes]:
    """(ck, h) once the padded name, the prologue, the pre-message `rs` and `e.pub` are mixed in."""
    h = NAME + b"\x00" * (32 - len(NAME))
    ck = h
    for data in (head, recipient_public, e_pub):
        h = hashlib.sha256(h + data).digest()
    return ck, h


def handshake(head: bytes, sender_private: bytes, recipient_public: bytes, payload: bytes,
              ephemeral_private: bytes) -> tuple[bytes, bytes]:
    """The writer's side of §3 for the prologue `head`: (handshake message, transport key). The message is
    e.pub | AESGCM(s.pub) | AESGCM(payload): 97 bytes for protocol 1's payload 00, 96 for protocol 0's none."""
    e_pub = x25519_public(ephemeral_private)
    ck, h = _mixed(head, recipient_public, e_pub)
    ck, k = _hkdf(ck, _dh(ephemeral_private, recipient_public))
    sealed_sender = AESGCM(k).encrypt(_nonce(0), x25519_public(sender_private), h)
    h = hashlib.sha256(h + sealed_sender).digest()
    ck, k = _hkdf(ck, _dh(sender_private, recipient_public))
    sealed_payload = AESGCM(k).encrypt(_nonce(0), payload, h)
    return e_pub + sealed_sender + sealed_payload, _hkdf(ck, b"")[0]


def open_handshake(head: bytes, recipient_private: bytes, message: bytes) -> tuple[bytes, bytes, bytes]:
    """The reader's side of §3: (sender public key, payload, transport key); raises InvalidTag if it fails."""
    e_pub, sealed_sender, sealed_payload = message[:32], message[32:80], message[80:]
    ck, h = _mixed(head, x25519_public(recipient_private), e_pub)
    ck, k = _hkdf(ck, _dh(recipient_private, e_pub))
    sender = AESGCM(k).decrypt(_nonce(0), sealed_sender, h)
    h = hashlib.sha256(h + sealed_sender).digest()
    ck, k = _hkdf(ck, _dh(recipient_private, sender))
    payload = AESGCM(k).decrypt(_nonce(0), sealed_payload, h)
    return sender, payload, _hkdf(ck, b"")[0]


# -- §2, §4, §5: prologue, private header, packets ------------------------------------------------------

def prologue(sequence: int = 0, topic: str | bytes = "default", key_derivation: bytes = b"\x00",
             envelope: bytes = b"", *, protocol: int = 1, extension: bytes = b"") -> bytes:
    """§2: u8 protocol id, i64 sequence, writeUTF topic (u16 + modified UTF-8), u16 + envelope,
    u16 + key derivation, then any extension bytes. A text topic is written as UTF-8, which is modified
    UTF-8 for every topic a sender may use (letters, digits and '-' of the BMP: no NUL, no surrogate pair);
    a bytes topic is written as given."""
    raw_topic = topic.encode() if isinstance(topic, str) else topic
    return (bytes((protocol,)) + struct.pack(">q", sequence) + struct.pack(">H", len(raw_topic)) + raw_topic
            + struct.pack(">H", len(envelope)) + envelope + struct.pack(">H", len(key_derivation)) + key_derivation
            + extension)


def user_stream(body: bytes, private_header: bytes | None = None) -> bytes:
    """§4: the decrypted stream of protocol 1 is u32 length | private header | body (length 0: none)."""
    header = private_header or b""
    return struct.pack(">I", len(header)) + header + body


def plaintext(user: bytes, padding: int = 0) -> bytes:
    """One packet's plaintext (§5): user bytes | zero padding | u16 number of user bytes."""
    return user + bytes(padding) + struct.pack(">H", len(user))


TERMINATOR = plaintext(b"")


def packet_plaintexts(user: bytes, min_size: int = 0) -> list[bytes]:
    """The writer's packet plaintexts as §5 describes them (MES write/close), terminator included: full
    packets of MAX_PAYLOAD, the partial last one padded by min(min_size - payload so far, room left), then
    padding-only packets until the payload written reaches min_size."""
    out, written = [], 0
    full, rest = divmod(len(user), MAX_PAYLOAD)
    for i in range(full):
        out.append(plaintext(user[i * MAX_PAYLOAD:(i + 1) * MAX_PAYLOAD]))
        written += MAX_PAYLOAD
    if rest:
        padding = max(0, min(min_size - written, MAX_PAYLOAD - rest))
        out.append(plaintext(user[full * MAX_PAYLOAD:], padding))
        written += rest + padding
    while written < min_size:
        padding = min(min_size - written, MAX_PAYLOAD)
        out.append(plaintext(b"", padding))
        written += padding
    return out + [TERMINATOR]


# -- §1: a whole mail -----------------------------------------------------------------------------------

def seal(head: bytes, plaintexts: list[bytes], *, sender_private: bytes, recipient_public: bytes,
         ephemeral_private: bytes, payload: bytes = b"\x00", trailing: bytes = b"") -> bytes:
    """§1: u16 P | prologue `head` | handshake (§3, `payload` its handshake payload) | one packet
    u16 L | AES-GCM ciphertext per plaintext under the transport key (§5), nonces 0, 1, ... | `trailing`."""
    message, key = handshake(head, sender_private, recipient_public, payload, ephemeral_private)
    aead = AESGCM(key)
    packets = (aead.encrypt(_nonce(n), plain, None) for n, plain in enumerate(plaintexts))
    return (struct.pack(">H", len(head)) + head + message + b"".join(struct.pack(">H", len(p)) + p for p in packets)
            + trailing)


@dataclass
class OpenedMail:
    prologue: bytes
    sender: bytes
    payload: bytes                    # the handshake payload
    packets: list[tuple[int, int]]    # each packet's (payload length, user bytes), the terminator's (0, 0) last
    private_header: bytes             # b"" for none, and always for protocol 0
    body: bytes
    rest: bytes                       # what follows the terminator (a reader ignores it)


def open_mail(data: bytes, recipient_private: bytes) -> OpenedMail:
    """Open a mail (§1-5) as Conclave's MailDecryptingStream does, protocol 0 or 1; raises on any failure."""
    (length,) = struct.unpack_from(">H", data)
    head, pos = data[2:2 + length], 2 + length
    protocol = head[0]
    assert protocol in (0, 1), f"protocol {protocol}"
    handshake_length = 97 if protocol == 1 else 96
    sender, payload, key = open_handshake(head, recipient_private, data[pos:pos + handshake_length])
    pos += handshake_length
    aead, counter, user, packets = AESGCM(key), 0, b"", []
    while True:
        (packet_length,) = struct.unpack_from(">H", data, pos)
        plain = aead.decrypt(_nonce(counter), data[pos + 2:pos + 2 + packet_length], None)
        pos, counter = pos + 2 + packet_length, counter + 1
        (used,) = struct.unpack(">H", plain[-2:])
        packets.append((len(plain) - 2, used))
        if len(plain) == 2:
            break
        user += plain[:used]
    if protocol == 0:                  # §4: no private header
        header, body = b"", user
    else:
        (header_length,) = struct.unpack_from(">I", user)
        header, body = user[4:4 + header_length], user[4 + header_length:]
    return OpenedMail(head, sender, payload, packets, header, body, data[pos:])


# -- §1-5 as a client uses them -------------------------------------------------------------------------

def write_mail(body: bytes, *, sender_private: bytes, recipient_public: bytes, sequence: int, topic: str = "default",
               ephemeral_private: bytes, key_derivation: bytes = b"\x00", envelope: bytes = b"") -> bytes:
    """One mail as Conclave's MailEncryptingStream writes it (§1-5) with min size 0: protocol 1, no private
    header, no padding: one data packet for a body of up to 65513 bytes, full packets of MAX_PAYLOAD first
    for a longer one."""
    return seal(prologue(sequence, topic, key_derivation, envelope), packet_plaintexts(user_stream(body)),
                sender_private=sender_private, recipient_public=recipient_public, ephemeral_private=ephemeral_private)


@dataclass
class ReadMail:
    sequence: int
    topic: str
    sender: bytes
    private_header: bytes
    body: bytes


def read_mail(data: bytes, recipient_private: bytes) -> ReadMail:
    """Open a mail (§1-5) as Conclave's MailDecryptingStream does, with the sequence number and topic of its
    prologue (§2); raises on any failure."""
    mail = open_mail(data, recipient_private)
    (sequence,) = struct.unpack_from(">q", mail.prologue, 1)
    (topic_length,) = struct.unpack_from(">H", mail.prologue, 9)
    topic = mail.prologue[11:11 + topic_length].decode()
    return ReadMail(sequence, topic, mail.sender, mail.private_header, mail.body)


# -- §11: EnclaveInstanceInfo ---------------------------------------------------------------------------

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
