"""Aurae's `runtime.Core` on one host: RunExecutable and RunCell.

RunExecutable splits the command like a shell (components/aurae/process.py), runs it without one
under the configured timeout and output cap, and answers ExecutableStatus once it ended (shapes in
components/aurae/messages.py). A command that cannot start is an answer with STATUS_ERROR, pid 0
and a message naming the binary, as Aurae answered it; a command that does not split is a 400.
At most `max_concurrent_runs` processes run at once (a cell's containers each count); more is 503.

RunCell runs a cell's containers in namespaces and a cgroup of their own (components/aurae/cells.py).
A container's `image` is a local path: a root filesystem directory or an OCI image layout (never a
registry pull). Its command is its `meta.message` when set (a teebus extension: Aurae's Container
has no command field; split like RunExecutable's), else the OCI config's Entrypoint + Cmd, else 400.
A host that cannot run cells answers 412 (FAILED_PRECONDITION) with what it lacks.

Every line a process or container prints goes, as it arrives, to AURAE_OUTPUT
(components/aurae/output_store.py), with a record that it was started here, for observe.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from nats.js.client import JetStreamContext

from bus.component import Component, Context, Endpoint, Incoming
from bus.errors import BadRequest, PreconditionFailed, Unavailable
from components.aurae import cells, messages, output_store, process, subjects
from components.aurae.cells import CellSupport, CellUnsupported, ContainerSpec
from components.aurae.config import AuraeConfig
from components.aurae.output_store import ProcessRecord
from components.aurae.output_writer import ProcessOutput, QueueBudget
from components.aurae.process import Limits, Outcome

REPLY_MARGIN = 0.5          # s of the caller's deadline left for the answer to travel back, even loaded
MIN_TIMEOUT = 0.05
KEPT_RECORDS = 4096          # ended processes remembered in memory (the stream keeps them longer)
IMAGE_DEFAULT = "(the image's Entrypoint and Cmd)"


class Runtime(Component):
    system = subjects.SYSTEM
    name = "runtime"
    description = "Aurae runtime: RunExecutable and RunCell on this host"
    config: AuraeConfig

    def __init__(self, context: Context) -> None:
        # every run holds a request slot until it ends: leave room beyond the run limit for refusals
        self.max_in_flight = context.config.max_concurrent_runs + 64
        super().__init__(context)

    async def setup(self) -> None:
        self.host = self.config.host
        self.limits = Limits(timeout_seconds=self.config.timeout_seconds, grace_seconds=self.config.grace_seconds,
                             max_output_bytes=self.config.max_output_bytes)
        self.work_dir = Path(self.context.data_dir) / "aurae" / "cells"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        await output_store.ensure_stream(self.client, self.config, self.context.replicas)
        self.js: JetStreamContext = self.client.jetstream()
        self.running = 0
        self.processes: OrderedDict[int, ProcessRecord] = OrderedDict()   # pid -> its latest run here
        self._outputs: dict[int, ProcessOutput] = {}
        self._queued = QueueBudget()
        self._support: CellSupport | None = None
        self._probing = asyncio.Lock()

    async def teardown(self) -> None:
        for output in list(self._outputs.values()):
            await output.cancel()

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("run_executable", subjects.run_executable(self.config.host), self.run_executable),
                Endpoint("run_cell", subjects.run_cell(self.config.host), self.run_cell)]

    # --- RunExecutable ---------------------------------------------------------------------------

    async def run_executable(self, incoming: Incoming) -> dict[str, Any]:
        request = messages.executable_request(incoming.payload)
        try:
            argv = process.split_command(request.command)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        started: list[int] = []

        async def on_start(pid: int) -> None:
            started.append(pid)
            self._open_output(pid, request.command, "executable", "")

        limits, by_caller = self._limits_for(incoming)
        outcome: Outcome | None = None
        with self._reserve(1):
            try:
                outcome = await process.run(argv, limits, on_start=on_start, on_output=self._on_output)
                outcome = _blame_deadline(outcome, by_caller)
            finally:
                await self._finish_all(started, {outcome.pid: outcome} if outcome else {})
        self.log.info("executable ended", pid=outcome.pid, status=outcome.status, message=outcome.message)
        return messages.executable_status(request.name, outcome)

    # --- RunCell ---------------------------------------------------------------------------------

    async def run_cell(self, incoming: Incoming) -> dict[str, Any]:
        request = messages.cell_request(incoming.payload)
        support = await self._cell_support()
        if not support.usable:
            raise PreconditionFailed(support.message)
        specs = [self._container_spec(container) for container in request.containers]
        commands = {spec.name: " ".join(spec.command) or IMAGE_DEFAULT for spec in specs}
        started: dict[str, int] = {}

        async def on_start(container: str, pid: int) -> None:
            started[container] = pid
            self._open_output(pid, commands[container], "container", request.name)

        limits, by_caller = self._limits_for(incoming)
        outcome: cells.CellOutcome | None = None
        with self._reserve(len(specs)):
            try:
                outcome = await cells.run_cell(request.name, specs, limits, work_dir=self.work_dir,
                                               support=support, on_start=on_start, on_output=self._on_output)
            except CellUnsupported as exc:
                raise PreconditionFailed(exc.message) from None
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            finally:
                await self._finish_all(started.values(),
                                       {c.pid: c.outcome for c in outcome.containers} if outcome else {})
        self.log.info("cell ended", cell=request.name, status=outcome.status, message=outcome.message)
        return messages.cell_status(outcome)

    def _container_spec(self, container: messages.ContainerRequest) -> ContainerSpec:
        try:
            command = process.split_command(container.command) if container.command else []
            return ContainerSpec(container.name, Path(container.image), command,
                                 memory_limit_bytes=self.config.cell_memory_bytes, pids_limit=self.config.cell_pids)
        except ValueError as exc:
            raise BadRequest(f"container {container.name!r}: {exc}") from None

    async def _cell_support(self) -> CellSupport:
        """Probed once (it creates namespaces and cgroups, off the loop); the host does not change."""
        async with self._probing:
            if self._support is None:
                self._support = await asyncio.to_thread(cells.probe)
                self.log.info("cell support probed", usable=self._support.usable, message=self._support.message)
        return self._support

    # --- what every run shares -------------------------------------------------------------------

    def _limits_for(self, incoming: Incoming) -> tuple[Limits, bool]:
        """The configured limits, with the timeout cut to the caller's deadline when that comes
        first (a caller that gave up never gets the answer: the process would run for nobody).
        True when the caller's deadline set the timeout."""
        left = incoming.seconds_left()
        if left is None:
            return self.limits, False
        by_caller = max(MIN_TIMEOUT, left - REPLY_MARGIN)
        if self.limits.timeout_seconds is not None and by_caller >= self.limits.timeout_seconds:
            return self.limits, False
        return replace(self.limits, timeout_seconds=round(by_caller, 3)), True

    def _reserve(self, runs: int) -> "_Reservation":
        if self.running + runs > self.config.max_concurrent_runs:
            raise Unavailable(f"{self.running} processes are running on {self.host}, and at most "
                              f"{self.config.max_concurrent_runs} may run at once; try again when one ended")
        return _Reservation(self, runs)

    def _open_output(self, pid: int, command: str, kind: str, cell: str) -> None:
        """Called before any of the process's lines are handed over (process.run's order)."""
        record = ProcessRecord(pid=pid, host=self.host, command=command, kind=kind, started_ns=time.time_ns(),
                               cell=cell)
        self._outputs[pid] = ProcessOutput(self.js, record, self._queued)
        self._remember(record)

    async def _on_output(self, pid: int, channel: str, line: str, timestamp_ns: int) -> None:
        output = self._outputs.get(pid)
        if output is not None:
            output.line(channel, line, timestamp_ns)

    async def _finish_all(self, pids: Iterable[int], outcomes: Mapping[int | None, Outcome]) -> None:
        """End markers and records for every process of a run, even one that failed or was cancelled."""
        for pid in list(pids):
            output = self._outputs.pop(pid, None)
            if output is None:
                continue
            outcome = outcomes.get(pid)
            if outcome is None:
                status, message, code = "STATUS_ERROR", "the run ended before it reported how this process ended", ""
            else:
                status = messages.status_name(outcome.status)
                message, code = outcome.message, "" if outcome.exit_code is None else str(outcome.exit_code)
            record = await output.finish(status, message, code)
            self.spawn(output.drained(), f"process {pid} output", wait=True)
            self._remember(record)
            self.spawn(self.events.publish("process", "ended", {   # no command: it may hold a secret
                "pid": record.pid, "host": record.host, "kind": record.kind, "cell": record.cell,
                "status": record.status, "exit_code": record.exit_code, "message": record.message,
                "seconds": round((time.time_ns() - record.started_ns) / 1e9, 3)}), "process ended event", wait=False)

    def _remember(self, record: ProcessRecord) -> None:
        self.processes[record.pid] = record
        self.processes.move_to_end(record.pid)
        while len(self.processes) > KEPT_RECORDS:
            oldest = next(iter(self.processes))
            if not self.processes[oldest].ended:
                break
            del self.processes[oldest]


def _blame_deadline(outcome: Outcome, by_caller: bool) -> Outcome:
    """Say that it was the caller's deadline, not the configured timeout, that stopped the process."""
    if not (by_caller and outcome.timed_out):
        return outcome
    return replace(outcome, message=f"the caller's deadline came first: {outcome.message}")


class _Reservation:
    def __init__(self, runtime: Runtime, runs: int) -> None:
        self.runtime, self.runs = runtime, runs
        runtime.running += runs

    def __enter__(self) -> "_Reservation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.runtime.running -= self.runs
