"""The MesaTEE scenario: the seed's psi and echo flows between user1 and user2, on the bus.

Regenerate tests/recordings/mesatee_scenario.jsonl (needs no running NATS: it embeds its own server):

    python -m tests.replay.record_mesatee [OUTPUT]

The driver speaks as the `gateway` role (what the HTTP adapters' internal ports use), so its replies
come to `_INBOX.gateway.` and the recording names that prefix: a replay resends only the driver's
requests, and compares the requests the components make of each other (users authenticate, TDFS ->
KMS, TMS -> TDFS, FNS -> TMS, TDFS and KMS) with the recorded ones.

Set-up, not scenario: the seed's users user1/token1 and user2/token2 are added (as `admin`) before
recording starts. The test session's bus is shared and other tests add the same users with the
same tokens, so an add may find them there (409); `ensure_users` then checks the token instead.

Side effects off the bus: after each TDFS Create the driver writes its input, sealed under the
returned `key_config`, to the returned `access_path`; a replay does the same with the replayed
reply (`after_reply`). The plaintexts are this module's constants. The scenario checks every
outcome while recording (the results decrypt to the golden outputs), so a broken service cannot be
recorded as "expected". The file holds throw-away keys generated for the recording.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nats.aio.client import Client

from bus import errors
from bus.component import Component, Context
from bus.requester import Requester
from bus.roles import ADMIN, GATEWAY, inbox_prefix
from components.mesatee import subjects
from components.mesatee.config import MesateeConfig
from components.mesatee.fns import FnsComponent
from components.mesatee.kms import KmsComponent
from components.mesatee.system import MANIFEST
from components.mesatee.tdfs import TdfsComponent
from components.mesatee.tms import TmsComponent
from components.mesatee.users import UsersComponent
from tests.replay.normalise import Normaliser
from tests.replay import regenerate
from tests.replay.recording import Exchange, Message, Recording

RECORDING = Path(__file__).resolve().parent.parent / "recordings" / "mesatee_scenario.jsonl"
SCENARIO = "mesatee"
DRIVER_ROLE = GATEWAY
DRIVER_INBOX = f"{inbox_prefix(DRIVER_ROLE)}."

USERS = {"user1": "token1", "user2": "token2"}          # the seed's demo users
A, B, C, D, E = (bytes([c]) * 32 for c in b"abcde")
INPUTS = {"psi-user1": A + B + D + E, "psi-user2": B + C + D}   # file_name -> plaintext (FACTS.md)
GOLDEN = {"user1": bytes([0, 1, 1, 0]), "user2": bytes([1, 0, 1])}
ECHO_PAYLOAD = "echo_payload"
WRONG_TOKEN = "not-token1"

# Started in this order (each needs only those before it), stopped in reverse, a data directory each.
COMPONENTS: tuple[type[Component], ...] = (UsersComponent, KmsComponent, TdfsComponent, TmsComponent,
                                            FnsComponent)
CONFIG = MesateeConfig(fns_workers=1)

# Fresh on every run: ids, tokens, key material, paths under the data directory, times.
MESATEE_NORMALISER = Normaliser(random_paths=(
    "file_id", "access_path", "key_config.*",                         # TDFS Create (and internal)
    "file_info.access_path", "file_info.key_config.*", "file_info.key_id",   # TDFS Get (and internal)
    "task_id", "task_token",                                          # TMS Create, Update; FNS -> TMS
    "task_info.task_token", "task_info.user_private_result_file_id.*",
    "task_info.input_files.*.file_id", "task_info.output_files.*.file_id",   # TMS internal Get
    "output_files.*.file_id", "running_deadline",                     # FNS -> TMS internal Update
    "key_id", "config.*",                                             # KMS
    "at",                                                             # events
))

Connect = Callable[[str], Awaitable[Client]]


# -- files, as a MesaTEE client on this machine handles them ------------------------------------------

def _aead(config: dict[str, str]) -> tuple[AESGCM, bytes, bytes]:
    key, nonce, ad = (base64.b64decode(config[name]) for name in ("key", "nonce", "ad"))
    return AESGCM(key), nonce, ad


def seal(plaintext: bytes, config: dict[str, str]) -> bytes:
    """AES-256-GCM `ciphertext || tag` under a TDFS key_config."""
    aead, nonce, ad = _aead(config)
    return aead.encrypt(nonce, plaintext, ad)


def unseal(sealed: bytes, config: dict[str, str]) -> bytes:
    aead, nonce, ad = _aead(config)
    return aead.decrypt(nonce, sealed, ad)


def write_input(file_name: str, created: dict[str, Any]) -> None:
    """The side effect of a TDFS Create: the named input, sealed, written where the TDFS said."""
    Path(created["access_path"]).write_bytes(seal(INPUTS[file_name], created["key_config"]))


def read_result(file_info: dict[str, Any]) -> bytes:
    """A result file's plaintext, from a TDFS Get's file_info; checked against its sha256 and size."""
    plaintext = unseal(Path(file_info["access_path"]).read_bytes(), file_info["key_config"])
    assert hashlib.sha256(plaintext).hexdigest() == file_info["sha256"], "a result's sha256 must match"
    assert len(plaintext) == file_info["file_size"], "a result's file_size must match"
    return plaintext


def after_reply(exchange: Exchange, replayed: Message) -> None:
    """The replay's side effects: each replayed TDFS Create's input written as the driver wrote it."""
    if exchange.request.subject == subjects.tdfs("Create") and replayed.error_code is None:
        write_input(exchange.request.json_view()["file_name"], replayed.json_view())


# -- a fresh deployment -------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def running_mesatee(connect_as: Connect, directory: Path) -> AsyncIterator[list[Component]]:
    """Users, KMS, TDFS, TMS and FNS, each on its own data directory under `directory`."""
    started: list[Component] = []
    try:
        for cls in COMPONENTS:
            component = cls(Context(await connect_as(MANIFEST.role), directory / cls.name, CONFIG))
            await component.start()
            started.append(component)
        yield started
    finally:
        for component in reversed(started):
            await component.stop()


async def ensure_users(admin: Requester) -> None:
    """Set-up: the seed's users exist with the seed's tokens (added here, or already there)."""
    for user, token in USERS.items():
        try:
            await admin.request(subjects.users("add"), {"user_id": user, "token": token})
        except errors.Conflict as exc:
            if "already exists" not in exc.message:
                raise
        await admin.request(subjects.users("authenticate"), {"user_id": user, "user_token": token})  # 401: wrong token


# -- the scenario -------------------------------------------------------------------------------------


def _as(user: str) -> dict[str, str]:
    return {"user_id": user, "user_token": USERS[user]}


def _invoke(created: dict[str, Any], function: str, payload: str | None = None) -> dict[str, Any]:
    return {"task_id": created["task_id"], "function_name": function, "task_token": created["task_token"],
            "payload": payload}


async def drive_mesatee_scenario(driver: Requester) -> None:
    """psi: two inputs, Create, Get, invoke too early (409), Update, invoke, each user's result;
    a result asked for by the other user (404); echo: Create, invoke, invoke again (409); a wrong token (401)."""
    async def call(subject: str, body: dict[str, Any]) -> dict[str, Any]:
        return (await driver.request(subject, body)).payload

    inputs = {}
    for file_name, plaintext in INPUTS.items():
        user = file_name.removeprefix("psi-")
        created = await call(subjects.tdfs("Create"), {
            "type": "Create", "file_name": file_name, "sha256": hashlib.sha256(plaintext).hexdigest(),
            "file_size": len(plaintext), **_as(user)})
        write_input(file_name, created)
        inputs[user] = created["file_id"]

    task = await call(subjects.tms("Create"), {"type": "Create", "function_name": "psi", "collaborator_list": ["user2"],
                                                "files": [inputs["user1"]], **_as("user1")})
    info = (await call(subjects.tms("Get"), {"type": "Get", "task_id": task["task_id"], **_as("user1")}))["task_info"]
    assert (info["status"], info["function_type"]) == ("Created", "Multiparty"), info
    assert info["collaborator_list"] == [{"user_id": "user2", "approved": False}], info
    await regenerate.expect_error(409, call(subjects.FNS_INVOKE, _invoke(task, "psi")), "invoke before the approval")
    approved = await call(subjects.tms("Update"), {"type": "Update", "task_id": task["task_id"],
                                                    "files": [inputs["user2"]], **_as("user2")})
    assert approved["status"] == "Ready", approved
    assert await call(subjects.FNS_INVOKE, _invoke(task, "psi")) == {"result": "Finished"}

    results = {}
    for user in USERS:
        info = (await call(subjects.tms("Get"), {"type": "Get", "task_id": task["task_id"], **_as(user)}))["task_info"]
        assert info["status"] == "Finished" and len(info["user_private_result_file_id"]) == 1, info
        results[user] = info["user_private_result_file_id"][0]
    for user in USERS:
        file_info = (await call(subjects.tdfs("Get"), {"type": "Get", "file_id": results[user], **_as(user)}))["file_info"]
        assert read_result(file_info) == GOLDEN[user], f"{user}'s psi result"
    await regenerate.expect_error(404, call(subjects.tdfs("Get"), {"type": "Get", "file_id": results["user1"], **_as("user2")}),
                        "a result asked for by the other user")

    echo = await call(subjects.tms("Create"), {"type": "Create", "function_name": "echo", "collaborator_list": [],
                                                "files": [], **_as("user1")})
    assert await call(subjects.FNS_INVOKE, _invoke(echo, "echo", ECHO_PAYLOAD)) == {"result": ECHO_PAYLOAD}
    await regenerate.expect_error(409, call(subjects.FNS_INVOKE, _invoke(echo, "echo", ECHO_PAYLOAD)), "a second invoke")
    await regenerate.expect_error(401, call(subjects.tms("Get"), {"type": "Get", "task_id": echo["task_id"], "user_id": "user1",
                                                         "user_token": WRONG_TOKEN}), "a wrong user_token")


async def record_mesatee(connect_as: Connect, directory: Path) -> Recording:
    """Run a fresh MesaTEE (data directories under `directory`) and record the scenario driven against it."""
    async with running_mesatee(connect_as, directory):
        await ensure_users(Requester(await connect_as(ADMIN)))
        return await regenerate.record_driven(connect_as, SCENARIO, DRIVER_ROLE, drive_mesatee_scenario)


def main(argv: list[str]) -> int:
    return regenerate.main(argv, RECORDING, MANIFEST, lambda bus, connect_as, tmp: record_mesatee(connect_as, tmp / "mesatee"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
