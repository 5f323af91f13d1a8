"""The MesaTEE Function Node: invokes a Ready task's function once and records how it ended.

Invoke checks the task token (constant time), the function name and the status, then moves the task
to Running through the TMS's compare-and-set, so of two invocations racing one runs and the other is
told the task runs once. The inputs' keys come from the KMS and their paths from the TDFS; the
function runs in a worker process of the pool (function_pool.py), so a long psi never stalls other
requests or the event loop, and a deadline stops one that runs too long. Outputs are registered as
new TDFS files (internal Create) under fresh keys, written sealed, and named on the task; the task
ends Finished, or Failed with the reason kept on it. The run belongs to the component, not to the
caller's request: a client that hangs up does not stop a task half way.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import hmac
import time
from typing import Any

from bus.component import Component, Endpoint, Incoming
from bus.errors import BadRequest, BusError, Conflict, Unauthorized, Unavailable, Unprocessable
from components.mesatee import subjects
from components.mesatee.config import MesateeConfig
from components.mesatee.fns_messages import LOST_AFTER_SECONDS, InvokeRequest, parse_invoke
from components.mesatee.function_pool import FunctionPool, PoolBusy, PoolConfig
from components.mesatee.functions import FUNCTIONS, FunctionFailed, InputFile, Invocation, KeyConfig
from components.mesatee.functions.files import write_sealed
from components.mesatee.tms_messages import FAILED, FINISHED, MAX_REASON_CHARS, READY, RUNNING

UNCHANGED = {"task_result_file_id": None, "output_files": []}
BUSY = "busy"     # a run that did not start: the pool's queue was full


class FnsComponent(Component):
    system = subjects.SYSTEM
    name = "fns"
    description = "MesaTEE function node: invokes a task's function once, in a bounded worker pool"
    config: MesateeConfig

    async def setup(self) -> None:
        workers = {"workers": self.config.fns_workers} if self.config.fns_workers else {}   # 0: one per core
        self.pool = FunctionPool(PoolConfig(**workers, deadline_seconds=self.config.fns_deadline_seconds,
                                            max_queued=self.config.fns_max_queued))
        await self.pool.start()

    async def teardown(self) -> None:
        await self.pool.stop()

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("invoke", subjects.FNS_INVOKE, self.invoke)]

    async def invoke(self, incoming: Incoming) -> dict[str, Any]:
        request = parse_invoke(incoming.payload)
        task = await self._task(request.task_id)
        self._check(request, task)
        deadline = time.time() + self.config.fns_deadline_seconds + LOST_AFTER_SECONDS
        await self._update(request.task_id, status=RUNNING, running_deadline=deadline)
        self.log.info("task running", task_id=request.task_id, function=request.function_name)
        run = self.spawn(self._run(request, task), f"task {request.task_id}")
        result, reason = await asyncio.shield(run)
        if reason is BUSY:
            raise Unavailable(f"the function node is busy ({self.config.fns_max_queued} tasks wait for a "
                              f"worker); task {request.task_id} is Ready again: invoke it again shortly")
        if reason is not None:
            raise Unprocessable(f"task {request.task_id} failed: {reason}")
        return {"result": result}

    def _check(self, request: InvokeRequest, task: dict[str, Any]) -> None:
        if not hmac.compare_digest(task["task_token"].encode(), request.task_token.encode()):
            raise Unauthorized(f"task_token does not match task {request.task_id}: use the token TMS gave "
                               "for this task")
        if task["function_name"] != request.function_name:
            raise BadRequest(f"task {request.task_id} runs {task['function_name']!r}, not the function_name "
                             "of this request")
        if task["status"] != READY:
            raise Conflict(_not_ready(request.task_id, task))

    async def _run(self, request: InvokeRequest, task: dict[str, Any]) -> tuple[str | None, str | None]:
        """(result, None) when the task Finished, (None, reason) when it Failed; the task says so too."""
        try:
            inputs = tuple([await self._input(file) for file in task["input_files"]])
            outcome = await self.pool.run(Invocation(request.function_name, request.payload, inputs))
            owners = FUNCTIONS[request.function_name].output_owners(inputs)
            outputs = [await self._store_output(request.task_id, owner, plaintext)
                       for owner, plaintext in zip(owners, outcome.outputs, strict=True)]
        except PoolBusy:      # it did not run: it may run later
            await self._update(request.task_id, status=READY)
            return None, BUSY
        except (FunctionFailed, BusError, OSError) as exc:
            return None, await self._fail(request.task_id, _reason(exc))
        except asyncio.CancelledError:
            await self._fail(request.task_id, "the function node stopped while the task ran; create the task again")
            raise
        await self._update(request.task_id, status=FINISHED, output_files=outputs)
        self.log.info("task finished", task_id=request.task_id, outputs=len(outputs))
        return outcome.result, None

    async def _fail(self, task_id: str, reason: str) -> str:
        await self._update(task_id, status=FAILED, failure_reason=reason[:MAX_REASON_CHARS])
        self.log.info("task failed", task_id=task_id, reason=reason)
        return reason

    async def _task(self, task_id: str) -> dict[str, Any]:
        reply = await self.requester.request(subjects.tms_internal("Get"), {"type": "Get", "task_id": task_id})
        return reply.payload["task_info"]

    async def _update(self, task_id: str, **change: Any) -> None:
        await self.requester.request(subjects.tms_internal("Update"),
                                     {"type": "Update", "task_id": task_id, **UNCHANGED, **change})

    async def _input(self, file: dict[str, str]) -> InputFile:
        """An input file as the function reads it: its path and sha256 from TDFS, its key from the KMS."""
        reply = await self.requester.request(subjects.tdfs_internal("Get"), {"type": "Get", "file_id": file["file_id"]})
        info = reply.payload["file_info"]
        config = (await self.requester.request(subjects.kms("Get"), {"type": "Get", "key_id": info["key_id"]})
                  ).payload["config"]
        return InputFile(file["user_id"], file["file_id"], info["access_path"], _key(config),
                         info["sha256"], info["file_size"])

    async def _store_output(self, task_id: str, owner: str, plaintext: bytes) -> dict[str, str]:
        """Register an output with TDFS (a fresh key), write it sealed, and name it for the task."""
        reply = await self.requester.request(subjects.tdfs_internal("Create"), {
            "type": "Create", "sha256": hashlib.sha256(plaintext).hexdigest(), "file_size": len(plaintext),
            "user_id": owner, "task_id": task_id, "collaborator_list": [], "allow_policy": 0})
        created = reply.payload
        await asyncio.to_thread(write_sealed, created["access_path"], _key(created["key_config"]), plaintext)
        return {"user_id": owner, "file_id": created["file_id"]}


def _reason(exc: Exception) -> str:
    if isinstance(exc, BusError):
        return exc.message
    if isinstance(exc, OSError):
        return f"the function node could not write an output ({exc.strerror or exc})"
    return str(exc)


def _key(config: dict[str, str]) -> KeyConfig:
    return KeyConfig(*(binascii.a2b_base64(config[name]) for name in ("key", "nonce", "ad")))


def _not_ready(task_id: str, task: dict[str, Any]) -> str:
    status = task["status"]
    if status == "Created":
        waiting = [c["user_id"] for c in task["collaborator_list"] if not c["approved"]]
        return f"task {task_id} is Created: it waits for the approval of {', '.join(waiting)}"
    return f"task {task_id} is {status}: a task runs once"
