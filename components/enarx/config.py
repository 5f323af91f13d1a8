"""Enarx settings, from `Context.options["enarx"]` (filled by the launcher from the command line)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from components.enarx.backends import Backends


@dataclass(frozen=True)
class EnarxConfig:
    nats_url: str = "nats://127.0.0.1:4222"   # what keep loader processes dial
    address: str = "127.0.0.1"                # the keep manager's address, advertised in contracts
    port: int = 3030                          # ... and its port
    wasmldr_host: str = "127.0.0.1"           # where each keep's wasmldr listens
    wasmldr_base_port: int = 3040             # the first keep's wasmldr port; later keeps count up
    backends: Backends = field(default_factory=Backends)
    max_keeps: int = 64                       # live keeps on this host
    max_ended_keeps: int = 1000               # Shutdown/Error records kept for GET /keeps; older go
    loader_start_timeout: float = 20.0        # keep loader process up and answering
    handshake_timeout: float = 120.0          # evidence sent -> "launch" received
    shutdown_timeout: float = 10.0            # keep loader gone after a shutdown request
    watch_interval: float = 1.0               # how often live keeps' processes are checked
    stop_keeps_on_exit: bool = False          # `teebus up` stops its keeps; `teebus run` leaves them
    workload_limits: dict[str, Any] = field(default_factory=dict)  # wasm_runner.Limits overrides

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "EnarxConfig":
        values = dict(options.get("enarx") or {})
        if "nats_url" not in values and options.get("nats_url"):
            values["nats_url"] = options["nats_url"]
        if isinstance(values.get("backends"), dict):
            spec = values["backends"]
            values["backends"] = Backends(Path(spec.get("dev_root", "/")),
                                          {k: Path(v) for k, v in (spec.get("loaders") or {}).items()})
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown enarx settings {', '.join(sorted(unknown))}")
        return cls(**values)
