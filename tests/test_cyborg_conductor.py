"""The Cyborg conductor over the bus and over HTTP: the seed's `POST /hello` body verbatim,
reports (full and incremental), the versioned inventory (`since`, removals, the 410 past the
horizon), filters, health history and events, leases (an agent that stops heartbeating is LOST
within its lease and comes back), restarts, two conductors racing, unauthenticated and malformed
requests.

Agents are played by the test: it sends hello, heartbeats and reports on the bus subjects the
agent uses. Each test names its own hosts, since the buckets are shared by the session."""

from __future__ import annotations

import asyncio
import time
import uuid as uuidlib
from typing import Any

import aiohttp
import orjson
import pytest

from adapters.http.cyborg import CONDUCTOR_SITE, conductor_routes, render_error
from adapters.http.runner import HttpServer, Site
from bus.errors import BadRequest, BusError, NotFound
from bus.requester import Requester
from bus.server import free_port
from components.cyborg import subjects
from components.cyborg.conductor import Conductor
from components.cyborg.config import CyborgConfig
from components.cyborg.hardware import Device, device_uuid, to_seed_json
from tests.conftest import eventually, internal_token

# The seed's Conductor `POST /hello` body, as printed there (trailing comma included).
SEED_HELLO = b'''{
   "status":"READY",
   "endpoint":"compute-whatever:1337",
}'''
# The seed's Driver `GET /hardware` entry, its missing commas put back, names as written.
SEED_ENTRY = {
    "uuid": "8e45a2ea-5364-4b0d-a252-bf8becaa606e",
    "acc_specs": {"remote": 0, "num": 1, "device_type": "CRYPTO",
                  "acc_capability": {"num": 2, "ipsec": {"aes": {"3des": 50, "num": 1}}}},
    "acc_status": {"setup_required": True, "reboot_equired": False},
}
SLOW = CyborgConfig(host="conductor", heartbeat_seconds=2.0, lease_heartbeats=3)     # lease 6 s
FAST = CyborgConfig(host="conductor", heartbeat_seconds=0.2, lease_heartbeats=3)     # lease 0.6 s


def new_host(prefix: str = "compute") -> str:
    return f"{prefix}-{uuidlib.uuid4().hex[:8]}"


def device(host: str, slot: int, device_type: str = "GPU", **fields: Any) -> dict[str, Any]:
    address = f"0000:{slot:02x}:00.0"
    return to_seed_json(Device(device_uuid(host, address), host, device_type, address=address,
                               vendor="10de", product="2330", **fields))


class Events:
    """Every `events.cyborg.>` message, as the bus carries it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    async def start(self, client) -> "Events":
        async def keep(msg) -> None:
            self.seen.append((msg.subject, orjson.loads(msg.data)))
        await client.subscribe("events.cyborg.>", cb=keep)
        await client.flush()
        return self

    def of(self, what: str, **match: Any) -> list[dict[str, Any]]:
        return [body for subject, body in self.seen if subject == f"events.cyborg.{what}"
                and all(body.get(k) == v for k, v in match.items())]


@pytest.fixture
async def cyborg(connect_as) -> Requester:
    """The agents' side of the bus (the cyborg role: internal subjects too)."""
    return Requester(await connect_as("cyborg"))


@pytest.fixture
async def events(connect_as) -> Events:
    return await Events().start(await connect_as("admin"))


@pytest.fixture
async def http(connect_as, data_dir):
    """The conductor's HTTP site, built from conductor_routes as adapters/http/cyborg.py serves it."""
    site = Site(CONDUCTOR_SITE, free_port(), "gateway", conductor_routes, render_error, body_limit=64 * 1024)
    server = HttpServer("127.0.0.1", data_dir)
    await server.start([site], {"gateway": Requester(await connect_as("gateway"))})
    session = aiohttp.ClientSession(base_url=server.bound[CONDUCTOR_SITE])
    try:
        yield session
    finally:
        await session.close()
        await server.stop()


async def hello(bus: Requester, host: str) -> dict[str, Any]:
    reply = await bus.request(subjects.CONDUCTOR_HELLO, {"status": "READY", "endpoint": f"{host}:6667", "host": host})
    return reply.payload


async def report(bus: Requester, host: str, **body: Any) -> int:
    reply = await bus.request(subjects.CONDUCTOR_REPORT, {"host": host, **body})
    return reply.payload["revision"]


async def hardware(bus: Requester, **query: Any) -> dict[str, Any]:
    return (await bus.request(subjects.CONDUCTOR_HARDWARE, query)).payload


async def agent(bus: Requester, host: str) -> dict[str, Any]:
    agents = (await bus.request(subjects.CONDUCTOR_AGENTS, {})).payload["agents"]
    return next(a for a in agents if a["host"] == host)


def bearer(data_dir) -> dict[str, str]:
    return {"Authorization": f"Bearer {internal_token(data_dir)}"}


# -- the seed's bodies over HTTP --------------------------------------------------------------

async def test_the_seeds_hello_body_verbatim_registers_over_http(start_component, http, data_dir, events, cyborg):
    await start_component(Conductor, config=SLOW)
    async with http.post("/hello", data=SEED_HELLO, headers=bearer(data_dir)) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    assert body["status"] == "REGISTERED" and body["host"] == "compute-whatever"
    assert body["lease_seconds"] == 6.0 and body["heartbeat_seconds"] == 2.0 and isinstance(body["revision"], int)
    async with http.get("/agents") as response:
        listed = next(a for a in (await response.json())["agents"] if a["host"] == "compute-whatever")
    assert listed["status"] == "READY" and listed["endpoint"] == "compute-whatever:1337"
    assert listed["lease_expires"] > time.time() and listed["devices"] == 0
    # the seed's hardware entry, reported by that agent, comes back as the seed wrote it
    await report(cyborg, "compute-whatever", full=True, added=[SEED_ENTRY])
    async with http.get("/hardware", params={"host": "compute-whatever"}) as response:
        entries = (await response.json())["hardware"]
    assert [e["uuid"] for e in entries] == [SEED_ENTRY["uuid"]]
    assert {k: entries[0][k] for k in ("uuid", "acc_specs", "acc_status")} == SEED_ENTRY
    assert entries[0]["teebus"]["host"] == "compute-whatever" and entries[0]["teebus"]["stale"] is False
    assert events.of("agent.registered", host="compute-whatever", endpoint="compute-whatever:1337")
    assert events.of("device.added", uuid=SEED_ENTRY["uuid"], device_type="CRYPTO")


async def test_hello_without_the_internal_credential_is_refused(start_component, http, cyborg):
    await start_component(Conductor, config=SLOW)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        async with http.post("/hello", data=SEED_HELLO, headers=headers) as response:
            assert response.status == 401
            error = (await response.json())["error"]
            assert error["status"] == 401 and "internal.token" in error["message"]
    # reading is open
    async with http.get("/agents") as response:
        assert response.status == 200


async def test_malformed_bodies_and_queries_are_400_with_clear_messages(start_component, http, data_dir):
    await start_component(Conductor, config=SLOW)
    cases = [(b"not json", "not valid JSON"),
             (b"[]", "must be a JSON object"),
             (b'{"status": "BUSY", "endpoint": "a:1"}', 'status must be "READY"'),
             (b'{"status": "READY"}', "endpoint is missing"),
             (b'{"status": "READY", "endpoint": "nohost"}', "endpoint must be host:port"),
             (b'{"status": "READY", "endpoint": "a:99999"}', "port must be 1 to 65535"),
             (b'{"status": "READY", "endpoint": "a:1", "extra": 1}', "unknown fields: extra"),
             (b'{"status": "READY", "endpoint": "a b:1"}', "host name"),
             (b'{"status": "READY", "endpoint": ":1"}', "host name"),
             (b'{"status": "READY", "endpoint": "a:1",, }', "not valid JSON")]
    for body, message in cases:
        async with http.post("/hello", data=body, headers=bearer(data_dir)) as response:
            assert response.status == 400, body
            assert message in (await response.json())["error"]["message"], body
    queries = [({"since": "-1"}, "non-negative integer"), ({"since": "abc"}, "non-negative integer"),
               ({"since": "1.5"}, "non-negative integer"), ({"health": "Sick"}, "Healthy or Unhealthy"),
               ({"device_type": "G P U"}, "device_type"), ({"colour": "red"}, "unknown query parameters"),
               ([("since", "1"), ("since", "2")], "give it once")]
    for params, message in queries:
        async with http.get("/hardware", params=params) as response:
            assert response.status == 400, params
            assert message in (await response.json())["error"]["message"], params
    async with http.post("/hello", data=b"x" * 10_000, headers=bearer(data_dir)) as response:
        assert response.status == 413


async def test_malformed_reports_are_refused_and_store_nothing(start_component, cyborg):
    await start_component(Conductor, config=CyborgConfig(host="conductor", heartbeat_seconds=2.0,
                                                         max_devices_per_host=4))
    host, other = new_host(), new_host()
    await hello(cyborg, host)
    good = device(host, 1)
    bad_entries = [
        ({"full": "yes"}, "full must be true or false"),
        ({"added": {}}, "added must be a list"),
        ({"added": [device(other, 1)]}, "is not this host"),
        ({"added": [{**good, "acc_specs": {**good["acc_specs"], "num": 0}}]}, "added[0].acc_specs.num"),
        ({"added": [good], "changed": [good]}, "already named by added[0]"),
        ({"removed": ["not-a-uuid"]}, "removed[0] must be a device uuid"),
        ({"transitions": [{"uuid": good["uuid"], "from": "Healthy", "to": "Sick", "at": 1}]}, "to must be"),
        ({"transitions": [{"uuid": good["uuid"], "from": "Healthy", "to": "Unhealthy", "at": 1}]},
         "does not have"),
        ({"added": [device(host, i) for i in range(5)]}, "at most 4"),
        ({"surprise": 1}, "unknown fields: surprise"),
    ]
    for body, message in bad_entries:
        with pytest.raises(BadRequest) as refused:
            await report(cyborg, host, **body)
        assert message in refused.value.message, (body, refused.value.message)
    assert (await hardware(cyborg, host=host))["hardware"] == []
    with pytest.raises(NotFound, match="never said hello"):
        await report(cyborg, new_host(), full=True)
    with pytest.raises(NotFound, match="never said hello"):
        await cyborg.request(subjects.CONDUCTOR_HEARTBEAT, {"host": new_host()})


# -- reports, the versioned inventory, filters, history ------------------------------------------

async def test_reports_since_filters_and_history(start_component, cyborg, events, http):
    await start_component(Conductor, config=SLOW)
    host, neighbour = new_host(), new_host()
    await hello(cyborg, host)
    await hello(cyborg, neighbour)
    gpu, fpga, nic = device(host, 1), device(host, 2, "FPGA"), device(host, 3, "NIC")
    start = await report(cyborg, host, full=True, added=[gpu, fpga, nic])
    await report(cyborg, neighbour, full=True, added=[device(neighbour, 1)])
    mine = await hardware(cyborg, host=host)
    assert {e["uuid"] for e in mine["hardware"]} == {gpu["uuid"], fpga["uuid"], nic["uuid"]}
    assert mine["revision"] >= start
    assert [e["uuid"] for e in (await hardware(cyborg, host=host, device_type="fpga"))["hardware"]] == [fpga["uuid"]]
    everyone = await hardware(cyborg)
    assert {host, neighbour} <= {e["teebus"]["host"] for e in everyone["hardware"]}
    assert len(events.of("device.added", host=host)) == 3

    # the GPU fails a probe: a change and a transition; `since` returns that alone
    revision = (await hardware(cyborg))["revision"]
    failing = device(host, 1, health="Unhealthy", health_reason="Xid 79: fell off the bus")
    at = time.time()
    after = await report(cyborg, host, changed=[failing], transitions=[
        {"uuid": gpu["uuid"], "from": "Healthy", "to": "Unhealthy", "reason": "Xid 79: fell off the bus", "at": at}])
    assert after > revision
    changed = await hardware(cyborg, since=revision)
    assert [e["uuid"] for e in changed["hardware"]] == [gpu["uuid"]] and changed["removed"] == []
    entry = changed["hardware"][0]
    assert entry["teebus"]["health"] == "Unhealthy" and entry["teebus"]["revision"] == after
    assert entry["teebus"]["history"] == [{"from": "Healthy", "to": "Unhealthy",
                                           "reason": "Xid 79: fell off the bus", "at": at}]
    assert [e["uuid"] for e in (await hardware(cyborg, host=host, health="unhealthy"))["hardware"]] == [gpu["uuid"]]
    assert len((await hardware(cyborg, host=host, health="Healthy"))["hardware"]) == 2
    assert events.of("device.unhealthy", uuid=gpu["uuid"]) and events.of("device.changed", uuid=gpu["uuid"])
    assert (await hardware(cyborg, since=after))["hardware"] == []

    # it recovers (a transition only: the entry resent unchanged but for health)
    await report(cyborg, host, changed=[gpu], transitions=[
        {"uuid": gpu["uuid"], "from": "Unhealthy", "to": "Healthy", "reason": "3 clean probes", "at": at + 30}])
    history = (await hardware(cyborg, host=host, device_type="GPU"))["hardware"][0]["teebus"]["history"]
    assert [h["to"] for h in history] == ["Unhealthy", "Healthy"] and events.of("device.healthy", uuid=gpu["uuid"])

    # removals: one by name, one by a full report that leaves it out; `since` reports both
    before_removal = (await hardware(cyborg))["revision"]
    await report(cyborg, host, removed=[nic["uuid"]])
    final = await report(cyborg, host, full=True, added=[gpu])
    delta = await hardware(cyborg, since=before_removal)
    assert {r["uuid"] for r in delta["removed"]} == {nic["uuid"], fpga["uuid"]}
    assert all(r["host"] == host and before_removal < r["revision"] <= final for r in delta["removed"])
    assert {e["uuid"] for e in (await hardware(cyborg, host=host))["hardware"]} == {gpu["uuid"]}
    assert len(events.of("device.removed", host=host)) == 2
    assert (await agent(cyborg, host))["devices"] == 1 and (await agent(cyborg, host))["last_report"] >= at

    # the same over HTTP: the query string
    async with http.get("/hardware", params={"since": str(before_removal), "host": host}) as response:
        assert response.status == 200
        body = await response.json()
    assert {r["uuid"] for r in body["removed"]} == {nic["uuid"], fpga["uuid"]}


async def test_every_health_change_is_one_transition_whatever_the_agent_remembered(start_component, cyborg,
                                                                                     events):
    """An agent that lost its health state (restarted) may send an entry whose health changed without
    a transition, or a transition from a health the conductor never showed: the history and the
    events still hold one transition per change of the health shown."""
    await start_component(Conductor, config=SLOW)
    host = new_host()
    await hello(cyborg, host)
    gpu = device(host, 1)
    await report(cyborg, host, full=True, added=[gpu])

    def history() -> Any:
        return hardware(cyborg, host=host)

    # Unhealthy without a transition: one is derived, with the entry's reason
    sick = device(host, 1, health="Unhealthy", health_reason="Xid 79: fell off the bus")
    await report(cyborg, host, changed=[sick])
    [entry] = (await history())["hardware"]
    [derived] = entry["teebus"]["history"]
    assert (derived["from"], derived["to"], derived["reason"], derived["derived"]) == (
        "Healthy", "Unhealthy", "Xid 79: fell off the bus", True)
    await eventually(lambda: events.of("device.unhealthy", uuid=gpu["uuid"]))
    [event] = events.of("device.unhealthy", uuid=gpu["uuid"])
    assert (event["from"], event["to"], event["derived"]) == ("Healthy", "Unhealthy", True)

    # a restarted agent's full report: Healthy -> Unhealthy for a device shown Unhealthy all along
    # changes nothing shown: no history entry, no event
    await report(cyborg, host, full=True, added=[sick], transitions=[
        {"uuid": gpu["uuid"], "from": "Healthy", "to": "Unhealthy", "reason": "Xid 79: fell off the bus", "at": 9.0}])
    assert (await history())["hardware"][0]["teebus"]["history"] == [derived]

    # Healthy again without a transition (an agent that forgot it): derived; with one: as reported
    await report(cyborg, host, changed=[gpu])
    back = (await history())["hardware"][0]["teebus"]["history"][-1]
    assert (back["from"], back["to"], back["derived"]) == ("Unhealthy", "Healthy", True)
    assert "without a transition" in back["reason"]
    await report(cyborg, host, changed=[sick], transitions=[
        {"uuid": gpu["uuid"], "from": "Healthy", "to": "Unhealthy", "reason": "Xid 79: fell off the bus", "at": 10.0}])
    steps = (await history())["hardware"][0]["teebus"]["history"]
    assert [(h["from"], h["to"], h.get("derived", False)) for h in steps] == [
        ("Healthy", "Unhealthy", True), ("Unhealthy", "Healthy", True), ("Healthy", "Unhealthy", False)]

    # a device added Unhealthy without its transition: derived from the presumed Healthy
    fpga = device(host, 2, "FPGA", health="Unhealthy", health_reason="PCIe link down")
    await report(cyborg, host, added=[fpga])
    fpga_history = next(e for e in (await history())["hardware"] if e["uuid"] == fpga["uuid"])["teebus"]["history"]
    assert [(h["from"], h["to"], h["reason"], h["derived"]) for h in fpga_history] == [
        ("Healthy", "Unhealthy", "PCIe link down", True)]
    await eventually(lambda: len(events.of("device.unhealthy", host=host)) == 3
                     and len(events.of("device.healthy", host=host)) == 1)
    assert [e.get("derived", False) for e in events.of("device.unhealthy", host=host)] == [True, False, True]


async def test_another_hosts_device_is_refused_alone_and_the_rest_of_the_report_counts(start_component, cyborg,
                                                                                       events):
    await start_component(Conductor, config=SLOW)
    owner, intruder = new_host(), new_host()
    await hello(cyborg, owner)
    await hello(cyborg, intruder)
    gpu = device(owner, 1)
    await report(cyborg, owner, full=True, added=[gpu])
    forged = {**gpu, "teebus": {**gpu["teebus"], "host": intruder}}
    own = device(intruder, 2)
    for body in ({"removed": [gpu["uuid"]], "added": [own]}, {"added": [forged, own]}):
        reply = (await cyborg.request(subjects.CONDUCTOR_REPORT, {"host": intruder, **body})).payload
        assert reply["refused"] == [{"uuid": gpu["uuid"],
                                     "reason": f"device {gpu['uuid']} belongs to host {owner}, not {intruder}"}]
    assert [e["teebus"]["host"] for e in (await hardware(cyborg, host=owner))["hardware"]] == [owner]
    assert [e["uuid"] for e in (await hardware(cyborg, host=intruder))["hardware"]] == [own["uuid"]]
    await eventually(lambda: len(events.of("device.conflict", owner=owner, host=intruder)) == 2)


async def test_since_beyond_what_is_remembered_is_410(start_component, cyborg, http):
    forgetful = CyborgConfig(host="conductor", heartbeat_seconds=2.0, removed_kept=2)
    await start_component(Conductor, config=forgetful)
    host = new_host()
    await hello(cyborg, host)
    first = await report(cyborg, host, full=True, added=[device(host, i) for i in range(4)])
    await report(cyborg, host, full=True, added=[])            # four tombstones; two are kept
    await eventually(lambda: _gone(cyborg, first), timeout=5)
    with pytest.raises(BusError) as gone:
        await hardware(cyborg, since=first)
    assert gone.value.status == 410 and "re-read the whole inventory" in gone.value.message
    async with http.get("/hardware", params={"since": str(first)}) as response:
        assert response.status == 410
        assert "re-read the whole inventory" in (await response.json())["error"]["message"]
    now = (await hardware(cyborg))["revision"]
    assert (await hardware(cyborg, since=now))["hardware"] == []
    with pytest.raises(BusError) as ahead:
        await hardware(cyborg, since=now + 1_000_000)
    assert ahead.value.status == 410 and "ahead of this inventory" in ahead.value.message


async def _gone(bus: Requester, since: int) -> bool:
    try:
        await hardware(bus, since=since)
    except BusError as exc:
        return exc.status == 410
    return False


# -- leases ------------------------------------------------------------------------------------

async def test_an_agent_that_stops_is_lost_within_its_lease_then_recovers(start_component, cyborg, events, http):
    await start_component(Conductor, config=FAST)
    host = new_host()
    granted = await hello(cyborg, host)
    assert granted["lease_seconds"] == 0.6 and granted["heartbeat_seconds"] == 0.2
    gpu = device(host, 1)
    await report(cyborg, host, full=True, added=[gpu])
    for _ in range(8):                                        # 1.6 s of heartbeats: well past one lease
        assert (await cyborg.request(subjects.CONDUCTOR_HEARTBEAT, {"host": host})).payload == {"lease_seconds": 0.6}
        await asyncio.sleep(0.2)
    assert (await agent(cyborg, host))["status"] == "READY" and not events.of("agent.lost", host=host)
    before = (await hardware(cyborg, host=host))["revision"]

    stopped = time.monotonic()                                # the agent stops
    await eventually(lambda: events.of("agent.lost", host=host), timeout=5)
    detected = time.monotonic() - stopped
    assert detected <= 0.6 + 0.5, f"LOST after {detected:.2f}s for a lease of 0.6s"
    lost = await agent(cyborg, host)
    assert lost["status"] == "LOST" and lost["lease_expires"] <= time.time()
    await eventually(lambda: _stale(cyborg, host, True))
    stale = await hardware(cyborg, since=before)
    assert [e["uuid"] for e in stale["hardware"]] == [gpu["uuid"]] and stale["hardware"][0]["teebus"]["stale"]
    async with http.get("/agents") as response:
        assert next(a for a in (await response.json())["agents"] if a["host"] == host)["status"] == "LOST"
    await asyncio.sleep(0.3)
    assert len(events.of("agent.lost", host=host)) == 1        # once, not every sweep

    # its next heartbeat brings it back; stale clears
    await cyborg.request(subjects.CONDUCTOR_HEARTBEAT, {"host": host})
    assert (await agent(cyborg, host))["status"] == "READY"
    assert events.of("agent.recovered", host=host)
    assert await _stale(cyborg, host, False)

    # lost again, and back by a report this time
    await eventually(lambda: len(events.of("agent.lost", host=host)) == 2, timeout=5)
    await report(cyborg, host, changed=[gpu])
    assert (await agent(cyborg, host))["status"] == "READY" and len(events.of("agent.recovered", host=host)) == 2
    assert await _stale(cyborg, host, False)


async def _stale(bus: Requester, host: str, stale: bool) -> bool:
    entries = (await hardware(bus, host=host))["hardware"]
    return bool(entries) and all(e["teebus"]["stale"] is stale for e in entries)


async def test_two_conductors_racing_on_one_lost_agent_raise_one_event(start_component, cyborg, events):
    await start_component(Conductor, config=FAST)
    await start_component(Conductor, config=FAST)
    hosts = [new_host() for _ in range(5)]
    for host in hosts:
        await hello(cyborg, host)
        await report(cyborg, host, full=True, added=[device(host, 1), device(host, 2)])
    for host in hosts:
        await eventually(lambda: events.of("agent.lost", host=host), timeout=5)
    await asyncio.sleep(0.5)                                   # several more sweeps of both
    for host in hosts:
        assert len(events.of("agent.lost", host=host)) == 1, host
        assert (await agent(cyborg, host))["status"] == "LOST"
    for host in hosts:
        await cyborg.request(subjects.CONDUCTOR_HEARTBEAT, {"host": host})
    for host in hosts:
        assert len(events.of("agent.recovered", host=host)) == 1


# -- restarts ----------------------------------------------------------------------------------

async def test_a_conductor_restart_keeps_agents_hardware_and_revisions(start_component, cyborg):
    first = await start_component(Conductor, config=SLOW)
    host = new_host()
    await hello(cyborg, host)
    gpu, fpga = device(host, 1), device(host, 2, "FPGA")
    await report(cyborg, host, full=True, added=[gpu, fpga])
    middle = (await hardware(cyborg))["revision"]
    await report(cyborg, host, removed=[fpga["uuid"]], transitions=[
        {"uuid": gpu["uuid"], "from": "Healthy", "to": "Unhealthy", "reason": "ECC errors", "at": 5.0}])
    seen_agent = await agent(cyborg, host)
    seen = await hardware(cyborg, host=host)
    await first.stop()

    await start_component(Conductor, config=SLOW)
    assert await agent(cyborg, host) == seen_agent
    again = await hardware(cyborg, host=host)
    assert again == seen and again["hardware"][0]["teebus"]["history"][0]["reason"] == "ECC errors"
    delta = await hardware(cyborg, since=middle, host=host)
    assert [r["uuid"] for r in delta["removed"]] == [fpga["uuid"]]
    assert [e["uuid"] for e in delta["hardware"]] == [gpu["uuid"]]
    await cyborg.request(subjects.CONDUCTOR_HEARTBEAT, {"host": host})     # still known: no new hello needed


# -- the CLI -----------------------------------------------------------------------------------

async def test_the_cli_prints_hardware_and_agents_as_tables(start_component, cyborg, http, capsys):
    import argparse
    from types import SimpleNamespace

    from components.cyborg import cli

    await start_component(Conductor, config=SLOW)
    host = new_host("cli")
    await hello(cyborg, host)
    gpu = device(host, 1, health="Unhealthy", health_reason="Xid 79")
    revision = await report(cyborg, host, full=True, added=[gpu, device(host, 2, "FPGA")])
    parser = argparse.ArgumentParser()
    cli.register(parser, lambda verb: None)
    settings = SimpleNamespace(http_host="127.0.0.1", ports={})
    url = str(http._base_url)

    async def run(*argv: str) -> tuple[int, str, str]:
        args = parser.parse_args([*argv, "--url", url])
        status = await args.system_verbs(args, settings)
        out, err = capsys.readouterr()
        return status, out, err

    status, out, _ = await run("hardware", "--host", host)
    lines = out.splitlines()
    assert status == 0 and lines[0].split()[:3] == ["HOST", "UUID", "TYPE"]
    assert any(gpu["uuid"] in line and "Unhealthy" in line and "Xid 79" in line for line in lines)
    assert lines[-1].startswith("2 devices; inventory revision")
    status, out, _ = await run("hardware", "--host", host, "--type", "fpga", "--json")
    assert status == 0 and [e["acc_specs"]["device_type"] for e in orjson.loads(out)["hardware"]] == ["FPGA"]
    status, out, _ = await run("hardware", "--since", str(revision))
    assert status == 0 and out.splitlines()[-1].startswith("0 devices")
    status, out, _ = await run("agents")
    assert status == 0 and any(line.split()[:3] == [host, f"{host}:6667", "READY"] for line in out.splitlines())
    status, _, err = await run("hardware", "--health", "Sick")
    assert status == 1 and "Healthy or Unhealthy" in err and "(400)" in err


async def test_the_lease_sweep_leaves_no_consumer_behind(start_component, connect_as, cyborg):
    """Each sweep once listed the lease bucket's keys, which leaves a JetStream consumer behind for
    minutes: at a sweep a tenth of a second, the stream reached its 1,000 consumers within a minute
    and every sweep failed from then on (no agent could be called LOST)."""
    js = (await connect_as("admin")).jetstream()
    quick = CyborgConfig(host="conductor", heartbeat_seconds=0.05, lease_heartbeats=3)   # a sweep every 15 ms
    await start_component(Conductor, config=quick)
    await asyncio.sleep(0.3)                            # past its start: its mirror's consumer is there
    before = (await js.stream_info("KV_cyborg_leases")).state.consumer_count
    await asyncio.sleep(1.5)                                                          # about 100 sweeps
    after = (await js.stream_info("KV_cyborg_leases")).state.consumer_count
    assert after - before <= 1, f"{after - before} consumers left by the sweeps"
