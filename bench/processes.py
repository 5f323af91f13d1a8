"""Child processes of a benchmark: started with their output in log files, stopped on every exit path.

Also reads a process's CPU time from /proc, so a benchmark can say which process a request costs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import orjson

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
STOP_GRACE = 5.0
_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A benchmark could not run; the message says what failed."""


def child_environment() -> dict[str, str]:
    """This environment, with the repository importable (bench/ is not an installed package)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT)}


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far (Linux /proc); 0.0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime: fields 14 and 15 of stat


def machine_busy_seconds() -> float:
    """CPU time every core of the machine spent busy so far (all processes, Linux /proc/stat)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / _TICKS  # user nice system idle iowait irq softirq steal


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 8) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(f"    {line}" for line in text.splitlines()[-lines:]) or "    (no output)"


@dataclass
class Children:
    """Every process a benchmark started; `stop_all` ends them newest first."""

    log_dir: Path
    started: list[Child] = field(default_factory=list)

    async def start(self, name: str, argv: list[str]) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "wb") as output:
            # A session of its own: Ctrl-C reaches only us, and we stop the children in order.
            process = await asyncio.create_subprocess_exec(
                *argv, cwd=REPO_ROOT, env=child_environment(), stdin=asyncio.subprocess.DEVNULL,
                stdout=output, stderr=output, start_new_session=True)
        child = Child(name, process, log_path)
        self.started.append(child)
        return child

    def check_alive(self) -> None:
        for child in self.started:
            if child.process.returncode is not None:
                raise BenchError(f"{child.name} exited with {child.process.returncode}:\n{child.tail()}")

    def tails(self) -> str:
        return "\n".join(f"  {child.name}:\n{child.tail()}" for child in self.started)

    async def stop_all(self) -> None:
        while self.started:
            await stop(self.started.pop().process)


async def stop(process: asyncio.subprocess.Process, grace: float = STOP_GRACE) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    if process.returncode is not None:
        return
    try:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), grace)
    except ProcessLookupError:
        pass
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()


def run_and_report(label: str, work: Callable[[], Awaitable[T]], expected: tuple[type[Exception], ...], *,
                   as_json: bool, to_json: Callable[[T], Any], print_text: Callable[[T], None]) -> int:
    """`run_until_done`, then the report on stdout: one JSON document (`as_json`) or text; the exit code."""
    code, report = run_until_done(label, work, expected)
    if report is not None:
        if as_json:
            print(orjson.dumps(to_json(report), option=orjson.OPT_INDENT_2).decode())
        else:
            print_text(report)
    return code


def run_until_done(label: str, work: Callable[[], Awaitable[T]],
                   expected: tuple[type[Exception], ...]) -> tuple[int, T | None]:
    """Run a benchmark to its end: (exit code, result); Ctrl-C and SIGTERM still stop every child."""
    async def cancellable() -> T:
        task = asyncio.current_task()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await work()

    try:
        return 0, asyncio.run(cancellable())
    except KeyboardInterrupt:
        print("interrupted; every process was stopped", file=sys.stderr)
        return 130, None
    except asyncio.CancelledError:
        print("terminated; every process was stopped", file=sys.stderr)
        return 143, None
    except expected as exc:
        print(f"{label}: {exc}", file=sys.stderr)
        return 1, None
