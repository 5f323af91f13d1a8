"""One keep's Wasm loader: runs a Workload under wasmtime with WASI and returns what it did.

The reply (the seed says TBD; ours, DESIGN.md) is a CBOR map `{exit_code, stdout, stderr,
elapsed_ms}` plus `compile_ms` and `cached`. A workload stopped by a limit (deadline, fuel,
memory, output) or a trap is refused with 422 (Unprocessable) whose details are the same map with
`exit_code: null`, `stopped` (which) and `details` (what to change), with the output captured until
then; the keep serves the next workload as before. One workload runs
at a time per keep: the keep is Running while it runs and Ready after.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bus.component import Component, Endpoint, Incoming, Outgoing
from bus.errors import Conflict, Unprocessable
from bus.headers import CBOR
from components.enarx import messages, subjects
from components.enarx.keepldr import KeepConfig, KeepHooks
from components.enarx.wasm_runner import RunRequest, RunResult, WasmRunner


def result_cbor(result: RunResult) -> dict[str, Any]:
    reply = {"exit_code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr,
             "elapsed_ms": round(result.elapsed_ms, 3), "compile_ms": round(result.compile_ms, 3),
             "cached": result.cached}
    if result.stopped:
        reply.update(stopped=result.stopped, details=result.details)
    return reply


class Wasmldr(Component):
    system = subjects.SYSTEM
    name = "wasmldr"
    description = "Enarx wasmldr: WASI workloads under wasmtime, with limits"
    max_in_flight = 4   # one runs; the others are refused quickly with 409

    async def setup(self) -> None:
        config: KeepConfig = self.config
        self.hooks: KeepHooks = config.hooks
        self.limits = config.limits
        self.runner = WasmRunner(self.limits, cache_dir=config.module_cache)
        self._running = asyncio.Lock()

    async def teardown(self) -> None:
        self.runner.close()

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("workload", subjects.workload(self.hooks.kuuid), self.workload)]

    async def workload(self, incoming: Incoming) -> Outgoing:
        workload = messages.parse_workload(incoming.payload)
        if self._running.locked():
            raise Conflict("this keep is running another workload; wait for its result "
                           "(GET /keep/<kuuid> shows Running) and send again")
        async with self._running:
            self.hooks.reporter.post({"state": "Running",
                                      "human_readable_info": workload["human_readable_info"]})
            try:
                result = await self.runner.run_async(RunRequest(
                    workload["wasm_binary"], workload["args"], workload["env"], workload["stdin"]))
            finally:
                self.hooks.reporter.post({"state": "Ready"})
        self.log.info("workload finished", exit_code=result.exit_code, stopped=result.stopped,
                      elapsed_ms=round(result.elapsed_ms, 1), cached=result.cached,
                      size=len(workload["wasm_binary"]))
        if result.stopped:
            raise Unprocessable(result.details, details=result_cbor(result))
        return Outgoing(result_cbor(result), CBOR)
