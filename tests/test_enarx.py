"""Enarx end to end: contracts -> keep -> handshake -> workload, over real HTTP, NATS, processes, wasmtime."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import aiohttp
import cbor2
import orjson
import pytest

from adapters.unix.server import reachable
from bus import headers, payloads
from bus.connection import connect
from bus.payloads import Payloads
from bus.server import EmbeddedServer, free_port
from components.enarx import evidence, keep_access, keep_processes, subjects
from components.enarx.backends import Backends
from components.enarx.client import EnarxClient, EnarxError, kuuid_text, pinned_context
from teebus.launcher import Node
from teebus.testing import settings_for
from tests.conftest import eventually
from tests.wasm_modules import padded, wat

pytestmark = pytest.mark.timeout(300)
FAST = {"watch_interval": 0.2, "stop_keeps_on_exit": True,
        "workload_limits": {"deadline_seconds": 2.0, "max_memory_bytes": 32 * 1024 * 1024}}


class Enarx:
    """A running keep manager (component + HTTP adapter) and a client for it."""

    def __init__(self, node: Node, client: EnarxClient, url: str) -> None:
        self.node, self.client, self.url = node, client, url

    async def ready_keep(self) -> dict:
        """A launched Nil keep, the way a client gets one."""
        contract = next(c for c in await self.client.contracts() if c["backend"] == "Nil")
        keep = await self.client.new_keep(contract)
        await self.client.converse(keep["kuuid"], "request-evidence")
        assert await self.client.converse(keep["kuuid"], "launch") == "Success"
        return await self.client.keep(keep["kuuid"])


@pytest.fixture
async def enarx_factory(bus, catalog) -> AsyncIterator[Callable[..., Awaitable[Enarx]]]:
    started: list[tuple[Node, EnarxClient]] = []

    async def factory(port: int | None = None, data_dir: Path | None = None, **enarx_settings) -> Enarx:
        port = port or free_port()
        settings = settings_for(bus, catalog, {"enarx": {**FAST, **enarx_settings}},
                                ports={"enarx-keepmgr": port, "enarx-wasmldr": free_port()})
        if data_dir is not None:
            settings.data_dir = data_dir
        node = Node(settings, ["enarx.keepmgr", "http.enarx"], catalog)
        await node.start()
        client = await EnarxClient(f"http://127.0.0.1:{port}").__aenter__()
        started.append((node, client))
        return Enarx(node, client, f"http://127.0.0.1:{port}")

    yield factory
    for node, client in reversed(started):
        await client.__aexit__(None, None, None)
        await node.stop()


@pytest.fixture
async def enarx(enarx_factory) -> Enarx:
    return await enarx_factory()


def _keep_component(enarx: Enarx):
    return next(c for c in enarx.node.components if c.name == "keepmgr")


# -- the whole flow ---------------------------------------------------------------------------------

async def test_contract_to_workload_result_with_cbor_as_the_rust_client_sent_it(enarx: Enarx, data_dir: Path):
    contracts = await enarx.client.contracts()
    nil = next(c for c in contracts if c["backend"] == "Nil")
    assert isinstance(nil["uuid"], bytes) and len(nil["uuid"]) == 16
    assert nil["keepmgr"]["port"] == int(enarx.url.rsplit(":", 1)[1])

    keep = await enarx.client.new_keep(nil)
    kuuid = kuuid_text(keep["kuuid"])
    assert keep["kuuid"] == nil["uuid"] and keep["backend"] == "Nil"
    assert keep["state"] == "Indeterminate" and keep["wasmldr"] is None
    assert keep["socket_path"] == str(data_dir / "keeps" / f"{kuuid}.sock")

    reply = await enarx.client.converse(keep["kuuid"], "request-evidence")
    proof = reply["evidence"]
    assert proof["backend"] == "Nil" and proof["measurement"] == evidence.measurement()
    assert proof["certificate_as_pem"].startswith(b"-----BEGIN CERTIFICATE-----")
    assert await enarx.client.converse(keep["kuuid"], "launch") == "Success"

    ready = await enarx.client.keep(keep["kuuid"])
    assert ready["state"] == "Ready" and ready["certificate_as_pem"] == proof["certificate_as_pem"]
    assert ready["wasmldr"]["wasmldr_ipaddr"] == "127.0.0.1"

    # wasm_binary as serde emits a Vec<u8> without serde_bytes: an array of small integers
    body = cbor2.dumps({"wasm_binary": list(wat("echo")), "human_readable_info": "echo",
                        "args": ["one", "two"], "env": {"GREETING": "hi"}, "stdin": b"from stdin\n"})
    result = await enarx.client.send_workload(ready, body)
    assert result["exit_code"] == 2
    assert result["stdout"] == b"one\ntwo\nhi\nfrom stdin\n"
    assert result["stderr"] == b"err-line\n"
    assert result["elapsed_ms"] > 0 and result["cached"] is False
    again = await enarx.client.deploy(ready, wat("echo"), args=["x"])
    assert again["exit_code"] == 1 and again["cached"] is True and again["compile_ms"] == 0.0
    await eventually(lambda: _state(enarx, keep["kuuid"], "Ready"))
    listed = await enarx.client.keeps()
    assert keep["kuuid"] in [k["kuuid"] for k in listed]


async def _state(enarx: Enarx, kuuid: bytes, expected: str) -> bool:
    return (await enarx.client.keep(kuuid))["state"] == expected


async def test_the_contract_uuid_may_come_in_the_path_and_as_text(enarx: Enarx):
    nil = next(c for c in await enarx.client.contracts() if c["backend"] == "Nil")
    as_text = {**nil, "uuid": kuuid_text(nil["uuid"]), "socket_path": "/ignored/by/us"}
    keep = await enarx.client.new_keep(as_text, in_path=True)
    assert kuuid_text(keep["kuuid"]) == as_text["uuid"]
    mismatch = next(c for c in await enarx.client.contracts() if c["backend"] == "Nil")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{enarx.url}/new_keep/{kuuid_text(nil['uuid'])}", data=cbor2.dumps(mismatch)) as r:
            assert r.status == 400 and "must be the same" in cbor2.loads(await r.read())["details"]


async def test_the_wasmldr_serves_https_with_the_keeps_certificate_only(enarx: Enarx):
    keep = await enarx.ready_keep()
    url = f"https://127.0.0.1:{keep['wasmldr']['wasmldr_port']}/workload"
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.post(url, data=b"")  # the default trust store does not know the keep
        other = evidence.new_identity("someone-else", "127.0.0.1").certificate_pem
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.post(url, data=b"", ssl=pinned_context(other))


# -- limits -------------------------------------------------------------------------------------------

async def test_deadline_memory_and_traps_end_that_workload_only(enarx: Enarx):
    keep = await enarx.ready_keep()
    for name, reason in (("loop", "deadline"), ("membomb", "memory"), ("trap", "trap")):
        with pytest.raises(EnarxError) as stopped:
            await enarx.client.deploy(keep, wat(name))
        assert stopped.value.status == 422
        assert stopped.value.body["stopped"] == reason and stopped.value.body["exit_code"] is None
        assert stopped.value.details
    assert (await enarx.client.deploy(keep, wat("hello")))["stdout"] == b"hello\n"
    await eventually(lambda: _state(enarx, keep["kuuid"], "Ready"))


async def test_a_20_mb_workload_travels_through_the_payload_stream(enarx: Enarx):
    keep = await enarx.ready_keep()
    big = padded(wat("hello"), 20 * 1024 * 1024)
    result = await enarx.client.deploy(keep, big)
    assert result["exit_code"] == 0 and result["stdout"] == b"hello\n"


async def test_a_workload_over_the_size_limit_is_refused(enarx_factory):
    enarx = await enarx_factory(workload_limits={"max_module_bytes": 1024 * 1024})
    keep = await enarx.ready_keep()
    with pytest.raises(EnarxError) as refused:
        await enarx.client.deploy(keep, padded(wat("hello"), 2 * 1024 * 1024))
    assert refused.value.status == 413 and "1,048,576-byte limit" in refused.value.details


async def test_a_running_keep_is_running_and_refuses_a_second_workload(enarx: Enarx):
    keep = await enarx.ready_keep()
    first = asyncio.create_task(enarx.client.deploy(keep, wat("sleepy")))
    await eventually(lambda: _state(enarx, keep["kuuid"], "Running"))
    with pytest.raises(EnarxError) as busy:
        await enarx.client.deploy(keep, wat("hello"))
    assert busy.value.status == 409
    with pytest.raises(EnarxError) as stopped:
        await first
    assert stopped.value.body["stopped"] == "deadline"
    await eventually(lambda: _state(enarx, keep["kuuid"], "Ready"))


# -- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path,body", [
    ("/new_keep/", b"\xa1\x63abc"),                       # truncated map
    ("/new_keep/", b"\xff\xfe"),                          # not CBOR at all
    ("/new_keep/", cbor2.dumps({"backend": "Nil"})),       # missing fields
    ("/new_keep/", cbor2.dumps({"keepmgr": {"address": "x", "port": 1}, "backend": "Tdx",
                                "uuid": b"0123456789abcdef"})),
    ("/new_keep/", cbor2.dumps({"keepmgr": {"address": "x", "port": 1}, "backend": "Nil", "uuid": b"short"})),
    ("/keep/not-a-uuid", cbor2.dumps("request-evidence")),
])
async def test_malformed_requests_get_a_local_cbor_err(enarx: Enarx, path: str, body: bytes):
    before = await enarx.client.keeps()
    async with aiohttp.ClientSession() as http:
        async with http.post(enarx.url + path, data=body) as response:
            assert response.status == 400
            assert response.content_type == "application/cbor"
            error = cbor2.loads(await response.read())
    assert set(error) == {"details"} and len(error["details"]) > 10
    assert await enarx.client.keeps() == before


async def test_the_keep_conversation_refuses_bad_items_and_steps_out_of_order(enarx: Enarx):
    nil = next(c for c in await enarx.client.contracts() if c["backend"] == "Nil")
    keep = await enarx.client.new_keep(nil)
    with pytest.raises(EnarxError) as early:
        await enarx.client.converse(keep["kuuid"], "launch")
    assert early.value.status == 400 and "request-evidence" in early.value.details
    with pytest.raises(EnarxError) as unknown:
        await enarx.client.converse(keep["kuuid"], {"hello": 1})
    assert unknown.value.status == 400
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{enarx.url}/keep/{kuuid_text(keep['kuuid'])}/", data=b"\x82\x01") as r:
            assert r.status == 400 and "does not decode" in cbor2.loads(await r.read())["details"]
    await enarx.client.converse(keep["kuuid"], "request-evidence")
    assert await enarx.client.converse(keep["kuuid"], "launch") == "Success"
    with pytest.raises(EnarxError) as twice:
        await enarx.client.converse(keep["kuuid"], "launch")
    assert twice.value.status == 409 and "already launched" in twice.value.details


async def test_a_malformed_workload_is_refused_and_the_keep_serves_on(enarx: Enarx):
    keep = await enarx.ready_keep()
    for body, needle in ((b"\xa1", "not valid CBOR"), (cbor2.dumps({"human_readable_info": "x"}), "wasm_binary"),
                         (cbor2.dumps({"wasm_binary": b"not wasm"}), "wasm"),
                         (cbor2.dumps({"wasm_binary": [1, 2, 999]}), "0-255")):
        with pytest.raises(EnarxError) as refused:
            await enarx.client.send_workload(keep, body)
        assert refused.value.status == 400 and needle in refused.value.details
    assert (await enarx.client.deploy(keep, wat("hello")))["exit_code"] == 0


async def test_a_contract_redeems_once(enarx: Enarx):
    nil = next(c for c in await enarx.client.contracts() if c["backend"] == "Nil")
    await enarx.client.new_keep(nil)
    with pytest.raises(EnarxError) as again:
        await enarx.client.new_keep(nil)
    assert again.value.status == 409 and "already redeemed" in again.value.details
    fresh = next(c for c in await enarx.client.contracts() if c["backend"] == "Nil")
    assert fresh["uuid"] != nil["uuid"]
    with pytest.raises(EnarxError) as unknown:
        await enarx.client.new_keep({**nil, "uuid": os.urandom(16)})
    assert unknown.value.status == 404 and "POST /contracts" in unknown.value.details


async def test_unknown_keeps_are_404_everywhere(enarx: Enarx):
    ghost = os.urandom(16)
    for call in (enarx.client.keep(ghost), enarx.client.shutdown(ghost),
                 enarx.client.converse(ghost, "request-evidence")):
        with pytest.raises(EnarxError) as missing:
            await call
        assert missing.value.status == 404 and "GET /keeps" in missing.value.details


# -- backends -----------------------------------------------------------------------------------------

def test_the_real_probe_reads_this_hosts_devices():
    present = Backends().present()
    assert present[0] == "Nil"
    assert ("Kvm" in present) == os.path.exists("/dev/kvm")
    assert ("Sgx" in present) == (os.path.exists("/dev/sgx/enclave") or os.path.exists("/dev/sgx_enclave"))
    assert Backends().runnable() == ["Nil"]  # no platform loader is configured


def _fake_host(root: Path, *devices: str) -> Path:
    for device in devices:
        (root / device).parent.mkdir(parents=True, exist_ok=True)
        (root / device).touch()
    return root


def test_platform_backends_need_their_device_and_a_loader(tmp_path: Path):
    root = _fake_host(tmp_path / "host", "dev/kvm", "dev/sev", "dev/sgx/enclave")
    loader = tmp_path / "kvm-loader"
    loader.write_text("#!/bin/sh\n")
    loader.chmod(0o755)
    probe = Backends(root, {"Kvm": loader, "Sgx": tmp_path / "missing"})
    assert probe.present() == ["Nil", "Kvm", "Sev", "Sgx"]
    assert probe.runnable() == ["Nil", "Kvm"]
    assert "does not ship" in probe.why_not("Sev") and "not an executable" in probe.why_not("Sgx")
    assert "/dev/kvm" in Backends(tmp_path).why_not("Kvm")


async def test_contracts_follow_the_backends_and_a_vanished_device_is_503(enarx_factory, tmp_path: Path):
    root = _fake_host(tmp_path / "host", "dev/kvm")
    loader = tmp_path / "kvm-loader"
    loader.write_text("#!/bin/sh\nexit 1\n")
    loader.chmod(0o755)
    enarx = await enarx_factory(dev_root=str(root), keep_loaders={"Kvm": str(loader)})
    kvm = next(c for c in await enarx.client.contracts() if c["backend"] == "Kvm")
    (root / "dev/kvm").unlink()
    with pytest.raises(EnarxError) as gone:
        await enarx.client.new_keep(kvm)
    assert gone.value.status == 503 and "/dev/kvm" in gone.value.details
    assert "Kvm" not in [c["backend"] for c in await enarx.client.contracts()]


# -- processes, failures, restarts --------------------------------------------------------------------

async def test_a_killed_keep_loader_makes_that_keep_error_and_others_serve_on(enarx: Enarx):
    victim, survivor = await enarx.ready_keep(), await enarx.ready_keep()
    pid = (await _record(enarx, victim))["pid"]
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: _state(enarx, victim["kuuid"], "Error"), timeout=10)
    gone = await enarx.client.keep(victim["kuuid"])
    assert "exited" in gone["error"] and gone["wasmldr"] is None
    with pytest.raises(EnarxError) as unreachable:
        await enarx.client.converse(victim["kuuid"], "request-evidence")
    assert unreachable.value.status == 503 and "Error" in unreachable.value.details
    assert (await enarx.client.deploy(survivor, wat("hello")))["exit_code"] == 0


async def _record(enarx: Enarx, keep: dict) -> dict:
    return (await _keep_component(enarx).keeps.get(kuuid_text(keep["kuuid"]))).value.to_dict()


async def test_a_keep_manager_restart_reattaches_live_keeps_and_marks_dead_ones(enarx_factory):
    port = free_port()
    first = await enarx_factory(port=port, stop_keeps_on_exit=False)
    live, dead = await first.ready_keep(), await first.ready_keep()
    dead_pid = (await _record(first, dead))["pid"]
    await first.node.stop()
    os.kill(dead_pid, signal.SIGKILL)
    await eventually(lambda: not keep_processes.is_alive(dead_pid, kuuid_text(dead["kuuid"])))

    second = await enarx_factory(port=port)
    assert (await second.client.keep(live["kuuid"]))["state"] == "Ready"
    assert (await second.client.keep(dead["kuuid"]))["state"] == "Error"
    assert (await second.client.deploy(live, wat("hello")))["exit_code"] == 0
    assert await second.client.converse(live["kuuid"], "request-evidence")


async def test_shutdown_stops_the_process_removes_the_socket_and_records_it(enarx: Enarx, data_dir: Path):
    keep = await enarx.ready_keep()
    kuuid = kuuid_text(keep["kuuid"])
    pid = (await _record(enarx, keep))["pid"]
    sock = keep_processes.socket_path(data_dir, kuuid)
    assert sock.is_socket() and sock.stat().st_mode & 0o777 == 0o600
    down = await enarx.client.shutdown(keep["kuuid"])
    assert down["state"] == "Shutdown" and down["wasmldr"] is None
    assert not keep_processes.is_alive(pid, kuuid) and not sock.exists()
    assert (await enarx.client.shutdown(keep["kuuid"]))["state"] == "Shutdown"  # idempotent
    with pytest.raises(aiohttp.ClientConnectorError):
        await enarx.client.deploy(keep, wat("hello"))


async def test_a_keep_whose_client_never_begins_the_handshake_ends(enarx_factory, data_dir: Path):
    enarx = await enarx_factory(evidence_timeout=1.0)
    nil = next(c for c in await enarx.client.contracts() if c["backend"] == "Nil")
    keep = await enarx.client.new_keep(nil)
    pid = (await _record(enarx, keep))["pid"]
    await eventually(lambda: _state(enarx, keep["kuuid"], "Error"), timeout=10)
    assert "no 'request-evidence' within 1s" in (await enarx.client.keep(keep["kuuid"]))["error"]
    await eventually(lambda: not keep_processes.is_alive(pid, kuuid_text(keep["kuuid"])), timeout=10)
    from bus import users
    await eventually(lambda: keep_access.user_name(kuuid_text(keep["kuuid"])) not in users.names(data_dir))


async def test_live_keeps_are_bounded_per_client(enarx_factory):
    enarx = await enarx_factory(max_keeps_per_client=2)
    first = await enarx.ready_keep()
    await enarx.ready_keep()
    nil = next(c for c in await enarx.client.contracts() if c["backend"] == "Nil")
    with pytest.raises(EnarxError) as refused:
        await enarx.client.new_keep(nil)
    assert refused.value.status == 503 and "max_keeps_per_client" in refused.value.details
    await enarx.client.shutdown(first["kuuid"])
    assert (await enarx.client.new_keep(nil))["state"] == "Indeterminate"   # the same contract, now room


async def test_a_handshake_that_stalls_ends_the_keep(enarx_factory):
    enarx = await enarx_factory(handshake_timeout=0.5)
    nil = next(c for c in await enarx.client.contracts() if c["backend"] == "Nil")
    keep = await enarx.client.new_keep(nil)
    await enarx.client.converse(keep["kuuid"], "request-evidence")
    await eventually(lambda: _state(enarx, keep["kuuid"], "Error"), timeout=10)
    assert "no 'launch' within 0.5s" in (await enarx.client.keep(keep["kuuid"]))["error"]


async def test_each_keep_has_its_own_nats_user_limited_to_its_subjects(enarx: Enarx, nats_server: EmbeddedServer):
    mine, other = await enarx.ready_keep(), await enarx.ready_keep()
    kuuid, other_kuuid = kuuid_text(mine["kuuid"]), kuuid_text(other["kuuid"])
    permissions = keep_access.permissions(kuuid)
    assert subjects.keep(other_kuuid) not in str(permissions)
    # a client holding this keep's user cannot talk to the other keep (checked with the server's rules)
    password = "test-only-" + kuuid[:8]
    from bus import users
    users.add(nats_server.data_dir, users.User.with_password("probe-" + kuuid[:8], password, permissions))
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    client = await connect(nats_server.url, "probe-" + kuuid[:8], passwords={"probe-" + kuuid[:8]: password},
                           auth_settle=5.0, inbox_prefix=keep_access.inbox_prefix(kuuid))
    client._error_cb = on_error
    errors.clear()  # refusals while the server was still reloading its users
    try:
        await client.publish(subjects.keep(other_kuuid), cbor2.dumps("request-evidence"))
        await client.flush()
        await eventually(lambda: errors)
        assert "permissions violation" in str(errors[0]).lower()
        # its large replies go under its own name, which only it may write; another keep's, never
        sent: dict[str, str] = {}
        await Payloads(client).pack(b"x" * (9 * 1024 * 1024), sent)
        assert sent[headers.PAYLOAD_REF].startswith(keep_access.principal(kuuid) + ".")
        errors.clear()
        await client.publish(f"{payloads.SUBJECT_PREFIX}.{keep_access.principal(other_kuuid)}.x.0", b"forged")
        await client.flush()
        await eventually(lambda: errors)
        assert "permissions violation" in str(errors[0]).lower()
    finally:
        await client.close()
        users.remove(nats_server.data_dir, "probe-" + kuuid[:8])
    assert keep_access.user_name(kuuid) in users.names(nats_server.data_dir)
    await enarx.client.shutdown(mine["kuuid"])
    assert keep_access.user_name(kuuid) not in users.names(nats_server.data_dir)


# -- the keep's Unix socket ---------------------------------------------------------------------------

async def _socket_exchange(path: str, data: bytes, close_after_write: bool = False) -> bytes:
    with reachable(Path(path)) as address:
        reader, writer = await asyncio.open_unix_connection(address)
    writer.write(data)
    await writer.drain()
    if close_after_write:
        writer.write_eof()
    reply = await asyncio.wait_for(reader.read(1 << 20), 10)
    writer.close()
    return reply


async def test_the_unix_socket_carries_the_same_conversation(enarx: Enarx):
    nil = next(c for c in await enarx.client.contracts() if c["backend"] == "Nil")
    keep = await enarx.client.new_keep(nil)
    with reachable(Path(keep["socket_path"])) as address:  # tmp paths can be longer than AF_UNIX allows
        reader, writer = await asyncio.open_unix_connection(address)
    item = cbor2.dumps("request-evidence")
    writer.write(item[:3])  # an item may arrive in pieces
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(item[3:] + cbor2.dumps("launch"))  # and two may arrive together
    await writer.drain()
    decoder_input = b""
    replies = []
    while len(replies) < 2:
        decoder_input += await asyncio.wait_for(reader.read(1 << 16), 10)
        replies = _items(decoder_input)
    writer.close()
    assert replies[0]["evidence"]["backend"] == "Nil" and replies[1] == "Success"
    assert (await enarx.client.keep(keep["kuuid"]))["state"] == "Ready"


def _items(data: bytes) -> list:
    import io
    stream, items = io.BytesIO(data), []
    while stream.tell() < len(data):
        try:
            items.append(cbor2.CBORDecoder(stream).decode())
        except cbor2.CBORDecodeEOF:
            break
    return items


async def test_the_unix_socket_answers_bad_cbor_with_a_local_cbor_err(enarx: Enarx):
    nil = next(c for c in await enarx.client.contracts() if c["backend"] == "Nil")
    keep = await enarx.client.new_keep(nil)
    truncated = cbor2.loads(await _socket_exchange(keep["socket_path"], cbor2.dumps("request-evidence")[:4],
                                                   close_after_write=True))
    assert "ended inside a CBOR item" in truncated["details"]
    garbage = cbor2.loads(await _socket_exchange(keep["socket_path"], b"\xff\xff\xff"))
    assert "not CBOR" in garbage["details"]
    unknown = cbor2.loads(await _socket_exchange(keep["socket_path"], cbor2.dumps("dance")))
    assert "request-evidence" in unknown["details"]
    # the keep still serves after all that
    ok = cbor2.loads(await _socket_exchange(keep["socket_path"], cbor2.dumps("request-evidence")))
    assert ok["evidence"]["backend"] == "Nil"


async def test_every_keep_state_change_is_an_event(enarx: Enarx, connect_as):
    observer = await connect_as("observer")
    seen: list[tuple[str, dict]] = []

    async def collect(msg) -> None:
        seen.append((msg.subject, orjson.loads(msg.data)))

    await observer.subscribe("events.enarx.>", cb=collect)
    await observer.flush()
    keep = await enarx.ready_keep()
    kuuid = kuuid_text(keep["kuuid"])
    await enarx.client.deploy(keep, wat("hello"))
    await eventually(lambda: _state(enarx, keep["kuuid"], "Ready"))
    await enarx.client.shutdown(keep["kuuid"])
    await eventually(lambda: [s for s, b in seen if b.get("kuuid") == kuuid][-1:] == ["events.enarx.keep.shutdown"])
    mine = [subject for subject, body in seen if body.get("kuuid") == kuuid]
    assert mine == ["events.enarx.keep.created", "events.enarx.keep.ready", "events.enarx.keep.running",
                    "events.enarx.keep.ready", "events.enarx.keep.shutdown"]
    redeemed = [body for subject, body in seen if subject == "events.enarx.contract.redeemed"]
    assert [body["uuid"] for body in redeemed] == [kuuid]


async def test_joined_to_a_server_it_cannot_reconfigure_keeps_use_the_shared_keepldr_role(
        enarx_factory, nats_server: EmbeddedServer, tmp_path: Path):
    from bus import credentials, users
    elsewhere = tmp_path / "another-host"
    credentials.write_private(elsewhere / credentials.FILE_NAME,
                              (nats_server.data_dir / credentials.FILE_NAME).read_bytes())
    assert not users.available(elsewhere)
    before = users.names(nats_server.data_dir)
    enarx = await enarx_factory(data_dir=elsewhere)
    keep = await enarx.ready_keep()
    assert (await enarx.client.deploy(keep, wat("hello")))["exit_code"] == 0
    assert users.names(nats_server.data_dir) == before
    assert (elsewhere / "keeps" / f"{kuuid_text(keep['kuuid'])}.sock").is_socket()


async def test_only_the_newest_ended_keeps_are_kept(enarx_factory):
    enarx = await enarx_factory(max_ended_keeps=1)
    first, second = await enarx.ready_keep(), await enarx.ready_keep()
    await enarx.client.shutdown(first["kuuid"])
    await enarx.client.shutdown(second["kuuid"])

    async def first_forgotten() -> bool:
        try:
            await enarx.client.keep(first["kuuid"])
        except EnarxError as exc:
            return exc.status == 404
        return False

    await eventually(first_forgotten, timeout=10)
    assert (await enarx.client.keep(second["kuuid"]))["state"] == "Shutdown"
