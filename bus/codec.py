"""Payload codecs, chosen by the `Content-Type` header (JSON by default)."""

from __future__ import annotations

from typing import Any

import cbor2
import orjson

from bus import headers
from bus.errors import BadRequest


def encode(value: Any, content_type: str = headers.JSON) -> bytes:
    """Serialise `value` for the wire; raw bytes pass through for octet-stream."""
    if content_type == headers.JSON:
        return orjson.dumps(value)
    if content_type == headers.CBOR:
        return cbor2.dumps(value)
    if content_type == headers.OCTETS:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError("application/octet-stream payloads must be bytes")
        return bytes(value)
    raise ValueError(f"unsupported content type {content_type!r}")


def decode(data: bytes, content_type: str | None = None) -> Any:
    """Parse a payload; malformed input is the sender's fault, hence BadRequest."""
    content_type = content_type or headers.JSON
    if content_type == headers.OCTETS:
        return data
    if not data:
        return None
    if content_type == headers.JSON:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"payload is not valid JSON: {exc}") from None
    if content_type == headers.CBOR:
        try:
            return cbor2.loads(data)
        except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError) as exc:
            raise BadRequest(f"payload is not valid CBOR: {exc}") from None
    raise BadRequest(f"unsupported content type {content_type!r}; use application/json, "
                     "application/cbor or application/octet-stream")


def content_type_of(hdrs: dict[str, str] | None) -> str:
    """The payload's declared type, JSON when none is declared."""
    if not hdrs:
        return headers.JSON
    return hdrs.get(headers.CONTENT_TYPE, headers.JSON)
