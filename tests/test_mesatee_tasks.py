"""MesaTEE tasks end to end over HTTP: the seed's echo and psi flows between user1 and user2, the
lifecycle and its errors, authorisation, concurrency and restarts. Messages are the seed's JSON,
written here; files are sealed here with `cryptography` as a MesaTEE client seals them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bus.requester import Requester
from components.mesatee import subjects
from bus.server import free_port
from teebus.launcher import Deployment, Node
from teebus.settings import build
from teebus.testing import free_ports, settings_for
from tests.conftest import eventually, internal_token

NAMES = ["mesatee.users", "mesatee.kms", "mesatee.tdfs", "mesatee.tms", "mesatee.fns", "http.mesatee"]
SEED_ECHO = b'''{
  "type":"Create",
  "function_name":"echo",
  "collaborator_list":[],
  "files":[],
  "user_id":"user1",
  "user_token":"token1"
}'''
A, B, C, D, E = (bytes([c]) * 32 for c in b"abcde")


class Stack:
    """One node of every MesaTEE service on free ports, restartable on the same data directory."""

    def __init__(self, bus, catalog) -> None:
        self.bus, self.catalog = bus, catalog
        self.data_dir = bus.data_dir if bus else None
        self.node: Node | None = None
        self.session: aiohttp.ClientSession | None = None
        self.admin: Requester | None = None     # the module's one admin connection (users for tests)

    async def start(self, document: dict | None = None) -> None:
        self.node = Node(settings_for(self.bus, self.catalog, document), NAMES, self.catalog)
        await self.node.start()
        self.session = self.session or aiohttp.ClientSession()

    async def restart(self, document: dict | None = None) -> None:
        await self.node.stop()
        await self.start(document)

    def url(self, site: str) -> str:
        return self.node.http.bound[site]

    async def post(self, site: str, body: Any) -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        hdrs = {"Authorization": f"Bearer {internal_token(self.data_dir)}"} if "internal" in site else {}
        async with self.session.post(self.url(site) + "/", data=data, headers=hdrs) as response:
            return response.status, orjson.loads(await response.read())

    async def call(self, site: str, body: Any) -> dict:
        status, reply = await self.post(site, body)
        assert status == 200, reply
        return reply


@pytest.fixture(scope="module")
async def stack(bus, catalog):
    running = Stack(bus, catalog)
    await running.start()
    # Every connection a test opens is closed again: one left open reconnects forever once the session's
    # nats-server stops, and on Python 3.11 asyncio.wait_for (nats-py's connect) can swallow the
    # cancellation meant to end it, so the session's event loop never closes (a 180 s timeout).
    async with bus.scope() as admin:
        running.admin = Requester(await admin.connect("admin"))
        for user, token in (("user1", "token1"), ("user2", "token2")):   # the seed's users (`teebus up --demo`)
            try:
                await running.admin.request(subjects.users("add"), {"user_id": user, "token": token})
            except Exception as exc:
                assert "already exists" in str(exc)
        yield running
        await running.node.stop()
        await running.session.close()


async def add_user(stack: Stack, prefix: str = "u") -> tuple[str, str]:
    """A fresh user (tests share the bus): (name, token)."""
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    return name, (await stack.admin.request(subjects.users("add"), {"user_id": name})).payload["user_token"]


@pytest.fixture
async def users(stack):
    """Two fresh users of this test: (name, token) pairs."""
    return [await add_user(stack), await add_user(stack)]


def seal(plaintext: bytes, config: dict[str, str]) -> bytes:
    """AES-256-GCM `ciphertext || tag` under a TDFS key_config, as a MesaTEE client writes a file."""
    key, nonce, ad = (base64.b64decode(config[k]) for k in ("key", "nonce", "ad"))
    return AESGCM(key).encrypt(nonce, plaintext, ad)


def unseal(sealed: bytes, config: dict[str, str]) -> bytes:
    key, nonce, ad = (base64.b64decode(config[k]) for k in ("key", "nonce", "ad"))
    return AESGCM(key).decrypt(nonce, sealed, ad)


async def register(stack: Stack, user: str, token: str, plaintext: bytes, name: str = "file") -> str:
    """TDFS Create, then the sealed bytes written to access_path (the seed's client flow)."""
    created = await stack.call("mesatee-tdfs", {
        "type": "Create", "file_name": name, "sha256": hashlib.sha256(plaintext).hexdigest(),
        "file_size": len(plaintext), "user_id": user, "user_token": token})
    Path(created["access_path"]).write_bytes(seal(plaintext, created["key_config"]))
    return created["file_id"]


async def result_of(stack: Stack, user: str, token: str, file_id: str) -> bytes:
    info = (await stack.call("mesatee-tdfs", {"type": "Get", "file_id": file_id, "user_id": user,
                                              "user_token": token}))["file_info"]
    plaintext = unseal(Path(info["access_path"]).read_bytes(), info["key_config"])
    assert hashlib.sha256(plaintext).hexdigest() == info["sha256"] and len(plaintext) == info["file_size"]
    return plaintext


def invoke_body(created: dict, function: str, payload: str | None = None) -> dict:
    return {"task_id": created["task_id"], "function_name": function, "task_token": created["task_token"],
            "payload": payload}


async def get_task(stack: Stack, user: str, token: str, task_id: str) -> dict:
    reply = await stack.call("mesatee-tms", {"type": "Get", "task_id": task_id, "user_id": user, "user_token": token})
    return reply["task_info"]


async def psi_task(stack: Stack, first: tuple[str, str], second: tuple[str, str],
                   inputs: tuple[bytes, bytes]) -> dict:
    """A psi task of `first` with `second` as collaborator, approved: Ready to invoke."""
    mine = await register(stack, *first, inputs[0])
    theirs = await register(stack, *second, inputs[1])
    created = await stack.call("mesatee-tms", {"type": "Create", "function_name": "psi", "collaborator_list": [second[0]],
                                               "files": [mine], "user_id": first[0], "user_token": first[1]})
    approved = await stack.call("mesatee-tms", {"type": "Update", "task_id": created["task_id"], "files": [theirs],
                                                "user_id": second[0], "user_token": second[1]})
    assert approved["status"] == "Ready"
    return created


# -- the seed's flows ------------------------------------------------------------------------------------

async def test_seed_echo_create_get_invoke(stack):
    created = await stack.call("mesatee-tms", SEED_ECHO)
    assert set(created) == {"type", "task_id", "task_token", "ip", "port"} and created["type"] == "Create"
    assert uuid.UUID(created["task_id"]).version == 4 and len(bytes.fromhex(created["task_token"])) == 16
    assert (created["ip"], created["port"]) == ("127.0.0.1", int(stack.url("mesatee-fns").rsplit(":", 1)[1]))
    info = await get_task(stack, "user1", "token1", created["task_id"])
    assert info == {"user_id": "user1", "function_name": "echo", "function_type": "Single", "status": "Ready",
                    "ip": created["ip"], "port": created["port"], "task_token": created["task_token"],
                    "collaborator_list": [], "task_result_file_id": None, "user_private_result_file_id": [],
                    "failure_reason": None}
    assert await stack.call("mesatee-fns", invoke_body(created, "echo", "echo_payload")) == {"result": "echo_payload"}
    assert (await get_task(stack, "user1", "token1", created["task_id"]))["status"] == "Finished"
    status, again = await stack.post("mesatee-fns", invoke_body(created, "echo", "echo_payload"))
    assert status == 409 and "runs once" in again["message"]


async def test_seed_psi_between_two_users_gives_the_golden_outputs(stack):
    created = await psi_task(stack, ("user1", "token1"), ("user2", "token2"), (A + B + D + E, B + C + D))
    assert await stack.call("mesatee-fns", invoke_body(created, "psi")) == {"result": "Finished"}
    mine = await get_task(stack, "user1", "token1", created["task_id"])
    theirs = await get_task(stack, "user2", "token2", created["task_id"])
    assert mine["status"] == "Finished" and mine["collaborator_list"] == [{"user_id": "user2", "approved": True}]
    assert len(mine["user_private_result_file_id"]) == len(theirs["user_private_result_file_id"]) == 1
    assert await result_of(stack, "user1", "token1", mine["user_private_result_file_id"][0]) == bytes([0, 1, 1, 0])
    assert await result_of(stack, "user2", "token2", theirs["user_private_result_file_id"][0]) == bytes([1, 0, 1])
    status, _ = await stack.post("mesatee-tdfs", {"type": "Get", "file_id": mine["user_private_result_file_id"][0],
                                                  "user_id": "user2", "user_token": "token2"})
    assert status in (403, 404)        # each owner's output is private
    internal = await stack.call("mesatee-tms-internal", {"type": "Get", "task_id": created["task_id"]})
    assert internal["task_info"]["approved_user_number"] == 1
    assert [f["user_id"] for f in internal["task_info"]["input_files"]] == ["user1", "user2"]
    assert sorted(f["user_id"] for f in internal["task_info"]["output_files"]) == ["user1", "user2"]


async def test_a_multiparty_task_waits_for_approval(stack, users):
    (owner, owner_token), (other, other_token) = users
    mine = await register(stack, owner, owner_token, A + B)
    created = await stack.call("mesatee-tms", {"type": "Create", "function_name": "psi", "collaborator_list": [other],
                                               "files": [mine], "user_id": owner, "user_token": owner_token})
    info = await get_task(stack, other, other_token, created["task_id"])     # collaborators see it too
    assert (info["status"], info["function_type"]) == ("Created", "Multiparty")
    assert info["collaborator_list"] == [{"user_id": other, "approved": False}]
    status, error = await stack.post("mesatee-fns", invoke_body(created, "psi"))
    assert status == 409 and f"waits for the approval of {other}" in error["message"]
    for who in (owner, other):
        listed = await stack.call("mesatee-tms", {"type": "List", "user_id": who,
                                                  "user_token": owner_token if who == owner else other_token})
        assert created["task_id"] in listed["list"]


# -- failures are kept on the task -------------------------------------------------------------------------

async def test_echo_without_payload_fails_the_task_with_its_reason(stack, users):
    (user, token), _ = users
    created = await stack.call("mesatee-tms", {"type": "Create", "function_name": "echo", "collaborator_list": [],
                                               "files": [], "user_id": user, "user_token": token})
    status, error = await stack.post("mesatee-fns", invoke_body(created, "echo", None))
    assert status == 422 and "payload" in error["message"]
    info = await get_task(stack, user, token, created["task_id"])
    assert info["status"] == "Failed" and "payload" in info["failure_reason"]


async def test_a_tampered_input_fails_the_task(stack, users):
    created = await psi_task(stack, users[0], users[1], (A + B, B + C))
    internal = await stack.call("mesatee-tms-internal", {"type": "Get", "task_id": created["task_id"]})
    file_id = internal["task_info"]["input_files"][1]["file_id"]
    info = (await stack.call("mesatee-tdfs-internal", {"type": "Get", "file_id": file_id}))["file_info"]
    path = Path(info["access_path"])
    sealed = bytearray(path.read_bytes())
    sealed[0] ^= 1
    path.write_bytes(bytes(sealed))
    status, error = await stack.post("mesatee-fns", invoke_body(created, "psi"))
    assert status == 422
    task = await get_task(stack, *users[0], created["task_id"])
    assert task["status"] == "Failed" and file_id in task["failure_reason"]
    assert task["user_private_result_file_id"] == []          # nothing half-made


@pytest.mark.parametrize("change, status, message", [
    ({"task_token": "0" * 32}, 401, "task_token does not match"),
    ({"function_name": "psi"}, 400, "runs 'echo', not the function_name of this request"),
    ({"task_token": "short"}, 400, "task_token must be"),
    ({"task_id": "not-a-uuid"}, 400, "task_id must be a UUID"),
    ({"payload": 7}, 400, "payload must be a string or null"),
])
async def test_bad_invocations_are_refused_and_the_task_stays_ready(stack, users, change, status, message):
    (user, token), _ = users
    created = await stack.call("mesatee-tms", {"type": "Create", "function_name": "echo", "collaborator_list": [],
                                               "files": [], "user_id": user, "user_token": token})
    got, error = await stack.post("mesatee-fns", {**invoke_body(created, "echo", "x"), **change})
    assert (got, error["type"]) == (status, "Error") and message in error["message"]
    assert (await get_task(stack, user, token, created["task_id"]))["status"] == "Ready"


async def test_the_token_of_another_task_does_not_invoke_this_one(stack, users):
    (user, token), _ = users
    make = {"type": "Create", "function_name": "echo", "collaborator_list": [], "files": [], "user_id": user,
            "user_token": token}
    first, second = await stack.call("mesatee-tms", make), await stack.call("mesatee-tms", make)
    status, _ = await stack.post("mesatee-fns", {**invoke_body(first, "echo", "x"), "task_token": second["task_token"]})
    assert status == 401


# -- who may do what ---------------------------------------------------------------------------------------

async def test_authorisation_of_tasks(stack, users):
    (owner, owner_token), (other, other_token) = users
    stranger, stranger_token = await add_user(stack, "s")
    mine = await register(stack, owner, owner_token, A)
    theirs = await register(stack, other, other_token, B)
    status, error = await stack.post("mesatee-tms", {"type": "Create", "function_name": "psi", "collaborator_list": [other],
                                                     "files": [theirs], "user_id": owner, "user_token": owner_token})
    assert status == 404 and "may read" in error["message"]           # someone else's file
    created = await stack.call("mesatee-tms", {"type": "Create", "function_name": "psi", "collaborator_list": [other],
                                               "files": [mine], "user_id": owner, "user_token": owner_token})
    task = {"task_id": created["task_id"]}
    status, _ = await stack.post("mesatee-tms", {"type": "Get", **task, "user_id": stranger, "user_token": stranger_token})
    assert status == 404                                            # as if there were no such task
    status, _ = await stack.post("mesatee-tms", {"type": "Update", **task, "files": [mine], "user_id": stranger,
                                                 "user_token": stranger_token})
    assert status == 404
    status, error = await stack.post("mesatee-tms", {"type": "Update", **task, "files": [mine], "user_id": owner,
                                                     "user_token": owner_token})
    assert status == 409 and "only its collaborators approve" in error["message"]
    status, error = await stack.post("mesatee-tms", {"type": "Update", **task, "files": [mine], "user_id": other,
                                                     "user_token": other_token})
    assert status == 404 and "may read" in error["message"]          # approving with the owner's file
    listed = await stack.call("mesatee-tms", {"type": "List", "user_id": stranger, "user_token": stranger_token})
    assert created["task_id"] not in listed["list"]
    status, error = await stack.post("mesatee-tms", {"type": "Get", **task, "user_id": owner, "user_token": "wrong"})
    assert status == 401 and "task_info" not in error


@pytest.mark.parametrize("body, message", [
    ({"type": "Delete"}, "unknown external TMS request type (another string); expected one of Create"),
    ({"type": "Create", "user_id": "user1", "user_token": "token1"}, "needs the field 'function_name'"),
    ({"type": "Create", "function_name": "echo", "collaborator_list": "user2", "files": [], "user_id": "user1",
      "user_token": "token1"}, "collaborator_list must be a list"),
    ({"type": "Create", "function_name": "echo", "collaborator_list": ["user1"], "files": [], "user_id": "user1",
      "user_token": "token1"}, "names the task's creator"),
    ({"type": "Create", "function_name": "echo", "collaborator_list": [], "files": ["x"], "user_id": "user1",
      "user_token": "token1"}, "must be a UUID"),
    ({"type": "Update", "task_id": str(uuid.uuid4()), "files": [], "user_id": "user2", "user_token": "token2"},
     "files may not be empty"),
    ({"type": "Get", "task_id": 5, "user_id": "user1", "user_token": "token1"}, "task_id must be a UUID"),
])
async def test_bad_task_requests_get_a_clear_400(stack, body, message):
    status, error = await stack.post("mesatee-tms", body)
    assert (status, error["type"]) == (400, "Error") and message in error["message"], error


async def test_an_unknown_function_is_refused_at_create(stack):
    status, error = await stack.post("mesatee-tms", {**orjson.loads(SEED_ECHO), "function_name": "gbdt_predict"})
    assert status == 404 and "echo" in error["message"] and "psi" in error["message"]


# -- concurrency, events, restarts -------------------------------------------------------------------------

async def test_concurrent_approvals_are_all_kept(stack):
    people = [await add_user(stack, "c") for _ in range(13)]
    (owner, owner_token), collaborators = people[0], people[1:]
    files = {name: await register(stack, name, token, A) for name, token in people}
    created = await stack.call("mesatee-tms", {"type": "Create", "function_name": "psi",
                                               "collaborator_list": [n for n, _ in collaborators],
                                               "files": [files[owner]], "user_id": owner, "user_token": owner_token})
    replies = await asyncio.gather(*(stack.call("mesatee-tms", {
        "type": "Update", "task_id": created["task_id"], "files": [files[name]], "user_id": name, "user_token": token})
        for name, token in collaborators))
    assert sorted(r["status"] for r in replies) == ["Created"] * 11 + ["Ready"]
    info = (await stack.call("mesatee-tms-internal", {"type": "Get", "task_id": created["task_id"]}))["task_info"]
    assert info["approved_user_number"] == 12 and info["status"] == "Ready"
    assert sorted(f["file_id"] for f in info["input_files"]) == sorted(files.values())


async def task_events(connect_as) -> list[dict]:
    """Every `events.mesatee.task.*` from now on, as they arrive (the list fills itself)."""
    watcher = await connect_as("admin")
    seen: list[dict] = []

    async def record(msg) -> None:
        seen.append(orjson.loads(msg.data))

    await watcher.subscribe("events.mesatee.task.>", cb=record)
    await watcher.flush()
    return seen


async def test_status_changes_are_events(stack, connect_as, users):
    (user, token), _ = users
    seen = await task_events(connect_as)
    created = await stack.call("mesatee-tms", {"type": "Create", "function_name": "echo", "collaborator_list": [],
                                               "files": [], "user_id": user, "user_token": token})
    await stack.call("mesatee-fns", invoke_body(created, "echo", "hi"))
    await eventually(lambda: [e["what"] for e in seen if e["task_id"] == created["task_id"]]
                     == ["created", "running", "finished"])


PROMPT_SECONDS = 2.0      # "answered promptly" while a long psi runs: a stalled loop would take the psi's seconds


async def test_a_long_psi_does_not_stall_other_requests(stack, users):
    records = 1_000_000
    first = b"".join(i.to_bytes(32, "big") for i in range(0, 2 * records, 2))
    second = b"".join(i.to_bytes(32, "big") for i in range(0, 3 * records, 3))
    created = await psi_task(stack, users[0], users[1], (first, second))
    (user, token), _ = users
    invoke = asyncio.create_task(stack.call("mesatee-fns", invoke_body(created, "psi")))

    async def status() -> str:
        task = await stack.call("mesatee-tms-internal", {"type": "Get", "task_id": created["task_id"]})
        return task["task_info"]["status"]

    async def timed(site: str, body: dict) -> tuple[float, dict]:
        started = loop.time()
        reply = await stack.call(site, body)
        return loop.time() - started, reply

    loop = asyncio.get_running_loop()
    await eventually(lambda: status_is(status, "Running"), timeout=30)
    latencies: dict[str, list[float]] = {"TMS List": [], "TMS Create": [], "FNS invoke of an echo": []}
    try:
        while await status() == "Running":      # the function node's event loop is free while psi runs
            took, _ = await timed("mesatee-tms", {"type": "List", "user_id": user, "user_token": token})
            latencies["TMS List"].append(took)
            took, echo = await timed("mesatee-tms", {"type": "Create", "function_name": "echo", "files": [],
                                                     "collaborator_list": [], "user_id": user, "user_token": token})
            latencies["TMS Create"].append(took)
            took, reply = await timed("mesatee-fns", invoke_body(echo, "echo", "while psi runs"))
            latencies["FNS invoke of an echo"].append(took)    # the node that runs the psi answers others
            assert reply == {"result": "while psi runs"}
    finally:
        await asyncio.wait([invoke], timeout=120)     # the psi ends before the test does, whatever happened
    assert len(latencies["TMS List"]) >= 3, latencies
    slowest = {what: max(values) for what, values in latencies.items()}
    assert all(seconds < PROMPT_SECONDS for seconds in slowest.values()), slowest
    assert invoke.result() == {"result": "Finished"}
    task = await get_task(stack, *users[1], created["task_id"])
    output = await result_of(stack, *users[1], task["user_private_result_file_id"][0])
    assert output == bytes(value % 2 == 0 and value < 2 * records for value in range(0, 3 * records, 3))


async def test_two_invocations_at_once_run_the_task_once(stack, connect_as, users):
    seen = await task_events(connect_as)
    created = await psi_task(stack, users[0], users[1], (A + B + D + E, B + C + D))
    replies = await asyncio.gather(*(stack.post("mesatee-fns", invoke_body(created, "psi")) for _ in range(2)))
    statuses = sorted(status for status, _ in replies)
    assert statuses == [200, 409], replies
    assert {"result": "Finished"} in [reply for _, reply in replies]
    refused = next(reply for status, reply in replies if status == 409)
    assert "a task runs once" in refused["message"], refused

    def whats() -> list[str]:
        return [event["what"] for event in seen if event["task_id"] == created["task_id"]]

    await eventually(lambda: "finished" in whats())
    await asyncio.sleep(0.2)                    # room for a second run's events, were there one
    assert whats().count("running") == 1 and whats().count("finished") == 1, whats()
    info = (await stack.call("mesatee-tms-internal", {"type": "Get", "task_id": created["task_id"]}))["task_info"]
    assert info["status"] == "Finished"
    assert sorted(f["user_id"] for f in info["output_files"]) == sorted([users[0][0], users[1][0]])  # one run's
    for (user, token), golden in zip(users, (bytes([0, 1, 1, 0]), bytes([1, 0, 1]))):
        (output,) = (await get_task(stack, user, token, created["task_id"]))["user_private_result_file_id"]
        assert await result_of(stack, user, token, output) == golden


async def status_is(status, wanted: str) -> bool:
    return await status() == wanted


async def test_everything_survives_a_restart(stack):
    created = await psi_task(stack, ("user1", "token1"), ("user2", "token2"), (A + B + D + E, B + C + D))
    echo = await stack.call("mesatee-tms", SEED_ECHO)
    await stack.call("mesatee-fns", invoke_body(created, "psi"))
    await stack.restart()
    task = await get_task(stack, "user1", "token1", created["task_id"])
    assert task["status"] == "Finished"
    assert await result_of(stack, "user1", "token1", task["user_private_result_file_id"][0]) == bytes([0, 1, 1, 0])
    assert (await get_task(stack, "user1", "token1", echo["task_id"]))["status"] == "Ready"
    assert await stack.call("mesatee-fns", invoke_body(echo, "echo", "after")) == {"result": "after"}


async def test_a_user_holds_at_most_tms_max_tasks_per_user_tasks(stack, users):
    await stack.restart({"mesatee": {"tms_max_tasks_per_user": 2}})
    try:
        (user, token), _ = users
        make = {"type": "Create", "function_name": "echo", "collaborator_list": [], "files": [], "user_id": user,
                "user_token": token}
        await stack.call("mesatee-tms", make)
        await stack.call("mesatee-tms", make)
        status, error = await stack.post("mesatee-tms", make)
        assert status == 413 and "tms_max_tasks_per_user" in error["message"]
        listed = await stack.call("mesatee-tms", {"type": "List", "user_id": user, "user_token": token})
        assert len(listed["list"]) == 2                      # the refused one left nothing behind
    finally:
        await stack.restart()


async def test_a_task_past_its_deadline_fails_and_the_node_goes_on(stack, users):
    await stack.restart({"mesatee": {"fns_deadline_seconds": 0.2, "fns_workers": 1}})
    try:
        records = 1_000_000
        big = os.urandom(32 * records)
        created = await psi_task(stack, users[0], users[1], (big, big))
        status, error = await stack.post("mesatee-fns", invoke_body(created, "psi"))
        assert status == 422 and "deadline" in error["message"]
        assert "deadline" in (await get_task(stack, *users[0], created["task_id"]))["failure_reason"]
        echo = await stack.call("mesatee-tms", {"type": "Create", "function_name": "echo", "collaborator_list": [],
                                                "files": [], "user_id": users[0][0], "user_token": users[0][1]})
        assert await stack.call("mesatee-fns", invoke_body(echo, "echo", "still here")) == {"result": "still here"}
    finally:
        await stack.restart()


async def test_internal_sites_stay_on_loopback_when_the_others_face_the_network(bus, catalog):
    node = Node(settings_for(bus, catalog, {"teebus": {"http_host": "0.0.0.0"}}), ["http.mesatee"], catalog)
    async with node:
        bound = node.http.bound
        assert bound["mesatee-tms"].startswith("http://0.0.0.0:") and bound["mesatee-fns"].startswith("http://0.0.0.0:")
        for internal in ("mesatee-kms", "mesatee-tms-internal", "mesatee-tdfs-internal"):
            assert bound[internal].startswith("http://127.0.0.1:"), bound


class WholeSystem(Stack):
    """`teebus up --demo` in-process: its own nats-server and data directory, every system."""

    def __init__(self, data_dir: Path, catalog) -> None:
        super().__init__(None, catalog)
        self.data_dir = data_dir
        self.settings = build(catalog, {"teebus": {"data_dir": data_dir, "nats_port": free_port()},
                                        "ports": free_ports(catalog)})
        self.deployment: Deployment | None = None

    async def start(self, document: dict | None = None, demo: bool = False) -> None:
        self.deployment = Deployment(self.settings, self.catalog, demo=demo)
        await self.deployment.start()
        self.node = self.deployment.node
        self.session = self.session or aiohttp.ClientSession()

    async def stop(self) -> None:
        await self.deployment.stop()


async def test_a_restart_of_everything_keeps_users_files_tasks_and_results(tmp_path, catalog):
    system = WholeSystem(tmp_path / "data", catalog)
    await system.start(demo=True)
    try:
        psi = await psi_task(system, ("user1", "token1"), ("user2", "token2"), (A + B + D + E, B + C + D))
        assert await system.call("mesatee-fns", invoke_body(psi, "psi")) == {"result": "Finished"}
        waiting = await system.call("mesatee-tms", SEED_ECHO)
    finally:
        await system.stop()
    await system.start()                                   # no --demo: the users are the stored ones
    try:
        for user, token, golden in (("user1", "token1", bytes([0, 1, 1, 0])), ("user2", "token2", bytes([1, 0, 1]))):
            task = await get_task(system, user, token, psi["task_id"])
            assert task["status"] == "Finished"
            assert await result_of(system, user, token, task["user_private_result_file_id"][0]) == golden
        assert await system.call("mesatee-fns", invoke_body(waiting, "echo", "later")) == {"result": "later"}
        status, _ = await system.post("mesatee-tms", {"type": "List", "user_id": "user1", "user_token": "token2"})
        assert status == 401
    finally:
        await system.stop()
        await system.session.close()
