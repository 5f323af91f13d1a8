"""What does psi cost through the Function Node's worker pool? Measured against plain Python, in one run.

Data: two files of `--records` 32-byte random records each (default 1,000,000): the first
shuffled, the second sorted ascending (as MesaTEE's psi clients sent it), sharing half their
records. Each is encrypted the way a TDFS client does it (AES-256-GCM `ciphertext || tag`, with
`cryptography` directly) into a temporary directory.

    (a) baseline  plain in-memory psi in this process: both plaintexts as lists of records, a set
                  intersection, one membership pass per side -- the same two bitmaps, nothing else
                  (no files, no crypto, no verification; memory is no concern to it);
    (b) pool      `await FunctionPool.run()` of a psi invocation on a warm worker process:
                  read both files, decrypt, verify size and sha256, intersect, reply with both
                  bitmaps; then, as the function node does once TDFS has registered them, each
                  sealed under a fresh key and written atomically (fsync). Its outputs are
                  decrypted and compared with (a)'s bitmaps.
    (c) decrypt   AES-GCM decrypt of the first file's ciphertext: `cryptography`'s `decrypt_into`
                  into one reused buffer (the ceiling) against the pipeline's own step
                  (`files.decrypt`): its `decrypt_into` call alone, into a buffer made as the
                  step makes it (`files.allocate`: a populated anonymous mapping), and the whole
                  step, making that buffer included (informative: the cost of fresh memory,
                  which a reused buffer never pays, and which the worker cannot avoid without
                  keeping a task's memory for the next one).
    (m) memory    peak RSS (VmHWM in /proc) of the worker process that ran (b), against 4x the
                  two inputs' plaintext size, and its peak after only a warm-up psi of 64 records
                  (what the interpreter and its imports take). Not getrusage(RUSAGE_CHILDREN): a
                  child forked from this large process and then exec'd keeps the RSS it had before
                  the exec as its maxrss.

For reading (b): "stages" times each step of the pipeline once in this process, so the distance
between (a) and (b) can be told apart (what verification and files cost, what the intersection
costs, what crossing to the worker costs). Rounds of (a) and (b) alternate, so drift in load from
elsewhere on the machine hits both alike; medians are reported.

How to read the ratios (lower is better for time, higher for throughput):
    b/a       pool over baseline -- target <= 2.0;
    m         worker peak over the inputs' plaintext size -- target < 4x;
    c         pipeline decrypt throughput over the reused-buffer ceiling -- target >= 0.8.

    python bench/mesatee_psi.py [--records 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/mesatee_psi.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.processes import BenchError, run_until_done
from bus import log
from components.mesatee.function_pool import FunctionPool, PoolConfig
from components.mesatee.functions import InputFile, Invocation, KeyConfig, files, psi

RECORD = 32
MIB = 1024 * 1024
TARGET_POOL = 2.0          # b / a at most
TARGET_MEMORY = 4.0        # worker peak RSS under 4x the inputs
TARGET_DECRYPT = 0.8       # pipeline decrypt throughput over the reused-buffer ceiling, at least
DECRYPT_SAMPLES = 7


@dataclass
class Report:
    records: int
    rounds: int
    input_bytes: int
    baseline: list[float] = field(default_factory=list)
    pool: list[float] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    decrypt_reused: list[float] = field(default_factory=list)
    decrypt_call: list[float] = field(default_factory=list)
    decrypt_step: list[float] = field(default_factory=list)
    idle_peak: int = 0
    worker_peak: int = 0


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


def new_key() -> KeyConfig:
    return KeyConfig(os.urandom(32), os.urandom(12), os.urandom(5))


def put(directory: Path, owner: str, name: str, plaintext: bytes) -> InputFile:
    """Encrypt as a TDFS client does, with `cryptography` directly."""
    key = new_key()
    path = directory / name
    path.write_bytes(AESGCM(key.key).encrypt(key.nonce, plaintext, key.ad))
    return InputFile(owner, name, str(path), key, hashlib.sha256(plaintext).hexdigest(), len(plaintext))


def seal_outputs(outputs: tuple[bytes, ...], directory: Path, tag: str) -> list[tuple[Path, KeyConfig]]:
    """What the function node does with a run's outputs: each sealed under a fresh key, written."""
    sealed = []
    for index, plaintext in enumerate(outputs):
        key, path = new_key(), directory / f"out-{tag}-{index}"
        files.write_sealed(str(path), key, plaintext)
        sealed.append((path, key))
    return sealed


def open_output(path: Path, key: KeyConfig) -> bytes:
    return AESGCM(key.key).decrypt(key.nonce, path.read_bytes(), key.ad)


# --- (a) the baseline ----------------------------------------------------------------------------

def baseline(first: bytes, second: bytes) -> tuple[bytes, bytes]:
    """Plain in-memory psi: lists of records, a set intersection, a membership pass per side."""
    a = [first[i:i + RECORD] for i in range(0, len(first), RECORD)]
    b = [second[i:i + RECORD] for i in range(0, len(second), RECORD)]
    common = set(a).intersection(b)
    return bytes(map(common.__contains__, a)), bytes(map(common.__contains__, b))


# --- stages and decrypt, in this process ----------------------------------------------------------

def measure_stages(inputs: tuple[InputFile, InputFile], directory: Path) -> dict[str, float]:
    """Each step of psi's pipeline once, as psi.run does them (both inputs per step)."""
    stages = dict.fromkeys(("read ciphertext", "decrypt (incl. its buffer)", "verify sha256"), 0.0)
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
        stages["decrypt (incl. its buffer)"] += verifying - decrypting
        stages["verify sha256"] += done - verifying
        plaintexts.append(plaintext)
    started = time.perf_counter()
    bitmaps = psi.intersect(*plaintexts)
    stages["intersect"] = time.perf_counter() - started
    started = time.perf_counter()
    written = seal_outputs(bitmaps, directory, "stage")
    stages["encrypt + write outputs"] = time.perf_counter() - started
    for path, _ in written:
        path.unlink()
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
        fresh = files.allocate(file.size)                              # as files.decrypt makes it
        started = time.perf_counter()
        AESGCM(key.key).decrypt_into(key.nonce, ciphertext, key.ad, fresh)   # as files.decrypt calls it
        report.decrypt_call.append(time.perf_counter() - started)
        del fresh
        started = time.perf_counter()
        plaintext = files.decrypt(file, ciphertext)                    # the step itself
        report.decrypt_step.append(time.perf_counter() - started)
        del plaintext


def worker_pids() -> list[int]:
    """This process's children that are pool workers (the pool keeps its processes private)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if parent == os.getpid() and b"_worker_main" in command:
            found.append(int(entry))
    return found


def peak_rss(pid: int) -> int:
    """VmHWM of a live process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmHWM for pid {pid}")


# --- the run -------------------------------------------------------------------------------------

async def bench(args: argparse.Namespace) -> Report:
    with tempfile.TemporaryDirectory(prefix="teebus-bench-psi-") as tmp:
        directory = Path(tmp)
        print(f"making two files of {args.records:,} records ...", file=sys.stderr)
        first, second = make_inputs(args.records)
        inputs = (put(directory, "user1", "first", first), put(directory, "user2", "second", second))
        report = Report(args.records, args.rounds, len(first) + len(second))

        small = (put(directory, "user1", "small-1", first[:RECORD * 64]),
                 put(directory, "user2", "small-2", second[:RECORD * 64]))
        expected = baseline(first, second)
        async with FunctionPool(PoolConfig(workers=1, deadline_seconds=600)) as pool:
            await pool.run(Invocation("psi", None, small))                          # a warm worker
            (worker,) = worker_pids()
            report.idle_peak = peak_rss(worker)
            for round_ in range(args.rounds):
                print(f"round {round_ + 1}/{args.rounds} ...", file=sys.stderr)
                started = time.perf_counter()
                result = baseline(first, second)
                report.baseline.append(time.perf_counter() - started)
                if result != expected:
                    raise BenchError("the baseline is not deterministic")
                started = time.perf_counter()
                outcome = await pool.run(Invocation("psi", None, inputs))
                written = await asyncio.to_thread(seal_outputs, outcome.outputs, directory, f"r{round_}")
                report.pool.append(time.perf_counter() - started)
                if outcome.result != "Finished" or tuple(open_output(*w) for w in written) != expected:
                    raise BenchError("psi through the pool disagrees with the baseline")
                for path, _ in written:
                    path.unlink()
            if worker_pids() != [worker]:
                raise BenchError("the worker was replaced during the rounds")
            report.worker_peak = peak_rss(worker)
        del first, second, expected, result
        report.stages = measure_stages(inputs, directory)
        measure_decrypt(inputs[0], report)
        return report


# --- the report ----------------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "meets the target" if ok else "MISSES the target"


def print_report(report: Report) -> None:
    median = statistics.median
    a, b = median(report.baseline), median(report.pool)
    inputs_mib = report.input_bytes / MIB
    print(f"\nteebus MesaTEE psi: 2 x {report.records:,} records of {RECORD} bytes "
          f"({inputs_mib:.1f} MiB of plaintext), half shared; {report.rounds} rounds; "
          f"{os.cpu_count()} CPUs")
    print(f"\n  {'':44}{'median':>10}{'min':>10}{'max':>10}")
    for label, values in (("(a) baseline, in memory", report.baseline),
                          ("(b) FunctionPool.run (files, crypto, worker)", report.pool)):
        print(f"  {label:44}{median(values) * 1e3:>8.0f}ms{min(values) * 1e3:>8.0f}ms"
              f"{max(values) * 1e3:>8.0f}ms")
    print("\n  stages of (b), once, in this process:")
    for label, seconds in report.stages.items():
        print(f"    {label:42}{seconds * 1e3:>8.0f}ms")
    print(f"    {'sum':42}{sum(report.stages.values()) * 1e3:>8.0f}ms")

    size = report.input_bytes // 2        # the first file's plaintext
    reused = size / median(report.decrypt_reused)
    call = size / median(report.decrypt_call)
    step = size / median(report.decrypt_step)
    print(f"\n  (c) AES-GCM decrypt of {size / MIB:.1f} MiB (median of {DECRYPT_SAMPLES}):")
    print(f"    {'decrypt_into, reused buffer (ceiling)':46}{reused / 1e9:>7.2f} GB/s")
    print(f"    {'pipeline: its decrypt_into call':46}{call / 1e9:>7.2f} GB/s")
    print(f"    {'pipeline: the whole step, making its buffer':46}{step / 1e9:>7.2f} GB/s")

    peak_mib, idle_mib = report.worker_peak / MIB, report.idle_peak / MIB
    print(f"\n  (m) worker peak RSS {peak_mib:.0f} MiB (after the warm-up only: {idle_mib:.0f} MiB); "
          f"4x the inputs: {4 * inputs_mib:.0f} MiB")

    memory = report.worker_peak / report.input_bytes
    print("\n  ratios:")
    print(f"    b/a   pool over baseline            {b / a:5.2f}  (target <= {TARGET_POOL:g}: "
          f"{verdict(b / a <= TARGET_POOL)})")
    print(f"    m     worker peak over inputs       {memory:5.2f}x (target < {TARGET_MEMORY:g}x: "
          f"{verdict(memory < TARGET_MEMORY)})")
    print(f"    c     decrypt call over ceiling     {call / reused:5.2f}  (target >= {TARGET_DECRYPT:g}: "
          f"{verdict(call / reused >= TARGET_DECRYPT)})")
    print(f"    c'    with making its buffer        {step / reused:5.2f}  (informative: the cost "
          f"of fresh memory, which a reused buffer never pays)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, help="records per file (default 1,000,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (a) and (b) (default 3)")
    args = parser.parse_args(argv)
    if args.records < 2 or args.rounds < 1:
        parser.error("--records must be at least 2 and --rounds at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log.configure("warning")
    code, report = run_until_done("mesatee_psi", lambda: bench(args), (BenchError,))
    if report is not None:
        print_report(report)
    return code


if __name__ == "__main__":
    sys.exit(main())
