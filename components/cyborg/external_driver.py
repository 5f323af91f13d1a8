"""Talking to an external driver over HTTP, as the seed's agent does: `POST <url>/discovery` and
`GET <url>/hardware`. Every call is bounded: `timeout` seconds in all (connecting, waiting,
reading), at most `MAX_BODY` bytes of answer, read in pieces and given up on past the bound; no
redirect is followed. A failure is an ExternalDriverError saying what went wrong, never a hang.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

MAX_BODY = 4 * 1024 * 1024
MAX_DEPTH = 32


class ExternalDriverError(Exception):
    """The driver did not answer, or answered what the agent cannot use."""


class ExternalDrivers:
    """One HTTP client session for all of an agent's external drivers."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=64, limit_per_host=4),
                headers={"Accept": "application/json", "User-Agent": "teebus-cyborg-agent"},
                auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def discovery(self, url: str) -> Any:
        return await self._call("POST", f"{url}/discovery", b"{}")

    async def hardware(self, url: str) -> Any:
        return await self._call("GET", f"{url}/hardware", None)

    async def _call(self, method: str, url: str, body: bytes | None) -> Any:
        headers = {"Content-Type": "application/json"} if body is not None else None
        try:
            async with self._client().request(method, url, data=body, headers=headers,
                                              allow_redirects=False) as response:
                if response.content_length is not None and response.content_length > MAX_BODY:
                    raise ExternalDriverError(f"{method} {url} answered {response.content_length} bytes: "
                                              f"{_TOO_BIG}")
                if 300 <= response.status < 400:
                    where = response.headers.get("Location", "")
                    to = f" to {_printable(where, 120)}" if where else ""
                    raise ExternalDriverError(f"{method} {url} answered HTTP {response.status}, a redirect{to}: "
                                              "the agent follows no redirect; register the driver with the "
                                              "endpoint it answers at")
                data = await _bounded(response)
                if response.status != 200:
                    said = _printable(data.decode("utf-8", "replace"), 160)
                    raise ExternalDriverError(f"{method} {url} answered HTTP {response.status}"
                                              + (f": {said}" if said else ""))
        except ExternalDriverError:
            raise
        except TimeoutError:
            raise ExternalDriverError(f"{method} {url} did not answer within {self.timeout:g} s") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise ExternalDriverError(f"{method} {url} failed: {type(exc).__name__}: {str(exc)[:200]}") from None
        if not data.strip():
            return {}
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            if "depth limit" in str(exc).lower():       # orjson's own bound (1024 levels)
                raise ExternalDriverError(f"{method} {url} {_TOO_DEEP}") from None
            raise ExternalDriverError(f"{method} {url} answered what is not JSON ({str(exc)[:120]}): a driver "
                                      "answers a JSON object, such as the seed's {\"hardware\": [...]}") from None
        if _deeper_than(value, MAX_DEPTH):
            raise ExternalDriverError(f"{method} {url} {_TOO_DEEP}")
        return value


_TOO_BIG = f"more than the {MAX_BODY // (1024 * 1024)} MiB an external driver's answer may be; nothing of it was used"
_TOO_DEEP = f"answered JSON nested deeper than {MAX_DEPTH} levels, more than a driver's answer may be; nothing of it was used"


async def _bounded(response: aiohttp.ClientResponse) -> bytes:
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY:
            raise ExternalDriverError(f"{response.method} {response.url} answered over {MAX_BODY} bytes: {_TOO_BIG}")
        chunks.append(chunk)
    return b"".join(chunks)


def _printable(text: str, limit: int) -> str:
    """Text from a driver, fit for a message: one line, printable, at most `limit` characters."""
    flat = "".join(c if c.isprintable() else " " for c in text)
    flat = " ".join(flat.split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False
