"""Conclave's EnclaveInstanceInfo (EII): the attestation bytes `GET /attestation` serves, byte for byte.

Pure: no network, no bus. The layout, the Mock attestation, the SGX report body, the key binding and the
mode/security rules are those of /work/shared/conclave-wire.md §11; the keys come from one 32-byte secret
as in §8. Parsing follows Conclave's `EnclaveInstanceInfo.deserialize` / `EnclaveInstanceInfoImpl` /
`Attestation.get` order, so the same bytes are refused for the same reason, with Conclave's wording
("Not / Truncated / Corrupted EnclaveInstanceInfo bytes") plus what exactly was wrong.

What we do not do: verify EPID or DCAP quotes. Conclave checks them against Intel's roots and collateral
(IAS certificate path, PCK chain, CRLs, TCB info, QE identity); teebus carries none of that, so a hardware
EII is parsed for its report body but is never more than INSECURE here (`quote_verified` is False).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import struct
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

MAGIC = b"EII"
# X.509 SubjectPublicKeyInfo header of an Ed25519 key (RFC 8410); Conclave always writes these 44 bytes (§11).
SIGNING_KEY_PREFIX = bytes.fromhex("302a300506032b6570032100")
SIGNING_KEY_SIZE = len(SIGNING_KEY_PREFIX) + 32
ENCRYPTION_KEY_SIZE = 32
REPORT_BODY_SIZE = 384
MOCK_ATTESTATION_SIZE = 8 + 4 + REPORT_BODY_SIZE + 1  # 397 (§11)
QUOTE_SIZE = 432  # sgx_quote_t without its signature: 48-byte header + report body
QUOTE_REPORT_BODY = slice(48, QUOTE_SIZE)
FLAG_DEBUG = 0x2
MAX_REVOCATION_LEVEL = 65534  # isvSvn is a u16 and revocation level = isvSvn - 1 (EnclaveInfo, §11)

# java.time.Instant's range: an EII whose mock timestamp falls outside it is unreadable in Conclave.
_INSTANT_MIN_SECOND = -31557014167219200
_INSTANT_MAX_SECOND = 31556889864403199
_NANOS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

_DCAP_COLLATERAL = (
    "version", "PCK CRL issuer chain", "root CA CRL", "PCK CRL", "TCB info issuer chain",
    "signed TCB info", "QE identity issuer chain", "signed QE identity",
)


class EiiError(ValueError):
    """Bytes that Conclave's `EnclaveInstanceInfo.deserialize` would refuse (IllegalArgumentException there)."""


class AttestationType(enum.IntEnum):
    """The attestation type byte of an EII (§11)."""

    EPID = 0
    DCAP = 1
    MOCK = 2

    def __str__(self) -> str:
        return self.name


class EnclaveMode(enum.IntEnum):
    """Conclave's EnclaveMode; the value is its ordinal, which is also the sealed-state header's mode byte."""

    RELEASE = 0
    DEBUG = 1
    SIMULATION = 2
    MOCK = 3

    def __str__(self) -> str:
        return self.name

    @property
    def header_code(self) -> int:
        """The mode byte of the sealed state header `[version=1, mode]` (FACTS.md, Conclave)."""
        return int(self.value)

    @property
    def is_hardware(self) -> bool:
        return self in (EnclaveMode.RELEASE, EnclaveMode.DEBUG)


class SecuritySummary(enum.IntEnum):
    """EnclaveSecurityInfo.Summary, ordered as Conclave orders it: INSECURE < STALE < SECURE."""

    INSECURE = 0
    STALE = 1
    SECURE = 2

    def __str__(self) -> str:
        return self.name


def _truncated(detail: str) -> EiiError:
    return EiiError(f"Truncated EnclaveInstanceInfo bytes: {detail}")


def _corrupted(detail: str) -> EiiError:
    return EiiError(f"Corrupted EnclaveInstanceInfo bytes: {detail}")


def _digest(algorithm: hashes.HashAlgorithm, *parts: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    for part in parts:
        h.update(part)
    return h.finalize()


class _Reader:
    """A cursor over bytes that fails the way Conclave's ByteBuffer reads do: short → truncated."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining:
            raise _truncated(f"{what} needs {n} bytes but only {self.remaining} are left")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, what: str) -> int:
        (value,) = struct.unpack(fmt, self.take(struct.calcsize(fmt), what))
        return value

    def prefixed(self, what: str) -> bytes:
        """i32 BE length + bytes (Conclave's getIntLengthPrefixBytes / -Slice)."""
        length = self.unpack(">i", f"length of the {what}")
        if length < 0:
            raise _corrupted(f"negative length {length} for the {what}")
        return self.take(length, what)


# --- the SGX report body (§11) -------------------------------------------------------------------

_REPORT_BODY = struct.Struct("<16sI12s16sQQ32s32s32s32s64sHHH42s16s64s")
assert _REPORT_BODY.size == REPORT_BODY_SIZE


@dataclass(frozen=True)
class ReportBody:
    """sgx_report_body_t, 384 bytes, little-endian fields at the offsets of §11. Reserved bytes are kept
    so that a parsed body serialises back to the same bytes."""

    cpu_svn: bytes = bytes(16)           # 0
    misc_select: int = 0                 # 16, u32
    reserved1: bytes = bytes(12)         # 20
    isv_ext_prod_id: bytes = bytes(16)   # 32
    attributes_flags: int = 0            # 48, u64 (0x1 INITTED, 0x2 DEBUG, 0x4 MODE64BIT, ...)
    attributes_xfrm: int = 0             # 56, u64
    mr_enclave: bytes = bytes(32)        # 64  → code hash
    reserved2: bytes = bytes(32)         # 96
    mr_signer: bytes = bytes(32)         # 128 → code signing key hash
    reserved3: bytes = bytes(32)         # 160
    config_id: bytes = bytes(64)         # 192
    isv_prod_id: int = 0                 # 256, u16 → product id
    isv_svn: int = 0                     # 258, u16 → revocation level + 1
    config_svn: int = 0                  # 260, u16
    reserved4: bytes = bytes(42)         # 262
    isv_family_id: bytes = bytes(16)     # 304
    report_data: bytes = bytes(64)       # 320 → SHA-512(signing key || encryption key)

    def __post_init__(self) -> None:
        for name, size in _BYTES_FIELDS.items():
            value = getattr(self, name)
            if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) != size:
                raise ValueError(f"report body {name} must be {size} bytes")
            object.__setattr__(self, name, bytes(value))
        for name, bits in _INT_FIELDS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < (1 << bits):
                raise ValueError(f"report body {name} must be an unsigned {bits}-bit integer, got {value!r}")

    @property
    def is_debug(self) -> bool:
        return bool(self.attributes_flags & FLAG_DEBUG)

    def to_bytes(self) -> bytes:
        return _REPORT_BODY.pack(
            self.cpu_svn, self.misc_select, self.reserved1, self.isv_ext_prod_id, self.attributes_flags,
            self.attributes_xfrm, self.mr_enclave, self.reserved2, self.mr_signer, self.reserved3,
            self.config_id, self.isv_prod_id, self.isv_svn, self.config_svn, self.reserved4,
            self.isv_family_id, self.report_data,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ReportBody:
        if len(data) != REPORT_BODY_SIZE:
            raise ValueError(f"an SGX report body is {REPORT_BODY_SIZE} bytes, got {len(data)}")
        return cls(*_REPORT_BODY.unpack(bytes(data)))


_BYTES_FIELDS = {
    "cpu_svn": 16, "reserved1": 12, "isv_ext_prod_id": 16, "mr_enclave": 32, "reserved2": 32,
    "mr_signer": 32, "reserved3": 32, "config_id": 64, "reserved4": 42, "isv_family_id": 16,
    "report_data": 64,
}
_INT_FIELDS = {
    "misc_select": 32, "attributes_flags": 64, "attributes_xfrm": 64, "isv_prod_id": 16, "isv_svn": 16,
    "config_svn": 16,
}


# --- keys (§8) and the key binding (§11) ----------------------------------------------------------

def keys_from_secret(secret32: bytes) -> tuple[Ed25519PrivateKey, X25519PrivateKey]:
    """The enclave's signing and encryption keys from its one random 32-byte secret: Conclave uses the same
    bytes as the Ed25519 seed and as the X25519 private key (Enclave.initCryptography, §8)."""
    secret = bytes(secret32)
    if len(secret) != 32:
        raise ValueError(f"the enclave secret must be 32 bytes, got {len(secret)}")
    return Ed25519PrivateKey.from_private_bytes(secret), X25519PrivateKey.from_private_bytes(secret)


def signing_key_encoding(ed25519_public: Ed25519PublicKey | bytes) -> bytes:
    """The 44-byte X.509 SubjectPublicKeyInfo Conclave puts in the EII (and hashes into reportData)."""
    if isinstance(ed25519_public, Ed25519PublicKey):
        return ed25519_public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    raw = bytes(ed25519_public)
    if len(raw) != 32:
        raise ValueError(f"a raw Ed25519 public key is 32 bytes, got {len(raw)}")
    return SIGNING_KEY_PREFIX + raw


def report_data(signing_key_encoded: bytes, encryption_key: bytes) -> bytes:
    """SHA-512(signing key as serialised || raw X25519 key): what binds both keys to the report (§11)."""
    return _digest(hashes.SHA512(), bytes(signing_key_encoded), bytes(encryption_key))


def _public_keys(secret32: bytes) -> tuple[bytes, bytes]:
    signing, encryption = keys_from_secret(secret32)
    return signing_key_encoding(signing.public_key()), encryption.public_key().public_bytes_raw()


# --- attestation time -------------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class AttestationTime:
    """A java.time.Instant: epoch seconds and 0..999 999 999 nanoseconds (the Mock attestation's i64 + i32)."""

    seconds: int
    nanos: int

    def __post_init__(self) -> None:
        if not 0 <= self.nanos < _NANOS:
            raise ValueError(f"nanoseconds must be 0..999999999, got {self.nanos}")
        if not _INSTANT_MIN_SECOND <= self.seconds <= _INSTANT_MAX_SECOND:
            raise ValueError(f"{self.seconds} epoch seconds is outside java.time.Instant's range")

    @classmethod
    def of(cls, seconds: int, nanos: int) -> AttestationTime:
        """Like Instant.ofEpochSecond(seconds, nanos): nanos may be any value and carry into the seconds."""
        carry, nanos = divmod(nanos, _NANOS)
        return cls(seconds + carry, nanos)

    @classmethod
    def from_datetime(cls, moment: datetime) -> AttestationTime:
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        delta = moment - _EPOCH
        micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        return cls.of(0, micros * 1000)

    @classmethod
    def now(cls) -> AttestationTime:
        return cls.of(0, time.time_ns())

    @property
    def epoch_ns(self) -> int:
        return self.seconds * _NANOS + self.nanos

    def to_datetime(self) -> datetime:
        """UTC, truncated to microseconds; ValueError outside datetime's years 1..9999."""
        try:
            return _EPOCH + timedelta(seconds=self.seconds, microseconds=self.nanos // 1000)
        except OverflowError as exc:
            raise ValueError(f"{self} does not fit a datetime") from exc

    def __str__(self) -> str:
        """ISO-8601 like Instant.toString (fractions in groups of 3 digits)."""
        try:
            d = self.to_datetime()
            base = f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
        except ValueError:
            return f"{self.seconds}.{self.nanos:09d}s since the epoch"
        if self.nanos == 0:
            return base + "Z"
        for digits, unit in ((3, 1_000_000), (6, 1000), (9, 1)):
            if self.nanos % unit == 0:
                return f"{base}.{self.nanos // unit:0{digits}d}Z"
        raise AssertionError("unreachable")


# --- attestation parsing (§11) ------------------------------------------------------------------

@dataclass(frozen=True)
class _Parsed:
    report: ReportBody
    mode: EnclaveMode
    timestamp: AttestationTime | None
    reason: str


def _hardware_mode(report: ReportBody) -> EnclaveMode:
    return EnclaveMode.DEBUG if report.is_debug else EnclaveMode.RELEASE


def _unverified_reason(kind: str, mode: EnclaveMode) -> str:
    return (f"Enclave is running in {mode.name.lower()} mode on SGX hardware ({kind}), but teebus does not "
            f"verify {kind} quotes against Intel's collateral, so the attestation is treated as INSECURE.")


def _parse_mock(attestation: bytes) -> _Parsed:
    """i64 epoch seconds | i32 nanos | report body | u8 isSimulation (ATT MockAttestation). Bytes after
    these 397 inside the attestation are ignored, as Conclave reads from a slice of the given length."""
    r = _Reader(attestation)
    seconds = r.unpack(">q", "mock attestation's timestamp seconds")
    nanos = r.unpack(">i", "mock attestation's timestamp nanoseconds")
    report = ReportBody.from_bytes(r.take(REPORT_BODY_SIZE, "mock attestation's report body"))
    simulation = r.take(1, "mock attestation's isSimulation flag")[0] != 0
    try:
        timestamp = AttestationTime.of(seconds, nanos)
    except ValueError as exc:
        raise _corrupted(f"mock attestation timestamp: {exc}") from None
    mode = EnclaveMode.SIMULATION if simulation else EnclaveMode.MOCK
    return _Parsed(report, mode, timestamp, f"Enclave is running in {mode.name.lower()} mode.")


def _parse_dcap(attestation: bytes) -> _Parsed:
    """432-byte quote | u32 LE signature length | signature | 8 × (i32 BE length + collateral bytes)."""
    r = _Reader(attestation)
    quote = r.take(QUOTE_SIZE, "DCAP quote")
    r.take(r.unpack("<I", "DCAP quote signature length"), "DCAP quote signature")
    for name in _DCAP_COLLATERAL:
        r.prefixed(f"DCAP collateral's {name}")
    report = ReportBody.from_bytes(quote[QUOTE_REPORT_BODY])
    mode = _hardware_mode(report)
    return _Parsed(report, mode, None, _unverified_reason("DCAP", mode))


def _parse_epid(attestation: bytes) -> _Parsed:
    """i32 + IAS report JSON (version 4) | i32 + signature | i32 + certificate path; the report body is
    bytes 48..432 of the JSON's base64 `isvEnclaveQuoteBody`, its `timestamp` the report's time (UTC)."""
    r = _Reader(attestation)
    raw_report = r.prefixed("EPID report")
    r.prefixed("EPID report signature")
    r.prefixed("EPID certificate path")
    try:
        report_json = json.loads(raw_report)
        if not isinstance(report_json, dict):
            raise ValueError("not a JSON object")
        if report_json.get("version") != 4:
            raise ValueError(f"Unknown version of EPID attestation report {report_json.get('version')}")
        quote = base64.b64decode(report_json.get("isvEnclaveQuoteBody", ""), validate=True)
        stamp = datetime.strptime(report_json.get("timestamp", ""), "%Y-%m-%dT%H:%M:%S.%f")
    except (ValueError, TypeError, RecursionError, binascii.Error) as exc:
        raise _corrupted(f"EPID report: {exc}") from None
    if len(quote) != QUOTE_SIZE:
        raise _corrupted(f"EPID isvEnclaveQuoteBody is {len(quote)} bytes, not {QUOTE_SIZE}")
    report = ReportBody.from_bytes(quote[QUOTE_REPORT_BODY])
    mode = _hardware_mode(report)
    return _Parsed(report, mode, AttestationTime.from_datetime(stamp), _unverified_reason("EPID", mode))


_PARSERS = {AttestationType.EPID: _parse_epid, AttestationType.DCAP: _parse_dcap, AttestationType.MOCK: _parse_mock}


def _attestation_type(value: int) -> AttestationType:
    try:
        return AttestationType(value)
    except ValueError:
        raise _corrupted(f"Unknown attestation type {value}") from None


def _check_signing_key(key: bytes) -> None:
    if len(key) != SIGNING_KEY_SIZE or not key.startswith(SIGNING_KEY_PREFIX):
        raise _corrupted(f"the signing key is not a 44-byte X.509 Ed25519 public key ({len(key)} bytes: "
                         f"{key[:len(SIGNING_KEY_PREFIX)].hex()}...)")


def _check_encryption_key(key: bytes) -> None:
    if len(key) != ENCRYPTION_KEY_SIZE:
        raise _corrupted(f"the encryption key is {len(key)} bytes, an X25519 public key is 32")


def _check_binding(report: ReportBody, signing_key: bytes, encryption_key: bytes) -> None:
    if report.report_data != report_data(signing_key, encryption_key):
        raise _corrupted("The report data of the quote does not match the hash in the remote attestation "
                         "(reportData != SHA-512(signing key || encryption key))")


def _check_revocation(report: ReportBody) -> None:
    level = report.isv_svn - 1
    if not 0 <= level <= MAX_REVOCATION_LEVEL:
        raise _corrupted(f"revocation level {level} (isvSvn {report.isv_svn}) is outside 0..{MAX_REVOCATION_LEVEL}")


def _as_bytes(value: object, what: str) -> bytes:
    try:
        return bytes(memoryview(value))  # type: ignore[arg-type]
    except TypeError:
        raise EiiError(f"{what} must be bytes, not {type(value).__name__}") from None


# --- the EII ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EnclaveInstanceInfo:
    """One EII. Constructing it checks what Conclave's EnclaveInstanceInfoImpl checks (key encodings, the
    attestation's structure, the key binding, the revocation level range) and raises EiiError otherwise.

    `quote_verified` is always False: a Mock attestation has nothing to verify and is INSECURE by definition;
    EPID/DCAP quotes would need Intel's collateral verification, which teebus does not have, so they are
    reported INSECURE too rather than trusted on their word.
    """

    signing_key: bytes          # 44-byte X.509 SubjectPublicKeyInfo of the Ed25519 key
    encryption_key: bytes       # 32-byte raw X25519 public key
    attestation_type: AttestationType
    attestation: bytes          # the attestation bytes (after its i32 length)
    _parsed: _Parsed = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        signing_key = _as_bytes(self.signing_key, "signing key")
        encryption_key = _as_bytes(self.encryption_key, "encryption key")
        attestation = _as_bytes(self.attestation, "attestation")
        attestation_type = _attestation_type(self.attestation_type)
        _check_signing_key(signing_key)
        _check_encryption_key(encryption_key)
        parsed = _PARSERS[attestation_type](attestation)
        _check_binding(parsed.report, signing_key, encryption_key)
        _check_revocation(parsed.report)
        for name, value in (("signing_key", signing_key), ("encryption_key", encryption_key),
                            ("attestation", attestation), ("attestation_type", attestation_type),
                            ("_parsed", parsed)):
            object.__setattr__(self, name, value)

    # parsed views --------------------------------------------------------------------------------
    @property
    def report(self) -> ReportBody:
        return self._parsed.report

    @property
    def code_hash(self) -> bytes:
        """mrenclave (EnclaveInfo.codeHash)."""
        return self.report.mr_enclave

    @property
    def code_signing_key_hash(self) -> bytes:
        """mrsigner (EnclaveInfo.codeSigningKeyHash)."""
        return self.report.mr_signer

    @property
    def product_id(self) -> int:
        return self.report.isv_prod_id

    @property
    def revocation_level(self) -> int:
        """isvSvn − 1: SGX's SVN is 1-based, Conclave's revocation level 0-based."""
        return self.report.isv_svn - 1

    @property
    def cpu_svn(self) -> bytes:
        return self.report.cpu_svn

    @property
    def enclave_mode(self) -> EnclaveMode:
        return self._parsed.mode

    @property
    def quote_verified(self) -> bool:
        """Always False here: see the class docstring."""
        return False

    @property
    def security_summary(self) -> SecuritySummary:
        """Mock/simulation and debug are INSECURE in Conclave too; a release quote would need verification
        against Intel's collateral to be STALE or SECURE, which teebus cannot do, so it is INSECURE."""
        return SecuritySummary.INSECURE

    @property
    def security_reason(self) -> str:
        return self._parsed.reason

    @property
    def timestamp(self) -> AttestationTime | None:
        """When the attestation was made: the Mock's i64 seconds + i32 nanos; the IAS report's (unverified)
        timestamp for EPID; None for DCAP, where Conclave derives it from the collateral it verifies."""
        return self._parsed.timestamp

    # bytes -----------------------------------------------------------------------------------------
    def serialize(self) -> bytes:
        """"EII" | i32 + signing key | i32 + encryption key | u8 type | i32 + attestation (§11)."""
        return b"".join((
            MAGIC,
            struct.pack(">i", len(self.signing_key)), self.signing_key,
            struct.pack(">i", len(self.encryption_key)), self.encryption_key,
            struct.pack(">B", self.attestation_type),
            struct.pack(">i", len(self.attestation)), self.attestation,
        ))

    @classmethod
    def deserialize(cls, data: bytes) -> EnclaveInstanceInfo:
        """Parse in Conclave's order; bytes after the attestation are ignored (room for future fields)."""
        data = _as_bytes(data, "EnclaveInstanceInfo")
        if len(data) <= len(MAGIC) or not data.startswith(MAGIC):
            raise EiiError(f"Not EnclaveInstanceInfo bytes: they must start with 'EII' and be longer than 3 bytes "
                           f"(got {len(data)} bytes starting {data[:3].hex() or 'with nothing'})")
        r = _Reader(data, len(MAGIC))
        signing_key = r.prefixed("signing key")
        _check_signing_key(signing_key)
        encryption_key = r.prefixed("encryption key")
        _check_encryption_key(encryption_key)
        type_byte = r.unpack(">b", "attestation type")  # Java's signed byte
        attestation = r.prefixed("attestation")
        return cls(signing_key, encryption_key, _attestation_type(type_byte), attestation)


# --- mock attestation, as Conclave's mock enclave + MockAttestationService make it (§11) -----------------

def _mock_cpu_svn(tcb_level: int) -> bytes:
    """First 16 bytes of SHA-256(u16 BE tcbLevel) (MockEnclaveEnvironment.versionToCpuSvn)."""
    return _digest(hashes.SHA256(), struct.pack(">H", tcb_level))[:16]


def _split_time(timestamp: float | None) -> tuple[int, int]:
    if timestamp is None:
        return divmod(time.time_ns(), _NANOS)
    seconds = math.floor(timestamp)
    nanos = round((timestamp - seconds) * _NANOS)
    return (seconds + 1, 0) if nanos >= _NANOS else (seconds, nanos)


def _require_range(value: int, low: int, high: int, message: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{message} (got {value!r})")


def _require_hash(value: bytes, name: str) -> bytes:
    raw = bytes(value)
    if len(raw) != 32:
        raise ValueError(f"{name} must be 32 bytes (a SHA-256 hash), got {len(raw)}")
    return raw


def _mock_report_body(*, code_hash: bytes, code_signer: bytes, product_id: int, revocation_level: int,
                      tcb_level: int, binding: bytes) -> ReportBody:
    """The report body Conclave's MockEnclaveEnvironment.createReport fills in; every other field is zero."""
    return ReportBody(
        cpu_svn=_mock_cpu_svn(tcb_level),
        attributes_flags=FLAG_DEBUG,
        mr_enclave=code_hash,
        mr_signer=code_signer,
        isv_prod_id=product_id,
        isv_svn=revocation_level + 1,
        report_data=binding,
    )


def mock_instance_info(
    secret32: bytes,
    *,
    code_hash: bytes,
    code_signer: bytes = bytes(32),
    product_id: int,
    revocation_level: int,
    simulation: bool = False,
    timestamp: float | None = None,
    tcb_level: int = 1,
) -> EnclaveInstanceInfo:
    """A Mock-attested EII for the enclave whose keys come from `secret32`, exactly as a Conclave mock (or,
    with simulation=True, simulation) host serves it. Ranges are MockConfiguration's."""
    _require_range(product_id, 0, 65535, "Product ID must be between 0 and 65535")
    _require_range(revocation_level, 0, MAX_REVOCATION_LEVEL, "Revocation level must be between 0 and 65534")
    _require_range(tcb_level, 0, 65535, "TCB level must be between 0 and 65535")
    signing_key, encryption_key = _public_keys(secret32)
    body = _mock_report_body(
        code_hash=_require_hash(code_hash, "code_hash"),
        code_signer=_require_hash(code_signer, "code_signer"),
        product_id=product_id,
        revocation_level=revocation_level,
        tcb_level=tcb_level,
        binding=report_data(signing_key, encryption_key),
    )
    seconds, nanos = _split_time(timestamp)
    attestation = struct.pack(">qi", seconds, nanos) + body.to_bytes() + bytes([1 if simulation else 0])
    return EnclaveInstanceInfo(signing_key, encryption_key, AttestationType.MOCK, attestation)
