"""The load generator of bench/bus_overhead.py: one process that measures every target in turn.

It reads a JSON spec on stdin (so bearer tokens never show in the process list):

    {"workers": 64, "warmup": 1.0, "seconds": 5.0, "max_requests": 1000000,
     "targets": [{"name": "a", "url": "http://127.0.0.1:P/", "body": "<text>", "headers": {...}}, ...]}

and writes JSON lines on stdout: `{"event": "start", "name": ...}` when a target's load begins,
then `{"event": "result", ...}` with requests, errors, window_s, rps, p50_ms, p99_ms and `sent` (every
request completed, warmup included, so a caller can divide the CPU time it saw by it).

For each target, `workers` coroutines share one keep-alive connection pool (one connection per
worker) and send `POST url` back to back. Requests that start during the warmup are not counted;
the measured window is the next `seconds` (or until `max_requests` were measured). A request counts
when it started inside the window, finished before its end, and answered 200; anything else is an
error (errors are reported, not hidden). Latency is the client-side time of one request.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bus import loop as bus_loop

REQUEST_TIMEOUT = 10.0
ERROR_BACKOFF = 0.01


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    body: bytes
    headers: dict[str, str]

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Target":
        return cls(spec["name"], spec["url"], spec["body"].encode(), dict(spec.get("headers", {})))


@dataclass
class Window:
    """When measuring starts and ends; `max_requests` may end it early."""

    start: float
    end: float
    max_requests: int
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    sent: int = 0

    def over(self, now: float) -> bool:
        return now >= self.end

    def record(self, started: float, finished: float, ok: bool) -> None:
        self.sent += 1
        if started < self.start or finished > self.end:
            return  # warmup, or straddling the end
        if not ok:
            self.errors += 1
            return
        self.latencies.append(finished - started)
        if len(self.latencies) >= self.max_requests:
            self.end = finished

    @property
    def seconds(self) -> float:
        return self.end - self.start


async def send(session: aiohttp.ClientSession, target: Target) -> bool:
    """One request; True when it answered 200 (the body is always read in full)."""
    try:
        async with session.post(target.url, data=target.body, headers=target.headers) as response:
            await response.read()
            return response.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


async def worker(session: aiohttp.ClientSession, target: Target, window: Window) -> None:
    while not window.over(time.perf_counter()):
        started = time.perf_counter()
        ok = await send(session, target)
        window.record(started, time.perf_counter(), ok)
        if not ok:
            await asyncio.sleep(ERROR_BACKOFF)  # a failing target must not become a busy loop


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


def summary(target: Target, window: Window) -> dict[str, Any]:
    ordered = sorted(window.latencies)
    return {"event": "result", "name": target.name, "requests": len(ordered), "errors": window.errors,
            "sent": window.sent, "window_s": round(window.seconds, 3), "rps": len(ordered) / window.seconds,
            "p50_ms": percentile(ordered, 0.50) * 1e3, "p99_ms": percentile(ordered, 0.99) * 1e3}


async def measure(target: Target, workers: int, warmup: float, seconds: float,
                  max_requests: int) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=workers, force_close=False, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        now = time.perf_counter()
        window = Window(now + warmup, now + warmup + seconds, max_requests)
        await asyncio.gather(*(worker(session, target, window) for _ in range(workers)))
    return summary(target, window)


async def run(spec: dict[str, Any]) -> None:
    for target in map(Target.from_spec, spec["targets"]):
        print(orjson.dumps({"event": "start", "name": target.name}).decode(), flush=True)
        result = await measure(target, spec["workers"], spec["warmup"], spec["seconds"],
                               spec["max_requests"])
        print(orjson.dumps(result).decode(), flush=True)


def main() -> int:
    bus_loop.run(run(orjson.loads(sys.stdin.buffer.read())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
