"""Compiled workload modules, cached by the sha256 of their bytes so a repeated workload skips
compilation.

A lookup tries an in-memory LRU, then (when a directory is given) `<dir>/<sha256>.cwasm` holding
`Module.serialize` bytes, and only then compiles; concurrent first runs of the same bytes compile
it once. A `.cwasm` is native code that wasmtime loads without validation, so the directory is
kept 0700, files are written 0600 via an atomic rename, and a file not owned by this user or
readable by others is ignored. A file that does not load (another wasmtime version or engine
config) is compiled again and overwritten. The cache does not know how to compile or load: the
runner passes in `compile_wasm` (wasm -> serialized module, done in a bounded child process) and
`load` (serialized module -> `Compiled`), so a fresh compile and a disk hit take the same path.

The directory is shared by every keep of a host and would otherwise only grow, so it is bounded:
entries unused for `max_age_seconds` go, then the least recently used until the total is within
`max_bytes`. It is trimmed when a cache opens and after every insert; a hit refreshes an entry's
mtime, which is its "last used" time. Another process may trim a file this one is about to read;
that is just a miss.
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


DEFAULT_MAX_BYTES = 1024 * 1024 * 1024
DEFAULT_MAX_AGE_SECONDS = 7 * 24 * 3600.0
_STALE_TEMP_SECONDS = 3600.0   # a temp file this old belongs to a writer that died


class ModuleCache:
    """Memory LRU over an optional private disk cache; `get` is safe to call from many threads."""

    def __init__(self, compile_wasm: Callable[[bytes], bytes], load: Callable[[bytes], Compiled],
                 entries: int = 32, directory: Path | None = None,
                 max_disk_bytes: int = DEFAULT_MAX_BYTES,
                 max_disk_age_seconds: float = DEFAULT_MAX_AGE_SECONDS) -> None:
        """`compile_wasm` raises BadRequest for a bad workload (or Unprocessable over a compile
        limit); `load` may raise WasmtimeError or BadRequest for bytes it cannot use."""
        self._compile_wasm = compile_wasm
        self._load = load
        self._entries = max(0, entries)
        self._memory: OrderedDict[str, Compiled] = OrderedDict()
        self._lock = threading.Lock()
        self._compiling: dict[str, threading.Lock] = {}
        self._disk = (DiskCache(directory, max_disk_bytes, max_disk_age_seconds)
                      if directory is not None else None)

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
        serialized = self._compile_wasm(wasm)
        compiled = self._load(serialized)   # checks exports and imports: only good modules are kept
        compile_ms = (time.perf_counter() - started) * 1000
        self._to_disk(key, serialized)
        return compiled, compile_ms, False

    def _from_disk(self, key: str) -> Compiled | None:
        data = self._disk.load(key) if self._disk is not None else None
        if data is None:
            return None
        try:   # a file from another wasmtime version or engine config fails here; recompile
            return self._load(data)
        except (wasmtime.WasmtimeError, BadRequest):
            return None

    def _to_disk(self, key: str, serialized: bytes) -> None:
        if self._disk is None:
            return
        try:
            self._disk.store(key, serialized)
        except OSError:
            pass   # the disk cache is an optimisation; the run goes on without it


@dataclass(frozen=True)
class _Entry:
    path: Path
    size: int
    used_ns: int   # mtime: written, or last loaded


class DiskCache:
    """`<dir>/<sha256>.cwasm` files: private to this user, written atomically, bounded in total
    size and in age since last use."""

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_age_seconds = max_age_seconds
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.directory.stat()
        if info.st_uid != os.getuid():
            raise ValueError(f"wasm cache dir {self.directory} belongs to another user")
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(self.directory, 0o700)
        self.trim()

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.cwasm"

    def load(self, key: str) -> bytes | None:
        """The serialized module, or None if absent or not safe to trust; a hit counts as a use."""
        try:
            fd = os.open(self.path(key), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if info.st_uid != os.getuid() or info.st_mode & 0o077 or not stat.S_ISREG(info.st_mode):
                return None
            data = file.read()
            try:
                os.utime(file.fileno())   # last used now: trimming goes by age since last use
            except OSError:
                pass
            return data

    def store(self, key: str, data: bytes) -> None:
        """Write `data` under `key` via a 0600 temp file and an atomic rename, then trim; an entry
        larger than the whole cache is not written at all."""
        if len(data) > self.max_bytes:
            return
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:   # mkstemp creates it 0600
                file.write(data)
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.trim()

    def trim(self) -> None:
        """Delete entries unused for max_age_seconds, then the least recently used ones until
        the rest fit in max_bytes; also temp files left by writers that died."""
        now_ns = time.time_ns()
        oldest_kept_ns = now_ns - int(self.max_age_seconds * 1e9)
        for temp in self._scan(".*.tmp"):
            if temp.used_ns < now_ns - int(_STALE_TEMP_SECONDS * 1e9):
                _remove(temp.path)
        entries = sorted(self._scan("*.cwasm"), key=lambda e: (e.used_ns, e.path.name))
        total = sum(entry.size for entry in entries)
        for entry in entries:
            if entry.used_ns >= oldest_kept_ns and total <= self.max_bytes:
                break   # sorted oldest first: everything after this one is newer
            _remove(entry.path)
            total -= entry.size

    def _scan(self, pattern: str) -> list[_Entry]:
        found = []
        for path in self.directory.glob(pattern):
            try:
                info = path.lstat()
            except OSError:
                continue   # removed by another keep meanwhile
            found.append(_Entry(path, info.st_size, info.st_mtime_ns))
        return found


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass   # another keep trimmed it first, or it is gone anyway
