"""teebus on a three-node NATS cluster (real nats-servers on loopback, JetStream replicated): a
server killed under load loses no acknowledged write, a killed component replica never leaves its
caller hanging, and the systems' flows carry on across a lost server.

One cluster for the module (bus/cluster.py); each test leaves every server running. Nodes of
components join it as `teebus run --nats <every server's URL> --replicas 3` would.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import signal
import ssl
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
import pytest

from bus.bootstrap import prepare
from bus.cluster import LocalCluster, shared_secrets
from bus import credentials
from bus.connection import BusConnectError, connect
from bus.errors import Unavailable
from bus.records import Records
from bus.requester import Requester
from bus.roles import ADMIN, ADAPTER, GATEWAY, all_roles
from bus.server import DEFAULT_CONF, free_port
from components.mesatee.kms import BUCKET as KMS_BUCKET
from teebus.catalog import Catalog
from teebus.launcher import Deployment, Node
from teebus.settings import Settings, build
from teebus.testing import free_ports, nodes
from teebus import cli, tools
from teebus.tools import gather
from tests.conftest import eventually, internal_token
from tests.replay import record_conclave as conclave
from tests.replay import record_mesatee as mesatee
from tests.test_mesatee_kms import SEED_CREATE, KmsHttp

REPLICAS = 3
ONE_TRY = {"connect_timeout": 0.5, "allow_reconnect": False}   # a connection meant to be refused
REQUEST_DEADLINE = 5.0 + 1.5     # the adapters' bus timeout, and then some for the HTTP hop


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> AsyncIterator[LocalCluster]:
    running = LocalCluster(DEFAULT_CONF, tmp_path_factory.mktemp("cluster"), nodes=3, free_ports=True,
                           roles=all_roles(catalog.systems))
    async with running:
        admin = await connect(running.url, ADMIN, passwords=running.passwords)
        try:
            await prepare(admin, REPLICAS)
        finally:
            await admin.close()
        yield running


@pytest.fixture
async def start_on_cluster(cluster: LocalCluster, catalog: Catalog) -> AsyncIterator[Callable[..., Awaitable[Node]]]:
    """Factory: a Node of `names` joined to the cluster with 3 replicas, stopped after the test."""
    async with nodes(catalog) as start:
        yield lambda names, document=None: start(cluster_settings(cluster, catalog, document), names)
    for index, server in enumerate(cluster.servers):   # a test that failed half-way leaves none down
        if not server.running:
            await cluster.restart(index)


def cluster_settings(cluster: LocalCluster, catalog: Catalog, document: dict[str, Any] | None = None) -> Settings:
    return build(catalog, {"teebus": {"data_dir": cluster.data_dir, "nats_url": cluster.url, "replicas": REPLICAS},
                           "ports": free_ports(catalog), **(document or {})})


async def stream_leader(cluster: LocalCluster, stream: str) -> int:
    """The index of the server leading `stream`'s Raft group."""
    admin = await connect(cluster.url, ADMIN, passwords=cluster.passwords)
    try:
        info = await admin.jetstream().stream_info(stream)
    finally:
        await admin.close()
    return [server.name for server in cluster.servers].index(info.cluster.leader)


async def caught_up(cluster: LocalCluster, stream: str) -> bool:
    """Every replica of `stream` has a leader, is current and has nothing left to fetch."""
    admin = await connect(cluster.url, ADMIN, passwords=cluster.passwords)
    try:
        info = await admin.jetstream(timeout=2).stream_info(stream)
    except Exception:
        return False
    finally:
        await admin.close()
    peers = info.cluster.replicas or [] if info.cluster else []
    return bool(info.cluster and info.cluster.leader) and len(peers) == REPLICAS - 1 and all(
        peer.current and not peer.offline and not peer.lag for peer in peers)


async def test_kms_keys_acknowledged_while_a_server_is_killed_all_survive(cluster: LocalCluster, start_on_cluster) -> None:
    """Two adapter+KMS replicas create keys at full speed; the server leading the key bucket is
    SIGKILLed a moment in. Every key a caller got back is readable afterwards through both replicas,
    and the killed server, restarted, catches up."""
    first = await start_on_cluster(["mesatee.kms", "http.mesatee"])
    second = await start_on_cluster(["mesatee.kms", "http.mesatee"])
    acknowledged: dict[str, dict] = {}
    refused: Counter[int] = Counter()
    slowest = 0.0
    stop = asyncio.Event()
    token = internal_token(cluster.data_dir)

    async def create_keys(kms: KmsHttp) -> None:
        nonlocal slowest
        while not stop.is_set():
            began = time.monotonic()
            status, body = await kms.post(SEED_CREATE)
            slowest = max(slowest, time.monotonic() - began)
            if status == 200:
                acknowledged[body["key_id"]] = body["config"]
            else:
                refused[status] += 1

    async with aiohttp.ClientSession() as session:
        clients = [KmsHttp(session, node.http.bound["mesatee-kms"], token) for node in (first, second)]
        writers = [asyncio.create_task(create_keys(kms)) for kms in clients * 2]
        await eventually(lambda: len(acknowledged) >= 20, timeout=10)
        victim = await stream_leader(cluster, f"KV_{KMS_BUCKET}")
        before_kill = len(acknowledged)
        await cluster.servers[victim].kill()
        await eventually(lambda: len(acknowledged) >= before_kill + 40, timeout=20)   # service is back
        stop.set()
        await asyncio.gather(*writers)

        assert slowest < REQUEST_DEADLINE, f"a create took {slowest:.1f}s: past its deadline"
        assert set(refused) <= {503, 504}, f"refusals other than unavailable/timeout: {refused}"
        await cluster.restart(victim)
        await eventually(lambda: caught_up(cluster, f"KV_{KMS_BUCKET}"), timeout=30)
        for kms in clients:
            for key_id, config in acknowledged.items():
                status, body = await kms.post(orjson.dumps({"type": "Get", "key_id": key_id}))
                assert status == 200 and body["config"] == config, (key_id, status, body)


async def test_a_killed_component_replica_leaves_no_caller_hanging(cluster: LocalCluster, start_on_cluster,
                                                                    tmp_path: Path) -> None:
    """Two KMS replicas in processes of their own; one is SIGKILLed under load. Every caller gets its
    answer or an error in time, and the survivor serves everything after."""
    replicas = [await _teebus_run(cluster, ["mesatee.kms"], tmp_path / f"kms-{i}.log") for i in range(2)]
    adapter = await start_on_cluster(["http.mesatee"])
    token = internal_token(cluster.data_dir)
    outcomes: list[tuple[float, float, int]] = []     # (began, seconds, status) of each request
    try:
        async with aiohttp.ClientSession() as session:
            kms = KmsHttp(session, adapter.http.bound["mesatee-kms"], token)
            await eventually(lambda: _replicas_are(cluster, "mesatee-kms", 2), timeout=20)
            stop = asyncio.Event()

            async def load() -> None:
                while not stop.is_set():
                    began = time.monotonic()
                    status, _ = await kms.post(SEED_CREATE)
                    outcomes.append((began, time.monotonic() - began, status))

            loaders = [asyncio.create_task(load()) for _ in range(8)]
            await eventually(lambda: len(outcomes) >= 50, timeout=10)
            replicas[0].send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await eventually(lambda: sum(began > killed + 0.5 for began, _, _ in outcomes) >= 50, timeout=30)
            stop.set()
            await asyncio.gather(*loaders)
    finally:
        for process in replicas:
            if process.returncode is None:
                process.terminate()
            await process.wait()
    slowest = max(seconds for _, seconds, _ in outcomes)
    statuses = Counter(status for _, _, status in outcomes)
    assert slowest < REQUEST_DEADLINE, f"a caller waited {slowest:.1f}s"
    assert set(statuses) <= {200, 503, 504}, statuses
    after = Counter(status for began, _, status in outcomes if began > killed + 0.5)
    assert set(after) == {200} and after[200] >= 50, f"the survivor serves everything after the kill: {after}"


async def _replicas_are(cluster: LocalCluster, service: str, count: int) -> bool:
    """Whether `count` replicas of `service` answer a micro PING."""
    admin = await connect(cluster.url, ADMIN, passwords=cluster.passwords)
    try:
        return len(await gather(admin, f"$SRV.PING.{service}")) == count
    finally:
        await admin.close()


async def _teebus_run(cluster: LocalCluster, names: list[str], log_file: Path) -> asyncio.subprocess.Process:
    with open(log_file, "wb") as output:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "teebus.cli", "run", *names, "--nats", cluster.url, "--replicas", str(REPLICAS),
            "--data-dir", str(cluster.data_dir), "--log-json", stdout=output, stderr=output,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})


async def test_a_mesatee_task_flow_carries_on_across_a_lost_server(cluster: LocalCluster, start_on_cluster) -> None:
    """The seed's psi and echo flows (tests/replay/record_mesatee.py, with its own checks) before and
    after the server leading the task bucket is killed; the first flow's tasks are all still there."""
    await start_on_cluster(["mesatee.users", "mesatee.kms", "mesatee.tdfs", "mesatee.tms", "mesatee.fns"],
                           {"mesatee": {"fns_workers": 1}})
    admin = Requester(await connect(cluster.url, ADMIN, passwords=cluster.passwords))
    driver = Requester(await connect(cluster.url, GATEWAY, passwords=cluster.passwords), timeout=10)
    try:
        await mesatee.ensure_users(admin)
        await mesatee.drive_mesatee_scenario(driver)
        tasks_before = await _task_ids(driver)
        victim = await stream_leader(cluster, "KV_mesatee_tms_tasks")
        await cluster.servers[victim].kill()
        await _until_settled(cluster, [f"KV_mesatee_{name}" for name in ("users", "kms_keys", "tdfs_files", "tms_tasks")],
                             [f"mesatee-{name}" for name in ("users", "kms", "tdfs", "tms", "fns")])
        await mesatee.drive_mesatee_scenario(driver)
        tasks_after = await _task_ids(driver)
        assert tasks_before < tasks_after and len(tasks_after) == 2 * len(tasks_before)
        await cluster.restart(victim)
        await eventually(lambda: caught_up(cluster, "KV_mesatee_tms_tasks"), timeout=30)
    finally:
        await admin.client.close()
        await driver.client.close()


async def _task_ids(driver: Requester) -> set[str]:
    listed = await driver.request(mesatee.subjects.tms("List"), {"type": "List", **mesatee._as("user1")})
    return set(listed.payload["list"])


async def _until_settled(cluster: LocalCluster, streams: list[str], services: list[str]) -> None:
    """Until every stream of `streams` has a leader again and every service answers (the components
    whose connection was on the killed server have reconnected): a few seconds."""
    admin = await connect(cluster.url, ADMIN, passwords=cluster.passwords)

    async def settled() -> bool:
        try:
            for stream in streams:
                info = await admin.jetstream(timeout=1).stream_info(stream)
                if not (info.cluster and info.cluster.leader):
                    return False
            return all([await gather(admin, f"$SRV.PING.{service}", wait=0.2) for service in services])
        except Exception:
            return False

    try:
        await eventually(settled, timeout=30)
    finally:
        await admin.close()


async def test_conclave_mail_queued_before_a_server_is_killed_is_delivered_once_in_order(
        cluster: LocalCluster, start_on_cluster) -> None:
    """Alice speaks ten times in the relay room while bob is away; the server leading the mail stream
    is killed; bob then polls each mail exactly once, in order, and then nothing."""
    conclave.give_identity(cluster.data_dir, conclave.RELAY_CONFIG)
    await start_on_cluster(["conclave.enclave", "conclave.mailbox"], {"conclave": {"app": "relay"}})
    driver = Requester(await connect(cluster.url, ADAPTER, passwords=cluster.passwords), timeout=10)
    host = conclave.WebHost(driver)
    alice, bob, relay = conclave.ALICE, conclave.BOB, conclave.RELAY
    try:
        await conclave.attested(host, relay)
        for client in (alice, bob):
            await host.deliver(relay, client, client.mail(relay, "", 0, conclave.ROOM))
        words = [f"mail number {n}" for n in range(10)]
        for n, text in enumerate(words, start=1):
            await host.deliver(relay, alice, alice.mail(relay, text, n, conclave.ROOM))
        victim = await stream_leader(cluster, "CONCLAVE_MAIL")
        await cluster.servers[victim].kill()
        await _until_settled(cluster, ["CONCLAVE_MAIL"], ["conclave-enclave", "conclave-mailbox"])
        heard = []
        for _ in words:
            mail = conclave.opened(await _poll_until_answered(host, relay, bob), bob, relay)
            heard.append(orjson.loads(mail.body)["text"])
        assert heard == words
        assert await _poll_until_answered(host, relay, bob) == b""
        await cluster.restart(victim)
    finally:
        await driver.client.close()


async def _poll_until_answered(host: Any, enclave: str, client: Any) -> bytes:
    """A poll, asked again while a component still reconnects (503: nothing was taken), as a client would."""
    for _ in range(20):
        try:
            return await host.poll(enclave, client)
        except Unavailable:
            await asyncio.sleep(0.25)
    raise AssertionError("the mailbox answered 503 for 5 s after the cluster settled")


async def test_three_machines_each_running_a_cluster_node_serve_one_kms(tmp_path: Path, catalog: Catalog) -> None:
    """`teebus cluster init` on the first machine, its secrets copied, then `teebus cluster node`
    on each (here: three Deployments, each with a data directory of its own, started together):
    a key created through one machine's KMS port is read through another's, the machines' servers
    form one JetStream cluster with the buckets replicated three times, and everything between
    them is TLS checked against the cluster's CA: a client without it is refused."""
    mesatee_only = Catalog([manifest for manifest in catalog.systems if manifest.name == "mesatee"])
    names = ("m1", "m2", "m3")
    homes = {name: tmp_path / name for name in names}
    shared = shared_secrets(homes["m1"], [role.name for role in all_roles(mesatee_only.systems)], ["internal.token"],
                            [key for manifest in mesatee_only.systems for key in manifest.shared_keys])
    for name in names[1:]:
        for path in shared:
            copy = homes[name] / path.relative_to(homes["m1"])
            copy.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copy2(path, copy)
    ports = {name: {"nats_port": free_port(), "cluster_port": free_port(), "monitor_port": free_port()} for name in names}
    deployments = [Deployment(build(mesatee_only, {
        "teebus": {"data_dir": homes[name], "node_name": name, **ports[name],
                   "routes": ",".join(f"127.0.0.1:{ports[peer]['cluster_port']}" for peer in names if peer != name)},
        "ports": free_ports(mesatee_only)}), mesatee_only) for name in names]
    try:
        await asyncio.gather(*(deployment.start() for deployment in deployments))
        token = internal_token(homes["m1"])
        async with aiohttp.ClientSession() as session:
            first, third = (KmsHttp(session, d.node.http.bound["mesatee-kms"], token) for d in (deployments[0], deployments[2]))
            created = await first.call(orjson.loads(SEED_CREATE))
            assert (await third.call({"type": "Get", "key_id": created["key_id"]}))["config"] == created["config"]
        admin = await connect(deployments[1].settings.url, ADMIN, data_dir=homes["m2"])
        try:
            info = await admin.jetstream().stream_info(f"KV_{KMS_BUCKET}")
            assert admin._transport._io_writer.get_extra_info("ssl_object") is not None   # TLS, checked
        finally:
            await admin.close()
        assert info.config.num_replicas == 3 and {p.name for p in info.cluster.replicas} | {info.cluster.leader} == set(names)
        passwords = credentials.load(homes["m1"])
        with pytest.raises(BusConnectError):        # plain TCP: the server wants TLS from the first byte
            await connect(deployments[0].settings.url, ADMIN, passwords=passwords, auth_settle=0, **ONE_TRY)
        stranger = ssl.create_default_context()      # TLS, but trusting other CAs: it cannot check the server
        with pytest.raises(BusConnectError):
            await connect(deployments[0].settings.url, ADMIN, passwords=passwords, auth_settle=0,
                          tls=stranger, tls_handshake_first=True, **ONE_TRY)
    finally:
        await asyncio.gather(*(deployment.stop() for deployment in deployments), return_exceptions=True)


async def test_key_lists_and_mirrors_hold_every_record_while_others_write(cluster: LocalCluster) -> None:
    """nats-py's watch may end its initial values early on a cluster under writes (bus/kv_watch.py):
    our key list and mirror never miss a record that existed before they began."""
    admin = await connect(cluster.url, ADMIN, passwords=cluster.passwords)
    writer = await connect(cluster.url, ADMIN, passwords=cluster.passwords)
    records = await Records.open(admin, "test_records_r3", replicas=REPLICAS)
    written = await Records.open(writer, "test_records_r3", replicas=REPLICAS)
    before = {f"before.{n}" for n in range(50)}
    await asyncio.gather(*(records.create(key, {"n": 1}) for key in before))
    stop = asyncio.Event()

    async def keep_writing() -> None:
        n = 0
        while not stop.is_set():
            await written.create(f"during.{n}", {"n": n})
            n += 1

    churn = asyncio.create_task(keep_writing())
    try:
        for _ in range(30):
            assert before <= set(await records.keys())
        for _ in range(5):
            mirrored = await Records.open(admin, "test_records_r3", replicas=REPLICAS)
            await mirrored.mirror()
            assert before <= {record.key for record in mirrored.mirrored()}
            await mirrored.close()
    finally:
        stop.set()
        await churn
        await admin.close()
        await writer.close()


async def test_status_shows_the_servers_the_meta_leader_and_each_assets_replicas(cluster: LocalCluster) -> None:
    observer = await connect(cluster.url, "observer", passwords=cluster.passwords)
    try:
        out = io.StringIO()
        await tools.status(observer, out=out, monitors=list(cluster.monitor_urls().values()))
    finally:
        await observer.close()
    text = out.getvalue()
    for server in cluster.servers:
        assert re.search(rf"^  {server.name}\s+2\.\d+\.\d+\s+up ", text, re.MULTILINE), text
    assert re.search(r"^JetStream meta leader: n[123] \(cluster teebus, size 3: n1, n2, n3\)$", text, re.MULTILINE), text
    for asset in ("EVENTS", "TEEBUS_PAYLOADS"):
        assert re.search(rf"^  {asset}\s+replicas 3  leader n[123] .* (ok|catching up: .*)$", text, re.MULTILINE), text


def test_cluster_init_makes_what_every_machine_shares_and_says_what_to_copy(tmp_path: Path, capfd) -> None:
    assert cli.main(["cluster", "init", "--data-dir", str(tmp_path)]) == 0
    listed = [line.strip() for line in capfd.readouterr().out.splitlines()[1:]]
    assert {"nats.credentials", "nats/cluster.secret", "internal.token", "nats/tls/ca.crt", "nats/tls/ca.key",
            "mesatee/kms.master.key", "conclave/kds.sealing.key"} == set(listed)
    for name in listed:
        mode = (tmp_path / name).stat().st_mode & 0o777
        assert mode == (0o644 if name.endswith(".crt") else 0o600), (name, oct(mode))
    before = {name: (tmp_path / name).read_bytes() for name in listed}
    assert cli.main(["cluster", "init", "--data-dir", str(tmp_path)]) == 0      # again: nothing replaced
    assert before == {name: (tmp_path / name).read_bytes() for name in listed}
