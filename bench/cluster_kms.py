"""Scale-out (issue 14): MesaTEE KMS Create and Get through one and two replicas on a three-node
NATS cluster, against one replica on the single embedded server, in one run; and how long the
service takes to come back when a cluster server is killed.

Three configurations, each measured with the same client load:

    single     one nats-server (bus.server.EmbeddedServer, `nats.conf`: JetStream with
               `sync_interval: always`) on a data directory of its own, every JetStream asset with
               one copy (`bus.bootstrap.prepare(admin, 1)`); one replica -- the baseline;
    cluster/1  three nats-servers on loopback (bus.cluster.LocalCluster: routes, JetStream
               clustered), every asset with three copies (`prepare(admin, 3)`, `--replicas 3`);
               one replica;
    cluster/2  the same cluster, two replicas; the client sends call i to replica i mod 2.

A replica is one process, as a deployment runs it: `teebus run mesatee.kms http.mesatee --nats URL
--data-dir DIR --replicas N`, its `mesatee-kms` site (and every other MesaTEE site, on ports of its
own so replicas never collide) on a free port; on the cluster `--nats` lists all three servers. The
KMS components of both replicas share one queue group, so on cluster/2 a call that enters one
replica's adapter is served by either replica's KMS. Replicas on one data directory share its
internal token and KMS master key.

The client is this process: one aiohttp session (keep-alive), `--concurrency` callers that each
send their next call as soon as their last one answered (closed loop), POST / on the KMS site with
`Authorization: Bearer <data-dir>/internal.token`. Per configuration: a warm-up of WARMUP_CALLS
Create and Get calls (not measured), then `--calls` Create calls, then `--calls` Get calls, one
for each key those Creates made (so Gets ask for keys that exist, each once; the KMS opens each
one's sealed config once). A call counts as done when it answers 200 with the seed's reply shape;
anything else is a failure (counted and shown, not timed). Latency is the client-side time of one
call; calls/s is calls over the time the phase took. `--rounds` repeats the three configurations
in turn (the second replica is stopped after each cluster/2 phase and started again for the
next), so drift in load from elsewhere on the machine hits them alike; a configuration's figures
are over all its rounds.

Ratios are against the baseline: p50 and p99 (configuration over single, lower is better) and
calls/s (configuration over single, higher is better). The CPU table says where each call's time
goes: the client (this process), the replicas, the nats-server(s) of the configuration measured,
the other deployment (idle meanwhile: the cluster's Raft heartbeats, or the single server),
and "other": CPU busy with work not ours. On a 2-core machine client, replicas and three servers
share two cores, so a second replica can add no cores; there its figure says what the
configuration costs, not what it would gain on more machines.

Recovery: on cluster/2, a steady Create load (open loop: a call every 1/`--recovery-rate` s,
alternating replicas, whatever the earlier calls are doing) runs PRE_KILL s, then the nats-server
that leads the KMS bucket's stream (`KV_mesatee_kms_keys`; stream_info(...).cluster.leader) is
SIGKILLed. Reported, from the kill: the first success (the first call started after the kill to
answer 200, at its answer); the moment the error rate is back to 0 (the start of the first call
after the last failure, when every call from there to the end of the load -- at least a full
second of calls -- succeeded); how many calls failed and with which statuses (HTTP status, or
the client's own "timeout"/connection error); the slowest call against its deadline (the
adapter's bus timeout, bus.requester.DEFAULT_TIMEOUT, plus DEADLINE_GRACE s): no call may hang
past it. The load runs until that second is seen (at most `--recovery-window` s after the kill).
Then the killed server is started again on its own store, with no load, and reported: when it
accepted clients again and when the bucket's stream had all its copies current again (a leader,
two peers, each current, not offline, lag 0), and the same for the EVENTS stream (informative).
Last, every key whose Create answered 200 during the recovery phase is fetched with Get: an
accepted key must never be lost.

    python bench/cluster_kms.py [--calls 1000] [--concurrency 16] [--rounds 2]
                                [--recovery-rate 50] [--recovery-window 30] [--no-recovery] [--json]

With --json the report is one JSON document on stdout (progress goes to stderr either way).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as `python bench/cluster_kms.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import orjson

from adapters.http.runner import INTERNAL_TOKEN_FILE
from bench.bus_overhead import teebus_command
from bench.figures import filesystem, percentile, progress
from bench.processes import BenchError, Child, Children, cpu_seconds, machine_busy_seconds, run_and_report, stop
from bus import log, roles
from bus.bootstrap import prepare
from bus.cluster import LocalCluster
from bus.connection import connect
from bus.credentials import ensure_secret_file
from bus.events import STREAM as EVENTS_STREAM
from bus.requester import DEFAULT_TIMEOUT as ADAPTER_TIMEOUT
from bus.server import DEFAULT_CONF, EmbeddedServer, ServerError, free_port
from components.mesatee.kms import BUCKET
from components.mesatee.system import MANIFEST as MESATEE
from teebus.systems import installed

KMS_SITE = "mesatee-kms"
KMS_STREAM = f"KV_{BUCKET}"
HOST = "127.0.0.1"
CONFIGS = ("single", "cluster/1", "cluster/2")
OPERATIONS = ("Create", "Get")
WARMUP_CALLS = 50              # per operation and configuration, unmeasured
READY_TIMEOUT = 60.0           # s for a replica to answer its first Create
CLIENT_TIMEOUT = 3 * ADAPTER_TIMEOUT   # s the client waits for any answer at all
DEADLINE_GRACE = 1.0           # s over the adapter's bus timeout a failing call may take
PRE_KILL = 2.0                 # s of steady load before the kill
CLEAN_SECONDS = 1.0            # error-free calls needed to call the service recovered
CATCH_UP_TIMEOUT = 60.0        # s for the restarted server's copies to be current
POLL = 0.1
MACHINE = "(machine)"
CPU_GROUPS = ("client", "replicas", "nats", "idle deployment", "other")
OTHER_WARNING = 0.25          # share of a core used by work not ours, above which a phase is flagged


# --- results ---------------------------------------------------------------------------------

@dataclass
class Phase:
    """One operation on one configuration: each call's latency, the time the calls took, CPU used."""

    config: str
    operation: str
    latencies_ms: list[float] = field(default_factory=list)   # of the calls that succeeded
    seconds: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)     # status -> count
    first_failure: str = ""
    cpu: dict[str, float] = field(default_factory=dict)        # seconds, by CPU_GROUPS

    @property
    def calls(self) -> int:
        return len(self.latencies_ms) + sum(self.failures.values())

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        return percentile(self.latencies_ms, fraction)

    def fail(self, status: str, detail: str) -> None:
        self.failures[status] = self.failures.get(status, 0) + 1
        self.first_failure = self.first_failure or f"{status}: {detail}"

    def cpu_us(self, group: str) -> float:
        return self.cpu.get(group, 0.0) / self.calls * 1e6 if self.calls else 0.0

    def core_share(self, group: str) -> float:
        return self.cpu.get(group, 0.0) / self.seconds if self.seconds else 0.0


@dataclass
class Attempt:
    """One call of the recovery load: when it started and answered (monotonic s), and how."""

    started: float
    ended: float
    status: str                 # "200", another HTTP status, "timeout", or "connection error"
    detail: str = ""
    key_id: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "200"


@dataclass
class Recovery:
    rate: float
    killed: str = ""                         # the server killed (the KMS stream's leader)
    leaders_at_kill: dict[str, str] = field(default_factory=dict)   # stream / "meta" -> server
    before_calls: int = 0
    before_failed: int = 0
    before_p50_ms: float = 0.0
    after_calls: int = 0                     # calls started after the kill
    first_success_s: float | None = None     # from the kill
    clean_from_s: float | None = None        # error rate back to 0, from the kill
    clean_span_s: float = 0.0                # how long the error-free stretch lasted
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, dict[str, Any]] = field(default_factory=dict)  # "status: message" -> count, and
                                             # when the first and last of them answered (s from the kill)
    slowest_ms: float = 0.0
    slowest_failure_ms: float = 0.0
    over_deadline: int = 0                   # calls that took longer than their deadline + grace
    recovered_p50_ms: float = 0.0            # successes in the clean stretch
    new_leader: str = ""
    server_ready_s: float | None = None      # restart -> accepting clients
    current_s: dict[str, float | None] = field(default_factory=dict)   # stream -> restart -> all current
    accepted_keys: int = 0
    lost_keys: int = 0
    lost_example: str = ""


@dataclass
class Report:
    args: argparse.Namespace
    data_fs: str = "?"
    machine: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, Phase] = field(default_factory=dict)      # f"{config}/{operation}" -> merged rounds
    recovery: Recovery | None = None
    notes: list[str] = field(default_factory=list)

    def phase(self, config: str, operation: str) -> Phase:
        key = f"{config} {operation}"
        if key not in self.phases:
            self.phases[key] = Phase(config, operation)
        return self.phases[key]

    def ratio(self, config: str, operation: str, what: str) -> float:
        base, here = self.phase("single", operation), self.phase(config, operation)
        if what == "rate":
            return here.rate / base.rate if base.rate else 0.0
        fraction = 0.5 if what == "p50" else 0.99
        return here.percentile(fraction) / base.percentile(fraction) if base.percentile(fraction) else 0.0


# --- the machine -----------------------------------------------------------------------------

def machine_size() -> dict[str, Any]:
    memory = 0
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "memory_bytes": memory, "cpu_model": model,
            "load_average": list(os.getloadavg())}


# --- deployments and replicas ----------------------------------------------------------------

@dataclass
class Deployment:
    """A running bus (the single server or the cluster), the replicas serving the KMS on it."""

    name: str
    url: str
    data_dir: Path
    replicas_flag: int
    servers: list[EmbeddedServer]
    token: str = ""
    replicas: list[Child] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)             # each replica's KMS site

    def server_pids(self) -> list[int]:
        return [server.pid for server in self.servers if server.pid is not None]

    def urls(self, count: int) -> list[str]:
        return [f"http://{HOST}:{port}/" for port in self.ports[:count]]


def replica_argv(deployment: Deployment, kms_port: int) -> list[str]:
    """`teebus run` of the KMS and MesaTEE's HTTP adapter, every MesaTEE site on a port of its own."""
    ports: list[str] = []
    for site in MESATEE.ports:
        ports += ["--port", f"{site}={kms_port if site == KMS_SITE else free_port()}"]
    return teebus_command("run", "mesatee.kms", "http.mesatee", "--nats", deployment.url,
                          "--data-dir", str(deployment.data_dir), "--replicas", str(deployment.replicas_flag),
                          *ports)


async def start_replica(children: Children, session: aiohttp.ClientSession, deployment: Deployment) -> Child:
    """One more replica process; returns once its KMS site answers a Create."""
    port = free_port()
    name = f"{deployment.name}-replica-{len(deployment.replicas) + 1}"
    child = await children.start(name, replica_argv(deployment, port))
    deployment.replicas.append(child)
    deployment.ports.append(port)
    url, deadline, last = f"http://{HOST}:{port}/", time.monotonic() + READY_TIMEOUT, "no answer"
    while time.monotonic() < deadline:
        children.check_alive()
        status, detail, _ = await post(session, url, deployment.token, b'{"type":"Create"}', "Create")
        if status == "200":
            return child
        last = f"{status}: {detail}"
        await asyncio.sleep(0.1)
    raise BenchError(f"{name} did not answer a Create on {url} within {READY_TIMEOUT:.0f}s: {last}")


async def stop_last_replica(children: Children, deployment: Deployment) -> None:
    child = deployment.replicas.pop()
    deployment.ports.pop()
    children.started.remove(child)
    await stop(child.process)


# --- the calls ---------------------------------------------------------------------------------

async def post(session: aiohttp.ClientSession, url: str, token: str, body: bytes,
               operation: str) -> tuple[str, str, str]:
    """(status, detail, key_id): "200" only for the seed's reply shape of `operation`."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    try:
        async with session.post(url, data=body, headers=headers) as response:
            data = await response.read()
            status = response.status
    except asyncio.TimeoutError:
        return "timeout", f"no answer within {CLIENT_TIMEOUT:g}s", ""
    except aiohttp.ClientError as exc:
        return "connection error", str(exc) or type(exc).__name__, ""
    try:
        reply = orjson.loads(data)
    except orjson.JSONDecodeError:
        return str(status), f"not JSON: {data[:120]!r}", ""
    if status != 200:
        return str(status), str(reply.get("message", reply))[:200] if isinstance(reply, dict) else repr(reply), ""
    if not isinstance(reply, dict) or reply.get("type") != operation or "config" not in reply:
        return "200 but wrong shape", repr(reply)[:200], ""
    return "200", "", reply.get("key_id", "")


def bodies_for(operation: str, keys: list[str]) -> Callable[[int], bytes]:
    if operation == "Create":
        create = orjson.dumps({"type": "Create"})
        return lambda index: create
    encoded = [orjson.dumps({"type": "Get", "key_id": key}) for key in keys]
    return lambda index: encoded[index % len(encoded)]


def cpu_snapshot(groups: dict[str, list[int]]) -> dict[str, float]:
    snapshot = {MACHINE: machine_busy_seconds()}
    for group, pids in groups.items():
        snapshot[group] = sum(cpu_seconds(pid) for pid in pids)
    return snapshot


def add_cpu(phase: Phase, before: dict[str, float], after: dict[str, float]) -> None:
    used = {group: after[group] - before[group] for group in before}
    machine = used.pop(MACHINE)
    used["other"] = max(0.0, machine - sum(used.values()))
    for group, seconds in used.items():
        phase.cpu[group] = phase.cpu.get(group, 0.0) + seconds


async def closed_loop(session: aiohttp.ClientSession, urls: list[str], token: str, operation: str,
                      body: Callable[[int], bytes], count: int, width: int, phase: Phase | None,
                      groups: dict[str, list[int]]) -> list[str]:
    """`count` calls by `width` callers, call i to urls[i % len(urls)]; the key ids Creates made."""
    made: list[str] = []
    issued = 0

    async def caller() -> None:
        nonlocal issued
        while issued < count:
            index = issued
            issued += 1
            started = time.perf_counter()
            status, detail, key_id = await post(session, urls[index % len(urls)], token, body(index), operation)
            elapsed = (time.perf_counter() - started) * 1000
            if key_id:
                made.append(key_id)
            if phase is None:
                continue
            if status == "200":
                phase.latencies_ms.append(elapsed)
            else:
                phase.fail(status, detail)

    before, started = cpu_snapshot(groups), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(min(width, count))))
    if phase is not None:
        phase.seconds += time.perf_counter() - started
        add_cpu(phase, before, cpu_snapshot(groups))
    return made


async def measure(report: Report, config: str, deployment: Deployment, idle: Deployment, count: int,
                  session: aiohttp.ClientSession, children: Children) -> None:
    args = report.args
    urls = deployment.urls(2 if config == "cluster/2" else 1)
    groups = {"client": [os.getpid()], "replicas": [child.pid for child in deployment.replicas],
              "nats": deployment.server_pids(),
              "idle deployment": idle.server_pids() + [child.pid for child in idle.replicas]}
    warm = await closed_loop(session, urls, deployment.token, "Create", bodies_for("Create", []),
                             WARMUP_CALLS, args.concurrency, None, groups)
    await closed_loop(session, urls, deployment.token, "Get", bodies_for("Get", warm), WARMUP_CALLS,
                      args.concurrency, None, groups)
    progress(f"  {config}: {count} Create calls, {args.concurrency} callers ...")
    keys = await closed_loop(session, urls, deployment.token, "Create", bodies_for("Create", []), count,
                             args.concurrency, report.phase(config, "Create"), groups)
    if not keys:
        raise BenchError(f"{config}: no Create succeeded; the first failure: "
                         f"{report.phase(config, 'Create').first_failure}")
    progress(f"  {config}: {count} Get calls over the {len(keys)} keys made ...")
    await closed_loop(session, urls, deployment.token, "Get", bodies_for("Get", keys), count,
                      args.concurrency, report.phase(config, "Get"), groups)
    children.check_alive()


# --- recovery ----------------------------------------------------------------------------------

async def stream_cluster(admin: Any, stream: str) -> Any:
    """The stream's cluster info, or None when JetStream does not answer now."""
    try:
        return (await admin.jetstream(timeout=1.0).stream_info(stream)).cluster
    except Exception:                     # no leader yet, the connection is failing over, ...
        return None


def all_current(cluster: Any, copies: int) -> bool:
    peers = (cluster.replicas or []) if cluster is not None else []
    return bool(cluster is not None and cluster.leader and len(peers) == copies - 1
                and all(peer.current and not peer.offline and not peer.lag for peer in peers))


async def meta_leader(session: aiohttp.ClientSession, cluster: LocalCluster) -> str:
    """The JetStream meta leader, as a node's monitoring endpoint (/jsz) says."""
    for url in cluster.monitor_urls().values():
        try:
            async with session.get(f"{url}/jsz", timeout=aiohttp.ClientTimeout(total=2)) as response:
                found = ((await response.json(content_type=None)).get("meta_cluster") or {}).get("leader")
                if found:
                    return found
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            continue
    return "?"


class SteadyLoad:
    """Create calls at a fixed rate, alternating over `urls`, each one whatever the others do."""

    def __init__(self, session: aiohttp.ClientSession, urls: list[str], token: str, rate: float) -> None:
        self.session, self.urls, self.token, self.rate = session, urls, token, rate
        self.done: list[Attempt] = []
        self.in_flight: dict[int, float] = {}           # call number -> started
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._runner: asyncio.Task | None = None

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run())

    async def _one(self, number: int) -> None:
        started = time.monotonic()
        self.in_flight[number] = started
        status, detail, key_id = await post(self.session, self.urls[number % len(self.urls)], self.token,
                                            b'{"type":"Create"}', "Create")
        self.done.append(Attempt(started, time.monotonic(), status, detail, key_id))
        del self.in_flight[number]

    async def _run(self) -> None:
        interval, number = 1.0 / self.rate, 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            task = asyncio.create_task(self._one(number))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            number += 1
            next_at += interval
            try:
                await asyncio.wait_for(self._stop.wait(), max(0.0, next_at - time.monotonic()))
            except asyncio.TimeoutError:
                pass

    async def finish(self) -> list[Attempt]:
        """Stop issuing calls; wait for those in flight (each ends within CLIENT_TIMEOUT)."""
        self._stop.set()
        if self._runner is not None:
            await self._runner
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        return sorted(self.done, key=lambda attempt: attempt.started)

    async def cancel(self) -> None:
        self._stop.set()
        for task in [*self._tasks, *([self._runner] if self._runner else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, *([self._runner] if self._runner else []), return_exceptions=True)

    def recovered(self, killed_at: float) -> bool:
        """A success started after the kill, and CLEAN_SECONDS of successes since the last failure,
        with nothing older than that stretch's end still in flight."""
        attempts = sorted(self.done, key=lambda attempt: attempt.started)
        if not any(a.ok and a.started >= killed_at for a in attempts):
            return False
        clean = clean_from(attempts, killed_at)
        if clean is None:
            return False
        end = clean + CLEAN_SECONDS
        if time.monotonic() < end or any(started <= end for started in self.in_flight.values()):
            return False
        return any(a.started >= end for a in attempts) or time.monotonic() > end + 1.0 / self.rate


def clean_from(attempts: list[Attempt], killed_at: float) -> float | None:
    """The start of the first call (started after the kill) after the last failure, or None."""
    failures = [a.started for a in attempts if not a.ok]
    after = max([killed_at, *failures])
    later = [a.started for a in attempts if a.started > after or (not failures and a.started >= after)]
    return min(later) if later else None


async def recover(report: Report, cluster: LocalCluster, deployment: Deployment,
                  session: aiohttp.ClientSession, admin: Any, children: Children) -> None:
    args = report.args
    result = report.recovery = Recovery(args.recovery_rate)
    load = SteadyLoad(session, deployment.urls(2), deployment.token, args.recovery_rate)
    progress(f"recovery: {args.recovery_rate:g} Create calls/s over both replicas for {PRE_KILL:g}s, "
             f"then SIGKILL the leader of {KMS_STREAM} ...")
    load.start()
    try:
        await asyncio.sleep(PRE_KILL)
        info = await stream_cluster(admin, KMS_STREAM)
        if info is None or not info.leader:
            raise BenchError(f"{KMS_STREAM} has no leader before the kill")
        events = await stream_cluster(admin, EVENTS_STREAM)
        result.leaders_at_kill = {KMS_STREAM: info.leader, EVENTS_STREAM: events.leader if events else "?",
                                  "meta": await meta_leader(session, cluster)}
        index = next((i for i, server in enumerate(cluster.servers) if server.name == info.leader), None)
        if index is None:
            raise BenchError(f"{KMS_STREAM}'s leader {info.leader!r} is none of this cluster's servers")
        result.killed = info.leader
        killed_at = time.monotonic()
        await cluster.servers[index].kill()
        progress(f"  killed {info.leader}; waiting for {CLEAN_SECONDS:g}s without errors "
                 f"(at most {args.recovery_window:g}s) ...")
        while time.monotonic() < killed_at + args.recovery_window and not load.recovered(killed_at):
            children.check_alive()
            await asyncio.sleep(POLL)
        attempts = await load.finish()
    except BaseException:
        await load.cancel()
        raise
    summarise(result, attempts, killed_at)
    after = await stream_cluster(admin, KMS_STREAM)
    result.new_leader = after.leader if after is not None and after.leader else "?"

    progress(f"  restarting {result.killed}; waiting for every copy to be current ...")
    restarted = time.monotonic()
    await cluster.restart(index)
    result.server_ready_s = time.monotonic() - restarted
    pending = {KMS_STREAM: None, EVENTS_STREAM: None}
    while time.monotonic() < restarted + CATCH_UP_TIMEOUT and any(value is None for value in pending.values()):
        for stream in pending:
            if pending[stream] is None and all_current(await stream_cluster(admin, stream), 3):
                pending[stream] = time.monotonic() - restarted
        await asyncio.sleep(POLL / 2)
    result.current_s = pending

    accepted = [a.key_id for a in attempts if a.ok and a.key_id]
    result.accepted_keys = len(accepted)
    progress(f"  fetching the {len(accepted)} keys accepted during the recovery phase ...")
    semaphore = asyncio.Semaphore(args.concurrency)
    urls = deployment.urls(2)

    async def check(number: int, key_id: str) -> None:
        async with semaphore:
            status, detail, _ = await post(session, urls[number % 2], deployment.token,
                                           orjson.dumps({"type": "Get", "key_id": key_id}), "Get")
        if status != "200":
            result.lost_keys += 1
            result.lost_example = result.lost_example or f"{key_id}: {status} {detail}"

    await asyncio.gather(*(check(number, key_id) for number, key_id in enumerate(accepted)))


def summarise(result: Recovery, attempts: list[Attempt], killed_at: float) -> None:
    before = [a for a in attempts if a.started < killed_at and a.ended < killed_at]
    result.before_calls = len(before)
    result.before_failed = sum(not a.ok for a in before)
    result.before_p50_ms = percentile([(a.ended - a.started) * 1000 for a in before if a.ok], 0.5)
    result.after_calls = sum(a.started >= killed_at for a in attempts)
    successes = [a.ended for a in attempts if a.ok and a.started >= killed_at]
    result.first_success_s = min(successes) - killed_at if successes else None
    touched = [a for a in attempts if a.ended >= killed_at]            # everything the kill could reach
    for attempt in touched:
        if not attempt.ok:
            result.failures[attempt.status] = result.failures.get(attempt.status, 0) + 1
            kind = result.kinds.setdefault(f"{attempt.status}: {attempt.detail[:200]}",
                                           {"count": 0, "first_s": attempt.ended - killed_at})
            kind["count"] += 1
            kind["last_s"] = attempt.ended - killed_at
    result.failed = sum(result.failures.values())
    clean = clean_from(attempts, killed_at)
    if clean is not None:
        result.clean_from_s = clean - killed_at
        stretch = [a for a in attempts if a.started >= clean]
        result.clean_span_s = max(a.started for a in stretch) - clean
        result.recovered_p50_ms = percentile([(a.ended - a.started) * 1000 for a in stretch], 0.5)
    durations = [(a.ended - a.started) * 1000 for a in attempts]
    result.slowest_ms = max(durations, default=0.0)
    result.slowest_failure_ms = max(((a.ended - a.started) * 1000 for a in attempts if not a.ok), default=0.0)
    limit = ADAPTER_TIMEOUT + DEADLINE_GRACE
    result.over_deadline = sum(a.ended - a.started > limit for a in attempts)


# --- the run ---------------------------------------------------------------------------------

async def start_single(root: Path) -> tuple[EmbeddedServer, Deployment]:
    data_dir = root / "single"
    server = EmbeddedServer(DEFAULT_CONF, data_dir, port=free_port(), roles=roles.all_roles(installed()))
    await server.start()
    deployment = Deployment("single", server.url, data_dir, 1, [server])
    return server, deployment


async def start_cluster(root: Path) -> tuple[LocalCluster, Deployment]:
    cluster = LocalCluster(DEFAULT_CONF, root / "cluster", nodes=3, free_ports=True,
                           roles=roles.all_roles(installed()))
    await cluster.start()
    return cluster, Deployment("cluster", cluster.url, cluster.data_dir, 3, cluster.servers)


async def bootstrap(deployment: Deployment, passwords: dict[str, str]) -> None:
    """What `teebus up` does before its node: the payload store and EVENTS, the internal token."""
    admin = await connect(deployment.url, roles.ADMIN, passwords=passwords, name="bench-setup")
    try:
        await prepare(admin, deployment.replicas_flag)
    finally:
        await admin.close()
    deployment.token = ensure_secret_file(deployment.data_dir / INTERNAL_TOKEN_FILE)


async def bench(args: argparse.Namespace) -> Report:
    report = Report(args, machine=machine_size())
    with tempfile.TemporaryDirectory(prefix="teebus-bench-cluster-kms-") as tmp:
        root = Path(tmp)
        report.data_fs = filesystem(root)
        children = Children(root / "logs")
        server: EmbeddedServer | None = None
        cluster: LocalCluster | None = None
        try:
            progress("starting the single server and the three-node cluster ...")
            server, single = await start_single(root)
            cluster, clustered = await start_cluster(root)
            await bootstrap(single, server.passwords)
            await bootstrap(clustered, cluster.passwords)
            timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
            async with aiohttp.ClientSession(timeout=timeout,
                                             connector=aiohttp.TCPConnector(limit=0, force_close=False)) as session:
                progress("starting one replica on each (teebus run mesatee.kms http.mesatee) ...")
                await start_replica(children, session, single)
                await start_replica(children, session, clustered)
                for round_ in range(args.rounds):
                    progress(f"round {round_ + 1}/{args.rounds}")
                    await measure(report, "single", single, clustered, args.calls, session, children)
                    await measure(report, "cluster/1", clustered, single, args.calls, session, children)
                    progress("  cluster/2: starting a second replica ...")
                    await start_replica(children, session, clustered)
                    await measure(report, "cluster/2", clustered, single, args.calls, session, children)
                    if round_ < args.rounds - 1:
                        await stop_last_replica(children, clustered)
                if not args.no_recovery:
                    admin = await connect(cluster.url, roles.ADMIN, passwords=cluster.passwords,
                                          name="bench-observer")
                    try:
                        await recover(report, cluster, clustered, session, admin, children)
                    finally:
                        await admin.close()
                children.check_alive()
        except BenchError:
            print(f"replica logs:\n{children.tails()}", file=sys.stderr)
            raise
        finally:
            await children.stop_all()
            if cluster is not None:
                await cluster.stop()
            if server is not None:
                await server.stop()
    if report.data_fs == "tmpfs":
        report.notes.append("the temporary directory is on tmpfs: JetStream's fsyncs cost nothing here")
    return report


# --- the report ------------------------------------------------------------------------------

def seconds(value: float | None) -> str:
    return "never (within the window)" if value is None else f"{value:.2f} s"


def print_report(report: Report) -> None:
    args, machine = report.args, report.machine
    print(f"\nteebus MesaTEE KMS scale-out: {args.calls} Create then {args.calls} Get calls per configuration "
          f"and round, {args.concurrency} callers (closed loop), {args.rounds} round(s)")
    print(f"machine: {machine['cores']} cores ({machine['cpu_model']}), "
          f"{machine['memory_bytes'] / 2**30:.1f} GiB memory, load average at start "
          f"{' '.join(f'{v:.2f}' for v in machine['load_average'])}; data directory on {report.data_fs}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"\n  {'':<11}{'':<8}{'p50 ms':>8}{'p99 ms':>8}{'calls/s':>9}{'failed':>8}"
          f"{'p50 x':>8}{'p99 x':>8}{'calls/s x':>11}")
    for operation in OPERATIONS:
        for config in CONFIGS:
            phase = report.phase(config, operation)
            ratios = ("" if config == "single" else
                      f"{report.ratio(config, operation, 'p50'):>8.2f}{report.ratio(config, operation, 'p99'):>8.2f}"
                      f"{report.ratio(config, operation, 'rate'):>11.2f}")
            print(f"  {config:<11}{operation:<8}{phase.percentile(0.5):>8.2f}{phase.percentile(0.99):>8.2f}"
                  f"{phase.rate:>9,.0f}{phase.failed:>8}{ratios}")
    print("  (x: against single; p50/p99 lower is better, calls/s higher is better)")
    for phase in report.phases.values():
        if phase.failed:
            print(f"  {phase.config} {phase.operation}: {phase.failed} of {phase.calls} failed "
                  f"({', '.join(f'{s} x{n}' for s, n in phase.failures.items())}); the first: {phase.first_failure}")
    busy = [f"{p.config} {p.operation} {p.core_share('other'):.0%}" for p in report.phases.values()
            if p.core_share("other") > OTHER_WARNING]
    if busy:
        print(f"  note: other work took a large share of the cores during {', '.join(busy)}: those phases' "
              "calls/s and p99 suffer from it (their CPU per call hardly does); rerun, or use --rounds")
    print("\n  CPU µs per call (share of one core over the phase):")
    for operation in OPERATIONS:
        for config in CONFIGS:
            phase = report.phase(config, operation)
            cells = "  ".join(f"{group} {phase.cpu_us(group):>5,.0f} ({phase.core_share(group):>4.0%})"
                              for group in CPU_GROUPS)
            print(f"    {config:<10}{operation:<7}{cells}")
    if report.recovery is not None:
        print_recovery(report.recovery)


def print_recovery(r: Recovery) -> None:
    leaders = ", ".join(f"{name} {leader}" for name, leader in r.leaders_at_kill.items())
    print(f"\nrecovery on cluster/2 under {r.rate:g} Create calls/s: SIGKILL of {r.killed}, "
          f"the leader of {KMS_STREAM} (leaders at the kill: {leaders}; afterwards: {r.new_leader})")
    print(f"  before the kill: {r.before_calls} calls, {r.before_failed} failed, p50 {r.before_p50_ms:.2f} ms")
    label = 40
    print(f"  {'first success after the kill':<{label}}{seconds(r.first_success_s)}")
    print(f"  {f'error rate back to 0 (then for {r.clean_span_s:.1f} s)':<{label}}{seconds(r.clean_from_s)}"
          + ("" if r.clean_span_s >= CLEAN_SECONDS else "  (NOT confirmed: shorter than a full second)"))
    print(f"  {'calls started after the kill':<{label}}{r.after_calls}; failed (answered after the kill): {r.failed}")
    print(f"    by status: {', '.join(f'{status} x{count}' for status, count in sorted(r.failures.items()))}")
    for kind, seen in sorted(r.kinds.items(), key=lambda item: item[1]["first_s"]):
        print(f"    x{seen['count']:<4} answered {seen['first_s']:5.2f}-{seen['last_s']:5.2f} s after the kill: {kind}")
    print(f"  slowest call {r.slowest_ms:,.0f} ms (slowest failure {r.slowest_failure_ms:,.0f} ms); deadline "
          f"{ADAPTER_TIMEOUT:g} s + {DEADLINE_GRACE:g} s grace: {r.over_deadline} call(s) past it"
          + ("" if r.over_deadline else " -- none hung"))
    print(f"  p50 once recovered {r.recovered_p50_ms:.2f} ms")
    print(f"  restart of {r.killed}: accepting clients after {seconds(r.server_ready_s)}; all copies current "
          + ", ".join(f"{stream} {seconds(value)}" for stream, value in r.current_s.items())
          + " (from the restart, no load)")
    print(f"  keys accepted during the recovery phase: {r.accepted_keys}, lost: {r.lost_keys}"
          + (f" (e.g. {r.lost_example})" if r.lost_keys else ""))


def report_json(report: Report) -> dict[str, Any]:
    phases = {}
    for name, phase in report.phases.items():
        phases[name] = {"calls": phase.calls, "failed": phase.failed, "failures": phase.failures,
                        "first_failure": phase.first_failure, "seconds": phase.seconds,
                        "calls_per_s": phase.rate, "p50_ms": phase.percentile(0.5),
                        "p99_ms": phase.percentile(0.99),
                        "cpu_us_per_call": {group: phase.cpu_us(group) for group in CPU_GROUPS},
                        "core_share": {group: phase.core_share(group) for group in CPU_GROUPS}}
        if phase.config != "single":
            phases[name].update({f"ratio_{what}": report.ratio(phase.config, phase.operation, what)
                                 for what in ("p50", "p99", "rate")})
    recovery = None
    if report.recovery is not None:
        recovery = dict(vars(report.recovery))
        recovery["deadline_s"] = ADAPTER_TIMEOUT + DEADLINE_GRACE
    args = report.args
    return {"calls": args.calls, "concurrency": args.concurrency, "rounds": args.rounds,
            "machine": report.machine, "data_fs": report.data_fs, "phases": phases,
            "recovery": recovery, "notes": report.notes}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="measured Create calls, and Get calls, per "
                        "configuration and round (default 1000)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent callers (default 16)")
    parser.add_argument("--rounds", type=int, default=2, help="times the three configurations are measured in "
                        "turn (default 2)")
    parser.add_argument("--recovery-rate", type=float, default=50.0, help="Create calls/s of the steady load "
                        "around the kill (default 50)")
    parser.add_argument("--recovery-window", type=float, default=30.0, help="s after the kill to wait for "
                        "recovery at most (default 30)")
    parser.add_argument("--no-recovery", action="store_true", help="skip the kill and restart")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--calls, --concurrency and --rounds must be positive")
    if not 0 < args.recovery_rate <= 1000 or args.recovery_window < 2:
        parser.error("--recovery-rate must be in (0, 1000] and --recovery-window at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log.configure("warning")
    return run_and_report("cluster_kms", lambda: bench(args), (BenchError, ServerError), as_json=args.json,
                          to_json=report_json, print_text=print_report)


if __name__ == "__main__":
    sys.exit(main())
