"""The KMS messages of the seed, validated: shared by the KMS component and its HTTP adapter.

Requests and responses are the seed's tagged JSON (`{"type": "Create"}` ...), unchanged on the bus,
so a recording of bus traffic reads in the API's own terms.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Any

from bus.errors import BadRequest
from components.mesatee import fields
from components.mesatee.fields import UUID
from components.mesatee.subjects import KMS_OPERATIONS

KEY_BYTES = 32
NONCE_BYTES = 12
AD_BYTES = 5
AD_OFFSET = KEY_BYTES + NONCE_BYTES
MATERIAL_BYTES = KEY_BYTES + NONCE_BYTES + AD_BYTES   # one AEADKeyConfig, as sealed at rest
MAX_KEY_ID_CHARS = 64


def _base64(data: bytes) -> str:
    """Standard base64 with padding, as the seed's examples (binascii: half the cost of base64's)."""
    return binascii.b2a_base64(data, newline=False).decode()


def config_json(material: bytes) -> dict[str, str]:
    """AEADKeyConfig as the seed shows it, from the 49 bytes of key material (key || nonce || ad)."""
    if len(material) != MATERIAL_BYTES:
        raise ValueError("key material has the wrong length")
    return {"key": _base64(material[:KEY_BYTES]), "nonce": _base64(material[KEY_BYTES:AD_OFFSET]),
            "ad": _base64(material[AD_OFFSET:])}


@dataclass(frozen=True)
class KmsRequest:
    operation: str            # Create | Get | Delete
    key_id: str | None = None


def parse_key_id(value: Any) -> str:
    """A key id is a UUID (the seed's examples use v1 and v4); returned in canonical form."""
    if not isinstance(value, str):
        raise BadRequest("key_id must be a string holding a UUID, e.g. "
                         "\"cfbe341e-cf3c-463e-a493-6b22c57f51d4\"")
    if len(value) > MAX_KEY_ID_CHARS:
        raise BadRequest(f"key_id is longer than {MAX_KEY_ID_CHARS} characters; it must be a UUID")
    if not UUID.match(value):
        raise BadRequest("key_id is not a UUID (8-4-4-4-12 hexadecimal digits)")
    return value.lower()


def parse_request(body: Any, expected: str | None = None) -> KmsRequest:
    """Validate a tagged KMSRequest; `expected` pins the operation a bus endpoint serves."""
    operation = fields.operation(body, KMS_OPERATIONS, expected, "KMS")
    if operation == "Create":
        return KmsRequest(operation)
    if "key_id" not in body:
        raise BadRequest(f"a {operation} request needs a key_id")
    return KmsRequest(operation, parse_key_id(body["key_id"]))


def create_response(key_id: str, config: dict[str, str]) -> dict[str, Any]:
    return {"type": "Create", "key_id": key_id, "config": config}


def config_response(operation: str, config: dict[str, str]) -> dict[str, Any]:
    """A Get or Delete response around a config from `config_json`."""
    return {"type": operation, "config": config}
