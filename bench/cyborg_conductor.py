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
                  `events.cyborg.agent.lost`, against its lease (heartbeat x 3), taken apart:
                  stop -> last renewal (a heartbeat sent before the stop and answered after it
                  renews the lease after the stop: positive then), the lease, the server's
                  expiry lag (the lease entry is gone from KV this long after renewal + lease;
                  watched with a direct get every 5 ms), and expiry -> event (the wait for the
                  conductor's next sweep, every lease/10 at most 1 s, and the sweep's own run).

Rounds of the view and of KV alternate; medians are reported.
How to read the ratios (lower is better):
    f/k      full view over KV -- target <= 1.0 (the view answers from memory);
    s/k      since over a full KV read -- target << 1;
    l/lease  detection over the lease -- bound, from the lease's last renewal: 1 + (server
             expiry lag + one sweep period and run) / lease. nats-server (2.15) drops an
             expired entry 0.25-0.35 s late typically (0.05-0.45 s measured here), whatever the
             lease, so with the 3 s lease here the worst is about 1.25 (with the default 30 s
             lease, about 1.05). From the agent's stop, the last renewal is up to a heartbeat
             earlier (the median is about 1), or, for a heartbeat in flight at the stop, that
             heartbeat's handling later.

    python bench/cyborg_conductor.py [--agents 100] [--devices 100] [--rounds 5] [--heartbeat 1.0] [--lost 12]
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
from nats.js.errors import KeyNotFoundError

from adapters.http.cyborg import CONDUCTOR_SITE, conductor_routes, render_error
from adapters.http.runner import HttpServer, Site
from bus import log
from bus.requester import Requester
from bus.server import free_port
from bus.testing import running_bus
from components.cyborg import subjects
from components.cyborg.conductor import DEVICES, LEASES, Conductor, agent_key
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
                transition = {"uuid": changed["uuid"], "from": "Healthy", "to": "Unhealthy",
                              "reason": f"bench round {round_}", "at": time.time()}     # as an agent sends it
                await agents_bus.request(subjects.CONDUCTOR_REPORT, {"host": host, "changed": [changed],
                                                                     "transitions": [transition]})

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

        lost: list[dict[str, float]] = []
        events: dict[str, tuple[float, dict[str, Any]]] = {}

        async def on_lost(msg) -> None:
            body = orjson.loads(msg.data)
            events.setdefault(body["host"], (time.time(), body))

        sub = await admin.subscribe("events.cyborg.agent.lost", cb=on_lost)
        leases = await js.key_value(LEASES)
        for round_ in range(args.lost):
            host = hosts[-1 - round_]
            # stop at spread phases of the heartbeat cycle: a heartbeat may be in flight
            await asyncio.sleep(config.heartbeat_seconds * (1.0 + round_ * 0.618 % 1.0))
            beating[host] = False
            stopped = time.time()
            deadline = stopped + 10 * config.lease_seconds
            expired = None
            while host not in events and time.time() < deadline:
                if expired is None:
                    try:
                        await leases.get(agent_key(host))
                    except KeyNotFoundError:
                        expired = time.time()
                await asyncio.sleep(0.005)
            assert host in events, f"{host} was never LOST"
            at, body = events[host]
            renewed = body["last_heartbeat"]          # the lease's last renewal, by the conductor's clock
            expired = expired if expired is not None else at
            lost.append({"from_stop": at - stopped, "from_renewal": at - renewed, "in_flight": renewed - stopped,
                         "expiry_lag": expired - renewed - config.lease_seconds, "sweep": at - expired})
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
    for name, what in (("from_stop", "stop -> LOST"), ("from_renewal", "last renewal -> LOST")):
        values = [round_[name] for round_ in lost]
        print(f"  {what:<21} median {statistics.median(values):.2f}s  max {max(values):.2f}s  "
              f"median/lease {statistics.median(values) / lease:.2f}  max/lease {max(values) / lease:.2f}")
    print("  taken apart (s): stop -> renewal (+ = a heartbeat in flight at the stop), server expiry lag "
          "past renewal + lease, expiry -> event (sweep)")
    for name in ("in_flight", "expiry_lag", "sweep"):
        values = [round_[name] for round_ in lost]
        print(f"    {name:<11} median {statistics.median(values):+.3f}  min {min(values):+.3f}  max {max(values):+.3f}")
    worst = max(lost, key=lambda round_: round_["from_stop"])
    print(f"  worst: {worst['from_stop']:.2f}s = in flight {worst['in_flight']:+.2f} + lease {lease:g} "
          f"+ expiry lag {worst['expiry_lag']:+.2f} + sweep {worst['sweep']:+.2f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--devices", type=int, default=100, help="per agent")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--heartbeat", type=float, default=1.0, help="seconds; the lease is 3 of them")
    parser.add_argument("--lost", type=int, default=12, help="agents stopped one after another")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log.configure("warning")
    print_report(asyncio.run(bench(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
