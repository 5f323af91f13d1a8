"""The runner's reach past wasmtime-py's public API, kept here so a wasmtime upgrade has one
file to re-check.

* Epoch deadline callback -- every store gets an epoch deadline of one tick and a per-store
  callback (C API `wasmtime_store_epoch_deadline_callback`, reached through `wasmtime._ffi`
  because wasmtime-py 50 does not wrap it). It runs on the workload's own thread at each tick and
  either re-arms for one more tick or returns an error that unwinds the workload. What it checks
  is the run's `Watch`: the wall-clock deadline, or a stop requested by another callback (output
  overflow). The C callback gets only an integer, so live watches are kept in a registry by id.
* stdin -- handed over with the C API's `wasi_config_set_stdin_bytes` (also unwrapped in
  wasmtime-py 50) as an in-memory pipe, so no temp file holds workload input.
* `poll_oneoff` -- blocking host calls cannot be interrupted by epochs, and WASI's own
  `poll_oneoff` (the guest's sleep) would sleep past the deadline. The shim shadows it and never
  sleeps past the run's deadline: a sleep cut short returns EINTR and the watch records
  "deadline". fd subscriptions are reported ready at once (stdin is an in-memory pipe,
  stdout/stderr never block, and no other descriptors exist). It reimplements the preview1 ABI
  (struct layouts below) and never raises: an exception from a wasmtime-py host function travels
  through a process-global slot (`wasmtime._func.LAST_EXCEPTION`) and could surface in another
  thread's run.
"""

from __future__ import annotations

import ctypes
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi  # epoch deadline callback and stdin bytes are not wrapped

WASI = "wasi_snapshot_preview1"


class Watch:
    """One run's deadline and stop reason, read by the epoch callback and the poll_oneoff shim."""

    def __init__(self, deadline_seconds: float) -> None:
        self.deadline = time.monotonic() + deadline_seconds
        self.started_ns = time.monotonic_ns()
        self.stop_reason: str | None = None

    def request_stop(self, reason: str) -> None:
        """Ask for a stop at the next tick; the first reason wins."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def poll(self) -> str | None:
        """The reason to stop now, or None to keep running."""
        if self.stop_reason is None and self.remaining() <= 0:
            self.stop_reason = "deadline"
        return self.stop_reason


_WATCHES: dict[int, Watch] = {}   # by the id the epoch callback receives
_WATCH_IDS = iter(range(1, 1 << 62))
_CURRENT = threading.local()      # the watch of the run on this thread, for the poll_oneoff shim


@contextmanager
def watching(watch: Watch) -> Iterator[int]:
    """Make `watch` visible to the callbacks while a run lasts on this thread; yields its id."""
    watch_id = next(_WATCH_IDS)
    _WATCHES[watch_id] = watch
    _CURRENT.watch = watch
    try:
        yield watch_id
    finally:
        _CURRENT.watch = None
        _WATCHES.pop(watch_id, None)


# ---------------------------------------------------------------------------------------------
# wasmtime internals: C API calls through wasmtime._ffi (not wrapped by wasmtime-py 50)

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


def arm_epoch_deadline(store: wasmtime.Store, watch_id: int) -> None:
    """Check the watch registered as `watch_id` at every epoch tick of `store`."""
    store.set_epoch_deadline(1)
    ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), _on_epoch, watch_id, _NO_FINALIZER)


def set_stdin(wasi: wasmtime.WasiConfig, data: bytes) -> None:
    """Hand stdin to WASI as an in-memory pipe (the C API copies it; no temp file)."""
    vec = ffi.wasm_byte_vec_t()
    buffer = ctypes.c_char_p(bytes(data))
    ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data),
                          ctypes.cast(buffer, ctypes.POINTER(ffi.wasm_byte_t)))
    ffi.wasi_config_set_stdin_bytes(wasi.ptr(), ctypes.byref(vec))   # takes ownership of vec


# ---------------------------------------------------------------------------------------------
# poll_oneoff that respects the deadline (WASI preview1 ABI, host function that must not raise)

_SUBSCRIPTION = struct.Struct("<QB7xI4xQQH6x")   # userdata, tag, clock id | fd, timeout, -, flags
_EVENT = struct.Struct("<QHB5xQH6x")             # userdata, errno, type, nbytes, flags
_EVENTTYPE_CLOCK = 0
_ERRNO_SUCCESS, _ERRNO_BADF, _ERRNO_FAULT, _ERRNO_INTR, _ERRNO_INVAL = 0, 8, 21, 27, 28
_CLOCK_REALTIME, _CLOCK_MONOTONIC = 0, 1
_SUBCLOCK_ABSTIME = 1
_MAX_SUBSCRIPTIONS = 4096


def shadow_poll_oneoff(linker: wasmtime.Linker) -> None:
    """Replace WASI's poll_oneoff in `linker` (which already defines WASI) with the shim."""
    linker.allow_shadowing = True
    i32 = wasmtime.ValType.i32()
    linker.define_func(WASI, "poll_oneoff", wasmtime.FuncType([i32] * 4, [i32]), _poll_oneoff,
                       access_caller=True)
    linker.allow_shadowing = False


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
    """Read the subscriptions, report fds at once or sleep until the first timer, write events."""
    if count <= 0 or count > _MAX_SUBSCRIPTIONS:
        return _ERRNO_INVAL
    size = memory.data_len(caller)
    if (in_ptr + count * _SUBSCRIPTION.size > size or out_ptr + count * _EVENT.size > size
            or nevents_ptr + 4 > size):
        return _ERRNO_FAULT
    raw = memory.read(caller, in_ptr, in_ptr + count * _SUBSCRIPTION.size)
    watch: Watch | None = getattr(_CURRENT, "watch", None)
    if watch is not None and watch.poll():
        return _ERRNO_INTR   # being stopped: do not sleep; the next epoch check unwinds it
    ready, timers = [], []
    for i in range(count):
        userdata, tag, ident, timeout, _precision, flags = _SUBSCRIPTION.unpack_from(
            raw, i * _SUBSCRIPTION.size)
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


def _due_in(clock: int, timeout_ns: int, flags: int, watch: Watch | None) -> float:
    """Seconds until a clock subscription fires (abstime converted with the guest's clocks)."""
    if not flags & _SUBCLOCK_ABSTIME:
        return timeout_ns / 1e9
    if clock == _CLOCK_REALTIME:
        now = time.time_ns()
    else:  # wasmtime's WASI monotonic clock counts from (about) when the context was built
        now = time.monotonic_ns() - (watch.started_ns if watch is not None else 0)
    return max(0, timeout_ns - now) / 1e9
