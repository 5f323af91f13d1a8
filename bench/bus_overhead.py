"""What does the bus cost? Four HTTP targets measured in one run by the same load generator.

    (a) bare      an aiohttp handler: POST / -> a small JSON body (the HTTP floor);
    (b) pipeline  an aiohttp handler that does one nats-py `nc.request()` to a plain nats-py
                  responder in another process and returns its reply: the least this architecture
                  (HTTP adapter -> NATS -> component process) can cost;
    (h) headers   (b) with the header every teebus request carries (its request id; JSON, the
                  default, needs no Content-Type, and a JSON reply carries no headers): what the
                  bus conventions alone cost in nats-py;
    (c) teebus    MesaTEE KMS `Get` through the real HTTP adapter (`teebus run http.mesatee`) and the
                  real component (`teebus run mesatee.kms`), each in its own process, with the
                  internal bearer token, against a key created first.

Every server is its own process (uvloop), all on 127.0.0.1, sharing one embedded nats-server
(bus.server.EmbeddedServer) on a temporary data directory. The load generator (bench/loadgen.py,
one process for all targets) runs N workers over a keep-alive pool: a warmup, then a measured
window; it reports req/s and client-side p50/p99 latency. Request and reply bodies of (a) and (b)
have the size of a KMS `Get` request and reply, so only the machinery differs.

How to read the ratios (1.00 means as fast as the baseline):
    b/a  what one NATS round trip through a second process costs over bare HTTP;
    h/b  what the request id header of the bus conventions costs nats-py;
    c/b  what teebus adds on top of that bare pipeline (codecs, headers, request ids, logging
         context, micro service, validation twice, auth, the mirror read) -- target >= 0.8;
         (c) asks for one key over and over, so the KMS unseals it once and then answers from
         its opened configs; a key not opened yet costs the component ~4 µs more;
    c/h  the same without the headers' share: teebus's own code;
    c/a  teebus end to end against bare HTTP.
Each ratio is given twice: by req/s (the target's figure), and by server CPU per request (the CPU
microseconds all serving processes, nats-server included, spend on one request; the baseline's
over the target's). The second is what req/s would show if the serving side were the only thing
on the machine: it barely moves when other work shares the cores, which req/s does not survive.
The CPU table names the process each microsecond goes to, and its share of one core: a Python
process near 100% is the bottleneck. On a small machine the load generator competes with the
servers for cores, so (a) may be bounded by the client; "other load" shows CPU used by processes
that are not part of the benchmark (rerun, or use --rounds, when it is high).

    python bench/bus_overhead.py [--workers 64] [--seconds 5] [--warmup 1] [--rounds 1] [--only abhc]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/bus_overhead.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import orjson

from adapters.http.runner import INTERNAL_TOKEN_FILE
from bench.processes import (REPO_ROOT, BenchError, Children, child_environment, cpu_seconds,
                             machine_busy_seconds, python_module, run_until_done, stop)
from bus import log
from bus.credentials import ensure_secret_file
from bus.server import EmbeddedServer, ServerError, free_port
from bus.testing import running_bus
from teebus.systems import installed

TARGET_C_OVER_B = 0.85
READY_TIMEOUT = 30.0
HOST = "127.0.0.1"
JSON_HEADERS = {"Content-Type": "application/json"}
GET_BODY = orjson.dumps({"type": "Get", "key_id": str(uuid.UUID(int=0))})  # the size of (c)'s request


@dataclass
class Target:
    """One thing to measure: the request to send and the processes that serve it (label -> pid)."""

    name: str
    label: str
    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON_HEADERS))
    processes: dict[str, int] = field(default_factory=dict)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "body": self.body.decode(), "headers": self.headers}


@dataclass
class Result:
    target: Target
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_us_per_request: dict[str, float]
    core_share: dict[str, float]
    other_share: float  # busy CPU of processes not ours (other work on the machine), in cores


# --- starting the servers ---------------------------------------------------------------------

def teebus_command(*args: str) -> list[str]:
    """`teebus ...`: the installed script next to this interpreter, else the module."""
    script = Path(sys.executable).parent / "teebus"
    return [str(script), *args] if script.is_file() else python_module("teebus.cli", *args)


async def start_bare(children: Children) -> Target:
    port = free_port()
    child = await children.start("a-bare", python_module("bench.servers", "bare", "--port", str(port)))
    return Target("a", "bare aiohttp", f"http://{HOST}:{port}/", GET_BODY,
                  processes={"a-bare": child.pid})


def nats_server_pid(server: EmbeddedServer) -> dict[str, int]:
    """The server's process for the CPU table."""
    return {"nats-server": server.pid} if server.pid is not None else {}


async def start_pipeline(children: Children, server: EmbeddedServer, data_dir: Path,
                         with_headers: bool = False) -> Target:
    """(b), or (h) when the requests carry the request id header teebus puts on every request."""
    name = "h" if with_headers else "b"
    port = free_port()
    bus_args = ["--nats", server.url, "--data-dir", str(data_dir), "--subject", f"bench.{name}"]
    responder = await children.start(f"{name}-responder",
                                     python_module("bench.servers", "responder", *bus_args))
    proxy_args = [*bus_args, "--headers"] if with_headers else bus_args
    proxy = await children.start(f"{name}-proxy", python_module("bench.servers", "proxy", "--port", str(port),
                                                                 *proxy_args))
    label = "the same with teebus's request id header" if with_headers else "aiohttp -> nc.request -> responder"
    return Target(name, label, f"http://{HOST}:{port}/", GET_BODY,
                  processes={f"{name}-proxy": proxy.pid, f"{name}-responder": responder.pid,
                             **nats_server_pid(server)})


async def start_teebus(children: Children, server: EmbeddedServer, data_dir: Path) -> Target:
    """The KMS component and the MesaTEE HTTP adapter as two `teebus run` processes."""
    port = free_port()
    token = ensure_secret_file(data_dir / INTERNAL_TOKEN_FILE)  # as `teebus up` does before starting
    common = ["--nats", server.url, "--data-dir", str(data_dir)]
    kms = await children.start("c-kms", teebus_command("run", "mesatee.kms", *common))
    http = await children.start("c-http", teebus_command("run", "http.mesatee", *common,
                                                         "--port", f"mesatee-kms={port}"))
    return Target("c", "teebus KMS Get (adapter + component)", f"http://{HOST}:{port}/", b"",
                  headers={**JSON_HEADERS, "Authorization": f"Bearer {token}"},
                  processes={"c-http": http.pid, "c-kms": kms.pid, **nats_server_pid(server)})


async def post_until_ok(session: aiohttp.ClientSession, children: Children, target: Target,
                        body: bytes) -> bytes:
    """POST until the target answers 200 (so the whole path is up); BenchError after READY_TIMEOUT."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        children.check_alive()
        try:
            async with session.post(target.url, data=body, headers=target.headers) as response:
                data = await response.read()
                if response.status == 200:
                    return data
                last = f"HTTP {response.status}: {data[:200]!r}"
        except aiohttp.ClientError as exc:
            last = str(exc) or type(exc).__name__
        await asyncio.sleep(0.1)
    raise BenchError(f"{target.name} ({target.url}) not ready within {READY_TIMEOUT:.0f}s: {last}")


async def make_ready(children: Children, targets: list[Target]) -> None:
    """Wait for every target; for (c) create the key its `Get` fetches, and check one `Get`."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for target in targets:
            if target.name != "c":
                await post_until_ok(session, children, target, target.body)
                continue
            created = orjson.loads(await post_until_ok(session, children, target, b'{"type":"Create"}'))
            target.body = orjson.dumps({"type": "Get", "key_id": created["key_id"]})
            reply = orjson.loads(await post_until_ok(session, children, target, target.body))
            if reply.get("type") != "Get" or "config" not in reply:
                raise BenchError(f"KMS Get answered {reply!r}")


# --- load and CPU accounting ------------------------------------------------------------------

MACHINE = "(machine)"
LOADGEN = "loadgen"


def cpu_snapshot(processes: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each watched process, and of the whole machine under MACHINE."""
    return {MACHINE: machine_busy_seconds(), **{label: cpu_seconds(pid) for label, pid in processes.items()}}


def to_result(target: Target, line: dict[str, Any], before: dict[str, float], after: dict[str, float],
              wall: float) -> Result:
    sent = max(line["sent"], 1)
    used = {label: after[label] - before[label] for label in before}
    machine = used.pop(MACHINE)
    return Result(target, line["rps"], line["p50_ms"], line["p99_ms"], line["requests"], line["errors"],
                  {label: cpu / sent * 1e6 for label, cpu in used.items()},
                  {label: cpu / wall for label, cpu in used.items()},
                  max(0.0, machine - sum(used.values())) / wall)


async def read_event(process: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    line = await asyncio.wait_for(process.stdout.readline(), timeout)
    if not line:
        raise BenchError(f"the load generator exited early (status {await process.wait()})")
    return orjson.loads(line)


async def run_load(targets: list[Target], args: argparse.Namespace) -> list[Result]:
    """One load-generator process measures the targets in turn, `rounds` times; CPU sampled around each."""
    schedule = targets * args.rounds  # interleaved: a b c a b c ...
    spec = {"workers": args.workers, "warmup": args.warmup, "seconds": args.seconds,
            "max_requests": args.max_requests, "targets": [t.spec() for t in schedule]}
    process = await asyncio.create_subprocess_exec(
        *python_module("bench.loadgen"), cwd=REPO_ROOT, env=child_environment(),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, start_new_session=True)
    per_target_timeout = args.warmup + args.seconds + 30
    results = []
    try:
        process.stdin.write(orjson.dumps(spec))
        process.stdin.close()
        for target in schedule:
            watched = {LOADGEN: process.pid, **target.processes}
            await read_event(process, 30)  # {"event": "start"}
            print(f"  measuring {target.name}: {target.label} ...", flush=True)
            before, started = cpu_snapshot(watched), time.monotonic()
            line = await read_event(process, per_target_timeout)
            results.append(to_result(target, line, before, cpu_snapshot(watched), time.monotonic() - started))
        await process.wait()
    finally:
        await stop(process)
    return results


def best_rounds(results: list[Result]) -> list[Result]:
    """Per target, the round with the most req/s: other load on the machine only ever slows a round."""
    best: dict[str, Result] = {}
    for result in results:
        name = result.target.name
        if name not in best or result.rps > best[name].rps:
            best[name] = result
    return list(best.values())


# --- the report -------------------------------------------------------------------------------

def server_cpu_us(result: Result) -> float:
    """CPU per request of the serving side: every watched process but the load generator."""
    return sum(us for label, us in result.cpu_us_per_request.items() if label != LOADGEN)


def print_table(results: list[Result]) -> None:
    print(f"  {'target':<42}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'server CPU µs/req':>19}")
    for r in results:
        print(f"  {r.target.name}  {r.target.label:<39}{r.rps:>9,.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}"
              f"{r.errors:>8}{server_cpu_us(r):>19,.0f}")


def print_cpu(results: list[Result]) -> None:
    print("\nwhere the CPU goes, µs per request (share of one core during the run):")
    for r in results:
        cells = "  ".join(f"{label} {r.cpu_us_per_request[label]:.0f} ({r.core_share[label]:.0%})"
                          for label in r.cpu_us_per_request)
        print(f"  {r.target.name}  {cells}  | other load on the machine: {r.other_share:.0%}")


RATIO_MEANINGS = {("b", "a"): "one NATS round trip through a second process, over bare HTTP",
                  ("h", "b"): "nats-py with a request id header, over without",
                  ("c", "b"): "teebus adapter + component, over the bare pipeline",
                  ("c", "h"): "teebus adapter + component, over the bare pipeline with headers",
                  ("c", "a"): "teebus end to end, over bare HTTP"}


def ratio_rows(by_name: dict[str, Result]) -> list[tuple[str, float, float, str]]:
    """(name, by req/s, by server CPU per request, meaning) for each pair that was measured."""
    rows = []
    for (top, bottom), meaning in RATIO_MEANINGS.items():
        if top in by_name and bottom in by_name:
            x, y = by_name[top], by_name[bottom]
            by_rps = x.rps / y.rps if y.rps else 0.0
            by_cpu = server_cpu_us(y) / server_cpu_us(x) if server_cpu_us(x) else 0.0
            rows.append((f"{top}/{bottom}", by_rps, by_cpu, meaning))
    return rows


def print_ratios(by_name: dict[str, Result]) -> None:
    rows = ratio_rows(by_name)
    if not rows:
        return
    print(f"\nratios (1.00 = as fast as the baseline):\n  {'':<5}{'req/s':>7}{'server CPU/req':>16}")
    for name, by_rps, by_cpu, meaning in rows:
        print(f"  {name}  {by_rps:>7.2f}{by_cpu:>16.2f}   {meaning}")
    if "b" in by_name and "c" in by_name:
        c_over_b = by_name["c"].rps / by_name["b"].rps if by_name["b"].rps else 0.0
        verdict = "met" if c_over_b >= TARGET_C_OVER_B else "NOT met"
        print(f"target c/b >= {TARGET_C_OVER_B:.2f} (req/s): {verdict} (c/b = {c_over_b:.2f})")


def print_report(results: list[Result], args: argparse.Namespace) -> None:
    results = best_rounds(results)
    rounds = f", best of {args.rounds} rounds" if args.rounds > 1 else ""
    print(f"\nteebus bus overhead: {args.workers} workers, {args.warmup:g} s warmup + {args.seconds:g} s "
          f"measured per target{rounds}, {os.cpu_count()} CPUs, 127.0.0.1")
    print_table(results)
    print_cpu(results)
    print_ratios({r.target.name: r for r in results})


# --- the run ----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=64, help="concurrent client workers (default 64)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window per target (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured warmup per target (default 1)")
    parser.add_argument("--max-requests", type=int, default=1_000_000,
                        help="end a target's window early after this many requests (default 1000000)")
    parser.add_argument("--only", default="abhc", help="targets to measure, e.g. `bc` (default abhc)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure the targets this many times, interleaved; report each one's best round")
    args = parser.parse_args(argv)
    if min(args.workers, args.max_requests, args.rounds) < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--workers, --seconds, --max-requests and --rounds must be positive, "
                     "--warmup not negative")
    if not args.only or set(args.only) - set("abhc"):
        parser.error("--only takes letters from abhc")
    return args


async def start_targets(children: Children, server: EmbeddedServer, data_dir: Path, only: str) -> list[Target]:
    targets = []
    if "a" in only:
        targets.append(await start_bare(children))
    if "b" in only:
        targets.append(await start_pipeline(children, server, data_dir))
    if "h" in only:
        targets.append(await start_pipeline(children, server, data_dir, with_headers=True))
    if "c" in only:
        targets.append(await start_teebus(children, server, data_dir))
    return targets


async def bench(args: argparse.Namespace) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="teebus-bench-") as tmp:
        data_dir = Path(tmp)
        children = Children(data_dir / "logs")
        async with running_bus(data_dir, installed()) as bus:   # the roles of every system, as teebus up
            try:
                targets = await start_targets(children, bus.server, data_dir, args.only)
                print(f"waiting for {len(children.started)} server processes ...", flush=True)
                await make_ready(children, targets)
                results = await run_load(targets, args)
                children.check_alive()
                return results
            except BenchError:
                print(f"server logs:\n{children.tails()}", file=sys.stderr)
                raise
            finally:
                await children.stop_all()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log.configure("warning")
    code, results = run_until_done("bus_overhead", lambda: bench(args), (BenchError, ServerError))
    if results is not None:
        print_report(results, args)
    return code


if __name__ == "__main__":
    sys.exit(main())
