"""The KDS's JSON, with Conclave's field names (docs/kds-rest-api.md, KDSPublicKeyRequest.kt,
KDSPrivateKeyRequest.kt, KDSPublicKeyResponse.kt, KDSPrivateKeyResponse.kt, KDSErrorResponse.kt):

    PUT|POST /public   {"name", "masterKeyType", "policyConstraint"}
                    -> {"publicKey", "signature", "kdsAttestationReport"}
    POST /private      {"appAttestationReport", "name", "masterKeyType", "policyConstraint"}
                    -> {"kdsAttestationReport", "encryptedPrivateKey"}
    errors             {"reason"}

Byte fields are standard Base64 (Jackson's for `ByteArray`). `masterKeyType` is the enum's name in
any case (`"development"`, `"DEVELOPMENT"`) or its id. Replies carry exactly these fields: Conclave's
clients read them with a Jackson mapper that fails on unknown properties. On the bus a request is the
same object plus `apiVersion` (the HTTP header `API-VERSION`).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from bus.errors import BadRequest
from components.conclave import kds_keys
from components.conclave.kds_keys import KeySpec, KeySpecError

API_VERSION_FIELD = "apiVersion"      # the bus's copy of the HTTP header API-VERSION
PUBLIC_FIELDS = ("name", "masterKeyType", "policyConstraint")
PRIVATE_FIELDS = ("appAttestationReport", *PUBLIC_FIELDS)
PUBLIC_SAMPLE = ('{"name": "MasterKeyForTesting", "masterKeyType": "development", '
                 '"policyConstraint": "S:<64 hex digits> PROD:1 SEC:INSECURE"}')
PRIVATE_SAMPLE = ('{"appAttestationReport": "<Base64 EnclaveInstanceInfo>", "name": "MasterKeyForTesting", '
                  '"masterKeyType": "development", "policyConstraint": "C:<64 hex digits> SEC:INSECURE"}')
MAX_ATTESTATION_BASE64 = (kds_keys.MAX_ATTESTATION_BYTES + 2) // 3 * 4


@dataclass(frozen=True)
class PrivateRequest:
    spec: KeySpec
    attestation: bytes      # the requesting enclave's serialized EnclaveInstanceInfo


def api_version(value: Any) -> int:
    """The `API-VERSION` header (or the bus's `apiVersion`): required, and 1."""
    if value is None or value == "":
        raise BadRequest(f"the API-VERSION header is missing: send `API-VERSION: {kds_keys.API_VERSION}`")
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if text != str(kds_keys.API_VERSION):
        shown = repr(value)[:20] if text is None else repr(text[:20])
        raise BadRequest(f"API-VERSION {shown} is not supported: this KDS speaks API-VERSION "
                         f"{kds_keys.API_VERSION}")
    return kds_keys.API_VERSION


def _object(body: Any, fields: tuple[str, ...], sample: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, not {type(body).__name__}; send {sample}")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        shown = ", ".join(repr(name[:40]) for name in unknown[:5])
        raise BadRequest(f"unknown field(s) {shown}; the fields are {', '.join(fields)}")
    missing = [name for name in fields if body.get(name) is None]
    if missing:
        raise BadRequest(f"missing field(s) {', '.join(missing)}; send {sample}")
    return body


def _spec(body: dict[str, Any]) -> KeySpec:
    try:
        return kds_keys.key_spec(body["name"], body["masterKeyType"], body["policyConstraint"])
    except KeySpecError as exc:
        raise BadRequest(str(exc)) from None


def parse_public(body: Any) -> KeySpec:
    """A `/public` body."""
    return _spec(_object(body, PUBLIC_FIELDS, PUBLIC_SAMPLE))


def parse_private(body: Any) -> PrivateRequest:
    """A `/private` body: the key spec and the requester's attestation (bounded, Base64)."""
    fields = _object(body, PRIVATE_FIELDS, PRIVATE_SAMPLE)
    spec = _spec(fields)
    report = fields["appAttestationReport"]
    if not isinstance(report, str):
        raise BadRequest(f"appAttestationReport must be a Base64 string, not {type(report).__name__}")
    if len(report) > MAX_ATTESTATION_BASE64:
        raise BadRequest(f"appAttestationReport is {len(report)} characters long; an EnclaveInstanceInfo "
                         f"of at most {kds_keys.MAX_ATTESTATION_BYTES} bytes is accepted")
    try:
        attestation = b64decode(report)
    except ValueError:
        raise BadRequest("appAttestationReport is not valid Base64: send the serialized "
                         "EnclaveInstanceInfo in standard Base64") from None
    if not attestation:
        raise BadRequest("appAttestationReport is empty: send the requesting enclave's EnclaveInstanceInfo")
    return PrivateRequest(spec, attestation)


def split_bus_request(payload: Any) -> tuple[int, dict[str, Any]]:
    """A bus request: (its API version, the body as the HTTP client sent it)."""
    if not isinstance(payload, dict):
        raise BadRequest(f"a KDS request is a JSON object, not {type(payload).__name__}")
    body = dict(payload)
    return api_version(body.pop(API_VERSION_FIELD, None)), body


def bus_request(version: int, body: dict[str, Any]) -> dict[str, Any]:
    """What the adapter sends on the bus: the checked body and the API version it came with."""
    return {API_VERSION_FIELD: version, **body}


def public_reply(public_key: bytes, signature: bytes, kds_attestation: bytes) -> dict[str, str]:
    return {"publicKey": b64encode(public_key), "signature": b64encode(signature),
            "kdsAttestationReport": b64encode(kds_attestation)}


def private_reply(kds_attestation: bytes, mail: bytes) -> dict[str, str]:
    return {"kdsAttestationReport": b64encode(kds_attestation), "encryptedPrivateKey": b64encode(mail)}


def error_body(reason: str) -> dict[str, str]:
    return {"reason": reason}


def read_reply(body: Any, fields: tuple[str, ...]) -> dict[str, bytes]:
    """A success reply as a client reads it: each of `fields` decoded from Base64 (ValueError when
    one is missing or not Base64; extra fields are ignored)."""
    if not isinstance(body, dict):
        raise ValueError(f"the reply is a JSON {type(body).__name__}, not an object")
    decoded: dict[str, bytes] = {}
    for name in fields:
        value = body.get(name)
        if not isinstance(value, str):
            raise ValueError(f"the reply lacks the Base64 string {name!r}")
        try:
            decoded[name] = b64decode(value)
        except ValueError:
            raise ValueError(f"the reply's {name!r} is not valid Base64") from None
    return decoded


PUBLIC_REPLY_FIELDS = ("publicKey", "signature", "kdsAttestationReport")
PRIVATE_REPLY_FIELDS = ("kdsAttestationReport", "encryptedPrivateKey")


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Standard Base64, padding optional (Jackson writes it; some clients drop it); ValueError otherwise."""
    stripped = text.strip()
    padded = stripped + "=" * (-len(stripped) % 4)
    try:
        return binascii.a2b_base64(padded.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("not valid Base64") from None
