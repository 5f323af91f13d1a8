"""Conclave Mail, byte for byte as R3 Conclave's MailEncryptingStream writes it (conclave-wire.md §1-8).

    u16 P | prologue (P bytes, §2) | Noise X handshake (97 bytes; 96 for protocol 0, §3) | packets (§5)

Pure: no bus, no network. The host side only ever needs `read_header` and `key_derivation_kind`
(unauthenticated, before entering the enclave); the enclave and clients use `decrypt_mail`,
`encrypt_mail` and `PostOffice`. Keys are raw 32-byte X25519 values throughout.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from enum import IntEnum
from typing import Iterator, Protocol

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from components.conclave import noise

# §2 protocol ids (MailProtocol ordinals). Readers accept both, writers always use V2, whose
# handshake payload is one zero byte (Safari's WebCrypto cannot encrypt an empty array, §3) and whose
# decrypted stream starts with the private header (§4).
SENDER_KEY_TRANSMITTED = 0
SENDER_KEY_TRANSMITTED_V2 = 1
_HANDSHAKE_LENGTH = {SENDER_KEY_TRANSMITTED: 96, SENDER_KEY_TRANSMITTED_V2: 97}

# §5: Noise.MAX_PACKET_LEN 65535 = plaintext 65519 + tag; plaintext = payload + u16 user-byte count.
MAX_PACKET_LENGTH = 65535
MAX_PACKET_PAYLOAD = MAX_PACKET_LENGTH - noise.TAG_LEN - 2  # 65517

RANDOM_SESSION_KEY_DERIVATION = b"\x00"  # what a client puts in mail to an enclave (§2)
_ABANDONED_MRSIGNER_SIZE = 18  # Conclave 1.2's CPUSVN + ISVSVN header, read as a random session key

_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")


class MailDecryptionError(Exception):
    """Incoming mail that cannot be parsed, authenticated or decrypted (Conclave's
    MailDecryptionException; the web host answers it with 400 MAIL_DECRYPTION)."""


def _fail(reason: str) -> MailDecryptionError:
    # Conclave's MailDecryptingStream.error() appends this sentence to every reason.
    return MailDecryptionError(f"{reason}. Corrupt stream or not Conclave Mail.")


# --- keys -------------------------------------------------------------------------------------------


def new_private_key() -> bytes:
    """A fresh random X25519 private key, raw 32 bytes."""
    return X25519PrivateKey.generate().private_bytes_raw()


def public_key(private32: bytes) -> bytes:
    """The raw 32-byte X25519 public key of `private32`."""
    return noise.public_key(private32)


# --- headers ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MailHeader:
    """The prologue: cleartext, authenticated only to the holder of the recipient key (§2).

    An empty envelope or key derivation reads back as None: on the wire length 0 means absent.
    """

    sequence_number: int
    topic: str
    envelope: bytes | None
    key_derivation: bytes | None
    protocol: int = SENDER_KEY_TRANSMITTED_V2


@dataclass(frozen=True)
class Mail:
    """Decrypted mail. `sender` is the authenticated X25519 public key of whoever wrote it."""

    header: MailHeader
    body: bytes
    sender: bytes
    private_header: bytes | None


def _encode_modified_utf8(text: str) -> bytes:
    """Java's writeUTF bytes: UTF-8, except NUL is C0 80 and each UTF-16 unit (so each half of a
    surrogate pair) is encoded on its own in 3 bytes."""
    if "\x00" not in text:
        try:
            encoded = text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: Java writes it, in 3 bytes, like any unit
            encoded = None
        if encoded is not None and (len(encoded) == len(text) or max(text) <= "\uffff"):
            return encoded
    out = bytearray()
    units = text.encode("utf-16-be", "surrogatepass")
    for (unit,) in struct.iter_unpack(">H", units):
        if 0 < unit < 0x80:
            out.append(unit)
        elif unit < 0x800:
            out += bytes((0xC0 | unit >> 6, 0x80 | unit & 0x3F))
        else:
            out += bytes((0xE0 | unit >> 12, 0x80 | unit >> 6 & 0x3F, 0x80 | unit & 0x3F))
    return bytes(out)


def _decode_modified_utf8(raw: bytes) -> str:
    """Java's readUTF, except that a lone surrogate (which Java would return) is refused: a Python
    str holding one cannot be encoded again, so it would only fail later, further from the cause."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return _decode_java_utf8(raw)
    if text.isascii() or max(text) <= "\uffff":
        return text
    raise _fail("Topic holds a 4-byte UTF-8 sequence, which modified UTF-8 does not allow")


def _decode_java_utf8(raw: bytes) -> str:
    """The slow path: C0 80, surrogate halves and the overlong forms Java's readUTF accepts."""
    units: list[int] = []
    i, end = 0, len(raw)
    while i < end:
        lead = raw[i]
        if lead < 0x80:
            units.append(lead)
            i += 1
            continue
        if lead >> 5 == 0b110:
            width = 2
        elif lead >> 4 == 0b1110:
            width = 3
        else:
            raise _fail(f"Malformed modified UTF-8 in the topic around byte {i}")
        if i + width > end or any(b >> 6 != 0b10 for b in raw[i + 1 : i + width]):
            raise _fail(f"Malformed modified UTF-8 in the topic around byte {i}")
        if width == 2:
            units.append((lead & 0x1F) << 6 | raw[i + 1] & 0x3F)
        else:
            units.append((lead & 0x0F) << 12 | (raw[i + 1] & 0x3F) << 6 | raw[i + 2] & 0x3F)
        i += width
    try:
        return struct.pack(f">{len(units)}H", *units).decode("utf-16-be")
    except UnicodeDecodeError:
        raise _fail("Topic holds an unpaired UTF-16 surrogate") from None


def _length_prefixed(field: str, value: bytes | None) -> bytes:
    if value is None:
        return b"\x00\x00"
    if len(value) > 0xFFFF:
        # Java's writeShort would silently keep the low 16 bits and write a corrupt mail.
        raise ValueError(f"{field} is {len(value)} bytes; at most 65535 fit its u16 length")
    return _U16.pack(len(value)) + value


def _encode_prologue(header: MailHeader) -> bytes:
    """protocol id | i64 sequence | writeUTF topic | u16+envelope | u16+key derivation (§2)."""
    if not _LONG_MIN <= header.sequence_number <= _LONG_MAX:
        raise ValueError(f"sequence number {header.sequence_number} does not fit a signed 64-bit long")
    topic = _encode_modified_utf8(header.topic)
    if len(topic) > 0xFFFF:
        raise ValueError(f"topic is {len(topic)} bytes of modified UTF-8; writeUTF allows at most 65535")
    prologue = b"".join(
        (
            bytes((header.protocol,)),
            _I64.pack(header.sequence_number),
            _U16.pack(len(topic)),
            topic,
            _length_prefixed("envelope", header.envelope),
            _length_prefixed("key derivation", header.key_derivation),
        )
    )
    if len(prologue) > 0xFFFF:
        raise ValueError(f"the prologue is {len(prologue)} bytes; its u16 length allows at most 65535")
    return prologue


class _Reader:
    """Bounds-checked reads over the mail bytes: no length is trusted before it is checked."""

    __slots__ = ("data", "pos")

    def __init__(self, data: memoryview, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if end > len(self.data):
            raise _fail(what)
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u16(self, what: str) -> int:
        return _U16.unpack(self.take(2, what))[0]


def _parse_prologue(data: memoryview) -> tuple[MailHeader, memoryview, int]:
    """(header, raw prologue, offset of the handshake). Unauthenticated until the handshake."""
    outer = _Reader(data)
    premature = "Premature end of stream whilst reading the prologue"
    prologue = outer.take(outer.u16(premature), premature)
    fields = _Reader(prologue)
    truncated = "Truncated prologue"
    protocol = fields.take(1, truncated)[0]
    if protocol not in _HANDSHAKE_LENGTH:
        raise _fail(f"Invalid protocol ID {protocol}")
    sequence_number = _I64.unpack(fields.take(8, truncated))[0]
    topic = _decode_modified_utf8(bytes(fields.take(fields.u16(truncated), truncated)))
    envelope = bytes(fields.take(fields.u16(truncated), truncated)) or None
    key_derivation = bytes(fields.take(fields.u16(truncated), truncated)) or None
    # Any further prologue bytes are an extension: ignored, but still authenticated (§2).
    header = MailHeader(sequence_number, topic, envelope, key_derivation, protocol)
    return header, prologue, outer.pos


def read_header(data: bytes) -> MailHeader:
    """The prologue of `data`, unauthenticated: what the host reads before entering the enclave.
    Raises MailDecryptionError when it cannot be parsed."""
    return _parse_prologue(memoryview(data))[0]


# --- key derivation header (§2, MailKeyDerivation.kt) ------------------------------------------------


class MasterKeyType(IntEnum):
    """KDS master key types, by the ordinal Conclave writes (FACTS.md: KDS REST). Older Conclave
    releases named the three ordinals DEBUG, CLUSTER, DEVELOPMENT; the wire is the same."""

    DEVELOPMENT = 0
    CLUSTER = 1
    AZURE_HSM = 2


@dataclass(frozen=True)
class RandomSessionKey:
    """The mail is encrypted to the enclave's per-run key (the EII encryption key)."""


@dataclass(frozen=True)
class KdsKeySpec:
    """The mail is encrypted to a key the KDS derives; its sequence numbers are not checked (§7)."""

    name: str
    master_key_type: MasterKeyType
    policy_constraint: str

    def serialise(self) -> bytes:
        """`01` | i32+UTF-8 name | u8 type | i32+UTF-8 constraint, plus `00` if that made 18 bytes."""
        name, constraint = self.name.encode("utf-8"), self.policy_constraint.encode("utf-8")
        out = b"".join((b"\x01", _I32.pack(len(name)), name, bytes((self.master_key_type,)),
                        _I32.pack(len(constraint)), constraint))
        return out + b"\x00" if len(out) == _ABANDONED_MRSIGNER_SIZE else out


RANDOM_SESSION_KEY = RandomSessionKey()


def key_derivation_kind(kd: bytes | None) -> RandomSessionKey | KdsKeySpec:
    """Which key a mail is encrypted to, from its (unauthenticated) key-derivation header.

    Absent, 18 bytes (Conclave 1.2 clients) or type 0: the random session key; type 1: a KDS key
    spec; anything else MailDecryptionError, as the host does before entering the enclave.
    """
    if not kd or len(kd) == _ABANDONED_MRSIGNER_SIZE:
        return RANDOM_SESSION_KEY
    kind = int.from_bytes(kd[:1], "big", signed=True)  # Java's readByte() is signed
    if kind == 0:
        return RANDOM_SESSION_KEY
    if kind != 1:
        raise MailDecryptionError(f"Unknown key derivation type {kind}")
    try:
        return _parse_kds_key_spec(_Reader(memoryview(kd), 1))
    except (MailDecryptionError, ValueError) as exc:
        raise MailDecryptionError("Cannot deserialize the key derivation header") from exc


def _parse_kds_key_spec(fields: _Reader) -> KdsKeySpec:
    """i32 length + UTF-8 name | u8 master key type | i32 length + UTF-8 constraint; anything after
    is ignored, as Conclave does. Invalid UTF-8 is refused rather than replaced."""

    def string() -> str:
        length = _I32.unpack(fields.take(4, "truncated"))[0]
        if length < 0:
            raise ValueError("negative string length")
        return bytes(fields.take(length, "truncated")).decode("utf-8")

    name = string()
    master_key_type = MasterKeyType(fields.take(1, "truncated")[0])  # an unknown ordinal: ValueError
    return KdsKeySpec(name, master_key_type, string())


# --- topics -----------------------------------------------------------------------------------------


def check_topic(topic: str) -> None:
    """The sending side's rule (AbstractPostOffice.checkTopic): 1-255 UTF-16 chars, each a Unicode
    letter or digit or `-`. Raises ValueError naming what is wrong."""
    if not isinstance(topic, str):
        raise ValueError(f"Topic must be a string, not {type(topic).__name__}")
    if not topic or topic.isspace():
        raise ValueError("Topic must not be blank")
    length = len(topic.encode("utf-16-le", "surrogatepass")) // 2  # Java counts UTF-16 units
    if length >= 256:
        raise ValueError(f"Topic length must be less than 256 characters, is {length}")
    for index, char in enumerate(topic):  # every char before a refused one is one UTF-16 unit
        # Char.isLetterOrDigit sees UTF-16 units: a supplementary character is two surrogates, refused.
        if char != "-" and not ((char.isalpha() or char.isdecimal()) and char <= "\uffff"):
            raise ValueError(f"Character {index} of the topic is not a character, digit or -")


# --- min-size policies (§6, MinSizePolicy.kt) -------------------------------------------------------


class MinSizePolicy(Protocol):
    def min_size(self, body_size: int) -> int:
        """The payload floor for the next mail, whose body is `body_size` bytes."""
        ...


class FixedMinSize:
    """Every mail is padded to at least `size` payload bytes."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("Min size cannot be negative")
        self.size = size

    def min_size(self, body_size: int) -> int:
        return self.size


class LargestSeen:
    """The largest body seen so far, this one included; safe to share between post offices."""

    def __init__(self) -> None:
        self._seen = 0
        self._lock = threading.Lock()

    def min_size(self, body_size: int) -> int:
        with self._lock:
            self._seen = max(self._seen, body_size)
            return self._seen


class MovingAverage:
    """The integer mean of all body sizes so far, this one included; the default, because one
    huge mail does not bloat every later one as with largest-seen."""

    def __init__(self) -> None:
        self._sum = 0
        self._count = 0
        self._lock = threading.Lock()

    def min_size(self, body_size: int) -> int:
        with self._lock:
            total = self._sum + body_size
            if total > _LONG_MAX:
                # Conclave's reset on long overflow: restart from the mean (without this body).
                self._sum, self._count = self._sum // self._count, 1
            else:
                self._sum = total
            self._count += 1
            return self._sum // self._count


def fixed(size: int) -> FixedMinSize:
    return FixedMinSize(size)


def largest_seen() -> LargestSeen:
    return LargestSeen()


def moving_average() -> MovingAverage:
    return MovingAverage()


# --- writing (§4, §5: MailEncryptingStream) ---------------------------------------------------------


def _packet_parts(buffers: tuple[memoryview, ...]) -> Iterator[list[memoryview]]:
    """The user bytes (private-header length, header, body) cut into packet payloads of
    MAX_PACKET_PAYLOAD, each a list of slices so that a packet's plaintext is copied only once."""
    parts: list[memoryview] = []
    room = MAX_PACKET_PAYLOAD
    for buffer in buffers:
        pos = 0
        while pos < len(buffer):
            take = min(room, len(buffer) - pos)
            parts.append(buffer[pos : pos + take])
            pos += take
            room -= take
            if room == 0:  # a full packet goes out at once, unpadded
                yield parts
                parts, room = [], MAX_PACKET_PAYLOAD
    if parts:
        yield parts


def encrypt_mail(
    body: bytes,
    *,
    recipient_public: bytes,
    sender_private: bytes,
    topic: str,
    sequence_number: int,
    envelope: bytes | None = None,
    key_derivation: bytes | None = None,
    private_header: bytes | None = None,
    min_size: int = 0,
    ephemeral_private: bytes | None = None,
) -> bytes:
    """One mail, exactly as Conclave writes it: protocol 1, handshake payload `00`, the private
    header's i32 length and bytes in front of the body, full packets unpadded, the last partial
    packet padded by min(min_size - payload of the earlier packets, room left) zero bytes (so it can
    overshoot min_size: Conclave's writePacket), padding-only packets until the payload reaches
    min_size, then the terminator.

    The topic is not checked against the post-office rules here (Conclave's stream does not either);
    `ephemeral_private` is for tests only.
    """
    if min_size < 0:
        raise ValueError("min_size cannot be negative")
    if private_header is not None and len(private_header) > 0x7FFFFFFF:
        raise ValueError("the private header's length must fit a signed 32-bit int")
    header = MailHeader(sequence_number, topic, envelope, key_derivation, SENDER_KEY_TRANSMITTED_V2)
    prologue = _encode_prologue(header)
    payload = b"\x00"  # protocol 1's one-byte handshake payload (§3)
    handshake, cipher = noise.initiator_handshake(
        prologue, sender_private, recipient_public, payload, ephemeral_private
    )
    out = [_U16.pack(len(prologue)), prologue, handshake]
    written = 0  # payload bytes (user bytes + padding) so far: MES payloadBytesWritten

    def packet(parts: list[memoryview]) -> None:
        nonlocal written
        user_length = sum(map(len, parts))
        padding = min(max(min_size - written, 0), MAX_PACKET_PAYLOAD - user_length)
        ciphertext = cipher.encrypt(b"".join((*parts, bytes(padding), _U16.pack(user_length))))
        out.append(_U16.pack(len(ciphertext)))
        out.append(ciphertext)
        written += user_length + padding

    header_length = _I32.pack(len(private_header) if private_header else 0)
    for parts in _packet_parts((memoryview(header_length), memoryview(private_header or b""), memoryview(body))):
        packet(parts)
    while written < min_size:  # padding-only packets (§5)
        packet([])
    packet([])  # the terminator: an empty payload, so a reader can tell the end from a truncation
    return b"".join(out)


# --- reading (§5: MailDecryptingStream) -------------------------------------------------------------


_NO_TERMINATOR = "Stream ended without a terminator marker. Truncation can imply a MITM attack"


def _user_bytes(reader: _Reader, cipher: noise.CipherState) -> Iterator[memoryview]:
    """The user bytes of each packet up to the terminator; padding is dropped (§5)."""
    while True:
        length = reader.u16(_NO_TERMINATOR)
        if length < noise.TAG_LEN:
            raise _fail(f"Packet length {length} is less than MAC length {noise.TAG_LEN}")
        ciphertext = reader.take(length, _NO_TERMINATOR)
        try:
            plaintext = cipher.decrypt(ciphertext)
        except noise.NoiseError:
            raise _fail("A packet does not authenticate") from None
        payload_length = len(plaintext) - 2
        if payload_length < 0:
            raise _fail(f"Invalid plaintext length of {len(plaintext)}")
        if payload_length == 0:
            return  # the terminator; whatever follows it is never looked at
        user_length = _U16.unpack_from(plaintext, payload_length)[0]
        if user_length > payload_length:
            raise _fail("Invalid user bytes length")
        if user_length:
            yield memoryview(plaintext)[:user_length]


def _first_bytes(pieces: list[memoryview], n: int) -> bytes:
    return b"".join(piece[:n] for piece in pieces[:n])[:n]


def _split_private_header(pieces: list[memoryview]) -> tuple[bytes | None, bytes]:
    """(private header, body) from the user bytes: i32 length | header | body (§4)."""
    if not pieces or len(pieces[0]) < 4:
        pieces = [memoryview(b"".join(pieces))]  # the sender split the length itself across packets
    head = pieces[0]
    if len(head) < 4:
        raise _fail("Premature end of stream while reading encrypted header")
    size = _I32.unpack(head[:4])[0]
    if size < 0:
        raise _fail(f"Invalid encrypted header length {size}")
    end = 4 + size
    if len(head) < end:  # the header spans packets
        joined = memoryview(b"".join(pieces))
        if len(joined) < end:
            raise _fail("Premature end of stream while reading encrypted header")
        return bytes(joined[4:end]) or None, bytes(joined[end:])
    private_header = bytes(head[4:end]) or None
    pieces[0] = head[end:]
    return private_header, b"".join(pieces)


def decrypt_mail(data: bytes, private_key: bytes, *, max_size: int | None = None) -> Mail:
    """Authenticate and decrypt one mail (protocol 0 or 1, any packet split) sent to `private_key`.

    Raises MailDecryptionError for anything wrong with the mail, including a body above `max_size`
    bytes (refused as soon as the packets read exceed it). Bytes after the terminator are ignored,
    as Conclave's reader never looks at them.
    """
    if len(private_key) != noise.DH_LEN:
        raise ValueError(f"an X25519 private key is {noise.DH_LEN} bytes, not {len(private_key)}")
    view = memoryview(data)
    header, prologue, offset = _parse_prologue(view)
    reader = _Reader(view, offset)
    handshake = reader.take(_HANDSHAKE_LENGTH[header.protocol], "Premature end of stream during handshake")
    try:
        # The handshake payload (`00` in protocol 1) is not checked, as in Conclave (§3).
        sender, _payload, cipher = noise.responder_handshake(bytes(prologue), private_key, handshake)
    except noise.NoiseError:
        raise _fail("The mail could not be decrypted due to either data corruption or key mismatch") from None

    has_private_header = header.protocol == SENDER_KEY_TRANSMITTED_V2
    limit = None if max_size is None else max_size + (4 if has_private_header else 0)
    header_counted = not has_private_header
    pieces: list[memoryview] = []
    total = 0
    for piece in _user_bytes(reader, cipher):
        pieces.append(piece)
        total += len(piece)
        if limit is not None and total > limit:
            if not header_counted:  # total > limit >= 4: the header's length is here now
                header_counted = True
                limit += max(_I32.unpack(_first_bytes(pieces, 4))[0], 0)
            if total > limit:
                raise MailDecryptionError(f"mail larger than {max_size} bytes")
    if not has_private_header:
        return Mail(header, b"".join(pieces), sender, None)
    private_header, body = _split_private_header(pieces)
    return Mail(header, body, sender, private_header)


# --- post office (PostOffice / EII post office / AbstractPostOffice) --------------------------------


class PostOffice:
    """A stream of mail from one sender key to one recipient key on one topic, numbered 0, 1, 2…

    For mail to an enclave the recipient is the EII encryption key and the key derivation `00`
    (the default, as Conclave's EII post office); `key_derivation=None` is Conclave's plain
    `PostOffice.create` and the enclave's replies. Not thread-safe, as Conclave's is not.
    """

    def __init__(
        self,
        sender_private: bytes,
        recipient_public: bytes,
        topic: str = "default",
        *,
        key_derivation: bytes | None = RANDOM_SESSION_KEY_DERIVATION,
        min_size_policy: MinSizePolicy | None = None,
    ) -> None:
        check_topic(topic)
        if len(recipient_public) != noise.DH_LEN:
            raise ValueError(f"the recipient public key is {noise.DH_LEN} bytes, not {len(recipient_public)}")
        self.sender_public = public_key(sender_private)  # also checks the private key
        self._sender_private = bytes(sender_private)
        self.recipient_public = bytes(recipient_public)
        self.topic = topic
        self.key_derivation = key_derivation
        self.min_size_policy: MinSizePolicy = min_size_policy if min_size_policy is not None else moving_average()
        self._next_sequence_number = 0
        self._encrypted = False

    @property
    def next_sequence_number(self) -> int:
        return self._next_sequence_number

    @next_sequence_number.setter
    def next_sequence_number(self, value: int) -> None:
        """Only before the first mail (to restore a long-lived sender's stream), and never < 0."""
        if self._encrypted:
            raise RuntimeError("Cannot change the sequence number once mail has been created.")
        if value < 0 or value > _LONG_MAX:
            raise ValueError("Sequence number cannot be negative." if value < 0 else "Sequence number too large.")
        self._next_sequence_number = value

    def encrypt(self, body: bytes, envelope: bytes | None = None, *, private_header: bytes | None = None) -> bytes:
        """The next mail of the stream; its sequence number is used up even if the caller drops it."""
        self._encrypted = True
        sequence_number = self._next_sequence_number
        self._next_sequence_number += 1
        return encrypt_mail(
            body,
            recipient_public=self.recipient_public,
            sender_private=self._sender_private,
            topic=self.topic,
            sequence_number=sequence_number,
            envelope=envelope,
            key_derivation=self.key_derivation,
            private_header=private_header,
            min_size=self.min_size_policy.min_size(len(body)),
        )

    def decrypt(self, data: bytes, *, max_size: int | None = None) -> Mail:
        """A reply: decrypted with the sender key and required to come from the recipient key.
        Raises MailDecryptionError if it does not decrypt, ValueError if someone else wrote it
        (Conclave's IllegalArgumentException)."""
        mail = decrypt_mail(data, self._sender_private, max_size=max_size)
        if mail.sender != self.recipient_public:
            raise ValueError(
                "Mail does not originate from expected sender. Authenticated sender was "
                f"{mail.sender.hex()} but expected {self.recipient_public.hex()}."
            )
        return mail
