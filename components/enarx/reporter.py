"""A keep loader's reports to the keep manager, delivered one at a time and in order.

Workload start/end reports (Running, Ready) must not delay the workload, but must never overtake each
other: `post` queues a report and returns; `send` queues one and waits until it is recorded.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bus import log
from bus.errors import BusError
from bus.requester import Requester
from components.enarx import subjects

MAX_QUEUED = 256
_log = log.get_logger("enarx.reporter")


class Reporter:
    def __init__(self, requester: Requester, kuuid: str, timeout: float = 10.0) -> None:
        self._requester = requester
        self._subject = subjects.report(kuuid)
        self._timeout = timeout
        self._queue: asyncio.Queue[tuple[dict[str, Any], asyncio.Future | None]] = asyncio.Queue(MAX_QUEUED)
        self._worker: asyncio.Task | None = None

    def post(self, change: dict[str, Any]) -> None:
        """Queue a report; a full queue drops it (the next one carries the current state anyway)."""
        self._ensure_worker()
        try:
            self._queue.put_nowait((change, None))
        except asyncio.QueueFull:
            _log.warning("report dropped: the keep manager is not keeping up", state=change.get("state"))

    async def send(self, change: dict[str, Any]) -> None:
        """Queue a report behind the others and wait until the keep manager recorded it."""
        self._ensure_worker()
        done = asyncio.get_running_loop().create_future()
        await self._queue.put((change, done))
        await done

    async def close(self) -> None:
        if self._worker is not None:
            try:
                await asyncio.wait_for(self._queue.join(), self._timeout)
            except asyncio.TimeoutError:
                pass
            self._worker.cancel()
            self._worker = None

    def _ensure_worker(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._deliver())

    async def _deliver(self) -> None:
        while True:
            change, done = await self._queue.get()
            try:
                await self._requester.request(self._subject, change, timeout=self._timeout)
                if done is not None and not done.done():
                    done.set_result(None)
            except BusError as exc:
                _log.warning("report failed", state=change.get("state"), error=exc.message)
                if done is not None and not done.done():
                    done.set_exception(exc)
            finally:
                self._queue.task_done()
