"""Where things live and listen; every default is the documented one and every value configurable."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.http.enarx import DEFAULT_PORTS as ENARX_PORTS

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = Path("./teebus-data")
DEFAULT_NATS_PORT = 4222


@dataclass
class Settings:
    data_dir: Path = DEFAULT_DATA_DIR
    nats_url: str | None = None           # join an existing deployment instead of embedding one
    nats_host: str = "127.0.0.1"
    nats_port: int = DEFAULT_NATS_PORT
    nats_conf: Path = REPO_ROOT / "nats.conf"
    http_host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=dict)  # site name -> port overrides
    log_level: str = "info"
    enarx: dict[str, Any] = field(default_factory=dict)  # components/enarx/config.py fields

    def component_options(self) -> dict[str, Any]:
        """What every component's Context carries: the bus URL and each system's settings."""
        ports = {**ENARX_PORTS, **self.ports}
        return {"nats_url": self.url, "enarx": {
            "address": self.http_host, "port": ports["enarx-keepmgr"], "wasmldr_host": self.http_host,
            "wasmldr_base_port": ports["enarx-wasmldr"], "stop_keeps_on_exit": self.embedded, **self.enarx}}

    @property
    def url(self) -> str:
        return self.nats_url or f"nats://{self.nats_host}:{self.nats_port}"

    @property
    def embedded(self) -> bool:
        return self.nats_url is None

    def resolved(self) -> "Settings":
        """The same settings with an absolute data directory (children may change directory)."""
        self.data_dir = self.data_dir.expanduser().resolve()
        return self


def parse_port_overrides(values: list[str]) -> dict[str, int]:
    """`--port mesatee-kms=7016` style overrides; a clear error on anything else."""
    ports = {}
    for value in values:
        name, sep, number = value.partition("=")
        if not sep or not number.isdigit() or not 0 < int(number) < 65536:
            raise ValueError(f"--port takes SITE=PORT (e.g. mesatee-kms=7016), got {value!r}")
        ports[name] = int(number)
    return ports


def parse_keep_loaders(values: list[str]) -> dict[str, str]:
    """`--keep-loader Kvm=/opt/enarx/kvm-loader` style settings; a clear error on anything else."""
    loaders = {}
    for value in values:
        backend, sep, path = value.partition("=")
        if not sep or backend not in ("Kvm", "Sev", "Sgx") or not path:
            raise ValueError(f"--keep-loader takes BACKEND=PATH with BACKEND Kvm, Sev or Sgx, got {value!r}")
        loaders[backend] = str(Path(path).expanduser().resolve())
    return loaders
