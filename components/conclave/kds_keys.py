"""The KDS's keys: key specifications, the byte layouts Conclave signs and checks, derivation, the
master secrets at rest, and the policy check. Pure functions; kds.py does the I/O.

A key is a function of (master secret of its master key type, name, master key type, policy
constraint): HKDF-SHA256, so the same specification always gives the same key and a change in any
part (a relaxed constraint, say) gives an unrelated one (Conclave's kds-detail.md). The 32 bytes are
the raw key material Conclave's `/private` releases; as an X25519 private key their public half is
what `/public` answers, as the 44-byte RFC 8410 SubjectPublicKeyInfo.

Byte layouts (Conclave's docs/kds-rest-api.md, KdsPrivateKeyResponse.kt, KDSPostOfficeBuilder.kt):
    key spec = u8 API version | i32 len + UTF-8 name | u8 master key type | i32 len + UTF-8 constraint
    /private's mail envelope = key spec
    /public's signed bytes   = key spec | u16 len + public key (the 44 bytes as sent)
"""

from __future__ import annotations

import base64
import enum
import os
import struct
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

API_VERSION = 1                       # the only `API-VERSION` Conclave's KDS speaks
KEY_BYTES = 32
SECRET_BYTES = 32
MAX_NAME_CHARS = 255
MAX_CONSTRAINT_CHARS = 8192           # some 120 `C:` hashes: more than any real policy lists
MAX_ATTESTATION_BYTES = 40 * 1024     # a DCAP EnclaveInstanceInfo with its collateral is some 15-20 KiB
X25519_SPKI_PREFIX = bytes.fromhex("302a300506032b656e032100")   # RFC 8410, id-X25519
PUBLIC_KEY_BYTES = len(X25519_SPKI_PREFIX) + KEY_BYTES          # 44
_DERIVATION_SALT = b"teebus conclave kds v1"


class KeySpecError(ValueError):
    """A key specification (or a part of a request about one) that cannot be served."""


class PolicyError(ValueError):
    """The requesting enclave does not satisfy the key's policy constraint."""


class MasterKeyType(enum.IntEnum):
    """Conclave's MasterKeyType.kt: the id is what the envelope and signature carry."""

    DEVELOPMENT = 0
    CLUSTER = 1
    AZURE_HSM = 2

    @property
    def label(self) -> str:
        """The name as Conclave's docs spell it in JSON (`"development"`)."""
        return self.name.lower()


AVAILABLE_MASTER_KEYS = frozenset({MasterKeyType.DEVELOPMENT})
_TYPE_NAMES = ", ".join(f"{t.label} ({t.value})" for t in MasterKeyType)


def master_key_type(value: Any) -> MasterKeyType:
    """`masterKeyType` as Conclave's JSON mapper reads it: the enum name in any case, or its id."""
    if isinstance(value, str):
        try:
            return MasterKeyType[value.strip().upper()]
        except KeyError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            return MasterKeyType(value)
        except ValueError:
            pass
    shown = repr(value)[:40] if isinstance(value, (str, int)) else type(value).__name__
    raise KeySpecError(f"masterKeyType {shown} is not a master key type: use one of {_TYPE_NAMES}")


def check_available(kind: MasterKeyType) -> None:
    """Only the development master key lives here; the others belong to R3's cluster and Azure's
    HSM. Conclave's KDS answers 404 when it cannot retrieve a master key (kds.py maps this)."""
    if kind not in AVAILABLE_MASTER_KEYS:
        raise LookupError(f"the {kind.label} master key is not available on this KDS: it serves the "
                          f"development master key only (masterKeyType \"development\")")


@dataclass(frozen=True)
class KeySpec:
    """What names a key: Conclave's KDSKeySpec."""

    name: str
    master_key_type: MasterKeyType
    policy_constraint: str


def _text(field: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise KeySpecError(f"{field} must be a string, not {type(value).__name__}")
    if not value:
        raise KeySpecError(f"{field} must not be empty")
    if len(value) > limit:
        raise KeySpecError(f"{field} is {len(value)} characters long; at most {limit} are allowed")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise KeySpecError(f"{field} must not contain control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise KeySpecError(f"{field} is not valid Unicode (a lone surrogate)") from None
    return value


def key_spec(name: Any, kind: Any, policy_constraint: Any) -> KeySpec:
    """A checked key specification: name 1-255 characters, a known master key type, a constraint
    of 1-8192 characters (whether it parses is `parse_policy`'s job)."""
    return KeySpec(_text("name", name, MAX_NAME_CHARS), master_key_type(kind),
                   _text("policyConstraint", policy_constraint, MAX_CONSTRAINT_CHARS))


def parse_policy(spec: KeySpec, parse: Callable[[str], Any]) -> Any:
    """The spec's constraint as an EnclaveConstraint (`parse` is EnclaveConstraint.parse): a key whose
    constraint no enclave could ever meet is refused on `/public` already."""
    try:
        return parse(spec.policy_constraint)
    except ValueError as exc:
        raise KeySpecError(f"policyConstraint is not a valid enclave constraint: {exc}") from None


def _prefixed(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack(">i", len(data)) + data


def encode_spec(spec: KeySpec, api_version: int = API_VERSION) -> bytes:
    """The key spec as Conclave lays it out: the private-key mail's envelope, and the head of what
    `/public` signs."""
    return (bytes([api_version]) + _prefixed(spec.name) + bytes([spec.master_key_type.value])
            + _prefixed(spec.policy_constraint))


def decode_spec(data: bytes) -> tuple[int, KeySpec]:
    """(API version, spec) from an envelope; ValueError when it is not one."""
    try:
        version = data[0]
        name, offset = _read_prefixed(data, 1)
        kind = MasterKeyType(data[offset])
        constraint, offset = _read_prefixed(data, offset + 1)
    except (IndexError, struct.error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"not a KDS key-spec envelope ({exc})") from None
    if offset != len(data):
        raise ValueError(f"a KDS key-spec envelope has {len(data) - offset} bytes after its constraint")
    return version, KeySpec(name, kind, constraint)


def _read_prefixed(data: bytes, offset: int) -> tuple[str, int]:
    (length,) = struct.unpack_from(">i", data, offset)
    start = offset + 4
    if length < 0 or start + length > len(data):
        raise ValueError("a length runs past the end")
    return data[start:start + length].decode("utf-8"), start + length


def signed_bytes(spec: KeySpec, public_key: bytes, api_version: int = API_VERSION) -> bytes:
    """What the KDS signs for `/public` (and a client verifies): the spec, then the key as sent."""
    return encode_spec(spec, api_version) + struct.pack(">H", len(public_key)) + public_key


def derive_private_key(master_secret: bytes, spec: KeySpec) -> bytes:
    """The 32 bytes of key material for `spec` under its master key type's secret. The API version
    is not part of the input: a key must not change when the protocol does."""
    if len(master_secret) != SECRET_BYTES:
        raise ValueError("a master secret is 32 bytes")
    info = b"conclave kds key" + bytes([spec.master_key_type.value]) + _prefixed(spec.name) \
        + _prefixed(spec.policy_constraint)
    return HKDF(hashes.SHA256(), KEY_BYTES, _DERIVATION_SALT, info).derive(master_secret)


def public_key(private_key: bytes) -> bytes:
    """The X25519 public half of key material, as the 44-byte SubjectPublicKeyInfo `/public` sends."""
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def raw_public_key(encoded: bytes) -> bytes:
    """The 32-byte X25519 key from `/public`'s 44 bytes (or from 32 raw ones, as Conclave's old KDS
    answered); ValueError for anything else."""
    if len(encoded) == KEY_BYTES:
        return encoded
    if len(encoded) == PUBLIC_KEY_BYTES and encoded.startswith(X25519_SPKI_PREFIX):
        return encoded[len(X25519_SPKI_PREFIX):]
    raise ValueError(f"a KDS public key is 44 bytes (RFC 8410 X25519) or 32 raw bytes, not {len(encoded)}")


def check_policy(constraint: Any, attestation: Any, kind: MasterKeyType) -> None:
    """Release the key to this enclave only if its attestation meets the constraint; and never a
    development-master-key key to a release-mode enclave (Conclave's KDS refuses those too)."""
    try:
        constraint.check(attestation)
    except ValueError as exc:
        term = getattr(exc, "term", None)
        failed = f" (its {term} term)" if term else ""
        raise PolicyError(f"The application enclave does not meet the required key policy{failed}: {exc}") from None
    mode = getattr(attestation, "enclave_mode", None)
    mode_name = str(getattr(mode, "name", mode) or "").upper()
    if kind is MasterKeyType.DEVELOPMENT and mode_name == "RELEASE":
        raise PolicyError("The application enclave runs in release mode, and keys of the development master "
                          "key are only released to mock, simulation and debug enclaves")


@dataclass(frozen=True)
class MasterSecrets:
    """The KDS's durable secrets: the development master key's, and the seed of its own identity
    (the mock EnclaveInstanceInfo's signing and encryption keys)."""

    development: bytes
    identity: bytes

    def __repr__(self) -> str:                       # never print key material
        return "MasterSecrets(<hidden>)"

    @classmethod
    def generate(cls) -> "MasterSecrets":
        return cls(os.urandom(SECRET_BYTES), os.urandom(SECRET_BYTES))

    def for_type(self, kind: MasterKeyType) -> bytes:
        check_available(kind)
        return self.development


_SEALED_FIELDS = ("development", "identity")
RECORD_VERSION = 1


def seal_secrets(secrets: MasterSecrets, seal: Callable[[bytes, bytes], bytes]) -> dict[str, Any]:
    """The bucket record: each secret sealed (`seal(plaintext, associated)`, bus/sealing.py) and bound
    to its field name, so one cannot be swapped for the other."""
    record: dict[str, Any] = {"version": RECORD_VERSION}
    for field in _SEALED_FIELDS:
        blob = seal(getattr(secrets, field), _associated(field))
        record[field] = base64.b64encode(blob).decode()
    return record


def open_secrets(record: Mapping[str, Any], unseal: Callable[[bytes, bytes], bytes]) -> MasterSecrets:
    """The secrets of a bucket record; ValueError (never quoting a secret) when it does not open."""
    if record.get("version") != RECORD_VERSION:
        raise ValueError(f"the KDS secrets record has version {record.get('version')!r}, not {RECORD_VERSION}")
    opened: dict[str, bytes] = {}
    for field in _SEALED_FIELDS:
        try:
            blob = base64.b64decode(record[field], validate=True)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"the KDS secrets record lacks a readable {field!r}") from None
        secret = unseal(blob, _associated(field))
        if len(secret) != SECRET_BYTES:
            raise ValueError(f"the KDS secrets record's {field!r} is not {SECRET_BYTES} bytes")
        opened[field] = secret
    return MasterSecrets(**opened)


def _associated(field: str) -> bytes:
    return f"conclave-kds:{field}".encode()
