"""Reading request bodies once for every system: bounded by the site's limit and by time, parsed as
JSON or as one CBOR item, with a 400 that says what the body should have been.

A body that arrived with its headers (every small request) is taken as it is. One still on its way
is read chunk by chunk: more than the site's limit is a 413 and a pause of more than the site's
`body_timeout` between two chunks a 408. A body the parser could not decode (bad chunking, say) is
a 400, and so is a client that hangs up mid-body. After any of these the rest of the body is not read
and the connection closes (`Unread`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from adapters.http import aiohttp_internals
from bus import codec
from bus.errors import BadRequest, BusError

MAX_DEPTH = codec.CBOR_MAX_DEPTH          # containers nested deeper than this are refused, JSON or CBOR
DEFAULT_BODY_TIMEOUT = 30.0               # seconds without a byte of a body that is still arriving


class Unread(BusError):
    """The body was refused before it was read to its end: the reply closes the connection."""


async def read(request: web.BaseRequest, limit: int, timeout: float = DEFAULT_BODY_TIMEOUT) -> bytes:
    """The request body, refused with 413 beyond `limit` (the site's body limit) and with 408 when
    it stalls for `timeout` seconds."""
    try:
        if request.content.is_eof():        # it all arrived with the headers: nothing to wait for
            body = await request.read()     # (bounded by the site's client_max_size)
            if len(body) > limit:           # a route may allow less than its site
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
            return body
        return await _read_arriving(request, limit, timeout)
    except web.HTTPRequestEntityTooLarge:
        raise _unread(request, 413, _too_large(request, limit)) from None
    except aiohttp_internals.PAYLOAD_ERRORS as exc:
        raise _unread(request, 400, f"the body is malformed: {aiohttp_internals.describe(exc)}") from None
    except TimeoutError:
        raise _unread(request, 408, f"the body stalled: no byte of it arrived for {timeout:g} s") from None
    except ConnectionError:   # the client hung up mid-body: nobody reads the answer, one log line says so
        raise Unread("the client closed the connection before its body arrived", status=400) from None


async def _read_arriving(request: web.BaseRequest, limit: int, timeout: float) -> bytes:
    payload = request.content
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    size = 0
    async with asyncio.timeout(timeout) as deadline:
        while chunk := await payload.readany():
            size += len(chunk)
            if size > limit:
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
            chunks.append(chunk)
            deadline.reschedule(loop.time() + timeout)
    return b"".join(chunks)


def _too_large(request: web.BaseRequest, limit: int) -> str:
    size = f" of {request.content_length} bytes" if request.content_length else ""
    return f"request body{size} exceeds the limit of {limit} bytes"


def too_large(request: web.BaseRequest, limit: int) -> Unread:
    """The 413 for a body whose declared length is over the limit (nothing of it is read)."""
    return Unread(_too_large(request, limit), status=413)


def _unread(request: web.BaseRequest, status: int, message: str) -> Unread:
    aiohttp_internals.skip_rest_of_body(request)
    return Unread(message, status=status)


def parse_json(raw: bytes, expected: str) -> Any:
    """A JSON body; `expected` tells the sender what to send instead (e.g. a sample)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON ({exc}); send {expected}") from None
    # a body with few brackets cannot nest deeply: the walk runs only for the odd one with many
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _deeper_than(value, MAX_DEPTH):
        raise BadRequest(f"body nests arrays or objects deeper than {MAX_DEPTH}; send {expected}")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """True when containers nest more than `limit` deep (walked without recursion)."""
    if not isinstance(value, (dict, list)):
        return False
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def parse_cbor(raw: bytes, expected: str) -> Any:
    """A body of one CBOR item, decoded strictly (bus/codec.py); `expected` names what it should
    hold (e.g. "a KeepContract")."""
    try:
        return codec.loads_cbor(raw, max_depth=MAX_DEPTH)
    except BadRequest as exc:
        raise BadRequest(f"the body must be one CBOR item ({expected}); it is {exc.message}") from None
