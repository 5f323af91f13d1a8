"""Running one process for Aurae's `runtime.Core/RunExecutable`, and for every container of a cell.

The October 2022 daemon split the command on spaces, waited synchronously (blocking its event loop),
always reported pid -1, crashed on output that was not UTF-8 and sent `exit_code` as Rust's text
(`"exit status: 0"`). Users asked for all of that to work (FACTS.md, Aurae), so here:

* `split_command` splits like a POSIX shell would (quotes and backslashes honoured), and the argv
  runs without a shell: `sh -c '...'` is how a caller asks for one.
* `run` is asyncio all the way (exits come through asyncio's child watcher, pipes through the
  loop; nothing waits synchronously on it), so many runs at once never block each other or the loop. The child starts in a new session, so a timeout can stop the whole
  process group (what the command forked as well): SIGTERM, then SIGKILL after `grace_seconds`.
* stdout and stderr are read concurrently (a child that fills one pipe while we wait on the other
  would otherwise deadlock). Every complete line goes to `on_output` as it arrives, stamped in
  nanoseconds (for `observe.GetSubProcessStream`), and the totals come back at the end, each
  capped at `max_output_bytes` with a marker saying how much was cut. The cap bounds memory only:
  `on_output` still sees every line. Bytes are decoded as UTF-8 with `errors="replace"`.
* A process that cannot start (missing binary, permission denied, bad cwd) is an `Outcome` with
  status ERROR and a message naming the binary, never an exception: Aurae answered such a spawn
  with status ERROR too. `exit_code` is the decimal code (an int; the gRPC mapping makes it a
  string) and is None when the process did not exit by itself.

Status: COMPLETE when the process ran to its end (whatever its exit code, which the caller reads);
ERROR when it could not start, was killed by a signal or ran past its timeout; `message` says which.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping, Sequence

from bus import log

_log = log.get_logger("aurae.process")

COMPLETE = "COMPLETE"
ERROR = "ERROR"
STDOUT = "stdout"
STDERR = "stderr"

READ_CHUNK = 64 * 1024
CUT_MARKER = "\n[teebus: {cut} more bytes cut]"

OnStart = Callable[[int], Awaitable[None]]
OnOutput = Callable[[int, str, str, int], Awaitable[None]]


def split_command(text: str) -> list[str]:
    """Split `text` into an argv the way a POSIX shell would, without running one.

    Raises ValueError with a readable reason for unbalanced quotes, a trailing backslash or an
    empty command: a caller maps it to INVALID_ARGUMENT rather than running half a command.
    """
    if not isinstance(text, str):
        raise ValueError(f"the command must be text, not {type(text).__name__}")
    try:
        argv = shlex.split(text, comments=False, posix=True)
    except ValueError as exc:  # shlex says "No closing quotation" / "No escaped character"
        raise ValueError(f"cannot split the command {text!r}: {str(exc).lower()}") from None
    if not argv:
        raise ValueError("the command is empty")
    if any("\x00" in arg for arg in argv):
        raise ValueError("the command contains a NUL character")
    return argv


@dataclass(frozen=True)
class Limits:
    """How long a process may run and how much of its output is kept.

    `timeout_seconds` None means no timeout. `max_output_bytes` is per stream (stdout and stderr
    each). `max_line_bytes` bounds one `on_output` line: a longer line arrives in pieces, so a
    process that never prints a newline cannot grow our buffer without end. `drain_seconds` is how
    long the pipes may stay open after the process ended (a background child still holding them);
    after that the rest of the process group is killed and reading stops.
    """

    timeout_seconds: float | None = 60.0
    grace_seconds: float = 5.0
    max_output_bytes: int = 1024 * 1024
    max_line_bytes: int = 64 * 1024
    drain_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.timeout_seconds is not None and not 0 < self.timeout_seconds <= 7 * 24 * 3600:
            raise ValueError(f"timeout_seconds must be above 0 and at most a week, not {self.timeout_seconds}")
        if not 0 <= self.grace_seconds <= 3600:
            raise ValueError(f"grace_seconds must be from 0 to 3600, not {self.grace_seconds}")
        if not 0 <= self.max_output_bytes <= 1 << 30:
            raise ValueError(f"max_output_bytes must be from 0 to 1 GiB, not {self.max_output_bytes}")
        if not 1 <= self.max_line_bytes <= 16 << 20:
            raise ValueError(f"max_line_bytes must be from 1 to 16 MiB, not {self.max_line_bytes}")
        if not 0 <= self.drain_seconds <= 3600:
            raise ValueError(f"drain_seconds must be from 0 to 3600, not {self.drain_seconds}")


@dataclass(frozen=True)
class Outcome:
    """How a run ended. `pid` is None only when the process never started."""

    pid: int | None
    status: str                   # COMPLETE or ERROR
    exit_code: int | None         # the decimal code when the process exited by itself
    signal: str | None            # e.g. "SIGKILL" when a signal ended it
    timed_out: bool
    stdout: str
    stderr: str
    message: str
    stdout_cut: int = 0           # bytes left out of `stdout` by the cap
    stderr_cut: int = 0


@dataclass
class Capture:
    """One stream's reader state: the capped total, and the partial line not yet delivered.

    Shared by every caller of `run` (RunExecutable and each container of a cell), so capping,
    decoding and line splitting exist once.
    """

    channel: str
    limits: Limits
    kept: bytearray = field(default_factory=bytearray)
    cut: int = 0
    partial: bytearray = field(default_factory=bytearray)

    def keep(self, chunk: bytes) -> None:
        room = self.limits.max_output_bytes - len(self.kept)
        if room > 0:
            self.kept += chunk[:room]
        self.cut += max(0, len(chunk) - max(room, 0))

    def lines(self, chunk: bytes) -> list[str]:
        """Add `chunk`; return the lines it completes, decoded, without their "\n" (or "\r\n")."""
        self.partial += chunk
        out: list[str] = []
        while True:
            newline = self.partial.find(b"\n")
            if newline < 0 or newline > self.limits.max_line_bytes:
                if len(self.partial) <= self.limits.max_line_bytes:
                    return out
                end = _utf8_boundary(self.partial, self.limits.max_line_bytes)
                out.append(_decode(self.partial[:end]))
                del self.partial[:end]
                continue
            raw = self.partial[:newline]
            del self.partial[: newline + 1]
            out.append(_decode(raw[:-1] if raw.endswith(b"\r") else raw))

    def rest(self) -> list[str]:
        """At end of stream: the last line if it had no newline."""
        if not self.partial:
            return []
        line, self.partial = _decode(self.partial), bytearray()
        return [line]

    def text(self) -> str:
        body = _decode(self.kept)
        return body + CUT_MARKER.format(cut=self.cut) if self.cut else body


def _decode(raw: bytes | bytearray) -> str:
    return bytes(raw).decode("utf-8", errors="replace")


def _utf8_boundary(buf: bytearray, limit: int) -> int:
    """The largest cut at most `limit` that does not split a UTF-8 sequence (falls back to limit)."""
    for end in range(limit, max(limit - 4, 0), -1):
        if end >= len(buf) or buf[end] & 0xC0 != 0x80:
            return end
    return limit


async def run(
    argv: Sequence[str],
    limits: Limits,
    *,
    on_start: OnStart | None = None,
    on_output: OnOutput | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    pass_fds: Sequence[int] = (),
) -> Outcome:
    """Run `argv` (no shell) to its end, its timeout or its failure to start; never raise for those.

    `on_start(pid)` is awaited right after the spawn, `on_output(pid, channel, line, ts_ns)` for
    every line as it arrives; both should be quick (queue the line, do not send it from here), as
    a slow callback holds up reading and so, through the pipe, the process. An exception from a
    callback is logged and that callback is not called again: it never ends the run.
    `pass_fds` keeps those descriptors open in the child (cells pass a status pipe this way).
    Cancelling `run` kills the process group and reaps it before the cancellation goes on.
    """
    argv = [os.fspath(arg) for arg in argv]
    if not argv:
        raise ValueError("argv is empty")
    try:
        child = await _Child.spawn(argv, env, cwd, pass_fds)
    except OSError as exc:
        return _not_started(argv[0], cwd, exc)
    try:
        return await _supervise(child, limits, on_start, on_output)
    finally:
        child.close()  # releases pipes a leftover process may still hold; the child is reaped


class _Child:
    """A started process: its pid, its two output streams, and `exited`, set when it ends.

    Spawned with subprocess.Popen (vfork + exec: about a millisecond however large this process is)
    rather than the loop's subprocess_exec, which under uvloop forks the whole process (8-10 ms per
    spawn measured, bench/aurae_run.py). Its end is seen through a pidfd on the loop, so nothing
    waits in a thread and `exited` does not wait for the pipes (a background child that keeps stdout
    open must not hold the run, or its timeout, hostage).
    """

    def __init__(self, process: subprocess.Popen, stdout: asyncio.StreamReader, stderr: asyncio.StreamReader,
                 transports: list[asyncio.BaseTransport], exited: asyncio.Future[None]) -> None:
        self.process, self.stdout, self.stderr = process, stdout, stderr
        self._transports, self.exited = transports, exited

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @classmethod
    async def spawn(cls, argv: list[str], env: Mapping[str, str] | None, cwd: str | os.PathLike[str] | None,
                    pass_fds: Sequence[int]) -> "_Child":
        loop = asyncio.get_running_loop()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
                                   pass_fds=tuple(pass_fds), close_fds=True)
        readers, transports = [], []
        try:
            for pipe in (process.stdout, process.stderr):
                reader = asyncio.StreamReader(limit=READ_CHUNK, loop=loop)
                transport, _ = await loop.connect_read_pipe(
                    lambda r=reader: asyncio.StreamReaderProtocol(r, loop=loop), pipe)
                readers.append(reader)
                transports.append(transport)
            return cls(process, readers[0], readers[1], transports, _exit_of(process, loop))
        except BaseException:           # started but not watched: end it here rather than leave it
            _killpg(process.pid, signal.SIGKILL)
            process.wait()
            for transport in transports:
                transport.close()
            raise

    def close(self) -> None:
        for transport in self._transports:
            transport.close()


def _exit_of(process: subprocess.Popen, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    """A future set when `process` has ended (and been reaped), watched through a pidfd."""
    exited: asyncio.Future[None] = loop.create_future()
    pidfd = os.pidfd_open(process.pid)

    def ended() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        process.wait()           # it has ended: this reaps it at once
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, ended)
    return exited


def _not_started(binary: str, cwd: object, exc: OSError) -> Outcome:
    reason = exc.strerror or str(exc)
    bad_cwd = cwd is not None and exc.filename is not None and os.fspath(exc.filename) == os.fspath(cwd)
    where = f" (in {os.fspath(cwd)!r})" if bad_cwd else ""
    message = f"cannot start {binary!r}{where}: {reason}"
    return Outcome(None, ERROR, None, None, False, "", "", message)


async def _supervise(child: _Child, limits: Limits, on_start: OnStart | None,
                     on_output: OnOutput | None) -> Outcome:
    pid = child.pid
    sink = _Sink(pid, on_output)
    captures = (Capture(STDOUT, limits), Capture(STDERR, limits))
    readers = [asyncio.create_task(_read(stream, cap, sink))
               for stream, cap in zip((child.stdout, child.stderr), captures)]
    try:
        if on_start is not None:
            await _call_safely(on_start, "on_start", pid)
        timed_out, stopped_with = await _wait_or_stop(pid, child.exited, limits)
        await _drain(pid, readers, limits)
    except BaseException:
        _killpg(pid, signal.SIGKILL)
        for task in readers:
            task.cancel()
        await asyncio.shield(child.exited)
        raise
    return _outcome(pid, child.returncode, timed_out, stopped_with, limits, captures)


async def _wait_or_stop(pid: int, exited: asyncio.Future[None], limits: Limits) -> tuple[bool, str | None]:
    """Wait for the process; past its timeout, TERM the group, then KILL it after the grace."""
    try:
        await asyncio.wait_for(asyncio.shield(exited), limits.timeout_seconds)
        return False, None
    except asyncio.TimeoutError:
        pass
    _killpg(pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(exited), limits.grace_seconds or 0.001)
        return True, "SIGTERM"
    except asyncio.TimeoutError:
        _killpg(pid, signal.SIGKILL)
        await exited
        return True, "SIGKILL"


async def _drain(pid: int, readers: list[asyncio.Task[None]], limits: Limits) -> None:
    """Let the readers reach end of stream; if something the process left behind still holds the
    pipes after `drain_seconds`, kill what is left of the group and stop reading."""
    done, pending = await asyncio.wait(readers, timeout=limits.drain_seconds)
    if pending:
        _killpg(pid, signal.SIGKILL)
        done, pending = await asyncio.wait(pending, timeout=0.5)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class _Sink:
    """Delivers lines to `on_output`; a callback that fails once is dropped (and logged)."""

    def __init__(self, pid: int, on_output: OnOutput | None) -> None:
        self.pid = pid
        self.on_output = on_output

    async def deliver(self, channel: str, lines: list[str]) -> None:
        for line in lines:
            if self.on_output is None:
                return
            if not await _call_safely(self.on_output, "on_output", self.pid, channel, line, time.time_ns()):
                self.on_output = None


async def _call_safely(callback: Callable[..., Awaitable[None]], name: str, *args: object) -> bool:
    try:
        await callback(*args)
        return True
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a caller's bug must not end the run or lose the output
        _log.warning("aurae process callback failed; not calling it again", callback=name, error=repr(exc))
        return False


async def _read(stream: asyncio.StreamReader | None, capture: Capture, sink: _Sink) -> None:
    if stream is None:
        return
    while chunk := await stream.read(READ_CHUNK):
        capture.keep(chunk)
        await sink.deliver(capture.channel, capture.lines(chunk))
    await sink.deliver(capture.channel, capture.rest())


def _outcome(pid: int, returncode: int | None, timed_out: bool, stopped_with: str | None,
             limits: Limits, captures: tuple[Capture, Capture]) -> Outcome:
    out, err = captures
    common = dict(stdout=out.text(), stderr=err.text(), stdout_cut=out.cut, stderr_cut=err.cut)
    if timed_out:
        how = ("stopped with SIGTERM" if stopped_with == "SIGTERM"
               else f"SIGTERM ignored, killed with SIGKILL after {limits.grace_seconds:g}s")
        message = f"timed out after {limits.timeout_seconds:g}s; {how}"
        return Outcome(pid, ERROR, None, signal_name(-returncode) if returncode and returncode < 0 else None,
                       True, message=message, **common)
    assert returncode is not None
    if returncode < 0:
        name = signal_name(-returncode)
        return Outcome(pid, ERROR, None, name, False, message=f"killed by signal {name}", **common)
    return Outcome(pid, COMPLETE, returncode, None, False, message=f"exited with code {returncode}", **common)


def signal_name(number: int) -> str:
    """`SIGKILL` for 9; a real-time or unknown signal keeps its number (`SIG34`)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"
