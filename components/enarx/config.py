"""Enarx settings: the `[enarx]` section of teebus.toml and the "Enarx keeps" command-line options.

Where the keep manager listens and which bus its keep loaders dial come from the deployment
(Context: http_host, ports, nats_url), not from here. `host` names this keep manager's host: the keeps
it starts carry it, and it watches, counts and frees only keeps of that host, so several hosts' keep
managers can share one bus (docs/enarx.md "Hosts").
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from bus.config import option
from components.enarx.backends import DEVICES, Backends
from components.enarx.messages import HOST_NAME
from components.enarx.wasm_limits import Limits


def _this_host() -> str:
    return socket.gethostname() or "localhost"


@dataclass(frozen=True)
class EnarxConfig:
    host: str = field(default_factory=_this_host)   # this keep manager's host: it owns the keeps named so
    keep_loaders: dict[str, Path] = field(default_factory=dict, metadata=option(
        "--keep-loader", "platform keep loader for Kvm, Sev or Sgx (teebus ships only Nil's)",
        metavar="BACKEND=PATH"))
    dev_root: Path = Path("/")                # where the device probe looks for /dev/kvm, /dev/sgx ...
    max_keeps: int = field(default=64, metadata=option("--max-keeps", "live keeps on this host (default 64)",
                                                       metavar="N"))
    max_ended_keeps: int = 1000               # Shutdown/Error records kept for GET /keeps; older go
    loader_start_timeout: float = 20.0        # keep loader process up and answering
    evidence_timeout: float = 120.0           # keep started -> "request-evidence" received
    handshake_timeout: float = 120.0          # evidence sent -> "launch" received
    max_keeps_per_client: int = field(default=16, metadata=option(
        "--max-keeps-per-client", "live keeps one client address may hold (default 16)", metavar="N"))
    shutdown_timeout: float = 10.0            # keep loader gone after a shutdown request
    watch_interval: float = 1.0               # how often live keeps' processes are checked
    stop_keeps_on_exit: bool | None = None    # None: when the bus is teebus up's own (it ends with it)
    workload_limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not HOST_NAME.fullmatch(self.host):
            raise ValueError(f"host must be a host name, not {self.host!r}")
        for backend in self.keep_loaders:
            if backend not in DEVICES:
                raise ValueError(f"--keep-loader takes BACKEND=PATH with BACKEND {', '.join(DEVICES)}, "
                                 f"got {backend!r}")
        object.__setattr__(self, "keep_loaders",
                           {k: Path(v).expanduser().resolve() for k, v in self.keep_loaders.items()})
        for name in ("max_keeps", "max_ended_keeps", "max_keeps_per_client"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("loader_start_timeout", "evidence_timeout", "handshake_timeout", "shutdown_timeout",
                     "watch_interval"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {getattr(self, name)}")

    @property
    def backends(self) -> Backends:
        return Backends(self.dev_root, dict(self.keep_loaders))
