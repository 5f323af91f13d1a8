"""Keeps one scheduled executable running on this host (Aurae's `ScheduleExecutable.Enable`).

The process runs through `process.run` with no timeout. When it ends by itself (or cannot start)
it is started again after a delay that doubles from `initial` up to `maximum`, and drops back to
`initial` once a run lasted ten times the delay it would wait next: a crash loop costs one spawn
per `maximum` seconds, a service that crashes once a day restarts at once. It is never given up:
a binary that appears later, or a dependency that comes back, heals it without anyone's help.

`stop` sends SIGTERM to the process group (the child runs in its own session, so whatever it
forked goes too), waits `grace` seconds, then cancels the run, which makes `process.run` SIGKILL
the group and reap it. The component learns about starts and ends through `Reports`; a report that
fails is logged and never stops the supervision. The supervisor knows nothing of KV or events.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

from bus import log
from components.aurae import process
from components.aurae.process import Limits, OnOutput, Outcome

RESET_FACTOR = 10          # a run this many times the next delay long resets the backoff

_log = log.get_logger("aurae.supervisor")


@dataclass
class Backoff:
    """Restart delays: `initial`, doubling to `maximum`; reset by a long enough run."""

    initial: float
    maximum: float
    current: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"backoff needs 0 < initial <= maximum, not {self.initial} and {self.maximum}")
        self.current = self.current or self.initial

    def after(self, ran_seconds: float) -> float:
        """The delay before the next start, given how long the last run lasted."""
        if ran_seconds >= RESET_FACTOR * self.current:
            self.current = self.initial
        delay = self.current
        self.current = min(self.current * 2, self.maximum)
        return delay


@dataclass(frozen=True)
class Ended:
    """One run's end as the component records it."""

    outcome: Outcome
    ran_seconds: float
    delay: float           # seconds until the next start
    restarts: int          # restarts so far, the coming one not counted


@dataclass(frozen=True)
class Stopped:
    """How `stop` ended the process: `how` is a sentence for meta.message."""

    pid: int | None
    how: str


Started = Callable[[int, int], Awaitable[None]]    # (pid, restarts so far)
EndedReport = Callable[[Ended], Awaitable[None]]


@dataclass(frozen=True)
class Reports:
    started: Started
    ended: EndedReport


class Supervisor:
    """One executable kept running; `start` once, `stop` once."""

    def __init__(self, name: str, argv: Sequence[str], *, backoff: Backoff, grace_seconds: float,
                 reports: Reports, on_output: OnOutput | None = None, restarts: int = 0,
                 drain_seconds: float = 2.0) -> None:
        self.name = name
        self.argv = list(argv)
        self.backoff = backoff
        self.grace_seconds = grace_seconds
        self.reports = reports
        self.on_output = on_output
        self.restarts = restarts
        self.pid: int | None = None
        self.started_at: float | None = None      # wall clock of the current run's start
        self.last: Ended | None = None            # the last run's end, while waiting to restart
        self.next_start: float | None = None      # monotonic time of the coming restart
        # no timeout; output goes to `on_output`, none is kept in memory for the whole life of a service
        self._limits = Limits(timeout_seconds=None, grace_seconds=grace_seconds, max_output_bytes=0,
                              drain_seconds=drain_seconds)
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._settled = asyncio.Event()            # the first run started, or could not
        self._log = _log.bind(executable=name)

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"{self.name} is supervised already")
        # a fresh context: the request that enabled it is not the cause of every later restart's log line
        self._task = asyncio.create_task(self._loop(), name=f"aurae schedule {self.name}",
                                         context=contextvars.Context())
        self._task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.pid = None
            self._log.error("supervision failed; the executable is no longer kept running",
                            exc_info=task.exception())

    @property
    def running(self) -> bool:
        return self.pid is not None

    async def first_start(self, timeout: float) -> None:
        """Wait (at most `timeout`) until the first run has a pid or has failed to start."""
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def stop(self) -> Stopped:
        """SIGTERM the group, SIGKILL it after the grace period; the supervision ends."""
        self._stopping = True
        task, pid = self._task, self.pid
        if task is None or task.done():
            return Stopped(None, "it was not running")
        if pid is None:               # waiting out a backoff, or between spawn and on_start (see _on_start)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return Stopped(None, "it was not running (waiting to restart)")
        _signal_group(pid, signal.SIGTERM)
        done, _ = await asyncio.wait({task}, timeout=self.grace_seconds)
        if done:
            outcome = None if task.cancelled() or task.exception() else task.result()
            if outcome is None or outcome.signal == "SIGTERM":
                return Stopped(pid, f"pid {pid} stopped with SIGTERM")
            return Stopped(pid, f"pid {pid} stopped with SIGTERM ({_ended_text(outcome)})")
        task.cancel()                 # process.run kills the group with SIGKILL and reaps it
        await asyncio.gather(task, return_exceptions=True)
        return Stopped(pid, f"pid {pid} ignored SIGTERM; killed with SIGKILL after {self.grace_seconds:g}s")

    async def _loop(self) -> Outcome | None:
        outcome: Outcome | None = None
        while not self._stopping:
            began = time.monotonic()
            outcome = await process.run(self.argv, self._limits, on_start=self._on_start,
                                        on_output=self.on_output)
            ran = time.monotonic() - began
            self.pid, self.started_at = None, None
            self._settled.set()
            if self._stopping:
                break
            delay = self.backoff.after(ran)
            self.last = Ended(outcome, ran, delay, self.restarts)
            self.next_start = time.monotonic() + delay
            self._log.info("scheduled executable ended; restarting after a delay", pid=outcome.pid,
                           how=outcome.message, ran_seconds=round(ran, 3), delay=delay)
            await _report(self.reports.ended, self.last)
            await asyncio.sleep(delay)
            self.next_start = None
            self.restarts += 1
        return outcome

    async def _on_start(self, pid: int) -> None:
        self.pid, self.started_at = pid, time.time()
        self._settled.set()
        if self._stopping:            # stop came while the process was being spawned
            _signal_group(pid, signal.SIGTERM)
            return
        await _report(self.reports.started, pid, self.restarts)


async def _report(callback: Callable[..., Awaitable[None]], *args: object) -> None:
    try:
        await callback(*args)
    except asyncio.CancelledError:
        raise
    except Exception:
        _log.exception("schedule report failed; supervision goes on")


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _ended_text(outcome: Outcome) -> str:
    return outcome.message if outcome.message else "ended"


def describe(ended: Ended) -> str:
    """`exited with code 1 after 0.2s` and the like, for meta.message and the record."""
    return f"{_ended_text(ended.outcome)} after {ended.ran_seconds:.3g}s"
