"""The built-in Cyborg drivers as components, one per driver and host: `pci` (sysfs), `nvidia`
(NVML) and `inventory` (a file). Each serves the seed's driver calls on the bus:

- `driver_discovery(host, name)` (internal): `{}` -> `{"status": "IN-PROGRESS"}` at once; the
  discovery runs in the background. One already running is not started twice (the request joins it).
- `driver_hardware(host, name)`: `{"hardware": [entry...], "discovered_at": <ISO 8601 or null>,
  "in_progress": bool, "problem": <why the last discovery found nothing or failed, or null>}` --
  the last *complete* discovery while another runs (agent_messages.py describes the fields).

A driver discovers once at start, then on request. The blocking work (sysfs reads, NVML, the
file) runs in a thread, bounded by `discovery_timeout_seconds`: past it the discovery counts as
failed and the last good devices stay; a thread still stuck is joined by the next request rather
than doubled. A failed discovery (an invalid inventory file, say) keeps the last good devices and
says why in `problem`. Each completed discovery is an event `events.cyborg.driver.discovered`
`{host, driver, devices}`.

At start a driver says hello to its host's agent (`agent_hello(host)`, the seed's body with
`endpoint: "bus"` and `driver`), retrying in the background while no agent answers; the agent
also asks the drivers of its configuration directly, so which starts first does not matter.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bus.component import Component, Endpoint, Incoming
from bus.errors import BusError
from components.cyborg import inventory, nvidia, pci, subjects
from components.cyborg.agent_messages import BUS, READY
from components.cyborg.config import CyborgConfig
from components.cyborg.hardware import Device, hardware_document

HELLO_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)   # backoff while no agent answers


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()


class Driver(Component):
    """One built-in driver on `config.host`; subclasses implement `probe` (blocking, in a thread)."""

    system = subjects.SYSTEM
    config: CyborgConfig

    def probe(self) -> tuple[list[Device], str]:
        """The devices found now, and why none were when that is worth saying ("" otherwise).
        Runs in a thread; raising means the discovery failed (the last good devices stay)."""
        raise NotImplementedError

    @property
    def host(self) -> str:
        return self.config.host

    async def setup(self) -> None:
        self.devices: list[Device] = []
        self.discovered_at: float | None = None
        self.problem: str | None = None
        self._running: asyncio.Task | None = None     # the discovery in progress
        self._thread: asyncio.Future | None = None    # its blocking work (may outlive a timed-out discovery)
        self._first = self.start_discovery()
        self.spawn(self._announce(), "hello to the agent", wait=False)

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("discovery", subjects.driver_discovery(self.host, self.name), self.discovery, inline=True),
                Endpoint("hardware", subjects.driver_hardware(self.host, self.name), self.hardware, inline=True)]

    async def discovery(self, incoming: Incoming) -> dict[str, Any]:
        self.start_discovery()
        return {"status": "IN-PROGRESS"}

    async def hardware(self, incoming: Incoming) -> dict[str, Any]:
        return self.document()

    def document(self) -> dict[str, Any]:
        return {**hardware_document(self.devices),
                "discovered_at": iso(self.discovered_at) if self.discovered_at is not None else None,
                "in_progress": self.in_progress, "problem": self.problem}

    @property
    def in_progress(self) -> bool:
        return self._running is not None and not self._running.done()

    def start_discovery(self) -> asyncio.Task:
        """The discovery running now, started if none is."""
        if not self.in_progress:
            self._running = self.spawn(self._discover(), f"{self.name} discovery")
        return self._running

    async def _discover(self) -> None:
        if self._thread is None or self._thread.done():
            self._thread = asyncio.ensure_future(asyncio.to_thread(self.probe))
        timeout = self.config.discovery_timeout_seconds
        try:
            devices, why = await asyncio.wait_for(asyncio.shield(self._thread), timeout)
        except asyncio.TimeoutError:
            self.problem = f"discovery took longer than {timeout:g} s; the last good devices are kept"
            self.log.warning("discovery timed out", driver=self.name, timeout=timeout)
            return
        except Exception as exc:
            self.problem = f"discovery failed: {str(exc)[:400] or type(exc).__name__}; the last good devices are kept"
            self.log.warning("discovery failed", driver=self.name, error=str(exc)[:400])
            return
        self.devices = list(devices)[:self.config.max_devices_per_host]
        self.discovered_at = time.time()
        self.problem = why or None
        await self.events.publish("driver", "discovered", {"host": self.host, "driver": self.name,
                                                          "devices": len(self.devices)})

    def announced_type(self) -> str:
        """The device types this driver reports, or its name upper-cased before it found any."""
        types = sorted({device.device_type for device in self.devices})
        return ",".join(types) if types else self.name.upper()

    async def _announce(self) -> None:
        """Say hello to the agent (after the first discovery, so the type is known), until it answers."""
        try:
            await asyncio.wait_for(asyncio.shield(self._first), self.config.discovery_timeout_seconds)
        except (asyncio.TimeoutError, Exception):
            pass
        attempt = 0
        while True:
            body = {"status": READY, "endpoint": BUS, "type": self.announced_type(), "driver": self.name}
            try:
                await self.requester.request(subjects.agent_hello(self.host), body,
                                             timeout=self.config.driver_timeout_seconds)
                self.log.info("registered with the agent", driver=self.name, host=self.host)
                return
            except BusError as exc:
                delay = HELLO_RETRY_SECONDS[min(attempt, len(HELLO_RETRY_SECONDS) - 1)]
                self.log.debug("no agent yet; saying hello again later", error=exc.message, retry_in=delay)
                attempt += 1
                await asyncio.sleep(delay)


class PciDriver(Driver):
    name = "pci"
    description = "Cyborg pci driver: accelerators in the kernel's sysfs"

    def probe(self) -> tuple[list[Device], str]:
        root = Path(self.config.sysfs_root)
        devices = pci.discover(root, host=self.host, limit=self.config.max_devices_per_host)
        if devices:
            return devices, ""
        if not (root / "bus" / "pci" / "devices").is_dir():
            return [], f"{root}/bus/pci/devices cannot be read: no PCI devices"
        return [], ""


class NvidiaDriver(Driver):
    name = "nvidia"
    description = "Cyborg nvidia driver: NVIDIA GPUs through NVML"
    nvml: Any = None          # the pynvml module by default; tests put an object with its functions here

    def probe(self) -> tuple[list[Device], str]:
        return nvidia.discover(host=self.host, nvml=self.nvml)


class InventoryDriver(Driver):
    name = "inventory"
    description = "Cyborg inventory driver: devices listed in a file"

    def probe(self) -> tuple[list[Device], str]:
        if not self.config.inventory_file:
            return [], "no inventory file is configured (cyborg.inventory_file)"
        return inventory.load(self.config.inventory_file, host=self.host), ""
