"""MesaTEE Trusted DFS end to end over HTTP (5065 external, 5066 internal) against the real bus, with
the user registry and the KMS running: the seed's examples, the client's AES-GCM round trip, who may
see what, bad input, uploads and downloads of the encrypted bytes, and a restart."""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path

import aiohttp
import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bus.errors import Conflict, NotFound
from bus.records import Records
from bus.requester import Requester
from components.mesatee import file_store, subjects
from components.mesatee.config import MesateeConfig
from components.mesatee.kms import KmsComponent
from components.mesatee.tdfs import BUCKET, FileRecord, TdfsComponent
from components.mesatee.users import UNAUTHORIZED, UsersComponent
from tests.conftest import eventually, internal_token

# The seed's own request examples, byte for byte.
SEED_CREATE = b'''{
  "type":"Create",
  "file_name":"file",
  "sha256":"233b51fc70dcc0c0ecb4e6ed9dc32d4c421a54859d069ec87fa836cf8c8aeb44",
  "file_size":128,
  "user_id":"user1",
  "user_token":"token1"
}'''
SEED_GET = b'''{
  "type":"Get",
  "file_id":"d18fb288-8fef-48c3-b800-201b2734882e",
  "user_id":"user1",
  "user_token":"token1"
}'''
SEED_LIST = b'''{
\t"type":"List",
\t"user_id":"bbbb",
\t"user_token":"xxxx"
}'''
SEED_DELETE = b'''{
  "type":"Delete",
  "file_id":"d18fb288-8fef-48c3-b800-201b2734882e",
  "user_id":"user1",
  "user_token":"token1"
}'''
SEED_INTERNAL_CREATE = b'''{
  "type":"Create",
  "sha256":"85f90dfea1d8027e1463e5ca971a250110a20df0119d204a74220bc63516d15b",
  "file_size":3,
  "user_id":"user2",
  "task_id":"5ef0cfc7-11e9-445a-8c46-23790ea86819",
  "collaborator_list":[],
  "allow_policy":0
}'''
SEED_INTERNAL_GET = b'''{
  "type":"Get",
  "file_id":"b76f9ee2-63d2-43bd-a722-466792af7035"
}'''
SEED_USERS = {"user1": "token1", "user2": "token2", "bbbb": "xxxx"}
MiB = 1024 * 1024
_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_names)}-{os.urandom(3).hex()}"


class Tdfs:
    """A client of both TDFS ports and of the bus, as the tests need it."""

    def __init__(self, session: aiohttp.ClientSession, external: str, internal: str, token: str,
                 admin: Requester) -> None:
        self.session, self.external, self.internal, self.token, self.admin = session, external, internal, token, admin
        self.tokens: dict[str, str] = {}

    async def user(self, prefix: str = "u", token: str | None = None, user_id: str | None = None) -> str:
        user_id = user_id or unique(prefix)
        body = {"user_id": user_id} if token is None else {"user_id": user_id, "token": token}
        try:
            added = (await self.admin.request(subjects.users("add"), body)).payload
        except Conflict:   # a demo user of an earlier test in this session: start afresh
            await self.admin.request(subjects.users("remove"), {"user_id": user_id})
            added = (await self.admin.request(subjects.users("add"), body)).payload
        self.tokens[user_id] = added["user_token"]
        return user_id

    async def post(self, body: bytes | dict, *, internal: bool = False, token: str | None = "default",
                   ) -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        headers = {}
        if internal and token is not None:
            headers["Authorization"] = f"Bearer {self.token if token == 'default' else token}"
        url = (self.internal if internal else self.external) + "/"
        async with self.session.post(url, data=data, headers=headers) as resp:
            return resp.status, orjson.loads(await resp.read())

    async def call(self, body: dict, *, internal: bool = False) -> dict:
        status, reply = await self.post(body, internal=internal)
        assert status == 200, reply
        return reply

    def creds(self, user: str) -> dict[str, str]:
        return {"user_id": user, "user_token": self.tokens[user]}

    async def create(self, user: str, plaintext: bytes, name: str = "file") -> dict:
        return await self.call({"type": "Create", "file_name": name, "sha256": hashlib.sha256(plaintext).hexdigest(),
                                "file_size": len(plaintext), **self.creds(user)})

    async def create_internal(self, owner: str, plaintext: bytes, policy: int, collaborators: list[str]) -> dict:
        return await self.call({"type": "Create", "sha256": hashlib.sha256(plaintext).hexdigest(),
                                "file_size": len(plaintext), "user_id": owner, "task_id": str(uuid.uuid4()),
                                "collaborator_list": collaborators, "allow_policy": policy}, internal=True)

    async def get(self, user: str, file_id: str) -> tuple[int, dict]:
        return await self.post({"type": "Get", "file_id": file_id, **self.creds(user)})

    async def list(self, user: str) -> list[str]:
        return (await self.call({"type": "List", **self.creds(user)}))["list"]

    async def delete(self, user: str, file_id: str) -> tuple[int, dict]:
        return await self.post({"type": "Delete", "file_id": file_id, **self.creds(user)})

    def file_headers(self, user: str, token: str | None = None) -> dict[str, str]:
        return {"Teebus-User-Id": user, "Teebus-User-Token": token or self.tokens[user]}

    async def upload(self, user: str, file_id: str, data, **extra) -> tuple[int, dict]:
        async with self.session.put(f"{self.external}/files/{file_id}", data=data,
                                    headers={**self.file_headers(user), **extra}) as resp:
            return resp.status, orjson.loads(await resp.read())

    async def download(self, user: str, file_id: str) -> tuple[int, bytes, aiohttp.ClientResponse]:
        async with self.session.get(f"{self.external}/files/{file_id}", headers=self.file_headers(user)) as resp:
            chunks = [chunk async for chunk in resp.content.iter_chunked(256 * 1024)]
            return resp.status, b"".join(chunks), resp


def encrypt(key_config: dict, plaintext: bytes) -> bytes:
    """What a MesaTEE client writes: AES-256-GCM ciphertext || 16-byte tag."""
    key, nonce, ad = (base64.b64decode(key_config[name]) for name in ("key", "nonce", "ad"))
    return AESGCM(key).encrypt(nonce, plaintext, ad)


def decrypt(key_config: dict, stored: bytes) -> bytes:
    key, nonce, ad = (base64.b64decode(key_config[name]) for name in ("key", "nonce", "ad"))
    return AESGCM(key).decrypt(nonce, stored, ad)


async def chunks_of(data: bytes, size: int = 64 * 1024):
    """A body sent chunked (no Content-Length), piece by piece."""
    for offset in range(0, len(data), size):
        yield data[offset:offset + size]


@pytest.fixture
async def services(start_component):
    await start_component(UsersComponent)
    await start_component(KmsComponent)


@pytest.fixture
async def tdfs_component(services, start_component):
    return await start_component(TdfsComponent)


@pytest.fixture
async def client(start_node, connect_as, data_dir):
    node = await start_node(["http.mesatee"])
    admin = Requester(await connect_as("admin"), timeout=10)
    async with aiohttp.ClientSession() as session:
        yield Tdfs(session, node.http.bound["mesatee-tdfs"], node.http.bound["mesatee-tdfs-internal"],
                   internal_token(data_dir), admin)


@pytest.fixture
async def tdfs(tdfs_component, client):
    return client


async def bucket_seq(connect_as) -> int:
    """The metadata bucket's last write sequence: unchanged means nothing was written."""
    info = await (await connect_as("admin")).jetstream().stream_info(f"KV_{BUCKET}")
    return info.state.last_seq


async def kms_get(admin: Requester, key_id: str) -> dict:
    return (await admin.request(subjects.kms("Get"), {"type": "Get", "key_id": key_id})).payload


def assert_key_config(config: dict) -> None:
    assert {name: len(base64.b64decode(value, validate=True)) for name, value in config.items()} == \
        {"key": 32, "nonce": 12, "ad": 5}


# -- the seed's examples --------------------------------------------------------------------------------

async def test_the_seeds_examples_verbatim(tdfs, data_dir):
    for user, token in SEED_USERS.items():
        await tdfs.user(user_id=user, token=token)

    status, created = await tdfs.post(SEED_CREATE)
    assert status == 200, created
    assert list(created) == ["type", "file_id", "access_path", "key_config"] and created["type"] == "Create"
    assert uuid.UUID(created["file_id"]).version == 4
    assert created["access_path"] == str(data_dir / "mesatee" / "files" / created["file_id"])
    assert (data_dir / "mesatee" / "files").stat().st_mode & 0o777 == 0o700
    assert_key_config(created["key_config"])

    for example in (SEED_GET, SEED_DELETE):   # the examples' file id was never created here
        status, error = await tdfs.post(example)
        assert (status, error["type"]) == (404, "Error")
        assert "d18fb288-8fef-48c3-b800-201b2734882e" in error["message"]
    assert await tdfs.post(SEED_LIST) == (200, {"type": "List", "list": []})

    status, output = await tdfs.post(SEED_INTERNAL_CREATE, internal=True)
    assert status == 200 and list(output) == ["type", "file_id", "access_path", "key_config"], output
    status, error = await tdfs.post(SEED_INTERNAL_GET, internal=True)
    assert status == 404 and "b76f9ee2-63d2-43bd-a722-466792af7035" in error["message"]
    info = (await tdfs.call({"type": "Get", "file_id": output["file_id"]}, internal=True))["file_info"]
    assert list(info) == ["user_id", "file_name", "sha256", "file_size", "access_path", "task_id",
                          "collaborator_list", "allow_policy", "key_id"]
    assert info == {"user_id": "user2", "file_name": "5ef0cfc7-11e9-445a-8c46-23790ea86819",
                    "sha256": "85f90dfea1d8027e1463e5ca971a250110a20df0119d204a74220bc63516d15b",
                    "file_size": 3, "access_path": output["access_path"],
                    "task_id": "5ef0cfc7-11e9-445a-8c46-23790ea86819", "collaborator_list": [],
                    "allow_policy": 0, "key_id": info["key_id"]}
    assert (await kms_get(tdfs.admin, info["key_id"]))["config"] == output["key_config"]

    got = (await tdfs.call({"type": "Get", "file_id": created["file_id"], **tdfs.creds("user1")}))["file_info"]
    assert list(got) == ["user_id", "file_name", "sha256", "file_size", "access_path", "task_id",
                         "collaborator_list", "key_config"]
    assert got["task_id"] is None and got["file_name"] == "file" and got["key_config"] == created["key_config"]
    # user1 and user2 are the seed's users, which other tests use too: their lists hold more
    mine, theirs = await tdfs.list("user1"), await tdfs.list("user2")
    assert created["file_id"] in mine and created["file_id"] not in theirs
    assert output["file_id"] in theirs and output["file_id"] not in mine
    assert (await tdfs.delete("user1", created["file_id"]))[0] == 200
    assert (await tdfs.delete("user2", output["file_id"]))[0] == 200


# -- the client's round trip ----------------------------------------------------------------------------

async def test_create_write_get_list_delete(tdfs, data_dir):
    owner = await tdfs.user("owner")
    plaintext = os.urandom(1000)
    created = await tdfs.create(owner, plaintext, "report.bin")
    path = Path(created["access_path"])
    path.write_bytes(encrypt(created["key_config"], plaintext))   # as a client on this machine does

    got = (await tdfs.call({"type": "Get", "file_id": created["file_id"], **tdfs.creds(owner)}))
    assert got["type"] == "Get"
    info = got["file_info"]
    opened = decrypt(info["key_config"], Path(info["access_path"]).read_bytes())
    assert opened == plaintext and hashlib.sha256(opened).hexdigest() == info["sha256"]
    assert (info["user_id"], info["file_name"], info["file_size"], info["collaborator_list"]) == \
        (owner, "report.bin", 1000, [])
    assert await tdfs.list(owner) == [created["file_id"]]
    key_id = (await tdfs.call({"type": "Get", "file_id": created["file_id"]}, internal=True))["file_info"]["key_id"]

    status, deleted = await tdfs.delete(owner, created["file_id"])
    assert status == 200 and deleted == {"type": "Delete", "file_info": info}
    assert not path.exists()                                             # the bytes,
    with pytest.raises(NotFound):
        await kms_get(tdfs.admin, key_id)                                # the key,
    assert (await tdfs.get(owner, created["file_id"]))[0] == 404         # and the metadata are gone
    assert (await tdfs.post({"type": "Get", "file_id": created["file_id"]}, internal=True))[0] == 404
    assert await tdfs.list(owner) == []
    assert (await tdfs.delete(owner, created["file_id"]))[0] == 404


async def test_sha256_is_kept_in_lower_case_and_files_are_listed_oldest_first(tdfs):
    owner = await tdfs.user("case")
    digest = hashlib.sha256(b"abc").hexdigest()
    first = await tdfs.call({"type": "Create", "file_name": "", "sha256": digest.upper(), "file_size": 3,
                             **tdfs.creds(owner)})
    second = await tdfs.create(owner, b"xyz")
    status, got = await tdfs.get(owner, first["file_id"].upper())
    assert status == 200 and got["file_info"]["sha256"] == digest and got["file_info"]["file_name"] == ""
    assert await tdfs.list(owner) == [first["file_id"], second["file_id"]]


# -- who may see what -----------------------------------------------------------------------------------

async def test_authorisation_matrix(tdfs):
    owner, collaborator, stranger = (await tdfs.user("owner"), await tdfs.user("collab"),
                                     await tdfs.user("stranger"))
    private = (await tdfs.create(owner, b"private"))["file_id"]                                  # policy 0
    named_private = (await tdfs.create_internal(owner, b"named", 0, [collaborator]))["file_id"]  # 0, named
    shared = (await tdfs.create_internal(owner, b"shared", 1, [collaborator]))["file_id"]        # policy 1
    public = (await tdfs.create_internal(owner, b"public", 2, []))["file_id"]                   # policy 2
    visible = {owner: {private, named_private, shared, public}, collaborator: {shared, public},
               stranger: {public}}
    for user, allowed in visible.items():
        for file_id in (private, named_private, shared, public):
            status, reply = await tdfs.get(user, file_id)
            if file_id in allowed:
                assert status == 200 and reply["file_info"]["user_id"] == owner, (user, file_id, reply)
            else:   # exactly as a file that does not exist
                assert (status, reply) == (404, {"type": "Error", "status": 404,
                                                 "message": f"no file {file_id} that you may access"})
    assert await tdfs.list(owner) == [private, named_private, shared, public]
    assert await tdfs.list(collaborator) == [shared]      # named and allowed; public files of others are not listed
    assert await tdfs.list(stranger) == []

    for user, file_id, status in ((collaborator, shared, 403), (stranger, public, 403), (stranger, shared, 404),
                                  (collaborator, private, 404)):
        got_status, error = await tdfs.delete(user, file_id)
        assert got_status == status and error["type"] == "Error", (user, file_id, error)
    assert (await tdfs.get(owner, shared))[0] == 200      # still there

    # the encrypted bytes follow the same rules: read as Get, write by the owner only
    for file_id, plaintext in ((shared, b"shared"), (public, b"public")):
        key_config = (await tdfs.get(owner, file_id))[1]["file_info"]["key_config"]
        assert (await tdfs.upload(owner, file_id, encrypt(key_config, plaintext)))[0] == 200
    assert (await tdfs.upload(collaborator, shared, b"x" * (6 + 16)))[0] == 403
    assert (await tdfs.upload(stranger, private, b"x" * (7 + 16)))[0] == 404
    status, data, _ = await tdfs.download(collaborator, shared)
    key_config = (await tdfs.get(collaborator, shared))[1]["file_info"]["key_config"]
    assert status == 200 and decrypt(key_config, data) == b"shared"
    assert (await tdfs.download(stranger, public))[0] == 200
    status, data, _ = await tdfs.download(stranger, shared)
    assert status == 404 and orjson.loads(data)["message"] == f"no file {shared} that you may access"

    for file_id in (private, named_private, shared, public):
        assert (await tdfs.delete(owner, file_id))[0] == 200
    assert await tdfs.list(owner) == [] and await tdfs.list(collaborator) == []


async def test_a_wrong_token_gets_401_and_no_data(tdfs):
    owner = await tdfs.user("owner")
    file_id = (await tdfs.create(owner, b"secret"))["file_id"]
    nobody = unique("nobody")
    for body in ({"type": "Get", "file_id": file_id, "user_id": owner, "user_token": "wrong"},
                 {"type": "Get", "file_id": file_id, "user_id": nobody, "user_token": "wrong"},
                 {"type": "List", "user_id": owner, "user_token": ""},
                 {"type": "Delete", "file_id": file_id, "user_id": owner, "user_token": "wrong"},
                 {"type": "Create", "file_name": "f", "sha256": "0" * 64, "file_size": 1, "user_id": nobody,
                  "user_token": "token1"}):
        assert await tdfs.post(body) == (401, {"type": "Error", "status": 401, "message": UNAUTHORIZED})
    for method in ("get", "put"):
        async with tdfs.session.request(method, f"{tdfs.external}/files/{file_id}", data=b"x" * 22,
                                        headers=tdfs.file_headers(owner, "wrong")) as resp:
            assert resp.status == 401 and (await resp.json())["message"] == UNAUTHORIZED
    assert (await tdfs.get(owner, file_id))[0] == 200   # nothing was deleted


# -- bad input ------------------------------------------------------------------------------------------

GOOD_CREATE = {"type": "Create", "file_name": "f", "sha256": "ab" * 32, "file_size": 1,
               "user_id": "someone", "user_token": "something"}
GOOD_INTERNAL = {"type": "Create", "sha256": "ab" * 32, "file_size": 1, "user_id": "someone",
                 "task_id": "t1", "collaborator_list": [], "allow_policy": 1}


def without(body: dict, name: str) -> dict:
    return {key: value for key, value in body.items() if key != name}


@pytest.mark.parametrize("body, internal, message", [
    ({**GOOD_CREATE, "sha256": "zz" * 32}, False, "sha256 must be the plaintext's SHA-256 as 64 hexadecimal"),
    ({**GOOD_CREATE, "sha256": "ab" * 31 + "a"}, False, "sha256 must be"),
    ({**GOOD_CREATE, "sha256": 12}, False, "sha256 must be"),
    ({**GOOD_CREATE, "file_size": 2 ** 32}, False, "file_size must be between 0 and 4294967295"),
    ({**GOOD_CREATE, "file_size": -1}, False, "file_size must be between 0 and 4294967295"),
    ({**GOOD_CREATE, "file_size": True}, False, "file_size must be an integer"),
    ({**GOOD_CREATE, "file_size": 1.5}, False, "file_size must be an integer"),
    ({**GOOD_CREATE, "file_size": "1"}, False, "file_size must be an integer"),
    ({**GOOD_CREATE, "file_name": "n" * 1025}, False, "file_name is longer than 1024"),
    ({**GOOD_CREATE, "file_name": None}, False, "file_name must be a string"),
    ({**GOOD_CREATE, "type": "Rename"}, False, "expected one of Create, Get, List, Delete"),
    (without(GOOD_CREATE, "type"), False, "unknown external TDFS request type (missing)"),
    (without(GOOD_CREATE, "sha256"), False, "a Create request needs the field 'sha256'"),
    (without(GOOD_CREATE, "file_size"), False, "a Create request needs the field 'file_size'"),
    (without(GOOD_CREATE, "file_name"), False, "a Create request needs the field 'file_name'"),
    (without(GOOD_CREATE, "user_token"), False, "a Create request needs the field 'user_token'"),
    ({**GOOD_CREATE, "user_id": 7}, False, "user_id must be a string"),
    ({"type": "Get", "user_id": "u", "user_token": "t"}, False, "a Get request needs the field 'file_id'"),
    ({"type": "Get", "file_id": "nope", "user_id": "u", "user_token": "t"}, False, "file_id must be a UUID"),
    ({"type": "Delete", "file_id": 5, "user_id": "u", "user_token": "t"}, False, "file_id must be a UUID"),
    ({"type": "List", "user_id": "u"}, False, "a List request needs the field 'user_token'"),
    (["List"], False, "an external TDFS request is a JSON object"),
    ({**GOOD_INTERNAL, "type": "List"}, True, "expected one of Create, Get"),
    ({**GOOD_INTERNAL, "collaborator_list": "bob"}, True, "collaborator_list must be a list"),
    ({**GOOD_INTERNAL, "collaborator_list": [1]}, True, "each collaborator_list entry must be a string"),
    ({**GOOD_INTERNAL, "collaborator_list": ["u"] * 65}, True, "at most 64"),
    ({**GOOD_INTERNAL, "allow_policy": 3}, True, "allow_policy must be 0 (owner only), 1"),
    ({**GOOD_INTERNAL, "allow_policy": True}, True, "allow_policy must be 0"),
    ({**GOOD_INTERNAL, "file_size": 2 ** 32}, True, "file_size must be between"),
    (without(GOOD_INTERNAL, "task_id"), True, "a Create request needs the field 'task_id'"),
    (without(GOOD_INTERNAL, "allow_policy"), True, "needs the field 'allow_policy'"),
    ({"type": "Get", "file_id": "x"}, True, "file_id must be a UUID"),
])
async def test_bad_input_is_400_naming_the_problem_and_writes_nothing(tdfs, connect_as, body, internal, message):
    before = await bucket_seq(connect_as)
    status, error = await tdfs.post(body, internal=internal)
    assert (status, error["type"], error["status"]) == (400, "Error", 400), error
    assert message in error["message"]
    assert await bucket_seq(connect_as) == before


@pytest.mark.parametrize("raw", [b'{"type": "List"', b"", b"\xff"])
async def test_a_body_that_is_not_json_is_400(tdfs, raw):
    for internal in (False, True):
        status, error = await tdfs.post(raw, internal=internal)
        assert status == 400 and "body is not valid JSON" in error["message"]


async def test_json_bodies_stay_small_on_the_upload_site(tdfs):
    body = orjson.dumps({**GOOD_CREATE, "pad": "x" * 70_000})
    status, error = await tdfs.post(body)
    assert status == 413 and "exceeds the limit of 65536" in error["message"]
    async with tdfs.session.post(tdfs.external + "/", data=chunks_of(body, 8192)) as resp:
        assert resp.status == 413 and "exceeds the limit of 65536" in (await resp.json())["message"]


async def test_the_internal_port_wants_the_internal_credential(tdfs):
    for token in (None, "wrong"):
        status, error = await tdfs.post(SEED_INTERNAL_GET, internal=True, token=token)
        assert status == 401 and "internal.token" in error["message"]


# -- the encrypted bytes over HTTP ----------------------------------------------------------------------

async def test_upload_and_download_of_a_multi_mib_file(tdfs, data_dir):
    owner = await tdfs.user("owner")
    plaintext = os.urandom(5 * MiB + 123)
    created = await tdfs.create(owner, plaintext)
    file_id, path = created["file_id"], Path(created["access_path"])
    stored = encrypt(created["key_config"], plaintext)
    assert len(stored) == len(plaintext) + 16

    status, error, _ = await tdfs.download(owner, file_id)
    assert status == 409 and "has no content yet" in orjson.loads(error)["message"]

    status, reply = await tdfs.upload(owner, file_id, chunks_of(stored))    # chunked, no Content-Length
    assert (status, reply) == (200, {"type": "Upload", "file_id": file_id, "size": len(stored)})
    assert path.read_bytes() == stored and path.stat().st_mode & 0o777 == 0o600
    status, data, resp = await tdfs.download(owner, file_id)
    assert status == 200 and data == stored
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert int(resp.headers["Content-Length"]) == len(stored) and resp.headers.get("X-Request-Id")
    key_config = (await tdfs.get(owner, file_id))[1]["file_info"]["key_config"]
    assert decrypt(key_config, data) == plaintext
    async with tdfs.session.head(f"{tdfs.external}/files/{file_id}", headers=tdfs.file_headers(owner)) as resp:
        assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(stored)

    # too much (as it arrives, or as declared) and too little: refused, the stored bytes untouched
    for body, expected in ((chunks_of(stored + b"!"), 413), (stored + b"!", 413), (chunks_of(stored[:-1]), 400),
                           (stored[:-1], 400), (b"", 400)):
        status, error = await tdfs.upload(owner, file_id, body)
        assert (status, error["type"]) == (expected, "Error"), error
        assert f"takes exactly {len(stored)} bytes" in error["message"]
    assert path.read_bytes() == stored
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(file_id)] == [file_id]   # no .part left

    replaced = encrypt(key_config, plaintext[::-1])                   # the owner may write it again
    assert (await tdfs.upload(owner, file_id, replaced))[0] == 200
    assert (await tdfs.download(owner, file_id))[1] == replaced
    assert (await tdfs.delete(owner, file_id))[0] == 200
    assert not path.exists()


@pytest.mark.parametrize("body, status", [
    (b"x" * 24, 413), (b"x" * 22, 400), (b"", 400)])
async def test_upload_sizes_are_exact(tdfs, body, status):
    owner = await tdfs.user("owner")
    file_id = (await tdfs.create(owner, b"seven!!"))["file_id"]      # 7 bytes: 23 stored
    for data in (body, chunks_of(body, 5)):
        got, error = await tdfs.upload(owner, file_id, data)
        assert got == status and "takes exactly 23 bytes" in error["message"]
    assert (await tdfs.upload(owner, file_id, b"x" * 23))[0] == 200


async def test_upload_and_download_bad_requests(tdfs):
    owner = await tdfs.user("owner")
    file_id = (await tdfs.create(owner, b"1"))["file_id"]
    async with tdfs.session.put(f"{tdfs.external}/files/{file_id}", data=b"x" * 17) as resp:
        assert resp.status == 400 and "Teebus-User-Id is missing" in (await resp.json())["message"]
    async with tdfs.session.get(f"{tdfs.external}/files/{file_id}", headers={"Teebus-User-Id": owner}) as resp:
        assert resp.status == 400 and "Teebus-User-Token is missing" in (await resp.json())["message"]
    status, error = await tdfs.upload(owner, "not-a-uuid", b"x")
    assert status == 400 and "the file id in the path must be a UUID" in error["message"]
    status, error = await tdfs.upload(owner, str(uuid.uuid4()), b"x")
    assert status == 404 and "that you may access" in error["message"]
    async with tdfs.session.post(f"{tdfs.external}/files/{file_id}", headers=tdfs.file_headers(owner)) as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "PUT, GET, HEAD"


async def test_an_upload_racing_a_delete_leaves_nothing(tdfs_component, client):
    """The bytes of a file deleted while they were uploading do not outlive its record."""
    owner = await client.user("owner")
    created = await client.create(owner, b"z" * 100)
    record = await tdfs_component.files.get(created["file_id"])

    async def body():
        yield b"y" * 50
        # the owner deletes it mid-upload (through the component, as another client would)
        assert (await client.delete(owner, created["file_id"]))[0] == 200
        yield b"y" * 66

    status, error = await client.upload(owner, created["file_id"], body())
    assert status == 404, error
    assert not Path(created["access_path"]).exists()
    assert not list(Path(created["access_path"]).parent.glob(created["file_id"] + "*"))
    assert record.value.key_id


# -- limits, failures, restarts -------------------------------------------------------------------------

async def test_a_user_may_own_a_bounded_number_of_files(services, start_component, client):
    await start_component(TdfsComponent, config=MesateeConfig(tdfs_max_files_per_user=2))
    owner, other = await client.user("busy"), await client.user("other")
    first = await client.create(owner, b"1")
    await client.create(owner, b"2")
    status, error = await client.post({"type": "Create", "file_name": "3", "sha256": "0" * 64, "file_size": 1,
                                       **client.creds(owner)})
    assert status == 409 and "already owns 2 files" in error["message"] and "tdfs_max_files_per_user" in error["message"]
    status, error = await client.post({"type": "Create", "sha256": "0" * 64, "file_size": 1, "user_id": owner,
                                       "task_id": "t", "collaborator_list": [], "allow_policy": 0}, internal=True)
    assert status == 409
    assert (await client.create(other, b"1"))["type"] == "Create"   # others are not held back
    assert (await client.delete(owner, first["file_id"]))[0] == 200
    assert (await client.create(owner, b"3"))["type"] == "Create"
    assert len(await client.list(owner)) == 2


async def test_a_half_done_delete_is_finished_by_a_retry_or_the_sweep(services, start_component, client,
                                                                      connect_as):
    """A Delete that stopped after marking the record (or after deleting the key) is completed."""
    tdfs = await start_component(TdfsComponent, config=MesateeConfig(tdfs_stale_seconds=0.01))
    owner = await client.user("owner")
    records = await Records.open(await connect_as("mesatee"), BUCKET, kind=FileRecord)

    async def half_deleted(plaintext: bytes, drop_key: bool) -> tuple[dict, str]:
        created = await client.create(owner, plaintext)
        Path(created["access_path"]).write_bytes(encrypt(created["key_config"], plaintext))
        record = await records.get(created["file_id"])
        await records.update(record.key, replace(record.value, deleting_since=time.time()), record.revision)
        if drop_key:
            await client.admin.request(subjects.kms("Delete"), {"type": "Delete", "key_id": record.value.key_id})
        return created, record.value.key_id

    marked, _ = await half_deleted(b"a", drop_key=False)
    assert (await client.get(owner, marked["file_id"]))[0] == 404          # going: nobody sees it
    assert marked["file_id"] not in await client.list(owner)
    status, deleted = await client.delete(owner, marked["file_id"])       # the retry completes it
    assert status == 200 and deleted["file_info"]["key_config"] == marked["key_config"]
    assert not Path(marked["access_path"]).exists() and await records.find(marked["file_id"]) is None

    keyless, _ = await half_deleted(b"b", drop_key=True)
    status, error = await client.delete(owner, keyless["file_id"])
    assert status == 404 and "its deletion is now complete" in error["message"]
    assert not Path(keyless["access_path"]).exists() and await records.find(keyless["file_id"]) is None

    abandoned, key_id = await half_deleted(b"c", drop_key=False)

    async def swept() -> bool:                                              # nobody retried: the sweep does
        await tdfs.sweep()
        return await records.find(abandoned["file_id"]) is None

    await eventually(swept)
    assert not Path(abandoned["access_path"]).exists()
    with pytest.raises(NotFound):
        await kms_get(client.admin, key_id)


async def test_the_sweep_removes_abandoned_uploads_and_orphan_bytes_only(services, start_component, client,
                                                                        tmp_path):
    tdfs = await start_component(TdfsComponent, tmp_path, config=MesateeConfig(tdfs_stale_seconds=60))
    owner = await client.user("owner")
    kept = await client.create(owner, b"k")
    directory = file_store.files_dir(tmp_path)
    Path(kept["access_path"]).write_bytes(b"k" * 17)
    orphan, part, fresh_part, foreign = (directory / str(uuid.uuid4()), directory / f"{uuid.uuid4()}.ab.part",
                                         directory / f"{uuid.uuid4()}.cd.part", directory / "README")
    for path in (orphan, part, fresh_part, foreign):
        path.write_bytes(b"x")
    old = time.time() - 120
    for path in (orphan, part, foreign, Path(kept["access_path"])):
        os.utime(path, (old, old))
    await tdfs.sweep()
    assert sorted(p.name for p in directory.iterdir()) == sorted([kept["file_id"], fresh_part.name, "README"])


async def test_a_restarted_component_keeps_files_and_metadata(services, start_component, client, tmp_path):
    first = await start_component(TdfsComponent, tmp_path)
    owner = await client.user("owner")
    plaintext = os.urandom(MiB)
    created = await client.create(owner, plaintext)
    stored = encrypt(created["key_config"], plaintext)
    assert (await client.upload(owner, created["file_id"], chunks_of(stored)))[0] == 200
    before = (await client.get(owner, created["file_id"]))[1]
    await first.stop()
    assert (await client.get(owner, created["file_id"]))[0] == 503          # nobody serves TDFS now

    await start_component(TdfsComponent, tmp_path)                           # a fresh one, same data
    assert await client.get(owner, created["file_id"]) == (200, before)
    assert await client.list(owner) == [created["file_id"]]
    status, data, _ = await client.download(owner, created["file_id"])
    assert status == 200 and decrypt(before["file_info"]["key_config"], data) == plaintext
    assert (await client.delete(owner, created["file_id"]))[0] == 200


async def test_the_adapter_role_reaches_the_external_subjects_only(tdfs_component, connect_as):
    adapter = Requester(await connect_as("adapter"), timeout=0.5)
    with pytest.raises(Exception) as refused:   # the user's token is checked by the component
        await adapter.request(subjects.tdfs("List"), {"type": "List", "user_id": "x", "user_token": "y"})
    assert refused.value.status == 401
    with pytest.raises(Exception) as refused:   # internal: the server refuses to deliver it
        await adapter.request(subjects.tdfs_internal("Get"), {"type": "Get", "file_id": str(uuid.uuid4())})
    assert refused.value.status in (503, 504)
