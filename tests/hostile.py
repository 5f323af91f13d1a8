"""What every hostile suite shares (tests/test_hostile_*.py, issue 9): a raw HTTP/1.1 client, the
requests aiohttp's parser refuses, the strategies, the runner (hypothesis in a worker thread while
the event loop serves), and the checks of answers and logs.

Each site gets at least `MIN_REQUESTS` generated requests per run (the issue: "a few thousand per
site"), through one aiohttp session, and one in `RAW_SHARE` over a plain socket (bytes aiohttp's
client will not send: bad framing, stray bytes in headers). Every answer must be below 500 and in
the API's own error shape; the figures are printed at the end of each suite.

Cost: hypothesis spends about 0.1-0.3 ms of CPU per choice it draws, and a request built choice by
choice (a method, a path, seven optional headers, a few random ones, a recursive JSON body) took
5-13 ms to draw, more than serving it. The noise of a request (random header names and values, JSON
and CBOR values, paths, methods) is therefore read from one drawn byte string each (`Script`):
hypothesis still chooses, and shrinks, those bytes, toward the first choice of every read. The
choices that name what a suite is about (an operation, an id, a credential) stay hypothesis's own.
Hypothesis's own work per example (about 2 ms here) is shared by BATCH requests an example, and
`choose` weighs branches as written (`st.one_of(a, a, b)` draws `a` a third of the time, not two).
Measured on one suite (2,040 requests to a Cyborg driver): 19 s before either, 12 s after.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import os
import time
import uuid
from collections import Counter
from typing import Any, Callable, Sequence

import aiohttp
import cbor2
import orjson
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from yarl import URL

from bus import codec, log
from tests.conftest import internal_token

HOST = "127.0.0.1"
# generated requests per site and run (explicit ones come on top); HOSTILE_REQUESTS=200 for a quick look
MIN_REQUESTS = int(os.environ.get("HOSTILE_REQUESTS", "2000"))


# -- a raw HTTP/1.1 client ----------------------------------------------------------------------------

@dataclasses.dataclass
class Raw:
    status: int
    headers: dict[str, str]
    body: bytes
    head: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()


class Closed(Exception):
    """The server closed the connection without an answer."""


async def read_response(reader: asyncio.StreamReader, timeout: float = 10.0, head_only: bool = False,
                        interim: bool = False) -> Raw:
    """One response (status line, headers, a Content-Length body unless it answers a HEAD);
    `Closed` when the server hangs up. A `100 Continue` is skipped, or returned when `interim`."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except asyncio.IncompleteReadError as exc:
        raise Closed(exc.partial) from None
    except (ConnectionResetError, BrokenPipeError):
        raise Closed(b"reset") from None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    hdrs = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            hdrs[name.strip().lower()] = value.strip()
    if status == 100:
        if interim:
            return Raw(status, hdrs, b"", head)
        return await read_response(reader, timeout, head_only)
    if head_only:
        return Raw(status, hdrs, b"", head)
    try:
        body = await asyncio.wait_for(reader.readexactly(int(hdrs.get("content-length", "0"))), timeout)
    except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
        # the server answered and closed while the client was still sending: the reset may
        # overtake the rest of the answer
        raise Closed(head) from None
    return Raw(status, hdrs, body, head)


async def raw_exchange(port: int, data: bytes, timeout: float = 10.0, *, pieces: int = 1, pause: float = 0.0,
                       half_close: bool = False, await_continue: bool = False) -> Raw:
    """Send `data` and read one answer. `pieces`: the bytes go in that many writes `pause` s apart (a
    slow client); `half_close`: then the write side is shut (a body that ends early); `await_continue`:
    the head goes first and the rest only after a `100 Continue` (a final answer instead ends it)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    head_only = data.startswith(b"HEAD ")
    try:
        try:
            if await_continue and b"\r\n\r\n" in data:
                end = data.index(b"\r\n\r\n") + 4
                writer.write(data[:end])
                await writer.drain()
                first = await read_response(reader, timeout, head_only, interim=True)
                if first.status != 100:
                    return first
                data = data[end:]
            step = -(-len(data) // max(pieces, 1)) or 1
            for start in range(0, len(data), step):
                if start and pause:
                    await asyncio.sleep(pause)
                writer.write(data[start:start + step])
                await writer.drain()
            if half_close:
                writer.write_eof()
        except OSError:
            pass       # the server answered and closed while this was still sending: read its answer
        return await read_response(reader, timeout, head_only=head_only)
    finally:
        writer.close()


def request_bytes(method: str = "POST", path: str = "/", body: bytes = b"", *, host: bool = True,
                  extra: list[tuple[str, str]] | None = None, token: str | None = None,
                  length: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1"]
    if host:
        lines.append("Host: x")
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if length:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in extra or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# -- the MesaTEE KMS site: the runner's tests use it as their subject too -------------------------------

@dataclasses.dataclass
class Kms:
    url: str
    port: int
    token: str


@pytest.fixture
async def kms(start_node, data_dir) -> Kms:
    """The KMS component and its internal HTTP site (6016). (Imported by name where it is used.)"""
    node = await start_node(["mesatee.kms", "http.mesatee"])
    url = node.http.bound["mesatee-kms"]
    return Kms(url, int(url.rsplit(":", 1)[1]), internal_token(data_dir))


def assert_kms_error(response: Raw, status: int | tuple[int, ...]) -> dict:
    """MesaTEE's error shape, `{"type": "Error", "status", "message"}`, with one of `status`."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status in statuses, (response.status, response.body[:300])
    assert response.content_type == "application/json", response.head
    body = orjson.loads(response.body)
    assert body["type"] == "Error" and body["status"] == response.status and isinstance(body["message"], str), body
    assert len(body["message"]) > 10, body
    return body


# -- requests aiohttp's parser refuses (issue items 4 and 7) -------------------------------------------

DEEP_JSON = b'{"type":' + b"[" * 1000 + b"]" * 1000 + b"}"


def malformed_requests(token: str, path: str = "/") -> dict[str, tuple[bytes, int]]:
    """Requests aiohttp's parser refuses (and a few its handlers did), each carrying the token, to
    `path`: name -> (bytes, the status a MesaTEE KMS answers)."""
    secret = token.encode()
    auth = ("Authorization", f"Bearer {token}")
    target = path.encode()
    return {
        "bare LF line ends (the issue's example)":
            (b"POST " + target + b" HTTP/1.1\nHost: x\nAuthorization: Bearer " + secret
             + b"\nContent-Length: 2\n\n{}", 400),
        "no Host": (request_bytes(path=path, body=b"{}", host=False, token=token), 400),
        "a header over 8190 bytes": (request_bytes(path=path, body=b"{}", token=token,
                                                   extra=[("X-Long", "a" * 9000)]), 431),
        "a header name over 8190 bytes": (request_bytes(path=path, body=b"{}", extra=[("X" * 9000, "1"), auth]), 431),
        "129 headers": (request_bytes(path=path, body=b"{}", token=token,
                                      extra=[(f"X-{i}", "1") for i in range(129)]), 431),
        "a request line over 8190 bytes": (request_bytes(path=path + token + "a" * 9000, token=token), 414),
        "bad chunk size": (request_bytes(path=path, body=b"zz\r\nxx\r\n0\r\n\r\n", token=token, length=False,
                                         extra=[("Transfer-Encoding", "chunked")]), 400),
        "a chunk longer than announced": (request_bytes(path=path, body=b"2\r\nabcdef\r\n0\r\n\r\n", token=token,
                                                        length=False, extra=[("Transfer-Encoding", "chunked")]), 400),
        "unknown transfer coding": (request_bytes(path=path, body=b"{}", token=token, length=False,
                                                  extra=[("Transfer-Encoding", "gzip, chunked")]), 400),
        "Content-Length and Transfer-Encoding": (request_bytes(path=path, body=b"2\r\n{}\r\n0\r\n\r\n", token=token,
                                                               extra=[("Transfer-Encoding", "chunked")]), 400),
        "two Content-Lengths": (request_bytes(path=path, body=b"{}", token=token, extra=[("Content-Length", "3")]),
                                400),
        "gzip garbage": (encoded("gzip", b"\x1f\x8bgarbage", token, path), 415),
        "br": (encoded("br", b"\x0b\x02\x80{}\x03", token, path), 415),
        "zstd": (encoded("zstd", b"\x28\xb5\x2f\xfdgarbage", token, path), 415),
        "deflate garbage": (encoded("deflate", b"garbage", token, path), 415),
        "TLS on a plain HTTP port": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + secret + os.urandom(64), 400),
        "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + secret, 400),
        "a header name with a space": (request_bytes(path=path, body=b"{}", token=token, extra=[("Bad Name", "x")]),
                                       400),
        "a header value with NUL": (request_bytes(path=path, body=b"{}", token=token, extra=[("X-Nul", "a\x00b")]),
                                    400),
        "an invalid method": (request_bytes(method="P@ST", path=path, body=b"{}", token=token), 400),
        "a request target that is no path": (request_bytes(path="not-a-path", body=b"{}", token=token), 400),
        "HTTP/9.9": (request_bytes(path=path, body=b"{}", token=token).replace(b"HTTP/1.1", b"HTTP/9.9", 1), 400),
        "a non-UTF-8 byte in Authorization":
            (b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff" + secret
             + b"\r\nContent-Length: 2\r\n\r\n{}", 401),
        "JSON nested 1000 deep": (request_bytes(path=path, body=DEEP_JSON, token=token), 400),
    }


def encoded(encoding: str, body: bytes, token: str, path: str = "/") -> bytes:
    return request_bytes(path=path, body=body, token=token, extra=[("Content-Encoding", encoding)])


@pytest.fixture
def captured_logs(caplog) -> Callable[[], str]:
    """Everything the process logs from here on: structlog lines, and the std loggers (aiohttp's).
    (A test module that uses it imports it by name, so that pytest finds it there.)"""
    stream = io.StringIO()
    log.configure("debug", json=True, stream=stream)
    caplog.set_level(logging.DEBUG)
    yield lambda: stream.getvalue()
    log.configure("warning", json=True)


# -- choices read from drawn bytes --------------------------------------------------------------------

class Script:
    """Choices read from bytes hypothesis drew: each read takes the next byte (or bytes); past the end
    every read is 0. Hypothesis shrinks the bytes toward zeros, so a failing value shrinks toward the
    first option of each read (None, "", [], {})."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def byte(self) -> int:
        value = self.data[self.at] if self.at < len(self.data) else 0
        self.at += 1
        return value

    def below(self, n: int) -> int:
        """0 <= value < n (n at most 65536)."""
        value = self.byte() if n <= 256 else self.byte() << 8 | self.byte()
        return value % n

    def chance(self, one_in: int) -> bool:
        return self.below(one_in) == one_in - 1

    def pick(self, options: Sequence[Any]) -> Any:
        return options[self.below(len(options))]

    def raw(self, n: int) -> bytes:
        taken = self.data[self.at:self.at + n]
        self.at += n
        return taken + bytes(n - len(taken))

    def integer(self) -> int:
        """A signed 64-bit integer, often a boundary."""
        if self.below(2):
            return self.pick(EDGE_INTEGERS)
        return int.from_bytes(self.raw(self.pick((1, 2, 4, 8))), "big", signed=True)


def scripted(build: Callable[[Script], Any], size: int = 48) -> st.SearchStrategy[Any]:
    """A value `build` reads from `size` / 2 to `size` drawn bytes."""
    return st.binary(min_size=size // 2, max_size=size).map(lambda data: build(Script(data)))


EDGE_INTEGERS = [0, 1, -1, 2, 255, 256, 65535, 65536, 2 ** 31 - 1, -2 ** 31, 2 ** 32, 2 ** 53 + 1, 2 ** 63 - 1,
                 -2 ** 63, 2 ** 64 - 1, 10 ** 15]
EDGE_FLOATS = [0.0, -0.0, 0.5, 1.5, -1.0, 1e-308, 5e-324, 1.7976931348623157e308, 1e16, 0.1, 3.0]
# characters that odd input tends to hold: non-ASCII letters, an emoji, BiDi and BOM, separators
# some parsers take for line ends, controls, quotes, escapes, non-ASCII digits
ODD_CHARS = ("\u00e9\u00fc\u65e5\u672c\U0001F600\u202e\ufeff\u2028\u2029\u0085\u00a0\x00\x01\x1b\x7f\t\n\r\"'\\/"
             "\u0661\uff11\u0131{}[]:,%*>.")
SAMPLE_TEXTS = ["", " ", "a", "x" * 300, "type", "Create", "Get", "READY", "null", "true", "{}", "[]", "0", "-1",
                "1e999", "NaN", "\u00e9t\u00e9", "\u65e5\u672c", "\U0001F600", "\u202e", "a\x00b", "a\nb",
                "../../etc/passwd", "%00", "$JS.API.>", "*", ">", "_INBOX.x"]


def script_text(script: Script, limit: int = 40) -> str:
    """Text: one of SAMPLE_TEXTS, or up to `limit` characters, mostly printable ASCII."""
    if script.below(3) == 0:
        return script.pick(SAMPLE_TEXTS)
    length = script.below(limit + 1)
    chars = []
    for _ in range(length):
        b = script.byte()
        chars.append(chr(0x20 + b % 0x5F) if b < 0xC0 else ODD_CHARS[b % len(ODD_CHARS)])
    return "".join(chars)


def script_json(script: Script, depth: int = 0) -> Any:
    """A JSON value (lists and objects down to 4 levels, at most 5 items each)."""
    kind = script.below(10 if depth < 4 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return bool(script.below(2))
    if kind == 2:
        return script.integer()
    if kind == 3:
        return script.pick(EDGE_FLOATS) * (1 if script.below(2) else -1)
    if kind in (4, 5, 6):
        return script_text(script)
    if kind in (7, 8):
        return [script_json(script, depth + 1) for _ in range(script.below(6))]
    return {script_text(script, 12): script_json(script, depth + 1) for _ in range(script.below(6))}


def script_cbor(script: Script, depth: int = 0) -> Any:
    """A CBOR value: JSON's and byte strings, bignums, NaN and infinities, undefined, UUIDs, byte and
    integer map keys, and tags (those cbor2 decodes natively, and any)."""
    kind = script.below(13 if depth < 4 else 9)
    if kind < 5:
        return script_json(script, 4)
    if kind == 5:
        return script.raw(script.below(41))
    if kind == 6:
        return script.pick([2 ** 64, -2 ** 64 - 1, 2 ** 80, -2 ** 80, float("nan"), float("inf"), float("-inf")])
    if kind == 7:
        return script.pick([cbor2.undefined, uuid.UUID(bytes=script.raw(16))])
    if kind == 8:
        return script.pick([b"", b"\x00", "", 0])
    if kind in (9, 10):
        return [script_cbor(script, depth + 1) for _ in range(script.below(6))]
    if kind == 11:
        keys = [script.pick([script_text(script, 12), script.raw(script.below(5)), script.integer()])
                for _ in range(script.below(6))]
        return {key: script_cbor(script, depth + 1) for key in keys}
    tag = script.pick(CBOR_TAGS) if script.below(2) else int.from_bytes(script.raw(8), "big")
    return cbor2.CBORTag(tag, script_cbor(script, depth + 1))


CBOR_TAGS = sorted(codec.CBOR_NATIVE_TAGS)
json_values = scripted(script_json, 64)
cbor_values = scripted(script_cbor, 64)


# -- the hostile suite's strategies -------------------------------------------------------------------

RAW_SHARE = 5                 # one request in RAW_SHARE goes over a raw socket
RAW_TIMEOUT = 3.0             # a raw request whose framing promises more bytes than it sent gets no answer
SLOW_PAUSE = 0.02             # s between the pieces of a slowly sent raw request
FIGURES: dict[str, Counter] = {}
SLOW = 0.25                   # s: an answer slower than this is counted (and shown with HOSTILE_DEBUG=1)
TIMING = ("requests", "seconds", "send-ms", "check-us", f"slower than {SLOW:g} s")   # the rest of the seconds: drawing
HUNG_UP = "hung up on (the client half-closed)"


def suite_settings(examples: int):
    return settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                    suppress_health_check=list(HealthCheck),
                    phases=(Phase.explicit, Phase.generate, Phase.shrink))


TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
PATH_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "#")
METHODS = ["POST"] * 6 + ["GET", "GET", "DELETE", "DELETE", "PUT", "HEAD", "OPTIONS", "PATCH", "TRACE"]


def script_token(script: Script, limit: int = 12, low: int = 1) -> str:
    """An HTTP token (a method, a header name): `low` to `limit` token characters."""
    return "".join(script.pick(TOKEN_CHARS) for _ in range(low + script.below(limit - low + 1)))


def script_method(script: Script) -> str:
    return script_token(script) if script.below(4) == 3 else script.pick(METHODS)


def script_header_value(script: Script) -> str:
    """A header value aiohttp's client sends: printable ASCII (up to 200), or any text but controls
    and line ends."""
    if script.below(2):
        return "".join(chr(0x20 + script.byte() % 0x5F) for _ in range(script.below(201)))
    text = script_text(script, 50)
    return "".join(c for c in text if c.isprintable() and c not in "\r\n\x85\u2028\u2029")


methods = scripted(script_method, 16)
header_names = scripted(lambda script: script_token(script, 30), 32)
header_values = scripted(script_header_value, 64)


def script_headers(script: Script, most: int = 5) -> dict[str, str]:
    """Up to `most` random headers (often none)."""
    return {script_token(script, 30): script_header_value(script) for _ in range(script.below(most + 1))}


def _nested(depth: int, kind: int) -> bytes:
    return [b'{"type":' + b"[" * depth + b"]" * depth + b"}", b"[" * depth + b"]" * depth,
            b'{"a":' * depth + b"1" + b"}" * depth, b"\x81" * depth + b"\x01", b"\xa1\x61a" * depth + b"\x01",
            b"[" * depth][kind]


def _encoded(script: Script) -> bytes:
    """JSON or CBOR of a value, or CBOR with bytes after it."""
    kind = script.below(3)
    if kind == 0:
        return orjson.dumps(script_json(script))
    data = cbor2.dumps(script_cbor(script))
    return data if kind == 1 else data + script.raw(1 + script.below(20))


common_bodies = st.one_of(
    st.binary(max_size=300),
    st.builds(_nested, st.integers(1, 3000), st.integers(0, 5)),
    st.builds(lambda size, byte: bytes([byte]) * size, st.sampled_from([0, 1, 1023, 65535, 65536, 65537, 200_000]),
              st.integers(0, 255)),
    scripted(_encoded, 96),
    # (built, not st.just: a strategy's repr would hold the MiB, and hypothesis renders it)
    st.builds(lambda: bytes.fromhex("c25a00100000") + b"\xff" * (1 << 20)),
)


@dataclasses.dataclass
class Hostile:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    chunked: bool = False
    raw: bytes | None = None      # sent as such over a raw socket instead (raw_exchange's options below)
    pieces: int = 1
    half_close: bool = False
    await_continue: bool = False

    def __repr__(self) -> str:   # hypothesis prints failing examples: keep them readable
        if self.raw is not None:
            options = "".join(f" {name}={getattr(self, name)!r}" for name in ("pieces", "half_close", "await_continue")
                              if getattr(self, name) != Hostile.__dataclass_fields__[name].default)
            return (f"Hostile(raw={self.raw[:300]!r}{'...' if len(self.raw) > 300 else ''} ({len(self.raw)} bytes)"
                    f"{options})")
        return (f"Hostile({self.method} {self.path[:100]!r} headers={self.headers!r} chunked={self.chunked} "
                f"body={self.body[:200]!r}{'...' if len(self.body) > 200 else ''} ({len(self.body)} bytes))")


CONTENT_TYPES = ["application/json", "application/cbor", "text/plain", "x/y; charset=zz"]
CONTENT_ENCODINGS = ["identity", "gzip", "br", "zstd", "deflate", "x"]


def script_special_headers(script: Script, token: str | None, auth: bool = True) -> dict[str, str]:
    """Each of the headers a server treats specially, present one time in three: Authorization (right,
    odd case, one byte more, another scheme, empty; `auth`: offered at all), Content-Type,
    Content-Encoding, Expect, X-Request-Id, Accept, Connection; a value is now and then random.
    (Upgrade is sent raw only: aiohttp's client then reads a declined answer until the server closes
    the idle connection, 30 s later.)"""
    tokens = (["Bearer " + token, "bearer " + token, "Bearer " + token + "x", "Basic " + token, "Bearer", ""]
              if token else ["Bearer x", ""])
    choices = {"Authorization": tokens, "Content-Type": CONTENT_TYPES, "Content-Encoding": CONTENT_ENCODINGS,
               "Expect": ["100-continue", "200-ok"], "X-Request-Id": None, "Accept": ["text/html", "*/*"],
               "Connection": ["close", "keep-alive"]}
    headers = {}
    for name, values in choices.items():
        if script.below(3) != 2 or (name == "Authorization" and not auth):
            continue
        random = values is None or (name in ("Authorization", "Content-Type", "Content-Encoding")
                                    and script.below(2))
        headers[name] = script_header_value(script) if random else script.pick(values)
    return headers


def special_headers(token: str | None, auth: bool = True) -> st.SearchStrategy[dict[str, str]]:
    return scripted(lambda script: script_special_headers(script, token, auth), 48)


def request_headers(token: str | None) -> st.SearchStrategy[dict[str, str]]:
    """The special headers, and now and then a few random ones."""
    def build(script: Script) -> dict[str, str]:
        special = script_special_headers(script, token)
        extra = script_headers(script) if script.below(2) else {}
        return {**extra, **special}

    return scripted(build, 160)


@st.composite
def raw_requests(draw, paths: st.SearchStrategy[str], token: str | None, bodies: st.SearchStrategy[bytes]) -> bytes:
    """Bytes aiohttp's client would not send: stray bytes in the request line and headers, bad framing."""
    path = draw(paths).encode()
    body = draw(bodies)
    script = Script(draw(st.binary(min_size=64, max_size=160)))
    eol = script.pick([b"\r\n"] * 8 + [b"\n", b"\r"])
    method = script.raw(1 + script.below(8)) if script.chance(3) else script_method(script).encode()
    if script.chance(4):
        path = b"/" + script.raw(script.below(41))
    version = script.pick([b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.x", b""])
    lines = [method + b" " + path + (b" " + version if version else b"")]
    if not script.chance(10):
        lines.append(b"Host: x")
    if token and script.below(2):
        lines.append(b"Authorization: Bearer " + token.encode() + script.pick([b"", b"\xff", b"\x80x"]))
    if script.chance(10):
        lines += [b"Upgrade: " + script.pick([b"websocket", b"h2c", b"x"]), b"Connection: upgrade"]
    for _ in range(script.below(5)):
        name = script.raw(1 + script.below(10)) if script.chance(2) else script_token(script, 10).encode()
        lines.append(name + b": " + script.raw(script.below(61)))
    framing = script.pick(["length"] * 6 + ["chunked", "bad-chunked", "none", "huge", "garbage"])
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        body = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    elif framing == "bad-chunked":
        lines.append(b"Transfer-Encoding: chunked")
        body = script.pick([b"zz\r\n", b"-1\r\n", b"ffffffffffffffffff\r\n", b"1;\x00\r\nx\r\n0\r\n\r\n"])
    elif framing == "huge":
        lines.append(b"Content-Length: 99999999999")
    elif framing == "garbage":
        lines.append(b"Content-Length: " + script.pick([b"-1", b"1x", b"0x10", b"", b"1 1", b"+5"]))
    return eol.join(lines) + eol + eol + (body if framing != "none" else b"")


def hostile_requests(paths: st.SearchStrategy[str], token: str | None,
                     bodies: st.SearchStrategy[bytes]) -> st.SearchStrategy[Hostile]:
    """Any method, path, headers and body, through aiohttp's client; one in RAW_SHARE raw."""
    made = st.builds(Hostile, methods, paths, request_headers(token), bodies, rarely())
    raw = st.builds(lambda data: Hostile("RAW", "", {}, b"", raw=data), raw_requests(paths, token, bodies))
    return st.sampled_from(range(RAW_SHARE)).flatmap(lambda n: raw if n == 0 else made)


def focused_requests(method: str, paths: list[str], headers: dict[str, str],
                     bodies: st.SearchStrategy[bytes]) -> st.SearchStrategy[Hostile]:
    """The right method and path, and valid credentials: the body and the special headers decide."""
    return st.builds(Hostile, st.just(method), st.sampled_from(paths),
                     special_headers(None, auth=False).map(lambda special: {**special, **headers}),
                     bodies, rarely())


def random_paths(known: list[str]) -> st.SearchStrategy[str]:
    """Mostly a known path; else one with a random tail, a random path, or an odd one."""
    odd = ["/%ff", "/%00", "/..", "/./", "//", "/?x=%ff", "/" + "a" * 5000]

    def build(script: Script) -> str:
        kind = script.below(6)
        if kind < 3:
            return script.pick(known)
        tail = "".join(script.pick(PATH_CHARS) for _ in range(script.below(31 if kind == 3 else 61)))
        if kind == 3:
            return script.pick(known) + tail
        return "/" + tail if kind == 4 else script.pick(odd)

    return scripted(build, 72)


def rarely() -> st.SearchStrategy[bool]:
    """True one time in ten."""
    return st.sampled_from(range(10)).map(lambda n: n == 9)


def mostly(common: list, odd: list, share: int = 3) -> st.SearchStrategy:
    """One of `common` `share` times in `share + 1`, else one of `odd`. (Repeating values in one
    sampled_from, or a sampled_from in one_of, came out far from their share: hypothesis's one_of
    counts equal branches as one.)"""
    common_values, odd_values = st.sampled_from(common), st.sampled_from(odd)
    return st.sampled_from(range(share + 1)).flatmap(lambda n: odd_values if n == share else common_values)


def choose(*branches: st.SearchStrategy) -> st.SearchStrategy:
    """One of `branches`, each as likely (name one twice to give it twice the share): st.one_of
    counts equal branches as one, so `one_of(a, a, b)` draws `a` half as often as meant."""
    return st.sampled_from(range(len(branches))).flatmap(lambda n: branches[n])


def either(common: st.SearchStrategy, odd: st.SearchStrategy, share: int = 3) -> st.SearchStrategy:
    """`common` `share` times in `share + 1`, else `odd` (only the branch taken is drawn)."""
    return st.sampled_from(range(share + 1)).flatmap(lambda n: odd if n == share else common)


# -- bodies: often right, then one field off ----------------------------------------------------------

def perturbed(valid: st.SearchStrategy[dict]) -> st.SearchStrategy[dict]:
    """A body as given (two times in three), or with one field dropped, replaced by any JSON value,
    or one more field."""
    def drop(body: dict, which: int) -> dict:
        key = sorted(body)[which % len(body)] if body else None
        return {k: v for k, v in body.items() if k != key}

    def replace(body: dict, which: int, junk: object) -> dict:
        return {**body, sorted(body)[which % len(body)]: junk} if body else body

    names = st.text(max_size=12) | st.sampled_from(["type", "user_id", "file_id", "task_id", "status", "host"])
    odd = st.one_of(st.builds(drop, valid, st.integers(0, 20)), st.builds(replace, valid, st.integers(0, 20), json_values),
                    st.builds(lambda body, name, junk: {**body, name: junk}, valid, names, json_values))
    # (choices, not an integer range: hypothesis favours a range's ends, which would be the odd cases)
    return either(valid, odd, 2)


def json_bytes(bodies: st.SearchStrategy[Any], twice: bytes = b', "type": "Get"}') -> st.SearchStrategy[bytes]:
    """Encoded as JSON (a lone surrogate escaped), now and then with a key twice (`twice` ends the
    object instead of its closing brace) or bytes after the object."""
    def encode(body: Any, how: str, tail: bytes) -> bytes:
        try:
            data = orjson.dumps(body)
        except TypeError:          # a lone surrogate: JSON can still carry it, escaped
            data = json.dumps(body).encode()
        if how == "twice" and data.startswith(b"{") and len(data) > 2:
            return data[:-1] + twice
        if how == "tail":
            return data + tail
        return data

    return st.builds(encode, bodies, mostly(["plain"], ["twice", "tail"], 9),
                     st.sampled_from([b" ", b"\n{}", b"x", b"\x00", b"\xff"]))


# -- sending, and what came back ----------------------------------------------------------------------

@dataclasses.dataclass
class Answer:
    status: int
    content_type: str
    body: bytes
    request_id: str | None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)     # lower-case names


async def send(http: aiohttp.ClientSession, base: str, port: int, request: Hostile,
               ssl_context=None) -> Answer | str:
    """The answer, or a word for why there is none (the figures count those)."""
    if request.raw is not None:
        try:
            response = await raw_exchange(port, request.raw, timeout=RAW_TIMEOUT, pieces=request.pieces,
                                          pause=SLOW_PAUSE, half_close=request.half_close,
                                          await_continue=request.await_continue)
        except Closed:
            if request.half_close:        # a client that shuts its end has left, for aiohttp
                return HUNG_UP
            return "closed without an answer"
        except asyncio.TimeoutError:
            return "no answer (framing promised more)"
        return Answer(response.status, response.content_type, response.body, response.headers.get("x-request-id"),
                      response.headers)
    try:
        async with http.request(request.method, URL(base + request.path, encoded=True), data=request.body,
                                headers=request.headers, chunked=request.chunked or None, ssl=ssl_context,
                                skip_auto_headers=("Content-Type",),
                                timeout=aiohttp.ClientTimeout(total=30)) as response:
            body = await response.read()
            return Answer(response.status, response.content_type, body, response.headers.get("X-Request-Id"),
                          {name.lower(): value for name, value in response.headers.items()})
    except (ValueError, aiohttp.InvalidURL, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        return f"client: {type(exc).__name__}"


def method_of(request: Hostile) -> str:
    return request.method if request.raw is None else request.raw.split(b" ", 1)[0].decode("latin-1")


def target(request: Hostile) -> tuple[str, str]:
    """(method, path as the server routes it: percent-decoded, without query or one trailing slash)."""
    if request.raw is None:
        method, raw_path = request.method, request.path
    else:
        first = request.raw.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1").split(" ")
        method, raw_path = first[0], (first[1] if len(first) > 1 else "")
    try:
        path = URL(raw_path, encoded=True).path if raw_path.startswith("/") else raw_path
    except ValueError:
        path = raw_path
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    return method, path


BATCH = 4                     # requests per hypothesis example: its own cost per example (~1 ms) is shared


def run_suite(name: str, examples: int, strategy, send, check, explicit: tuple[Hostile, ...] = ()) -> Counter:
    """Run the generated requests (after the `explicit` ones, each alone) from a worker thread, BATCH
    to an example (a failure names its request); the event loop serves them meanwhile."""
    loop = asyncio.get_running_loop()
    tally: Counter = Counter()

    @suite_settings(-(-examples // BATCH))
    @given(st.lists(strategy, min_size=BATCH, max_size=BATCH))
    def hostile(requests: list[Hostile]) -> None:
        for request in requests:
            one(request)

    def one(request: Hostile) -> None:
        began = time.monotonic()
        answer = asyncio.run_coroutine_threadsafe(send(request), loop).result(timeout=120)
        took = time.monotonic() - began
        tally["send-ms"] += round(took * 1000)
        if took > SLOW:
            tally[f"slower than {SLOW:g} s"] += 1
            if os.environ.get("HOSTILE_DEBUG"):
                print(f"SLOW {took:.2f} s:", answer if isinstance(answer, str) else (answer.status, answer.body[:200]),
                      repr(request)[:300])
        tally["requests"] += 1
        if isinstance(answer, str):
            tally[answer] += 1
            if os.environ.get("HOSTILE_DEBUG"):        # HOSTILE_DEBUG=1 pytest -s: which got no answer
                print("SILENT", answer, repr(request)[:300])
            return
        tally[answer.status] += 1
        checked = time.monotonic()
        check(request, answer)
        tally["check-us"] += round((time.monotonic() - checked) * 1e6)

    for case in explicit:
        hostile = example([case])(hostile)
    FIGURES[name] = tally
    return hostile, tally


async def run_in_thread(name: str, examples: int, strategy, send, check, explicit: tuple[Hostile, ...] = ()) -> Counter:
    hostile, tally = run_suite(name, examples, strategy, send, check, explicit)
    started = time.monotonic()
    await asyncio.to_thread(hostile)
    tally["seconds"] = round(time.monotonic() - started)
    print(f"\nhostile suite, {name}: {dict(sorted(tally.items(), key=str))}")
    return tally


def no_answers_are_rare(tally: Counter) -> None:
    silent = sum(count for outcome, count in tally.items()
                 if isinstance(outcome, str) and outcome not in TIMING and not outcome.startswith(("503", HUNG_UP, "log: ")))
    assert silent <= tally["requests"] // 10, tally


def assert_quiet_logs(logs: str, caplog, secret: str | None = None) -> None:
    """Bad requests leave one line each: no traceback, no aiohttp or asyncio record, no credential."""
    traced = [redacted(line, [secret] if secret else [])[:500] for line in logs.splitlines() if "Traceback" in line]
    assert not traced, "tracebacks in the logs:\n" + "\n".join(traced[:3])
    records = [record for record in caplog.records if record.name.startswith(("aiohttp", "asyncio"))]
    assert not records, [f"{record.name}: {record.getMessage()[:200]}" for record in records[:3]]
    if secret:
        assert secret not in logs, "the credential is in the logs"


# -- one log line per refusal -------------------------------------------------------------------------

def recording(check: Callable[[Hostile, Answer], None], answers: list[Answer]) -> Callable[[Hostile, Answer], None]:
    def record(request: Hostile, answer: Answer) -> None:
        answers.append(answer)
        check(request, answer)

    return record


UNLOGGED = ("Not Found: ", "Method Not Allowed: ", "Expectation Failed: ")   # the runner's own refusals
REFUSALS = ("request refused", "request failed", "bad request refused")     # components', the adapter's


def assert_one_line_per_refusal(logs: str, answers: list[Answer], message: Callable[[bytes], str] | None = None,
                                background: tuple[str, ...] = ()) -> Counter:
    """Each refused request (a 4xx under a request id the server made) left exactly one refusal line
    from the HTTP adapter and at most one from each component it reached; no line of the suite is a
    warning or worse, but the `background` events (work no answer waits for, such as a driver gone
    silent; a task a request started logs under its request id). (Other lines a request causes, a task's "task failed" say, are not refusals.)
    Refusals the runner makes before any handler (no such route, no such method, a bad Expect) leave
    none today: they are counted apart (see test_every_refusal_on_a_mesatee_site_leaves_one_log_line).
    `message` reads the error message from an answer's body (default: MesaTEE's `message`)."""
    message = message or (lambda body: orjson.loads(body)["message"])
    lines: dict[str, list[dict]] = {}
    everything = [orjson.loads(text) for text in logs.splitlines()]
    for line in everything:
        if "request_id" in line and line["event"] in REFUSALS:
            lines.setdefault(line["request_id"], []).append(line)
    loud = [line for line in everything if line["level"] not in ("debug", "info")
            and (line["event"] not in background or "exception" in line)]
    assert not loud, loud[:5]
    figures: Counter = Counter()
    for answer in answers:
        if not (400 <= answer.status < 500 and (answer.request_id or "").startswith(log._ID_PREFIX)):
            continue
        mine = lines.get(answer.request_id, [])
        per_component = Counter(line["component"] for line in mine)
        assert all(count == 1 for count in per_component.values()), (answer, mine)
        # (an answer to a HEAD has no body to tell why)
        unlogged = message(answer.body).startswith(UNLOGGED) if answer.body else answer.status in (404, 405, 417)
        if not mine and unlogged:
            figures["unlogged (no route, bad Expect)"] += 1
            continue
        assert per_component["adapters.http"] == 1, (answer, mine)
        figures[f"{len(mine)} line{'s' if len(mine) > 1 else ''}"] += 1
    return figures


def lines_with(logs: str, secret: str) -> list[str]:
    return [line.replace(secret, "<the credential>") for line in logs.splitlines() if secret in line][:3]


def redacted(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "<the credential>")
    return text
