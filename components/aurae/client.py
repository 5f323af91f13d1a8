"""A Python client of the Aurae socket: gRPC over a Unix socket with the client certificates of
components/aurae/pki.py, as Aurae's own clients speak it (server name `server.unsafe.aurae.io`).

    async with AuraeClient(socket, pki_dir) as aurae:
        status = await aurae.run("sh -c 'echo hi'")
        async for line in aurae.logs(status.pid):
            ...

Every failure is an `AuraeError` carrying the gRPC status code and the daemon's message; a socket
nobody serves is UNAVAILABLE at once (calls never wait for the daemon to appear). Unary calls have
a deadline (`timeout`, or the client's default); streams run until the daemon ends them or the
iterator is closed, which cancels the call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import grpc

from components.aurae.protos import (meta_pb2, observe_pb2, observe_pb2_grpc, runtime_pb2, runtime_pb2_grpc,
                                        schedule_pb2, schedule_pb2_grpc)
from components.aurae import pki

MAX_SUN_PATH = 107              # bytes an AF_UNIX address holds on Linux
DEFAULT_TIMEOUT = 60.0          # s for calls that run no process
RUN_TIMEOUT = 330.0             # s for RunExecutable/RunCell: the daemon's own timeout (300) and then some
MAX_MESSAGE_BYTES = 256 * 1024 * 1024   # a reply carries a process's whole output: trust the daemon's caps
COMPLETE, ERROR = "STATUS_COMPLETE", "STATUS_ERROR"


class AuraeError(Exception):
    """A call failed: `code` (grpc.StatusCode) and the daemon's `message`."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def of(cls, exc: grpc.aio.AioRpcError) -> "AuraeError":
        return cls(exc.code(), exc.details() or "")


@dataclass(frozen=True)
class ExecutableStatus:
    """What RunExecutable answered. `exit_code` is None when the process did not exit by itself
    (a signal, a timeout) or never started; `status` is the meta.Status name."""

    name: str
    message: str
    pid: int
    status: str
    stdout: str
    stderr: str
    exit_code: int | None

    @property
    def ok(self) -> bool:
        return self.status == COMPLETE and self.exit_code == 0


@dataclass(frozen=True)
class ContainerStatus:
    name: str
    message: str
    pid: int
    status: str


@dataclass(frozen=True)
class CellStatus:
    name: str
    message: str
    status: str
    containers: tuple[ContainerStatus, ...]


@dataclass(frozen=True)
class DaemonStatus:
    name: str
    message: str


@dataclass(frozen=True)
class LogLine:
    """One LogItem: `timestamp` in nanoseconds since the epoch, as the daemon stamped it."""

    channel: str
    line: str
    timestamp: int


@dataclass(frozen=True)
class Scheduled:
    """An executable ShowEnabled/ShowDisabled listed; `message` says its state."""

    name: str
    message: str
    command: str
    comment: str


@dataclass(frozen=True)
class Credentials:
    """The PEM material of a client: its CA, its certificate and its key."""

    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def load(cls, pki_dir: Path | None = None, *, client: str = pki.FIRST_CLIENT, cert: Path | None = None,
             key: Path | None = None, ca: Path | None = None) -> "Credentials":
        """From a PKI folder (`<client>.crt`/`.key` and `ca.crt`), or from the three paths given."""
        if pki_dir is not None:
            paths = pki.Paths.of(pki_dir)
            pair_cert, pair_key = paths.pair(client)
            cert, key, ca = cert or pair_cert, key or pair_key, ca or paths.ca_cert
        if cert is None or key is None or ca is None:
            raise ValueError("give a PKI folder, or all three of the client certificate, its key and the CA")
        return cls(_read(ca, "CA certificate"), _read(cert, "client certificate"), _read(key, "client key"))


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"the {what} {path} does not exist (`teebus aurae cert NAME` issues a client "
                                "pair; the daemon creates the PKI on its first start)") from None


class AuraeClient:
    """One channel to the Aurae socket; use as `async with`."""

    def __init__(self, socket_path: Path | str, pki_dir: Path | str | None = None, *, client: str = pki.FIRST_CLIENT,
                 cert: Path | None = None, key: Path | None = None, ca: Path | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = Path(socket_path)
        self.credentials = Credentials.load(Path(pki_dir) if pki_dir is not None else None, client=client,
                                            cert=cert, key=key, ca=ca)
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._directory_fd: int | None = None

    async def __aenter__(self) -> "AuraeClient":
        credentials = grpc.ssl_channel_credentials(self.credentials.ca, self.credentials.key, self.credentials.cert)
        options = [("grpc.ssl_target_name_override", pki.SERVER_NAME), ("grpc.default_authority", pki.SERVER_NAME),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        self._channel = grpc.aio.secure_channel(f"unix:{self._address()}", credentials, options=options)
        self._core = runtime_pb2_grpc.CoreStub(self._channel)
        self._observe = observe_pb2_grpc.ObserveStub(self._channel)
        self._scheduling = schedule_pb2_grpc.ScheduleExecutableStub(self._channel)
        self._schedule = schedule_pb2_grpc.ScheduleStub(self._channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        if self._directory_fd is not None:
            os.close(self._directory_fd)
            self._directory_fd = None

    def _address(self) -> str:
        """The socket's path, or a /proc/self/fd path to it when too long for an AF_UNIX address
        (the directory stays open for the channel's life: it reconnects through it)."""
        text = str(self.socket_path.absolute())
        if len(os.fsencode(text)) <= MAX_SUN_PATH:
            return text
        self._directory_fd = os.open(self.socket_path.parent, os.O_PATH | os.O_DIRECTORY)
        return f"/proc/self/fd/{self._directory_fd}/{self.socket_path.name}"

    async def _unary(self, method: Any, request: Any, timeout: float | None) -> Any:
        if self._channel is None:
            raise RuntimeError("use the client inside `async with`")
        try:
            return await method(request, timeout=timeout or self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise AuraeError.of(exc) from None

    async def _stream(self, call: Any) -> AsyncIterator[LogLine]:
        try:
            async for item in call:
                yield LogLine(item.channel, item.line, item.timestamp)
        except grpc.aio.AioRpcError as exc:
            raise AuraeError.of(exc) from None
        finally:
            call.cancel()

    # -- runtime.Core -----------------------------------------------------------------------------

    async def run(self, command: str, *, comment: str = "", timeout: float | None = None) -> ExecutableStatus:
        """Run `command` (split like a shell would, run without one) and wait for its end."""
        reply = await self._unary(self._core.RunExecutable,
                                  runtime_pb2.Executable(command=command, comment=comment), timeout or RUN_TIMEOUT)
        return ExecutableStatus(reply.meta.name, reply.meta.message, reply.proc.pid,
                                meta_pb2.Status.Name(reply.status), reply.stdout, reply.stderr,
                                _exit_code(reply.exit_code))

    async def run_cell(self, name: str, containers: Sequence[tuple[str, str]], *,
                       timeout: float | None = None) -> CellStatus:
        """Run a cell of `containers`, each (name, image), and wait for all of them."""
        cell = runtime_pb2.Cell(meta=meta_pb2.AuraeMeta(name=name), containers=[
            runtime_pb2.Container(meta=meta_pb2.AuraeMeta(name=n), image=image) for n, image in containers])
        reply = await self._unary(self._core.RunCell, cell, timeout or RUN_TIMEOUT)
        return CellStatus(reply.meta.name, reply.meta.message, meta_pb2.Status.Name(reply.status), tuple(
            ContainerStatus(c.meta.name, c.meta.message, c.proc.pid, meta_pb2.Status.Name(c.status))
            for c in reply.container_statuses))

    # -- observe.Observe ---------------------------------------------------------------------------

    async def status(self, *, timeout: float | None = None) -> DaemonStatus:
        reply = await self._unary(self._observe.Status, observe_pb2.StatusRequest(), timeout)
        return DaemonStatus(reply.meta.name, reply.meta.message)

    def daemon_logs(self) -> AsyncIterator[LogLine]:
        """The daemon's log lines from now on, until the daemon ends the stream or you stop reading."""
        return self._stream(self._observe.GetAuraeDaemonLogStream(observe_pb2.GetAuraeDaemonLogStreamRequest()))

    def logs(self, pid: int, channel: str = "stdout") -> AsyncIterator[LogLine]:
        """A process's `channel` ("stdout" or "stderr"): the lines kept so far, then new ones until it ends."""
        channels = {"stdout": observe_pb2.CHANNEL_STDOUT, "stderr": observe_pb2.CHANNEL_STDERR}
        if channel not in channels:
            raise ValueError(f"channel must be stdout or stderr, not {channel!r}")
        request = observe_pb2.GetSubProcessStreamRequest(channel_type=channels[channel], process_id=pid)
        return self._stream(self._observe.GetSubProcessStream(request))

    # -- schedule -------------------------------------------------------------------------------------

    async def enable(self, name: str, command: str, *, comment: str = "", timeout: float | None = None) -> str:
        """Keep `command` running as `name`; returns the daemon's message (its pid, say)."""
        reply = await self._unary(self._scheduling.Enable, _executable(name, command, comment), timeout)
        return reply.meta.message

    async def disable(self, name: str, *, timeout: float | None = None) -> str:
        reply = await self._unary(self._scheduling.Disable, _executable(name), timeout)
        return reply.meta.message

    async def destroy(self, name: str, *, timeout: float | None = None) -> str:
        reply = await self._unary(self._scheduling.Destroy, _executable(name), timeout)
        return reply.meta.message

    async def show(self, disabled: bool = False, *, timeout: float | None = None) -> list[Scheduled]:
        if disabled:
            reply = await self._unary(self._schedule.ShowDisabled, schedule_pb2.ShowDisabledRequest(), timeout)
        else:
            reply = await self._unary(self._schedule.ShowEnabled, schedule_pb2.ShowEnabledRequest(), timeout)
        return [Scheduled(e.meta.name, e.meta.message, e.command, e.comment) for e in reply.Executables]


def _executable(name: str, command: str = "", comment: str = "") -> runtime_pb2.Executable:
    return runtime_pb2.Executable(meta=meta_pb2.AuraeMeta(name=name), command=command, comment=comment)


def _exit_code(text: str) -> int | None:
    """The decimal code teebus sends; Aurae's own "exit status: N" text is read too."""
    digits = text.rsplit(":", 1)[-1].strip()
    try:
        return int(digits)
    except ValueError:
        return None
