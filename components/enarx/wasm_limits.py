"""What a workload run may use (`Limits`), what it asks for (`RunRequest`) and what came of it
(`RunResult`), plus the checks that refuse a request before anything is compiled or run.

Every refusal and every stop names the `Limits` field to raise, so an operator can act on the
message alone.
"""

from __future__ import annotations

import math

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from bus.config import option
from bus.errors import BadRequest, TooLarge

MIB = 1024 * 1024
MIN_COMPILE_MEMORY = 64 * MIB
_CORE_HEADER = b"\0asm\x01\x00\x00\x00"   # magic + version 1: a core module, not a component
_TABLE_SECTION = 4
MAX_TABLES = 1   # what WASI toolchains emit (the indirect-function table); see check_request


@dataclass(frozen=True)
class Limits:
    """Hard limits for one workload run, its compile and the disk cache of compiled modules;
    every refusal and every stop names the field to raise."""

    max_module_bytes: int = field(default=64 * MIB, metadata=option(
        "--wasm-max-module", "largest module (default 64 MiB)", metavar="BYTES"))
    deadline_seconds: float = field(default=10.0, metadata=option(  # wall clock, epoch interruption
        "--wasm-deadline", "per workload (default 10)", metavar="SECONDS"))
    fuel: int | None = field(default=20_000_000_000, metadata=option(  # wasmtime fuel; None = unlimited
        "--wasm-fuel", "instruction budget per workload", metavar="UNITS"))
    max_memory_bytes: int = field(default=256 * MIB, metadata=option(  # the one linear memory (store limits)
        "--wasm-memory", "linear memory cap (default 256 MiB)", metavar="BYTES"))
    max_output_bytes: int = field(default=1 * MIB, metadata=option(  # stdout cap, and stderr cap
        "--wasm-output", "stdout and stderr cap (default 1 MiB)", metavar="BYTES"))
    # Table elements (8 bytes each) of the workload's one table; without it a table is a second,
    # uncapped memory (a 50M-element table is 400 MB).
    max_table_elements: int = 1_000_000
    compile_seconds: float = field(default=30.0, metadata=option(  # compiler child's wall clock
        "--wasm-compile-deadline", "per module compile (default 30)", metavar="SECONDS"))
    compile_memory_bytes: int = field(default=1024 * MIB, metadata=option(  # its RLIMIT_DATA
        "--wasm-compile-memory", "memory of one module compile (default 1 GiB)", metavar="BYTES"))
    # The compiled-module cache on disk (shared by a host's keeps): trimmed oldest-first on start
    # and on every insert; age counts from an entry's last use.
    max_cache_bytes: int = field(default=1024 * MIB, metadata=option(
        "--wasm-cache-size", "compiled-module disk cache (default 1 GiB)", metavar="BYTES"))
    max_cache_age_seconds: float = field(default=7 * 24 * 3600.0, metadata=option(
        "--wasm-cache-age", "unused entries leave the disk cache after (default 7 days)",
        metavar="SECONDS"))
    max_stdin_bytes: int = 16 * MIB
    max_args: int = 256
    max_env: int = 256
    max_arg_bytes: int = 64 * 1024          # total of args + env text (UTF-8)

    def __post_init__(self) -> None:
        for name in ("deadline_seconds", "compile_seconds", "max_cache_age_seconds"):
            if not _positive_seconds(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number of seconds above 0, "
                                 f"not {getattr(self, name)!r}")
        if not _whole(self.compile_memory_bytes) or self.compile_memory_bytes < MIN_COMPILE_MEMORY:
            raise ValueError(f"compile_memory_bytes must be a whole number of at least "
                             f"{MIN_COMPILE_MEMORY:,} (the compiler process itself needs about "
                             f"30 MiB), not {self.compile_memory_bytes!r}")
        if self.fuel is not None and (not isinstance(self.fuel, int) or isinstance(self.fuel, bool) or self.fuel <= 0):
            raise ValueError(f"fuel must be a positive integer (or None for no budget), not {self.fuel!r}")
        for name in ("max_module_bytes", "max_memory_bytes", "max_output_bytes",
                     "max_stdin_bytes", "max_args", "max_env", "max_arg_bytes",
                     "max_table_elements", "max_cache_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"workload limit {name} must not be negative")

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any]) -> "Limits":
        """Defaults with `overrides` applied, rejecting unknown names (config typos fail loudly)."""
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown workload limits {', '.join(sorted(unknown))}")
        return cls(**dict(overrides))


def _positive_seconds(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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


def check_request(request: RunRequest, limits: Limits) -> None:
    """Refuse what can be refused before compiling or running anything (cheap checks first)."""
    wasm = request.wasm
    if not isinstance(wasm, (bytes, bytearray, memoryview)):
        raise BadRequest("the workload must be wasm bytes")
    if len(wasm) > limits.max_module_bytes:
        raise TooLarge(f"the workload is {len(wasm):,} bytes, more than the "
                       f"{limits.max_module_bytes:,}-byte limit (max_module_bytes)")
    if bytes(wasm[:4]) != _CORE_HEADER[:4]:
        raise BadRequest("the workload is not a wasm module (it does not start with \\0asm)")
    if bytes(wasm[:8]) != _CORE_HEADER:
        raise BadRequest("the workload is not a core wasm module (a component or an unknown "
                         "version); build it for wasm32-wasip1")
    tables = declared_tables(bytes(wasm))
    if tables > MAX_TABLES:   # each table is memory outside the linear memory cap
        raise BadRequest(f"the workload declares {tables} tables; the runner serves one table "
                         f"(of at most max_table_elements elements) per workload")
    if len(request.stdin) > limits.max_stdin_bytes:
        raise TooLarge(f"stdin is {len(request.stdin):,} bytes, more than the "
                       f"{limits.max_stdin_bytes:,}-byte limit (max_stdin_bytes)")
    _check_args(request.args, request.env, limits)


def _check_args(args: Sequence[str], env: Mapping[str, str], limits: Limits) -> None:
    """Counts and total size as WASI will lay them out (NUL-terminated, env as NAME=value)."""
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
    """UTF-8 bytes of `text`, refused if WASI could not pass it as a C string."""
    if not isinstance(text, str):
        raise BadRequest(f"{what} must be a string, not {type(text).__name__}")
    if "\0" in text:
        raise BadRequest(f"{what} contains a NUL character")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{what} is not valid Unicode text") from None


def declared_tables(wasm: bytes) -> int:
    """How many tables the module's table section declares (0 if none, or if the bytes are too
    malformed to say: compiling refuses those). Only section headers are read, so this is cheap
    enough to run before every run; imported tables cannot link (WASI exports none)."""
    pos = len(_CORE_HEADER)
    while pos < len(wasm):
        section_id = wasm[pos]
        size, pos = _leb128(wasm, pos + 1)
        if size is None:
            return 0
        if section_id == _TABLE_SECTION:
            count, _ = _leb128(wasm, pos)
            return count or 0
        pos += size
    return 0


def _leb128(data: bytes, pos: int) -> tuple[int | None, int]:
    """(unsigned LEB128 u32 at `pos`, the position after it), or (None, pos) if malformed."""
    value = 0
    for shift in range(0, 35, 7):
        if pos >= len(data):
            return None, pos
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    return None, pos
