"""Every JetStream asset takes its replica count from the deployment (issue 14): on a cluster of
three, assets made with one copy are scaled up to three, data kept, and never shrunk; a single
server refuses more than one copy with a message that says how to fix it, and changes nothing.

One local cluster serves the whole file; each test starts from the assets it needs, by name, so
tests run alone or in any order.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import StreamInfo
from nats.js.errors import NotFoundError

from bus import events, headers, payloads, streams
from bus.bootstrap import prepare
from bus.cluster import LocalCluster
from bus.component import Context
from bus.connection import connect
from bus.errors import BusError, ReplicasRefused
from bus.payloads import Payloads
from bus.records import Records
from bus.roles import ADMIN, all_roles
from bus.server import DEFAULT_CONF
from components.conclave import mail_store, subjects as conclave_subjects
from components.conclave.config import ConclaveConfig
from components.cyborg.conductor import Conductor
from components.cyborg.config import CyborgConfig
from components.mesatee.kms import KmsComponent
from teebus.catalog import Catalog

FIX = "run with --replicas 1, or join a cluster"
BOOTSTRAP = (payloads.STREAM, events.STREAM)


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> AsyncIterator[LocalCluster]:
    """Three nats-servers with clustered JetStream and every system's roles, for this file."""
    async with LocalCluster(DEFAULT_CONF, tmp_path_factory.mktemp("cluster"), nodes=3, free_ports=True,
                            roles=all_roles(catalog.systems)) as running:
        yield running


@pytest.fixture
async def cluster_as(cluster: LocalCluster) -> AsyncIterator[Callable[[str], Awaitable[Client]]]:
    """Factory: `await cluster_as("mesatee")` -> a connection to the cluster, closed after the test."""
    clients: list[Client] = []

    async def factory(role: str) -> Client:
        clients.append(await connect(cluster.url, role, passwords=cluster.passwords))
        return clients[-1]

    yield factory
    for client in clients:
        await client.close()


async def forget(admin: Client, *names: str) -> None:
    """Delete these streams if they exist: the test starts as on a fresh deployment."""
    for name in names:
        try:
            await admin.jetstream().delete_stream(name)
        except NotFoundError:
            pass


def assert_copies(info: StreamInfo, replicas: int) -> None:
    """`replicas` copies, as the config and the cluster both say: a leader and its other peers
    (whether a peer is `current` flickers with its last contact, so it is not asserted)."""
    assert info.config.num_replicas == replicas, info.config.name
    peers = info.cluster.replicas or []
    assert info.cluster.leader and len(peers) == replicas - 1, info.cluster
    assert info.cluster.leader not in {peer.name for peer in peers}, info.cluster


async def test_prepare_on_a_fresh_cluster_creates_everything_with_the_replicas(cluster_as):
    admin = await cluster_as(ADMIN)
    await forget(admin, *BOOTSTRAP)
    await prepare(admin, 3)
    for name in BOOTSTRAP:
        assert (await admin.jetstream().stream_info(name)).config.num_replicas == 3


async def test_prepare_scales_the_payload_and_events_streams_up_and_keeps_their_data(cluster_as):
    admin = await cluster_as(ADMIN)
    await forget(admin, *BOOTSTRAP)
    await prepare(admin, 1)
    js = admin.jetstream()
    for n in range(20):
        await js.publish(events.subject("kerneltest", "thing", "made"), b'{"n": %d}' % n)
    hdrs: dict[str, str] = {}
    big = bytes(range(256)) * (3 * admin.max_payload // 256)        # three chunks and a bit
    await Payloads(admin).pack(big, hdrs)
    assert headers.PAYLOAD_REF in hdrs

    await prepare(admin, 3)

    for name in BOOTSTRAP:
        assert_copies(await js.stream_info(name), 3)
    assert (await js.stream_info(events.STREAM)).state.messages == 20
    assert (await js.get_msg(events.STREAM, 20)).data == b'{"n": 19}'
    assert await Payloads(admin).unpack(b"", hdrs) == big

    await prepare(admin, 1)                                         # fewer asked: the three stay
    for name in BOOTSTRAP:
        assert (await js.stream_info(name)).config.num_replicas == 3


async def test_a_bucket_is_scaled_up_by_its_own_system_role_and_keeps_its_records(cluster_as):
    mesatee, admin = await cluster_as("mesatee"), await cluster_as(ADMIN)
    await forget(admin, "KV_mesatee_users")
    bucket = await Records.open(mesatee, "mesatee_users", replicas=1)
    for n in range(50):
        await bucket.create(f"user-{n}", {"n": n})
    assert (await mesatee.jetstream().stream_info("KV_mesatee_users")).config.num_replicas == 1

    # three replicas of the component starting at once: they race to scale it up, and all bind
    bucket, *_ = await asyncio.gather(*(Records.open(mesatee, "mesatee_users", replicas=3) for _ in range(3)))

    info = await mesatee.jetstream().stream_info("KV_mesatee_users")
    assert_copies(info, 3)
    assert info.state.messages == 50      # (not `keys()`: nats-py's watch may end early, nats.py#842)
    assert [(await bucket.get(f"user-{n}")).value for n in range(50)] == [{"n": n} for n in range(50)]
    await bucket.update("user-0", {"n": -1}, (await bucket.get("user-0")).revision)   # writable after

    await Records.open(mesatee, "mesatee_users", replicas=1)                           # kept at three
    assert (await mesatee.jetstream().stream_info("KV_mesatee_users")).config.num_replicas == 3


async def test_a_system_stream_is_scaled_up_by_ensure_and_keeps_new_limits_and_its_copies(cluster_as):
    conclave, admin = await cluster_as("conclave"), await cluster_as(ADMIN)
    await forget(admin, conclave_subjects.MAIL_STREAM)
    config = ConclaveConfig()
    await streams.ensure(conclave, mail_store.stream_config(config, 1))
    js = conclave.jetstream()
    for n in range(10):
        await js.publish(conclave_subjects.stored_mail("hello", f"hint-{n}"), b"mail %d" % n)

    await streams.ensure(conclave, mail_store.stream_config(config, 3))

    info = await js.stream_info(conclave_subjects.MAIL_STREAM)
    assert_copies(info, 3)
    assert info.state.messages == 10

    deeper = ConclaveConfig(mailbox_depth=config.mailbox_depth + 1)      # new limits, fewer copies asked
    await streams.ensure(conclave, mail_store.stream_config(deeper, 1))
    info = await js.stream_info(conclave_subjects.MAIL_STREAM)
    assert info.config.num_replicas == 3 and info.config.max_msgs_per_subject == deeper.mailbox_depth
    assert info.state.messages == 10


async def test_the_conductor_scales_its_buckets_up(cluster_as, tmp_path):
    admin = await cluster_as(ADMIN)
    buckets = ("KV_cyborg_agents", "KV_cyborg_leases", "KV_cyborg_devices")
    await forget(admin, *buckets)
    for replicas in (1, 3):
        conductor = Conductor(Context(await cluster_as("cyborg"), tmp_path, CyborgConfig(), replicas=replicas))
        await conductor.start()
        await conductor.stop()
        for name in buckets:
            assert (await admin.jetstream().stream_info(name)).config.num_replicas == replicas, name


async def test_a_role_can_scale_no_other_systems_asset(cluster_as):
    """What the upgrade needs (stream info and update) a role has on its own assets only."""
    mesatee = await cluster_as("mesatee")
    js = mesatee.jetstream(timeout=1)
    others = ("KV_enarx_keeps", events.STREAM, payloads.STREAM)
    outcomes = await asyncio.gather(*(js.stream_info(name) for name in others),
                                    *(js.update_stream(name=name, subjects=["x.>"], num_replicas=3) for name in others),
                                    return_exceptions=True)
    assert all(isinstance(outcome, NatsTimeout) for outcome in outcomes), outcomes   # permission violations
    own = "KV_mesatee_users"
    await Records.open(mesatee, "mesatee_users", replicas=1)
    refused = await asyncio.gather(js.delete_stream(own), js.purge_stream(own), return_exceptions=True)
    assert all(isinstance(outcome, NatsTimeout) for outcome in refused), refused      # nor its own, whole
    assert (await js.stream_info(own)).config.name == own


# -- a single server (the session's) ----------------------------------------------------------

async def assert_refused(attempt: Awaitable[object], asset: str, have: int = 1) -> None:
    with pytest.raises(ReplicasRefused) as refused:
        await attempt
    message = refused.value.message
    assert asset in message and FIX in message and "docs/scaling.md" in message, message
    if have:
        assert f"has {have} replica but 3 are configured" in message, message
    assert isinstance(refused.value, BusError) and refused.value.status == 412


async def test_a_single_server_refuses_more_replicas_and_changes_nothing(connect_as):
    admin, kernel, conclave = await connect_as(ADMIN), await connect_as("kerneltest"), await connect_as("conclave")
    js = admin.jetstream()
    bucket = await Records.open(kernel, "test_records", replicas=1)
    await bucket.keys()
    await streams.ensure(conclave, mail_store.stream_config(ConclaveConfig(), 1))
    names = ("KV_test_records", conclave_subjects.MAIL_STREAM, *BOOTSTRAP)
    before = {name: await js.stream_info(name) for name in names}

    await assert_refused(Records.open(kernel, "test_records", replicas=3), "KV bucket test_records")
    await assert_refused(prepare(admin, 3), payloads.STREAM)
    await assert_refused(streams.ensure(conclave, mail_store.stream_config(ConclaveConfig(), 3)),
                         conclave_subjects.MAIL_STREAM)

    for name in names:
        after = await js.stream_info(name)
        assert after.config == before[name].config and after.state.last_seq == before[name].state.last_seq


async def test_a_component_refused_its_replicas_does_not_start(start_component):
    with pytest.raises(ReplicasRefused, match=FIX):
        await start_component(KmsComponent, replicas=3)


async def test_teebus_run_prints_the_refusal_as_one_line(bus):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "teebus.cli", "run", "mesatee.kms", "--nats", bus.url,
        "--data-dir", str(bus.data_dir), "--replicas", "3", cwd=Path(__file__).parent.parent,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert "Traceback" not in err.decode()
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("teebus: the JetStream stream TEEBUS_PAYLOADS has 1 replica but 3") and FIX in last
