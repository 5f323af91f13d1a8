"""Run an Enarx workload (a WASI preview1 core wasm module) under wasmtime with hard limits.

One `WasmRunner` owns one `wasmtime.Engine` (epoch interruption on, fuel metering on when a fuel
budget is set) and a daemon thread that bumps the engine epoch every `TICK_SECONDS`. Each run gets
a fresh `Store` with the memory cap (`Store.set_limits`), the fuel budget and its own WASI context,
so a failing workload never leaves state behind for the next one; `Engine`, `Module` and the
pre-linked `InstancePre` are shared between threads.

How each limit is enforced and recognised (`RunResult.stopped`):

* "deadline" -- every store carries an epoch deadline of one tick and a per-store epoch deadline
  callback (C API `wasmtime_store_epoch_deadline_callback`, reached through `wasmtime._ffi` because
  wasmtime-py 50 does not wrap it). The callback runs on the workload's own thread at each tick and
  either re-arms for one more tick or returns an error that unwinds the workload. It stops the run
  once the wall-clock deadline has passed, and it is also how an output overflow is acted on.
* "output" -- `WasiConfig.stdout_custom`/`stderr_custom` callbacks keep at most
  `max_output_bytes` per stream. They cannot stop the guest themselves: returning an error only
  hands the guest an EIO it may ignore, and wasmtime calls them on a tokio worker thread, not the
  one running the guest, so they must not touch the store. They only flag the overflow (and
  discard further bytes); the epoch callback stops the guest at the next tick (<= ~10 ms later).
* "fuel" -- the guest traps with `TrapCode.OUT_OF_FUEL`.
* "memory" -- wasmtime-py has no custom resource limiter and a refused `memory.grow` just returns
  -1, so the runner infers it: instantiation fails with "exceeds memory limits" (initial memory
  over the cap), or the guest traps while one of its exported memories is at least half the cap
  (the failed request must have been larger than what was left), or its stderr reports an
  allocation failure (Rust's "memory allocation of N bytes failed").
* "trap" -- any other trap; `details` carries wasmtime's cause line.

A WASI `proc_exit(n)` surfaces as `wasmtime.ExitTrap` with `.code == n`: a normal exit. Returning
from `_start` is exit code 0.

Blocking host calls cannot be interrupted by epochs, and WASI `poll_oneoff` (the guest's sleep)
would sleep past the deadline. The runner therefore shadows `poll_oneoff` with its own version
that never sleeps past the run's deadline: a sleep cut short returns EINTR and the run is reported
as "deadline" however it ends. fd subscriptions are reported ready at once (stdin is an in-memory
pipe, stdout/stderr never block, and no other descriptors exist). The shim never raises: an
exception from a wasmtime-py host function travels through a process-global slot
(`wasmtime._func.LAST_EXCEPTION`) and could surface in another thread's run.

stdin goes in through the C API's `wasi_config_set_stdin_bytes` (also unwrapped in wasmtime-py
50) as an in-memory pipe, so no temp file holds workload input.

Compiled modules are cached by the sha256 of their bytes (in-memory LRU, plus
`<cache_dir>/<sha256>.cwasm` from `Module.serialize` when a cache directory is given). A `.cwasm`
is native code that is loaded without validation, so the directory is kept 0700, files are
written 0600 via an atomic rename, and a file not owned by this user or readable by others is
ignored.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import os
import re
import stat
import struct
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi  # epoch deadline callback and stdin bytes are not wrapped

from bus.errors import BadRequest, TooLarge, Unavailable

TICK_SECONDS = 0.01
WASI = "wasi_snapshot_preview1"
_CORE_HEADER = b"\0asm\x01\x00\x00\x00"
_MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Hard limits for one workload run; every stop's `details` names the field to raise."""

    max_module_bytes: int = 64 * _MIB
    deadline_seconds: float = 10.0          # wall clock, enforced with epoch interruption
    fuel: int | None = 20_000_000_000       # instruction budget (wasmtime fuel); None = unlimited
    max_memory_bytes: int = 256 * _MIB      # linear memory cap (store limits)
    max_output_bytes: int = 1 * _MIB        # captured stdout cap, and separately stderr cap
    max_stdin_bytes: int = 16 * _MIB
    max_args: int = 256
    max_env: int = 256
    max_arg_bytes: int = 64 * 1024          # total of args + env text (UTF-8)

    def __post_init__(self) -> None:
        if self.deadline_seconds <= 0 or (self.fuel is not None and self.fuel <= 0):
            raise ValueError("deadline_seconds and fuel must be positive (fuel may be None)")
        for name in ("max_module_bytes", "max_memory_bytes", "max_output_bytes",
                     "max_stdin_bytes", "max_args", "max_env", "max_arg_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"workload limit {name} must not be negative")

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any]) -> "Limits":
        """Defaults with `overrides` applied, rejecting unknown names (config typos fail loudly)."""
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown workload limits {', '.join(sorted(unknown))}")
        return cls(**dict(overrides))


@dataclass(frozen=True)
class RunRequest:
    """One workload: argv is ["main.wasm", *args]; nothing else of the host is visible."""

    wasm: bytes
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    stdin: bytes = b""


@dataclass(frozen=True)
class RunResult:
    """What happened; `stopped` is set (and `exit_code` None) when a limit or a trap ended it."""

    exit_code: int | None          # None when the workload was stopped
    stdout: bytes
    stderr: bytes
    elapsed_ms: float              # instantiate + run
    compile_ms: float              # 0.0 on a cache hit
    cached: bool                   # the compiled module came from a cache (memory or disk)
    stopped: str | None = None     # "deadline" | "fuel" | "memory" | "trap" | "output"
    details: str = ""              # what stopped it and which limit to raise


# ---------------------------------------------------------------------------------------------
# Per-run state shared with wasmtime's callbacks


class _Capture:
    """One output stream, capped; called by wasmtime on a tokio worker thread."""

    def __init__(self, name: str, cap: int, watch: "_Watch") -> None:
        self.name = name
        self.cap = cap
        self.watch = watch
        self.data = bytearray()
        self.overflowed = False

    def write(self, chunk: bytes) -> None:
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


class _Watch:
    """What the epoch callback and the poll_oneoff shim need to know about one run."""

    def __init__(self, deadline_seconds: float) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + deadline_seconds
        self.started_ns = time.monotonic_ns()
        self.stop_reason: str | None = None

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def poll(self) -> str | None:
        """The reason to stop now, or None to keep running."""
        if self.stop_reason is None and self.remaining() <= 0:
            self.stop_reason = "deadline"
        return self.stop_reason


_WATCHES: dict[int, _Watch] = {}
_WATCH_IDS = iter(range(1, 1 << 62))
_CURRENT = threading.local()   # the watch of the run on this thread, for the poll_oneoff shim

_EpochCallback = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.POINTER(ffi.wasmtime_context_t),
                                  ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64),
                                  ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t))
_NO_FINALIZER = ctypes.cast(0, ctypes.CFUNCTYPE(None, ctypes.c_void_p))
_UPDATE_DEADLINE_CONTINUE = 0


@_EpochCallback
def _on_epoch(_context: Any, data: int | None, delta: Any, kind: Any) -> int:
    """Each tick: keep going for one more tick, or unwind the workload with an error."""
    try:
        watch = _WATCHES.get(data or 0)
        reason = watch.poll() if watch is not None else "deadline"
    except BaseException:  # noqa: BLE001 - a ctypes callback must not raise
        reason = "deadline"
    if reason is None:
        delta[0] = 1
        kind[0] = _UPDATE_DEADLINE_CONTINUE
        return 0
    error = ffi.wasmtime_error_new(f"teebus: workload stopped ({reason})".encode())
    return ctypes.cast(error, ctypes.c_void_p).value or 0


# ---------------------------------------------------------------------------------------------
# poll_oneoff that respects the deadline

_SUBSCRIPTION = struct.Struct("<QB7xI4xQQH6x")   # userdata, tag, clock id | fd, timeout, -, flags
_EVENT = struct.Struct("<QHB5xQH6x")             # userdata, errno, type, nbytes, flags
_EVENTTYPE_CLOCK = 0
_ERRNO_SUCCESS, _ERRNO_BADF, _ERRNO_FAULT, _ERRNO_INTR, _ERRNO_INVAL = 0, 8, 21, 27, 28
_CLOCK_REALTIME, _CLOCK_MONOTONIC = 0, 1
_SUBCLOCK_ABSTIME = 1
_MAX_SUBSCRIPTIONS = 4096


def _poll_oneoff(caller: wasmtime.Caller, in_ptr: int, out_ptr: int, count: int,
                 nevents_ptr: int) -> int:
    """WASI poll_oneoff that sleeps at most until the run's deadline (never raises)."""
    try:
        memory = caller.get("memory")
        if not isinstance(memory, wasmtime.Memory):
            return _ERRNO_FAULT
        return _poll(caller, memory, in_ptr, out_ptr, count, nevents_ptr)
    except Exception:  # noqa: BLE001 - raising from a host function leaks across threads
        return _ERRNO_FAULT


def _poll(caller: wasmtime.Caller, memory: wasmtime.Memory, in_ptr: int, out_ptr: int,
          count: int, nevents_ptr: int) -> int:
    if count <= 0 or count > _MAX_SUBSCRIPTIONS:
        return _ERRNO_INVAL
    size = memory.data_len(caller)
    if (in_ptr + count * _SUBSCRIPTION.size > size or out_ptr + count * _EVENT.size > size
            or nevents_ptr + 4 > size):
        return _ERRNO_FAULT
    raw = memory.read(caller, in_ptr, in_ptr + count * _SUBSCRIPTION.size)
    watch: _Watch | None = getattr(_CURRENT, "watch", None)
    if watch is not None and watch.poll():
        return _ERRNO_INTR   # being stopped: do not sleep; the next epoch check unwinds it
    ready, timers = [], []
    for i in range(count):
        userdata, tag, ident, timeout, _precision, flags = _SUBSCRIPTION.unpack_from(raw, i * 48)
        if tag != _EVENTTYPE_CLOCK:
            ready.append(_EVENT.pack(userdata, _ERRNO_SUCCESS if ident <= 2 else _ERRNO_BADF,
                                     tag, 0, 0))
        elif ident not in (_CLOCK_REALTIME, _CLOCK_MONOTONIC):
            ready.append(_EVENT.pack(userdata, _ERRNO_INVAL, tag, 0, 0))
        else:
            timers.append((_due_in(ident, timeout, flags, watch), userdata))
    if not ready and timers:
        wait = min(due for due, _ in timers)
        limit = watch.remaining() if watch is not None else wait
        time.sleep(max(0.0, min(wait, limit)))
        if watch is not None and watch.poll():   # cut short by the deadline
            return _ERRNO_INTR
        ready = [_EVENT.pack(userdata, _ERRNO_SUCCESS, _EVENTTYPE_CLOCK, 0, 0)
                 for due, userdata in timers if due <= wait]
    memory.write(caller, b"".join(ready), out_ptr)
    memory.write(caller, struct.pack("<I", len(ready)), nevents_ptr)
    return _ERRNO_SUCCESS


def _due_in(clock: int, timeout_ns: int, flags: int, watch: _Watch | None) -> float:
    """Seconds until a clock subscription fires (abstime converted with the guest's clocks)."""
    if not flags & _SUBCLOCK_ABSTIME:
        return timeout_ns / 1e9
    if clock == _CLOCK_REALTIME:
        now = time.time_ns()
    else:  # wasmtime's WASI monotonic clock counts from (about) when the context was built
        now = time.monotonic_ns() - (watch.started_ns if watch is not None else 0)
    return max(0, timeout_ns - now) / 1e9


# ---------------------------------------------------------------------------------------------
# Compiled-module cache


@dataclass(frozen=True)
class _Compiled:
    module: wasmtime.Module
    pre: wasmtime.InstancePre


class _DiskCache:
    """`<dir>/<sha256>.cwasm` files: private to this user, written atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.directory.stat()
        if info.st_uid != os.getuid():
            raise ValueError(f"wasm cache dir {self.directory} belongs to another user")
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(self.directory, 0o700)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.cwasm"

    def load(self, key: str) -> bytes | None:
        """The serialized module, or None if absent or not safe to trust."""
        try:
            fd = os.open(self.path(key), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if info.st_uid != os.getuid() or info.st_mode & 0o077 or not stat.S_ISREG(info.st_mode):
                return None
            return file.read()

    def store(self, key: str, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:   # mkstemp creates it 0600
                file.write(data)
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# ---------------------------------------------------------------------------------------------
# The runner


class WasmRunner:
    """Runs WASI preview1 workloads with hard limits; `run` is safe to call from many threads."""

    def __init__(self, limits: Limits = Limits(), cache_entries: int = 32,
                 cache_dir: Path | None = None) -> None:
        self.limits = limits
        self._engine = wasmtime.Engine(_engine_config(limits))
        self._linker = _wasi_linker(self._engine)
        self._cache: OrderedDict[str, _Compiled] = OrderedDict()
        self._cache_entries = max(0, cache_entries)
        self._lock = threading.Lock()
        self._compiling: dict[str, threading.Lock] = {}
        self._disk = _DiskCache(cache_dir) if cache_dir is not None else None
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=_tick, args=(self._engine, self._stop),
                                        name="wasm-epoch", daemon=True)
        self._ticker.start()
        weakref.finalize(self, self._stop.set)

    # -- public ---------------------------------------------------------------------------

    def run(self, request: RunRequest) -> RunResult:
        """Validate, compile (or reuse), instantiate and run `_start`; blocks until it ends."""
        if self._stop.is_set():
            raise Unavailable("the wasm runner is closed")
        _check_request(request, self.limits)
        wasm = request.wasm if isinstance(request.wasm, bytes) else bytes(request.wasm)
        compiled, compile_ms, cached = self._compiled(wasm)
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

    # -- compile and cache -----------------------------------------------------------------

    def _compiled(self, wasm: bytes) -> tuple[_Compiled, float, bool]:
        """(compiled, compile_ms, cached): memory LRU, then disk, then compile once per key."""
        key = hashlib.sha256(wasm).hexdigest()
        hit = self._cache_get(key)
        if hit is not None:
            return hit, 0.0, True
        with self._lock:
            gate = self._compiling.setdefault(key, threading.Lock())
        with gate:   # concurrent first runs of the same bytes compile it once
            hit = self._cache_get(key)
            if hit is not None:
                return hit, 0.0, True
            try:
                compiled = self._from_disk(key)
                compile_ms, cached = 0.0, compiled is not None
                if compiled is None:
                    started = time.perf_counter()
                    compiled = self._compile(wasm, key)
                    compile_ms = (time.perf_counter() - started) * 1000
                self._cache_put(key, compiled)
            finally:
                with self._lock:
                    self._compiling.pop(key, None)
        return compiled, compile_ms, cached

    def _cache_get(self, key: str) -> _Compiled | None:
        with self._lock:
            compiled = self._cache.get(key)
            if compiled is not None:
                self._cache.move_to_end(key)
            return compiled

    def _cache_put(self, key: str, compiled: _Compiled) -> None:
        with self._lock:
            self._cache[key] = compiled
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)

    def _from_disk(self, key: str) -> _Compiled | None:
        data = self._disk.load(key) if self._disk is not None else None
        if data is None:
            return None
        try:   # a file from another wasmtime version or engine config fails here; recompile
            module = wasmtime.Module.deserialize(self._engine, data)
            return _Compiled(module, self._link(module))
        except (wasmtime.WasmtimeError, BadRequest):
            return None

    def _compile(self, wasm: bytes, key: str) -> _Compiled:
        try:
            module = wasmtime.Module(self._engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise BadRequest(f"the workload is not a valid wasm module: {_cause(exc)}") from None
        compiled = _Compiled(module, self._link(module))
        if self._disk is not None:
            try:
                self._disk.store(key, bytes(module.serialize()))
            except OSError:
                pass   # the disk cache is an optimisation; the run goes on without it
        return compiled

    def _link(self, module: wasmtime.Module) -> wasmtime.InstancePre:
        _check_exports(module)
        _check_imports(module)
        try:
            return self._linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise BadRequest(f"the workload cannot be linked against WASI preview1: "
                             f"{_cause(exc)}") from None

    # -- run -------------------------------------------------------------------------------

    def _execute(self, compiled: _Compiled, request: RunRequest, compile_ms: float,
                 cached: bool) -> RunResult:
        limits = self.limits
        watch = _Watch(limits.deadline_seconds)
        out = _Capture("stdout", limits.max_output_bytes, watch)
        err = _Capture("stderr", limits.max_output_bytes, watch)
        watch_id = next(_WATCH_IDS)
        _WATCHES[watch_id] = watch
        store = self._store(watch_id, request, out, err)
        _CURRENT.watch = watch
        started = time.perf_counter()
        instance: wasmtime.Instance | None = None
        try:
            instance = compiled.pre.instantiate(store)
            start = instance.exports(store)["_start"]
            assert isinstance(start, wasmtime.Func)
            start(store)
            outcome: tuple[int | None, str | None, str] = (0, None, "")
        except wasmtime.WasmtimeError as exc:   # ExitTrap is a WasmtimeError
            outcome = _classify(exc, instance, store, watch, err, limits)
        except wasmtime.Trap as exc:
            outcome = _classify(exc, instance, store, watch, err, limits)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            _CURRENT.watch = None
            store.close()   # free it now, on this thread, not in some later GC
            _WATCHES.pop(watch_id, None)
        if watch.stop_reason == "deadline":   # e.g. a sleep cut short, then a quick exit
            outcome = (None, "deadline", _deadline_details(limits))
        exit_code, stopped, details = _overflow(out, err) or outcome
        return RunResult(exit_code=exit_code, stdout=bytes(out.data), stderr=bytes(err.data),
                         elapsed_ms=elapsed_ms, compile_ms=compile_ms, cached=cached,
                         stopped=stopped, details=details)

    def _store(self, watch_id: int, request: RunRequest, out: _Capture,
               err: _Capture) -> wasmtime.Store:
        limits = self.limits
        store = wasmtime.Store(self._engine)
        store.set_limits(memory_size=limits.max_memory_bytes)
        if limits.fuel is not None:
            store.set_fuel(limits.fuel)
        store.set_epoch_deadline(1)
        ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), _on_epoch, watch_id, _NO_FINALIZER)
        wasi = wasmtime.WasiConfig()
        wasi.argv = ["main.wasm", *request.args]
        wasi.env = list(request.env.items())
        _set_stdin(wasi, request.stdin)
        wasi.stdout_custom = out.write
        wasi.stderr_custom = err.write
        store.set_wasi(wasi)
        return store


# ---------------------------------------------------------------------------------------------
# Helpers


def _engine_config(limits: Limits) -> wasmtime.Config:
    config = wasmtime.Config()
    config.epoch_interruption = True
    config.consume_fuel = limits.fuel is not None
    return config


def _wasi_linker(engine: wasmtime.Engine) -> wasmtime.Linker:
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    linker.allow_shadowing = True
    i32 = wasmtime.ValType.i32()
    linker.define_func(WASI, "poll_oneoff", wasmtime.FuncType([i32] * 4, [i32]), _poll_oneoff,
                       access_caller=True)
    linker.allow_shadowing = False
    return linker


def _tick(engine: wasmtime.Engine, stop: threading.Event) -> None:
    while not stop.wait(TICK_SECONDS):
        engine.increment_epoch()


def _set_stdin(wasi: wasmtime.WasiConfig, data: bytes) -> None:
    """Hand stdin to WASI as an in-memory pipe (the C API copies it; no temp file)."""
    vec = ffi.wasm_byte_vec_t()
    buffer = ctypes.c_char_p(bytes(data))
    ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data),
                          ctypes.cast(buffer, ctypes.POINTER(ffi.wasm_byte_t)))
    ffi.wasi_config_set_stdin_bytes(wasi.ptr(), ctypes.byref(vec))   # takes ownership of vec


def _check_request(request: RunRequest, limits: Limits) -> None:
    """Everything that can be refused before compiling or running anything."""
    wasm = request.wasm
    if not isinstance(wasm, (bytes, bytearray, memoryview)):
        raise BadRequest("the workload must be wasm bytes")
    if len(wasm) > limits.max_module_bytes:
        raise TooLarge(f"the workload is {len(wasm):,} bytes, more than the "
                       f"{limits.max_module_bytes:,}-byte limit (max_module_bytes)")
    if not bytes(wasm[:4]) == _CORE_HEADER[:4]:
        raise BadRequest("the workload is not a wasm module (it does not start with \\0asm)")
    if bytes(wasm[:8]) != _CORE_HEADER:
        raise BadRequest("the workload is not a core wasm module (a component or an unknown "
                         "version); build it for wasm32-wasip1")
    if len(request.stdin) > limits.max_stdin_bytes:
        raise TooLarge(f"stdin is {len(request.stdin):,} bytes, more than the "
                       f"{limits.max_stdin_bytes:,}-byte limit (max_stdin_bytes)")
    _check_args(request.args, request.env, limits)


def _check_args(args: Sequence[str], env: Mapping[str, str], limits: Limits) -> None:
    if isinstance(args, (str, bytes)):
        raise BadRequest("args must be a list of strings")
    if len(args) > limits.max_args:
        raise BadRequest(f"{len(args)} arguments, more than the limit of {limits.max_args}")
    if len(env) > limits.max_env:
        raise BadRequest(f"{len(env)} environment variables, more than the limit of "
                         f"{limits.max_env}")
    total = 0
    for arg in args:
        total += len(_c_string(arg, "an argument")) + 1
    for name, value in env.items():
        if not name or "=" in name:
            raise BadRequest(f"environment variable name {name!r} must be non-empty and "
                             f"without '='")
        total += len(_c_string(name, "an env name")) + len(_c_string(value, "an env value")) + 2
    if total > limits.max_arg_bytes:
        raise BadRequest(f"arguments and environment are {total:,} bytes, more than the "
                         f"{limits.max_arg_bytes:,}-byte limit (max_arg_bytes)")


def _c_string(text: str, what: str) -> bytes:
    if not isinstance(text, str):
        raise BadRequest(f"{what} must be a string, not {type(text).__name__}")
    if "\0" in text:
        raise BadRequest(f"{what} contains a NUL character")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{what} is not valid Unicode text") from None


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


def _overflow(out: _Capture, err: _Capture) -> tuple[None, str, str] | None:
    for capture in (out, err):
        if capture.overflowed:
            return None, "output", (
                f"the workload wrote more than {capture.cap:,} bytes to {capture.name} and was "
                f"stopped (the first {capture.cap:,} bytes are kept); raise max_output_bytes or "
                f"make it write less")
    return None


def _classify(exc: Exception, instance: wasmtime.Instance | None, store: wasmtime.Store,
              watch: _Watch, err: _Capture, limits: Limits) -> tuple[int | None, str | None, str]:
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
_ALLOC_FAILED = re.compile(rb"memory allocation of \d+ bytes failed|out of memory", re.I)


def _memory_details(exc: Exception, instance: wasmtime.Instance | None, store: wasmtime.Store,
                    err: _Capture, limits: Limits) -> str:
    """Why this looks like the memory cap (or "" when it does not)."""
    cap = limits.max_memory_bytes
    advice = "raise max_memory_bytes or make the workload use less memory"
    if instance is None:
        found = _INITIAL_MEMORY.search(str(exc))
        if found:
            return (f"the module asks for {int(found.group(1)) * 65536 / _MIB:g} MiB of initial "
                    f"memory, more than the {cap / _MIB:g} MiB cap; {advice}")
        if "exceeds memory limits" in str(exc):
            return f"the module's initial memory is over the {cap / _MIB:g} MiB cap; {advice}"
        return ""
    used = _largest_memory(instance, store)
    if used * 2 >= cap or _ALLOC_FAILED.search(bytes(err.data)):
        return (f"the workload trapped with {used / _MIB:g} MiB of linear memory after "
                f"growing toward the {cap / _MIB:g} MiB cap, most likely because an allocation "
                f"was refused; {advice}")
    return ""


def _largest_memory(instance: wasmtime.Instance, store: wasmtime.Store) -> int:
    sizes = [item.data_len(store) for item in instance.exports(store).by_index
             if isinstance(item, wasmtime.Memory)]
    return max(sizes, default=0)


def _cause(exc: BaseException) -> str:
    """wasmtime's root cause line, without the backtrace."""
    text = str(exc).strip()
    if "Caused by:" in text:
        text = text.rsplit("Caused by:", 1)[1].strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    return line[:300]
