"""What does the Enarx path cost a workload? Wasm run in-process versus through a Ready keep, in one run.

    (a) direct   wasmtime-py in this process, through `WasmRunner` with the keep's limits:
                 a1  compile + instantiate + run of a module never seen before (fresh bytes each
                     time; the runner has a disk cache directory like the keep's, so a1 includes
                     writing the .cwasm exactly as the keep does);
                 a2  the wall time of `runner.run()` on a cache hit (checks, sha256, store, WASI
                     context, instantiate, run) -- the baseline of the warm ratio; and, for
                     reference, the runner's own `elapsed_ms` (instantiate + run only).
    (b) keep     the same workload as a client sees it: HTTPS POST /workload to the keep's wasmldr
                 (pinned to the keep's certificate) -> the keep process's HTTPS site -> NATS ->
                 its wasmldr component -> wasmtime on a worker thread -> reply. One request at a
                 time. b1 cold: the first deploy of a module (compile included; every sample's bytes
                 are unique through a custom section holding a counter); b2 warm: the same module
                 again (cached). The client keeps one pinned TLS context, so its connection is
                 reused; the row "b2 EnarxClient.deploy" is the shipped client (it keeps one pinned
                 context per keep certificate too). "keep elapsed_ms" is what the keep says
                 the run itself took.
    (c) proxy    4 MiB opaque keep traffic, `--clients` concurrent clients for `--seconds`:
                 proxy: HTTP POST /keep/<kuuid> on the keep manager's adapter -> NATS
                 `enarx.keep.<kuuid>` -> the keep loader, which decodes the CBOR byte string and
                 answers 400 "understands 'request-evidence'..." (the whole 4 MiB crosses every
                 hop, a small reply comes back); an informative second proxy row sends 4 MiB that
                 is not CBOR, which the loader refuses at its first byte, so it shows the transport
                 alone; bare: a nats-py request of the same 4 MiB to a plain nats-py responder
                 process (bench/servers.py) that answers a small body.

Two workloads: "hello" (prints one line: its run time is ~0, so its rows show the fixed per-request
overhead in ms) and "compute" (an integer loop of ~20-50 ms, then its result on stdout: the
meaningful one for the ratio target, which is about the path's overhead relative to run time).

How to read the ratios:
    b2/a2  warm request through the keep over running the cached module in-process -- target <= 2.0
           (met by "compute"; for "hello" the ratio is of ~0-ms runs, read its b2-a2 in ms instead);
    b1/a1  cold request over compile + run in-process (informative);
    c      proxy MB/s over bare MB/s -- target >= 0.5.

Setup: one embedded nats-server on a temporary data directory; `teebus run enarx.keepmgr
http.enarx` in its own process (this process is only the client); one Nil keep made Ready the way
a client does it (contracts -> new_keep -> "request-evidence" -> "launch"); the keep manager spawns
the keep's process. The rows of (a) and (b) are sampled in alternating blocks of BLOCK samples
(a1, b1, a2, b2, shipped client), so drift in load from elsewhere on the machine hits all alike while
b2 mostly follows b2, as for a client sending one workload after another. The CPU lines name the
process each request's CPU time went to (b2 in a pass of its own; "other" is the rest of the
machine: when it is high, rerun). Everything is stopped at the end, keeps first (DELETE), also on
errors and on SIGTERM.

    python bench/enarx_workload.py [--rounds 30] [--seconds 5] [--clients 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

if __package__ in (None, ""):  # run as `python bench/enarx_workload.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import cbor2
import wasmtime

from bench.bus_overhead import teebus_command
from bench.figures import percentile
from bench.processes import (BenchError, Children, cpu_seconds, machine_busy_seconds,
                             python_module, run_until_done)
from bus import log
from bus.connection import connect
from bus.server import EmbeddedServer, ServerError, free_port
from bus.testing import running_bus
from teebus.systems import installed
from components.enarx import keep_processes
from components.enarx.wasm_runner import Limits, RunRequest, RunResult, WasmRunner
from components.enarx.client import EnarxClient, EnarxError, kuuid_text, pinned_context
from tests.wasm_modules import FD_WRITE, SOURCES, leb128

HOST = "127.0.0.1"
MIB = 1024 * 1024
TARGET_WARM = 2.0          # b2 / a2 at most
TARGET_PROXY = 0.5         # c proxy / c bare at least
READY_TIMEOUT = 30.0
WARMUP_SAMPLES = 3
WARMUP_SECONDS = 1.0
BLOCK = 10                 # samples of one target in a row before the next target's
CPU_SECONDS = 2.0          # the least time the CPU-per-request pass of b2 runs
PROXY_PAYLOAD = 4 * MIB
COMPUTE_ITERATIONS = 10_000_000   # ~25-40 ms of xorshift64 with fuel metering on a 2-core VM
BARE_SUBJECT = "bench.enarx.bare"
# The keep's limits, given to `teebus run` as flags and to the in-process runner as they are.
LIMITS = {"deadline_seconds": 60.0, "max_memory_bytes": 256 * MIB, "max_output_bytes": 1 * MIB,
          "max_module_bytes": 64 * MIB}
LIMIT_FLAGS = {"deadline_seconds": "--wasm-deadline", "max_memory_bytes": "--wasm-memory",
               "max_output_bytes": "--wasm-output", "max_module_bytes": "--wasm-max-module"}

COMPUTE = f"""
(module
  {FD_WRITE}
  (memory (export "memory") 1)
  (func (export "_start")
    (local $i i32) (local $x i64) (local $p i32)
    (local.set $x (i64.const 88172645463325252))
    (local.set $i (i32.const {COMPUTE_ITERATIONS}))
    (loop $work   ;; xorshift64
      (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 13))))
      (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 7))))
      (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 17))))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $work (local.get $i)))
    ;; the result in decimal, ending at offset 100, then one fd_write
    (local.set $p (i32.const 99))
    (i32.store8 (i32.const 99) (i32.const 10))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i64.store8 (local.get $p) (i64.add (i64.const 48) (i64.rem_u (local.get $x) (i64.const 10))))
      (local.set $x (i64.div_u (local.get $x) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $x) (i64.const 0))))
    (i32.store (i32.const 0) (local.get $p))
    (i32.store (i32.const 4) (i32.sub (i32.const 100) (local.get $p)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""

WORKLOADS = {"hello": SOURCES["hello"], "compute": COMPUTE}


# --- samples and their summaries ---------------------------------------------------------------



@dataclass
class Samples:
    """Latencies of one target in ms."""

    label: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else 0.0

    @property
    def p90(self) -> float:
        return percentile(self.values, 0.90)


@dataclass
class WorkloadResult:
    """Every latency target of one workload, in print order."""

    name: str
    stdout: bytes
    rows: dict[str, Samples]
    cpu_ms: dict[str, float]          # b2 warm: CPU ms per request, by process

    def median(self, key: str) -> float:
        return self.rows[key].median


@dataclass
class Throughput:
    label: str
    requests: int
    errors: int
    seconds: float
    payload: int
    latencies: list[float]
    cpu_ms: dict[str, float] = field(default_factory=dict)
    other_share: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def mb_s(self) -> float:
        return self.rps * self.payload / 1e6


# --- modules ---------------------------------------------------------------------------------

def unique(wasm: bytes, counter: int, salt: bytes) -> bytes:
    """`wasm` plus a custom section holding `salt` and `counter`: new bytes (a cache miss), same code."""
    name = b"teebus-bench"
    content = leb128(len(name)) + name + salt + counter.to_bytes(8, "little")
    return wasm + b"\x00" + leb128(len(content)) + content


# --- (a) in this process ---------------------------------------------------------------------

def timed_run(runner: WasmRunner, wasm: bytes) -> tuple[float, RunResult]:
    started = time.perf_counter()
    result = runner.run(RunRequest(wasm))
    wall = (time.perf_counter() - started) * 1000
    if result.exit_code != 0:
        raise BenchError(f"the workload failed in-process: {result.stopped} {result.details}")
    return wall, result


# --- (b) through the keep --------------------------------------------------------------------

@dataclass
class KeepTarget:
    """A Ready keep and the two clients that reach its wasmldr."""

    keep: dict[str, Any]
    session: aiohttp.ClientSession         # one pinned context: the connection is reused
    enarx: EnarxClient                     # the shipped client (a pinned context per call)

    @property
    def url(self) -> str:
        wasmldr = self.keep["wasmldr"]
        return f"https://{wasmldr['wasmldr_ipaddr']}:{wasmldr['wasmldr_port']}/workload"


async def post_workload(target: KeepTarget, wasm: bytes) -> tuple[float, dict[str, Any]]:
    """One workload over the reused pinned connection: (client ms, the keep's reply)."""
    body = cbor2.dumps({"wasm_binary": wasm, "human_readable_info": "bench"})
    started = time.perf_counter()
    async with target.session.post(target.url, data=body) as response:
        raw = await response.read()
    wall = (time.perf_counter() - started) * 1000
    reply = cbor2.loads(raw)
    if response.status != 200 or reply.get("exit_code") != 0:
        raise BenchError(f"the keep answered {response.status}: {reply!r:.300}")
    return wall, reply


async def deploy_shipped(target: KeepTarget, wasm: bytes) -> float:
    started = time.perf_counter()
    reply = await target.enarx.deploy(target.keep, wasm, info="bench")
    if reply.get("exit_code") != 0:
        raise BenchError(f"EnarxClient.deploy: {reply!r:.300}")
    return (time.perf_counter() - started) * 1000


# --- measuring one workload, (a) and (b) in alternating blocks ---------------------------------------

ROWS = {"a1": "a1 in-process compile+instantiate+run",
        "a2": "a2 in-process run() on a cache hit",
        "a2e": "   its elapsed_ms (instantiate+run)",
        "b1": "b1 keep cold (compile in the keep)",
        "b1c": "   keep compile_ms + elapsed_ms",
        "b2": "b2 keep warm (cached)",
        "b2e": "   keep elapsed_ms",
        "b2s": "b2 EnarxClient.deploy (shipped client)"}


async def measure_workload(name: str, wasm: bytes, target: KeepTarget, cold_runner: WasmRunner,
                           warm_runner: WasmRunner, rounds: int, processes: dict[str, int]) -> WorkloadResult:
    rows = {key: Samples(label) for key, label in ROWS.items()}
    _, first = timed_run(warm_runner, wasm)                    # fill the runner's cache ...
    await post_workload(target, wasm)                           # ... and the keep's
    for _ in range(WARMUP_SAMPLES):
        await warm_block(rows, wasm, target, warm_runner, 1, record=False)
    salt, done = os.urandom(8), 0
    while done < rounds:   # blocks of each target in turn: drift hits all, and b mostly follows b
        count = min(BLOCK, rounds - done)
        await cold_block(rows, wasm, target, cold_runner, done, count, salt)
        await warm_block(rows, wasm, target, warm_runner, count)
        done += count
    return WorkloadResult(name, first.stdout, rows, await b2_cpu(wasm, target, rounds, processes))


async def cold_block(rows: dict[str, Samples], wasm: bytes, target: KeepTarget, runner: WasmRunner,
                     first: int, count: int, salt: bytes) -> None:
    """a1 then b1, `count` samples each, every sample on bytes neither has seen."""
    for i in range(first, first + count):
        wall, result = timed_run(runner, unique(wasm, i, salt + b"a"))
        if result.cached:
            raise BenchError("an a1 sample hit the cache: the module bytes were not unique")
        rows["a1"].values.append(wall)
    for i in range(first, first + count):
        wall, reply = await post_workload(target, unique(wasm, i, salt + b"b"))
        if reply["cached"]:
            raise BenchError("a b1 sample hit the keep's cache: the module bytes were not unique")
        rows["b1"].values.append(wall)
        rows["b1c"].values.append(reply["compile_ms"] + reply["elapsed_ms"])


async def warm_block(rows: dict[str, Samples], wasm: bytes, target: KeepTarget, runner: WasmRunner,
                     count: int, record: bool = True) -> None:
    """a2, then b2, then the shipped client, `count` samples each, on the cached module."""
    samples: dict[str, list[float]] = {key: [] for key in ("a2", "a2e", "b2", "b2e", "b2s")}
    for _ in range(count):
        wall, result = timed_run(runner, wasm)
        samples["a2"].append(wall)
        samples["a2e"].append(result.elapsed_ms)
    for _ in range(count):
        wall, reply = await post_workload(target, wasm)
        samples["b2"].append(wall)
        samples["b2e"].append(reply["elapsed_ms"])
    for _ in range(count):
        samples["b2s"].append(await deploy_shipped(target, wasm))
    if record:
        for key, values in samples.items():
            rows[key].values.extend(values)


async def b2_cpu(wasm: bytes, target: KeepTarget, rounds: int, processes: dict[str, int]) -> dict[str, float]:
    """CPU ms per warm request by process: b2 alone, at least `rounds` requests and CPU_SECONDS."""
    before, started, count = cpu_snapshot(processes), time.monotonic(), 0
    while count < rounds or time.monotonic() - started < CPU_SECONDS:
        await post_workload(target, wasm)
        count += 1
    return {label: seconds / count * 1000 for label, seconds in cpu_delta(before, cpu_snapshot(processes)).items()}


# --- CPU accounting --------------------------------------------------------------------------

MACHINE = "(machine)"


def cpu_snapshot(processes: dict[str, int]) -> dict[str, float]:
    return {MACHINE: machine_busy_seconds(), **{label: cpu_seconds(pid) for label, pid in processes.items()}}


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per process between two snapshots; MACHINE becomes the rest of the machine."""
    used = {label: after[label] - before[label] for label in before}
    machine = used.pop(MACHINE)
    used["other"] = max(0.0, machine - sum(used.values()))
    return used


# --- (c) 4 MiB opaque traffic ----------------------------------------------------------------

async def closed_loop(label: str, send: Callable[[], Awaitable[bool]], clients: int, seconds: float,
                      payload: int, processes: dict[str, int]) -> Throughput:
    """`clients` loops sending back to back; counted: started after the warmup, done before the end."""
    now = time.perf_counter()
    start, end = now + WARMUP_SECONDS, now + WARMUP_SECONDS + seconds
    latencies: list[float] = []
    errors = [0]

    async def client() -> None:
        while time.perf_counter() < end:
            began = time.perf_counter()
            ok = await send()
            done = time.perf_counter()
            if began >= start and done <= end:
                if ok:
                    latencies.append((done - began) * 1000)
                else:
                    errors[0] += 1
            if not ok:
                await asyncio.sleep(0.01)

    await asyncio.sleep(0)
    snapshot: dict[str, dict[str, float]] = {}

    async def sample_cpu() -> None:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        snapshot["before"] = cpu_snapshot(processes)
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        snapshot["after"] = cpu_snapshot(processes)

    await asyncio.gather(sample_cpu(), *(client() for _ in range(clients)))
    used = cpu_delta(snapshot["before"], snapshot["after"])
    other = used.pop("other")
    count = max(len(latencies), 1)
    return Throughput(label, len(latencies), errors[0], seconds, payload, latencies,
                      {k: v / count * 1000 for k, v in used.items()}, other / seconds)


@dataclass(frozen=True)
class ProxyBody:
    """A 4 MiB body for POST /keep/<kuuid> and the words the keep loader's 400 reply must hold."""

    label: str
    body: bytes
    needle: bytes


PROXY_BODIES = {
    "proxy": ProxyBody("proxy  HTTP -> keepmgr adapter -> NATS -> keep", cbor2.dumps(b"\0" * PROXY_PAYLOAD),
                       b"understands"),
    "raw": ProxyBody("  (same path, body not CBOR: refused at byte 0)", b"\xff" * PROXY_PAYLOAD,
                     b"does not decode"),
}


def proxy_sender(session: aiohttp.ClientSession, url: str, expect: ProxyBody) -> Callable[[], Awaitable[bool]]:
    async def send() -> bool:
        try:
            async with session.post(url, data=expect.body) as response:
                raw = await response.read()
                return response.status == 400 and expect.needle in raw
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False
    return send


def bare_sender(client: Any, body: bytes) -> Callable[[], Awaitable[bool]]:
    async def send() -> bool:
        try:
            return bool((await client.request(BARE_SUBJECT, body, timeout=10)).data)
        except Exception:  # noqa: BLE001 - nats-py timeouts and no-responders alike count as errors
            return False
    return send


async def check_proxy_reply(session: aiohttp.ClientSession, url: str, expect: ProxyBody) -> None:
    if not await proxy_sender(session, url, expect)():
        async with session.post(url, data=expect.body) as response:
            raw = await response.read()
        raise BenchError(f"the keep loader answered {expect.body[:8]!r}... with {response.status}: {raw[:200]!r}")


# --- setup and teardown ----------------------------------------------------------------------

def teebus_run_argv(server: EmbeddedServer, data_dir: Path, port: int, wasmldr_port: int) -> list[str]:
    flags = [arg for name, value in LIMITS.items() for arg in (LIMIT_FLAGS[name], str(value))]
    return teebus_command("run", "enarx.keepmgr", "http.enarx", "--nats", server.url, "--data-dir",
                          str(data_dir), "--port", f"enarx-keepmgr={port}",
                          "--port", f"enarx-wasmldr={wasmldr_port}", *flags)


async def wait_keepmgr(enarx: EnarxClient, children: Children) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        children.check_alive()
        try:
            if any(c["backend"] == "Nil" for c in await enarx.contracts()):
                return
        except (aiohttp.ClientError, EnarxError) as exc:
            last = str(exc) or type(exc).__name__
        await asyncio.sleep(0.1)
    raise BenchError(f"the keep manager did not answer within {READY_TIMEOUT:.0f}s: {last}")


async def ready_keep(enarx: EnarxClient, kuuids: list[str]) -> dict[str, Any]:
    """contracts -> new_keep -> "request-evidence" -> "launch" -> the Ready keep."""
    contract = next(c for c in await enarx.contracts() if c["backend"] == "Nil")
    keep = await enarx.new_keep(contract)
    kuuids.append(kuuid_text(keep["kuuid"]))
    await enarx.converse(keep["kuuid"], "request-evidence")
    if await enarx.converse(keep["kuuid"], "launch") != "Success":
        raise BenchError("the keep did not launch")
    ready = await enarx.keep(keep["kuuid"])
    if ready["state"] != "Ready":
        raise BenchError(f"the keep is {ready['state']} after launch")
    return ready


def keep_pids(data_dir: Path) -> list[int]:
    """Keep processes of this run: `teebus.host enarx.keep` with our (unique, temporary) data directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if keep_processes.HOST.encode() in argv and str(data_dir).encode() in argv:
            found.append(int(entry.name))
    return found


async def shut_down_keeps(enarx: EnarxClient, kuuids: list[str], data_dir: Path) -> None:
    """DELETE every keep we made; then SIGTERM (by pid) any keep process of this run still alive."""
    for kuuid in kuuids:
        try:
            await asyncio.wait_for(enarx.shutdown(kuuid), 30)
        except (EnarxError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            print(f"DELETE /keep/{kuuid} failed: {exc}", file=sys.stderr)
    leftovers = keep_pids(data_dir)
    for pid in leftovers:
        print(f"keep process {pid} outlived DELETE; sending SIGTERM", file=sys.stderr)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while leftovers and keep_pids(data_dir) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    for pid in keep_pids(data_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def pinned_session(keep: dict[str, Any]) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(ssl=pinned_context(keep["certificate_as_pem"]), limit=4)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120))


# --- the run ---------------------------------------------------------------------------------

@dataclass
class Report:
    workloads: list[WorkloadResult]
    proxy: dict[str, Throughput]      # by PROXY_BODIES key
    bare: Throughput
    processes: list[str]
    other_load: float
    args: argparse.Namespace


async def measure_all(args: argparse.Namespace, enarx: EnarxClient, keep: dict[str, Any],
                      server: EmbeddedServer, children: Children, processes: dict[str, int],
                      data_dir: Path) -> Report:
    limits = Limits.from_overrides(LIMITS)
    started, before = time.monotonic(), cpu_snapshot(processes)
    results = []
    with WasmRunner(limits, cache_dir=data_dir / "bench-cache") as cold_runner, \
            WasmRunner(limits, cache_dir=data_dir / "bench-cache") as warm_runner:
        async with pinned_session(keep) as session:
            target = KeepTarget(keep, session, enarx)
            for name, source in WORKLOADS.items():
                print(f"  measuring (a) and (b): {name} ...", flush=True)
                results.append(await measure_workload(name, bytes(wasmtime.wat2wasm(source)), target, cold_runner,
                                                      warm_runner, args.rounds, processes))
    other = cpu_delta(before, cpu_snapshot(processes))["other"] / (time.monotonic() - started)
    proxy, bare = await measure_proxy(args, enarx, keep, server, children, processes, data_dir)
    return Report(results, proxy, bare, list(processes), other, args)


async def measure_proxy(args: argparse.Namespace, enarx: EnarxClient, keep: dict[str, Any],
                        server: EmbeddedServer, children: Children, processes: dict[str, int],
                        data_dir: Path) -> tuple[dict[str, Throughput], Throughput]:
    url = f"{enarx.base_url}/keep/{kuuid_text(keep['kuuid'])}"
    responder = await children.start("c-responder", python_module(
        "bench.servers", "responder", "--nats", server.url, "--data-dir", str(data_dir),
        "--subject", BARE_SUBJECT))
    client = await connect(server.url, "admin", passwords=server.passwords, name="bench-bare")
    try:
        await wait_responder(client, children)
        connector = aiohttp.TCPConnector(limit=args.clients)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
            proxy = {}
            for key, expect in PROXY_BODIES.items():
                await check_proxy_reply(http, url, expect)
                print(f"  measuring (c) {key}: {args.clients} clients x 4 MiB ...", flush=True)
                proxy[key] = await closed_loop(expect.label, proxy_sender(http, url, expect), args.clients,
                                               args.seconds, len(expect.body), processes)
        print("  measuring (c) bare ...", flush=True)
        body = PROXY_BODIES["proxy"].body
        bare = await closed_loop("bare   nats-py request -> responder process", bare_sender(client, body),
                                 args.clients, args.seconds, len(body),
                                 {**processes, "responder": responder.pid})
    finally:
        await client.close()
    children.check_alive()
    return proxy, bare


async def wait_responder(client: Any, children: Children) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        children.check_alive()
        try:
            await client.request(BARE_SUBJECT, b"ping", timeout=0.5)
            return
        except Exception:  # noqa: BLE001 - no responders yet
            await asyncio.sleep(0.1)
    raise BenchError("the bare responder did not answer")


async def bench(args: argparse.Namespace) -> Report:
    with tempfile.TemporaryDirectory(prefix="teebus-bench-enarx-") as tmp:
        data_dir = Path(tmp)
        children = Children(data_dir / "logs")
        kuuids: list[str] = []
        port = free_port()
        async with running_bus(data_dir, installed()) as bus, EnarxClient(f"http://{HOST}:{port}") as enarx:
            server = bus.server
            try:
                keepmgr = await children.start("keepmgr", teebus_run_argv(server, data_dir, port, free_port()))
                print("waiting for the keep manager and a Ready keep ...", flush=True)
                await wait_keepmgr(enarx, children)
                keep = await ready_keep(enarx, kuuids)
                pids = keep_pids(data_dir)
                processes = {"bench": os.getpid(), "keepmgr+http": keepmgr.pid,
                             "keep": pids[0] if pids else 0, "nats-server": server.pid or 0}
                return await measure_all(args, enarx, keep, server, children, processes, data_dir)
            except (BenchError, EnarxError):
                print(f"logs:\n{children.tails()}", file=sys.stderr)
                raise
            finally:
                await shut_down_keeps(enarx, kuuids, data_dir)
                await children.stop_all()


# --- the report ------------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_workload(result: WorkloadResult) -> None:
    print(f"\n{result.name} (stdout {result.stdout!r}){'':<8}{'median ms':>10}{'p90 ms':>10}")
    for key, samples in result.rows.items():
        print(f"  {samples.label:<44}{samples.median:>10.2f}{samples.p90:>10.2f}")
    cells = "  ".join(f"{label} {ms:.1f}" for label, ms in result.cpu_ms.items())
    print(f"  CPU ms per b2 request: {cells}")


def print_proxy(proxy: dict[str, Throughput], bare: Throughput) -> None:
    print(f"\n(c) 4 MiB opaque requests{'':<24}{'MB/s':>8}{'req/s':>8}{'p50 ms':>9}{'p90 ms':>9}{'errors':>8}")
    rows = {**proxy, "bare": bare}
    for t in rows.values():
        print(f"  {t.label:<47}{t.mb_s:>8.1f}{t.rps:>8.1f}{percentile(t.latencies, 0.5):>9.1f}"
              f"{percentile(t.latencies, 0.9):>9.1f}{t.errors:>8}")
    print("  CPU ms per request (other load on the machine, in cores):")
    for key, t in rows.items():
        cells = "  ".join(f"{label} {ms:.1f}" for label, ms in t.cpu_ms.items())
        print(f"    {key:<6} {cells}  | other {t.other_share:.2f}")


def print_ratios(report: Report) -> None:
    print("\nratios (the target is about per-request overhead relative to run time: 'compute' is the "
          "meaningful one;\n        'hello' runs ~0 ms, so its ratio is large by construction and its "
          "b2-a2 is the fixed overhead):")
    for r in report.workloads:
        warm = r.median("b2") / r.median("a2") if r.median("a2") else float("inf")
        cold = r.median("b1") / r.median("a1") if r.median("a1") else float("inf")
        shipped = r.median("b2s") / r.median("a2") if r.median("a2") else float("inf")
        note = "" if r.name == "compute" else "  (informative)"
        print(f"  {r.name:<8} b2/a2 = {warm:6.2f}  target <= {TARGET_WARM:.1f}: {verdict(warm <= TARGET_WARM)}{note}"
              f"   overhead b2-a2 = {r.median('b2') - r.median('a2'):.2f} ms")
        print(f"  {'':<8} b1/a1 = {cold:6.2f}  (cold, informative)        overhead b1-a1 = "
              f"{r.median('b1') - r.median('a1'):.2f} ms")
        print(f"  {'':<8} b2s/a2 = {shipped:5.2f}  (shipped EnarxClient.deploy, informative)")
    bare = report.bare.mb_s
    ratio = report.proxy["proxy"].mb_s / bare if bare else 0.0
    raw = report.proxy["raw"].mb_s / bare if bare else 0.0
    print(f"  proxy    c proxy/bare = {ratio:.2f} (MB/s)  target >= {TARGET_PROXY:.1f}: "
          f"{verdict(ratio >= TARGET_PROXY)}")
    print(f"  {'':<8} c raw/bare   = {raw:.2f} (MB/s)  (informative: the body refused at once, so only the "
          f"transport counts)")


def print_report(report: Report) -> None:
    args = report.args
    print(f"\nteebus Enarx workload path: {args.rounds} samples per (a)/(b) row (+{WARMUP_SAMPLES} warmup), "
          f"(c) {args.clients} clients x {args.seconds:g} s; {os.cpu_count()} CPUs, 127.0.0.1; "
          f"other load on the machine during (a)/(b): {report.other_load:.0%} of a core")
    for result in report.workloads:
        print_workload(result)
    print_proxy(report.proxy, report.bare)
    print_ratios(report)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30, help="samples per (a)/(b) row (default 30)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window of each (c) target (default 5)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients in (c) (default 4)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.clients < 1:
        parser.error("--rounds, --seconds and --clients must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log.configure("warning")
    code, report = run_until_done("enarx_workload", lambda: bench(args), (BenchError, EnarxError, ServerError))
    if report is not None:
        print_report(report)
    return code


if __name__ == "__main__":
    sys.exit(main())
