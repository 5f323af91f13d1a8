"""What does Aurae's RunExecutable cost a process, against spawning it directly? `true`, both ways, in one run.

    direct   in this process: `asyncio.create_subprocess_exec("true")` and `wait()` -- the baseline;
    aurae    the shipped client (components/aurae/client.py, AuraeClient: grpc.aio, mTLS with the
             client pair the adapter created) calls runtime.Core/RunExecutable {"command": "true"} on
             the Aurae socket -> the `unix.aurae` adapter -> NATS -> the runtime component, which
             splits the command, spawns it (own session, stdout and stderr piped), records it in
             AURAE_OUTPUT (a start record, sent as the process starts and acknowledged before the
             answer; two end markers and an end record, acknowledged after it; nats.conf says
             `sync_interval: always`, so each is an fsync in nats-server), publishes
             `events.aurae.process.ended` and answers ExecutableStatus, which the client checks
             (STATUS_COMPLETE, exit code 0).
    bus      (informative) the same request straight on the bus, as the adapter sends it: a NATS
             request of the `adapter` role to `aurae.runtime.run_executable.<host>`, no gRPC.

The node runs the way `teebus up` runs it, in a process of its own (`teebus run aurae.runtime
aurae.observe unix.aurae`) against a real nats-server (bus.server.EmbeddedServer) on a data
directory of its own; this process is only the client.

Two shapes of load, each `--calls` calls per side:
    sequential   one call at a time; the sides alternate in blocks of BLOCK calls, so drift in
                 load from elsewhere on the machine hits them alike;
    concurrent   `--concurrency` calls at once (a wave: all started together, the next wave when
                 all returned); the sides alternate wave by wave.
Latency is each call's own, from its start to its answer; calls/s is calls over the time its
waves (or blocks) took. Before the runs, probes time, one call at a time with the node idle: a gRPC
Status (the whole path without a process or JetStream) and one JetStream publish with its ack on
this bus (what the runtime waits for once per call, while the process runs).

The CPU table says where the time goes: CPU µs per call of this process (the client, or the
spawner for direct), the node (adapter, runtime and observe on one event loop), nats-server, and the
`true` processes themselves (their parents' reaped-children time), with each one's share of a core
over the phase. "other" is CPU busy with work not ours; when it is high, rerun.

The spawn probes time the runtime's own spawn (`process.run(["true"])`, components/aurae/process.py)
alone, in a fresh process holding the node's modules, once on asyncio's default loop and once on
uvloop, which `teebus run` uses (bus/loop.py): asyncio's loop spawns with CPython's vfork, uvloop
with libuv's fork(), and the difference is what the node's event loop adds to every run.

Failures: a call that does not answer STATUS_COMPLETE with exit code 0 is counted (column
"failed", and the first one is shown), not timed. As deployed, the node's spawns sometimes die
before they exec (SIGABRT "ev_epoll1_linux.cc Check failed: next_worker->state == KICKED", or
SIGSEGV): uvloop forks with gRPC's fork handlers installed (the gRPC server runs in the same
process), and gRPC's child handler breaks in the child. `--no-grpc-fork-support` runs the node with
GRPC_ENABLE_FORK_SUPPORT=false, which avoids it.

Placements (the fsync's part): the data directory on disk as `teebus up` makes it, and, unless
--no-tmpfs or /dev/shm is no writable tmpfs, again with the whole data directory on /dev/shm, where
an fsync costs nothing (informative).

Target: aurae p50 over direct p50 <= 2.0 (sequential, disk).

    python bench/aurae_run.py [--calls 300] [--concurrency 50] [--no-tmpfs] [--no-grpc-fork-support] [--json]

With --json the report is one JSON document on stdout (progress goes to stderr either way).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

if __package__ in (None, ""):  # run as `python bench/aurae_run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from bench.bus_overhead import teebus_command
from bench.figures import filesystem, percentile, progress
from bench.processes import BenchError, Children, child_environment, machine_busy_seconds, run_and_report
from bus import log, roles
from bus.connection import connect
from bus.errors import BusError
from bus.events import Events
from bus.requester import Requester
from bus.server import EmbeddedServer, ServerError
from bus.testing import running_bus
from components.aurae import subjects
from components.aurae.client import AuraeClient, AuraeError
from components.aurae.config import AuraeConfig
from teebus.systems import installed

TARGET_RATIO = 2.0          # aurae p50 over direct p50, sequential, disk: at most
COMMAND = "true"
BLOCK = 25                  # sequential calls per alternating block
WARMUP_CALLS = 20           # per side, unmeasured
READY_TIMEOUT = 30.0
CALL_TIMEOUT = 60.0
PROBE_COUNT = 200           # probe calls, at most ...
PROBE_SECONDS = 1.0         # ... or this long
JS_AWAITED_PER_CALL = 1     # the runtime's JetStream acks awaited before its answer (output_writer.py)
SHM = Path("/dev/shm")
GRPC_FORK_SUPPORT = "GRPC_ENABLE_FORK_SUPPORT"
SIDES = ("direct", "bus", "aurae")
SHAPES = ("sequential", "concurrent")
MACHINE = "(machine)"
CHILDREN = "true (children)"
_TICKS = os.sysconf("SC_CLK_TCK")


# --- results ---------------------------------------------------------------------------------

@dataclass
class Phase:
    """One side under one shape of load: each call's latency, the time the calls took, CPU used."""

    side: str
    shape: str
    latencies_ms: list[float] = field(default_factory=list)    # of the calls that succeeded
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)      # seconds, by process label (+ MACHINE)
    errors: int = 0
    first_error: str = ""

    @property
    def calls(self) -> int:
        return len(self.latencies_ms) + self.errors

    def record(self, outcome: tuple[float, str | None]) -> None:
        latency, error = outcome
        if error is None:
            self.latencies_ms.append(latency)
        else:
            self.errors += 1
            self.first_error = self.first_error or error

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        return percentile(self.latencies_ms, fraction)

    def cpu_us(self, label: str) -> float:
        return self.cpu.get(label, 0.0) / self.calls * 1e6 if self.calls else 0.0

    def core_share(self, label: str) -> float:
        return self.cpu.get(label, 0.0) / self.seconds if self.seconds else 0.0

    def other_share(self) -> float:
        ours = sum(value for label, value in self.cpu.items() if label != MACHINE)
        return max(0.0, self.cpu.get(MACHINE, 0.0) - ours) / self.seconds if self.seconds else 0.0


@dataclass
class Probes:
    status_ms: float            # median gRPC Status round trip (adapter -> bus -> observe)
    js_ack_ms: float            # median JetStream publish + ack on this run's bus


@dataclass
class Run:
    placement: str
    data_fs: str
    probes: Probes
    phases: dict[str, Phase]    # f"{shape}/{side}"

    def phase(self, shape: str, side: str) -> Phase:
        return self.phases[f"{shape}/{side}"]

    def ratio(self, shape: str, fraction: float, side: str = "aurae") -> float:
        base = self.phase(shape, "direct").percentile(fraction)
        return self.phase(shape, side).percentile(fraction) / base if base else 0.0


@dataclass
class Report:
    args: argparse.Namespace
    runs: list[Run] = field(default_factory=list)
    spawns: list[Any] = field(default_factory=list)       # SpawnProbe, asyncio's loop then uvloop
    notes: list[str] = field(default_factory=list)








def tmpfs_available() -> bool:
    return SHM.is_dir() and os.access(SHM, os.W_OK) and filesystem(SHM) == "tmpfs"


# --- CPU ------------------------------------------------------------------------------------------

def process_times(pid: int) -> tuple[float, float]:
    """(own, reaped children's) CPU seconds of `pid` (Linux /proc); zeros once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS, (int(fields[13]) + int(fields[14])) / _TICKS


def cpu_snapshot(processes: dict[str, int], parents: tuple[str, ...]) -> dict[str, float]:
    """Each process's CPU seconds so far; CHILDREN: the reaped children of `parents`; the machine's."""
    snapshot = {MACHINE: machine_busy_seconds(), CHILDREN: 0.0}
    for label, pid in processes.items():
        own, children = process_times(pid)
        snapshot[label] = own
        if label in parents:
            snapshot[CHILDREN] += children
    return snapshot


def add_cpu(phase: Phase, before: dict[str, float], after: dict[str, float]) -> None:
    for label in before:
        phase.cpu[label] = phase.cpu.get(label, 0.0) + after[label] - before[label]


# --- the calls ---------------------------------------------------------------------------------

Call = Callable[[], Awaitable[None]]


async def direct_call() -> None:
    process = await asyncio.create_subprocess_exec(COMMAND)
    if await process.wait() != 0:
        raise BenchError(f"`{COMMAND}` exited with {process.returncode}")


def aurae_call(client: AuraeClient) -> Call:
    async def call() -> None:
        status = await client.run(COMMAND, timeout=CALL_TIMEOUT)
        if not status.ok or status.stdout or status.stderr:
            raise BenchError(f"RunExecutable of `{COMMAND}` answered {status!r}")
    return call


def bus_call(requester: Requester, host: str) -> Call:
    subject = subjects.run_executable(host)
    payload = {"meta": {"name": "", "message": ""}, "command": COMMAND, "comment": ""}   # the adapter's to_payload

    async def call() -> None:
        answer = (await requester.request(subject, payload, timeout=CALL_TIMEOUT)).payload
        if (answer.get("status"), answer.get("exit_code")) != ("STATUS_COMPLETE", "0"):
            raise BenchError(f"the runtime answered {answer!r}")
    return call


async def timed(call: Call) -> float:
    started = time.perf_counter()
    await call()
    return (time.perf_counter() - started) * 1000


async def attempt(call: Call) -> tuple[float, str | None]:
    """(ms, None) for a call that did what it should; (ms, what went wrong) for one that did not."""
    started = time.perf_counter()
    try:
        await call()
        error = None
    except (BenchError, AuraeError, BusError) as exc:
        error = str(exc)
    return (time.perf_counter() - started) * 1000, error


async def sequential(calls: dict[str, Call], count: int, processes: dict[str, int],
                     parents: dict[str, tuple[str, ...]]) -> dict[str, Phase]:
    """`count` calls per side, one at a time, the sides alternating in blocks of BLOCK."""
    phases = {side: Phase(side, "sequential") for side in calls}
    done = 0
    while done < count:
        block = min(BLOCK, count - done)
        for side, call in calls.items():
            phase = phases[side]
            before, started = cpu_snapshot(processes, parents[side]), time.perf_counter()
            for _ in range(block):
                phase.record(await attempt(call))
            phase.seconds += time.perf_counter() - started
            add_cpu(phase, before, cpu_snapshot(processes, parents[side]))
        done += block
    return phases


async def concurrent(calls: dict[str, Call], count: int, width: int, processes: dict[str, int],
                     parents: dict[str, tuple[str, ...]]) -> dict[str, Phase]:
    """`count` calls per side in waves of `width` started together, the sides alternating wave by wave."""
    phases = {side: Phase(side, "concurrent") for side in calls}
    done = 0
    while done < count:
        wave = min(width, count - done)
        for side, call in calls.items():
            phase = phases[side]
            before, started = cpu_snapshot(processes, parents[side]), time.perf_counter()
            for outcome in await asyncio.gather(*(attempt(call) for _ in range(wave))):
                phase.record(outcome)
            phase.seconds += time.perf_counter() - started
            add_cpu(phase, before, cpu_snapshot(processes, parents[side]))
        done += wave
    return phases


# --- probes -------------------------------------------------------------------------------------

async def repeatedly(work: Call) -> float:
    """Median ms of `work()` over PROBE_COUNT calls or PROBE_SECONDS, whichever ends first."""
    samples: list[float] = []
    deadline = time.perf_counter() + PROBE_SECONDS
    while len(samples) < PROBE_COUNT and time.perf_counter() < deadline:
        samples.append(await timed(work))
    return statistics.median(samples)


async def probe(client: AuraeClient, server: EmbeddedServer) -> Probes:
    async def status() -> None:
        await client.status(timeout=CALL_TIMEOUT)

    admin = await connect(server.url, roles.ADMIN, passwords=server.passwords, name="bench-js-probe")
    try:
        events = Events(admin, "bench")

        async def publish() -> None:      # a file-stored, fsynced JetStream write, as the runtime's
            await events.publish("probe", "ack", {"pid": 4242, "host": "bench", "status": "STATUS_COMPLETE"})

        return Probes(await repeatedly(status), await repeatedly(publish))
    finally:
        await admin.close()


# --- the runtime's spawn, alone, on each event loop ----------------------------------------------

@dataclass
class SpawnProbe:
    """`process.run(["true"])`, the runtime's own spawn, timed in a fresh process on `loop`."""

    loop: str
    p50_ms: float
    p99_ms: float
    self_us: float              # CPU of the spawning process per spawn
    children_us: float          # CPU of the `true` processes per spawn


async def spawn_probe_here(loop: str) -> dict[str, Any]:
    """In this process: import what the node imports, spawn with the runtime's function and limits."""
    import importlib
    import resource

    importlib.import_module("adapters.unix.aurae")     # the node's modules: a process of its size
    from components.aurae import process
    limits = process.Limits(timeout_seconds=AuraeConfig().timeout_seconds, grace_seconds=AuraeConfig().grace_seconds,
                            max_output_bytes=AuraeConfig().max_output_bytes)

    def cpu(who: int) -> float:
        usage = resource.getrusage(who)
        return usage.ru_utime + usage.ru_stime

    async def spawn() -> None:
        outcome = await process.run([COMMAND], limits)
        if outcome.exit_code != 0:
            raise BenchError(f"process.run([{COMMAND!r}]) on {loop} ended: {outcome.message}")

    for _ in range(WARMUP_CALLS):
        await spawn()
    own, children, samples = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN), []
    for _ in range(PROBE_COUNT):
        samples.append(await timed(spawn))
    count = len(samples)
    return asdict(SpawnProbe(loop, percentile(samples, 0.5), percentile(samples, 0.99),
                             (cpu(resource.RUSAGE_SELF) - own) / count * 1e6,
                             (cpu(resource.RUSAGE_CHILDREN) - children) / count * 1e6))


def spawn_probe_main(loop: str) -> int:
    """`--spawn-probe LOOP`: print the probe's JSON (the node runs on uvloop: bus/loop.py)."""
    if loop == "uvloop":
        import uvloop
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(spawn_probe_here(loop))
    else:
        result = asyncio.run(spawn_probe_here(loop))
    print(orjson.dumps(result).decode())
    return 0


async def spawn_probes(children_env: dict[str, str]) -> list[SpawnProbe]:
    """The runtime's spawn on asyncio's default loop and on uvloop, each in a process of its own."""
    found = []
    for loop in ("asyncio", "uvloop"):
        child = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "--spawn-probe", loop, env=children_env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await child.communicate()
        if child.returncode != 0:
            raise BenchError(f"the {loop} spawn probe failed: {err.decode(errors='replace')[-2000:]}")
        found.append(SpawnProbe(**orjson.loads(out.splitlines()[-1])))
    return found


# --- one run --------------------------------------------------------------------------------------

def node_argv(server: EmbeddedServer, data_dir: Path, grpc_fork_support: bool) -> list[str]:
    """`teebus run` of Aurae's runtime, observe and gRPC socket, as `teebus up` runs them (without gRPC's
    fork handlers when told: `env` execs teebus, so the node keeps the pid we started)."""
    argv = teebus_command("run", "aurae.runtime", "aurae.observe", "unix.aurae", "--nats", server.url,
                          "--data-dir", str(data_dir))
    return argv if grpc_fork_support else ["env", f"{GRPC_FORK_SUPPORT}=false", *argv]


async def wait_ready(socket: Path, pki_dir: Path, children: Children) -> AuraeClient:
    """The socket and the client pair exist and Status answers: a connected client."""
    deadline, last = time.monotonic() + READY_TIMEOUT, "the socket does not exist yet"
    while time.monotonic() < deadline:
        children.check_alive()
        if socket.exists() and (pki_dir / "client.key").exists():
            client = AuraeClient(socket, pki_dir)
            await client.__aenter__()
            try:
                await client.status(timeout=2.0)
                return client
            except AuraeError as exc:
                last = str(exc)
                await client.close()
        await asyncio.sleep(0.1)
    raise BenchError(f"the Aurae socket {socket} did not answer Status within {READY_TIMEOUT:.0f}s: {last}")


async def measure(args: argparse.Namespace, placement: str, root: Path | None) -> Run:
    with tempfile.TemporaryDirectory(prefix="teebus-bench-aurae-", dir=root) as tmp:
        data_dir = Path(tmp)
        children = Children(data_dir / "logs")
        async with running_bus(data_dir, installed()) as bus:
            try:
                return await run_node(args, placement, bus.server, data_dir, children)
            except BenchError:
                print(f"node log:\n{children.tails()}", file=sys.stderr)
                raise
            finally:
                await children.stop_all()


async def run_node(args: argparse.Namespace, placement: str, server: EmbeddedServer, data_dir: Path,
                   children: Children) -> Run:
    node = await children.start("node", node_argv(server, data_dir, not args.no_grpc_fork_support))
    client = await wait_ready(data_dir / "aurae" / "aurae.sock", data_dir / "aurae" / "pki", children)
    adapter = await connect(server.url, roles.ADAPTER, passwords=server.passwords, name="bench-bus")
    try:
        probes = await probe(client, server)
        calls = {"direct": direct_call, "bus": bus_call(Requester(adapter), AuraeConfig().host),
                 "aurae": aurae_call(client)}
        for side, call in calls.items():                  # the whole path works; caches, connections warm
            outcomes = [await attempt(call) for _ in range(WARMUP_CALLS)]
            if all(error for _, error in outcomes):
                raise BenchError(f"every {side} call failed: {outcomes[0][1]}")
        processes = {"bench": os.getpid(), "node": node.pid, "nats-server": server.pid or 0}
        parents = {"direct": ("bench",), "bus": ("node",), "aurae": ("node",)}
        progress(f"  {placement}: {args.calls} sequential calls per side ...")
        phases = await sequential(calls, args.calls, processes, parents)
        children.check_alive()
        progress(f"  {placement}: {args.calls} calls per side, {args.concurrency} at once ...")
        waves = await concurrent(calls, args.calls, args.concurrency, processes, parents)
        children.check_alive()
    finally:
        await adapter.close()
        await client.close()
    everything = {f"sequential/{side}": phase for side, phase in phases.items()}
    everything.update({f"concurrent/{side}": phase for side, phase in waves.items()})
    return Run(placement, filesystem(data_dir), probes, everything)


async def bench(args: argparse.Namespace) -> Report:
    report = Report(args)
    placements: list[tuple[str, Path | None]] = [("disk", None)]
    if not args.no_tmpfs:
        if tmpfs_available():
            placements.append(("tmpfs", SHM))
        else:
            report.notes.append(f"{SHM} is not a writable tmpfs here: only the disk run was made")
    for placement, root in placements:
        progress(f"run {placement}: a fresh bus and node ...")
        report.runs.append(await measure(args, placement, root))
    if report.runs[0].data_fs == "tmpfs":
        report.notes.append("the temporary directory is itself on tmpfs: the disk run had no disk")
    progress("the runtime's spawn alone, on asyncio's loop and on uvloop ...")
    env = child_environment()
    if args.no_grpc_fork_support:
        env[GRPC_FORK_SUPPORT] = "false"
    report.spawns = await spawn_probes(env)
    return report


# --- the report ------------------------------------------------------------------------------

LABELS = {"direct": "direct  create_subprocess_exec", "bus": "bus     NATS -> runtime",
          "aurae": "aurae   gRPC -> bus -> runtime"}
CPU_LABELS = ("bench", "node", "nats-server", CHILDREN)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def print_run(run: Run, args: argparse.Namespace) -> None:
    print(f"\n[{run.placement}] data dir on {run.data_fs}; probes, one call at a time: gRPC Status "
          f"{run.probes.status_ms:.2f} ms, JetStream publish+ack {run.probes.js_ack_ms:.2f} ms "
          f"(x{JS_AWAITED_PER_CALL} awaited per RunExecutable = {JS_AWAITED_PER_CALL * run.probes.js_ack_ms:.2f} ms)")
    print(f"  {'':<12}{'':<32}{'p50 ms':>9}{'p99 ms':>9}{'calls/s':>9}{'failed':>8}{'p50 x':>8}{'p99 x':>8}")
    for shape in SHAPES:
        title = "sequential" if shape == "sequential" else f"{args.concurrency} at once"
        for side in SIDES:
            phase = run.phase(shape, side)
            ratios = ("" if side == "direct" else
                      f"{run.ratio(shape, 0.5, side):>8.2f}{run.ratio(shape, 0.99, side):>8.2f}")
            print(f"  {title:<12}{LABELS[side]:<32}{phase.percentile(0.5):>9.2f}{phase.percentile(0.99):>9.2f}"
                  f"{phase.rate:>9,.0f}{phase.errors:>8}{ratios}")
            title = ""
    for phase in run.phases.values():
        if phase.errors:
            print(f"  {phase.shape} {phase.side}: {phase.errors} of {phase.calls} calls failed; the first: "
                  f"{phase.first_error}")
    print("  CPU µs per call (share of one core over the phase):")
    for shape in SHAPES:
        for side in SIDES:
            phase = run.phase(shape, side)
            cells = "  ".join(f"{label} {phase.cpu_us(label):>6,.0f} ({phase.core_share(label):>4.0%})"
                              for label in CPU_LABELS)
            print(f"    {shape:<11}{side:<7}{cells}  | other {phase.other_share():.0%}")


def print_report(report: Report) -> None:
    args = report.args
    print(f"\nteebus Aurae RunExecutable of `{COMMAND}`: {args.calls} calls per side sequentially, then "
          f"{args.calls} per side {args.concurrency} at once; {os.cpu_count()} CPUs; node "
          + (f"with {GRPC_FORK_SUPPORT}=false" if args.no_grpc_fork_support else "as deployed"))
    for note in report.notes:
        print(f"note: {note}")
    for run in report.runs:
        print_run(run, args)
    if report.spawns:
        print("\nthe runtime's spawn alone (`process.run([\"true\"])` in a process with the node's modules):")
        for spawn in report.spawns:
            print(f"  on {spawn.loop:<8} p50 {spawn.p50_ms:6.2f} ms  p99 {spawn.p99_ms:6.2f} ms   CPU µs per spawn: "
                  f"spawner {spawn.self_us:6,.0f}  `true` {spawn.children_us:6,.0f}")
    print("\nratios (aurae p50 over direct p50; target <= {:g}):".format(TARGET_RATIO))
    for run in report.runs:
        for shape in SHAPES:
            value = run.ratio(shape, 0.5)
            meaning = (f"target: {verdict(value <= TARGET_RATIO)}" if (run.placement, shape) == ("disk", "sequential")
                       else "(informative)")
            print(f"  {run.placement:<6}{shape:<12}p50 x{value:5.2f}   p99 x{run.ratio(shape, 0.99):5.2f}   {meaning}")


def report_json(report: Report) -> dict[str, Any]:
    runs = []
    for run in report.runs:
        phases = {}
        for name, phase in run.phases.items():
            phases[name] = {"calls": phase.calls, "errors": phase.errors, "first_error": phase.first_error,
                            "seconds": phase.seconds, "calls_per_s": phase.rate,
                            "p50_ms": phase.percentile(0.5), "p99_ms": phase.percentile(0.99),
                            "cpu_us_per_call": {label: phase.cpu_us(label) for label in CPU_LABELS},
                            "core_share": {label: phase.core_share(label) for label in CPU_LABELS},
                            "other_share": phase.other_share()}
            if phase.side != "direct":
                phases[name]["ratio_p50"] = run.ratio(phase.shape, 0.5, phase.side)
                phases[name]["ratio_p99"] = run.ratio(phase.shape, 0.99, phase.side)
        runs.append({"placement": run.placement, "data_fs": run.data_fs, "probes": asdict(run.probes),
                     "phases": phases})
    disk = report.runs[0]
    return {"command": COMMAND, "calls": report.args.calls, "concurrency": report.args.concurrency,
            "grpc_fork_support": not report.args.no_grpc_fork_support,
            "cpus": os.cpu_count(), "target_ratio": TARGET_RATIO,
            "target_met": disk.ratio("sequential", 0.5) <= TARGET_RATIO, "runs": runs,
            "spawn_probes": [asdict(spawn) for spawn in report.spawns], "notes": report.notes}


# --- the run ---------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="measured calls per side and shape (default 300)")
    parser.add_argument("--concurrency", type=int, default=50, help="calls at once in the concurrent phase "
                        "(default 50; the runtime runs at most 256 processes at once)")
    parser.add_argument("--no-tmpfs", action="store_true", help="only the disk run (no /dev/shm run)")
    parser.add_argument("--no-grpc-fork-support", action="store_true",
                        help=f"run the node with {GRPC_FORK_SUPPORT}=false (see 'Failures' above)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")
    parser.add_argument("--spawn-probe", choices=("asyncio", "uvloop"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.calls < 1 or not 1 <= args.concurrency <= 256:
        parser.error("--calls must be positive and --concurrency 1 to 256")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log.configure("warning")
    if args.spawn_probe:
        return spawn_probe_main(args.spawn_probe)
    return run_and_report("aurae_run", lambda: bench(args), (BenchError, ServerError, AuraeError),
                          as_json=args.json, to_json=report_json, print_text=print_report)


if __name__ == "__main__":
    sys.exit(main())
