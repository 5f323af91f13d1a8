"""The shared Unix-socket server base: private sockets (0600), stale sockets cleaned, clean stop."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Iterator, Protocol

from bus import log
from bus.requester import Requester

ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Listener(Protocol):
    """What a `unix` adapter's target, `(data_dir: Path, config) -> list[Listener]`, declares to the
    launcher: a named socket that serves itself once given the requester of its `role` (a line
    protocol on asyncio streams is a `Socket`; a gRPC server binds its socket its own way)."""

    name: str
    path: Path
    role: str

    async def start(self, requester: Requester) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Socket:
    """A Unix socket whose connections `serve(requester)` handles as asyncio streams."""

    name: str
    path: Path
    role: str
    serve: Callable[[Requester], ConnectionHandler]
    limit: int = 1024 * 1024          # the stream reader's buffer bound
    _server: "UnixServer | None" = field(default=None, repr=False)

    async def start(self, requester: Requester) -> None:
        self._server = UnixServer(self.path, self.serve(requester), self.limit)
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None


_log = log.get_logger("adapters.unix")
MAX_SUN_PATH = 107  # bytes a socket address may hold on Linux, without the final NUL


@contextmanager
def reachable(path: Path) -> Iterator[str]:
    """An address for `path` the kernel accepts: itself, or via /proc/self/fd when it is too long.

    A data directory deep in the file system makes socket paths longer than an AF_UNIX address
    holds; binding or connecting through an open descriptor of the directory reaches the same file.
    """
    text = str(path)
    if len(os.fsencode(text)) <= MAX_SUN_PATH:
        yield text
        return
    directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{directory}/{path.name}"
    finally:
        os.close(directory)


class SocketInUse(RuntimeError):
    """Another live process already serves this socket path."""


def _is_live(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            with reachable(path) as address:
                probe.connect(address)
        except OSError:
            return False
    return True


def clear_stale(path: Path) -> None:
    """Remove a socket file left by a dead process; refuse to steal one that still answers."""
    if not path.exists() and not path.is_symlink():
        return
    if not stat.S_ISSOCK(path.lstat().st_mode):
        raise FileExistsError(f"{path} exists and is not a socket; move it away first")
    if _is_live(path):
        raise SocketInUse(f"{path} is served by a running process; stop it or choose another path")
    path.unlink()
    _log.info("removed stale socket", path=str(path))


class UnixServer:
    """Serves `handler` on a Unix socket only its owner may open."""

    def __init__(self, path: Path, handler: ConnectionHandler, limit: int = 1024 * 1024) -> None:
        self.path = path
        self._handler = handler
        self._limit = limit
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        clear_stale(self.path)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            with reachable(self.path) as address:
                self._server = await asyncio.start_unix_server(self._handler, path=address, limit=self._limit)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        _log.info("unix socket listening", path=str(self.path))

    async def stop(self, grace: float = 5.0) -> None:
        """Close the socket and remove its file; a server that never bound touches nothing."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        if hasattr(server, "close_clients"):  # Python 3.13+: do not wait on idle clients
            server.close_clients()
        try:
            await asyncio.wait_for(server.wait_closed(), grace)
        except asyncio.TimeoutError:
            _log.warning("clients still connected at stop", path=str(self.path))
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
