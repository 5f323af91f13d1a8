"""The Function Node's functions (echo, psi) and the worker pool that runs them; no bus.

Input files are written by this test's own code with `cryptography` directly, as a TDFS client
would, and outputs are opened the same way, so the functions' file helpers are checked, not
trusted. Pool behaviour that needs a task to hang or crash uses `Probe`, a function of this module
given to the pool as its own registry entry: the shipped registry holds no test functions.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import stat
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from components.mesatee.function_pool import (DeadlineExceeded, FunctionPool, PoolBusy, PoolConfig,
                                              PoolStopped)
from components.mesatee.functions import (FUNCTIONS, FunctionFailed, InputFile, Invocation,
                                          KeyConfig, Outcome, UnknownFunction, echo,
                                          files, function, is_multiparty, psi)

A, B, C, D, E = (bytes([letter]) * 32 for letter in b"abcde")
GOLDEN_FIRST, GOLDEN_SECOND = A + B + D + E, B + C + D
GOLDEN_OUTPUTS = (b"\x00\x01\x01\x00", b"\x01\x00\x01")


class Probe:
    """A test-only function run in the pool's workers; its JSON payload says what to do:
    `pidfile` (write the worker's pid there first), `crash` (SIGKILL itself), `until` (wait for
    that file to exist, at most 30 s), `sleep` (seconds)."""

    NAME = "probe"
    MULTIPARTY = False
    INLINE = False

    @staticmethod
    def output_owners(inputs) -> list[str]:
        return []

    @staticmethod
    def run(invocation: Invocation) -> Outcome:
        order = json.loads(invocation.payload or "{}")
        if "pidfile" in order:
            Path(order["pidfile"] + ".tmp").write_text(str(os.getpid()))
            os.replace(order["pidfile"] + ".tmp", order["pidfile"])
        if order.get("crash"):
            os.kill(os.getpid(), signal.SIGKILL)
        if "until" in order:
            give_up = time.monotonic() + 30
            while not os.path.exists(order["until"]) and time.monotonic() < give_up:
                time.sleep(0.005)
        time.sleep(order.get("sleep", 0))
        return Outcome("done")


REGISTRY = {**FUNCTIONS, Probe.NAME: Probe}


# --- files as a TDFS client makes them -----------------------------------------------------------

def new_key() -> KeyConfig:
    return KeyConfig(os.urandom(32), os.urandom(12), os.urandom(5))


def put(directory: Path, owner: str, file_id: str, plaintext: bytes, **registered) -> InputFile:
    """Encrypt `plaintext` to `directory/file_id` and describe it as TDFS would (or as told)."""
    key = new_key()
    path = directory / file_id
    path.write_bytes(AESGCM(key.key).encrypt(key.nonce, plaintext, key.ad))
    return InputFile(owner, file_id, str(path), key,
                     registered.get("sha256", hashlib.sha256(plaintext).hexdigest()),
                     registered.get("size", len(plaintext)))


def golden(directory: Path) -> Invocation:
    first = put(directory, "user1", "f1", GOLDEN_FIRST)
    second = put(directory, "user2", "f2", GOLDEN_SECOND)
    return Invocation("psi", None, (first, second))


def probe(**order) -> Invocation:
    return Invocation("probe", json.dumps(order))


async def wait_for_file(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        await asyncio.sleep(0.01)


def gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


@pytest.fixture(scope="module")
async def pool():
    """Two workers shared by most tests (a killed worker leaves a vacant slot the next task fills)."""
    async with FunctionPool(PoolConfig(workers=2, deadline_seconds=30), functions=REGISTRY) as shared:
        yield shared


# --- interface ---------------------------------------------------------------------------------

def test_registry_names_and_kinds():
    assert set(FUNCTIONS) == {"echo", "psi"}
    assert function("psi") is psi and function("echo") is echo
    assert is_multiparty("psi") and not is_multiparty("echo") and not is_multiparty("concat")
    with pytest.raises(KeyError) as caught:
        function("concat")
    assert isinstance(caught.value, UnknownFunction) and isinstance(caught.value, FunctionFailed)
    assert str(caught.value) == "no function named 'concat'; this function node serves: echo, psi"
    files_ = [InputFile("user1", "f1", "/x", new_key(), "0" * 64, 0),
              InputFile("user2", "f2", "/y", new_key(), "0" * 64, 0)]
    assert psi.output_owners(files_) == ["user1", "user2"]
    assert echo.output_owners(files_) == []


def test_values_are_validated_and_keys_stay_out_of_repr():
    key = new_key()
    assert key.key.hex() not in repr(key)
    for wrong in ({"key": b"k" * 16}, {"nonce": b"n" * 16}, {"ad": b"a" * 4}):
        with pytest.raises(ValueError):
            KeyConfig(**{"key": b"k" * 32, "nonce": b"n" * 12, "ad": b"a" * 5, **wrong})
    with pytest.raises(ValueError, match="64 hex digits"):
        InputFile("user1", "f1", "/x", key, "abc", 3)
    with pytest.raises(ValueError, match="non-negative"):
        InputFile("user1", "f1", "/x", key, "0" * 64, -1)
    assert InputFile("user1", "f1", "/x", key, "AB" * 32, 1).sha256 == "ab" * 32
    invocation = Invocation("psi", None, [InputFile("user1", "f1", "/x", key, "0" * 64, 0)])
    assert isinstance(invocation.inputs, tuple)
    for wrong in ({"workers": 0}, {"deadline_seconds": 0}, {"deadline_seconds": float("inf")},
                  {"max_queued": -1}):
        with pytest.raises(ValueError):
            PoolConfig(**wrong)


def test_intersect_matches_a_naive_intersection_on_unsorted_inputs():
    rng = random.Random(7)
    pool_of_records = [rng.randbytes(32) for _ in range(300)]
    for first_count, second_count in ((200, 120), (50, 250), (0, 10)):
        first = [rng.choice(pool_of_records) for _ in range(first_count)]     # duplicates too
        second = [rng.choice(pool_of_records) for _ in range(second_count)]
        got = psi.intersect(b"".join(first), b"".join(second))
        assert got == (bytes(record in second for record in first),
                       bytes(record in first for record in second))
    assert psi.intersect(GOLDEN_FIRST, GOLDEN_SECOND) == GOLDEN_OUTPUTS


# --- functions through the pool ------------------------------------------------------------------

async def test_golden_psi_gives_each_party_its_own_bitmap(pool, tmp_path):
    invocation = golden(tmp_path)
    outcome = await pool.run(invocation)
    assert outcome == Outcome("Finished", GOLDEN_OUTPUTS)
    assert psi.output_owners(invocation.inputs) == ["user1", "user2"]
    assert sorted(os.listdir(tmp_path)) == ["f1", "f2"]          # the function node writes outputs


async def test_echo(pool):
    assert await pool.run(Invocation("echo", "echo_payload")) == Outcome("echo_payload")
    assert await pool.run(Invocation("echo", "")) == Outcome("")
    with pytest.raises(FunctionFailed, match="echo needs a payload"):
        await pool.run(Invocation("echo", None))


async def test_unknown_function_fails_the_task(pool):
    with pytest.raises(UnknownFunction, match="serves: echo, probe, psi"):
        await pool.run(Invocation("concat", None))


def _tampered(directory: Path) -> Invocation:
    invocation = golden(directory)
    path = Path(invocation.inputs[1].path)
    data = bytearray(path.read_bytes())
    data[5] ^= 1
    path.write_bytes(bytes(data))
    return invocation


def _with_inputs(directory: Path, *inputs: InputFile) -> Invocation:
    return Invocation("psi", None, inputs)


BAD_INPUTS = {
    "tampered": (_tampered, "input file f2 of user2 does not decrypt with its key: the stored "
                            "ciphertext was altered or is not this file's"),
    "wrong sha256": (lambda d: _with_inputs(d, put(d, "user1", "f1", GOLDEN_FIRST, sha256="0" * 64),
                                            put(d, "user2", "f2", GOLDEN_SECOND)),
                     "sha256 of input file f1 of user1 does not match the registered one"),
    "wrong size": (lambda d: _with_inputs(d, put(d, "user1", "f1", GOLDEN_FIRST),
                                          put(d, "user2", "f2", GOLDEN_SECOND, size=64)),
                   "input file f2 of user2 is 112 bytes on disk, but its registered size of 64 bytes "
                   "encrypts to 80"),
    "partial record": (lambda d: _with_inputs(d, put(d, "user1", "f1", GOLDEN_FIRST),
                                              put(d, "user2", "f2", GOLDEN_SECOND[:95])),
                       "input file f2 of user2 is 95 bytes, not a whole number of 32-byte records"),
    "one input": (lambda d: _with_inputs(d, put(d, "user1", "f1", GOLDEN_FIRST)),
                  "psi takes exactly two input files (the creator's, then the collaborator's); "
                  "this task has 1"),
    "three inputs": (lambda d: _with_inputs(d, *(put(d, f"user{i}", f"f{i}", GOLDEN_FIRST)
                                                 for i in (1, 2, 3))),
                     "psi takes exactly two input files"),
    "missing": (lambda d: _with_inputs(d, put(d, "user1", "f1", GOLDEN_FIRST),
                                       InputFile("user2", "f2", str(d / "nothing"), new_key(), "0" * 64, 32)),
                "input file f2 of user2 is missing"),
    "too large": (lambda d: _with_inputs(d, put(d, "user1", "f1", GOLDEN_FIRST),
                                         InputFile("user2", "f2", str(d / "f1"), new_key(), "0" * 64, 2 << 30)),
                  "input file f2 of user2 is 2147483648 bytes; a function reads at most 1073741824 bytes"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
async def test_bad_inputs_fail_with_a_reason(pool, tmp_path, case):
    make, reason = BAD_INPUTS[case]
    invocation = make(tmp_path)
    with pytest.raises(FunctionFailed) as caught:
        await pool.run(invocation)
    assert type(caught.value) is FunctionFailed
    assert reason in str(caught.value)


@pytest.mark.parametrize("size", [0, 32, 3 * (1 << 20) + 5])     # empty; one record; a mapped buffer
def test_an_input_decrypts_in_place_to_its_plaintext(tmp_path, size):
    """files.decrypt opens the ciphertext in its own buffer (an exact overlap, which OpenSSL allows):
    a `cryptography` that read ahead of what it wrote, or refused the overlap, fails here."""
    plaintext = os.urandom(size)
    file = put(tmp_path, "user1", "f1", plaintext)
    sealed = files.read_ciphertext(file)
    opened = files.decrypt(file, sealed)
    assert bytes(opened) == plaintext and len(sealed) == size + files.TAG_BYTES
    assert bytes(files.read_input(file)) == plaintext


def test_outputs_are_sealed_and_replace_atomically(tmp_path, monkeypatch):
    """The final path holds the old file or the whole new one: the new one is complete (it
    decrypts) before the rename that makes it visible."""
    key, path = new_key(), tmp_path / "out"
    path.write_bytes(b"old")
    seen = []
    real_replace = os.replace

    def replace(source, target):
        seen.append((Path(target).read_bytes(), AESGCM(key.key).decrypt(key.nonce, Path(source).read_bytes(), key.ad)))
        real_replace(source, target)

    monkeypatch.setattr(files.os, "replace", replace)
    files.write_sealed(str(path), key, b"\x01\x00")
    assert seen == [(b"old", b"\x01\x00")]
    assert AESGCM(key.key).decrypt(key.nonce, path.read_bytes(), key.ad) == b"\x01\x00"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600                # the sealed file, not the old one
    assert sorted(os.listdir(tmp_path)) == ["out"]                     # no .partial left
    with pytest.raises(OSError):
        files.write_sealed(str(tmp_path / "no-such-dir" / "out"), key, b"\x01")


# --- the pool ------------------------------------------------------------------------------------

async def test_a_long_task_does_not_block_short_ones(pool, tmp_path):
    finished = []

    async def tracked(label, invocation):
        outcome = await pool.run(invocation)
        finished.append(label)
        return outcome

    release = tmp_path / "release"
    long = asyncio.create_task(tracked("long", probe(pidfile=str(tmp_path / "pid"), until=str(release))))
    await wait_for_file(tmp_path / "pid")                 # the long task holds one worker now
    assert (await tracked("echo", Invocation("echo", "hi"))).result == "hi"
    assert (await tracked("psi", golden(tmp_path))).result == "Finished"   # on the other worker
    assert not long.done()
    release.touch()
    assert (await long).result == "done"
    assert finished == ["echo", "psi", "long"]


async def test_deadline_kills_a_runaway_and_the_pool_recovers(tmp_path):
    async with FunctionPool(PoolConfig(workers=1, deadline_seconds=0.5), functions=REGISTRY) as own:
        with pytest.raises(DeadlineExceeded) as caught:
            await own.run(probe(pidfile=str(tmp_path / "pid"), sleep=60))
        assert str(caught.value) == "probe ran past its deadline of 0.5 s and was stopped"
        assert gone(int((tmp_path / "pid").read_text()))
        assert (await own.run(golden(tmp_path))).result == "Finished"    # on a fresh worker


async def test_a_dead_worker_fails_the_task_and_is_replaced(tmp_path):
    async with FunctionPool(PoolConfig(workers=1), functions=REGISTRY) as own:
        with pytest.raises(FunctionFailed) as caught:
            await own.run(probe(crash=True))
        assert str(caught.value).startswith("the worker running probe died (killed by SIGKILL")
        assert (await own.run(probe(pidfile=str(tmp_path / "pid")))).result == "done"
        idle = int((tmp_path / "pid").read_text())
        os.kill(idle, signal.SIGKILL)                     # the OOM killer picks an idle worker
        while not gone(idle):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)                         # the loop sees its pipe close
        assert (await own.run(probe())).result == "done"


async def test_queue_bound_and_stop_kills_running_work(tmp_path):
    own = FunctionPool(PoolConfig(workers=1, max_queued=1), functions=REGISTRY)
    await own.start()                                     # returns once the worker is up
    running = asyncio.create_task(own.run(probe(pidfile=str(tmp_path / "pid"), until=str(tmp_path / "never"))))
    await wait_for_file(tmp_path / "pid")
    queued = asyncio.create_task(own.run(probe()))
    await asyncio.sleep(0.05)
    with pytest.raises(PoolBusy, match=r"busy: 1 tasks running, 1 waiting \(its limit\)"):
        await own.run(probe())
    await asyncio.wait_for(own.stop(), 5)                 # promptly, though the task would hang
    with pytest.raises(PoolStopped, match="stopped while probe was running"):
        await running
    with pytest.raises(PoolStopped, match="stopped before probe started"):
        await queued
    assert gone(int((tmp_path / "pid").read_text()))
    with pytest.raises(PoolStopped):
        await own.run(probe())


async def test_cancelling_a_task_kills_its_worker(pool, tmp_path):
    task = asyncio.create_task(pool.run(probe(pidfile=str(tmp_path / "pid"), until=str(tmp_path / "never"))))
    await wait_for_file(tmp_path / "pid")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gone(int((tmp_path / "pid").read_text()))
    assert (await pool.run(probe())).result == "done"
