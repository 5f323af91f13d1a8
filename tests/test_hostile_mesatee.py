"""Hostile clients against MesaTEE's sites (adapters/http/mesatee.py; issue 9): the property-based
suite against the KMS (6016), the TDFS (5065: `POST /`, and `PUT`/`GET`/`HEAD /files/<id>` byte by
byte), the internal TDFS (5066), the TMS (5554), the internal TMS (5555) and the function node
(3444), and what those suites found, pinned down. Every answer: below 500, with a request id, JSON
`{"type": "Error", "status", "message"}` for an error or a success of the seed's types; the logs
hold one line per refusal and per service, and none of the credentials. What the suites share is in
tests/hostile.py.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import os
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
import pytest
from hypothesis import strategies as st

from adapters.http import mesatee as mesatee_http
from bus.requester import Requester
from components.mesatee import file_store, fns_messages, subjects, tms_messages
from teebus.launcher import Node
from teebus.testing import settings_for
from tests.conftest import eventually, internal_token
from tests.hostile import (HOST, MIN_REQUESTS, REFUSALS, Answer, Closed, Hostile, Kms, assert_kms_error,
                           assert_one_line_per_refusal, assert_quiet_logs, captured_logs, choose, common_bodies, either,
                           focused_requests, hostile_requests, json_bytes, json_values, kms, lines_with, method_of,
                           mostly, no_answers_are_rare, perturbed, random_paths, rarely, raw_exchange, read_response,
                           recording, redacted, request_bytes, run_in_thread, send)

pytestmark = pytest.mark.timeout(300)
assert captured_logs and kms    # fixtures: imported by name, so that pytest finds them in this module


def mesatee_checker(types: tuple[str, ...] = (), *, result: bool = False,
                    octets: bool = False) -> Callable[[Hostile, Answer], None]:
    """MesaTEE's answers: below 500, with a request id, in JSON; an error is `{"type": "Error",
    "status", "message"}`, a success a 200 with one of the seed's `types` (tagged responses), or
    `{"result": ...}` (`result`: the function node's untagged invoke), or the stored bytes as
    application/octet-stream (`octets`: a GET of /files on the TDFS)."""
    def check(request: Hostile, answer: Answer) -> None:
        assert answer.status < 500, (request, answer)
        assert answer.request_id, (request, answer)
        if method_of(request) == "HEAD":
            return
        if octets and answer.status == 200 and method_of(request) == "GET":
            assert answer.content_type == mesatee_http.OCTETS, (request, answer)
            return
        assert answer.content_type == "application/json", (request, answer)
        body = orjson.loads(answer.body)
        assert isinstance(body, dict), (request, answer)
        if answer.status >= 400:
            assert body["type"] == "Error" and body["status"] == answer.status, (request, answer)
            assert isinstance(body["message"], str) and body["message"], (request, answer)
        elif result:
            assert answer.status == 200 and set(body) == {"result"}, (request, answer)
            assert body["result"] is None or isinstance(body["result"], str), (request, answer)
        else:
            assert answer.status == 200 and body.get("type") in types, (request, answer)

    return check


check_kms = mesatee_checker(("Create", "Get", "Delete"))



# -- the KMS (6016) -------------------------------------------------------------------------------------

KMS_REQUESTS = MIN_REQUESTS


async def test_hostile_suite_against_the_kms(kms: Kms, captured_logs, caplog):
    kms_bodies = common_bodies | st.fixed_dictionaries(
        {"type": st.sampled_from(["Get", "Delete", "Create ", "create", "Error", ""]) | json_values},
        optional={"key_id": st.uuids().map(str) | json_values}).map(orjson.dumps)
    focused = focused_requests("POST", ["/"], {"Authorization": f"Bearer {kms.token}"}, kms_bodies)
    strategy = choose(focused, focused, hostile_requests(random_paths(["/"]), kms.token, kms_bodies),
                      hostile_requests(random_paths(["/"]), None, kms_bodies))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        tally = await run_in_thread("MesaTEE KMS (6016)", KMS_REQUESTS, strategy,
                                    lambda request: send(http, kms.url, kms.port, request), check_kms)
    assert tally["requests"] >= KMS_REQUESTS and not [s for s in tally if isinstance(s, int) and s >= 500]
    no_answers_are_rare(tally)
    assert_quiet_logs(captured_logs(), caplog, kms.token)


# -- the hostile suite against MesaTEE's TDFS, TMS and FNS sites ----------------------------------------------
#
# One node runs every MesaTEE service for these tests (module scope: it starts in about a second); each
# test makes a world of its own over the bus and HTTP: three users (an owner, a collaborator, a
# stranger), files with and without content, tasks in each state. Focused requests carry those real ids
# and credentials in every combination (valid ids, another user's, a deleted one; right, wrong and
# swapped tokens; the internal token on external sites and the reverse); random ones do what the KMS
# suite does. Besides the answers' shape, the logs must hold one line per refusal and per service, and
# none of the credentials.

MESATEE_NAMES = ["mesatee.users", "mesatee.kms", "mesatee.tdfs", "mesatee.tms", "mesatee.fns", "http.mesatee"]
# the TDFS site (5065) gets MIN_REQUESTS in all: POST / and the /files routes
TDFS_FILES_REQUESTS = MIN_REQUESTS * 3 // 10
TDFS_REQUESTS = MIN_REQUESTS - TDFS_FILES_REQUESTS
TDFS_INTERNAL_REQUESTS = MIN_REQUESTS
TMS_REQUESTS = MIN_REQUESTS
TMS_INTERNAL_REQUESTS = MIN_REQUESTS
FNS_REQUESTS = MIN_REQUESTS
ECHO_TASKS = 8                  # Ready echo tasks the FNS suite may run (each runs once)
SPARE_FILES = 4                 # files of the owner a generated Delete may take
BIG_PLAINTEXT = 300_000         # a file whose upload takes several reads of the socket


def _seal(plaintext: bytes, config: dict[str, str]) -> bytes:
    """`ciphertext || tag` under a TDFS key_config, as a MesaTEE client writes a file."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    key, nonce, ad = (base64.b64decode(config[name]) for name in ("key", "nonce", "ad"))
    return AESGCM(key).encrypt(nonce, plaintext, ad)


@dataclasses.dataclass
class Mesatee:
    node: Node
    http: aiohttp.ClientSession
    token: str                            # the internal credential
    users: list[tuple[str, str]]          # the owner, the collaborator, the stranger: (user_id, user_token)
    files_dir: Path

    def url(self, site: str) -> str:
        return self.node.http.bound[site]

    def port(self, site: str) -> int:
        return int(self.url(site).rsplit(":", 1)[1])

    async def call(self, site: str, body: dict) -> dict:
        auth = {"Authorization": f"Bearer {self.token}"} if site.endswith("-internal") else {}
        async with self.http.post(self.url(site) + "/", data=orjson.dumps(body), headers=auth) as response:
            reply = orjson.loads(await response.read())
            assert response.status == 200, reply
            return reply


@pytest.fixture(scope="module")
async def mesatee(bus, catalog) -> AsyncIterator[Mesatee]:
    node = Node(settings_for(bus, catalog), MESATEE_NAMES, catalog)
    await node.start()
    admin = await bus.scope().connect("admin")
    requester = Requester(admin)
    users = []
    try:
        for role in "ocs":
            name = f"{role}{uuid.uuid4().hex[:10]}"
            reply = await requester.request(subjects.users("add"), {"user_id": name})
            users.append((name, reply.payload["user_token"]))
        async with aiohttp.ClientSession() as http:
            yield Mesatee(node, http, internal_token(bus.data_dir), users, bus.data_dir / file_store.FILES_DIR)
    finally:
        for name, _ in users:
            await requester.request(subjects.users("remove"), {"user_id": name})
        await admin.close()
        await node.stop()


@dataclasses.dataclass
class World:
    """Real ids for the focused requests of one test, and the credentials to try them with."""

    mesatee: Mesatee
    files: dict[str, str]                 # name -> file id: full, empty, big (the owner's), theirs, gone
    spares: list[str]                     # the owner's, for generated Deletes
    sizes: dict[str, int]                 # file id -> its stored size (file_size + 16)
    tasks: dict[str, dict]                # name -> the TMS Create reply: echo0.., created, ready, finished

    @property
    def owner(self) -> tuple[str, str]:
        return self.mesatee.users[0]

    @property
    def collaborator(self) -> tuple[str, str]:
        return self.mesatee.users[1]

    @property
    def stranger(self) -> tuple[str, str]:
        return self.mesatee.users[2]

    def secrets(self) -> list[str]:
        """What no log line may hold: the users' tokens and the internal token."""
        return [token for _, token in self.mesatee.users] + [self.mesatee.token]

    def credentials(self) -> st.SearchStrategy[tuple[object, object]]:
        """(user_id, user_token) pairs: right ones most often, then wrong, swapped, foreign, odd."""
        (owner, mine), (other, theirs), (stranger, strange) = self.mesatee.users
        internal = self.mesatee.token
        return mostly([(owner, mine), (other, theirs), (stranger, strange), (owner, mine)], [
            (owner, theirs), (owner, mine + "x"), (owner, ""), (owner, internal), (mine, owner),
            ("nobody", mine), (owner.upper(), mine), (owner + "\x00", mine), ("", ""), (owner, mine[:-1] + "\udcff"),
            ("a" * 65, mine), (owner, "t" * 257)])

    def file_ids(self) -> st.SearchStrategy[str]:
        full = self.files["full"]
        return mostly([*self.files.values(), *self.spares], [
            str(uuid.uuid4()), full.upper(), " " + full, full + "\n", full.replace("-", ""), "", "x" * 65,
            self.tasks["ready"]["task_id"], self.mesatee.users[0][1]])

    def task_ids(self) -> st.SearchStrategy[str]:
        ready = self.tasks["ready"]
        return mostly([task["task_id"] for task in self.tasks.values()], [
            str(uuid.uuid4()), ready["task_id"].upper(), self.files["full"], "", "x" * 65, ready["task_token"]])

    def task_tokens(self) -> st.SearchStrategy[str]:
        return mostly([task["task_token"] for task in self.tasks.values()], [
            "0" * 32, self.mesatee.token, self.mesatee.users[0][1], self.tasks["ready"]["task_token"].upper(), ""])



async def _upload(mesatee: Mesatee, who: tuple[str, str], file_id: str, sealed: bytes) -> None:
    headers = {mesatee_http.USER_ID_HEADER: who[0], mesatee_http.USER_TOKEN_HEADER: who[1]}
    async with mesatee.http.put(f"{mesatee.url('mesatee-tdfs')}/files/{file_id}", data=sealed,
                                headers=headers) as response:
        assert response.status == 200, await response.read()


async def _file(mesatee: Mesatee, who: tuple[str, str], plaintext: bytes, *, content: bool = True) -> tuple[str, int]:
    created = await mesatee.call("mesatee-tdfs", {
        "type": "Create", "file_name": "hostile", "sha256": hashlib.sha256(plaintext).hexdigest(),
        "file_size": len(plaintext), "user_id": who[0], "user_token": who[1]})
    if content:
        await _upload(mesatee, who, created["file_id"], _seal(plaintext, created["key_config"]))
    return created["file_id"], len(plaintext) + 16


async def make_world(mesatee: Mesatee) -> World:
    owner, other, _ = mesatee.users
    records = bytes(range(32)) + bytes(range(1, 33))        # two psi records
    files, sizes = {}, {}
    for name, who, plaintext, content in [("full", owner, records, True), ("empty", owner, records, False),
                                          ("big", owner, os.urandom(BIG_PLAINTEXT), True),
                                          ("theirs", other, records[32:] + bytes(32), True),
                                          ("gone", owner, b"x", True)]:
        files[name], sizes[files[name]] = await _file(mesatee, who, plaintext, content=content)
    await mesatee.call("mesatee-tdfs", {"type": "Delete", "file_id": files["gone"], "user_id": owner[0],
                                        "user_token": owner[1]})
    spares = []
    for _ in range(SPARE_FILES):
        file_id, sizes[file_id] = await _file(mesatee, owner, records)
        spares.append(file_id)
    tasks = {}

    async def task(function: str, collaborators: list[str], inputs: list[str]) -> dict:
        return await mesatee.call("mesatee-tms", {"type": "Create", "function_name": function,
                                                  "collaborator_list": collaborators, "files": inputs,
                                                  "user_id": owner[0], "user_token": owner[1]})

    for i in range(ECHO_TASKS):
        tasks[f"echo{i}"] = await task("echo", [], [])
    tasks["created"] = await task("psi", [other[0]], [files["full"]])
    tasks["ready"] = await task("psi", [other[0]], [files["full"]])
    await mesatee.call("mesatee-tms", {"type": "Update", "task_id": tasks["ready"]["task_id"],
                                       "files": [files["theirs"]], "user_id": other[0], "user_token": other[1]})
    tasks["finished"] = await task("echo", [], [])
    await mesatee.call("mesatee-fns", {"task_id": tasks["finished"]["task_id"], "function_name": "echo",
                                       "task_token": tasks["finished"]["task_token"], "payload": "done"})
    return World(mesatee, files, spares, sizes, tasks)


# -- bodies: often right, then one field off ----------------------------------------------------------------

def mixed(valid: st.SearchStrategy[dict], operations: tuple[str, ...]) -> st.SearchStrategy[dict]:
    """Three in four bodies `perturbed`, the rest a valid body of one operation tagged as another."""
    retyped = st.builds(lambda op, body: {**body, "type": op}, _operations(operations), valid)
    return either(perturbed(valid), retyped)


def as_json(bodies: st.SearchStrategy[dict]) -> st.SearchStrategy[bytes]:
    """Encoded as JSON, now and then with a second copy of `type` or bytes after the object."""
    return json_bytes(bodies, b', "type": "Get"}')


def credential_fields(world: World) -> st.SearchStrategy[dict]:
    return world.credentials().map(lambda pair: {"user_id": pair[0], "user_token": pair[1]})


def _sha256s() -> st.SearchStrategy[object]:
    return st.binary(min_size=32, max_size=32).map(bytes.hex) | st.sampled_from(["A" * 64, "g" * 64, "0" * 63, ""])


def _file_sizes() -> st.SearchStrategy[object]:
    return st.integers(0, 4096) | st.sampled_from([2 ** 32 - 1, 2 ** 32, -1, 1.5, True, "16"])


def _operations(names: tuple[str, ...]) -> st.SearchStrategy[str]:
    return mostly(list(names), [name.lower() for name in names] + ["Error", "Upload", "", "Create "])


def _spare(world: World, body: dict) -> dict:
    """A Delete by the owner of the files the suite needs takes a spare instead (a Delete must stay possible)."""
    keep = {world.files[name] for name in ("full", "empty", "big", "theirs")}
    file_id = body.get("file_id")
    if body.get("type") == "Delete" and isinstance(file_id, str) and file_id.strip().lower() in keep:
        return {**body, "file_id": world.spares[len(body) % len(world.spares)]}
    return body


def tdfs_bodies(world: World) -> st.SearchStrategy[bytes]:
    creds, file_ids = credential_fields(world), world.file_ids()
    valid = st.one_of(
        st.builds(lambda c, name, sha, size: {"type": "Create", **c, "file_name": name, "sha256": sha, "file_size": size},
                  creds, st.text(max_size=30), _sha256s(), _file_sizes()),
        st.builds(lambda op, c, file_id: {"type": op, **c, "file_id": file_id},
                  st.sampled_from(["Get", "Get", "Delete"]), creds, file_ids),
        st.builds(lambda c: {"type": "List", **c}, creds))
    bodies = mixed(valid, subjects.TDFS_OPERATIONS)
    return as_json(bodies.map(lambda body: _spare(world, body)))


def tdfs_internal_bodies(world: World) -> st.SearchStrategy[bytes]:
    users = [user for user, _ in world.mesatee.users]
    user_ids = mostly(users, ["nobody", "", "a" * 65, 7])
    valid = st.one_of(
        st.builds(lambda task_id, user, sha, size, collaborators, policy: {
            "type": "Create", "task_id": task_id, "user_id": user, "sha256": sha, "file_size": size,
            "collaborator_list": collaborators, "allow_policy": policy},
            world.task_ids() | st.sampled_from(["", "t" * 129]), user_ids, _sha256s(), _file_sizes(),
            st.lists(user_ids, max_size=3) | st.just(["x"] * 65), mostly([0, 1, 2], [3, -1, True, None, "1"])),
        st.builds(lambda file_id: {"type": "Get", "file_id": file_id}, world.file_ids()))
    return as_json(mixed(valid, subjects.TDFS_INTERNAL_OPERATIONS))


def _file_lists(world: World) -> st.SearchStrategy[object]:
    files = world.files
    return st.sampled_from([[], [files["full"]], [files["theirs"]], [files["full"], files["theirs"]],
                            [files["gone"]], [files["empty"], files["empty"]], [str(uuid.uuid4())],
                            [files["full"]] * 17, [files["full"].upper()], world.spares[:1]]) | \
        st.lists(world.file_ids(), max_size=4)


def tms_bodies(world: World) -> st.SearchStrategy[bytes]:
    creds, task_ids = credential_fields(world), world.task_ids()
    users = [user for user, _ in world.mesatee.users]
    valid = st.one_of(
        st.builds(lambda c, function, collaborators, files: {"type": "Create", **c, "function_name": function,
                                                            "collaborator_list": collaborators, "files": files},
                  creds, mostly(["echo", "psi"], ["gbdt_predict", "", "Echo", "e" * 65]),
                  mostly([[], [users[1]], [users[2], users[1]]], [[users[0]], ["nobody"], [users[1]] * 2, ["x"] * 65]),
                  _file_lists(world)),
        st.builds(lambda c, task_id: {"type": "Get", **c, "task_id": task_id}, creds, task_ids),
        st.builds(lambda c, task_id, files: {"type": "Update", **c, "task_id": task_id, "files": files},
                  creds, task_ids, _file_lists(world)),
        st.builds(lambda c: {"type": "List", **c}, creds))
    return as_json(mixed(valid, subjects.TMS_OPERATIONS))


def tms_internal_bodies(world: World) -> st.SearchStrategy[bytes]:
    task_ids = world.task_ids()
    users = [user for user, _ in world.mesatee.users]
    outputs = st.lists(st.fixed_dictionaries({"user_id": st.sampled_from(users + ["", 7]),
                                              "file_id": world.file_ids()}), max_size=3) | \
        st.sampled_from([[{"user_id": users[0], "file_id": world.files["full"]}] * 65, [1], ["x"]])
    valid = st.one_of(
        st.builds(lambda task_id: {"type": "Get", "task_id": task_id}, task_ids),
        st.builds(lambda task_id, status, outs, result, reason, deadline: {
            "type": "Update", "task_id": task_id, "status": status, "output_files": outs,
            "task_result_file_id": result, "failure_reason": reason, "running_deadline": deadline},
            task_ids, st.sampled_from(list(tms_messages.STATUSES) + [None, "running", ""]), outputs,
            st.none() | world.file_ids(), st.none() | st.text(max_size=20) | st.just("r" * 1025),
            st.none() | st.floats(allow_nan=False) | st.sampled_from([time.time() + 60, True, "soon"])))
    return as_json(mixed(valid, subjects.TMS_INTERNAL_OPERATIONS))


def fns_bodies(world: World) -> st.SearchStrategy[bytes]:
    def invoke(name: str, function: str | None, token: str | None, payload: object) -> dict:
        task = world.tasks[name]
        own = "psi" if name in ("created", "ready") else "echo"
        return {"task_id": task["task_id"], "function_name": own if function is None else function,
                "task_token": task["task_token"] if token is None else token, "payload": payload}

    functions = st.sampled_from(["echo", "psi", "gbdt_predict", "", "Echo"])
    payloads = st.text(max_size=40) | st.sampled_from(["echo_payload", None]) | json_values | st.builds(
        lambda: "p" * (fns_messages.MAX_PAYLOAD_CHARS + 1))
    # the task's own function and token most of the time
    valid = st.builds(invoke, st.sampled_from(sorted(world.tasks)), st.none() | st.none() | functions,
                      st.none() | st.none() | world.task_tokens(), payloads)
    loose = st.builds(lambda task_id, function, token, payload: {"task_id": task_id, "function_name": function,
                                                                 "task_token": token, "payload": payload},
                      world.task_ids(), functions, world.task_tokens(), payloads)
    return as_json(perturbed(valid | loose) | valid | st.builds(lambda body, kind: {**body, "type": kind}, valid,
                                                                 st.sampled_from(["Invoke", "Create", "Error"])))


# -- PUT, GET and HEAD of /files, byte by byte ------------------------------------------------------------

@st.composite
def file_requests(draw, world: World, upload: bool = False) -> Hostile:
    """An upload or download of a real file (or a near miss) over a raw socket: the user in headers
    good, bad, missing or not UTF-8; bodies of the right size, one byte off, or far off; framed by a
    true, larger or smaller Content-Length, chunked, or not at all; sent at once, slowly, half-closed,
    or after waiting for `100 Continue`. `upload`: a PUT by the owner of one of their files, only its
    body and framing at stake."""
    files, (owner, mine), (other, theirs) = world.files, world.owner, world.collaborator
    if upload:
        name = draw(st.sampled_from(["full", "empty", "big", "spare"]))
    else:
        name = draw(mostly(["full", "empty", "big", "theirs", "spare"], ["gone", "unknown"]))
    file_id = {"spare": world.spares[0], "unknown": str(uuid.uuid4())}.get(name) or files[name]
    size = world.sizes.get(file_id, 80)
    path = draw(mostly([file_id], [file_id.upper(), file_id + "/", "x", file_id[:-1], "%00", file_id + "/more", ""]))
    method = b"PUT" if upload else draw(mostly([b"PUT", b"PUT", b"GET", b"HEAD"], [b"POST", b"DELETE"], 5))
    internal = world.mesatee.token.encode()
    who = draw(mostly([[owner.encode(), mine.encode()], [owner.encode(), mine.encode()],
                       [other.encode(), theirs.encode()]], [
        [owner.encode(), theirs.encode()], [owner.encode(), b""], [owner.encode(), internal],
        [b"\xff" + owner.encode(), mine.encode()], [owner.encode(), mine.encode() + b"\x80"],
        [owner.encode(), None], [None, mine.encode()], [None, None], [b"", mine.encode()],
        [b"a" * 65, mine.encode()], [owner.encode(), b"t" * 257], [mine.encode(), owner.encode()],
        ["\u00e9".encode("latin-1") + owner.encode(), mine.encode()]]))
    if upload:
        path, who = file_id, [owner.encode(), mine.encode()]
    lines = [method + b" /files/" + path.encode() + b" HTTP/1.1", b"Host: x"]
    for header, value in zip((mesatee_http.USER_ID_HEADER, mesatee_http.USER_TOKEN_HEADER), who):
        if value is not None:
            lines.append(header.encode() + b": " + value)
    if draw(rarely()):
        lines.append(b"Authorization: Bearer " + internal)
    if draw(rarely()):                      # the header twice
        lines.append(mesatee_http.USER_ID_HEADER.encode() + b": " + other.encode())
    sent = draw(mostly([size], [size - 1, size + 1, 0, 1, 2 * size + 1, max(size - 16, 0)], 2))
    if method in (b"GET", b"HEAD") and not draw(rarely()):
        sent = 0
    body = bytes([draw(st.integers(0, 255))]) * sent
    framing = draw(mostly(["length", "chunked", "expect"], ["declared-more", "declared-less", "none",
                                                             "expect-after-body", "bad-chunked", "hang-up"], 2))
    half_close = framing == "hang-up"       # the whole request, then the client's end of the connection
    if framing in ("length", "expect", "expect-after-body", "hang-up"):
        lines.append(b"Content-Length: %d" % len(body))
        if framing.startswith("expect"):
            lines.append(b"Expect: " + draw(mostly([b"100-continue"], [b"100-Continue", b"200-ok"])))
    elif framing.endswith("chunked"):
        lines.append(b"Transfer-Encoding: chunked")
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
        parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)]) if b > a]
        body = b"".join(b"%x\r\n" % len(part) + part + b"\r\n" for part in parts) + b"0\r\n\r\n"
        if framing == "bad-chunked":
            body = body[:draw(st.integers(0, len(body)))] + draw(st.sampled_from([b"zz\r\n", b"1\r\nabc\r\n", b""]))
            half_close = True
    elif framing == "declared-more":          # the body ends (half-close) before its Content-Length
        lines.append(b"Content-Length: %d" % (len(body) + draw(st.integers(1, 100))))
        half_close = True
    elif framing == "declared-less":          # the rest of the body is what the server reads next
        lines.append(b"Content-Length: %d" % max(len(body) - draw(st.integers(1, 20)), 0))
    slow = draw(rarely())
    return Hostile("RAW", "", {}, b"", raw=b"\r\n".join(lines) + b"\r\n\r\n" + body, pieces=3 if slow else 1,
                   half_close=half_close, await_continue=framing == "expect")


async def run_mesatee_suite(world: World, name: str, site: str, examples: int, strategy,
                            check: Callable[[Hostile, Answer], None], captured_logs, caplog,
                            explicit: list[dict | Hostile] = (),
                            after: Callable[[], Awaitable[None]] | None = None) -> Counter:
    """`explicit`: requests sent first, a dict as a body POSTed as it is (with the internal credential
    on an internal site): cases of what the suites found, so that each fails every time until it is
    fixed (see the tests after the suites). `after`: the site's own checks of its state, made before
    the logs are looked at."""
    answers: list[Answer] = []
    auth = {"Authorization": f"Bearer {world.mesatee.token}"} if site.endswith("-internal") else {}
    cases = tuple(case if isinstance(case, Hostile) else Hostile("POST", "/", auth, orjson.dumps(case))
                  for case in explicit)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        url, port = world.mesatee.url(site), world.mesatee.port(site)
        tally = await run_in_thread(name, examples, strategy, lambda request: send(http, url, port, request),
                                    recording(check, answers), cases)
    await asyncio.sleep(0.2)                 # a late log line (a client gone mid-body) comes too
    logs = captured_logs()
    assert tally["requests"] >= examples and not [s for s in tally if isinstance(s, int) and s >= 500], tally
    no_answers_are_rare(tally)
    if after is not None:
        await after()
    traced = [redacted(line, world.secrets()) for line in logs.splitlines() if "Traceback" in line]
    assert not traced, "tracebacks in the logs:\n" + "\n".join(traced[:3])
    assert_quiet_logs(logs, caplog)
    # the TMS sweep failing a task that the internal suite (an authorised caller) set Running with a
    # passed deadline: correct, and it may come during any later suite of this module
    lines = assert_one_line_per_refusal(logs, answers, background=("lost task failed",))
    print(f"refusal lines per refused request (server-made ids): {dict(sorted(lines.items()))}")
    # last, so that the other properties are checked whatever this finds (and never print the secret)
    leaks = [line for secret in world.secrets() for line in lines_with(logs, secret)]
    assert not leaks, "credentials in the logs (replaced here by <the credential>):\n" + "\n".join(leaks)
    return tally


def _external(world: World, paths: list[str], bodies: st.SearchStrategy[bytes]) -> st.SearchStrategy[Hostile]:
    """Focused requests (the site's own bodies), also with the internal credential (which an external
    site ignores) and any body, and random ones."""
    internal = {"Authorization": f"Bearer {world.mesatee.token}"}
    return choose(focused_requests("POST", paths, {}, bodies), focused_requests("POST", paths, {}, bodies),
                  focused_requests("POST", paths, internal, bodies | common_bodies),
                  hostile_requests(random_paths(paths), world.mesatee.token, bodies | common_bodies))


def _internal(world: World, bodies: st.SearchStrategy[bytes]) -> st.SearchStrategy[Hostile]:
    """Focused requests with the internal credential, and with a user's token or a task token instead;
    random ones."""
    token = world.mesatee.token
    wrong = [world.owner[1], world.tasks["ready"]["task_token"], token.upper(), token[:-1]]
    right = {"Authorization": f"Bearer {token}"}
    return choose(focused_requests("POST", ["/"], right, bodies), focused_requests("POST", ["/"], right, bodies),
                  st.sampled_from(wrong).flatmap(
                      lambda other: focused_requests("POST", ["/"], {"Authorization": f"Bearer {other}"}, bodies)),
                  hostile_requests(random_paths(["/"]), token, bodies | common_bodies),
                  hostile_requests(random_paths(["/"]), world.owner[1], bodies | common_bodies))


async def test_hostile_suite_against_the_mesatee_tdfs(mesatee: Mesatee, captured_logs, caplog):
    world = await make_world(mesatee)
    strategy = _external(world, ["/"], tdfs_bodies(world))
    me = dict(zip(("user_id", "user_token"), world.owner))
    misplaced = [{"type": "Get", **me, "file_id": world.owner[1]}, {"type": world.owner[1], **me}]
    check = mesatee_checker(("Create", "Get", "List", "Delete"))
    await run_mesatee_suite(world, "MesaTEE TDFS (5065) POST /", "mesatee-tdfs", TDFS_REQUESTS, strategy, check,
                            captured_logs, caplog, misplaced)


async def test_hostile_uploads_and_downloads_on_the_mesatee_tdfs(mesatee: Mesatee, captured_logs, caplog):
    world = await make_world(mesatee)
    paths = [f"/files/{file_id}" for file_id in [*world.files.values(), world.spares[0]]]
    owner = {mesatee_http.USER_ID_HEADER: world.owner[0], mesatee_http.USER_TOKEN_HEADER: world.owner[1]}
    sized = st.sampled_from([world.sizes[world.files["full"]]] * 3 + [0, 1, 79, 81]).map(lambda n: b"u" * n)
    strategy = choose(file_requests(world), file_requests(world), file_requests(world, upload=True),
                      focused_requests("PUT", paths, owner, sized | common_bodies),
                      focused_requests("GET", paths, owner, st.just(b"")),
                      hostile_requests(random_paths(paths + ["/"]), None, sized | common_bodies))
    check = mesatee_checker(("Create", "Get", "List", "Delete", "Upload"), octets=True)
    user = [(mesatee_http.USER_ID_HEADER, world.owner[0]), (mesatee_http.USER_TOKEN_HEADER, world.owner[1])]
    gone = [Hostile("RAW", "", {}, b"", raw=request_bytes(method, f"/files/{world.files['full']}", extra=user),
                    half_close=True) for method in ("GET", "HEAD")]     # clients that leave before the answer
    ours = {*world.files.values(), *world.spares}

    async def nothing_half_stored() -> None:
        """No upload stays staged, and what is stored has exactly its size and is served whole."""
        def staged() -> list[str]:
            return [p.name for p in mesatee.files_dir.iterdir() if p.name.split(".", 1)[0] in ours
                    and p.name.endswith(file_store.PART_SUFFIX)]

        await eventually(lambda: not staged(), timeout=5)
        for file_id in ours:
            stored = mesatee.files_dir / file_id
            if stored.exists():
                assert stored.stat().st_size == world.sizes[file_id], file_id
        async with mesatee.http.get(f"{mesatee.url('mesatee-tdfs')}/files/{world.files['full']}",
                                    headers=owner) as response:
            assert response.status == 200 and len(await response.read()) == world.sizes[world.files["full"]]

    await run_mesatee_suite(world, "MesaTEE TDFS (5065) PUT/GET/HEAD /files", "mesatee-tdfs", TDFS_FILES_REQUESTS,
                            strategy, check, captured_logs, caplog, gone, nothing_half_stored)


async def test_hostile_suite_against_the_mesatee_internal_tdfs(mesatee: Mesatee, captured_logs, caplog):
    world = await make_world(mesatee)
    strategy = _internal(world, tdfs_internal_bodies(world))
    misplaced = [{"type": "Get", "file_id": mesatee.token}]
    await run_mesatee_suite(world, "MesaTEE TDFS internal (5066)", "mesatee-tdfs-internal", TDFS_INTERNAL_REQUESTS,
                            strategy, mesatee_checker(("Create", "Get")), captured_logs, caplog, misplaced)


async def test_hostile_suite_against_the_mesatee_tms(mesatee: Mesatee, captured_logs, caplog):
    world = await make_world(mesatee)
    strategy = _external(world, ["/"], tms_bodies(world))
    misplaced = [{"type": "Get", "user_id": world.owner[0], "user_token": world.owner[1], "task_id": world.owner[1]}]
    await run_mesatee_suite(world, "MesaTEE TMS (5554)", "mesatee-tms", TMS_REQUESTS, strategy,
                            mesatee_checker(("Create", "Get", "Update", "List")), captured_logs, caplog, misplaced)


async def test_hostile_suite_against_the_mesatee_internal_tms(mesatee: Mesatee, captured_logs, caplog):
    world = await make_world(mesatee)
    strategy = _internal(world, tms_internal_bodies(world))
    misplaced = [{"type": "Update", "task_id": world.tasks["ready"]["task_id"], "status": mesatee.token,
                  "output_files": []}]
    await run_mesatee_suite(world, "MesaTEE TMS internal (5555)", "mesatee-tms-internal", TMS_INTERNAL_REQUESTS,
                            strategy, mesatee_checker(("Get", "Update")), captured_logs, caplog, misplaced)


async def test_hostile_suite_against_the_mesatee_function_node(mesatee: Mesatee, captured_logs, caplog):
    world = await make_world(mesatee)
    strategy = _external(world, ["/"], fns_bodies(world))
    task = world.tasks["echo0"]
    misplaced = [{"task_id": world.owner[1], "function_name": "echo", "task_token": task["task_token"],
                  "payload": "x"}]
    await run_mesatee_suite(world, "MesaTEE FNS (3444)", "mesatee-fns", FNS_REQUESTS, strategy,
                            mesatee_checker(result=True), captured_logs, caplog, misplaced)


# -- what the suites found, pinned down ------------------------------------------------------------------------

def _refusal_lines(logs: str, request_id: str) -> list[dict]:
    return [line for line in map(orjson.loads, logs.splitlines())
            if line.get("request_id") == request_id and line["event"] in REFUSALS]


async def test_every_refusal_on_a_mesatee_site_leaves_one_log_line(mesatee: Mesatee, captured_logs):
    """The runner answers an unknown path (404), a method the path does not take (405) and an Expect
    other than 100-continue (417) before any handler, and logs nothing for them; every other refusal
    (the controls) leaves one line."""
    cases = {"unknown path (404)": request_bytes("POST", "/nope", b"{}"),
             "GET of the POST route (405)": request_bytes("GET", "/"),
             "Expect: 200-ok (417)": request_bytes(body=b"{}", extra=[("Expect", "200-ok")]),
             "control: not JSON (400)": request_bytes(body=b"x"),
             "control: gzip (415)": request_bytes(body=b"{}", extra=[("Content-Encoding", "gzip")]),
             "control: parser error (400)": request_bytes(body=b"{}", host=False)}
    answered = {}
    for name, data in cases.items():
        response = await raw_exchange(mesatee.port("mesatee-tms"), data)
        assert_kms_error(response, (400, 404, 405, 415, 417))
        answered[name] = response.headers["x-request-id"]
    await asyncio.sleep(0.2)
    logs = captured_logs()
    unlogged = [name for name, request_id in answered.items() if len(_refusal_lines(logs, request_id)) != 1]
    assert not unlogged, f"refusals without exactly one log line: {unlogged}"


async def test_a_credential_sent_in_the_wrong_field_stays_out_of_mesatee_logs(mesatee: Mesatee, captured_logs):
    """A user token (or the internal token, or a task token) sent where an id or a tag belongs is quoted
    in the 400's message, which is fine for the client who sent it; the log line of the refusal must
    not quote it."""
    (owner, token), internal = mesatee.users[0], mesatee.token
    task = await mesatee.call("mesatee-tms", {"type": "Create", "function_name": "echo", "collaborator_list": [],
                                              "files": [], "user_id": owner, "user_token": token})
    me = {"user_id": owner, "user_token": token}
    cases = {"a user token as file_id": ("mesatee-tdfs", {"type": "Get", **me, "file_id": token}, token),
             "a user token as type": ("mesatee-tdfs", {"type": token, **me}, token),
             "a user token as task_id": ("mesatee-tms", {"type": "Get", **me, "task_id": token}, token),
             "a task token as task_id": ("mesatee-fns", {"task_id": task["task_token"], "function_name": "echo",
                                                         "task_token": task["task_token"], "payload": "x"},
                                         task["task_token"]),
             "the internal token as file_id": ("mesatee-tdfs-internal", {"type": "Get", "file_id": internal}, internal),
             "the internal token as status": ("mesatee-tms-internal", {
                 "type": "Update", "task_id": task["task_id"], "status": internal, "output_files": []}, internal)}
    leaked = []
    for case, (site, body, secret) in cases.items():
        hdrs = [("Authorization", f"Bearer {internal}")] if site.endswith("-internal") else []
        response = await raw_exchange(mesatee.port(site), request_bytes(body=orjson.dumps(body), extra=hdrs))
        assert_kms_error(response, 400)
        await asyncio.sleep(0.05)
        lines = _refusal_lines(captured_logs(), response.headers["x-request-id"])
        assert len(lines) == 1, lines
        if secret in orjson.dumps(lines[0]).decode():
            leaked.append(f"{case} ({site}): {lines[0]['error'].replace(secret, '<the credential>')}")
    assert not leaked, "credentials quoted in log lines:\n" + "\n".join(leaked)


async def test_a_mesatee_upload_refused_on_its_headers_gets_no_100_continue(mesatee: Mesatee):
    """`Expect: 100-continue` exists so that a client learns of a refusal before it sends its body
    (a TDFS upload may be 4 GiB): a PUT the TDFS refuses on its headers alone (wrong size, wrong
    token, another's file) must be answered at once, not invited to send."""
    owner, other = mesatee.users[0], mesatee.users[1]
    file_id, size = await _file(mesatee, owner, b"x" * 64, content=False)

    async def first_answer(who: tuple[str, str], length: int) -> int:
        reader, writer = await asyncio.open_connection(HOST, mesatee.port("mesatee-tdfs"))
        try:
            writer.write(request_bytes("PUT", f"/files/{file_id}", extra=[
                (mesatee_http.USER_ID_HEADER, who[0]), (mesatee_http.USER_TOKEN_HEADER, who[1]),
                ("Expect", "100-continue")]).replace(b"Content-Length: 0", b"Content-Length: %d" % length))
            await writer.drain()
            return (await read_response(reader, timeout=3, interim=True)).status
        finally:
            writer.close()

    assert await first_answer(owner, size) == 100                     # the control: it may send
    answers = {"one byte more": await first_answer(owner, size + 1),
               "one byte less": await first_answer(owner, size - 1),
               "a wrong token": await first_answer((owner[0], owner[1] + "x"), size),
               "another user's upload": await first_answer(other, size)}
    invited = [case for case, status in answers.items() if status == 100]
    assert not invited, f"invited to send a body that will be refused: {invited} ({answers})"


async def test_a_mesatee_download_whose_client_left_logs_no_traceback(mesatee: Mesatee, captured_logs):
    """A client that sends its GET (or HEAD) of /files/<id> and closes its end (a download given up
    at once, `nc -N`): nobody is left to answer, and the log says so in one line at most, without a
    traceback (as for every other request a client leaves, below)."""
    file_id, _ = await _file(mesatee, mesatee.users[0], b"x" * 64)
    user = [(mesatee_http.USER_ID_HEADER, mesatee.users[0][0]), (mesatee_http.USER_TOKEN_HEADER, mesatee.users[0][1])]
    sent = {"GET": request_bytes("GET", f"/files/{file_id}", extra=user),
            "HEAD": request_bytes("HEAD", f"/files/{file_id}", extra=user),
            "control: PUT": request_bytes("PUT", f"/files/{file_id}", b"u" * 80, extra=user),
            "control: POST /": request_bytes(body=orjson.dumps({"type": "List", "user_id": mesatee.users[0][0],
                                                                "user_token": mesatee.users[0][1]}))}
    loud = {}
    for name, data in sent.items():
        before = len(captured_logs().splitlines())
        try:
            await raw_exchange(mesatee.port("mesatee-tdfs"), data, timeout=3, half_close=True)
        except Closed:
            pass                   # (aiohttp takes a half-close for the client leaving: no answer)
        await asyncio.sleep(0.2)
        lines = [orjson.loads(line) for line in captured_logs().splitlines()[before:]]
        bad = [line for line in lines if line["level"] not in ("debug", "info") or "exception" in line]
        if bad:
            loud[name] = [f"{line['level']} {line['event']}: {line.get('exception', '').splitlines()[-1:]}"
                          for line in bad]
    assert not loud, f"a client that left got tracebacks logged: {loud}"
