"""Cyborg settings: the `[cyborg]` section of teebus.toml."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from components.cyborg.subjects import DRIVERS


def _this_host() -> str:
    return socket.gethostname() or "localhost"


@dataclass(frozen=True)
class CyborgConfig:
    host: str = field(default_factory=_this_host)   # this machine's name: its agent and drivers serve it
    drivers: tuple[str, ...] = DRIVERS             # the built-in drivers this host runs
    sysfs_root: str = "/sys"                       # where the pci driver reads the kernel's devices
    inventory_file: str = ""                       # the inventory driver's devices (TOML or JSON); none if empty
    rediscover_seconds: float = 60.0               # the agent rediscovers every driver this often
    heartbeat_seconds: float = 10.0                # an agent renews its lease this often
    lease_heartbeats: int = 3                      # a lease lasts this many heartbeats: then the agent is LOST
    healthy_after: int = 3                         # clean probes before an Unhealthy device is Healthy again
    driver_timeout_seconds: float = 5.0            # an external driver's answer takes at most this
    discovery_timeout_seconds: float = 30.0        # a driver's discovery (sysfs, NVML, a file) takes at most this
    forget_after: int = 10                         # rediscoveries a vanished device stays reported (Unhealthy)
    max_devices_per_host: int = 1024
    history_per_device: int = 16                   # health transitions the conductor keeps per device
    removed_kept: int = 10_000                     # removed devices the conductor remembers for `since`

    def __post_init__(self) -> None:
        if not self.host or len(self.host) > 253 or any(c.isspace() for c in self.host):
            raise ValueError(f"host must be a host name (1-253 characters, no spaces), not {self.host!r}")
        unknown = [d for d in self.drivers if d not in DRIVERS]
        if unknown:
            raise ValueError(f"unknown drivers {', '.join(unknown)}; the built-in ones are {', '.join(DRIVERS)}")
        for name in ("rediscover_seconds", "heartbeat_seconds", "driver_timeout_seconds",
                     "discovery_timeout_seconds"):
            if not 0 < getattr(self, name) <= 86_400:
                raise ValueError(f"{name} must be above 0 and at most a day, not {getattr(self, name)}")
        if not 2 <= self.lease_heartbeats <= 100:
            raise ValueError(f"lease_heartbeats must be 2 to 100, not {self.lease_heartbeats}")
        if not 1 <= self.healthy_after <= 100:
            raise ValueError(f"healthy_after must be 1 to 100, not {self.healthy_after}")
        if not 1 <= self.forget_after <= 100_000:
            raise ValueError(f"forget_after must be 1 to 100000, not {self.forget_after}")
        if not 1 <= self.max_devices_per_host <= 1024:
            raise ValueError(f"max_devices_per_host must be 1 to 1024, not {self.max_devices_per_host}")
        if not 1 <= self.history_per_device <= 1000:
            raise ValueError(f"history_per_device must be 1 to 1000, not {self.history_per_device}")
        if not 1 <= self.removed_kept <= 1_000_000:
            raise ValueError(f"removed_kept must be 1 to 1000000, not {self.removed_kept}")

    @property
    def lease_seconds(self) -> float:
        return self.heartbeat_seconds * self.lease_heartbeats
