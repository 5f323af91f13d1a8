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
_CORE_HEADER = b"\0asm\x01\x00\x00\x00"   # magic + version 1: a core module, not a component


@dataclass(frozen=True)
class Limits:
    """Hard limits for one workload run; every stop's `details` names the field to raise."""

    max_module_bytes: int = field(default=64 * MIB, metadata=option(
        "--wasm-max-module", "largest module (default 64 MiB)", metavar="BYTES"))
    deadline_seconds: float = field(default=10.0, metadata=option(  # wall clock, epoch interruption
        "--wasm-deadline", "per workload (default 10)", metavar="SECONDS"))
    fuel: int | None = field(default=20_000_000_000, metadata=option(  # wasmtime fuel; None = unlimited
        "--wasm-fuel", "instruction budget per workload", metavar="UNITS"))
    max_memory_bytes: int = field(default=256 * MIB, metadata=option(  # linear memory cap (store limits)
        "--wasm-memory", "linear memory cap (default 256 MiB)", metavar="BYTES"))
    max_output_bytes: int = field(default=1 * MIB, metadata=option(  # stdout cap, and stderr cap
        "--wasm-output", "stdout and stderr cap (default 1 MiB)", metavar="BYTES"))
    max_stdin_bytes: int = 16 * MIB
    max_args: int = 256
    max_env: int = 256
    max_arg_bytes: int = 64 * 1024          # total of args + env text (UTF-8)

    def __post_init__(self) -> None:
        if not (isinstance(self.deadline_seconds, (int, float)) and not isinstance(self.deadline_seconds, bool)
                and math.isfinite(self.deadline_seconds) and self.deadline_seconds > 0):
            raise ValueError(f"deadline_seconds must be a finite number of seconds above 0, "
                             f"not {self.deadline_seconds!r}")
        if self.fuel is not None and (not isinstance(self.fuel, int) or isinstance(self.fuel, bool) or self.fuel <= 0):
            raise ValueError(f"fuel must be a positive integer (or None for no budget), not {self.fuel!r}")
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
