"""Reading request bodies once for every system: bounded by the site's limit, parsed as JSON or as
one CBOR item, with a 400 that says what the body should have been."""

from __future__ import annotations

from typing import Any

import cbor2
import orjson
from aiohttp import web

from bus.errors import BadRequest, TooLarge


async def read(request: web.BaseRequest, limit: int) -> bytes:
    """The request body, refused with 413 beyond `limit` (the site's body limit)."""
    try:
        return await request.read()  # stops reading once past the site's limit (client_max_size)
    except web.HTTPRequestEntityTooLarge:
        size = f" of {request.content_length} bytes" if request.content_length else ""
        raise TooLarge(f"request body{size} exceeds the limit of {limit} bytes") from None


def parse_json(raw: bytes, expected: str) -> Any:
    """A JSON body; `expected` tells the sender what to send instead (e.g. a sample)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON ({exc}); send {expected}") from None


def parse_cbor(raw: bytes, expected: str) -> Any:
    """A body of one CBOR item; `expected` names what it should hold (e.g. "a KeepContract")."""
    try:
        return cbor2.loads(raw)
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError) as exc:
        raise BadRequest(f"the body must be one CBOR item ({expected}); it does not decode: {exc}") from None
