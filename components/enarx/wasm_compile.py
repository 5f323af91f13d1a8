"""Compile a workload module in a child process with a deadline and a memory ceiling of its own.

Compiling is the one step of a run that the store limits cannot reach: Cranelift's time and memory
grow with the shape of the module, not its size (a 1 MB function of small blocks takes ~7 s and
~900 MB), and it happens before any store exists. So the runner never compiles in its own process:
`BoundedCompiler.compile` starts a fresh interpreter running `_child` below, hands it the wasm
on stdin and gets back `Module.serialize()` bytes on stdout, which the parent loads with
`Module.deserialize` (the same path the disk cache takes). The child

* limits its own private writable memory with RLIMIT_DATA (heap and anonymous mappings, which is
  what the compiler consumes; RLIMIT_AS would also count ~240 MB of address-space reservations
  made by threads and malloc arenas, so its number would not mean memory), and its CPU time as a
  backstop should the parent die;
* is killed by the parent when `compile_seconds` of wall clock have passed;
* gets an empty environment (none of the keep's credentials), runs isolated and without `site`
  (`-I -S`: the import path is exactly this source tree and wasmtime's directory; no `.pth` file
  runs), and imports nothing but the standard library, wasmtime and `bus.errors`.

Both sides build their engine with `engine_config`, so the artifact always matches the engine
that loads it. It also turns off the proposals the runner does not serve: a module with more than
one memory, a 64-bit or shared memory, GC types or exceptions fails validation here and is
refused with a 400 before anything runs. Going over either compile limit is a 422
(`Unprocessable`) naming the `Limits` field to raise; it is not cached, and the runner serves the
next workload as before. Compiles of one runner take turns, so a keep never has more than one
compiler child (and one `compile_memory_bytes`) at a time.
"""

from __future__ import annotations

import math
import os
import re
import resource
import signal
import subprocess
import sys
import threading

import wasmtime

from bus.errors import BadRequest, Internal, Unavailable, Unprocessable

MIB = 1024 * 1024
_IMPORT_PATH = (  # the directories holding bus/ and components/, and wasmtime/
    os.path.realpath(os.path.join(os.path.dirname(__file__), "..", "..")),
    os.path.dirname(os.path.dirname(os.path.realpath(wasmtime.__file__))))
_BOOT = ("import sys; sys.path[:0] = sys.argv[1:3]; "
         "from components.enarx.wasm_compile import _child; sys.exit(_child(sys.argv[3:]))")
EXIT_INVALID = 65        # the module does not validate; stderr holds wasmtime's cause line
EXIT_OUT_OF_MEMORY = 66  # an allocation failed under the ceiling (the Rust side aborts instead)
_OOM_SIGNS = ("memory allocation of", "MemoryError", "Cannot allocate memory", "out of memory",
              "failed to spawn thread", "os error 12")
_CHAIN_LINK = re.compile(r"^\d+: ")
# Validation failures caused by a proposal we switched off, in words an author can act on.
_UNSERVED = (
    ("multiple memories", "the workload declares more than one linear memory (multi-memory); "
                          "the runner serves exactly one 32-bit memory per workload"),
    ("memory64 must be enabled", "the workload uses a 64-bit memory (memory64); the runner "
                                 "serves 32-bit memories only"),
    ("threads must be enabled", "the workload uses a shared memory (threads); WASI preview1 "
                                "workloads run on one thread here"),
    ("threads support is not enabled", "the workload uses atomics (threads); WASI preview1 "
                                       "workloads run on one thread here"),
    ("without the gc feature", "the workload uses GC types, which the runner does not serve"),
    ("exceptions proposal", "the workload uses wasm exceptions, which the runner does not serve"),
)


def engine_config(fuel_metering: bool) -> wasmtime.Config:
    """The one engine configuration of parent and compiler child (artifacts must match it)."""
    config = wasmtime.Config()
    config.epoch_interruption = True
    config.consume_fuel = fuel_metering
    # One 32-bit memory per workload, so the store's memory_size limit is the workload's total.
    config.wasm_multi_memory = False
    config.wasm_memory64 = False
    config.wasm_threads = False
    config.shared_memory = False
    # GC objects and exceptions live on a heap outside linear memory: not served.
    config.wasm_gc = False
    config.wasm_exceptions = False
    return config


def wasmtime_cause(exc: BaseException) -> str:
    """wasmtime's root cause line, without the backtrace: the last of a numbered cause chain
    ("0: WebAssembly translation error / 1: ... threads support is not enabled")."""
    text = str(exc).strip()
    if "Caused by:" in text:
        text = text.rsplit("Caused by:", 1)[1].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    chain = [line for line in lines if _CHAIN_LINK.match(line)]
    line = _CHAIN_LINK.sub("", chain[-1]) if chain and lines[0] == chain[0] else lines[0]
    return line[:300]


class BoundedCompiler:
    """Compiles wasm to a serialized module in a child process, one compile at a time."""

    def __init__(self, fuel_metering: bool, seconds: float, memory_bytes: int) -> None:
        self.seconds = seconds
        self.memory_bytes = memory_bytes
        cpu_seconds = math.ceil(seconds * (os.cpu_count() or 1)) + 1
        self._argv = [sys.executable, "-I", "-S", "-c", _BOOT, *_IMPORT_PATH,
                      "fuel" if fuel_metering else "no-fuel", str(memory_bytes), str(cpu_seconds)]
        self._turn = threading.Lock()

    def compile(self, wasm: bytes) -> bytes:
        """The serialized module; BadRequest if it is invalid, Unprocessable over a limit."""
        with self._turn:
            returncode, artifact, stderr = self._run_child(wasm)
        if returncode == 0 and artifact:
            return artifact
        raise self._failure(returncode, stderr.decode("utf-8", "replace"))

    def _run_child(self, wasm: bytes) -> tuple[int, bytes, bytes]:
        """(returncode, stdout, stderr) of one compiler child, killed at the deadline."""
        try:
            child = subprocess.Popen(self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env={}, close_fds=True)
        except OSError as exc:   # out of processes or descriptors: try again later
            raise Unavailable(f"cannot start the wasm compiler process: {exc}") from None
        try:
            artifact, stderr = child.communicate(wasm, timeout=self.seconds)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise Unprocessable(
                f"compiling the workload took longer than {self.seconds:g} s and was stopped; "
                f"raise compile_seconds or send a smaller or simpler module") from None
        except BaseException:
            child.kill()
            child.communicate()
            raise
        return child.returncode, artifact, stderr

    def _failure(self, returncode: int, stderr: str) -> Exception:
        """The error for a child that did not hand back a module."""
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        last_line = lines[-1] if lines else ""
        if returncode == EXIT_INVALID:
            return BadRequest(_invalid_message(last_line))
        if returncode == EXIT_OUT_OF_MEMORY or any(sign in stderr for sign in _OOM_SIGNS):
            return Unprocessable(
                f"compiling the workload needed more than {self.memory_bytes / MIB:g} MiB and was "
                f"stopped; raise compile_memory_bytes or send a smaller or simpler module")
        return Internal(f"the wasm compiler process failed ({_how_it_ended(returncode)}): "
                        f"{last_line[:300]}")


def _how_it_ended(returncode: int) -> str:
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"


def _invalid_message(cause: str) -> str:
    for sign, message in _UNSERVED:
        if sign in cause:
            return f"{message} ({cause})"
    return f"the workload is not a valid wasm module: {cause}"


# ---------------------------------------------------------------------------------------------
# The child: python -I -S -c _BOOT <import path> fuel|no-fuel MEMORY_BYTES CPU_SECONDS
# (positional, and no argparse or pathlib: every import here is start-up time of a cold compile)


def _limit_self(memory_bytes: int, cpu_seconds: int) -> None:
    """Ceilings that hold even if the parent dies; no core file of a compiler that aborted."""
    resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _child(argv: list[str]) -> int:
    """Compile stdin to stdout within the ceilings; the exit status says how it went."""
    fuel, memory_bytes, cpu_seconds = argv
    _limit_self(int(memory_bytes), int(cpu_seconds))
    try:
        wasm = sys.stdin.buffer.read()
        engine = wasmtime.Engine(engine_config(fuel_metering=fuel == "fuel"))
        try:
            artifact = wasmtime.Module(engine, wasm).serialize()
        except wasmtime.WasmtimeError as exc:
            cause = wasmtime_cause(exc)
            print(cause, file=sys.stderr)
            return EXIT_OUT_OF_MEMORY if any(sign in cause for sign in _OOM_SIGNS) else EXIT_INVALID
        sys.stdout.buffer.write(artifact)
        sys.stdout.buffer.flush()
    except MemoryError:
        return EXIT_OUT_OF_MEMORY
    return 0
