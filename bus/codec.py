"""Payload codecs, chosen by the `Content-Type` header (JSON by default), and the one strict CBOR
decoder every CBOR reader uses (the bus, the HTTP bodies, the keep sockets, the keep loader).

Strict CBOR: a payload is exactly one item (trailing bytes are refused), nested at most
`CBOR_MAX_DEPTH` deep, with text map keys or byte string keys only and no key twice, and no
semantic tag but those in `CBOR_TAGS` (a UUID, tag 37). cbor2 decodes many tags natively (bignums,
decimals, shared references 28/29, regular expressions, MIME messages, sets, ...); each of those
is overridden here with a refusal, and unknown tags are refused by the tag hook, so hostile input
can neither build cyclic or huge values nor reach the email or regex parsers.
"""

from __future__ import annotations

import io
from functools import lru_cache
from typing import Any

import cbor2
import orjson

from bus import headers
from bus.errors import BadRequest

CBOR_TAGS: frozenset[int] = frozenset({37})   # tag 37: a UUID (cbor2 gives a uuid.UUID)
CBOR_MAX_DEPTH = 32
# Every tag cbor2 6.x decodes natively (tests/test_strict_cbor.py checks this list against cbor2).
CBOR_NATIVE_TAGS: frozenset[int] = frozenset({0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256,
                                              258, 260, 261, 1004, 43000, 55799})
_CBOR_ERRORS = (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, OverflowError, RecursionError,
                LookupError)


class RefusedTag(BadRequest):
    """A semantic tag our messages never carry."""


class Incomplete(BadRequest):
    """The bytes end inside the item (a stream reader waits for more)."""


def _refuse(tag: int) -> Any:
    def refuse(value: Any, immutable: bool = False) -> Any:
        raise RefusedTag(f"CBOR tag {tag} is not accepted")

    return refuse


def _refuse_unknown(tag: cbor2.CBORTag, immutable: bool = False) -> Any:
    raise RefusedTag(f"CBOR tag {tag.tag} is not accepted")


@lru_cache(maxsize=16)
def _refusals(allowed: frozenset[int]) -> dict[int, Any]:
    return {tag: _refuse(tag) for tag in CBOR_NATIVE_TAGS if tag not in allowed}


_DEFAULT_REFUSALS = _refusals(CBOR_TAGS)


def _decoder(stream: io.BytesIO, allowed_tags: frozenset[int] | None, max_depth: int) -> cbor2.CBORDecoder:
    refusals = _DEFAULT_REFUSALS if allowed_tags is None else _refusals(allowed_tags)
    return cbor2.CBORDecoder(stream, semantic_decoders=refusals, tag_hook=_refuse_unknown, max_depth=max_depth,
                             allow_duplicate_keys=False, strict_hashable_types=True)


def _why(exc: BaseException) -> str:
    """What was wrong, in a person's words (cbor2 wraps a refused tag in its own error)."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, RefusedTag):
        exc = cause
    if isinstance(exc, RefusedTag):
        allowed = ", ".join(str(tag) for tag in sorted(CBOR_TAGS))
        return f"{exc.message} (the only tags accepted: {allowed}, a UUID)"
    if isinstance(exc, RecursionError):
        return f"nested deeper than {CBOR_MAX_DEPTH}"
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def loads_cbor(data: bytes, *, allowed_tags: frozenset[int] | None = None,
               max_depth: int = CBOR_MAX_DEPTH) -> Any:
    """Exactly one strictly decoded CBOR item; BadRequest saying why otherwise (Incomplete when the
    bytes end inside the item)."""
    stream = io.BytesIO(data)
    try:
        value = _decoder(stream, allowed_tags, max_depth).decode()
    except cbor2.CBORDecodeEOF:
        raise Incomplete(f"not valid CBOR: the item ends early ({len(data)} bytes arrived)") from None
    except _CBOR_ERRORS as exc:
        raise BadRequest(f"not valid CBOR: {_why(exc)}") from None
    end = stream.tell()
    if end != len(data):
        raise BadRequest(f"not one CBOR item: {len(data) - end} bytes follow the first item "
                         f"(of {end} bytes); send exactly one")
    return value


def split_cbor(buffer: bytes, *, allowed_tags: frozenset[int] | None = None,
               max_depth: int = CBOR_MAX_DEPTH) -> tuple[bytes, bytes]:
    """The first strictly decoded item of a stream and what follows it: (item bytes, rest).
    Incomplete when the buffer ends inside the item; BadRequest when it does not decode."""
    stream = io.BytesIO(buffer)
    try:
        _decoder(stream, allowed_tags, max_depth).decode()
    except cbor2.CBORDecodeEOF:
        raise Incomplete(f"not valid CBOR: the item ends early ({len(buffer)} bytes arrived)") from None
    except _CBOR_ERRORS as exc:
        raise BadRequest(f"not valid CBOR: {_why(exc)}") from None
    end = stream.tell()
    return buffer[:end], buffer[end:]


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
            return loads_cbor(data)
        except BadRequest as exc:
            raise BadRequest(f"payload is {exc.message}") from None
    raise BadRequest(f"unsupported content type {content_type!r}; use application/json, "
                     "application/cbor or application/octet-stream")


def content_type_of(hdrs: dict[str, str] | None) -> str:
    """The payload's declared type, JSON when none is declared."""
    if not hdrs:
        return headers.JSON
    return hdrs.get(headers.CONTENT_TYPE, headers.JSON)
