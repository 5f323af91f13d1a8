"""Compiled workload modules, cached by the sha256 of their bytes so a repeated workload skips
compilation.

A lookup tries an in-memory LRU, then (when a directory is given) `<dir>/<sha256>.cwasm` from
`Module.serialize`, and only then compiles; concurrent first runs of the same bytes compile it
once. A `.cwasm` is native code that wasmtime loads without validation, so the directory is kept
0700, files are written 0600 via an atomic rename, and a file not owned by this user or readable
by others is ignored. A file that does not load (another wasmtime version or engine config) is
compiled again and overwritten. The cache does not know how to compile: the runner passes that in.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from bus.errors import BadRequest


@dataclass(frozen=True)
class Compiled:
    """A checked module and its pre-linked instance; both are shared between threads."""

    module: wasmtime.Module
    pre: wasmtime.InstancePre


class ModuleCache:
    """Memory LRU over an optional private disk cache; `get` is safe to call from many threads."""

    def __init__(self, compile_wasm: Callable[[bytes], Compiled],
                 deserialize: Callable[[bytes], Compiled], entries: int = 32,
                 directory: Path | None = None) -> None:
        """`compile_wasm` raises BadRequest for a bad workload; `deserialize` may raise
        WasmtimeError or BadRequest for a file it cannot use."""
        self._compile_wasm = compile_wasm
        self._deserialize = deserialize
        self._entries = max(0, entries)
        self._memory: OrderedDict[str, Compiled] = OrderedDict()
        self._lock = threading.Lock()
        self._compiling: dict[str, threading.Lock] = {}
        self._disk = DiskCache(directory) if directory is not None else None

    def get(self, wasm: bytes) -> tuple[Compiled, float, bool]:
        """(compiled, compile_ms, cached): memory LRU, then disk, then compile once per key."""
        key = hashlib.sha256(wasm).hexdigest()
        hit = self._recall(key)
        if hit is not None:
            return hit, 0.0, True
        with self._lock:
            gate = self._compiling.setdefault(key, threading.Lock())
        with gate:   # concurrent first runs of the same bytes compile it once
            hit = self._recall(key)
            if hit is not None:
                return hit, 0.0, True
            try:
                compiled, compile_ms, cached = self._load_or_compile(wasm, key)
                self._remember(key, compiled)
            finally:
                with self._lock:
                    self._compiling.pop(key, None)
        return compiled, compile_ms, cached

    def _recall(self, key: str) -> Compiled | None:
        with self._lock:
            compiled = self._memory.get(key)
            if compiled is not None:
                self._memory.move_to_end(key)
            return compiled

    def _remember(self, key: str, compiled: Compiled) -> None:
        with self._lock:
            self._memory[key] = compiled
            self._memory.move_to_end(key)
            while len(self._memory) > self._entries:
                self._memory.popitem(last=False)

    def _load_or_compile(self, wasm: bytes, key: str) -> tuple[Compiled, float, bool]:
        compiled = self._from_disk(key)
        if compiled is not None:
            return compiled, 0.0, True
        started = time.perf_counter()
        compiled = self._compile_wasm(wasm)
        self._to_disk(key, compiled)
        return compiled, (time.perf_counter() - started) * 1000, False

    def _from_disk(self, key: str) -> Compiled | None:
        data = self._disk.load(key) if self._disk is not None else None
        if data is None:
            return None
        try:   # a file from another wasmtime version or engine config fails here; recompile
            return self._deserialize(data)
        except (wasmtime.WasmtimeError, BadRequest):
            return None

    def _to_disk(self, key: str, compiled: Compiled) -> None:
        if self._disk is None:
            return
        try:
            self._disk.store(key, bytes(compiled.module.serialize()))
        except OSError:
            pass   # the disk cache is an optimisation; the run goes on without it


class DiskCache:
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
        """Write `data` under `key` via a 0600 temp file and an atomic rename."""
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:   # mkstemp creates it 0600
                file.write(data)
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
