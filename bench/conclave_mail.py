"""What does a Conclave mail round trip cost through the web host, against the same Noise work in one process?

    (a) baseline  in this process, in a loop: a client's PostOffice encrypts a mail to the enclave's key,
                  the enclave side decrypts it (`decrypt_mail`) and encrypts the hello-world reply as
                  the enclave does (`encrypt_mail` with its moving-average padding), and the client
                  decrypts the reply (`PostOffice.decrypt`). It uses components/conclave/mail.py only:
                  the crypto of one round trip and nothing else, timed per step too.
    (b) system    `--clients` concurrent clients (default 8), each with its own key and post office:
                  encrypt a mail, POST /deliver-mail with its Correlation-ID to the web host
                  (http.conclave) -> NATS -> the enclave component (hello-world), which decrypts,
                  checks the sequence number, replies, seals its state (fsync) and publishes its
                  `mail accepted` event (a JetStream write; nats.conf says `sync_interval: always`, so
                  that is an fsync in nats-server too) -> the synchronous reply, which the client
                  decrypts and checks. The enclave, its mailboxes and the HTTP site run the way `teebus
                  up` runs them, in one process of their own (`teebus run conclave.enclave
                  conclave.mailbox http.conclave`), against a real nats-server
                  (bus.server.EmbeddedServer) on a data directory of their own.

(b) runs up to three times, each time on a fresh bus, node and enclave, to show where the time goes:
    disk          everything in a temporary data directory (JetStream and the sealed state), as `teebus up`;
    sealed-tmpfs  the same, but the sealed state file on /dev/shm (--sealed.state.file), so the
                  enclave's own fsync per mail costs nothing;
    all-tmpfs     the whole data directory on /dev/shm, so no fsync costs anything (the event's included).
The tmpfs runs are made when /dev/shm is a writable tmpfs, and skipped with --no-tmpfs. Before each run,
two probes time, one call at a time with the node idle, the work the enclave does per mail besides the
crypto: writing its sealed state (`sealed_state.encode` + `write_private`, on that run's file system)
and publishing one event and waiting for the stream's ack (on that run's bus). The enclave handles one
mail at a time (its sequence watermarks need an order), so these two plus its half of the crypto are
serial. "serial estimate" adds them up; 1 / that is about the most round trips per second the enclave
can take, however many clients there are, with HTTP and NATS still to add.

Output: round trips per second of each, p50/p99 latency of a system round trip (from the client's
encrypt to its decrypt of the reply), the baseline's time per round trip and per step, and the CPU
each process spends per round trip. Each process's figure also gives its share of one core (a process
near 100% is the bottleneck) and how much of its CPU was spent in the kernel: socket writes on loopback
and fsync count there. "other" is CPU busy with work that is not ours; when it is high, rerun, or use
--rounds. "the node with a core to itself" is 1 / the node's CPU per round trip. The node runs the
site, its bus client and the enclave on one event loop, so that is the most it could take if it had
no waits at all. With --rounds N, each run alternates N baseline rounds with N system rounds on the
same node, and the best of each counts (other load only ever slows a round down).

How to read the ratios (system round trips/s over the baseline's; 1.00 = as fast as Noise alone):
    disk/a          the web host as deployed -- target >= 0.5;
    sealed-tmpfs/a  without the sealed state's fsync (informative);
    all-tmpfs/a     without any fsync (informative): what HTTP, NATS and the enclave's code cost.

    python bench/conclave_mail.py [--seconds 5] [--warmup 1] [--clients 8] [--body-bytes 256] [--rounds 1]
                                  [--no-tmpfs] [--json]

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
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

if __package__ in (None, ""):  # run as `python bench/conclave_mail.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench.bus_overhead import teebus_command
from bench.figures import filesystem, percentile, progress
from bench.processes import BenchError, Children, machine_busy_seconds, run_and_report
from bus import log, roles
from bus.connection import connect
from bus.credentials import write_private
from bus.events import Events
from bus.server import EmbeddedServer, ServerError, free_port
from bus.testing import running_bus
from components.conclave import mail as mailfmt
from components.conclave import sealed_state
from components.conclave.apps.hello_world import reverse
from components.conclave.client import correlation_id
from components.conclave.config import ConclaveConfig
from components.conclave.eii import EnclaveInstanceInfo
from teebus.systems import installed

TARGET_RATIO = 0.5         # disk round trips/s over the baseline's, at least
HOST = "127.0.0.1"
TOPIC = "default"
READY_TIMEOUT = 30.0
PROBE_COUNT = 200          # sealed-state writes / event publishes per probe, at most ...
PROBE_SECONDS = 1.0        # ... or this long
SHM = Path("/dev/shm")
MAX_MAIL = ConclaveConfig().max_mail_bytes
STEPS = ("client encrypt", "enclave decrypt", "reply encrypt", "client decrypt")
MACHINE = "(machine)"
KERNEL = ":kernel"          # suffix of a process's label for its system CPU time
_TICKS = os.sysconf("SC_CLK_TCK")


# --- results ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Placement:
    """Where one system run keeps its data directory and its sealed state."""

    name: str
    label: str
    data_root: Path | None = None      # where the data directory is made (None: the system's temp dir)
    sealed_root: Path | None = None    # where the sealed state goes (None: the data directory, as `teebus up`)


@dataclass
class Baseline:
    round_trips: int
    seconds: float
    steps: dict[str, float]            # seconds spent in each of STEPS, over all round trips
    other_share: float = 0.0           # cores busy with work not ours meanwhile

    @property
    def rps(self) -> float:
        return self.round_trips / self.seconds if self.seconds else 0.0

    @property
    def us_per_round_trip(self) -> float:
        return self.seconds / self.round_trips * 1e6 if self.round_trips else 0.0

    def step_us(self, step: str) -> float:
        return self.steps[step] / self.round_trips * 1e6 if self.round_trips else 0.0


@dataclass
class Probes:
    """Per-mail work of the enclave beside the crypto, timed alone: medians in ms."""

    sealed_fs: str
    sealed_bytes: int
    sealed_write_ms: float
    event_ack_ms: float


@dataclass
class SystemRun:
    placement: str
    label: str
    data_fs: str
    probes: Probes
    round_trips: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    errors: int = 0
    first_error: str = ""
    cpu_us: dict[str, float] = field(default_factory=dict)       # per round trip, by process
    core_share: dict[str, float] = field(default_factory=dict)   # of one core, by process
    kernel_share: dict[str, float] = field(default_factory=dict) # of each process's CPU, in the kernel
    other_share: float = 0.0                                     # cores busy with work not ours
    rounds_rps: list[float] = field(default_factory=list)        # every round's, this one the best

    @property
    def rps(self) -> float:
        return self.round_trips / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        return percentile(self.latencies_ms, fraction)


@dataclass
class Report:
    args: argparse.Namespace
    baselines: list[Baseline] = field(default_factory=list)
    runs: list[SystemRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def baseline(self) -> Baseline:
        return max(self.baselines, key=lambda b: b.rps)






# --- where things live -----------------------------------------------------------------------



def tmpfs_available() -> bool:
    return SHM.is_dir() and os.access(SHM, os.W_OK) and filesystem(SHM) == "tmpfs"


def placements(args: argparse.Namespace) -> list[Placement]:
    chosen = [Placement("disk", "data dir on disk, as teebus up")]
    if not args.no_tmpfs and tmpfs_available():
        chosen += [Placement("sealed-tmpfs", "sealed state on tmpfs", sealed_root=SHM),
                   Placement("all-tmpfs", "whole data dir on tmpfs", data_root=SHM)]
    return chosen


@contextmanager
def scratch_dir(root: Path | None, prefix: str) -> Iterator[Path | None]:
    """A temporary directory under `root` (removed afterwards), or None when there is no root."""
    if root is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix=prefix, dir=root) as tmp:
        yield Path(tmp)


# --- (a) the baseline ------------------------------------------------------------------------

@dataclass
class Loop:
    """One client and one enclave key in this process, as the system's two ends hold them."""

    enclave_secret: bytes
    office: mailfmt.PostOffice
    body: bytes
    expected: bytes
    policy: mailfmt.MovingAverage = field(default_factory=mailfmt.moving_average)
    replies: int = 0


def new_loop(body: bytes) -> Loop:
    secret = os.urandom(32)                  # as the enclave makes its key (EnclaveState)
    office = mailfmt.PostOffice(mailfmt.new_private_key(), mailfmt.public_key(secret), TOPIC,
                                key_derivation=mailfmt.RANDOM_SESSION_KEY_DERIVATION)
    return Loop(secret, office, body, reverse(body))


def baseline_round_trip(loop: Loop, steps: dict[str, float]) -> None:
    """Client encrypt, enclave decrypt, reply encrypt (as enclave_env.ReplyOffice), client decrypt."""
    t0 = time.perf_counter()
    sent = loop.office.encrypt(loop.body)
    t1 = time.perf_counter()
    received = mailfmt.decrypt_mail(sent, loop.enclave_secret, max_size=MAX_MAIL)
    t2 = time.perf_counter()
    reply = mailfmt.encrypt_mail(reverse(received.body), recipient_public=received.sender,
                                 sender_private=loop.enclave_secret, topic=received.header.topic,
                                 sequence_number=loop.replies, private_header=None,
                                 min_size=loop.policy.min_size(len(received.body)))
    loop.replies += 1
    t3 = time.perf_counter()
    opened = loop.office.decrypt(reply, max_size=MAX_MAIL)
    t4 = time.perf_counter()
    if opened.body != loop.expected:
        raise BenchError("the baseline's reply does not hold the reversed body")
    for step, (start, end) in zip(STEPS, ((t0, t1), (t1, t2), (t2, t3), (t3, t4))):
        steps[step] += end - start


def measure_baseline(body: bytes, seconds: float) -> Baseline:
    loop, steps = new_loop(body), dict.fromkeys(STEPS, 0.0)
    baseline_round_trip(loop, dict.fromkeys(STEPS, 0.0))          # warm the key caches
    count, started, cpu_before = 0, time.perf_counter(), cpu_snapshot({"bench": os.getpid()})
    end = started + seconds
    while time.perf_counter() < end:
        baseline_round_trip(loop, steps)
        count += 1
    wall, cpu_after = time.perf_counter() - started, cpu_snapshot({"bench": os.getpid()})
    busy = cpu_after[MACHINE] - cpu_before[MACHINE] - (cpu_after["bench"] - cpu_before["bench"])
    return Baseline(count, wall, steps, max(0.0, busy) / wall)


# --- (b) the system: the node and its clients -------------------------------------------------

def node_argv(server: EmbeddedServer, data_dir: Path, enclave: str, host_port: int,
              sealed: Path | None) -> list[str]:
    """`teebus run` of what `teebus up` runs for Conclave's web host (the KDS component is not needed)."""
    argv = teebus_command("run", "conclave.enclave", "conclave.mailbox", "http.conclave",
                          "--nats", server.url, "--data-dir", str(data_dir),
                          "--port", f"conclave-host={host_port}", "--port", f"conclave-kds={free_port()}",
                          "--conclave.app", "hello-world", "--conclave.enclave", enclave)
    return [*argv, "--sealed.state.file", str(sealed)] if sealed else argv


async def wait_attestation(session: aiohttp.ClientSession, url: str, children: Children) -> bytes:
    """GET /attestation until it answers 200 (the site and the enclave are up): the enclave's key."""
    deadline, last = time.monotonic() + READY_TIMEOUT, "no answer"
    while time.monotonic() < deadline:
        children.check_alive()
        try:
            async with session.get(url + "/attestation") as response:
                data = await response.read()
                if response.status == 200:
                    return EnclaveInstanceInfo.deserialize(data).encryption_key
                last = f"HTTP {response.status}: {data[:200]!r}"
        except aiohttp.ClientError as exc:
            last = str(exc) or type(exc).__name__
        await asyncio.sleep(0.1)
    raise BenchError(f"the Conclave web host at {url} did not attest within {READY_TIMEOUT:.0f}s: {last}")


@dataclass
class MailClient:
    """One client: its own key, post office and Correlation-ID (as Conclave's client forms it)."""

    office: mailfmt.PostOffice
    headers: dict[str, str]
    body: bytes
    expected: bytes


def new_client(enclave_key: bytes, body: bytes) -> MailClient:
    private = mailfmt.new_private_key()
    office = mailfmt.PostOffice(private, enclave_key, TOPIC, key_derivation=mailfmt.RANDOM_SESSION_KEY_DERIVATION)
    headers = {"Correlation-ID": correlation_id(private), "Content-Type": "application/octet-stream"}
    return MailClient(office, headers, body, reverse(body))


async def round_trip(session: aiohttp.ClientSession, url: str, client: MailClient) -> str | None:
    """One mail and its synchronous reply: None, or what went wrong."""
    mail = client.office.encrypt(client.body)
    try:
        async with session.post(url, data=mail, headers=client.headers) as response:
            data = await response.read()
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if response.status != 200:
        return f"HTTP {response.status}: {data[:200]!r}"
    try:
        reply = client.office.decrypt(data, max_size=MAX_MAIL)
    except (mailfmt.MailDecryptionError, ValueError) as exc:
        return f"the reply does not open: {exc}"
    return None if reply.body == client.expected else "the reply does not hold the reversed body"


@dataclass
class Window:
    """What the clients saw between `start` and `end` (perf_counter seconds)."""

    start: float
    end: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    def record(self, began: float, done: float, error: str | None) -> None:
        if began < self.start or done > self.end:
            return
        if error is None:
            self.latencies_ms.append((done - began) * 1000)
            return
        self.errors += 1
        self.first_error = self.first_error or error


async def client_loop(session: aiohttp.ClientSession, url: str, client: MailClient, window: Window) -> None:
    """Back to back until the window ends; after a failure a fresh key (its numbers start at 0 again)."""
    while time.perf_counter() < window.end:
        began = time.perf_counter()
        error = await round_trip(session, url, client)
        window.record(began, time.perf_counter(), error)
        if error is not None:
            client = new_client(client.office.recipient_public, client.body)
            await asyncio.sleep(0.01)


def process_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of `pid` so far, all its threads (Linux /proc); zeros once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def cpu_snapshot(processes: dict[str, int]) -> dict[str, float]:
    """Each process's CPU seconds so far (its system time again under label + KERNEL), and the machine's."""
    snapshot = {MACHINE: machine_busy_seconds()}
    for label, pid in processes.items():
        user, system = process_cpu(pid)
        snapshot[label], snapshot[label + KERNEL] = user + system, system
    return snapshot


async def sample_cpu(window: Window, processes: dict[str, int], into: dict[str, dict[str, float]]) -> None:
    await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
    into["before"] = cpu_snapshot(processes)
    await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
    into["after"] = cpu_snapshot(processes)


async def run_clients(session: aiohttp.ClientSession, url: str, clients: list[MailClient],
                      args: argparse.Namespace, processes: dict[str, int]) -> tuple[Window, dict[str, float]]:
    """Every client in a closed loop: warmup, then the measured window; CPU seconds used in it."""
    now = time.perf_counter()
    window = Window(now + args.warmup, now + args.warmup + args.seconds)
    cpu: dict[str, dict[str, float]] = {}
    await asyncio.gather(sample_cpu(window, processes, cpu),
                         *(client_loop(session, url, client, window) for client in clients))
    return window, {label: cpu["after"][label] - cpu["before"][label] for label in cpu["before"]}


def to_run(placement: Placement, data_dir: Path, probes: Probes, window: Window,
           used: dict[str, float]) -> SystemRun:
    seconds = window.end - window.start
    count = max(len(window.latencies_ms), 1)
    machine = used.pop(MACHINE)
    kernel = {label.removesuffix(KERNEL): used.pop(label) for label in list(used) if label.endswith(KERNEL)}
    return SystemRun(placement.name, placement.label, filesystem(data_dir), probes, len(window.latencies_ms),
                     seconds, window.latencies_ms, window.errors, window.first_error,
                     {label: cpu / count * 1e6 for label, cpu in used.items()},
                     {label: cpu / seconds for label, cpu in used.items()},
                     {label: kernel[label] / cpu if cpu else 0.0 for label, cpu in used.items()},
                     max(0.0, machine - sum(used.values())) / seconds)


# --- probes: the enclave's other per-mail work, timed alone ----------------------------------------

def timed_repeatedly(work: Callable[[], object]) -> float:
    """Median ms of `work()` over PROBE_COUNT calls or PROBE_SECONDS, whichever ends first."""
    samples: list[float] = []
    deadline = time.perf_counter() + PROBE_SECONDS
    while len(samples) < PROBE_COUNT and time.perf_counter() < deadline:
        started = time.perf_counter()
        work()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def probe_sealed_write(directory: Path, clients: int) -> tuple[int, float]:
    """(bytes, median ms) of sealing and writing a state like the enclave's after the run: one
    watermark and one reply counter per client, written as the enclave writes it (fsync, rename)."""
    senders = [os.urandom(32).hex() for _ in range(clients)]
    state = sealed_state.EnclaveState(os.urandom(32), {f"{s}/{TOPIC}": 10_000 for s in senders},
                                      {f"{s}/{TOPIC}": 10_000 for s in senders})
    key, path = os.urandom(32), directory / "probe" / "sealed.state"
    size = len(sealed_state.encode(state, key, "mock"))
    return size, timed_repeatedly(lambda: write_private(path, sealed_state.encode(state, key, "mock")))


async def probe_event_ack(server: EmbeddedServer) -> float:
    """Median ms of one event publish with its stream ack, as the enclave publishes `mail accepted`."""
    client = await connect(server.url, roles.ADMIN, passwords=server.passwords, name="bench-events")
    try:
        events = Events(client, "bench")
        data = {"enclave": "bench", "topic": TOPIC, "sequence_number": 0, "sender": os.urandom(32).hex(),
                "replied": True, "queued": []}
        samples: list[float] = []
        deadline = time.perf_counter() + PROBE_SECONDS
        while len(samples) < PROBE_COUNT and time.perf_counter() < deadline:
            started = time.perf_counter()
            await events.publish("mail", "accepted", data)
            samples.append((time.perf_counter() - started) * 1000)
        return statistics.median(samples)
    finally:
        await client.close()


async def probe(server: EmbeddedServer, sealed_dir: Path, clients: int) -> Probes:
    size, write_ms = await asyncio.to_thread(probe_sealed_write, sealed_dir, clients)
    return Probes(filesystem(sealed_dir), size, write_ms, await probe_event_ack(server))


# --- one system run --------------------------------------------------------------------------

async def measure_system(args: argparse.Namespace, placement: Placement, body: bytes,
                         baselines: list[Baseline]) -> SystemRun:
    """A fresh bus, node and enclave for `placement`: probes, then rounds of a baseline and the clients'
    window; the best round (other load only ever slows one down)."""
    with tempfile.TemporaryDirectory(prefix="teebus-bench-conclave-", dir=placement.data_root) as tmp, \
            scratch_dir(placement.sealed_root, "teebus-bench-sealed-") as sealed_dir:
        data_dir = Path(tmp)
        children = Children(data_dir / "logs")
        async with running_bus(data_dir, installed()) as bus:
            try:
                return await run_node(args, placement, body, bus.server, data_dir, sealed_dir, children, baselines)
            except BenchError:
                print(f"node log:\n{children.tails()}", file=sys.stderr)
                raise
            finally:
                await children.stop_all()


async def run_node(args: argparse.Namespace, placement: Placement, body: bytes, server: EmbeddedServer,
                   data_dir: Path, sealed_dir: Path | None, children: Children,
                   baselines: list[Baseline]) -> SystemRun:
    port = free_port()
    sealed = sealed_dir / "sealed.state" if sealed_dir else None
    node = await children.start("node", node_argv(server, data_dir, f"bench-{placement.name}", port, sealed))
    url = f"http://{HOST}:{port}"
    connector = aiohttp.TCPConnector(limit=args.clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        enclave_key = await wait_attestation(session, url, children)
        probes = await probe(server, sealed_dir or data_dir, args.clients)
        clients = [new_client(enclave_key, body) for _ in range(args.clients)]
        for client in clients:                                    # the whole path works, for each
            error = await round_trip(session, url + "/deliver-mail", client)
            if error is not None:
                raise BenchError(f"a first round trip failed: {error}")
        processes = {"bench": os.getpid(), "node": node.pid, "nats-server": server.pid or 0}
        runs = []
        for round_ in range(1, args.rounds + 1):
            progress(f"  measuring (a) baseline: {args.seconds:g} s in this process ...")
            baselines.append(await asyncio.to_thread(measure_baseline, body, args.seconds))
            progress(f"  measuring (b) {placement.name}, round {round_}/{args.rounds}: {args.clients} clients, "
                     f"{args.warmup:g} s warmup + {args.seconds:g} s ...")
            window, used = await run_clients(session, url + "/deliver-mail", clients, args, processes)
            children.check_alive()
            runs.append(to_run(placement, data_dir, probes, window, used))
    best = max(runs, key=lambda run: run.rps)
    best.rounds_rps = [run.rps for run in runs]
    return best


async def bench(args: argparse.Namespace) -> Report:
    report = Report(args)
    body = os.urandom(args.body_bytes // 2 + 1).hex()[:args.body_bytes].encode()   # text: reversed as text
    chosen = placements(args)
    if len(chosen) == 1 and not args.no_tmpfs:
        report.notes.append(f"{SHM} is not a writable tmpfs here: only the disk run was made")
    for placement in chosen:
        report.runs.append(await measure_system(args, placement, body, report.baselines))
    if report.runs[0].data_fs == "tmpfs":
        report.notes.append("the temporary directory is itself on tmpfs: the disk run had no disk")
    return report


# --- the report ------------------------------------------------------------------------------

def serial_ms(report: Report, run: SystemRun) -> float:
    """The enclave's one-at-a-time work per mail, as timed alone: its crypto, sealed write, event ack."""
    baseline = report.baseline
    crypto_us = baseline.step_us("enclave decrypt") + baseline.step_us("reply encrypt")
    return crypto_us / 1000 + run.probes.sealed_write_ms + run.probes.event_ack_ms


def node_ceiling(run: SystemRun) -> float:
    """Round trips/s the node's one event loop could serve at 100% of a core, at its CPU per round trip."""
    return 1e6 / run.cpu_us["node"] if run.cpu_us.get("node") else 0.0


def ratio(run: SystemRun, baseline: Baseline) -> float:
    return run.rps / baseline.rps if baseline.rps else 0.0


def print_baseline(report: Report) -> None:
    b = report.baseline
    print(f"\n(a) baseline in one process (best of {len(report.baselines)} rounds): {b.rps:,.0f} round trips/s, "
          f"{b.us_per_round_trip:,.0f} µs per round trip; other load {b.other_share:.0%}")
    print("    " + "  ".join(f"{step} {b.step_us(step):,.0f} µs" for step in STEPS))


def print_runs(report: Report) -> None:
    print("\n(b) system: POST /deliver-mail -> http.conclave -> NATS -> enclave (hello-world) -> reply")
    print(f"  {'run':<14}{'rt/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}   data dir   sealed state "
          f"(write ms)   event ack ms   serial estimate")
    for run in report.runs:
        serial = serial_ms(report, run)
        print(f"  {run.placement:<14}{run.rps:>8,.0f}{run.percentile(0.5):>9.2f}{run.percentile(0.99):>9.2f}"
              f"{run.errors:>8}   {run.data_fs:<9}  {run.probes.sealed_fs:<9}{run.probes.sealed_write_ms:>8.2f}"
              f"{run.probes.event_ack_ms:>15.2f}   {serial:.2f} ms (<= {1000 / serial:,.0f}/s)")
    if report.args.rounds > 1:
        print("  every round's rt/s: " + "   ".join(
            f"{run.placement} " + ", ".join(f"{rps:,.0f}" for rps in run.rounds_rps) for run in report.runs))
    for run in report.runs:
        if run.first_error:
            print(f"  {run.placement}: first error: {run.first_error}")
    print("\n  CPU µs per round trip (share of one core) during the window:")
    for run in report.runs:
        cells = "  ".join(f"{label} {run.cpu_us[label]:,.0f} ({run.core_share[label]:.0%}, "
                          f"{run.kernel_share[label]:.0%} kernel)" for label in run.cpu_us)
        print(f"  {run.placement:<14}{cells}  | other load {run.other_share:.0%}")
    print("  the node (site, bus client and enclave on one event loop) with a core to itself would take at most:")
    print("  " + "   ".join(f"{run.placement} {node_ceiling(run):,.0f} rt/s" for run in report.runs))


def print_ratios(report: Report) -> None:
    baseline = report.baseline
    print("\nratios (system round trips/s over the baseline's; 1.00 = as fast as Noise alone in one process):")
    for run in report.runs:
        value = ratio(run, baseline)
        if run.placement == "disk":
            meaning = f"target >= {TARGET_RATIO:g}: {'met' if value >= TARGET_RATIO else 'NOT met'}"
        else:
            meaning = f"(informative: {run.label})"
        print(f"  {run.placement + '/a':<16}{value:6.2f}   {meaning}")
    by_name = {run.placement: run for run in report.runs}
    if "disk" in by_name and "sealed-tmpfs" in by_name:
        disk, sealed = by_name["disk"], by_name["sealed-tmpfs"]
        print(f"  the sealed state's fsync per mail: {disk.rps:,.0f} -> {sealed.rps:,.0f} rt/s without it "
              f"(x{sealed.rps / disk.rps if disk.rps else 0:.2f}); it takes {disk.probes.sealed_write_ms:.2f} ms "
              f"alone on {disk.probes.sealed_fs}, {sealed.probes.sealed_write_ms:.2f} ms on tmpfs")
    if "sealed-tmpfs" in by_name and "all-tmpfs" in by_name:
        sealed, bare = by_name["sealed-tmpfs"], by_name["all-tmpfs"]
        print(f"  the event's JetStream fsync per mail: {sealed.rps:,.0f} -> {bare.rps:,.0f} rt/s without it "
              f"(x{bare.rps / sealed.rps if sealed.rps else 0:.2f}); an event ack takes "
              f"{sealed.probes.event_ack_ms:.2f} ms alone on disk, {bare.probes.event_ack_ms:.2f} ms on tmpfs")


def print_report(report: Report) -> None:
    args = report.args
    print(f"\nteebus Conclave mail round trips: {args.clients} clients, {args.body_bytes}-byte bodies, "
          f"{args.warmup:g} s warmup + {args.seconds:g} s per round, best of {args.rounds} round(s); "
          f"{os.cpu_count()} CPUs, {HOST}")
    for note in report.notes:
        print(f"note: {note}")
    print_baseline(report)
    print_runs(report)
    print_ratios(report)


def report_json(report: Report) -> dict[str, Any]:
    baseline = report.baseline
    runs = []
    for run in report.runs:
        fields = {k: v for k, v in asdict(run).items() if k != "latencies_ms"}
        runs.append({**fields, "rps": run.rps, "p50_ms": run.percentile(0.5), "p99_ms": run.percentile(0.99),
                     "ratio": ratio(run, baseline), "serial_estimate_ms": serial_ms(report, run),
                     "node_ceiling_rps": node_ceiling(run)})
    return {"clients": report.args.clients, "body_bytes": report.args.body_bytes, "seconds": report.args.seconds,
            "warmup": report.args.warmup, "rounds": report.args.rounds, "cpus": os.cpu_count(),
            "target_ratio": TARGET_RATIO,
            "baseline": {"rps": baseline.rps, "us_per_round_trip": baseline.us_per_round_trip,
                         "step_us": {step: baseline.step_us(step) for step in STEPS},
                         "other_share": baseline.other_share, "rounds_rps": [b.rps for b in report.baselines]},
            "runs": runs, "notes": report.notes}


# --- the run ---------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window of each round (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured warmup of each system run (default 1)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients, each its own key (default 8)")
    parser.add_argument("--body-bytes", type=int, default=256, help="bytes of each mail's body (default 256)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of (a) and (b) per run, alternating; the best of each counts (default 1)")
    parser.add_argument("--no-tmpfs", action="store_true", help="only the disk run (no /dev/shm runs)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0 or args.clients < 1 or args.rounds < 1:
        parser.error("--seconds, --clients and --rounds must be positive, --warmup not negative")
    if not 1 <= args.body_bytes <= MAX_MAIL - 1024:
        parser.error(f"--body-bytes must be 1 to {MAX_MAIL - 1024}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log.configure("warning")
    return run_and_report("conclave_mail", lambda: bench(args), (BenchError, ServerError), as_json=args.json,
                          to_json=report_json, print_text=print_report)


if __name__ == "__main__":
    sys.exit(main())
