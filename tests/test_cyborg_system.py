"""Cyborg end to end: the real conductor, agents and drivers, each host a node started through the
launcher as `teebus run` starts one, read over HTTP as a deployment's clients read it.

Three nodes on a nats-server of this module's own (the buckets are then this module's alone: the
seed's example entry has a fixed uuid, which another test's host may already own on the session's
bus), each on its own free ports:

- `conductor`: `cyborg.conductor` and `http.cyborg` (the `cyborg-conductor` site);
- `h1`, `h2`: `cyborg.agent`, `cyborg.pci`, `cyborg.inventory` and `http.cyborg`, with host h1 or h2,
  a sysfs tree of their own built as the kernel lays it out, and an inventory file.

Timings are short (heartbeat 0.2 s, lease 3 heartbeats, rediscovery every 0.5 s, a vanished device
forgotten after 1 round), so lease expiry, rediscovery and recovery all happen within seconds.
The tests run in order on one deployment and leave it as they found it (every agent READY, every
device there), but for the external driver the fourth adds to h1, which stays registered and silent.
Events are watched as the admin role on `events.cyborg.>`.

The last two reproduce bugs found here and since fixed: a conductor down longer than a lease, and a
device uuid two hosts report (the second host's entry is refused alone, the rest of its reports
count). So does the agent restart with an Unhealthy device (twice: the conductor up, and down while
the agent restarts): a restarted agent used to start every device Healthy, skipping the hysteresis,
and the conductor recorded no transition.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web

from bus.server import free_port
from bus.testing import TestBus, running_bus
from components.cyborg.hardware import HEALTHY, UNHEALTHY, device_uuid
from components.cyborg.health import VANISHED
from teebus.catalog import Catalog
from teebus.launcher import Node
from teebus.testing import settings_for
from tests.conftest import eventually, internal_token
from tests.local_http import serve_locally
from tests.test_cyborg_discovery import SEED_EXAMPLE, add_function

pytestmark = pytest.mark.timeout(90)

HOSTS = ("h1", "h2")
TIMING = {"heartbeat_seconds": 0.2, "lease_heartbeats": 3, "rediscover_seconds": 0.5, "forget_after": 1,
          "healthy_after": 3, "driver_timeout_seconds": 0.5, "discovery_timeout_seconds": 2.0}
LEASE = round(TIMING["heartbeat_seconds"] * TIMING["lease_heartbeats"], 3)     # 0.6, as the conductor rounds it
ROUND = TIMING["rediscover_seconds"]
HOST_NAMES = ["cyborg.agent", "cyborg.pci", "cyborg.inventory", "http.cyborg"]
CONDUCTOR_NAMES = ["cyborg.conductor", "http.cyborg"]
STOP_PATIENCE = 15.0          # seconds a node's stop may take

BRIDGE, GPU, FPGA, QAT, NVME = "0000:3a:00.0", "0000:3b:00.0", "0000:5e:00.0", "0000:60:00.0", "0000:d8:00.0"
SEED_UUID = "8e45a2ea-5364-4b0d-a252-bf8becaa606e"
INVENTORY = '[[device]]\nkey = "smartnic-{host}"\ndevice_type = "NIC"\nvendor = "mellanox"\nproduct = "bf3"\n'


def build_sysfs(root: Path, host: str) -> None:
    """h1: a GPU behind a bridge and an FPGA; h2: a GPU and a QAT. Every driver bound, enabled."""
    add_function(root, BRIDGE, pci_class="0x060400", vendor="0x8086", device="0x347a", driver="pcieport")
    add_function(root, GPU, pci_class="0x030200", vendor="0x10de", device="0x2330", driver="nvidia", parent=BRIDGE)
    if host == "h1":
        add_function(root, FPGA, pci_class="0x120000", vendor="0x10ee", device="0x5000", driver="xclmgmt", numa="1")
    else:
        add_function(root, QAT, pci_class="0x108000", vendor="0x8086", device="0x37c8", driver="c6xx")


def inventory_key(host: str) -> str:
    return f"smartnic-{host}"


# The devices each host starts with: uuid -> device type.
def initial_devices(host: str) -> dict[str, str]:
    pci = {GPU: "GPU", FPGA: "FPGA"} if host == "h1" else {GPU: "GPU", QAT: "QAT"}
    return {**{device_uuid(host, address): kind for address, kind in pci.items()},
            device_uuid(host, inventory_key(host)): "NIC"}


class Events:
    """Every `events.cyborg.>` message, watched as the admin role."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, str, dict[str, Any]]] = []

    async def start(self, client) -> "Events":
        async def keep(msg) -> None:
            self.seen.append((time.monotonic(), msg.subject, orjson.loads(msg.data)))
        await client.subscribe("events.cyborg.>", cb=keep)
        await client.flush()
        return self

    def of(self, what: str, after: float = 0.0, **match: Any) -> list[dict[str, Any]]:
        return [body for at, subject, body in self.seen if subject == f"events.cyborg.{what}" and at >= after
                and all(body.get(key) == value for key, value in match.items())]

    def when(self, what: str, **match: Any) -> list[float]:
        return [at for at, subject, body in self.seen if subject == f"events.cyborg.{what}"
                and all(body.get(key) == value for key, value in match.items())]


class ExternalDriver:
    """A driver someone else wrote: the seed's `POST /discovery` and `GET /hardware` (its example
    entry) on a port of its own; `silent` makes it stop answering (every call hangs)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.silent = False
        self.wake = asyncio.Event()
        self.calls = 0
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/discovery", self.discovery)
        app.router.add_get("/hardware", self.hardware)
        self.runner = await serve_locally(app, self.port, shutdown_timeout=2.0)

    async def stop(self) -> None:
        self.wake.set()
        if self.runner is not None:
            await self.runner.cleanup()

    async def discovery(self, request: web.Request) -> web.Response:
        await self._answer()
        return web.json_response({"status": "IN-PROGRESS"})

    async def hardware(self, request: web.Request) -> web.Response:
        await self._answer()
        return web.Response(text=SEED_EXAMPLE, content_type="application/json")

    async def _answer(self) -> None:
        if self.silent:
            await asyncio.wait_for(self.wake.wait(), 60)
        self.calls += 1


@dataclass
class Deployment:
    """The conductor's node and one node per host, each started (and restarted) as `teebus run` would."""

    bus: TestBus
    catalog: Catalog
    root: Path
    session: aiohttp.ClientSession
    events: Events
    nodes: dict[str, Node] = field(default_factory=dict)
    externals: list[ExternalDriver] = field(default_factory=list)

    def document(self, name: str) -> dict[str, Any]:
        if name == "conductor":
            return {"cyborg": {"host": "conductor", "drivers": [], **TIMING}}
        return {"cyborg": {"host": name, "drivers": ["pci", "inventory"], "sysfs_root": str(self.sysfs(name)),
                           "inventory_file": str(self.root / name / "inventory.toml"), **TIMING}}

    def sysfs(self, host: str) -> Path:
        return self.root / host / "sys"

    async def start(self, name: str) -> Node:
        node = Node(settings_for(self.bus, self.catalog, self.document(name)),
                    CONDUCTOR_NAMES if name == "conductor" else HOST_NAMES, self.catalog)
        await node.start()
        self.nodes[name] = node
        return node

    async def stop(self, name: str) -> None:
        """Stop a node, promptly (a stop that hangs is a failure: bus/component.py's `_cancel`
        asks again a task whose cancel asyncio.wait_for swallowed)."""
        await asyncio.wait_for(self.nodes.pop(name).stop(), STOP_PATIENCE)

    def url(self, name: str, site: str) -> str:
        return self.nodes[name].http.bound[site]

    @property
    def token(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {internal_token(self.bus.data_dir)}"}

    async def get(self, name: str, site: str, path: str, **params: Any) -> dict[str, Any]:
        async with self.session.get(self.url(name, site) + path, params=params) as response:
            body = await response.json()
            assert response.status == 200, body
            return body

    async def hardware(self, **params: Any) -> dict[str, Any]:
        return await self.get("conductor", "cyborg-conductor", "/hardware", **params)

    async def entries(self, **params: Any) -> dict[str, dict[str, Any]]:
        return {entry["uuid"]: entry for entry in (await self.hardware(**params))["hardware"]}

    async def agents(self) -> dict[str, dict[str, Any]]:
        listed = (await self.get("conductor", "cyborg-conductor", "/agents"))["agents"]
        return {agent["host"]: agent for agent in listed}

    async def agent_hardware(self, host: str) -> dict[str, Any]:
        return await self.get(host, "cyborg-agent", "/hardware")

    async def settled(self, timeout: float = 10.0) -> None:
        """Every host READY, every device of every host at the conductor, Healthy and fresh."""
        async def check() -> bool:
            agents, entries = await self.agents(), await self.entries()
            if any(agents.get(host, {}).get("status") != "READY" for host in HOSTS):
                return False
            expected = {uuid for host in HOSTS for uuid in initial_devices(host)}
            return expected <= set(entries) and all(
                entries[uuid]["teebus"]["health"] == HEALTHY and not entries[uuid]["teebus"]["stale"]
                for uuid in expected)
        await eventually(check, timeout)


@pytest.fixture(scope="module")
async def cyborg(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> AsyncIterator[Deployment]:
    root = tmp_path_factory.mktemp("cyborg-system")
    async with running_bus(root / "data", catalog.systems) as bus:
        async with bus.scope() as scope:
            events = await Events().start(await scope.connect("admin"))
            async with aiohttp.ClientSession() as session:
                deployment = Deployment(bus, catalog, root, session, events)
                for host in HOSTS:
                    build_sysfs(deployment.sysfs(host), host)
                    (root / host / "inventory.toml").write_text(INVENTORY.format(host=host))
                try:
                    for name in ("conductor", *HOSTS):
                        await deployment.start(name)
                    await deployment.settled()
                    yield deployment
                finally:
                    for name in list(deployment.nodes):
                        await deployment.stop(name)
                    for external in deployment.externals:
                        await external.stop()


# -- two hosts, one inventory ----------------------------------------------------------------------

async def test_the_conductor_lists_both_hosts_hardware_and_agents_over_http(cyborg: Deployment):
    entries = await cyborg.entries()
    for host in HOSTS:
        for uuid, kind in initial_devices(host).items():
            entry = entries[uuid]
            assert entry["acc_specs"]["device_type"] == kind and entry["teebus"]["host"] == host
            assert set(entry) == {"uuid", "acc_specs", "acc_status", "teebus"}
            assert set(entry["acc_status"]) == {"setup_required", "reboot_equired"}     # the seed's names
            assert entry["teebus"]["history"] == [] and entry["teebus"]["stale"] is False
    gpu = entries[device_uuid("h1", GPU)]
    assert (gpu["teebus"]["address"], gpu["teebus"]["vendor"], gpu["teebus"]["driver"]) == (GPU, "10de", "pci")
    nic = entries[device_uuid("h2", inventory_key("h2"))]
    assert nic["teebus"]["driver"] == "inventory" and nic["teebus"]["address"] is None

    # filters: host, device_type (any case), health; and combined
    assert set(await cyborg.entries(host="h1")) == set(initial_devices("h1"))
    assert set(await cyborg.entries(host="H2")) == set(initial_devices("h2"))
    assert set(await cyborg.entries(device_type="gpu")) == {device_uuid(host, GPU) for host in HOSTS}
    assert set(await cyborg.entries(device_type="QAT", host="h1")) == set()
    assert set(await cyborg.entries(health="healthy")) == set(entries)
    assert await cyborg.entries(health="Unhealthy") == {}
    async with cyborg.session.get(cyborg.url("conductor", "cyborg-conductor") + "/hardware",
                                  params={"health": "Sick"}) as response:
        assert response.status == 400 and "Healthy or Unhealthy" in (await response.json())["error"]["message"]

    # both agents READY, each with its lease and its devices counted
    agents = await cyborg.agents()
    for host in HOSTS:
        agent = agents[host]
        assert agent["status"] == "READY" and agent["lost_at"] is None
        assert agent["endpoint"] == f"{host}:{cyborg.nodes[host].settings.ports['cyborg-agent']}"
        assert agent["devices"] == len(initial_devices(host)) and agent["last_report"] is not None
        assert agent["lease_expires"] > time.time() - 0.1
    assert len(cyborg.events.of("agent.registered")) == 2

    # each agent's own GET /hardware: its host's devices only, its drivers READY
    for host in HOSTS:
        document = await cyborg.agent_hardware(host)
        assert {entry["uuid"] for entry in document["hardware"]} == set(initial_devices(host))
        assert {d["driver"]: d["status"] for d in document["drivers"]} == {"pci": "READY", "inventory": "READY"}


# -- rediscovery: a device added, a device removed -------------------------------------------------

async def test_a_device_added_then_removed_on_h1_is_followed_with_since(cyborg: Deployment):
    before = (await cyborg.hardware())["revision"]
    nvme = device_uuid("h1", NVME)
    add_function(cyborg.sysfs("h1"), NVME, pci_class="0x010802", vendor="0x144d", device="0xa80a", driver="nvme")
    await eventually(lambda: _has(cyborg, nvme), timeout=4 * ROUND + 3)    # at the next rediscovery, with room for load
    delta = await cyborg.hardware(since=str(before))
    assert [entry["uuid"] for entry in delta["hardware"]] == [nvme] and delta["removed"] == []
    assert delta["hardware"][0]["acc_specs"]["device_type"] == "SSD"
    assert delta["revision"] > before
    assert delta["hardware"][0]["teebus"]["revision"] > before
    assert (await cyborg.hardware(since=str(delta["revision"])))["hardware"] == []
    assert cyborg.events.of("device.added", uuid=nvme, host="h1", device_type="SSD")

    # it vanishes: Unhealthy at once (noticed, not dropped), then removed after forget_after rounds
    before_removal = (await cyborg.hardware())["revision"]
    (cyborg.sysfs("h1") / "bus/pci/devices" / NVME).unlink()
    await eventually(lambda: cyborg.events.of("device.removed", uuid=nvme), timeout=6 * ROUND + 3)
    assert [(e["from"], e["to"], e["reason"]) for e in cyborg.events.of("device.unhealthy", uuid=nvme)] == [
        (HEALTHY, UNHEALTHY, VANISHED)]
    delta = await cyborg.hardware(since=str(before_removal))
    assert [(r["uuid"], r["host"]) for r in delta["removed"]] == [(nvme, "h1")]
    assert nvme not in {entry["uuid"] for entry in delta["hardware"]}
    assert nvme not in await cyborg.entries()
    assert (await cyborg.agents())["h1"]["devices"] == len(initial_devices("h1"))


async def _has(cyborg: Deployment, uuid: str) -> bool:
    return uuid in await cyborg.entries()


# -- health hysteresis -----------------------------------------------------------------------------

async def test_a_flapping_device_is_unhealthy_at_once_and_healthy_only_after_clean_probes(cyborg: Deployment):
    fpga = device_uuid("h1", FPGA)
    enable = next((cyborg.sysfs("h1") / "devices").glob(f"**/{FPGA}")) / "enable"
    seen: list[tuple[str, str]] = []

    async def state() -> tuple[str, str]:
        teebus = (await cyborg.entries(host="h1"))[fpga]["teebus"]
        now = (teebus["health"], teebus["health_reason"])
        if not seen or seen[-1] != now:
            seen.append(now)
        return now

    enable.write_text("0\n")                                  # xclmgmt is bound, yet the device is disabled
    # at the first failed probe (test_health_book_settles_discoveries pins that); here: reported promptly
    await eventually(lambda: _health_is(state, UNHEALTHY), timeout=4 * ROUND + 3)
    assert seen[0] == (HEALTHY, ""), seen
    del seen[:-1]                                             # from the failure on
    reason = seen[0][1]
    assert "xclmgmt is bound but the device is disabled" in reason
    assert await cyborg.entries(health="unhealthy", host="h1") == {fpga: (await cyborg.entries())[fpga]}

    enable.write_text("1\n")                                  # healthy again: recovery takes clean probes
    fixed = time.monotonic()
    await eventually(lambda: _health_is(state, HEALTHY), timeout=(TIMING["healthy_after"] + 3) * ROUND + 3)
    recovered_after = time.monotonic() - fixed
    assert recovered_after >= (TIMING["healthy_after"] - 1) * ROUND * 0.8, (
        f"Healthy {recovered_after:.2f}s after the fix: sooner than {TIMING['healthy_after']} probes")
    # what the conductor showed on the way: the failure, maybe the recovery's progress, then Healthy
    assert seen[0] == (UNHEALTHY, reason) and seen[-1] == (HEALTHY, "")
    progress = [text for health, text in seen[1:-1]]
    assert all(health == UNHEALTHY for health, _ in seen[:-1])
    assert all(text.startswith("recovering (") and text.endswith(f"clean probes) after: {reason}")
               for text in progress), seen
    assert progress == sorted(progress), seen

    # the conductor's entry keeps the history; the events say the same
    history = (await cyborg.entries())[fpga]["teebus"]["history"]
    assert [(h["from"], h["to"]) for h in history] == [(HEALTHY, UNHEALTHY), (UNHEALTHY, HEALTHY)]
    assert history[0]["reason"] == reason
    assert history[1]["reason"] == f"{TIMING['healthy_after']} consecutive clean probes after: {reason}"
    assert history[1]["at"] - history[0]["at"] >= (TIMING["healthy_after"] - 1) * ROUND * 0.8
    assert [(e["from"], e["to"]) for e in cyborg.events.of("device.unhealthy", uuid=fpga)] == [(HEALTHY, UNHEALTHY)]
    assert [(e["from"], e["to"]) for e in cyborg.events.of("device.healthy", uuid=fpga)] == [(UNHEALTHY, HEALTHY)]
    assert cyborg.events.when("device.unhealthy", uuid=fpga) < cyborg.events.when("device.healthy", uuid=fpga)


async def _health_is(state, health: str) -> bool:
    return (await state())[0] == health


@pytest.mark.parametrize("conductor_down", [False, True], ids=["conductor-up", "conductor-down"])
async def test_an_agent_restart_holds_an_unhealthy_device_for_its_clean_probes(cyborg: Deployment, conductor_down):
    """The agent keeps health in memory: restarted, it takes the conductor's view of its host (at its
    start, or at its hello when no conductor answered then), so a device the conductor shows
    Unhealthy stays so for healthy_after clean rounds, then one device.healthy and one history entry."""
    await cyborg.settled()
    qat = device_uuid("h2", QAT)
    enable = next((cyborg.sysfs("h2") / "devices").glob(f"**/{QAT}")) / "enable"
    enable.write_text("0\n")                                  # c6xx is bound, yet the device is disabled

    async def entry() -> dict[str, Any]:
        return (await cyborg.entries(host="h2"))[qat]["teebus"]

    async def unhealthy() -> bool:
        teebus = await entry()
        return teebus["health"] == UNHEALTHY and bool(teebus["history"]) and teebus["history"][-1]["to"] == UNHEALTHY

    await eventually(unhealthy, timeout=3 * ROUND + 2)
    before = await entry()
    reason = before["history"][-1]["reason"]
    assert "c6xx is bound but the device is disabled" in reason

    seen: list[tuple[str, str]] = []                          # what the conductor shows, from now on

    async def watch() -> None:
        while True:
            try:
                teebus = await entry()
            except KeyError as missing:                       # no conductor node (down), or no such device
                if str(missing).strip("'") == qat:
                    seen.append(("absent", ""))
                await asyncio.sleep(0.02)
                continue
            except (aiohttp.ClientError, AssertionError):     # the conductor stopping or starting
                await asyncio.sleep(0.02)
                continue
            if not seen or seen[-1] != (teebus["health"], teebus["health_reason"]):
                seen.append((teebus["health"], teebus["health_reason"]))
            if teebus["health"] == HEALTHY:
                return
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    try:
        await cyborg.stop("h2")                               # the host's agent (and drivers) stop
        enable.write_text("1\n")                              # every probe from the restart on is clean
        if conductor_down:
            await cyborg.stop("conductor")
        restarted = time.monotonic()
        await cyborg.start("h2")
        if conductor_down:
            await asyncio.sleep(3 * ROUND)                    # it probes the device clean, no conductor to ask
            await cyborg.start("conductor")                   # its hello, and its seeding, now
        await asyncio.wait_for(asyncio.shield(watcher), (TIMING["healthy_after"] + 4) * ROUND + 5)
    finally:
        watcher.cancel()
    # No clock here: the drivers' hellos at the restart bring rounds of their own, so the clean
    # probes may come faster than one a rediscovery period. What the conductor showed: Unhealthy
    # throughout, for the failure it had (recovering probe by probe), then Healthy; the agent's own
    # count of clean probes is the recovery's reason, checked below.
    assert seen[0] == (UNHEALTHY, before["health_reason"]) and seen[-1] == (HEALTHY, ""), seen
    assert all(health == UNHEALTHY for health, _ in seen[:-1]), seen
    assert all(text == reason or (text.startswith("recovering (") and text.endswith(f"clean probes) after: {reason}"))
               for _, text in seen[:-1]), seen
    await asyncio.sleep(2 * ROUND)                            # more clean rounds: nothing more to record
    after = await entry()
    assert after["health"] == HEALTHY
    assert after["history"][:-1] == before["history"], "one history entry, and only one"
    recovery = after["history"][-1]
    assert (recovery["from"], recovery["to"]) == (UNHEALTHY, HEALTHY) and "derived" not in recovery
    assert recovery["reason"] == f"{TIMING['healthy_after']} consecutive clean probes after: {reason}"
    healthy_events = cyborg.events.of("device.healthy", uuid=qat, after=restarted)
    assert [(e["from"], e["to"], e.get("derived")) for e in healthy_events] == [(UNHEALTHY, HEALTHY, None)]
    assert cyborg.events.of("device.unhealthy", uuid=qat, after=restarted) == []
    await cyborg.settled()


# -- an external driver ----------------------------------------------------------------------------

async def test_an_external_http_driver_registers_with_h1s_agent_then_falls_silent(cyborg: Deployment):
    external = ExternalDriver()
    cyborg.externals.append(external)
    await external.start()
    hello = {"status": "READY", "endpoint": f"127.0.0.1:{external.port}", "type": "CRYPTO"}
    agent = cyborg.url("h1", "cyborg-agent")

    # registration is internal: no credential, no registration
    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        async with cyborg.session.post(agent + "/hello", json=hello, headers=headers) as response:
            assert response.status == 401
            assert "internal.token" in (await response.json())["error"]["message"]
    assert len((await cyborg.agent_hardware("h1"))["drivers"]) == 2

    async with cyborg.session.post(agent + "/hello", json=hello, headers=cyborg.token) as response:
        assert response.status == 200
        registered = await response.json()
    driver = registered["driver"]
    assert registered == {"status": "REGISTERED", "driver": f"ext-127-0-0-1-{external.port}"}

    # its device reaches the conductor, as the seed wrote it, on h1
    await eventually(lambda: _has(cyborg, SEED_UUID), timeout=3 * ROUND + 2)
    entry = (await cyborg.entries(host="h1"))[SEED_UUID]
    example = orjson.loads(SEED_EXAMPLE)["hardware"][0]
    assert {key: entry[key] for key in ("uuid", "acc_specs", "acc_status")} == example
    assert (entry["teebus"]["host"], entry["teebus"]["driver"], entry["teebus"]["health"]) == ("h1", driver, HEALTHY)
    assert set(await cyborg.entries(device_type="crypto")) == {SEED_UUID}
    assert cyborg.events.of("device.added", uuid=SEED_UUID, host="h1", device_type="CRYPTO")

    # it stops answering: SILENT at the agent, its device kept there and at the conductor, Healthy
    external.silent = True

    async def is_silent() -> bool:
        drivers = {d["driver"]: d for d in (await cyborg.agent_hardware("h1"))["drivers"]}
        return drivers[driver]["status"] == "SILENT"

    await eventually(is_silent, timeout=4 * ROUND + 3 * TIMING["driver_timeout_seconds"] + 3)
    document = await cyborg.agent_hardware("h1")
    drivers = {d["driver"]: d for d in document["drivers"]}
    assert drivers[driver]["endpoint"] == hello["endpoint"] and drivers[driver]["type"] == "CRYPTO"
    assert "did not answer within 0.5 s" in drivers[driver]["problem"]
    assert drivers["pci"]["status"] == drivers["inventory"]["status"] == "READY"
    assert SEED_UUID in {e["uuid"] for e in document["hardware"]}
    assert cyborg.events.of("driver.silent", host="h1", driver=driver)
    await asyncio.sleep(2 * ROUND + 2 * TIMING["driver_timeout_seconds"])     # more rounds while it is silent
    kept = (await cyborg.entries())[SEED_UUID]
    assert kept["teebus"]["health"] == HEALTHY and not kept["teebus"]["stale"], "silence is no failed probe"
    assert not cyborg.events.of("device.removed", uuid=SEED_UUID)
    assert not cyborg.events.of("device.unhealthy", uuid=SEED_UUID)
    await cyborg.settled()                                    # the built-in drivers' rounds go on


# -- a host that stops ------------------------------------------------------------------------------

async def test_a_stopped_host_is_lost_within_its_lease_then_recovers(cyborg: Deployment):
    h2 = set(initial_devices("h2"))
    lost_before = len(cyborg.events.of("agent.lost", host="h2"))
    stopping = time.monotonic()
    await cyborg.stop("h2")
    await eventually(lambda: len(cyborg.events.of("agent.lost", host="h2")) > lost_before, timeout=LEASE + 3)
    [lost_at] = cyborg.events.when("agent.lost", host="h2")[lost_before:]
    assert lost_at - stopping <= LEASE + 1.0, f"LOST {lost_at - stopping:.2f}s after the stop, lease {LEASE}s"
    lost = cyborg.events.of("agent.lost", host="h2")[-1]
    assert lost["lease_seconds"] == LEASE and lost["devices"] == len(h2)
    assert (await cyborg.agents())["h2"]["status"] == "LOST"
    assert (await cyborg.agents())["h1"]["status"] == "READY"

    async def h2_stale() -> bool:
        entries = await cyborg.entries(host="h2")
        return set(entries) == h2 and all(entry["teebus"]["stale"] for entry in entries.values())

    await eventually(h2_stale, timeout=3)
    assert not any(entry["teebus"]["stale"] for entry in (await cyborg.entries(host="h1")).values())
    await asyncio.sleep(2 * LEASE)
    assert len(cyborg.events.of("agent.lost", host="h2")) == lost_before + 1, "LOST is raised once"

    # started again: READY (recovered), its devices fresh
    recovered_before = len(cyborg.events.of("agent.recovered", host="h2"))
    await cyborg.start("h2")
    await eventually(lambda: len(cyborg.events.of("agent.recovered", host="h2")) > recovered_before, timeout=5)
    await cyborg.settled()
    agent = (await cyborg.agents())["h2"]
    assert agent["status"] == "READY" and agent["devices"] == len(h2)
    assert cyborg.events.of("agent.recovered", host="h2")[-1]["by"] == "hello"
    assert len(cyborg.events.of("agent.registered", host="h2")) == 1, "a known host recovers; it is not new"


# -- the conductor restarted -------------------------------------------------------------------------

def _comparable(entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The inventory as it should survive a restart: every entry, but whether it is stale and its
    revision (a lease that lapsed while no conductor ran may mark and clear stale meanwhile)."""
    return {uuid: {**entry, "teebus": {k: v for k, v in entry["teebus"].items() if k not in ("stale", "revision")}}
            for uuid, entry in entries.items()}


async def test_a_conductor_restart_keeps_every_agent_and_device(cyborg: Deployment):
    await cyborg.settled()
    before = await cyborg.entries()
    registered = {host: agent["registered"] for host, agent in (await cyborg.agents()).items()}
    await cyborg.stop("conductor")
    await cyborg.start("conductor")
    await cyborg.settled()
    assert _comparable(await cyborg.entries()) == _comparable(before)
    agents = await cyborg.agents()
    assert {host: agent["registered"] for host, agent in agents.items()} == registered
    assert all(agents[host]["status"] == "READY" for host in HOSTS)
    if SEED_UUID in before:                                   # the external driver's device, kept while silent
        assert (await cyborg.entries())[SEED_UUID]["teebus"]["host"] == "h1"
    revision = (await cyborg.hardware())["revision"]
    assert revision >= max(entry["teebus"]["revision"] for entry in before.values())
    assert (await cyborg.hardware(since=str(revision)))["hardware"] == []


async def test_a_conductor_down_longer_than_a_lease_marks_no_live_agent_lost(cyborg: Deployment):
    """The restarted conductor gives every agent one lease to renew before it may call it LOST."""
    # Whether the restarted conductor's first sweep (lease/10 after its start) comes before an agent's
    # next heartbeat is a race each host loses about 7 times in 10 here (9 in 10 with the defaults:
    # sweep 1 s, heartbeat 10 s); three restarts make the bug show all but certainly.
    # A machine too loaded to heartbeat within the lease loses its agents rightly; such a LOST comes
    # a lease or more after the restart. The bug's LOST comes at the first sweep, at once.
    for _ in range(3):
        await cyborg.settled()
        await cyborg.stop("conductor")
        await asyncio.sleep(2 * LEASE + 0.3)      # the agents heartbeat on, answered by nobody
        starting = time.monotonic()
        await cyborg.start("conductor")
        await cyborg.settled()
        await asyncio.sleep(2 * LEASE)
        early = [at - starting for at in cyborg.events.when("agent.lost") if starting <= at < starting + LEASE]
        assert early == [], f"agents LOST {early} s after the conductor's restart, within the lease it grants"


async def test_an_entry_another_host_owns_does_not_block_the_rest_of_a_hosts_hardware(cyborg: Deployment):
    for host in ("h1", "h2"):                     # h1 first: it owns the example's uuid (test 4 may have done it)
        if host == "h1" and SEED_UUID in await cyborg.entries(host="h1"):
            continue
        external = ExternalDriver()
        cyborg.externals.append(external)
        await external.start()
        hello = {"status": "READY", "endpoint": f"127.0.0.1:{external.port}", "type": "CRYPTO"}
        async with cyborg.session.post(cyborg.url(host, "cyborg-agent") + "/hello", json=hello,
                                       headers=cyborg.token) as response:
            assert response.status == 200
        if host == "h1":
            await eventually(lambda: _has(cyborg, SEED_UUID), timeout=3 * ROUND + 2)
    add_function(cyborg.sysfs("h2"), NVME, pci_class="0x010802", vendor="0x144d", device="0xa80a", driver="nvme")
    nvme = device_uuid("h2", NVME)

    async def at_h2s_agent() -> bool:
        return nvme in {entry["uuid"] for entry in (await cyborg.agent_hardware("h2"))["hardware"]}

    await eventually(at_h2s_agent, timeout=3 * ROUND + 2)
    await eventually(lambda: _has(cyborg, nvme), timeout=4 * ROUND)
