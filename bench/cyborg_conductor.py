"""What does the Cyborg conductor's view cost, against reading its records straight from KV? And
how long after an agent stops is it LOST, against its lease? Measured in one run.

Setup: a real nats-server, one conductor, its HTTP site; `--agents` agents (default 100) say
hello and report `--devices` devices each (default 100: 10,000 devices), and keep heartbeating.

    (f) full      the whole inventory: `GET /hardware` over HTTP, and the same over the bus
                  (CONDUCTOR_HARDWARE), against
    (k) KV        reading every record of `cyborg_devices` straight from KV (an ordered consumer
                  of each key's last value, as `nats kv watch` does: the fastest way there is) and
                  decoding it -- the same records, without the conductor;
    (s) since     after one agent reports one changed device: `GET /hardware?since=R` (HTTP and
                  bus), against (k), and against reading only the records written after R
                  straight from KV (a consumer from sequence R+1: what `since` saves a client from
                  writing);
    (l) lost      `--lost` times: one agent stops heartbeating; the time from its stop to its
                  `events.cyborg.agent.lost`, against its lease (heartbeat x 3).

Rounds of the view and of KV alternate; medians are reported.
How to read the ratios (lower is better):
    f/k      full view over KV -- target <= 1.0 (the view answers from memory);
    s/k      since over a full KV read -- target << 1;
    l/lease  detection over the lease -- target <= 1 + sweep/lease (the sweep runs every lease/10).

    python bench/cyborg_conductor.py [--agents 100] [--devices 100] [--rounds 5] [--heartbeat 1.0] [--lost 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

if __package__ in (None, ""):  # run as `python bench/cyborg_conductor.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import orjson
from nats.js.api import ConsumerConfig, DeliverPolicy

from adapters.http.cyborg import CONDUCTOR_SITE, conductor_routes, render_error
from adapters.http.runner import HttpServer, Site
from bus import log
from bus.requester import Requester
from bus.server import free_port
from bus.testing import running_bus
from components.cyborg import subjects
from components.cyborg.conductor import DEVICES, Conductor
from components.cyborg.config import CyborgConfig
from components.cyborg.hardware import Device, device_uuid, to_seed_json
from teebus.systems import installed


def entry(host: str, slot: int, **fields: Any) -> dict[str, Any]:
    address = f"0000:{slot // 32:02x}:{slot % 32:02x}.0"
    return to_seed_json(Device(device_uuid(host, address), host, ("GPU", "FPGA", "NIC", "SSD")[slot % 4],
                               address=address, vendor="10de", product="2330",
                               acc_capability={"memory_mib": 81920, "sm": 132}, **fields))


async def timed(work: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await work()
    return time.perf_counter() - started, result


async def kv_read_all(js, after: int = 0) -> list[dict[str, Any]]:
    """Every current record of the devices bucket (or those written after sequence `after`),
    straight from the stream, decoded."""
    info = await js.stream_info(f"KV_{DEVICES}")
    last = info.state.last_seq
    if after >= last:
        return []
    if after:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1)
    else:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
    records: dict[str, Any] = {}
    done = asyncio.get_running_loop().create_future()

    async def take(msg) -> None:
        records[msg.subject] = orjson.loads(msg.data) if msg.data else None
        if msg.metadata.num_pending == 0 and not done.done():
            done.set_result(None)

    sub = await js.subscribe(f"$KV.{DEVICES}.>", cb=take, ordered_consumer=True, config=config,
                             deliver_policy=config.deliver_policy)
    try:
        await asyncio.wait_for(done, 60)
    finally:
        await sub.unsubscribe()
    return [value for value in records.values() if value is not None]


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    config = CyborgConfig(host="bench", heartbeat_seconds=args.heartbeat, lease_heartbeats=3)
    with tempfile.TemporaryDirectory(prefix="teebus-bench-") as tmp:
        async with running_bus(Path(tmp), installed()) as bus:
            async with bus.scope() as scope:
                await scope.component(Conductor, config=config)
                agents_bus = Requester(await scope.connect("cyborg"), timeout=60)
                reader = Requester(await scope.connect("adapter"), timeout=60)
                admin = await scope.connect("admin")
                site = Site(CONDUCTOR_SITE, free_port(), "gateway", conductor_routes, render_error)
                server = HttpServer("127.0.0.1", Path(tmp))
                await server.start([site], {"gateway": Requester(await scope.connect("gateway"), timeout=60)})
                try:
                    return await measure(args, config, agents_bus, reader, admin, server.bound[CONDUCTOR_SITE])
                finally:
                    await server.stop()


async def measure(args, config, agents_bus: Requester, reader: Requester, admin, url: str) -> dict[str, Any]:
    hosts = [f"compute-{i:03d}" for i in range(args.agents)]
    beating: dict[str, bool] = {}          # each agent heartbeats from its hello on, until stopped here

    async def heartbeats() -> None:
        while True:
            await asyncio.gather(*(agents_bus.request(subjects.CONDUCTOR_HEARTBEAT, {"host": host})
                                   for host, alive in list(beating.items()) if alive))
            await asyncio.sleep(config.heartbeat_seconds)

    heart = asyncio.create_task(heartbeats())
    started = time.perf_counter()
    slots = asyncio.Semaphore(8)

    async def enrol(host: str) -> None:
        async with slots:
            await agents_bus.request(subjects.CONDUCTOR_HELLO, {"status": "READY", "endpoint": f"{host}:6667",
                                                                "host": host})
            beating[host] = True
            await agents_bus.request(subjects.CONDUCTOR_REPORT, {
                "host": host, "full": True, "added": [entry(host, slot) for slot in range(args.devices)]})

    await asyncio.gather(*(enrol(host) for host in hosts))
    print(f"{args.agents} agents x {args.devices} devices registered and reported in "
          f"{time.perf_counter() - started:.1f}s", flush=True)
    js = admin.jetstream()
    total = args.agents * args.devices
    results: dict[str, list[float]] = {k: [] for k in ("full_http", "full_bus", "kv_full", "since_http",
                                                       "since_bus", "kv_since")}
    try:
        async with aiohttp.ClientSession(base_url=url) as http:
            async def full_http() -> int:
                async with http.get("/hardware") as response:
                    return len(orjson.loads(await response.read())["hardware"])

            async def full_bus() -> int:
                return len((await reader.request(subjects.CONDUCTOR_HARDWARE, {})).payload["hardware"])

            for _ in range(args.rounds):
                for name, work in (("full_http", full_http), ("full_bus", full_bus),
                                   ("kv_full", lambda: kv_read_all(js))):
                    seconds, got = await timed(work)
                    count = got if isinstance(got, int) else len(got)
                    assert count == total, f"{name} read {count} of {total} devices"
                    results[name].append(seconds)

            for round_ in range(args.rounds):
                host = hosts[round_ % len(hosts)]
                # the current revision, cheaply: a host with no devices
                revision = (await reader.request(subjects.CONDUCTOR_HARDWARE, {"host": "nobody"})).payload["revision"]
                changed = entry(host, 0, health="Unhealthy", health_reason=f"bench round {round_}")
                await agents_bus.request(subjects.CONDUCTOR_REPORT, {"host": host, "changed": [changed]})

                async def since_http() -> int:
                    async with http.get("/hardware", params={"since": str(revision)}) as response:
                        return len(orjson.loads(await response.read())["hardware"])

                async def since_bus() -> int:
                    return len((await reader.request(subjects.CONDUCTOR_HARDWARE, {"since": revision})).payload["hardware"])

                for name, work in (("since_http", since_http), ("since_bus", since_bus),
                                   ("kv_since", lambda: kv_read_all(js, revision))):
                    seconds, got = await timed(work)
                    count = got if isinstance(got, int) else len(got)
                    assert count == 1, f"{name} read {count} changed devices, not 1"
                    results[name].append(seconds)

        lost: list[float] = []
        events: dict[str, float] = {}

        async def on_lost(msg) -> None:
            events.setdefault(orjson.loads(msg.data)["host"], time.monotonic())

        sub = await admin.subscribe("events.cyborg.agent.lost", cb=on_lost)
        for round_ in range(args.lost):
            host = hosts[-1 - round_]
            await asyncio.sleep(config.heartbeat_seconds * 1.5)
            beating[host] = False                  # stops right after its last heartbeat at worst
            stopped = time.monotonic()
            deadline = stopped + 10 * config.lease_seconds
            while host not in events and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert host in events, f"{host} was never LOST"
            lost.append(events[host] - stopped)
        await sub.unsubscribe()
    finally:
        heart.cancel()
        await asyncio.gather(heart, return_exceptions=True)
    return {"results": results, "lost": lost, "lease": config.lease_seconds,
            "sweep": min(1.0, config.lease_seconds / 10), "total": total}


def print_report(report: dict[str, Any]) -> None:
    med = {name: statistics.median(values) for name, values in report["results"].items()}
    print(f"\nconductor view of {report['total']} devices (medians):")
    for name in ("full_http", "full_bus", "kv_full", "since_http", "since_bus", "kv_since"):
        print(f"  {name:<11} {med[name] * 1000:9.2f} ms")
    print("ratios (lower is better):")
    print(f"  full  HTTP / KV        {med['full_http'] / med['kv_full']:.2f}")
    print(f"  full  bus  / KV        {med['full_bus'] / med['kv_full']:.2f}")
    print(f"  since HTTP / KV full   {med['since_http'] / med['kv_full']:.4f}")
    print(f"  since bus  / KV full   {med['since_bus'] / med['kv_full']:.4f}")
    print(f"  since bus  / KV since  {med['since_bus'] / med['kv_since']:.2f}")
    lost, lease = report["lost"], report["lease"]
    print(f"agent stop -> LOST event, lease {lease:g}s (sweep every {report['sweep']:g}s), {len(lost)} agents:")
    print(f"  median {statistics.median(lost):.2f}s  max {max(lost):.2f}s  "
          f"median/lease {statistics.median(lost) / lease:.2f}  max/lease {max(lost) / lease:.2f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--devices", type=int, default=100, help="per agent")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--heartbeat", type=float, default=1.0, help="seconds; the lease is 3 of them")
    parser.add_argument("--lost", type=int, default=3, help="agents stopped one after another")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log.configure("warning")
    print_report(asyncio.run(bench(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
