"""Every process's log lines on the bus, for those allowed to watch them (an operator's tail, a
system's stream of the daemon's log).

`install(client, role)` adds this process's lines, after redaction, to a bounded queue that one task
publishes on `$TEEBUS.log.<role>` (plain NATS: a live view, not a store; the process's own stderr
stays the record). Logging never waits for the bus: a full queue drops the oldest line and counts it,
and lines logged from worker threads are handed to the loop. A role may publish only under its own
name (`permissions`), so no process can speak for another; reading `$TEEBUS.log.>` is given to admin
and to systems whose manifest asks for it (`reads_logs`).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any, MutableMapping

import orjson
from nats.aio.client import Client

SUBJECTS = "$TEEBUS.log.>"
QUEUE_LINES = 10_000


def subject(role: str) -> str:
    return f"$TEEBUS.log.{role}"


def permissions(role: str) -> list[str]:
    """What `role` may publish: its own lines."""
    return [subject(role)]


class LogShipper:
    """Publishes this process's log events; `__call__` is safe from any thread and never blocks."""

    def __init__(self, client: Client, role: str, limit: int = QUEUE_LINES) -> None:
        self._client, self._subject = client, subject(role)
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._lines: deque[bytes] = deque(maxlen=limit)
        self._ready = asyncio.Event()
        self.dropped = 0
        self._task = asyncio.create_task(self._ship(), name="log shipping")

    def __call__(self, event: MutableMapping[str, Any]) -> None:
        line = orjson.dumps(event, default=str)
        if threading.get_ident() == self._thread:
            self._push(line)
        else:
            self._loop.call_soon_threadsafe(self._push, line)

    def _push(self, line: bytes) -> None:
        if len(self._lines) == self._lines.maxlen:
            self.dropped += 1
        self._lines.append(line)
        self._ready.set()

    async def _ship(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._lines:
                line = self._lines.popleft()
                try:
                    await self._client.publish(self._subject, line)
                except Exception:          # closed or reconnecting: this line is lost, logging goes on
                    self.dropped += 1

    async def close(self) -> None:
        """Publish what is queued (briefly), then stop."""
        for _ in range(50):
            if not self._lines:
                break
            await asyncio.sleep(0.01)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


_shipper: LogShipper | None = None


def install(client: Client, role: str) -> LogShipper:
    """Ship this process's log lines over `client` from now on (one shipper per process)."""
    global _shipper
    _shipper = LogShipper(client, role)
    return _shipper


def current() -> LogShipper | None:
    return _shipper


async def uninstall() -> None:
    global _shipper
    shipper, _shipper = _shipper, None
    if shipper is not None:
        await shipper.close()


QUIET = ("bus.connection",)   # the connection's own complaints: shipping them could feed on itself


def ship(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor (after redaction): hand the event to the shipper, if one is installed.

    Lines of the connection itself stay local: a refused or failed publish is reported through it,
    and shipping that report would fail the same way, again and again."""
    if _shipper is not None and event.get("component") not in QUIET:
        _shipper(event)
    return event
