"""Run an Enarx workload (a WASI preview1 core wasm module) under wasmtime with hard limits.

One `WasmRunner` owns one `wasmtime.Engine` (epoch interruption on, fuel metering on when a fuel
budget is set, the proposals it does not serve off: see `wasm_compile.engine_config`) and a daemon
thread that bumps the engine epoch every `TICK_SECONDS`. Each run gets a fresh `Store` with the
store limits (one instance, one memory of at most `max_memory_bytes`, one table of at most
`max_table_elements`: with multi-memory off, that is the workload's total), the fuel budget and
its own WASI context, so a failing workload never leaves state behind for the next one; `Engine`,
`Module` and the pre-linked `InstancePre` are shared between threads. Requests are checked first
(`wasm_limits`), modules are compiled in a child process with a deadline and a memory ceiling of
their own (`wasm_compile`) and reused (`wasm_cache`); what goes past wasmtime-py's public API
(epoch callback, stdin pipe, poll_oneoff shim) is in `wasi_shims`.

How each limit is enforced and recognised (`RunResult.stopped`):

* "deadline" -- every store has an epoch deadline callback that runs on the workload's own thread
  at each tick and unwinds the workload once the wall-clock deadline has passed; it is also how an
  output overflow is acted on. A guest sleep (WASI `poll_oneoff`) is shimmed to never sleep past
  the deadline: a sleep cut short returns EINTR and the run is reported as "deadline" however it
  ends.
* "output" -- `WasiConfig.stdout_custom`/`stderr_custom` callbacks keep at most
  `max_output_bytes` per stream. They cannot stop the guest themselves: returning an error only
  hands the guest an EIO it may ignore, and wasmtime calls them on a tokio worker thread, not the
  one running the guest, so they must not touch the store. They only flag the overflow (and
  discard further bytes); the epoch callback stops the guest at the next tick (<= ~10 ms later).
* "fuel" -- the guest traps with `TrapCode.OUT_OF_FUEL`.
* "memory" -- wasmtime-py has no custom resource limiter and a refused `memory.grow` just returns
  -1, so the runner infers it: instantiation fails with "exceeds memory limits" (initial memory
  over the cap) or "exceeds table limits" (initial table over `max_table_elements`), or the guest
  traps while its exported memory is at least half the cap
  (the failed request must have been larger than what was left), or its stderr reports an
  allocation failure (Rust's "memory allocation of N bytes failed").
* "trap" -- any other trap; `details` carries wasmtime's cause line.

A WASI `proc_exit(n)` surfaces as `wasmtime.ExitTrap` with `.code == n`: a normal exit. Returning
from `_start` is exit code 0.

A compile that goes past `compile_seconds` or `compile_memory_bytes` is not a stop (nothing ran):
`run` raises `Unprocessable` (422) naming the field, and a module declaring what the runner does
not serve (a second memory or table, a 64-bit or shared memory) raises `BadRequest` (400).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import weakref
from functools import partial
from pathlib import Path

import wasmtime

from bus.errors import BadRequest, Unavailable
from components.enarx.wasi_shims import (
    WASI, Watch, arm_epoch_deadline, set_stdin, shadow_poll_oneoff, watching)
from components.enarx.wasm_cache import Compiled, ModuleCache
from components.enarx.wasm_compile import BoundedCompiler, engine_config
from components.enarx.wasm_compile import wasmtime_cause as _cause
# Limits, RunRequest and RunResult are also imported from here by wasmldr, keep, bench and tests.
from components.enarx.wasm_limits import MIB, Limits, RunRequest, RunResult, check_request

TICK_SECONDS = 0.01

_Outcome = tuple[int | None, str | None, str]   # (exit_code, stopped, details)


class WasmRunner:
    """Runs WASI preview1 workloads with hard limits; `run` is safe to call from many threads."""

    def __init__(self, limits: Limits = Limits(), cache_entries: int = 32,
                 cache_dir: Path | None = None) -> None:
        self.limits = limits
        self._engine = wasmtime.Engine(engine_config(fuel_metering=limits.fuel is not None))
        linker = _wasi_linker(self._engine)
        compiler = BoundedCompiler(limits.fuel is not None, limits.compile_seconds,
                                   limits.compile_memory_bytes)
        self._modules = ModuleCache(compiler.compile, partial(_load, self._engine, linker),
                                    cache_entries, cache_dir, limits.max_cache_bytes,
                                    limits.max_cache_age_seconds)
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=_tick, args=(self._engine, self._stop),
                                        name="wasm-epoch", daemon=True)
        self._ticker.start()
        weakref.finalize(self, self._stop.set)

    def run(self, request: RunRequest) -> RunResult:
        """Validate, compile (or reuse), instantiate and run `_start`; blocks until it ends."""
        if self._stop.is_set():
            raise Unavailable("the wasm runner is closed")
        check_request(request, self.limits)
        wasm = request.wasm if isinstance(request.wasm, bytes) else bytes(request.wasm)
        compiled, compile_ms, cached = self._modules.get(wasm)
        return self._execute(compiled, request, compile_ms, cached)

    async def run_async(self, request: RunRequest) -> RunResult:
        """`run` on a worker thread, so the event loop keeps serving while a workload runs."""
        return await asyncio.to_thread(self.run, request)

    def close(self) -> None:
        """Stop the epoch ticker; later runs raise `Unavailable`."""
        self._stop.set()
        if self._ticker.is_alive() and self._ticker is not threading.current_thread():
            self._ticker.join(timeout=1.0)

    def __enter__(self) -> "WasmRunner":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _execute(self, compiled: Compiled, request: RunRequest, compile_ms: float,
                 cached: bool) -> RunResult:
        """Instantiate and run `_start` in a fresh store, then turn how it ended into a result."""
        limits = self.limits
        watch = Watch(limits.deadline_seconds)
        out = _Capture("stdout", limits.max_output_bytes, watch)
        err = _Capture("stderr", limits.max_output_bytes, watch)
        with watching(watch) as watch_id:
            store = self._store(watch_id, request, out, err)
            started = time.perf_counter()
            instance: wasmtime.Instance | None = None
            try:
                instance = compiled.pre.instantiate(store)
                start = instance.exports(store)["_start"]
                assert isinstance(start, wasmtime.Func)
                start(store)
                outcome: _Outcome = (0, None, "")
            except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:   # ExitTrap is a WasmtimeError
                outcome = _classify(exc, instance, store, watch, err, limits)
            finally:
                elapsed_ms = (time.perf_counter() - started) * 1000
                store.close()   # free it now, on this thread, not in some later GC
        if watch.stop_reason == "deadline":   # e.g. a sleep cut short, then a quick exit
            outcome = (None, "deadline", _deadline_details(limits))
        exit_code, stopped, details = _overflow(out, err) or outcome
        return RunResult(exit_code=exit_code, stdout=bytes(out.data), stderr=bytes(err.data),
                         elapsed_ms=elapsed_ms, compile_ms=compile_ms, cached=cached,
                         stopped=stopped, details=details)

    def _store(self, watch_id: int, request: RunRequest, out: _Capture,
               err: _Capture) -> wasmtime.Store:
        """A store with this run's limits, epoch watch and WASI context (args, env, stdio)."""
        limits = self.limits
        store = wasmtime.Store(self._engine)
        # One of each: with multi-memory off the memory cap is the workload's total, and the
        # table (8 bytes an element) cannot become a second, uncapped memory.
        store.set_limits(memory_size=limits.max_memory_bytes,
                         table_elements=limits.max_table_elements,
                         instances=1, tables=1, memories=1)
        if limits.fuel is not None:
            store.set_fuel(limits.fuel)
        arm_epoch_deadline(store, watch_id)
        wasi = wasmtime.WasiConfig()
        wasi.argv = ["main.wasm", *request.args]
        wasi.env = list(request.env.items())
        set_stdin(wasi, request.stdin)
        wasi.stdout_custom = out.write
        wasi.stderr_custom = err.write
        store.set_wasi(wasi)
        return store


class _Capture:
    """One output stream, capped; called by wasmtime on a tokio worker thread."""

    def __init__(self, name: str, cap: int, watch: Watch) -> None:
        self.name = name
        self.cap = cap
        self.watch = watch
        self.data = bytearray()
        self.overflowed = False

    def write(self, chunk: bytes) -> None:
        """Keep what fits; on overflow ask the epoch callback to stop the guest."""
        # Must never raise: wasmtime-py prints the exception and fails the guest's write.
        if self.overflowed:
            return None
        room = self.cap - len(self.data)
        if len(chunk) <= room:
            self.data += chunk
            return None
        self.data += chunk[:room]
        self.overflowed = True
        self.watch.request_stop("output")
        return None  # report the bytes as written so the guest does not spin retrying


# ---------------------------------------------------------------------------------------------
# Engine, linking and compiling


def _wasi_linker(engine: wasmtime.Engine) -> wasmtime.Linker:
    """WASI preview1 with the deadline-aware poll_oneoff; nothing else is importable."""
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    shadow_poll_oneoff(linker)
    return linker


def _tick(engine: wasmtime.Engine, stop: threading.Event) -> None:
    while not stop.wait(TICK_SECONDS):
        engine.increment_epoch()


def _load(engine: wasmtime.Engine, linker: wasmtime.Linker, data: bytes) -> Compiled:
    """A module serialized by the compiler child or read from the disk cache, checked and linked."""
    module = wasmtime.Module.deserialize(engine, data)
    return Compiled(module, _link(linker, module))


def _link(linker: wasmtime.Linker, module: wasmtime.Module) -> wasmtime.InstancePre:
    _check_exports(module)
    _check_imports(module)
    try:
        return linker.instantiate_pre(module)
    except wasmtime.WasmtimeError as exc:
        raise BadRequest(f"the workload cannot be linked against WASI preview1: "
                         f"{_cause(exc)}") from None


def _check_exports(module: wasmtime.Module) -> None:
    for export in module.exports:
        if export.name == "_start":
            ty = export.type
            if not isinstance(ty, wasmtime.FuncType) or ty.params or ty.results:
                raise BadRequest("the workload's `_start` export must be a function taking and "
                                 "returning nothing")
            return
    raise BadRequest("the workload has no `_start` export; build it as a WASI command "
                     "(wasm32-wasip1 binary, not a library)")


def _check_imports(module: wasmtime.Module) -> None:
    foreign = sorted({f"{imp.module}::{imp.name}" for imp in module.imports
                      if imp.module != WASI})
    if foreign:
        raise BadRequest(f"the workload imports {', '.join(foreign[:5])}; only "
                         f"{WASI} is provided")


# ---------------------------------------------------------------------------------------------
# Classifying how a run ended


def _overflow(out: _Capture, err: _Capture) -> tuple[None, str, str] | None:
    for capture in (out, err):
        if capture.overflowed:
            return None, "output", (
                f"the workload wrote more than {capture.cap:,} bytes to {capture.name} and was "
                f"stopped (the first {capture.cap:,} bytes are kept); raise max_output_bytes or "
                f"make it write less")
    return None


def _classify(exc: Exception, instance: wasmtime.Instance | None, store: wasmtime.Store,
              watch: Watch, err: _Capture, limits: Limits) -> _Outcome:
    """(exit_code, stopped, details) for whatever ended the run with an exception."""
    if isinstance(exc, wasmtime.ExitTrap):
        return exc.code, None, ""
    if watch.stop_reason == "deadline":
        return None, "deadline", _deadline_details(limits)
    if watch.stop_reason == "output":
        return None, "output", ""   # replaced by _overflow's details
    if isinstance(exc, wasmtime.Trap) and exc.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
        return None, "fuel", (f"the workload used up its fuel budget of {limits.fuel:,} "
                              f"(about one unit per wasm instruction); raise fuel or make the "
                              f"job do less work")
    memory = _memory_details(exc, instance, store, err, limits)
    if memory:
        return None, "memory", memory
    return None, "trap", (f"the workload trapped: {_cause(exc)}; this is a fault in the "
                          f"workload, not a runner limit")


def _deadline_details(limits: Limits) -> str:
    return (f"the workload ran past its {limits.deadline_seconds:g} s deadline; raise "
            f"deadline_seconds or shorten the job")


_INITIAL_MEMORY = re.compile(r"minimum size of (\d+) pages exceeds memory limits")
_INITIAL_TABLE = re.compile(r"minimum size of (\d+) elements exceeds table limits")
_ALLOC_FAILED = re.compile(rb"memory allocation of \d+ bytes failed|out of memory", re.I)


def _memory_details(exc: Exception, instance: wasmtime.Instance | None, store: wasmtime.Store,
                    err: _Capture, limits: Limits) -> str:
    """Why this looks like the memory cap (or "" when it does not)."""
    cap = limits.max_memory_bytes
    advice = "raise max_memory_bytes or make the workload use less memory"
    if instance is None:
        found = _INITIAL_TABLE.search(str(exc))
        if found:
            return (f"the module asks for a table of {int(found.group(1)):,} elements, more than "
                    f"the {limits.max_table_elements:,} allowed; raise max_table_elements")
        found = _INITIAL_MEMORY.search(str(exc))
        if found:
            return (f"the module asks for {int(found.group(1)) * 65536 / MIB:g} MiB of initial "
                    f"memory, more than the {cap / MIB:g} MiB cap; {advice}")
        if "exceeds memory limits" in str(exc):
            return f"the module's initial memory is over the {cap / MIB:g} MiB cap; {advice}"
        return ""
    used = _largest_memory(instance, store)
    if used * 2 >= cap or _ALLOC_FAILED.search(bytes(err.data)):
        return (f"the workload trapped with {used / MIB:g} MiB of linear memory after "
                f"growing toward the {cap / MIB:g} MiB cap, most likely because an allocation "
                f"was refused; {advice}")
    return ""


def _largest_memory(instance: wasmtime.Instance, store: wasmtime.Store) -> int:
    sizes = [item.data_len(store) for item in instance.exports(store).by_index
             if isinstance(item, wasmtime.Memory)]
    return max(sizes, default=0)
