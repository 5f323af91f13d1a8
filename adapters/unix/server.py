"""The shared Unix-socket server base: private sockets (0600), stale sockets cleaned, clean stop."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path
from typing import Awaitable, Callable

from bus import log

ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
_log = log.get_logger("adapters.unix")


class SocketInUse(RuntimeError):
    """Another live process already serves this socket path."""


def _is_live(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(str(path))
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
            self._server = await asyncio.start_unix_server(self._handler, path=str(self.path), limit=self._limit)
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
