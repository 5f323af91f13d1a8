"""The Cyborg scenario: an agent's life at the conductor, from hello to the inventory it leaves, on the bus.

Regenerate tests/recordings/cyborg_scenario.jsonl (needs no running NATS: it embeds its own server):

    python -m tests.replay.record_cyborg [OUTPUT]

The driver speaks as the `gateway` role (the role of the HTTP sites, which reach the conductor's
internal subjects behind the internal credential), so its replies come to `_INBOX.gateway.` and the
recording names that prefix. It plays the agent of host `compute-whatever` (the seed's endpoint
host) and sends the conductor what an agent sends: the seed's `POST /hello` body plus `host`, a
full report (the seed's CRYPTO entry as the seed wrote it, and a GPU entry as the pci driver makes
one, `components/cyborg/hardware.py`), a heartbeat, an incremental report (the GPU removed, the
CRYPTO device Unhealthy with its transition); and reads what the HTTP site's clients read: the
hardware (all, then `since` a revision an earlier answer gave) and the agents. A second host says
hello and reports a transition that changes nothing: 400.

Why the conductor is driven directly rather than through a real agent: the agent's traffic is
timer-driven (a rediscovery round every `rediscover_seconds`, a heartbeat every
`heartbeat_seconds`, hello retried while no conductor answers), its rounds poll each driver until
its discovery completes (how many polls depends on a thread's timing), and what it reports depends
on a sysfs tree off the bus; none of its periodic requests carries a request id of the driver. A
recording of it would differ from its replay in timing, not behaviour. The conductor, by contrast,
does nothing unasked but its lease sweep, which acts only when a lease lapses (30 s here: never
within a scenario), and asks no other component anything: every reply and every event follows from
the driver's requests. The agent-to-conductor path runs for real in tests/test_cyborg_system.py,
and the agent's messages are checked against the conductor's parsers in tests/test_cyborg_agent.py.

A fresh deployment is a conductor on a nats-server of its own (buckets created empty), so the
inventory's revisions (the `cyborg_devices` stream's sequence numbers) come out the same on every
run: they are compared exactly, as is the `since` the driver sends. What differs from run to run:
the agents' times (registered, last_report, last_heartbeat, lease_expires) and the events' `at`.
No side effects off the bus (no `after_reply`). The scenario checks every outcome while recording,
so a broken conductor cannot be recorded as "expected".
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

from nats.aio.client import Client

from bus.component import Context
from bus.requester import Requester
from bus.roles import GATEWAY, inbox_prefix
from bus.testing import TestBus
from components.cyborg import subjects
from components.cyborg.conductor import Conductor
from components.cyborg.config import CyborgConfig
from components.cyborg.hardware import UNHEALTHY, Device, device_uuid, from_seed_json, to_seed_json
from components.cyborg.system import MANIFEST
from tests.replay import regenerate
from tests.replay.normalise import Normaliser
from tests.replay.recording import Recording

RECORDING = Path(__file__).resolve().parent.parent / "recordings" / "cyborg_scenario.jsonl"
SCENARIO = "cyborg"
DRIVER_ROLE = GATEWAY
DRIVER_INBOX = f"{inbox_prefix(DRIVER_ROLE)}."

CONFIG = CyborgConfig(host="conductor")          # heartbeat 10 s, lease 30 s: no lease lapses in a scenario
HOST = "compute-whatever"                        # the seed's `POST /hello` endpoint names it
OTHER = "compute-other"
# The seed's Conductor `POST /hello` body (its trailing comma is the HTTP site's business), plus host.
HELLO = {"status": "READY", "endpoint": "compute-whatever:1337", "host": HOST}
# The seed's Driver `GET /hardware` entry, its missing commas put back, names as written.
CRYPTO = {
    "uuid": "8e45a2ea-5364-4b0d-a252-bf8becaa606e",
    "acc_specs": {"remote": 0, "num": 1, "device_type": "CRYPTO",
                  "acc_capability": {"num": 2, "ipsec": {"aes": {"3des": 50, "num": 1}}}},
    "acc_status": {"setup_required": True, "reboot_equired": False},
}
GPU_ADDRESS = "0000:3b:00.0"
# A GPU as the pci driver reports an H100 behind a bridge (tests/test_cyborg_discovery.py's tree).
GPU = to_seed_json(Device(device_uuid(HOST, GPU_ADDRESS), HOST, "GPU", address=GPU_ADDRESS, vendor="10de",
                          product="2330", acc_capability={"family": "nvidia", "kind": "3d-controller", "function": "pf"},
                          numa_node=0, driver="pci",
                          details={"kernel_driver": "nvidia", "pci_class": "0x030200", "subsystem": "10de:16c1"}))
FAILURE = "self-test failed: ipsec engine 0 did not answer"
# The CRYPTO device after a failed probe, as the agent resends it (no `teebus` came with it: driver "agent").
CRYPTO_UNHEALTHY = to_seed_json(replace(from_seed_json(CRYPTO, host=HOST, driver="agent"),
                                        health=UNHEALTHY, health_reason=FAILURE))

# Fresh on every run: the agents' times (seconds since the epoch) and the events' `at`
# (the envelope's ISO time; for device.unhealthy|healthy the transition's time, a number).
CYBORG_NORMALISER = Normaliser(random_paths=(
    "agents.*.registered", "agents.*.last_report", "agents.*.last_heartbeat", "agents.*.lease_expires",
    "at",
))

Connect = Callable[[str], Awaitable[Client]]


# -- a fresh deployment -------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def running_conductor(bus: TestBus, connect_as: Connect) -> AsyncIterator[Conductor]:
    """A conductor on `bus` (whose buckets it creates), as the `cyborg` role."""
    conductor = Conductor(Context(await connect_as(MANIFEST.role), bus.data_dir, CONFIG, nats_url=bus.url))
    await conductor.start()
    try:
        yield conductor
    finally:
        await conductor.stop()


# -- the scenario -------------------------------------------------------------------------------------

def _check(condition: bool, step: str, value: Any) -> None:
    if not condition:
        raise AssertionError(f"{step}: unexpected {value!r}")


def _uuids(body: dict[str, Any]) -> list[str]:
    return [entry["uuid"] for entry in body["hardware"]]


async def drive_cyborg_scenario(driver: Requester) -> None:
    """hello; a full report (CRYPTO, GPU); the hardware, then since; the agents; a heartbeat; a report
    removing the GPU with the CRYPTO device's failed probe; another host's hello and its report of the
    transition that changes nothing (400); the hardware after, then since."""
    async def call(subject: str, body: Any) -> Any:
        return (await driver.request(subject, body)).payload

    registered = await call(subjects.CONDUCTOR_HELLO, HELLO)
    _check(registered == {"status": "REGISTERED", "host": HOST, "lease_seconds": 30.0, "heartbeat_seconds": 10.0,
                          "revision": 0}, "hello to a fresh conductor", registered)

    reported = await call(subjects.CONDUCTOR_REPORT, {"host": HOST, "full": True, "added": [CRYPTO, GPU]})
    everything = await call(subjects.CONDUCTOR_HARDWARE, {})
    _check(sorted(_uuids(everything)) == sorted([CRYPTO["uuid"], GPU["uuid"]]), "the hardware", everything)
    _check(everything["revision"] == reported["revision"], "the hardware's revision", everything)
    crypto = next(entry for entry in everything["hardware"] if entry["uuid"] == CRYPTO["uuid"])
    _check({key: crypto[key] for key in CRYPTO} == CRYPTO, "the seed's entry, as the seed wrote it", crypto)
    _check((crypto["teebus"]["host"], crypto["teebus"]["stale"], crypto["teebus"]["history"]) == (HOST, False, []),
           "the seed's entry", crypto)
    earliest = min(entry["teebus"]["revision"] for entry in everything["hardware"])
    later = await call(subjects.CONDUCTOR_HARDWARE, {"since": earliest})
    _check(len(later["hardware"]) == 1 and later["removed"] == [] and later["hardware"][0]["teebus"]["revision"] > earliest,
           "since the first device's revision", later)

    agents = (await call(subjects.CONDUCTOR_AGENTS, {}))["agents"]
    _check([(a["host"], a["endpoint"], a["status"], a["devices"], a["lost_at"]) for a in agents]
           == [(HOST, HELLO["endpoint"], "READY", 2, None)], "the agents", agents)
    _check(await call(subjects.CONDUCTOR_HEARTBEAT, {"host": HOST}) == {"lease_seconds": 30.0}, "a heartbeat", None)

    before = everything["revision"]
    transition = {"uuid": CRYPTO["uuid"], "from": "Healthy", "to": UNHEALTHY, "reason": FAILURE, "at": time.time()}
    changed = await call(subjects.CONDUCTOR_REPORT, {"host": HOST, "changed": [CRYPTO_UNHEALTHY],
                                                     "removed": [GPU["uuid"]], "transitions": [transition]})
    _check(changed["revision"] > before, "the second report's revision", changed)

    await call(subjects.CONDUCTOR_HELLO, {**HELLO, "host": OTHER, "endpoint": f"{OTHER}:6667"})
    still = {"uuid": CRYPTO["uuid"], "from": "Healthy", "to": "Healthy", "reason": "", "at": 1.0}
    await regenerate.expect_error(400, call(subjects.CONDUCTOR_REPORT, {"host": OTHER, "transitions": [still]}),
                                  "a report whose transition changes nothing")

    after = await call(subjects.CONDUCTOR_HARDWARE, {})
    _check(_uuids(after) == [CRYPTO["uuid"]] and after["revision"] == changed["revision"], "the hardware after", after)
    teebus = after["hardware"][0]["teebus"]
    _check((teebus["health"], teebus["health_reason"], teebus["history"])
           == (UNHEALTHY, FAILURE, [{key: transition[key] for key in ("from", "to", "reason", "at")}]),
           "the failed device and its history", teebus)
    delta = await call(subjects.CONDUCTOR_HARDWARE, {"since": before})
    _check(_uuids(delta) == [CRYPTO["uuid"]] and [(r["uuid"], r["host"]) for r in delta["removed"]]
           == [(GPU["uuid"], HOST)], "since before the second report", delta)


async def record_cyborg(bus: TestBus, connect_as: Connect) -> Recording:
    """Run a fresh conductor on `bus` and record the scenario driven against it."""
    async with running_conductor(bus, connect_as):
        return await regenerate.record_driven(connect_as, SCENARIO, DRIVER_ROLE, drive_cyborg_scenario)


def main(argv: list[str]) -> int:
    return regenerate.main(argv, RECORDING, MANIFEST, lambda bus, connect_as, tmp: record_cyborg(bus, connect_as))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
