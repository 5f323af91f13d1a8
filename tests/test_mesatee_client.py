"""MesaTEE's Python client and `teebus mesatee upload|task|result` verbs, against real components:
sealing exactly as AES-GCM does, the seed's psi flow for two users, downloads that refuse altered
bytes, clear errors, and following a task's events until it ends."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import sys
import uuid
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bus import log
from bus.requester import Requester
from bus.server import free_port
from components.mesatee import cli as mesatee_cli
from components.mesatee import subjects
from components.mesatee.client import LOCAL, MesateeClient, MesateeError
from components.mesatee.tdfs_messages import MAX_FILE_SIZE
from components.mesatee.watch import describe, watch_task
from teebus import cli
from teebus.cli import build_parser, settings_from
from teebus.launcher import Node
from teebus.testing import settings_for

NAMES = ["mesatee.users", "mesatee.kms", "mesatee.tdfs", "mesatee.tms", "mesatee.fns", "http.mesatee"]
A, B, C, D, E = (bytes([c]) * 32 for c in b"abcde")
FIRST, SECOND = A + B + D + E, B + C + D                 # FACTS.md's golden psi case
FIRST_OUT, SECOND_OUT = bytes([0, 1, 1, 0]), bytes([1, 0, 1])


class Stack:
    """One node of every MesaTEE service on free ports (as in tests/test_mesatee_tasks.py)."""

    def __init__(self, bus, catalog) -> None:
        self.node = Node(settings_for(bus, catalog), NAMES, catalog)

    def url(self, site: str) -> str:
        return self.node.http.bound[site]


@pytest.fixture(scope="module")
async def stack(bus, catalog):
    running = Stack(bus, catalog)
    await running.node.start()
    yield running
    await running.node.stop()


@pytest.fixture
async def users(stack, connect_as):
    """Two fresh users of this test (tests share one bus): (name, token) pairs."""
    requester = Requester(await connect_as("admin"))
    made = []
    for _ in range(2):
        name = f"c{uuid.uuid4().hex[:10]}"
        made.append((name, (await requester.request(subjects.users("add"), {"user_id": name})).payload["user_token"]))
    return made


def client_of(stack: Stack, user: tuple[str, str], **urls: str) -> MesateeClient:
    return MesateeClient(*user, tdfs=urls.get("tdfs", stack.url("mesatee-tdfs")),
                         tms=urls.get("tms", stack.url("mesatee-tms")), fns=urls.get("fns"))


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- the client ---------------------------------------------------------------------------------------------

async def test_upload_seals_a_multi_mib_file_exactly_as_aesgcm(stack, users, tmp_path):
    plaintext = os.urandom(5 * 1024 * 1024 + 7)
    seen: list[tuple[str, int, int]] = []
    async with client_of(stack, users[0]) as client:
        file_id = await client.upload(write(tmp_path / "big.bin", plaintext),
                                      progress=lambda *step: seen.append(step))
        info = await client.get_file(file_id)
    key, nonce, ad = (base64.b64decode(info["key_config"][k]) for k in ("key", "nonce", "ad"))
    assert Path(info["access_path"]).read_bytes() == AESGCM(key).encrypt(nonce, plaintext, ad)
    assert (info["file_name"], info["file_size"], info["sha256"]) == (
        "big.bin", len(plaintext), hashlib.sha256(plaintext).hexdigest())
    assert [s for s in seen if s[0] == "hash"][-1] == ("hash", len(plaintext), len(plaintext))
    assert [s for s in seen if s[0] == "upload"][-1] == ("upload", len(plaintext), len(plaintext))


async def test_the_seed_psi_for_two_users_through_the_client(stack, users, tmp_path):
    async with client_of(stack, users[0]) as first, client_of(stack, users[1]) as second:
        mine = await first.upload(write(tmp_path / "first.bin", FIRST))
        theirs = await second.upload(write(tmp_path / "second.bin", SECOND))
        created = await first.create_task("psi", [users[1][0]], [mine])
        assert (await second.get_task(created["task_id"]))["status"] == "Created"
        approved = await second.approve(created["task_id"], [theirs])
        assert approved["status"] == "Ready" and approved["task_token"] == created["task_token"]
        assert await first.invoke(created["task_id"], "psi", created["task_token"]) == {"result": "Finished"}
        assert created["task_id"] in await second.list_tasks()
        got_first = await first.download_results(created["task_id"], tmp_path / "out1")
        got_second = await second.download_results(created["task_id"], tmp_path / "out2")
    assert [Path(f["path"]).read_bytes() for f in got_first] == [FIRST_OUT]
    assert [Path(f["path"]).read_bytes() for f in got_second] == [SECOND_OUT]
    assert got_first[0]["sha256"] == hashlib.sha256(FIRST_OUT).hexdigest()
    assert sorted(p.name for p in (tmp_path / "out1").iterdir()) == [got_first[0]["file_id"]]   # no leftovers


async def test_a_tampered_file_does_not_download_and_leaves_nothing(stack, users, tmp_path):
    plaintext = os.urandom(3 * 1024 * 1024)
    async with client_of(stack, users[0]) as client:
        file_id = await client.upload(write(tmp_path / "plain.bin", plaintext))
        stored = Path((await client.get_file(file_id))["access_path"])
        good = await client.download(file_id, tmp_path / "good.bin")
        assert Path(good["path"]).read_bytes() == plaintext
        sealed = bytearray(stored.read_bytes())
        sealed[len(sealed) // 2] ^= 0x01
        stored.write_bytes(bytes(sealed))
        out = tmp_path / "out"
        out.mkdir()
        with pytest.raises(MesateeError) as refused:
            await client.download(file_id, out / "result.bin")
    assert refused.value.status == LOCAL and "tag does not match" in refused.value.message
    assert list(out.iterdir()) == []                 # neither the destination nor a temporary file


async def test_a_download_that_does_not_verify_keeps_an_existing_destination(stack, users, tmp_path):
    async with client_of(stack, users[0]) as client:
        file_id = await client.upload(write(tmp_path / "plain.bin", b"x" * 1000))
        stored = Path((await client.get_file(file_id))["access_path"])
        stored.write_bytes(stored.read_bytes()[:-1] + bytes([stored.read_bytes()[-1] ^ 1]))   # the tag itself
        dest = write(tmp_path / "dest.bin", b"what was there before")
        with pytest.raises(MesateeError, match="tag does not match"):
            await client.download(file_id, dest)
    assert dest.read_bytes() == b"what was there before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest.bin", "plain.bin"]


async def test_an_empty_file_round_trips_into_a_directory(stack, users, tmp_path):
    async with client_of(stack, users[0]) as client:
        file_id = await client.upload(write(tmp_path / "empty.bin", b""), file_name="nothing")
        (tmp_path / "into").mkdir()
        got = await client.download(file_id, tmp_path / "into")
        info = await client.get_file(file_id)
    assert Path(got["path"]) == tmp_path / "into" / file_id and Path(got["path"]).read_bytes() == b""
    assert (info["file_name"], info["file_size"]) == ("nothing", 0)
    assert Path(info["access_path"]).stat().st_size == 16          # the tag alone


async def test_a_file_over_the_u32_limit_is_refused_before_registering(stack, users, tmp_path):
    sparse = tmp_path / "huge.bin"
    with open(sparse, "wb") as f:
        f.truncate(MAX_FILE_SIZE + 1)                # no disk used: only its size counts
    async with client_of(stack, users[0]) as client:
        with pytest.raises(MesateeError, match="at most 4294967295") as refused:
            await client.upload(sparse)
        assert refused.value.status == LOCAL
        assert await client.list_files() == []


async def test_a_file_that_changes_during_its_upload_is_not_stored(stack, users, tmp_path):
    path = write(tmp_path / "moving.bin", os.urandom(3 * 1024 * 1024))

    def change_it(phase: str, done: int, total: int) -> None:
        if phase == "upload" and done == 1024 * 1024:     # after the hash, before the last pieces
            with open(path, "r+b") as f:
                f.seek(2 * 1024 * 1024)
                f.write(b"changed")

    async with client_of(stack, users[0]) as client:
        with pytest.raises(MesateeError, match="changed while it was uploaded"):
            await client.upload(path, progress=change_it)
        assert await client.list_files() == []          # its registration was deleted again


async def test_errors_carry_the_apis_status_and_message(stack, users):
    async with client_of(stack, users[0]) as client:
        with pytest.raises(MesateeError) as missing:
            await client.get_task(str(uuid.uuid4()))
        with pytest.raises(MesateeError) as unknown:
            await client.create_task("no_such_function")
    assert missing.value.status == 404 and missing.value.body["type"] == "Error"
    assert unknown.value.status == 404 and "psi" in unknown.value.message
    async with client_of(stack, (users[0][0], "wrong")) as client:
        with pytest.raises(MesateeError) as refused:
            await client.list_tasks()
    assert refused.value.status == 401


async def test_an_unreachable_site_is_named_with_its_url(stack, users):
    dead = f"http://127.0.0.1:{free_port()}"
    async with client_of(stack, users[0], tms=dead) as client:
        with pytest.raises(MesateeError) as refused:
            await client.list_tasks()
    assert refused.value.status == LOCAL
    assert "task management service (TMS)" in refused.value.message and dead in refused.value.message


# -- watching ----------------------------------------------------------------------------------------------

async def approved_psi(stack: Stack, users, tmp_path: Path) -> tuple[dict, MesateeClient, MesateeClient]:
    """A psi task of users[0], waiting for users[1]'s approval, and both users' open clients."""
    first, second = client_of(stack, users[0]), client_of(stack, users[1])
    await first.__aenter__()
    await second.__aenter__()
    mine = await first.upload(write(tmp_path / "first.bin", FIRST))
    created = await first.create_task("psi", [users[1][0]], [mine])
    return created, first, second


async def test_watch_follows_a_task_through_its_events_to_the_end(stack, users, connect_as, tmp_path):
    created, first, second = await approved_psi(stack, users, tmp_path)
    observer = await connect_as("observer")
    changes: list[dict] = []
    try:
        watching = asyncio.create_task(watch_task(first, created["task_id"], observer, timeout=30,
                                                  on_change=changes.append, recheck=60))
        while not changes:                                # the watcher has subscribed and read the task
            await asyncio.sleep(0.01)
        theirs = await second.upload(write(tmp_path / "second.bin", SECOND))
        await second.approve(created["task_id"], [theirs])
        await first.invoke(created["task_id"], "psi", created["task_token"])
        final = await watching
    finally:
        await first.__aexit__()
        await second.__aexit__()
        await observer.close()
    assert [describe(c) for c in changes] == [
        f"Created (waiting for the approval of {users[1][0]})", f"approved by {users[1][0]}",
        "Ready", "Running", "Finished"]
    assert final["status"] == "Finished" and len(final["user_private_result_file_id"]) == 1


async def test_watch_of_an_ended_task_returns_at_once_and_polls_without_a_bus(stack, users, tmp_path):
    async with client_of(stack, users[0]) as client:
        echo = await client.create_task("echo")
        await client.invoke(echo["task_id"], "echo", echo["task_token"], "hi")
        changes: list[dict] = []
        final = await watch_task(client, echo["task_id"], None, timeout=5, on_change=changes.append)
        assert final["status"] == "Finished" and [describe(c) for c in changes] == ["Finished"]
        failing = await client.create_task("echo")
        polled: list[dict] = []
        watching = asyncio.create_task(watch_task(client, failing["task_id"], None, timeout=10,
                                                  on_change=polled.append, recheck=0.05))
        while not polled:                                 # it has read the task (Ready)
            await asyncio.sleep(0.01)
        with pytest.raises(MesateeError):
            await client.invoke(failing["task_id"], "echo", failing["task_token"], None)   # null payload fails
        final = await watching
    assert final["status"] == "Failed" and polled[0]["status"] == "Ready"
    assert polled[-1]["status"] == "Failed" and "payload" in polled[-1]["reason"]


async def test_watch_gives_up_after_its_timeout(stack, users, connect_as, tmp_path):
    created, first, second = await approved_psi(stack, users, tmp_path)
    observer = await connect_as("observer")
    try:
        with pytest.raises(TimeoutError, match="still Created"):
            await watch_task(first, created["task_id"], observer, timeout=0.3)
    finally:
        await first.__aexit__()
        await second.__aexit__()
        await observer.close()


# -- the CLI -----------------------------------------------------------------------------------------------

class Terminal:
    """`teebus mesatee ...` of one user, run in-process: the parsed Namespace into the system's verbs."""

    def __init__(self, stack: Stack, bus, catalog, capsys, user: tuple[str, str], credentials: list[str]) -> None:
        self.stack, self.bus, self.catalog, self.capsys = stack, bus, catalog, capsys
        self.user, self.credentials = user, credentials

    async def run(self, *argv: str) -> tuple[int, str, str]:
        args = build_parser(self.catalog).parse_args([
            "mesatee", *argv, "--data-dir", str(self.bus.data_dir), "--nats", self.bus.url,
            "--url-tdfs", self.stack.url("mesatee-tdfs"), "--url-tms", self.stack.url("mesatee-tms"),
            *self.credentials])
        self.capsys.readouterr()
        status = await args.system_verbs(args, settings_from(args, self.catalog))
        out, err = self.capsys.readouterr()
        return status, out, err

    async def json(self, *argv: str) -> dict:
        status, out, err = await self.run(*argv)
        assert status == 0, err
        assert out.count("\n") == 1                  # one line of the seed's JSON
        return orjson.loads(out)


async def test_the_psi_example_from_two_terminals(stack, users, bus, catalog, capsys, monkeypatch, tmp_path):
    (name1, token1), (name2, token2) = users
    monkeypatch.setenv("TEEBUS_USER", name1)          # user1 exports its credentials
    monkeypatch.setenv("TEEBUS_TOKEN", token1)
    one = Terminal(stack, bus, catalog, capsys, users[0], [])
    two = Terminal(stack, bus, catalog, capsys, users[1], ["--user", name2, "--token", "-"])   # token on stdin

    status, out, err = await one.run("upload", str(write(tmp_path / "user1.bin", FIRST)))
    assert status == 0 and uuid.UUID(out.strip()) and "key" not in out, err
    mine = out.strip()
    created = await one.json("task", "create", "psi", "--collaborator", name2, "--file", mine)
    assert set(created) == {"type", "task_id", "task_token", "ip", "port"}
    task_id = created["task_id"]

    monkeypatch.setattr(sys, "stdin", io.StringIO(token2 + "\n"))
    status, out, _ = await two.run("upload", str(write(tmp_path / "user2.bin", SECOND)))
    theirs = out.strip()
    monkeypatch.setattr(sys, "stdin", io.StringIO(token2 + "\n"))
    assert (await two.json("task", "approve", task_id, "--file", theirs))["status"] == "Ready"

    assert task_id in (await one.json("task", "list"))["list"]
    got = await one.json("task", "get", task_id)
    assert got["type"] == "Get" and got["task_info"]["status"] == "Ready"
    status, out, _ = await one.run("task", "get", task_id, "--pretty")
    assert status == 0 and orjson.loads(out) == got and out.count("\n") > 5
    assert await one.json("task", "invoke", task_id) == {"result": "Finished"}   # no token copied by hand
    status, out, err = await one.run("task", "watch", task_id, "--timeout", "10")
    assert (status, out) == (0, "Finished\n"), err

    downloaded = await one.json("result", "download", task_id, "--dir", str(tmp_path / "r1"))
    monkeypatch.setattr(sys, "stdin", io.StringIO(token2 + "\n"))
    theirs_out = await two.json("result", "download", task_id, "--dir", str(tmp_path / "r2"))
    assert downloaded["type"] == "Download" and downloaded["task_id"] == task_id
    assert Path(downloaded["files"][0]["path"]).read_bytes() == FIRST_OUT
    assert Path(theirs_out["files"][0]["path"]).read_bytes() == SECOND_OUT


async def test_cli_watch_follows_a_running_task_and_exits_with_its_end(stack, users, bus, catalog, capsys,
                                                                      monkeypatch, tmp_path):
    monkeypatch.delenv("TEEBUS_TOKEN", raising=False)
    terminal = Terminal(stack, bus, catalog, capsys, users[0], ["--user", users[0][0], "--token", users[0][1]])
    async with client_of(stack, users[0]) as client:
        echo = await client.create_task("echo")
        watching = asyncio.create_task(terminal.run("task", "watch", echo["task_id"], "--timeout", "20"))
        early = ""
        while "Ready" not in early:                      # it has subscribed, read the task, and waits
            await asyncio.sleep(0.02)
            early += capsys.readouterr().out
        with pytest.raises(MesateeError, match="payload"):
            await client.invoke(echo["task_id"], "echo", echo["task_token"], None)
        status, out, err = await watching
        out = early + out
    assert status == 1 and out.splitlines() == ["Ready", "Running", out.splitlines()[-1]], err
    assert out.splitlines()[-1].startswith("Failed: ") and "payload" in out
    status, out, err = await terminal.run("task", "watch", echo["task_id"])
    assert status == 1 and out.startswith("Failed: ")

    waiting = await client_of(stack, users[0]).__aenter__()
    try:
        mine = await waiting.upload(write(tmp_path / "a.bin", A))
        created = await waiting.create_task("psi", [users[1][0]], [mine])
    finally:
        await waiting.__aexit__()
    status, out, err = await terminal.run("task", "watch", created["task_id"], "--timeout", "0.3")
    assert status == mesatee_cli.TIMED_OUT and "still Created" in err


async def test_cli_errors_go_to_stderr_with_status_1(stack, users, bus, catalog, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("TEEBUS_USER", raising=False)
    monkeypatch.delenv("TEEBUS_TOKEN", raising=False)
    nobody = Terminal(stack, bus, catalog, capsys, users[0], [])
    status, out, err = await nobody.run("task", "list")
    assert (status, out) == (1, "") and "--user" in err and "TEEBUS_USER" in err
    no_token = Terminal(stack, bus, catalog, capsys, users[0], ["--user", users[0][0]])
    status, _, err = await no_token.run("task", "list")
    assert status == 1 and "TEEBUS_TOKEN" in err
    terminal = Terminal(stack, bus, catalog, capsys, users[0], ["--user", users[0][0], "--token", users[0][1]])
    status, out, err = await terminal.run("task", "get", str(uuid.uuid4()))
    assert (status, out) == (1, "") and "(404)" in err
    status, out, err = await terminal.run("upload", str(tmp_path / "missing.bin"))
    assert (status, out) == (1, "") and "does not exist" in err


async def test_the_teebus_command_line_reaches_the_verbs(stack, users, bus, capsys, monkeypatch):
    """Through `teebus.cli.main` itself, which runs its own event loop: in a thread, while this
    test's loop serves the sites."""
    monkeypatch.setenv("TEEBUS_USER", users[0][0])
    monkeypatch.setenv("TEEBUS_TOKEN", users[0][1])
    try:
        status = await asyncio.to_thread(cli.main, [
            "mesatee", "task", "list", "--data-dir", str(bus.data_dir), "--nats", bus.url,
            "--url-tms", stack.url("mesatee-tms"), "--url-tdfs", stack.url("mesatee-tdfs")])
    finally:   # cli.main logs onto this test's captured stderr: give logging back its own
        log.configure("warning", json=True, stream=sys.__stderr__)
    assert status == 0 and orjson.loads(capsys.readouterr().out) == {"type": "List", "list": []}


def test_the_progress_bar_shows_each_phase_with_tqdm(tmp_path, monkeypatch):
    made = []

    class FakeBar:
        def __init__(self, total, desc, **_):
            self.total, self.desc, self.n, self.closed = total, desc, 0, False
            made.append(self)

        def update(self, step):
            self.n += step

        def close(self):
            self.closed = True

    bars = mesatee_cli._Bars(FakeBar, "big.bin")
    for phase in ("hash", "upload"):
        for done in (1, 5, 10):
            bars(phase, done, 10)
    bars.close()
    assert [(b.desc, b.total, b.n, b.closed) for b in made] == [
        ("hashing big.bin", 10, 10, True), ("uploading big.bin", 10, 10, True)]
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(mesatee_cli.PROGRESS_ABOVE_BYTES + 1)
    assert mesatee_cli._progress_bar(big) is None        # the test's stderr is no terminal
