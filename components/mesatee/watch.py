"""Following a task until it ends: its events on the bus, the TMS's Get as the truth.

The TMS publishes every change of a task on `events.mesatee.task.<what>` (components/mesatee/tms.py).
`watch_task` subscribes to them first and only then asks the TMS for the task, so no change falls
between the two: an already-ended task returns at once, and an event older than what the Get showed
is skipped (statuses only move forward). Events are not the only source: without an event for
`recheck` seconds the TMS is asked again, so a missed event (a reconnect) never leaves a watcher
waiting, and with no bus at all watching is polling.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

import orjson

from bus import events
from components.mesatee.client import ENDED, MesateeClient
from components.mesatee.subjects import SYSTEM

if TYPE_CHECKING:
    from nats.aio.client import Client

TASK_EVENTS = events.subject(SYSTEM, "task", ">")
ORDER = {"Created": 0, "Ready": 1, "Running": 2, "Finished": 3, "Failed": 3}
RECHECK_SECONDS = 15.0          # with the bus: ask the TMS again after this long without an event
POLL_SECONDS = 1.0              # without the bus

Change = Callable[[dict[str, Any]], None]
"""`on_change(change)`: {"status": ..., "what": ...}; `what` is "status" (the first Get, or a later
status), or "approved" (with `by`); a Failed status carries `reason`."""


async def watch_task(client: MesateeClient, task_id: str, bus: Client | None = None, *,
                     timeout: float | None = None, on_change: Change | None = None,
                     recheck: float | None = None) -> dict[str, Any]:
    """Report the task's status and each change until it is Finished or Failed; return its final
    TaskInfo. Raises TimeoutError after `timeout` seconds, MesateeError when the TMS refuses."""
    report = on_change or (lambda change: None)
    recheck = recheck or (RECHECK_SECONDS if bus is not None else POLL_SECONDS)
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        try:
            event = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            return
        if isinstance(event, dict) and event.get("task_id") == task_id:
            queue.put_nowait(event)

    subscription = None
    if bus is not None:
        subscription = await bus.subscribe(TASK_EVENTS, cb=on_event)
        await bus.flush()                       # subscribed at the server before the Get
    try:
        info = await client.get_task(task_id)
        status = info["status"]
        approved = {c["user_id"] for c in info["collaborator_list"] if c["approved"]}
        report(_first(info))
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while status not in ENDED:
            wait = recheck if deadline is None else min(recheck, deadline - loop.time())
            if wait <= 0:
                raise TimeoutError(f"task {task_id} is still {status} after {timeout:g} s")
            try:
                event = await asyncio.wait_for(queue.get(), wait)
            except TimeoutError:
                latest = await client.get_task(task_id)
                event = {"what": "status", "status": latest["status"], "reason": latest.get("failure_reason")}
            if event.get("what") == "approved" and event.get("by") not in approved:
                approved.add(event.get("by"))
                report({"what": "approved", "status": event.get("status"), "by": event.get("by")})
            new = event.get("status")
            if new in ORDER and ORDER[new] > ORDER[status]:
                status = new
                report({"what": "status", "status": new, **({"reason": event["reason"]}
                                                            if event.get("reason") else {})})
        return await client.get_task(task_id)
    finally:
        if subscription is not None:
            await subscription.unsubscribe()


def _first(info: dict[str, Any]) -> dict[str, Any]:
    change: dict[str, Any] = {"what": "status", "status": info["status"]}
    waiting = [c["user_id"] for c in info["collaborator_list"] if not c["approved"]]
    if info["status"] == "Created" and waiting:
        change["waiting_for"] = waiting
    if info.get("failure_reason"):
        change["reason"] = info["failure_reason"]
    return change


def describe(change: dict[str, Any]) -> str:
    """One line a person reads: `Ready`, `approved by user2`, `Failed: <reason>`."""
    if change["what"] == "approved":
        return f"approved by {change['by']}"
    line = change["status"]
    if change.get("waiting_for"):
        line += f" (waiting for the approval of {', '.join(change['waiting_for'])})"
    if change.get("reason"):
        line += f": {change['reason']}"
    return line
