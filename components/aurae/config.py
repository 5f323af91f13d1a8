"""Aurae settings: the `[aurae]` section of teebus.toml and its command-line options."""

from __future__ import annotations

import grp
import re
import socket
from dataclasses import dataclass, field

from bus.config import option

_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def _this_host() -> str:
    return socket.gethostname() or "localhost"


@dataclass(frozen=True)
class AuraeConfig:
    host: str = field(default_factory=_this_host)   # this node: its runtime, observe and schedule serve it
    socket: str = field(default="", metadata=option(
        "--aurae.socket", "the gRPC socket (default <data-dir>/aurae/aurae.sock; Aurae's own is "
        "/var/run/aurae/aurae.sock)", metavar="PATH"))
    socket_group: str = field(default="", metadata=option(
        "--aurae.socket-group", "let this group's members use the socket too (mode 0660; default: only "
        "this user, 0600); a group name or number", metavar="GROUP"))
    timeout_seconds: float = field(default=300.0, metadata=option(
        "--aurae.timeout", "a RunExecutable process is stopped after this long (default 300)", metavar="SECONDS"))
    grace_seconds: float = 5.0                 # SIGTERM, then SIGKILL after this long
    max_output_bytes: int = 1024 * 1024        # per stream of a RunExecutable reply (the rest is cut, with a marker)
    max_concurrent_runs: int = 256             # processes at once; more is UNAVAILABLE
    output_kept_bytes: int = 8 * 1024 * 1024   # per process, kept for GetSubProcessStream
    output_kept_seconds: float = 86_400.0      # how long a process's output is kept
    cell_memory_bytes: int = 256 * 1024 * 1024  # each container's memory limit
    cell_pids: int = 256                       # each container's process limit
    restart_backoff_seconds: float = 1.0       # a scheduled executable's first restart delay (doubles)
    restart_backoff_max_seconds: float = 60.0

    def socket_gid(self) -> int | None:
        """The socket's group id (None: no group); ValueError for a group this machine lacks."""
        if not self.socket_group:
            return None
        try:
            return grp.getgrnam(self.socket_group).gr_gid
        except KeyError:
            if self.socket_group.isdigit():
                return int(self.socket_group)
            raise ValueError(f"socket_group: no group named {self.socket_group!r} on this machine "
                             "(`getent group` lists them)") from None

    def __post_init__(self) -> None:
        if not _HOST.fullmatch(self.host):
            raise ValueError(f"host must be a host name, not {self.host!r}")
        if self.socket_group:
            self.socket_gid()                   # the group must exist here
        if not 0 < self.timeout_seconds <= 7 * 86_400:
            raise ValueError(f"timeout_seconds must be above 0 and at most a week, not {self.timeout_seconds}")
        for name in ("grace_seconds", "output_kept_seconds", "restart_backoff_seconds",
                     "restart_backoff_max_seconds"):
            if not 0 < getattr(self, name) <= 30 * 86_400:
                raise ValueError(f"{name} must be above 0 and at most 30 days, not {getattr(self, name)}")
        for name, low, high in (("max_output_bytes", 1024, 1 << 30), ("max_concurrent_runs", 1, 100_000),
                                ("output_kept_bytes", 1024, 1 << 32), ("cell_memory_bytes", 1 << 20, 1 << 44),
                                ("cell_pids", 1, 4_194_304)):
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be {low} to {high}, not {getattr(self, name)}")
