"""What does a psi cost through the real Function Node? Measured against plain Python, in one run.

Data: two files of `--records` 32-byte random records each (default 1,000,000): the first
shuffled, the second sorted ascending (as MesaTEE's psi clients sent it), sharing half their
records.

The deployment: a real nats-server (bus.testing.running_bus) and, in a process of its own, MesaTEE's
components and HTTP adapter as `teebus up` runs them (`teebus run mesatee.users mesatee.kms
mesatee.tdfs mesatee.tms mesatee.fns http.mesatee`, every site on a free port; `fns_workers = 1`,
so one worker runs every psi and its memory can be read). Two users of this run register the files
as the seed's client does (TDFS Create over HTTP, then AES-256-GCM `ciphertext || tag` under the
returned key written to `access_path`); this process is only the client.

    (a) baseline  plain in-memory psi in this process: both plaintexts as lists of records, a set
                  intersection, one membership pass per side -- the same two bitmaps, nothing else
                  (no files, no crypto, no verification, no bus; memory is no concern to it);
    (b) invoke    each round, a fresh psi task (TMS Create by the first user, approved with the
                  second user's file: Ready; not timed), then the timed `POST /` of the invoke to the
                  function node's site, until its reply: the adapter, the FNS's task Get, token and
                  status checks, the TMS Update to Running, each input's path from TDFS and key from
                  the KMS, the run on the worker (read, decrypt, verify size and sha256, intersect,
                  the bitmaps back over the pipe), each output registered through the internal TDFS
                  Create (which makes a KMS key), sealed under that key and written (fsync, rename),
                  the TMS Update to Finished, the reply. Afterwards (not timed) each user's private
                  output is fetched and decrypted as its owner would, and compared with (a)'s bitmaps.
    phases        of (b), from the FNS's own requests as this process sees them on the bus (an
                  `admin` subscription to `mesatee.>`, matched by the invoke's request id): they end
                  at the TMS Update to Running, the last input's KMS Get, the first TDFS Create of an
                  output, the TMS Update to Finished, and the reply. A phase so includes the answer to
                  the request that begins it (about half a millisecond each).
    stages        the work of (b)'s worker, each step once, in this process (read ciphertext,
                  decrypt, verify, intersect, encrypt and write outputs), to tell its parts apart.
    (c) decrypt   AES-GCM decrypt of the first file's ciphertext, against `cryptography`'s
                  `decrypt_into` into one reused buffer (the ceiling the issue names): the
                  pipeline's decrypt step (`files.decrypt`, in place in the buffer the read made;
                  c', the figure against the target), each sample on a fresh read; and that read
                  alone (`files.read_ciphertext`: a populated anonymous mapping filled from the
                  file; informative: the price of fresh memory, paid once per input). Samples of
                  each alternate.
    (m) memory    peak RSS (VmHWM in /proc) of the FNS's worker process that ran (b), against 4x the
                  two inputs' plaintext size, and its peak after only a warm-up psi of 64 records
                  (what the interpreter and its imports take).

Rounds of (a) and (b) alternate, so drift in load from elsewhere on the machine hits both alike;
medians are reported.

How to read the ratios (lower is better for time, higher for throughput):
    b/a       invoke through the function node over the baseline -- target <= 2.0;
    m         worker peak over the inputs' plaintext size -- target < 4x;
    c'        the pipeline's decrypt step over the reused-buffer ceiling -- target >= 0.8.

    python bench/mesatee_psi.py [--records 1000000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/mesatee_psi.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.bus_overhead import teebus_command
from bench.figures import progress
from bench.processes import BenchError, Child, Children, run_until_done
from bus import headers, log, roles
from bus.connection import connect
from bus.errors import BusError, Unavailable
from bus.requester import Requester
from bus.server import ServerError, free_port
from bus.testing import running_bus
from components.mesatee import subjects
from components.mesatee.functions import InputFile, KeyConfig, files, psi
from components.mesatee.system import MANIFEST as MESATEE
from teebus.systems import installed

RECORD = 32
MIB = 1024 * 1024
TARGET_INVOKE = 2.0        # b / a at most
TARGET_MEMORY = 4.0        # worker peak RSS under 4x the inputs
TARGET_DECRYPT = 0.8       # the pipeline's decrypt step over the reused-buffer ceiling, at least
DECRYPT_SAMPLES = 15
WARMUP_RECORDS = 64
NODE_NAMES = ("mesatee.users", "mesatee.kms", "mesatee.tdfs", "mesatee.tms", "mesatee.fns", "http.mesatee")
NODE_CONFIG = "[mesatee]\nfns_workers = 1\nfns_deadline_seconds = 600\n"
READY_TIMEOUT = 60.0
CALL_TIMEOUT = 30.0
INVOKE_TIMEOUT = 900.0
PHASES = ("to Running: adapter, task Get, checks, TMS Update",
          "inputs: TDFS Get and KMS Get of each file",
          "worker: read, decrypt, verify, intersect, reply",
          "outputs: TDFS Create (+ KMS key), seal, write",
          "TMS Update to Finished, the reply")


@dataclass
class Report:
    records: int
    rounds: int
    input_bytes: int
    baseline: list[float] = field(default_factory=list)
    invoke: list[float] = field(default_factory=list)
    phases: list[list[float]] = field(default_factory=list)     # per round, one value per PHASES
    stages: dict[str, float] = field(default_factory=dict)
    decrypt_reused: list[float] = field(default_factory=list)
    decrypt_step: list[float] = field(default_factory=list)
    read: list[float] = field(default_factory=list)
    idle_peak: int = 0
    worker_peak: int = 0
    notes: list[str] = field(default_factory=list)


# --- data --------------------------------------------------------------------------------------

def make_inputs(records: int, seed: int = 1) -> tuple[bytes, bytes]:
    """Two files' plaintexts: `records` each, half of them shared; the first shuffled, the second sorted."""
    rng = random.Random(seed)
    pool_of_records = rng.randbytes(RECORD * (records + records // 2))
    distinct = [pool_of_records[i:i + RECORD] for i in range(0, len(pool_of_records), RECORD)]
    first = distinct[:records]
    second = sorted(distinct[records // 2:records // 2 + records])
    rng.shuffle(first)
    return b"".join(first), b"".join(second)


def key_of(config: dict[str, str]) -> KeyConfig:
    return KeyConfig(*(base64.b64decode(config[name]) for name in ("key", "nonce", "ad")))


# --- (a) the baseline ----------------------------------------------------------------------------

def baseline(first: bytes, second: bytes) -> tuple[bytes, bytes]:
    """Plain in-memory psi: lists of records, a set intersection, a membership pass per side."""
    a = [first[i:i + RECORD] for i in range(0, len(first), RECORD)]
    b = [second[i:i + RECORD] for i in range(0, len(second), RECORD)]
    common = set(a).intersection(b)
    return bytes(map(common.__contains__, a)), bytes(map(common.__contains__, b))


# --- the deployment --------------------------------------------------------------------------------

@dataclass
class User:
    name: str
    token: str


@dataclass
class Node:
    """The MesaTEE node process and its sites; requests as its users make them."""

    child: Child
    children: Children
    urls: dict[str, str]
    session: aiohttp.ClientSession

    async def post(self, site: str, body: dict[str, Any], request_id: str | None = None,
                   timeout: float = CALL_TIMEOUT) -> tuple[int, dict[str, Any]]:
        hdrs = {"X-Request-Id": request_id} if request_id else {}
        try:
            async with self.session.post(self.urls[site], data=orjson.dumps(body), headers=hdrs,
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                return response.status, orjson.loads(await response.read())
        except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError) as exc:
            self.children.check_alive()
            raise BenchError(f"{site} ({self.urls[site]}) did not answer: {exc or type(exc).__name__}") from None

    async def call(self, site: str, body: dict[str, Any], request_id: str | None = None,
                   timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        status, reply = await self.post(site, body, request_id, timeout)
        if status != 200:
            raise BenchError(f"{site} answered {status} to a {body.get('type', 'invoke')}: {reply}")
        return reply

    async def register(self, user: User, plaintext: bytes, name: str) -> InputFile:
        """TDFS Create, then the sealed bytes written to access_path (the seed's client flow)."""
        created = await self.call("mesatee-tdfs", {
            "type": "Create", "file_name": name, "sha256": hashlib.sha256(plaintext).hexdigest(),
            "file_size": len(plaintext), "user_id": user.name, "user_token": user.token})
        key = key_of(created["key_config"])
        Path(created["access_path"]).write_bytes(AESGCM(key.key).encrypt(key.nonce, plaintext, key.ad))
        return InputFile(user.name, created["file_id"], created["access_path"], key,
                         hashlib.sha256(plaintext).hexdigest(), len(plaintext))

    async def ready_task(self, users: tuple[User, User], inputs: tuple[InputFile, InputFile]) -> dict[str, Any]:
        """A psi task of the first user with the second as collaborator, approved: Ready."""
        creator, collaborator = users
        created = await self.call("mesatee-tms", {
            "type": "Create", "function_name": "psi", "collaborator_list": [collaborator.name],
            "files": [inputs[0].file_id], "user_id": creator.name, "user_token": creator.token})
        approved = await self.call("mesatee-tms", {
            "type": "Update", "task_id": created["task_id"], "files": [inputs[1].file_id],
            "user_id": collaborator.name, "user_token": collaborator.token})
        if approved.get("status") != "Ready":
            raise BenchError(f"the approved task is not Ready: {approved}")
        return created

    async def invoke(self, created: dict[str, Any], request_id: str) -> None:
        reply = await self.call("mesatee-fns", {"task_id": created["task_id"], "function_name": "psi",
                                                "task_token": created["task_token"], "payload": None},
                                request_id, timeout=INVOKE_TIMEOUT)
        if reply != {"result": "Finished"}:
            raise BenchError(f"the invoke answered {reply}")

    async def outputs(self, users: tuple[User, User], task_id: str) -> tuple[bytes, ...]:
        """Each user's private output of the task, fetched and decrypted as its owner would."""
        found = []
        for user in users:
            task = (await self.call("mesatee-tms", {"type": "Get", "task_id": task_id, "user_id": user.name,
                                                    "user_token": user.token}))["task_info"]
            (file_id,) = task["user_private_result_file_id"]
            info = (await self.call("mesatee-tdfs", {"type": "Get", "file_id": file_id, "user_id": user.name,
                                                     "user_token": user.token}))["file_info"]
            key = key_of(info["key_config"])
            plaintext = AESGCM(key.key).decrypt(key.nonce, Path(info["access_path"]).read_bytes(), key.ad)
            if hashlib.sha256(plaintext).hexdigest() != info["sha256"]:
                raise BenchError(f"the output {file_id} of {user.name} does not match its sha256")
            found.append(plaintext)
        return tuple(found)


async def start_node(children: Children, bus_url: str, data_dir: Path) -> tuple[Child, dict[str, str]]:
    config = data_dir / "bench-teebus.toml"
    config.write_text(NODE_CONFIG)
    ports = {site: free_port() for site in MESATEE.ports}
    argv = teebus_command("run", *NODE_NAMES, "--nats", bus_url, "--data-dir", str(data_dir), "--config",
                          str(config), "--log-level", "warning",
                          *(option for site, port in ports.items() for option in ("--port", f"{site}={port}")))
    child = await children.start("node", argv)
    return child, {site: f"http://127.0.0.1:{port}/" for site, port in ports.items()}


async def add_users(admin: Any, children: Children) -> tuple[User, User]:
    """Two users of this run, added once the registry answers."""
    requester, made = Requester(admin, timeout=CALL_TIMEOUT), []
    deadline = time.monotonic() + READY_TIMEOUT
    for index in (1, 2):
        user = User(f"bench{index}-{secrets.token_hex(4)}", secrets.token_urlsafe(24))
        while True:
            children.check_alive()
            try:
                await requester.request(subjects.users("add"), {"user_id": user.name, "token": user.token})
                break
            except Unavailable:
                if time.monotonic() > deadline:
                    raise BenchError(f"the user registry did not answer within {READY_TIMEOUT:.0f}s") from None
                await asyncio.sleep(0.1)
        made.append(user)
    return made[0], made[1]


async def wait_ready(node: Node, user: User) -> None:
    """Every external site answers (TMS List, TDFS List), and the FNS an invoke of no task (404)."""
    deadline, last = time.monotonic() + READY_TIMEOUT, "no answer"
    while time.monotonic() < deadline:
        node.children.check_alive()
        try:
            statuses = [(await node.post(site, body, timeout=5))[0] for site, body in (
                ("mesatee-tms", {"type": "List", "user_id": user.name, "user_token": user.token}),
                ("mesatee-tdfs", {"type": "List", "user_id": user.name, "user_token": user.token}),
                ("mesatee-fns", {"task_id": str(uuid.uuid4()), "function_name": "psi", "task_token": "0" * 32,
                                 "payload": None}))]
            if statuses == [200, 200, 404]:
                return
            last = f"statuses {statuses}"
        except BenchError as exc:
            last = str(exc)
        await asyncio.sleep(0.2)
    raise BenchError(f"the MesaTEE node was not ready within {READY_TIMEOUT:.0f}s: {last}")


class BusWatch:
    """The FNS's requests as they travel (admin sees every subject), by request id."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, str, str]] = []

    async def start(self, admin: Any) -> None:
        async def record(msg: Any) -> None:
            self.seen.append((time.perf_counter(), msg.subject, (msg.headers or {}).get(headers.REQUEST_ID, "")))

        await admin.subscribe("mesatee.>", cb=record)
        await admin.flush()

    def phases(self, request_id: str, started: float, ended: float) -> list[float] | None:
        """Seconds of each of PHASES, or None when the FNS's requests were not all seen."""
        mine = [(moment, subject) for moment, subject, rid in self.seen if rid == request_id]
        self.seen.clear()

        def first(subject: str) -> int | None:
            return next((i for i, (_, s) in enumerate(mine) if s == subject), None)

        def last(subject: str) -> int | None:
            return next((i for i in range(len(mine) - 1, -1, -1) if mine[i][1] == subject), None)

        marks = [first(subjects.tms_internal("Update")), last(subjects.kms("Get")),
                 first(subjects.tdfs_internal("Create")), last(subjects.tms_internal("Update"))]
        if None in marks or marks != sorted(set(marks)):
            return None
        bounds = [started, *(mine[i][0] for i in marks), ended]
        return [after - before for before, after in zip(bounds, bounds[1:])]


# --- stages and decrypt, in this process ----------------------------------------------------------

def measure_stages(inputs: tuple[InputFile, InputFile], directory: Path) -> dict[str, float]:
    """Each step of psi's pipeline once, as psi.run and the function node do them (both inputs per step)."""
    stages = dict.fromkeys(("read ciphertext", "decrypt (in place)", "verify sha256"), 0.0)
    plaintexts = []
    for file in inputs:
        started = time.perf_counter()
        ciphertext = files.read_ciphertext(file)
        decrypting = time.perf_counter()
        plaintext = files.decrypt(file, ciphertext)
        verifying = time.perf_counter()
        files.verify(file, plaintext)
        done = time.perf_counter()
        del ciphertext
        stages["read ciphertext"] += decrypting - started
        stages["decrypt (in place)"] += verifying - decrypting
        stages["verify sha256"] += done - verifying
        plaintexts.append(plaintext)
    started = time.perf_counter()
    bitmaps = psi.intersect(*plaintexts)
    stages["intersect"] = time.perf_counter() - started
    started = time.perf_counter()
    for index, plaintext in enumerate(bitmaps):
        key = KeyConfig(os.urandom(32), os.urandom(12), os.urandom(5))
        files.write_sealed(str(directory / f"stage-out-{index}"), key, plaintext)
    stages["encrypt + write outputs"] = time.perf_counter() - started
    return stages


def measure_decrypt(file: InputFile, report: Report) -> None:
    ciphertext = files.read_ciphertext(file)
    key = file.key
    aead = AESGCM(key.key)
    reused = bytearray(file.size)
    aead.decrypt_into(key.nonce, ciphertext, key.ad, reused)         # map the buffer once
    for _ in range(DECRYPT_SAMPLES):
        started = time.perf_counter()
        aead.decrypt_into(key.nonce, ciphertext, key.ad, reused)
        report.decrypt_reused.append(time.perf_counter() - started)
        started = time.perf_counter()
        sealed = files.read_ciphertext(file)                           # as psi reads an input
        report.read.append(time.perf_counter() - started)
        started = time.perf_counter()
        plaintext = files.decrypt(file, sealed)                        # the step itself, in place
        report.decrypt_step.append(time.perf_counter() - started)
        del plaintext, sealed


def worker_pids(parent: int) -> list[int]:
    """The function pool's workers among `parent`'s children (the pool keeps its processes private)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"_worker_main" in command:
            found.append(int(entry))
    return found


def peak_rss(pid: int) -> int:
    """VmHWM of a live process, in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    raise BenchError(f"no VmHWM for pid {pid} (the worker is gone?)")


# --- the run -------------------------------------------------------------------------------------

async def run_rounds(args: argparse.Namespace, report: Report, node: Node, users: tuple[User, User],
                     inputs: tuple[InputFile, InputFile], first: bytes, second: bytes, watch: BusWatch) -> None:
    expected = baseline(first, second)
    for round_ in range(args.rounds):
        progress(f"round {round_ + 1}/{args.rounds} ...")
        started = time.perf_counter()
        result = baseline(first, second)
        report.baseline.append(time.perf_counter() - started)
        if result != expected:
            raise BenchError("the baseline is not deterministic")
        del result
        created = await node.ready_task(users, inputs)
        request_id = f"bench-psi-{secrets.token_hex(6)}-{round_}"
        watch.seen.clear()
        started = time.perf_counter()
        await node.invoke(created, request_id)
        ended = time.perf_counter()
        report.invoke.append(ended - started)
        await asyncio.sleep(0.05)                      # the last bus messages reach the watch
        phases = watch.phases(request_id, started, ended)
        if phases is None:
            report.notes.append(f"round {round_ + 1}: the FNS's requests were not all seen on the bus; "
                                "no phases for it")
        else:
            report.phases.append(phases)
        if await node.outputs(users, created["task_id"]) != expected:
            raise BenchError("psi through the function node disagrees with the baseline")


async def through_the_node(args: argparse.Namespace, report: Report, data_dir: Path, bus: Any,
                           children: Children, first: bytes, second: bytes) -> tuple[InputFile, InputFile]:
    child, urls = await start_node(children, bus.url, data_dir)
    admin = await connect(bus.url, roles.ADMIN, passwords=bus.passwords, name="bench-psi-admin")
    try:
        async with aiohttp.ClientSession() as session:
            node = Node(child, children, urls, session)
            users = await add_users(admin, children)
            await wait_ready(node, users[0])
            progress("registering the inputs ...")
            inputs = (await node.register(users[0], first, "first"), await node.register(users[1], second, "second"))
            small = (await node.register(users[0], first[:RECORD * WARMUP_RECORDS], "small-1"),
                     await node.register(users[1], second[:RECORD * WARMUP_RECORDS], "small-2"))
            watch = BusWatch()
            await watch.start(admin)
            await node.invoke(await node.ready_task(users, small), "bench-psi-warmup")   # a warm worker
            workers = worker_pids(child.pid)
            if len(workers) != 1:
                raise BenchError(f"expected the node to run one function worker (fns_workers = 1), found {workers}")
            (worker,) = workers
            report.idle_peak = peak_rss(worker)
            await run_rounds(args, report, node, users, inputs, first, second, watch)
            if worker_pids(child.pid) != [worker]:
                raise BenchError("the function worker was replaced during the rounds")
            report.worker_peak = peak_rss(worker)
            children.check_alive()
            return inputs
    finally:
        await admin.close()


async def bench(args: argparse.Namespace) -> Report:
    with tempfile.TemporaryDirectory(prefix="teebus-bench-psi-") as tmp:
        directory = Path(tmp)
        data_dir = directory / "data"
        progress(f"making two files of {args.records:,} records ...")
        first, second = make_inputs(args.records)
        report = Report(args.records, args.rounds, len(first) + len(second))
        children = Children(directory / "logs")
        progress("starting a nats-server and the MesaTEE node ...")
        async with running_bus(data_dir, installed()) as bus:
            try:
                inputs = await through_the_node(args, report, data_dir, bus, children, first, second)
            except (BenchError, BusError) as exc:
                progress(f"node log:\n{children.tails()}")
                raise BenchError(str(exc)) from None
            finally:
                await children.stop_all()
        del first, second
        progress("stages and decryption, in this process ...")
        report.stages = measure_stages(inputs, directory)
        measure_decrypt(inputs[0], report)
        return report


# --- the report ----------------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "meets the target" if ok else "MISSES the target"


def print_report(report: Report) -> None:
    median = statistics.median
    a, b = median(report.baseline), median(report.invoke)
    inputs_mib = report.input_bytes / MIB
    print(f"\nteebus MesaTEE psi: 2 x {report.records:,} records of {RECORD} bytes "
          f"({inputs_mib:.1f} MiB of plaintext), half shared; {report.rounds} rounds; "
          f"{os.cpu_count()} CPUs; the node: `teebus run` of MesaTEE's components and HTTP adapter "
          f"on a nats-server, fns_workers = 1")
    for note in report.notes:
        print(f"note: {note}")
    print(f"\n  {'':50}{'median':>10}{'min':>10}{'max':>10}")
    for label, values in (("(a) baseline, in memory", report.baseline),
                          ("(b) invoke through the function node (HTTP)", report.invoke)):
        print(f"  {label:50}{median(values) * 1e3:>8.0f}ms{min(values) * 1e3:>8.0f}ms"
              f"{max(values) * 1e3:>8.0f}ms")
    if report.phases:
        print(f"\n  phases of (b), from the FNS's requests on the bus (median of {len(report.phases)}):")
        columns = list(zip(*report.phases))
        for label, values in zip(PHASES, columns):
            print(f"    {label:48}{median(values) * 1e3:>8.1f}ms{min(values) * 1e3:>8.1f}ms"
                  f"{max(values) * 1e3:>8.1f}ms")
    print("\n  the worker's work, stage by stage, once, in this process:")
    for label, seconds in report.stages.items():
        print(f"    {label:48}{seconds * 1e3:>8.0f}ms")
    print(f"    {'sum':48}{sum(report.stages.values()) * 1e3:>8.0f}ms")

    size = report.input_bytes // 2        # the first file's plaintext
    reused = size / median(report.decrypt_reused)
    step = size / median(report.decrypt_step)
    read = size / median(report.read)
    print(f"\n  (c) AES-GCM decrypt of {size / MIB:.1f} MiB (median of {DECRYPT_SAMPLES}):")
    print(f"    {'decrypt_into, one reused buffer (ceiling)':50}{reused / 1e9:>7.2f} GB/s")
    print(f"    {'pipeline: the decrypt step, in place':50}{step / 1e9:>7.2f} GB/s")
    print(f"    {'pipeline: the read before it (its buffer made)':50}{read / 1e9:>7.2f} GB/s"
          f"  ({median(report.read) * 1e3:.1f} ms)")

    peak_mib, idle_mib = report.worker_peak / MIB, report.idle_peak / MIB
    print(f"\n  (m) the FNS worker's peak RSS {peak_mib:.0f} MiB (after the warm-up only: {idle_mib:.0f} MiB); "
          f"4x the inputs: {4 * inputs_mib:.0f} MiB")

    memory = report.worker_peak / report.input_bytes
    print("\n  ratios:")
    print(f"    b/a   invoke over baseline            {b / a:5.2f}  (target <= {TARGET_INVOKE:g}: "
          f"{verdict(b / a <= TARGET_INVOKE)})")
    print(f"    m     worker peak over inputs         {memory:5.2f}x (target < {TARGET_MEMORY:g}x: "
          f"{verdict(memory < TARGET_MEMORY)})")
    print(f"    c'    decrypt step over ceiling       {step / reused:5.2f}  (target >= {TARGET_DECRYPT:g}: "
          f"{verdict(step / reused >= TARGET_DECRYPT)})")
    print(f"    r     the read over the ceiling       {read / reused:5.2f}  (informative: fresh memory, once "
          f"per input)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, help="records per file (default 1,000,000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of (a) and (b) (default 5)")
    args = parser.parse_args(argv)
    if args.records < WARMUP_RECORDS or args.rounds < 1:
        parser.error(f"--records must be at least {WARMUP_RECORDS} and --rounds at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log.configure("warning")
    code, report = run_until_done("mesatee_psi", lambda: bench(args), (BenchError, ServerError))
    if report is not None:
        print_report(report)
    return code


if __name__ == "__main__":
    sys.exit(main())
