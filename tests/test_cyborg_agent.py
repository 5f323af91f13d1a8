"""Cyborg drivers and agents on the bus and over HTTP: the pci driver component on a sysfs tree laid
out as the kernel does, discovery in progress then complete, the agent's rounds (merge, diff,
hysteresis), external HTTP drivers registered, polled and gone silent, several hosts, the
conductor's side played by a small stand-in that records what it gets, and the seed's bodies.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from bus.component import Component, Endpoint, Incoming
from bus.errors import NotFound
from bus.requester import Requester
from bus.server import free_port
from components.cyborg import conductor_messages, subjects
from components.cyborg.agent import Agent
from components.cyborg.config import CyborgConfig
from components.cyborg.driver import InventoryDriver, NvidiaDriver, PciDriver
from components.cyborg.external_driver import MAX_BODY, MAX_DEPTH
from components.cyborg.hardware import HEALTHY, UNHEALTHY, Device, device_uuid, to_seed_json
from components.cyborg.health import VANISHED
from tests.conftest import eventually, internal_token
from tests.local_http import serve_locally
from tests.test_cyborg_discovery import SEED_EXAMPLE, FakeNVML, add_function, fake_gpus

GPU, FPGA, NVME, BRIDGE = "0000:3b:00.0", "0000:5e:00.0", "0000:d8:00.0", "0000:3a:00.0"
SEED_HELLO = b'''{
   "status":"READY",
   "endpoint":"localhost:1337",
   "type":"CRYPTO"
}'''


def new_host() -> str:
    return f"compute-{uuidlib.uuid4().hex[:8]}"


def sysfs_tree(root: Path, *, nvme: bool = False) -> Path:
    """A GPU behind a bridge and an FPGA (and an NVMe drive), as the kernel lays them out."""
    add_function(root, BRIDGE, pci_class="0x060400", vendor="0x8086", device="0x347a", driver="pcieport")
    add_function(root, GPU, pci_class="0x030200", vendor="0x10de", device="0x2330", driver="nvidia", parent=BRIDGE)
    add_function(root, FPGA, pci_class="0x120000", vendor="0x10ee", device="0x5000", driver="xclmgmt", numa="1")
    if nvme:
        add_nvme(root)
    return root


def add_nvme(root: Path) -> None:
    add_function(root, NVME, pci_class="0x010802", vendor="0x144d", device="0xa80a", driver="nvme")


def config_for(tmp_path: Path, **overrides: Any) -> CyborgConfig:
    settings = {"host": new_host(), "sysfs_root": str(tmp_path / "sys"), "drivers": ("pci",),
                "heartbeat_seconds": 0.2, "rediscover_seconds": 3600.0, "driver_timeout_seconds": 1.0,
                "discovery_timeout_seconds": 5.0, "forget_after": 1}
    settings.update(overrides)
    return CyborgConfig(**settings)


class ConductorStandIn(Component):
    """The conductor's calls an agent makes, answered as the contract says, and recorded per host;
    `shown` is what its hardware query answers for a host (the agent seeds its health from it)."""

    system = subjects.SYSTEM
    name = "conductor-standin"

    async def setup(self) -> None:
        self.hellos: list[dict] = []
        self.heartbeats: list[dict] = []
        self.reports: list[dict] = []
        self.known: set[str] = set()
        self.shown: dict[str, list[dict]] = {}
        self.queries: list[dict] = []

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("hello", subjects.CONDUCTOR_HELLO, self.hello),
                Endpoint("heartbeat", subjects.CONDUCTOR_HEARTBEAT, self.heartbeat),
                Endpoint("report", subjects.CONDUCTOR_REPORT, self.report),
                Endpoint("hardware", subjects.CONDUCTOR_HARDWARE, self.hardware)]

    async def hardware(self, incoming: Incoming) -> dict:
        query = conductor_messages.parse_hardware_query(incoming.payload)
        self.queries.append(query.to_dict())
        return {"hardware": self.shown.get(query.host, []), "revision": len(self.reports)}

    async def hello(self, incoming: Incoming) -> dict:
        conductor_messages.parse_hello(incoming.payload)               # the real conductor's checks
        self.hellos.append(incoming.payload)
        self.known.add(incoming.payload["host"])
        return {"status": "REGISTERED", "lease_seconds": 0.6, "heartbeat_seconds": 0.2}

    async def heartbeat(self, incoming: Incoming) -> dict:
        conductor_messages.parse_heartbeat(incoming.payload)
        self._known(incoming.payload["host"])
        self.heartbeats.append(incoming.payload)
        return {"lease_seconds": 0.6}

    async def report(self, incoming: Incoming) -> dict:
        conductor_messages.parse_report(incoming.payload, max_devices=1024)
        self._known(incoming.payload["host"])
        self.reports.append(incoming.payload)
        return {"revision": len(self.reports)}

    def _known(self, host: str) -> None:
        if host not in self.known:
            raise NotFound(f"host {host} is not registered")

    def of(self, host: str) -> list[dict]:
        return [report for report in self.reports if report["host"] == host]


async def settled(agent: Agent) -> None:
    await eventually(lambda: agent.current is not None and not agent.in_progress)


async def rediscover(requester: Requester, agent: Agent) -> None:
    """One round asked for over the bus (as the conductor would), waited for."""
    await settled(agent)
    before = agent.discovered_at
    reply = await requester.request(subjects.agent_discovery(agent.host), {})
    assert reply.payload == {"status": "IN-PROGRESS"}
    await eventually(lambda: agent.discovered_at != before and not agent.in_progress)


def by_address(entries: list[dict]) -> dict[str, dict]:
    return {entry["teebus"]["address"]: entry for entry in entries}


# -- drivers -------------------------------------------------------------------------------------------

async def test_pci_driver_component_classifies_a_kernel_laid_out_tree(tmp_path, start_component, connect_as):
    config = config_for(tmp_path)
    sysfs_tree(tmp_path / "sys")
    watcher = await connect_as("admin")
    events: list[dict] = []

    async def collect(msg) -> None:
        events.append(json.loads(msg.data))

    sub = await watcher.subscribe("events.cyborg.driver.discovered", cb=collect)
    await start_component(PciDriver, config=config)
    reader = Requester(await connect_as("adapter"))
    hardware = subjects.driver_hardware(config.host, "pci")

    async def discovered() -> bool:
        return (await reader.request(hardware)).payload["discovered_at"] is not None

    await eventually(discovered)
    document = (await reader.request(hardware)).payload
    assert set(document) == {"hardware", "discovered_at", "in_progress", "problem"}
    assert document["in_progress"] is False and document["problem"] is None
    found = by_address(document["hardware"])
    assert {address: entry["acc_specs"]["device_type"] for address, entry in found.items()} == {GPU: "GPU",
                                                                                                FPGA: "FPGA"}
    gpu = found[GPU]
    assert gpu["uuid"] == device_uuid(config.host, GPU)
    assert set(gpu) == {"uuid", "acc_specs", "acc_status", "teebus"}
    assert gpu["acc_status"] == {"setup_required": False, "reboot_equired": False}
    assert gpu["teebus"]["driver"] == "pci" and gpu["teebus"]["host"] == config.host
    await eventually(lambda: any(e["host"] == config.host for e in events))
    assert [e for e in events if e["host"] == config.host][0]["devices"] == 2
    await sub.unsubscribe()

    # discovery is internal: the gateway (behind the credential) may ask, and it answers at once
    gateway = Requester(await connect_as("gateway"))
    assert (await gateway.request(subjects.driver_discovery(config.host, "pci"), {})).payload == {
        "status": "IN-PROGRESS"}


class GatedPci(PciDriver):
    """A pci driver whose discovery waits for the test to open the gate."""

    gate = threading.Event()
    probes = 0

    def probe(self):
        type(self).probes += 1
        if not type(self).gate.wait(10):
            raise RuntimeError("the gate stayed shut")
        return super().probe()


async def test_discovery_in_progress_then_complete(tmp_path, start_component, connect_as):
    config = config_for(tmp_path)
    sysfs_tree(tmp_path / "sys")
    GatedPci.gate.clear()
    GatedPci.probes = 0
    try:
        await start_component(GatedPci, config=config)
        gateway = Requester(await connect_as("gateway"))
        hardware = subjects.driver_hardware(config.host, "pci")
        first = (await gateway.request(hardware)).payload
        assert first == {"hardware": [], "discovered_at": None, "in_progress": True, "problem": None}
        for _ in range(3):    # one already running is not started again
            reply = await gateway.request(subjects.driver_discovery(config.host, "pci"), {})
            assert reply.payload == {"status": "IN-PROGRESS"}
        await asyncio.sleep(0.1)
        assert GatedPci.probes == 1
        GatedPci.gate.set()

        async def complete() -> bool:
            return not (await gateway.request(hardware)).payload["in_progress"]

        await eventually(complete)
        done = (await gateway.request(hardware)).payload
        assert len(done["hardware"]) == 2 and done["discovered_at"] is not None

        # the next one: while it runs, the last complete result is served
        GatedPci.gate.clear()
        add_nvme(tmp_path / "sys")
        await gateway.request(subjects.driver_discovery(config.host, "pci"), {})
        meanwhile = (await gateway.request(hardware)).payload
        assert meanwhile["in_progress"] is True and meanwhile["hardware"] == done["hardware"]
        GatedPci.gate.set()
        await eventually(complete)
        assert NVME in by_address((await gateway.request(hardware)).payload["hardware"])
    finally:
        GatedPci.gate.set()


async def test_a_stuck_discovery_is_bounded_and_keeps_the_last_devices(tmp_path, start_component, connect_as):
    config = config_for(tmp_path, discovery_timeout_seconds=0.3)
    sysfs_tree(tmp_path / "sys")
    GatedPci.gate.set()
    try:
        await start_component(GatedPci, config=config)
        gateway = Requester(await connect_as("gateway"))
        hardware = subjects.driver_hardware(config.host, "pci")

        async def devices() -> int:
            document = (await gateway.request(hardware)).payload
            return not document["in_progress"] and len(document["hardware"])

        await eventually(devices)
        GatedPci.gate.clear()
        await gateway.request(subjects.driver_discovery(config.host, "pci"), {})
        await asyncio.sleep(0.5)
        document = (await gateway.request(hardware)).payload
        assert document["in_progress"] is False and len(document["hardware"]) == 2
        assert "longer than 0.3 s" in document["problem"]
    finally:
        GatedPci.gate.set()


async def test_inventory_driver_without_a_file_reports_no_devices(tmp_path, start_component, connect_as):
    config = config_for(tmp_path, drivers=("inventory",))
    await start_component(InventoryDriver, config=config)
    reader = Requester(await connect_as("adapter"))

    async def done() -> dict | None:
        document = (await reader.request(subjects.driver_hardware(config.host, "inventory"))).payload
        return document if document["discovered_at"] else None

    await eventually(done)
    document = await done()
    assert document["hardware"] == [] and "no inventory file" in document["problem"]


# -- the agent -----------------------------------------------------------------------------------------

async def test_agent_merges_drivers_reports_differences_and_keeps_health(tmp_path, start_component, connect_as):
    inventory_file = tmp_path / "inventory.toml"
    inventory_file.write_text('[[device]]\nkey = "crypto-card-0"\ndevice_type = "QAT"\nvendor = "intel"\n')
    config = config_for(tmp_path, drivers=("pci", "nvidia", "inventory"), inventory_file=str(inventory_file))
    sysfs_tree(tmp_path / "sys")
    conductor = await start_component(ConductorStandIn)
    fake = type("FakeNvidiaDriver", (NvidiaDriver,), {"nvml": FakeNVML(fake_gpus()[:1])})
    for driver in (PciDriver, fake, InventoryDriver):
        await start_component(driver, config=config)
    agent: Agent = await start_component(Agent, config=config, ports={"cyborg-agent": 16667})
    gateway = Requester(await connect_as("gateway"))

    await eventually(lambda: conductor.of(config.host))
    assert conductor.hellos[-1] == {"status": "READY", "endpoint": f"{config.host}:16667", "host": config.host}
    first = conductor.of(config.host)[0]
    assert first["full"] is True and first["removed"] == [] and first["changed"] == []
    added = by_address(first["added"])
    assert set(added) == {GPU, FPGA, None}
    assert added[GPU]["teebus"]["driver"] == "nvidia"              # one GPU, two drivers: the richer entry
    assert added[GPU]["acc_specs"]["acc_capability"]["memory_mib"] == 81920
    assert added[None]["acc_specs"]["device_type"] == "QAT"
    await eventually(lambda: all(agent.drivers[name].hello.type != name.upper() for name in ("pci", "nvidia")))
    assert agent.drivers["pci"].hello.type == "FPGA,GPU"           # the drivers said hello over the bus
    hardware = (await gateway.request(subjects.agent_hardware(config.host))).payload
    assert [entry["uuid"] for entry in hardware["hardware"]] == [entry["uuid"] for entry in first["added"]]
    assert {d["driver"]: d["status"] for d in hardware["drivers"]} == {"pci": "READY", "nvidia": "READY",
                                                                      "inventory": "READY"}

    # nothing changed: no report; a device added: only it
    await rediscover(gateway, agent)
    assert len(conductor.of(config.host)) == 1
    add_nvme(tmp_path / "sys")
    await rediscover(gateway, agent)
    second = conductor.of(config.host)[-1]
    assert second["full"] is False and [e["teebus"]["address"] for e in second["added"]] == [NVME]
    assert second["changed"] == second["removed"] == second["transitions"] == []

    # a device removed: Unhealthy (noticed, with its transition), then gone after forget_after rounds
    (tmp_path / "sys" / "bus/pci/devices" / FPGA).unlink()
    await rediscover(gateway, agent)
    third = conductor.of(config.host)[-1]
    fpga = device_uuid(config.host, FPGA)
    assert [(e["uuid"], e["teebus"]["health"], e["teebus"]["health_reason"]) for e in third["changed"]] == [
        (fpga, UNHEALTHY, VANISHED)]
    assert [(t["uuid"], t["from"], t["to"], t["reason"]) for t in third["transitions"]] == [
        (fpga, HEALTHY, UNHEALTHY, VANISHED)]
    await rediscover(gateway, agent)
    fourth = conductor.of(config.host)[-1]
    assert (fourth["added"], fourth["changed"], fourth["removed"]) == ([], [], [fpga])
    assert len(conductor.of(config.host)) == 4


@dataclass
class GpuHost:
    """A host with the PCI driver, an agent (3 clean probes to recover) and a conductor stand-in,
    and the GPU's config space to break and mend (`good` is as the tree made it)."""

    config: Any
    conductor: "ConductorStandIn"
    agent: Agent
    gateway: Requester
    gpu: str
    config_space: Path
    good: bytes


async def gpu_host(tmp_path: Path, start_component, connect_as) -> GpuHost:
    config = config_for(tmp_path, healthy_after=3)
    sysfs_tree(tmp_path / "sys")
    conductor = await start_component(ConductorStandIn)
    await start_component(PciDriver, config=config)
    agent: Agent = await start_component(Agent, config=config)
    gateway = Requester(await connect_as("gateway"))
    await eventually(lambda: conductor.of(config.host))
    config_space = next((tmp_path / "sys" / "devices").glob(f"**/{GPU}")) / "config"
    return GpuHost(config, conductor, agent, gateway, device_uuid(config.host, GPU), config_space,
                   config_space.read_bytes())


async def test_a_flapping_device_recovers_only_after_clean_probes(tmp_path, start_component, connect_as):
    host = await gpu_host(tmp_path, start_component, connect_as)
    config, conductor, agent, gateway, gpu, config_space, good = (
        host.config, host.conductor, host.agent, host.gateway, host.gpu, host.config_space, host.good)

    def gpu_state() -> tuple[str, str]:
        entry = next(d for d in agent.current if d.uuid == gpu)
        return entry.health, entry.health_reason

    seen = []
    for probe_fails in (True, False, True, False, False, False, False):
        config_space.write_bytes(b"\xff" * 64 if probe_fails else good)
        await rediscover(gateway, agent)
        seen.append(gpu_state()[0])
    # one failure is Unhealthy at once; recovery takes three clean probes in a row (the flap resets it)
    assert seen == [UNHEALTHY, UNHEALTHY, UNHEALTHY, UNHEALTHY, UNHEALTHY, HEALTHY, HEALTHY]
    transitions = [t for report in conductor.of(config.host) for t in report["transitions"]]
    assert [(t["uuid"], t["from"], t["to"]) for t in transitions] == [(gpu, HEALTHY, UNHEALTHY),
                                                                      (gpu, UNHEALTHY, HEALTHY)]
    assert "0xffff" in transitions[0]["reason"] and transitions[1]["reason"].startswith("3 consecutive clean")
    assert [(c.before, c.after) for c in agent.history(gpu)] == [(HEALTHY, UNHEALTHY), (UNHEALTHY, HEALTHY)]
    recovering = [e for r in conductor.of(config.host) for e in r["changed"]
                  if e["teebus"]["health_reason"].startswith("recovering (2 of 3")]
    assert recovering                                               # progress is reported too


def transitions_of(conductor: ConductorStandIn, host: str, after: int = 0) -> list[dict]:
    return [t for report in conductor.of(host)[after:] for t in report["transitions"]]


async def test_a_restarted_agent_holds_a_device_the_conductor_shows_unhealthy_until_clean_probes(
        tmp_path, start_component, connect_as):
    host = await gpu_host(tmp_path, start_component, connect_as)
    config, conductor, agent, gateway, gpu, config_space, good = (
        host.config, host.conductor, host.agent, host.gateway, host.gpu, host.config_space, host.good)
    config_space.write_bytes(b"\xff" * 64)                          # fell off the bus
    await rediscover(gateway, agent)
    [failed] = [e for e in conductor.of(config.host)[-1]["changed"] if e["uuid"] == gpu]
    assert failed["teebus"]["health"] == UNHEALTHY and "0xffff" in failed["teebus"]["health_reason"]
    conductor.shown[config.host] = [failed]                         # what the conductor now shows

    # fixed while the agent restarts: every probe from now on is clean
    await agent.stop()
    config_space.write_bytes(good)
    reports = len(conductor.of(config.host))
    again: Agent = await start_component(Agent, config=config)
    await eventually(lambda: len(conductor.of(config.host)) > reports)
    assert {"host": config.host} in conductor.queries
    first = conductor.of(config.host)[reports]
    assert first["full"] is True and first["transitions"] == []
    entry = next(e for e in first["added"] if e["uuid"] == gpu)
    assert entry["teebus"]["health"] == UNHEALTHY          # one clean probe (the start's round) is not three
    assert entry["teebus"]["health_reason"] == ("recovering (1 of 3 clean probes) after: "
                                                + failed["teebus"]["health_reason"])
    await rediscover(gateway, again)                                # the second clean probe
    assert next(d for d in again.current if d.uuid == gpu).health == UNHEALTHY
    assert transitions_of(conductor, config.host, reports) == []
    await rediscover(gateway, again)                                # the third: Healthy, one transition
    assert next(d for d in again.current if d.uuid == gpu).health == HEALTHY
    await rediscover(gateway, again)
    changes = transitions_of(conductor, config.host, reports)
    assert [(t["uuid"], t["from"], t["to"]) for t in changes] == [(gpu, UNHEALTHY, HEALTHY)]
    assert changes[0]["reason"] == f"3 consecutive clean probes after: {failed['teebus']['health_reason']}"


async def test_an_agent_started_while_no_conductor_answers_seeds_its_health_at_its_hello(
        tmp_path, start_component, connect_as):
    config = config_for(tmp_path, healthy_after=3)
    sysfs_tree(tmp_path / "sys")
    gpu = device_uuid(config.host, GPU)
    await start_component(PciDriver, config=config)
    agent: Agent = await start_component(Agent, config=config)
    gateway = Requester(await connect_as("gateway"))
    await rediscover(gateway, agent)                                # two clean probes, no conductor to ask
    assert all(d.health == HEALTHY for d in agent.current)

    # the conductor comes (back): it shows the GPU Unhealthy, recovering, from before the agent's restart
    shown = to_seed_json(Device(gpu, config.host, "GPU", address=GPU, vendor="10de", product="2330",
                                health=UNHEALTHY, health_reason="recovering (2 of 3 clean probes) after: Xid 79"))
    conductor = await start_component(ConductorStandIn)
    conductor.shown[config.host] = [shown]
    await eventually(lambda: conductor.of(config.host))
    first = conductor.of(config.host)[0]
    assert first["full"] is True and first["transitions"] == []
    entry = next(e for e in first["added"] if e["uuid"] == gpu)
    assert (entry["teebus"]["health"], entry["teebus"]["health_reason"]) == (UNHEALTHY, "Xid 79")
    for expected in (UNHEALTHY, UNHEALTHY, HEALTHY):                # three clean probes from the hello on
        await rediscover(gateway, agent)
        assert next(d for d in agent.current if d.uuid == gpu).health == expected
    changes = transitions_of(conductor, config.host)
    assert [(t["uuid"], t["from"], t["to"], t["reason"]) for t in changes] == [
        (gpu, UNHEALTHY, HEALTHY, "3 consecutive clean probes after: Xid 79")]


def as_the_conductor_shows(entry: dict) -> dict:
    """An entry as the conductor's hardware query answers it: its own fields added under teebus."""
    return {**entry, "teebus": {**entry["teebus"], "stale": False, "revision": 7, "history": []}}


async def test_a_restarted_agent_holds_a_slow_drivers_devices_as_the_conductor_shows_them(
        tmp_path, start_component, connect_as):
    config = config_for(tmp_path, healthy_after=3)
    sysfs_tree(tmp_path / "sys")
    conductor = await start_component(ConductorStandIn)
    driver = await start_component(PciDriver, config=config)
    agent: Agent = await start_component(Agent, config=config)
    await eventually(lambda: conductor.of(config.host))
    first = conductor.of(config.host)[0]
    gpu, fpga = device_uuid(config.host, GPU), device_uuid(config.host, FPGA)
    shown = {entry["uuid"]: entry for entry in first["added"]}
    assert set(shown) == {gpu, fpga}
    shown[fpga] = {**shown[fpga], "teebus": {**shown[fpga]["teebus"], "health": UNHEALTHY,
                                             "health_reason": "xclmgmt is bound but the device is disabled"}}
    conductor.shown[config.host] = [as_the_conductor_shows(entry) for entry in shown.values()]

    # the agent restarts before its driver is back: the driver's devices are held as the conductor shows them
    await agent.stop()
    await driver.stop()
    reports = len(conductor.of(config.host))
    again: Agent = await start_component(Agent, config=config)
    await eventually(lambda: len(conductor.of(config.host)) > reports)
    full = conductor.of(config.host)[reports]
    assert full["full"] is True and full["removed"] == [] and full["transitions"] == []
    assert {e["uuid"]: e["teebus"]["health"] for e in full["added"]} == {gpu: HEALTHY, fpga: UNHEALTHY}
    assert again.drivers["pci"].status == "SILENT"

    # the driver is back: its devices are probed (all clean), the FPGA recovers after three probes
    await start_component(PciDriver, config=config)
    gateway = Requester(await connect_as("gateway"))
    await eventually(lambda: again.drivers["pci"].status == "READY" and not again.in_progress)
    while next(d for d in again.current if d.uuid == fpga).health == UNHEALTHY:
        await rediscover(gateway, again)
    await rediscover(gateway, again)
    later = conductor.of(config.host)[reports:]
    assert all(report["removed"] == [] for report in later)
    changes = transitions_of(conductor, config.host, reports)
    assert [(t["uuid"], t["from"], t["to"], t["reason"]) for t in changes] == [
        (fpga, UNHEALTHY, HEALTHY, "3 consecutive clean probes after: xclmgmt is bound but the device is disabled")]
    assert {d.uuid for d in again.current} == {gpu, fpga}


async def test_the_conductor_forgetting_the_host_gets_hello_and_a_full_report(tmp_path, start_component):
    config = config_for(tmp_path)
    sysfs_tree(tmp_path / "sys")
    conductor = await start_component(ConductorStandIn)
    await start_component(PciDriver, config=config)
    await start_component(Agent, config=config)
    await eventually(lambda: conductor.of(config.host))
    await eventually(lambda: any(h["host"] == config.host for h in conductor.heartbeats))
    conductor.known.discard(config.host)                            # say, the conductor lost its state
    hellos = sum(1 for h in conductor.hellos if h["host"] == config.host)
    await eventually(lambda: sum(1 for h in conductor.hellos if h["host"] == config.host) > hellos)
    await eventually(lambda: len(conductor.of(config.host)) == 2)
    again = conductor.of(config.host)[-1]
    assert again["full"] is True and len(again["added"]) == 2


async def test_the_agent_starting_before_the_conductor_and_drivers(tmp_path, start_component, connect_as):
    config = config_for(tmp_path)
    sysfs_tree(tmp_path / "sys")
    agent: Agent = await start_component(Agent, config=config)
    await settled(agent)
    assert agent.drivers["pci"].status == "SILENT" and agent.current == []
    await start_component(PciDriver, config=config)                 # its hello brings a round
    await eventually(lambda: agent.drivers["pci"].status == "READY" and len(agent.current or []) == 2)
    conductor = await start_component(ConductorStandIn)
    await eventually(lambda: conductor.of(config.host))
    assert conductor.of(config.host)[0]["full"] is True and len(conductor.of(config.host)[0]["added"]) == 2


async def test_several_hosts_each_run_their_own(tmp_path, start_component, connect_as):
    conductor = await start_component(ConductorStandIn)
    configs = []
    for index, with_nvme in enumerate((False, True)):
        config = config_for(tmp_path / str(index), sysfs_root=str(tmp_path / str(index) / "sys"))
        sysfs_tree(tmp_path / str(index) / "sys", nvme=with_nvme)
        await start_component(PciDriver, config=config)
        await start_component(Agent, config=config)
        configs.append(config)
    reader = Requester(await connect_as("adapter"))
    for config, count in zip(configs, (2, 3)):
        await eventually(lambda: conductor.of(config.host))
        document = (await reader.request(subjects.agent_hardware(config.host))).payload
        assert len(document["hardware"]) == count
        assert {entry["teebus"]["host"] for entry in document["hardware"]} == {config.host}
    first, second = ({e["uuid"] for e in conductor.of(c.host)[0]["added"]} for c in configs)
    assert not first & second                                       # one address, two hosts: two devices


async def test_registrations_survive_a_restart_and_bad_hellos_are_refused(tmp_path, start_component, connect_as):
    config = config_for(tmp_path, drivers=())
    agent: Agent = await start_component(Agent, config=config)
    gateway = Requester(await connect_as("gateway"))
    reply = await gateway.request(subjects.agent_hello(config.host), orjson.loads(SEED_HELLO))
    assert reply.payload == {"status": "REGISTERED", "driver": "ext-localhost-1337"}
    await agent.stop()
    again: Agent = await start_component(Agent, config=config)
    assert again.drivers["ext-localhost-1337"].hello.endpoint == "localhost:1337"

    async def answering() -> bool:
        # once in ~30 full runs, the restarted agent's subject had no responder yet right after its
        # start returned (a 503): seen in CI, not understood yet (see the session note)
        try:
            await gateway.request(subjects.agent_hello(config.host), ["READY"])
        except Exception as exc:
            return getattr(exc, "status", None) != 503
        return True

    await eventually(answering, timeout=5)
    for bad, message in ((["READY"], "JSON object"), ({"status": "READY", "type": "X"}, "lacks endpoint"),
                         ({**orjson.loads(SEED_HELLO), "status": "BUSY"}, "status must be"),
                         ({**orjson.loads(SEED_HELLO), "endpoint": "bus", "driver": "magic"}, "built-in"),
                         ({**orjson.loads(SEED_HELLO), "endpoint": "ftp://host:1"}, "http and https"),
                         ({**orjson.loads(SEED_HELLO), "endpoint": "localhost"}, "host:port"),
                         ({**orjson.loads(SEED_HELLO), "driver": "pci"}, "built-in driver's name"),
                         ({**orjson.loads(SEED_HELLO), "colour": "red"}, "unknown fields colour")):
        with pytest.raises(Exception) as refused:
            await gateway.request(subjects.agent_hello(config.host), bad)
        assert getattr(refused.value, "status", None) == 400 and message in refused.value.message, bad


# -- over HTTP -----------------------------------------------------------------------------------------

class ExternalDriver:
    """An external driver written by someone else: the seed's two calls on its own port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.silent = False
        self.wake = asyncio.Event()
        self.discoveries = 0
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/discovery", self.discovery)
        app.router.add_get("/hardware", self.hardware)
        self.runner = await serve_locally(app, self.port)

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def discovery(self, request: web.Request) -> web.Response:
        await self._maybe_hang()
        self.discoveries += 1
        return web.json_response({"status": "IN-PROGRESS"})

    async def hardware(self, request: web.Request) -> web.Response:
        await self._maybe_hang()
        return web.Response(text=SEED_EXAMPLE, content_type="application/json")

    async def _maybe_hang(self) -> None:
        if self.silent:
            await asyncio.wait_for(self.wake.wait(), 30)


@pytest.fixture
async def http_node(tmp_path, start_node, data_dir):
    async def factory(**cyborg: Any):
        document = {"cyborg": {"host": new_host(), "sysfs_root": str(tmp_path / "sys"),
                               "heartbeat_seconds": 0.2, "rediscover_seconds": 3600,
                               "driver_timeout_seconds": 0.5, "discovery_timeout_seconds": 2, **cyborg}}
        names = ["cyborg.agent", *(f"cyborg.{d}" for d in document["cyborg"].get("drivers", ["pci"])),
                 "http.cyborg"]
        document["cyborg"].setdefault("drivers", ["pci"])
        node = await start_node(names, document=document)
        return node, document["cyborg"]["host"]

    return factory


async def test_seed_bodies_over_http_and_the_internal_credential(tmp_path, http_node, data_dir):
    sysfs_tree(tmp_path / "sys")
    node, host = await http_node()
    agent = node.http.bound["cyborg-agent"]
    driver = node.http.bound["cyborg-pci"]
    token = {"Authorization": f"Bearer {internal_token(data_dir)}"}
    async with aiohttp.ClientSession() as http:
        # the seed's driver calls
        async with http.post(driver + "/discovery", headers=token) as response:
            assert response.status == 200 and await response.json() == {"status": "IN-PROGRESS"}

        async def driver_done() -> bool:
            async with http.get(driver + "/hardware") as response:
                return not (await response.json())["in_progress"]

        await eventually(driver_done)
        async with http.get(driver + "/hardware") as response:
            document = await response.json()
        assert response.status == 200 and {e["acc_specs"]["device_type"] for e in document["hardware"]} == {"GPU", "FPGA"}

        # the seed's agent calls
        async with http.post(agent + "/discovery", headers=token) as response:
            assert response.status == 200 and await response.json() == {"status": "IN-PROGRESS"}

        async def agent_devices() -> int:
            async with http.get(agent + "/hardware") as response:
                body = await response.json()
                return not body["in_progress"] and len(body["hardware"])

        await eventually(agent_devices)

        # unauthenticated registration and discovery are refused, in the error shape
        for url in (agent + "/hello", agent + "/discovery", driver + "/discovery"):
            async with http.post(url, data=SEED_HELLO) as response:
                error = await response.json()
                assert response.status == 401 and error["error"]["status"] == 401
                assert "internal.token" in error["error"]["message"]
            async with http.post(url, data=SEED_HELLO, headers={"Authorization": "Bearer wrong"}) as response:
                assert response.status == 401

        # malformed bodies: refused by the adapter with a message saying what to send
        for body, message in ((b"{not json", "not valid JSON"), (b"[]", "JSON object"),
                              (b'{"status": "READY", "endpoint": "x:1"}', "lacks type"),
                              (b'{"status": "READY", "endpoint": "x:1", "type": 7}', "type must be a string"),
                              (b'{"status": "READY", "endpoint": "x:99999", "type": "GPU"}', "endpoint"),
                              (b"x" * (65 * 1024), "exceeds the limit")):
            async with http.post(agent + "/hello", data=body, headers=token) as response:
                error = await response.json()
                assert response.status in (400, 413) and message in error["error"]["message"], (body[:40], error)
        async with http.post(agent + "/discovery", data=b'{"all": true}', headers=token) as response:
            assert response.status == 400
        async with http.get(agent + "/nowhere") as response:
            assert response.status == 404 and (await response.json())["error"]["status"] == 404

        # the seed's hello, over HTTP with the credential
        async with http.post(agent + "/hello", data=SEED_HELLO, headers=token) as response:
            assert response.status == 200
            assert await response.json() == {"status": "REGISTERED", "driver": "ext-localhost-1337"}


async def test_an_external_http_driver_registered_polled_then_silent(tmp_path, http_node, data_dir):
    external = ExternalDriver()
    await external.start()
    try:
        node, host = await http_node(drivers=[])
        agent_url = node.http.bound["cyborg-agent"]
        token = {"Authorization": f"Bearer {internal_token(data_dir)}"}
        hello = {"status": "READY", "endpoint": f"127.0.0.1:{external.port}", "type": "CRYPTO"}
        async with aiohttp.ClientSession() as http:
            async def hardware() -> dict:
                async with http.get(agent_url + "/hardware") as response:
                    assert response.status == 200
                    return await response.json()

            async with http.post(agent_url + "/hello", json=hello, headers=token) as response:
                assert response.status == 200
                registered = await response.json()
            driver_id = registered["driver"]
            assert registered == {"status": "REGISTERED", "driver": f"ext-127-0-0-1-{external.port}"}

            async def polled() -> bool:
                return len((await hardware())["hardware"]) == 1

            await eventually(polled)
            document = await hardware()
            entry = document["hardware"][0]
            assert entry["uuid"] == "8e45a2ea-5364-4b0d-a252-bf8becaa606e"
            assert entry["acc_specs"]["device_type"] == "CRYPTO"
            assert entry["acc_specs"]["acc_capability"] == {"num": 2, "ipsec": {"aes": {"3des": 50, "num": 1}}}
            assert entry["acc_status"] == {"setup_required": True, "reboot_equired": False}
            assert entry["teebus"]["driver"] == driver_id and entry["teebus"]["host"] == host
            assert document["drivers"] == [{"driver": driver_id, "endpoint": hello["endpoint"], "type": "CRYPTO",
                                            "status": "READY", "last_seen": document["drivers"][0]["last_seen"],
                                            "problem": None}]
            assert external.discoveries >= 1

            # it stops answering: marked SILENT within the timeout, its devices kept, nobody waits
            external.silent = True
            started = time.monotonic()
            async with http.post(agent_url + "/discovery", headers=token) as response:
                assert response.status == 200

            async def silent() -> bool:
                document = await hardware()
                return document["drivers"][0]["status"] == "SILENT" and not document["in_progress"]

            await eventually(silent)
            assert time.monotonic() - started < 3.0
            document = await hardware()
            assert "did not answer within 0.5 s" in document["drivers"][0]["problem"]
            assert [e["uuid"] for e in document["hardware"]] == [entry["uuid"]]
            assert document["hardware"][0]["teebus"]["health"] == HEALTHY    # silence is no failed probe

            # it comes back
            external.silent = False
            external.wake.set()
            async with http.post(agent_url + "/discovery", headers=token) as response:
                assert response.status == 200

            async def ready() -> bool:
                return (await hardware())["drivers"][0]["status"] == "READY"

            await eventually(ready)
    finally:
        external.wake.set()
        await external.stop()


class MisbehavingDriver:
    """An external driver whose `GET /hardware` answers as `mode` says: the seed's example
    ("good"), or what the agent must refuse. A redirect points at `/elsewhere`, which serves a
    device of its own: a followed redirect would show."""

    ELSEWHERE = "0f0f0f0f-1111-4222-8333-444455556666"

    def __init__(self) -> None:
        self.port = free_port()
        self.mode = "good"
        self.elsewhere = 0
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/discovery", self.discovery)
        app.router.add_get("/hardware", self.hardware)
        app.router.add_get("/elsewhere/hardware", self.other)
        self.runner = await serve_locally(app, self.port, shutdown_timeout=1.0)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "IN-PROGRESS"})

    async def other(self, request: web.Request) -> web.Response:
        self.elsewhere += 1
        entry = {**json.loads(SEED_EXAMPLE)["hardware"][0], "uuid": self.ELSEWHERE}
        return web.json_response({"hardware": [entry]})

    async def hardware(self, request: web.Request) -> web.StreamResponse:
        mode = self.mode
        if mode == "good":
            return web.Response(text=SEED_EXAMPLE, content_type="application/json")
        if mode == "huge":                              # says its size up front
            return web.Response(body=b'{"hardware": [], "problem": "' + b"x" * MAX_BODY + b'"}',
                                content_type="application/json")
        if mode == "huge-chunked":                      # says nothing: the agent counts as it reads
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            try:
                await response.write(b'{"hardware": [], "problem": "')
                for _ in range(MAX_BODY // 65536 + 2):
                    await response.write(b"x" * 65536)
                await response.write(b'"}')
                await response.write_eof()
            except (ConnectionError, RuntimeError):
                pass                                    # the agent hung up: as it should
            return response
        if mode == "redirect":
            raise web.HTTPFound(f"http://127.0.0.1:{self.port}/elsewhere/hardware")
        if mode == "not-json":
            return web.Response(text="<html><body><h1>502 Bad Gateway</h1></body></html>", content_type="text/html")
        if mode in ("deep", "very-deep"):
            levels = MAX_DEPTH + 8 if mode == "deep" else 5000
            entry = json.loads(SEED_EXAMPLE)["hardware"][0]
            text = json.dumps({"hardware": [{**entry, "acc_specs": {**entry["acc_specs"], "acc_capability": {
                "nested": "@"}}}]})
            return web.Response(text=text.replace('"@"', "[" * levels + "]" * levels), content_type="application/json")
        raise AssertionError(mode)


@pytest.mark.parametrize("mode,problem", [
    ("huge", "bytes: more than the 4 MiB an external driver's answer may be"),
    ("huge-chunked", "bytes: more than the 4 MiB an external driver's answer may be"),
    ("redirect", "answered HTTP 302, a redirect to http://127.0.0.1:{port}/elsewhere/hardware: "
                 "the agent follows no redirect"),
    ("not-json", "answered what is not JSON"),
    ("deep", f"answered JSON nested deeper than {MAX_DEPTH} levels"),
    ("very-deep", f"answered JSON nested deeper than {MAX_DEPTH} levels"),
], ids=["huge", "huge-chunked", "redirect", "not-json", "deep", "very-deep"])
async def test_an_external_driver_answering_past_the_limits_is_silent_and_nothing_of_it_is_kept(
        tmp_path, start_component, connect_as, mode, problem):
    config = config_for(tmp_path, drivers=(), driver_timeout_seconds=5.0)
    conductor = await start_component(ConductorStandIn)
    agent: Agent = await start_component(Agent, config=config)
    watcher = await connect_as("admin")
    silent: list[dict] = []

    async def collect(msg) -> None:
        silent.append(json.loads(msg.data))

    await watcher.subscribe("events.cyborg.driver.silent", cb=collect)
    driver = MisbehavingDriver()
    await driver.start()
    try:
        gateway = Requester(await connect_as("gateway"))
        hello = {"status": "READY", "endpoint": f"127.0.0.1:{driver.port}", "type": "CRYPTO"}
        name = (await gateway.request(subjects.agent_hello(config.host), hello)).payload["driver"]
        seed_uuid = json.loads(SEED_EXAMPLE)["hardware"][0]["uuid"]

        def reported() -> set[str]:
            return {e["uuid"] for r in conductor.of(config.host) for e in r["added"] + r["changed"]}

        await eventually(lambda: seed_uuid in reported() and not agent.in_progress)
        assert agent.drivers[name].status == "READY"
        good = list(agent.current)
        reports = len(conductor.of(config.host))
        registration = (await agent.registry.find(f"{config.host}.{name}")).value

        driver.mode = mode
        started = time.monotonic()
        await rediscover(gateway, agent)
        assert time.monotonic() - started < config.driver_timeout_seconds, "bounded well within the timeout"
        state = agent.drivers[name]
        assert state.status == "SILENT", (mode, state.problem)
        assert problem.format(port=driver.port) in state.problem, state.problem
        assert f"127.0.0.1:{driver.port}/hardware" in state.problem          # which driver, which call
        assert driver.elsewhere == 0                                        # no redirect followed
        await eventually(lambda: [e for e in silent if e["driver"] == name])
        assert [e["reason"] for e in silent if e["driver"] == name] == [state.problem]

        # nothing of the answer is kept: its last good devices stand, Healthy; nothing new reported
        assert agent.current == good and [d.uuid for d in good] == [seed_uuid]
        assert all(d.health == HEALTHY for d in agent.current)
        assert len(conductor.of(config.host)) == reports
        assert (await agent.registry.find(f"{config.host}.{name}")).value == registration

        # the agent keeps serving
        document = (await gateway.request(subjects.agent_hardware(config.host))).payload
        assert [e["uuid"] for e in document["hardware"]] == [seed_uuid]
        assert [(d["driver"], d["status"], d["problem"]) for d in document["drivers"]] == [
            (name, "SILENT", state.problem)]
        assert (await gateway.request(subjects.agent_discovery(config.host), {})).payload == {"status": "IN-PROGRESS"}
        await settled(agent)

        # answering well again, it is READY
        driver.mode = "good"
        await rediscover(gateway, agent)
        assert agent.drivers[name].status == "READY" and agent.drivers[name].problem is None
        assert agent.current == good
    finally:
        await driver.stop()
