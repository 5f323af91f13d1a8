"""Run the Function Node's functions in worker processes: bounded, under a deadline, off the loop.

Design: the pool owns its worker processes, `workers` of them, each a fresh interpreter
(`python -I -c ...`, exec'd through asyncio's subprocess support: as with multiprocessing's
'spawn', no Python code ever runs in a forked copy of this threaded process, and starting a worker
never blocks the loop) that runs one task at a time. The parent writes a length-prefixed pickle of the invocation to the
worker's stdin and reads a length-prefixed JSON reply from its stdout, followed by one raw frame
per output (the outputs' plaintexts: `{"result", "outputs": [size, ...]}` announces them). ProcessPoolExecutor cannot
stop a running task; owning the processes makes every way of stopping one the same simple act:
SIGKILL the worker, reap it, and leave its slot vacant for a fresh one. So

* a task that has not replied `deadline_seconds` after reaching its worker is killed, and run()
  raises DeadlineExceeded ("psi ran past its deadline of 300 s and was stopped");
* a worker that dies (the OOM killer, a crash) closes its pipe, and run() raises FunctionFailed
  ("the worker running psi died (...)") at once;
* cancelling run() kills its worker, the only way to stop the function: cancelling a task is free;
* stop() refuses the waiting tasks, kills every worker, busy or idle, and reaps them; the
  running tasks raise PoolStopped.

Scheduling: a task takes an idle worker or, when all are busy, waits its turn (FIFO). At most
`max_queued` tasks wait; one more gets PoolBusy at once: it did not run, so the caller may keep it
Ready for a retry. A vacant slot is filled by the task that takes it (a worker starts in ~0.1 s),
so a worker that cannot start fails that task with a reason instead of hanging anyone; start()
fills every slot in the background. The deadline counts from the moment a task reaches its worker,
not its time in the queue.

INLINE functions (echo) run in the caller's loop: their work, returning a string, costs less than
one message to a worker, and they never wait behind long tasks.

Workers get an environment of their own (`_WORKER_ENV`: none of the node's credentials), ignore SIGINT (a terminal's
Ctrl-C reaches the whole process group; the pool's stop() ends them), read requests from a private
copy of stdin and reply on a private copy of stdout, with fd 1 pointed at stderr so a stray print
cannot corrupt a reply. Replies are JSON, not pickle: the parent never unpickles what a worker
that processed user data sends. A worker whose parent dies finishes its task, then exits on the
closed pipe.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import math
import os
import pickle
import signal
import struct
import sys
import traceback
from contextlib import suppress
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Mapping

import orjson

from bus import log
from components.mesatee.functions import (FUNCTIONS, FunctionFailed, Invocation, Outcome,
                                          UnknownFunction, check_function)

BOOT_SECONDS = 30.0             # a worker that has not said it is ready by then is not coming
MAX_REPLY_BYTES = 64 << 20      # a larger reply is a broken worker, not a result
MAX_OUTPUTS = 64                # outputs of one task (a task has at most this many output files)
_HEADER = struct.Struct(">Q")  # every frame: 8-byte big-endian length, then the body
_READY = b"ready"
# glibc adapts its mmap threshold up to 32 MiB after the first large free; then a psi's set tables
# come from the heap and may stay resident after they are freed, beside the next task's. A fixed
# threshold keeps every large block its own mapping, returned to the system when freed.
_WORKER_ENV = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"}
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from components.mesatee.function_pool import _worker_main; sys.exit(_worker_main(sys.argv[2:]))")

_log = log.get_logger("mesatee.function_pool")


@dataclass(frozen=True)
class PoolConfig:
    workers: int = os.cpu_count() or 1     # tasks running at once, one process each
    deadline_seconds: float = 300.0        # wall clock a task may run on its worker
    max_queued: int = 64                   # tasks that may wait for a worker; more get PoolBusy

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be an integer of at least 1, not {self.workers!r}")
        if (isinstance(self.deadline_seconds, bool) or not isinstance(self.deadline_seconds, (int, float))
                or not math.isfinite(self.deadline_seconds) or self.deadline_seconds <= 0):
            raise ValueError(f"deadline_seconds must be a positive number of seconds, "
                             f"not {self.deadline_seconds!r}")
        if isinstance(self.max_queued, bool) or not isinstance(self.max_queued, int) or self.max_queued < 0:
            raise ValueError(f"max_queued must be an integer of at least 0, not {self.max_queued!r}")


class DeadlineExceeded(FunctionFailed):
    """The task ran past the deadline; its worker was killed."""


class PoolStopped(FunctionFailed):
    """The pool stopped before or while the task ran."""


class PoolBusy(Exception):
    """Too many tasks are waiting for a worker; this one did not run and may be retried later."""


class _Broken(Exception):
    """A worker broke the protocol (its reply cannot be read)."""


class _Worker:
    """One worker process and its two pipes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        """False once it exited or closed its end of the reply pipe (seen first, without a thread)."""
        stdout = self.process.stdout
        return self.process.returncode is None and not (stdout is not None and stdout.at_eof())

    async def send(self, body: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(_HEADER.pack(len(body)))
        self.process.stdin.write(body)
        await self.process.stdin.drain()

    async def receive(self) -> bytes:
        assert self.process.stdout is not None
        (length,) = _HEADER.unpack(await self.process.stdout.readexactly(_HEADER.size))
        if length > MAX_REPLY_BYTES:
            raise _Broken(f"a reply of {length} bytes")
        return await self.process.stdout.readexactly(length)

    def kill(self) -> None:
        if self.process.returncode is None:
            with suppress(ProcessLookupError):
                self.process.kill()

    def how_it_ended(self) -> str:
        code = self.process.returncode
        if code is None:
            return "it closed its pipe"
        if code >= 0:
            return f"exit status {code}"
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code == signal.SIGKILL:
            return f"killed by {name}, which is how the out-of-memory killer stops a process"
        return f"killed by {name}"


class FunctionPool:
    """Runs invocations on at most `config.workers` worker processes; see the module docstring.

    Lifecycle: `start()` (inside the event loop; await it to wait for the workers), then `run()`
    any number of times, then `await stop()`; or `async with FunctionPool(...) as pool:`, which
    waits for the workers. `functions` maps names to function modules (or importable classes with
    the same attributes), the registry by default.
    """

    def __init__(self, config: PoolConfig | None = None,
                 functions: Mapping[str, Any] = FUNCTIONS) -> None:
        self.config = config or PoolConfig()
        self._functions = {name: check_function(value) for name, value in functions.items()}
        self._targets = {name: _target(value) for name, value in self._functions.items()}
        self._state = "new"                                          # new | running | stopped
        self._workers: set[_Worker] = set()                          # every live one
        self._idle: list[_Worker] = []
        self._vacant = 0                                             # slots without a worker
        self._waiting: collections.deque[asyncio.Future] = collections.deque()
        self._filling: asyncio.Task | None = None

    def start(self) -> asyncio.Future[None]:
        """Open the pool and start its workers in the background (call inside the event loop).

        The future it returns completes once every slot has a worker or its start failed (logged):
        `await pool.start()` serves the first tasks warm, a plain `pool.start()` does not wait."""
        if self._state != "new":
            raise RuntimeError("a FunctionPool starts once")
        loop = asyncio.get_running_loop()
        self._state = "running"
        self._vacant = self.config.workers
        self._filling = loop.create_task(self._fill(), name="function-pool-fill")
        return asyncio.shield(self._filling)     # a waiter's cancellation leaves the filling alone

    async def stop(self) -> None:
        """Refuse waiting tasks, kill every worker (running tasks raise PoolStopped), reap them."""
        if self._state == "stopped":
            return
        self._state = "stopped"
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(PoolStopped("the function node stopped"))
        if self._filling is not None:
            self._filling.cancel()
        workers = list(self._workers)
        self._workers.clear()
        self._idle.clear()
        for worker in workers:
            worker.kill()
        await asyncio.gather(*(worker.process.wait() for worker in workers))
        if self._filling is not None:
            await asyncio.gather(self._filling, return_exceptions=True)

    async def __aenter__(self) -> "FunctionPool":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()

    async def run(self, invocation: Invocation) -> Outcome:
        """Run `invocation`. FunctionFailed carries the reason for the task: the function's own,
        DeadlineExceeded, a dead worker, PoolStopped; PoolBusy means it did not run at all."""
        if self._state == "new":
            raise RuntimeError("FunctionPool.run() before start()")
        name = invocation.function
        if self._state == "stopped":
            raise PoolStopped(f"the function node is stopping; {name} did not run")
        module = self._functions.get(name)
        if module is None:
            raise UnknownFunction(f"no function named {name!r}; this function node serves: "
                                  f"{', '.join(sorted(self._functions))}")
        if module.INLINE:
            return _run_inline(module, invocation)
        return await self._run_in_worker(name, invocation)

    async def _run_in_worker(self, name: str, invocation: Invocation) -> Outcome:
        request = pickle.dumps((self._targets[name], invocation), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            worker = await self._take()
        except PoolStopped:
            raise PoolStopped(f"the function node stopped before {name} started") from None
        healthy = False
        try:
            if worker is None:
                try:
                    worker = await self._start_worker()
                except PoolStopped:
                    raise PoolStopped(f"the function node stopped before {name} started") from None
            status, value = await self._call(worker, name, request)
            healthy = True
        finally:
            if healthy:
                self._hand_over(worker)
            else:
                self._hand_over(None)
                if worker is not None:
                    await self._discard(worker)
        if status == "failed":
            raise FunctionFailed(value)
        if status == "error":
            raise FunctionFailed(_internal_error(name, value))
        return value

    async def _call(self, worker: _Worker, name: str, request: bytes) -> tuple[str, Any]:
        """("ok", Outcome), ("failed", reason) or ("error", exception type) from one task."""
        deadline = self.config.deadline_seconds
        try:
            async with asyncio.timeout(deadline):
                await worker.send(request)
                status, value = _parse_reply(await worker.receive())
                if status == "ok":
                    result, sizes = value
                    outputs = tuple([await worker.receive() for _ in sizes])
                    if [len(output) for output in outputs] != sizes:
                        raise _Broken("outputs of other sizes than it announced")
                    value = Outcome(result, outputs)
                return status, value
        except TimeoutError:
            _log.warning("function ran past its deadline; worker killed", function=name,
                         deadline_seconds=deadline, pid=worker.pid)
            raise DeadlineExceeded(f"{name} ran past its deadline of {deadline:g} s and was stopped") from None
        except (asyncio.IncompleteReadError, ConnectionError, _Broken) as exc:
            if self._state == "stopped":
                raise PoolStopped(f"the function node stopped while {name} was running") from None
            if isinstance(exc, _Broken):
                _log.error("function worker broke the protocol", function=name, pid=worker.pid, sent=str(exc))
                raise FunctionFailed(f"the worker running {name} sent {exc} and was stopped") from None
            with suppress(TimeoutError):
                async with asyncio.timeout(2.0):    # its exit status says how it died
                    await worker.process.wait()
            how = worker.how_it_ended()
            _log.error("function worker died", function=name, pid=worker.pid, how=how)
            raise FunctionFailed(f"the worker running {name} died ({how})") from None

    async def _take(self) -> _Worker | None:
        """An idle worker, or None: a vacant slot the caller fills. Waits its turn if need be."""
        while self._idle:
            worker = self._idle.pop()
            if worker.alive:
                return worker
            self._workers.discard(worker)     # died while idle: its slot is vacant
            self._vacant += 1
            _log.warning("idle function worker died", pid=worker.pid, how=worker.how_it_ended())
        if self._vacant:
            self._vacant -= 1
            return None
        if len(self._waiting) >= self.config.max_queued:
            raise PoolBusy(f"the function node is busy: {self.config.workers} tasks running, "
                           f"{len(self._waiting)} waiting (its limit); try again later")
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._hand_over(waiter.result())     # handed a worker just as we were cancelled
            else:
                with suppress(ValueError):
                    self._waiting.remove(waiter)
            raise

    def _hand_over(self, worker: _Worker | None) -> None:
        """Give a worker (or a vacant slot) to the first waiting task, else keep it."""
        if self._state != "running":
            return                                   # stop() kills every worker
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        if worker is None:
            self._vacant += 1
        else:
            self._idle.append(worker)

    async def _fill(self) -> None:
        """Start a worker in every vacant slot (start(): the first tasks find them ready)."""
        async def fill_one() -> None:
            if self._state != "running" or not self._vacant:
                return
            self._vacant -= 1
            try:
                worker = await self._start_worker()
            except FunctionFailed as exc:
                _log.warning("function worker did not start", reason=str(exc))
                self._hand_over(None)
                return
            self._hand_over(worker)

        await asyncio.gather(*(fill_one() for _ in range(self.config.workers)))

    async def _start_worker(self) -> _Worker:
        """A new worker that has imported the functions and said it is ready."""
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-c", _BOOT, _ROOT, *sorted(set(self._targets.values())),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=_WORKER_ENV)
        except OSError as exc:
            raise FunctionFailed(f"the function node could not start a worker process "
                                 f"({exc.strerror or exc})") from None
        worker = _Worker(process)
        self._workers.add(worker)
        try:
            if self._state != "running":
                raise PoolStopped("the function node stopped")
            async with asyncio.timeout(BOOT_SECONDS):
                if await worker.receive() != _READY:
                    raise _Broken("a wrong greeting")
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, _Broken):
            await self._discard(worker)
            if self._state != "running":
                raise PoolStopped("the function node stopped") from None
            raise FunctionFailed(f"the function node could not start a worker process "
                                 f"({worker.how_it_ended()}); its log has the worker's error") from None
        except BaseException:
            await self._discard(worker)
            raise
        return worker

    async def _discard(self, worker: _Worker) -> None:
        self._workers.discard(worker)
        worker.kill()
        await worker.process.wait()


def _run_inline(module: Any, invocation: Invocation) -> Outcome:
    try:
        return module.run(invocation)
    except FunctionFailed:
        raise
    except Exception as exc:
        _log.exception("function failed unexpectedly", function=invocation.function)
        raise FunctionFailed(_internal_error(invocation.function, type(exc).__name__)) from None


def _internal_error(name: str, kind: str) -> str:
    if kind == "MemoryError":
        return f"{name} ran out of memory"
    return f"{name} failed with an internal error ({kind}); the function node's log has the details"


def _parse_reply(body: bytes) -> tuple[str, Any]:
    try:
        reply = orjson.loads(body)
        if "failed" in reply:
            return "failed", str(reply["failed"])
        if "error" in reply:
            return "error", str(reply["error"])
        sizes = [int(size) for size in reply["outputs"]]
        if len(sizes) > MAX_OUTPUTS or sum(sizes) > MAX_REPLY_BYTES:
            raise ValueError("too many or too large outputs")
        return "ok", (str(reply["result"]), sizes)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise _Broken("a reply the function node cannot read") from None


def _target(function: Any) -> str:
    """How a worker finds a function: `module:` for a module, `module:Qualified.name` otherwise."""
    if isinstance(function, ModuleType):
        return f"{function.__name__}:"
    return f"{function.__module__}:{function.__qualname__}"


def _resolve(target: str) -> Any:
    module_name, _, qualname = target.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in filter(None, qualname.split(".")):
        found = getattr(found, part)
    return found


# ---------------------------------------------------------------------------------------------
# The worker: python -I -c _BOOT <source root> <target>...


def _worker_main(targets: list[str]) -> int:
    """Serve requests on stdin until the parent closes it; one task at a time."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)                                    # prints go to the log, not into a reply
    resolved = {target: _resolve(target) for target in targets}
    _write_frame(replies, _READY)
    while True:
        header = requests.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return 0                                 # the parent is done with us
        (length,) = _HEADER.unpack(header)
        body = requests.read(length)
        if len(body) < length:
            return 0
        target, invocation = pickle.loads(body)
        del body
        if target not in resolved:
            resolved[target] = _resolve(target)
        reply, outputs = _serve(resolved[target], invocation)
        _write_frame(replies, orjson.dumps(reply))
        for output in outputs:
            _write_frame(replies, output)


def _serve(function: Any, invocation: Invocation) -> tuple[dict, tuple[bytes, ...]]:
    """The reply to send and the outputs' plaintexts that follow it."""
    try:
        outcome = function.run(invocation)
        if not isinstance(outcome, Outcome) or not isinstance(outcome.result, str):
            raise TypeError(f"run() returned {type(outcome).__name__}, not an Outcome with a str result")
        outputs = tuple(bytes(output) for output in outcome.outputs)
        return {"result": outcome.result, "outputs": [len(output) for output in outputs]}, outputs
    except FunctionFailed as exc:
        return {"failed": str(exc)}, ()
    except Exception as exc:
        traceback.print_exc()
        return {"error": type(exc).__name__}, ()


def _write_frame(stream: Any, body: bytes) -> None:
    stream.write(_HEADER.pack(len(body)))
    stream.write(body)
    stream.flush()
