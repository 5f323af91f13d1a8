"""MesaTEE KMS end to end: the seed's examples over HTTP (port 6016 protocol) and over the bus."""

from __future__ import annotations

import asyncio
import base64
import uuid
from pathlib import Path

import aiohttp
import orjson
import pytest

from bus.errors import BadRequest, NotFound
from bus.records import Records
from bus.requester import Requester
from bus.server import DEFAULT_CONF, EmbeddedServer, free_port
from components.mesatee import subjects
from components.mesatee.kms import BUCKET, KmsComponent
from components.mesatee.kms_cache import OpenedConfigs
from teebus.launcher import Deployment, default_catalog
from teebus.settings import build
from teebus.testing import free_ports
from tests.conftest import eventually, internal_token

# The seed's own request examples, byte for byte (tabs and all).
SEED_CREATE = b'{\n\t"type": "Create"\n}'
SEED_GET = b'{\n\t"type":"Get",\n\t"key_id":"c26ada76-8557-11e9-8002-020203040506"\n}'
SEED_DELETE = b'{\n\t"type":"Delete",\n\t"key_id":"c26ada76-8557-11e9-8002-020203040506"\n}'


class KmsHttp:
    """A tiny client of the KMS port: POST / with the internal credential."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str | None) -> None:
        self.session, self.url, self.token = session, url, token

    async def post(self, body: bytes, token: str | None = "default", **extra_headers) -> tuple[int, dict]:
        hdrs = dict(extra_headers)
        token = self.token if token == "default" else token
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        async with self.session.post(self.url + "/", data=body, headers=hdrs) as resp:
            return resp.status, orjson.loads(await resp.read())

    async def call(self, request: dict) -> dict:
        status, body = await self.post(orjson.dumps(request))
        assert status == 200, body
        return body


@pytest.fixture
async def kms(start_node, data_dir):
    node = await start_node(["mesatee.kms", "http.mesatee"])
    async with aiohttp.ClientSession() as session:
        yield KmsHttp(session, node.http.bound["mesatee-kms"], internal_token(data_dir))


async def stored_keys(connect_as) -> int:
    """The key bucket's last write sequence: unchanged means nothing was written at all."""
    info = await (await connect_as("admin")).jetstream().stream_info(f"KV_{BUCKET}")
    return info.state.last_seq


def assert_config(config: dict) -> None:
    lengths = {name: len(base64.b64decode(value, validate=True)) for name, value in config.items()}
    assert lengths == {"key": 32, "nonce": 12, "ad": 5}


async def test_seed_create_get_delete_over_http(kms):
    status, created = await kms.post(SEED_CREATE)
    assert status == 200
    assert set(created) == {"type", "key_id", "config"} and created["type"] == "Create"
    assert uuid.UUID(created["key_id"]).version == 4
    assert_config(created["config"])

    got = await kms.call({"type": "Get", "key_id": created["key_id"]})
    assert got == {"type": "Get", "config": created["config"]}

    deleted = await kms.call({"type": "Delete", "key_id": created["key_id"]})
    assert deleted == {"type": "Delete", "config": created["config"]}  # the removed config
    status, body = await kms.post(orjson.dumps({"type": "Get", "key_id": created["key_id"]}))
    assert status == 404 and body["type"] == "Error" and created["key_id"] in body["message"]


async def test_seed_get_and_delete_examples_of_unknown_keys_are_404(kms):
    for example in (SEED_GET, SEED_DELETE):
        status, body = await kms.post(example)
        assert (status, body["status"]) == (404, 404)
        assert "c26ada76-8557-11e9-8002-020203040506" in body["message"]


async def test_keys_are_random_and_distinct(kms):
    configs = [await kms.call({"type": "Create"}) for _ in range(5)]
    assert len({c["key_id"] for c in configs}) == 5
    assert len({c["config"]["key"] for c in configs}) == 5


@pytest.mark.parametrize("body, status, message", [
    (b'{"type": "Rotate"}', 400, "unknown KMS request type (another string); expected one of Create, Get"),
    (b'{"key_id": "c26ada76-8557-11e9-8002-020203040506"}', 400, "unknown KMS request type (missing)"),
    (b'{"type": "Get"}', 400, "a Get request needs a key_id"),
    (b'{"type": "Delete"}', 400, "a Delete request needs a key_id"),
    (b'{"type": "Get", "key_id": 7}', 400, "key_id must be a string"),
    (b'{"type": "Get", "key_id": "not-a-uuid"}', 400, "is not a UUID"),
    (b'{"type": "Get", "key_id": "' + b"a" * 100 + b'"}', 400, "longer than 64"),
    (b'{"type": "Create"', 400, "body is not valid JSON"),
    (b'', 400, "body is not valid JSON"),
    (b'["Create"]', 400, "a KMS request is a JSON object"),
    (b'{"type": "Get", "key_id": "' + b"65528b05-77b8-4e5b-b48d-bf1e591fdb44" + b'"}', 404, "no key with key_id"),
])
async def test_bad_input_gets_a_clear_error_and_changes_nothing(kms, connect_as, body, status, message):
    before = await stored_keys(connect_as)
    got_status, error = await kms.post(body)
    assert (got_status, error["type"], error["status"]) == (status, "Error", status)
    assert message in error["message"]
    assert await stored_keys(connect_as) == before


@pytest.mark.parametrize("token", [None, "wrong", ""])
async def test_wrong_credential_is_refused_and_creates_nothing(kms, connect_as, token):
    before = await stored_keys(connect_as)
    status, error = await kms.post(SEED_CREATE, token=token)
    assert status == 401 and "internal.token" in error["message"]
    assert await stored_keys(connect_as) == before


async def test_other_auth_schemes_are_refused(kms):
    status, _ = await kms.post(SEED_CREATE, token=None, Authorization=f"Basic {kms.token}")
    assert status == 401


async def test_oversized_body_is_413(kms, connect_as):
    before = await stored_keys(connect_as)
    status, error = await kms.post(b'{"type": "Create", "pad": "' + b"x" * 70_000 + b'"}')
    assert status == 413 and "of 70" in error["message"] and "exceeds the limit of 65536" in error["message"]

    async def chunks():  # no Content-Length: the limit holds while reading
        yield b'{"type": "Create", "pad": "'
        for _ in range(20):
            yield b"x" * 8192
        yield b'"}'

    async with kms.session.post(kms.url + "/", data=chunks(),
                                headers={"Authorization": f"Bearer {kms.token}"}) as resp:
        assert resp.status == 413 and "exceeds the limit of 65536" in (await resp.json())["message"]
    assert await stored_keys(connect_as) == before


async def test_wrong_method_and_path_use_the_error_shape(kms):
    async with kms.session.get(kms.url + "/") as resp:
        assert resp.status == 405 and (await resp.json())["type"] == "Error"
    async with kms.session.post(kms.url + "/keys") as resp:
        assert resp.status == 404 and (await resp.json())["status"] == 404


async def test_a_client_that_asks_to_continue_is_invited_to_send_its_body(kms):
    """`Expect: 100-continue` (curl with large bodies): the body waits for our interim answer."""
    async with kms.session.post(kms.url + "/", data=SEED_CREATE, expect100=True,
                                timeout=aiohttp.ClientTimeout(total=5),
                                headers={"Authorization": f"Bearer {kms.token}"}) as resp:
        assert resp.status == 200 and (await resp.json())["type"] == "Create"
    async with kms.session.post(kms.url + "/", data=SEED_CREATE, headers={
            "Authorization": f"Bearer {kms.token}", "Expect": "something-else"}) as resp:
        assert resp.status == 417 and (await resp.json())["type"] == "Error"


async def test_request_id_is_echoed(kms):
    async with kms.session.post(kms.url + "/", data=SEED_CREATE, headers={
            "Authorization": f"Bearer {kms.token}", "X-Request-Id": "trace-me-123"}) as resp:
        assert resp.headers["X-Request-Id"] == "trace-me-123"


async def test_same_operations_over_the_bus(start_component, connect_as):
    await start_component(KmsComponent)
    bus = Requester(await connect_as("mesatee"))
    created = (await bus.request(subjects.kms("Create"), {"type": "Create"})).payload
    got = (await bus.request(subjects.kms("Get"), {"type": "Get", "key_id": created["key_id"]})).payload
    assert got == {"type": "Get", "config": created["config"]}
    with pytest.raises(BadRequest, match="serves Get requests, not Delete"):
        await bus.request(subjects.kms("Get"), {"type": "Delete", "key_id": created["key_id"]})
    deleted = (await bus.request(subjects.kms("Delete"), {"type": "Delete", "key_id": created["key_id"]})).payload
    assert deleted["config"] == created["config"]
    with pytest.raises(NotFound):
        await bus.request(subjects.kms("Delete"), {"type": "Delete", "key_id": created["key_id"]})


async def test_events_record_every_key_change_without_key_material(start_component, connect_as):
    await start_component(KmsComponent)
    observer = await connect_as("observer")
    seen: list[tuple[str, bytes]] = []

    async def keep(msg) -> None:
        seen.append((msg.subject, msg.data))

    sub = await observer.subscribe("events.mesatee.key.*", cb=keep)
    bus = Requester(await connect_as("mesatee"))
    created = (await bus.request(subjects.kms("Create"), {"type": "Create"})).payload
    await bus.request(subjects.kms("Delete"), {"type": "Delete", "key_id": created["key_id"]})
    await observer.flush()
    await asyncio.sleep(0.2)
    await sub.unsubscribe()
    mine = [(s, orjson.loads(d)) for s, d in seen if orjson.loads(d)["key_id"] == created["key_id"]]
    assert [s for s, _ in mine] == ["events.mesatee.key.created", "events.mesatee.key.deleted"]
    for _, body in mine:
        assert created["config"]["key"] not in orjson.dumps(body).decode()


async def test_key_material_is_sealed_at_rest(start_component, connect_as, nats_server):
    await start_component(KmsComponent)
    bus = Requester(await connect_as("mesatee"))
    created = (await bus.request(subjects.kms("Create"), {"type": "Create"})).payload
    key = base64.b64decode(created["config"]["key"])
    await (await connect_as("admin")).jetstream().stream_info(f"KV_{BUCKET}")  # flushed to the store
    stored = b"".join(path.read_bytes() for path in (nats_server.data_dir / "jetstream").rglob("*")
                      if path.is_file())
    assert created["key_id"].encode() in stored          # the record is there...
    assert key not in stored                             # ...but not the key, raw
    assert created["config"]["key"].encode() not in stored  # nor base64


async def test_a_copied_sealed_record_does_not_open(start_component, connect_as):
    await start_component(KmsComponent)
    bus = Requester(await connect_as("mesatee"))
    first = (await bus.request(subjects.kms("Create"), {"type": "Create"})).payload
    records = await Records.open(await connect_as("mesatee"), BUCKET)
    stolen = (await records.get(first["key_id"])).value
    forged_id = str(uuid.uuid4())
    await records.create(forged_id, stolen)  # the blob is bound to its own key id
    with pytest.raises(Exception) as refused:
        await bus.request(subjects.kms("Get"), {"type": "Get", "key_id": forged_id})
    assert refused.value.status == 500 and "cannot be unsealed" in refused.value.message


async def test_two_replicas_share_requests_and_lose_no_key(start_component, connect_as):
    replicas = [await start_component(KmsComponent), await start_component(KmsComponent)]
    bus = Requester(await connect_as("mesatee"), timeout=10)
    created = await asyncio.gather(*(bus.request(subjects.kms("Create"), {"type": "Create"})
                                     for _ in range(200)))
    ids = {reply.payload["key_id"] for reply in created}
    assert len(ids) == 200
    served = [replica.stats()["create"].served for replica in replicas]
    assert all(count > 0 for count in served) and sum(served) == 200
    await replicas[0].stop()  # whichever replica created a key, the other serves it
    got = await asyncio.gather(*(bus.request(subjects.kms("Get"), {"type": "Get", "key_id": key_id})
                                 for key_id in ids))
    by_id = {reply.payload["key_id"]: reply.payload["config"] for reply in created}
    assert [g.payload["config"] for g in got] == [by_id[key_id] for key_id in ids]


async def test_a_key_deleted_through_one_replica_is_gone_from_every_replica(start_component, connect_as):
    """Both replicas have served (and opened) the key; after a Delete neither answers it again."""
    replicas = [await start_component(KmsComponent), await start_component(KmsComponent)]
    bus = Requester(await connect_as("mesatee"), timeout=10)
    key_id = (await bus.request(subjects.kms("Create"), {"type": "Create"})).payload["key_id"]
    get = {"type": "Get", "key_id": key_id}
    await eventually(lambda: all(r.keys.mirrored_record(key_id) for r in replicas))
    for _ in range(100):
        await asyncio.gather(*(bus.request(subjects.kms("Get"), get) for _ in range(10)))
        if all(len(r.opened) for r in replicas):
            break
    assert all(len(r.opened) == 1 for r in replicas)   # each opened it once, then served from memory
    deleted = await bus.request(subjects.kms("Delete"), {"type": "Delete", "key_id": key_id})
    assert deleted.payload["type"] == "Delete"

    async def every_get_is_404() -> bool:
        for _ in range(20):
            try:
                await bus.request(subjects.kms("Get"), get)
                return False
            except NotFound:
                pass
        return True

    await eventually(every_get_is_404)
    assert all(len(r.opened) == 0 for r in replicas)


async def test_adapter_role_cannot_reach_internal_subjects(start_component, connect_as):
    kms = await start_component(KmsComponent)
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc))

    adapter = await connect_as("adapter", error_cb=on_error)
    before = kms.stats()["create"].served
    with pytest.raises(Exception) as refused:
        await Requester(adapter, timeout=0.5).request(subjects.kms("Create"), {"type": "Create"})
    assert refused.value.status in (503, 504)
    assert any("permissions violation" in v.lower() and "mesatee.kms.internal.create" in v for v in violations)
    assert kms.stats()["create"].served == before
    # the gateway (internal ports, behind the internal credential) may
    reply = await Requester(await connect_as("gateway")).request(subjects.kms("Create"), {"type": "Create"})
    assert reply.payload["type"] == "Create"


async def test_restart_keeps_every_key(tmp_path: Path):
    """Stop everything (server included), start again on the same data directory."""
    catalog = default_catalog()
    settings = build(catalog, {"teebus": {"data_dir": tmp_path / "data", "nats_port": free_port()},
                               "ports": free_ports(catalog)})
    system = Deployment(settings, catalog)
    await system.start()
    try:
        url = system.node.http.bound["mesatee-kms"]
        async with aiohttp.ClientSession() as session:
            client = KmsHttp(session, url, internal_token(settings.data_dir))
            created = [await client.call({"type": "Create"}) for _ in range(5)]
            await client.call({"type": "Delete", "key_id": created[0]["key_id"]})
    finally:
        await system.stop()
    assert not system.listening().get("mesatee-kms (http)")

    system = Deployment(settings, catalog)
    await system.start()
    try:
        async with aiohttp.ClientSession() as session:
            client = KmsHttp(session, url, internal_token(settings.data_dir))
            for before in created[1:]:
                assert await client.call({"type": "Get", "key_id": before["key_id"]}) == \
                    {"type": "Get", "config": before["config"]}
            status, _ = await client.post(orjson.dumps({"type": "Get", "key_id": created[0]["key_id"]}))
            assert status == 404  # the deletion survived too
    finally:
        await system.stop()


async def test_master_key_readable_by_others_is_refused(tmp_path, start_component):
    master = tmp_path / "mesatee" / "kms.master.key"
    master.parent.mkdir(parents=True)
    master.write_bytes(b"k" * 32)
    master.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        await start_component(KmsComponent, tmp_path)


def test_embedded_server_config_is_the_repo_one():
    assert EmbeddedServer(DEFAULT_CONF, Path("/tmp")).config.is_file()
    assert build(default_catalog()).nats_conf == DEFAULT_CONF


def test_opened_configs_answer_only_for_their_revision_and_stay_bounded():
    opened = OpenedConfigs(max_entries=2)
    opened.put("k1", 1, {"key": "a"})
    assert opened.get("k1", 1) == {"key": "a"}
    assert opened.get("k1", 2) is None          # the record changed: open it again
    opened.put("k2", 5, {"key": "b"})
    opened.put("k3", 7, {"key": "c"})           # full: the oldest (k1) goes
    assert (opened.get("k1", 1), len(opened)) == (None, 2)
    opened.put("k2", 6, {"key": "b2"})          # a newer revision replaces, not adds
    assert opened.get("k2", 6) == {"key": "b2"} and opened.get("k2", 5) is None and len(opened) == 2
    opened.forget("k3")
    assert opened.get("k3", 7) is None and len(opened) == 1
    with pytest.raises(ValueError):
        OpenedConfigs(max_entries=0)
