"""Enarx on several hosts (issue 14): two keep managers, "host-a" and "host-b", on one bus and one
machine, each with its own keeps, all reached through host-a's HTTP adapter.

The two nodes share the session's data directory (per-keep NATS users need the server's; every file
of a keep is named by its kuuid) and use distinct wasmldr port ranges, as two hosts on one machine must.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import AsyncIterator

import aiohttp
import cbor2
import pytest

from bus.server import free_port
from components.enarx import keep_processes, subjects
from components.enarx.client import EnarxClient, EnarxError, kuuid_text
from components.enarx.keep_record import KeepRecord, KeepState
from teebus.launcher import Node
from teebus.testing import settings_for
from tests.conftest import eventually
from tests.wasm_modules import wat

pytestmark = pytest.mark.timeout(120)
FAST = {"watch_interval": 0.2, "stop_keeps_on_exit": True}
RANGE = 100   # ports between the two hosts' first wasmldr ports


@dataclass
class Hosts:
    """host-a (keep manager and the one HTTP adapter) and host-b (a keep manager only)."""

    bus: object
    catalog: object
    a: Node
    b: Node
    url: str
    ports: dict[str, int]
    client: EnarxClient

    def keepmgr(self, node: Node):
        return next(c for c in node.components if c.name == "keepmgr")

    async def record(self, keep: dict) -> KeepRecord:
        return (await self.keepmgr(self.a).keeps.get(kuuid_text(keep["kuuid"]))).value

    async def nil_contract(self) -> dict:
        return next(c for c in await self.client.contracts() if c["backend"] == "Nil")

    async def new_keep(self, host: str) -> dict:
        return await self.client.new_keep(await self.nil_contract(), host=host)

    async def ready_keep(self, host: str) -> dict:
        keep = await self.new_keep(host)
        await self.client.converse(keep["kuuid"], "request-evidence")
        assert await self.client.converse(keep["kuuid"], "launch") == "Success"
        return await self.client.keep(keep["kuuid"])

    async def restart_a(self) -> None:
        """Stop host-a's node (it stops its own keeps: stop_keeps_on_exit) and start it again."""
        await self.a.stop()
        self.a = await start(self.bus, self.catalog, "host-a", ["enarx.keepmgr", "http.enarx"], self.ports)


async def start(bus, catalog, host: str, names: list[str], ports: dict[str, int]) -> Node:
    settings = settings_for(bus, catalog, {"enarx": {**FAST, "host": host}}, ports=ports)
    node = Node(settings, names, catalog)
    await node.start()
    return node


def wasmldr_bases() -> tuple[int, int]:
    """host-a's first wasmldr port and host-b's, RANGE apart: their keeps never pick the same port."""
    base = free_port()
    return (base, base + RANGE) if base + 2 * RANGE < 65536 else (base - RANGE, base)


@pytest.fixture(scope="module")
async def hosts(bus, catalog) -> AsyncIterator[Hosts]:
    base_a, base_b = wasmldr_bases()
    ports_a = {"enarx-keepmgr": free_port(), "enarx-wasmldr": base_a}
    a = await start(bus, catalog, "host-a", ["enarx.keepmgr", "http.enarx"], ports_a)
    b = await start(bus, catalog, "host-b", ["enarx.keepmgr"], {"enarx-wasmldr": base_b})
    url = f"http://127.0.0.1:{ports_a['enarx-keepmgr']}"
    async with EnarxClient(url) as client:
        running = Hosts(bus, catalog, a, b, url, ports_a, client)
        try:
            yield running
        finally:
            await running.a.stop()
            await running.b.stop()


async def keep_ids(hosts: Hosts) -> set[bytes]:
    return {keep["kuuid"] for keep in await hosts.client.keeps()}


# -- keeps of two hosts through one adapter ---------------------------------------------------------

async def test_keeps_of_two_hosts_are_listed_through_one_adapter_each_with_its_host(hosts: Hosts):
    on_a, on_b = await hosts.new_keep("host-a"), await hosts.new_keep("host-b")
    assert on_a["state"] == on_b["state"] == "Indeterminate"
    record_a, record_b = await hosts.record(on_a), await hosts.record(on_b)
    assert (record_a.host, record_b.host) == ("host-a", "host-b")
    # each keep manager started its own keep's process, from its own wasmldr port range
    assert record_a.kuuid in hosts.keepmgr(hosts.a)._processes and record_a.kuuid not in hosts.keepmgr(hosts.b)._processes
    assert record_b.kuuid in hosts.keepmgr(hosts.b)._processes and record_b.kuuid not in hosts.keepmgr(hosts.a)._processes
    base_b = hosts.ports["enarx-wasmldr"] + RANGE
    assert hosts.ports["enarx-wasmldr"] <= record_a.wasmldr_port < base_b <= record_b.wasmldr_port

    listed = {keep["kuuid"]: keep for keep in await hosts.client.keeps()}
    assert {on_a["kuuid"], on_b["kuuid"]} <= set(listed)
    assert listed[on_b["kuuid"]]["state"] == "Indeterminate"
    for keep in (on_a, on_b):
        assert (await hosts.client.shutdown(keep["kuuid"]))["state"] == "Shutdown"


async def test_a_keep_of_another_host_is_got_conversed_with_and_deleted_through_this_adapter(hosts: Hosts):
    keep = await hosts.ready_keep("host-b")
    assert keep["state"] == "Ready" and keep["wasmldr"]["wasmldr_port"] >= hosts.ports["enarx-wasmldr"] + RANGE
    result = await hosts.client.deploy(keep, wat("hello"))
    assert result["exit_code"] == 0 and result["stdout"]
    record = await hosts.record(keep)
    assert record.host == "host-b" and keep_processes.is_alive(record.pid, record.kuuid)

    on_b = hosts.keepmgr(hosts.b).stats()
    served_before = on_b["keep_delete"].served + on_b["keep_delete_here"].served
    down = await hosts.client.shutdown(keep["kuuid"])
    assert down["state"] == "Shutdown" and down["wasmldr"] is None
    # host-b's keep manager shut it down, whichever keep manager the request reached (host-a's hands
    # it over): the process is gone, its socket too
    on_b = hosts.keepmgr(hosts.b).stats()
    assert on_b["keep_delete"].served + on_b["keep_delete_here"].served == served_before + 1
    assert not keep_processes.is_alive(record.pid, record.kuuid)
    assert not keep_processes.socket_path(hosts.b.settings.data_dir, record.kuuid).exists()
    assert (await hosts.client.shutdown(keep["kuuid"]))["state"] == "Shutdown"   # idempotent


async def test_a_host_no_keep_manager_serves_is_a_404_and_creates_nothing(hosts: Hosts):
    contract, before = await hosts.nil_contract(), await keep_ids(hosts)
    for query, status, words in (("?host=nobody", 404, "no keep manager serves host 'nobody'"),
                                 ("?host=no%20body", 400, "must be a host name"),
                                 ("?host=a&host=b", 400, "given 2 times")):
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{hosts.url}/new_keep/{query}", data=cbor2.dumps(contract)) as response:
                assert response.status == status and response.content_type == "application/cbor"
                assert words in cbor2.loads(await response.read())["details"]
    assert await keep_ids(hosts) == before
    assert contract["uuid"] in [c["uuid"] for c in await hosts.client.contracts()]   # still on offer


async def test_the_adapter_may_ask_one_hosts_keep_manager_but_not_hand_over_a_shutdown(connect_as):
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc).lower())

    adapter = await connect_as("adapter", error_cb=on_error)
    await adapter.publish(subjects.new_keep_on("nobody"), b"")
    await adapter.publish(subjects.delete_on("nobody"), b"")
    await adapter.flush()
    await eventually(lambda: violations)
    assert all(subjects.delete_on("nobody") in v for v in violations), violations


# -- what each keep manager owns ------------------------------------------------------------------

async def fake_keep(hosts: Hosts, host: str, pid: int) -> str:
    """A Ready keep record of `host` whose loader process is not alive here."""
    kuuid = str(uuid.uuid4())
    await hosts.keepmgr(hosts.a).keeps.create(kuuid, KeepRecord(
        kuuid=kuuid, backend="Nil", host=host, socket_path="", wasmldr_port=1, state=KeepState.READY, pid=pid))
    return kuuid


async def test_a_keep_manager_watches_only_its_own_hosts_keeps(hosts: Hosts):
    process = await asyncio.create_subprocess_exec("true")
    await process.wait()
    mine, elsewhere = await fake_keep(hosts, "host-a", process.pid), await fake_keep(hosts, "host-c", process.pid)
    await eventually(lambda: _state(hosts, mine, "Error"))        # host-a's watchdog passed over both
    await asyncio.sleep(0.5)                                       # and a few more times
    assert (await hosts.client.keep(elsewhere))["state"] == "Ready"
    # no keep manager serves host-c: its loader is asked to stop over the bus, the keep recorded Shutdown
    assert (await hosts.client.shutdown(elsewhere))["state"] == "Shutdown"


async def _state(hosts: Hosts, kuuid: str, expected: str) -> bool:
    return (await hosts.client.keep(kuuid))["state"] == expected


async def test_a_keep_manager_restart_leaves_other_hosts_keeps_running(hosts: Hosts):
    on_a, on_b = await hosts.new_keep("host-a"), await hosts.ready_keep("host-b")
    await hosts.restart_a()                     # host-a stops its own keeps as it goes, and checks on start
    assert (await hosts.client.keep(on_a["kuuid"]))["state"] == "Shutdown"
    await asyncio.sleep(0.5)                    # the new host-a watchdog's passes
    assert (await hosts.client.keep(on_b["kuuid"]))["state"] == "Ready"
    assert (await hosts.client.deploy(on_b, wat("hello")))["exit_code"] == 0
    assert "evidence" in await hosts.client.converse(on_b["kuuid"], "request-evidence")
    with pytest.raises(EnarxError) as launched:
        await hosts.client.converse(on_b["kuuid"], "launch")
    assert launched.value.status == 409
    assert (await hosts.client.shutdown(on_b["kuuid"]))["state"] == "Shutdown"
