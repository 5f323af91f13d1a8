"""Least privilege on the bus: every role rendered from the manifests, each system's components
confined to their own system, adapters kept off internal subjects."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from bus import log, payloads, roles
from bus.errors import BusError
from bus.requester import Requester
from components.conclave import subjects as conclave_subjects
from components.enarx import keep_access
from components.mesatee import subjects as mesatee
from components.mesatee.kms import KmsComponent
from tests.conftest import eventually

REPO = Path(__file__).resolve().parent.parent


async def _refused(connect_as, role: str, subject: str) -> list[str]:
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc).lower())

    client = await connect_as(role, error_cb=on_error)
    with pytest.raises(BusError) as failed:
        await Requester(client, timeout=0.5).request(subject, {"type": "Create"})
    assert failed.value.status in (503, 504)
    await eventually(lambda: violations)
    return violations


async def test_a_component_of_one_system_is_refused_on_another_systems_internal_subject(start_component, connect_as):
    kms = await start_component(KmsComponent)
    before = kms.stats()["create"].served
    for role in ("enarx", "enarx-keepldr", "adapter"):
        violations = await _refused(connect_as, role, mesatee.kms("Create"))
        assert any("permissions violation" in v and "mesatee.kms.internal.create" in v for v in violations), role
    assert kms.stats()["create"].served == before
    reply = await Requester(await connect_as("mesatee")).request(mesatee.kms("Create"), {"type": "Create"})
    assert reply.payload["type"] == "Create"       # its own system's component may


async def test_a_component_cannot_open_another_systems_bucket(connect_as):
    from bus.records import Records

    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc).lower())

    client = await connect_as("enarx", error_cb=on_error)
    with pytest.raises(Exception):
        await Records.open(client, "mesatee_kms_keys")
    assert any("kv_mesatee_kms_keys" in v for v in violations)


def test_each_role_writes_payloads_under_its_own_name_only(catalog):
    assert payloads.STREAM not in (REPO / "nats.conf").read_text()
    for role in roles.all_roles(catalog.systems):
        if role.name in (roles.ADMIN, roles.OBSERVER):
            continue
        allowed = role.permissions["publish"]["allow"]
        writes = [p for p in allowed if p.startswith(payloads.SUBJECT_PREFIX)]
        principal = role.name if role.name != keep_access.SHARED_USER else f"{keep_access.PRINCIPALS}.*"
        assert writes == [f"{payloads.SUBJECT_PREFIX}.{principal}.>"], role.name
        assert not any(p.startswith(("$JS.API.STREAM.", "$JS.API.CONSUMER.")) and payloads.STREAM in p
                       for p in allowed), role.name


def test_a_system_named_like_a_kernel_role_is_refused():
    from bus.manifest import Manifest

    with pytest.raises(ValueError, match="role names clash: adapter"):
        roles.all_roles([Manifest("adapter", "clash")])


def test_cli_help_loads_no_runtime():
    code = ("import sys, time\nstarted = time.perf_counter()\nfrom teebus import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] + ('.x509' if m.startswith('cryptography.x509') else '') for m in sys.modules"
            " if m.startswith(('wasmtime', 'cryptography.x509'))}), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stderr.strip().splitlines()[-1] == "[]"
    assert "enarx" in result.stdout and "mesatee" in result.stdout   # the systems' own verbs are listed


async def _subscribe_refused(connect_as, role: str, subject: str) -> bool:
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc).lower())

    client = await connect_as(role, error_cb=on_error)
    await client.subscribe(subject)
    await client.flush()
    await eventually(lambda: violations)
    return any("permissions violation for subscription" in v and subject.lower() in v for v in violations)


@pytest.mark.parametrize("role,subject", [
    ("adapter", "_INBOX.>"), ("adapter", "_INBOX.gateway.>"), ("gateway", "_INBOX.adapter.>"),
    ("mesatee", "_INBOX.gateway.>"), ("enarx", "_INBOX.mesatee.>"),
    ("observer", "_INBOX.>"), ("observer", "mesatee.kms.internal.>"), ("observer", "$TEEBUS.payload.>"),
    ("observer", "$KV.mesatee_kms_keys.>"), ("adapter", "$TEEBUS.payload.>"),
    ("enarx-keepldr", "_INBOX.gateway.>"), ("enarx-keepldr", "_INBOX.enarx.>"),
])
async def test_no_role_reads_another_roles_replies_or_what_is_not_its_own(connect_as, role, subject):
    assert await _subscribe_refused(connect_as, role, subject)


async def test_a_kms_reply_to_the_gateway_reaches_only_the_gateway(start_component, connect_as):
    await start_component(KmsComponent)
    gateway = await connect_as("gateway")
    assert gateway._inbox_prefix.decode().startswith(roles.inbox_prefix("gateway"))  # set by bus.connection
    watcher = await connect_as("admin")
    seen: list[str] = []

    async def record(msg) -> None:
        seen.append(msg.subject)

    await watcher.subscribe("_INBOX.>", cb=record)
    await watcher.flush()
    await Requester(gateway).request(mesatee.kms("Create"), {"type": "Create"})
    await eventually(lambda: any(subject.startswith("_INBOX.gateway.") for subject in seen))
    # the reply came to the gateway's prefix; the KMS's own JetStream acks to the mesatee role's
    assert {s.split(".")[1] for s in seen if s.startswith("_INBOX.")} <= {"gateway", "mesatee"}, seen
    observer = await connect_as("observer")
    await observer.subscribe("events.>")       # what an observer is for still works
    await observer.subscribe("mesatee.>")
    await observer.flush()


@pytest.mark.parametrize("subject,refused", [
    ("mesatee.kms.internal.>", True), ("_INBOX.>", True), (">", True), ("mesatee.>", False),
    ("$KV.enarx_keeps.>", True), ("events.>", False), ("enarx.keepmgr.contracts", False),
    ("enarx.keep.*", False), ("events.mesatee.>", False), ("$TEEBUS.payload.>", True),
    ("mesatee.tms.task.create", True), ("mesatee.tdfs.file.>", True), ("mesatee.fns.task.invoke", True),
    ("mesatee.tms.>", False), ("mesatee.fns.task.*", False)])
def test_bus_sub_says_when_a_subject_is_an_admins_to_watch(subject, refused, capsys):
    from teebus import cli

    if refused:
        try:
            assert cli.main(["bus", "sub", subject, "--data-dir", "/nonexistent"]) == 2
        finally:  # cli.main logs onto this test's captured stderr: give logging back its own
            log.configure("warning", json=True, stream=sys.__stderr__)
        assert "add --admin" in capsys.readouterr().err
    else:
        assert not cli._needs_admin(subject)


# -- credentials in transit: a manifest's secret_subjects are admin's to watch --------------------------------

SECRET = [mesatee.tms("create"), mesatee.tms("*"), mesatee.tdfs("get"), f"{mesatee.SYSTEM}.tdfs.file.>",
          mesatee.TDFS_ACCESS, mesatee.FNS_INVOKE, conclave_subjects.deliver("hello-world"),
          conclave_subjects.poll("hello-world"), conclave_subjects.poll("*")]


def test_the_mesatee_manifest_declares_its_credential_carrying_subjects():
    from components.mesatee.system import MANIFEST

    assert set(MANIFEST.secret_subjects) == {mesatee.tms("*"), mesatee.tdfs("*"), mesatee.FNS_INVOKE}
    observer = next(role for role in roles.all_roles([MANIFEST]) if role.name == roles.OBSERVER)
    assert set(MANIFEST.secret_subjects) <= set(observer.permissions["subscribe"]["deny"])


def test_the_conclave_manifest_hides_correlation_ids_from_observers():
    """Whoever knows a Correlation-ID can poll that mailbox (and take its mail): the deliver and poll
    requests carry it, so they are admin's to watch; attestation is not secret."""
    from components.conclave.system import MANIFEST

    assert set(MANIFEST.secret_subjects) == {conclave_subjects.deliver("*"), conclave_subjects.poll("*")}
    observer = next(role for role in roles.all_roles([MANIFEST]) if role.name == roles.OBSERVER)
    assert set(MANIFEST.secret_subjects) <= set(observer.permissions["subscribe"]["deny"])
    assert conclave_subjects.attestation("*") not in observer.permissions["subscribe"]["deny"]


def test_a_manifest_may_declare_only_its_own_subjects_secret():
    from bus.manifest import Manifest

    for subject in ("enarx.keep.*", "mesatee", "mesatee..x", "mesatee.>.x", "mesatee.a b"):
        with pytest.raises(ValueError, match="secret subject"):
            Manifest("mesatee", "test", secret_subjects=(subject,))
    assert Manifest("mesatee", "test", secret_subjects=("mesatee.x.*", "mesatee.y.>")).secret_subjects


@pytest.mark.parametrize("subject", SECRET)
async def test_the_observer_is_refused_subjects_whose_requests_carry_credentials(connect_as, subject):
    assert await _subscribe_refused(connect_as, "observer", subject)


async def test_the_observer_still_sees_events_discovery_and_other_external_traffic(start_component, connect_as):
    """A wildcard over a system's subjects is served, without the requests that carry a user's or a
    task's token; events and discovery are the observer's as before."""
    await start_component(KmsComponent)
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc).lower())

    observer = await connect_as("observer", error_cb=on_error)
    seen: list[tuple[str, bytes]] = []

    async def record(msg) -> None:
        seen.append((msg.subject, msg.data))

    for subject in ("mesatee.>", "events.mesatee.>", "$SRV.>"):
        await observer.subscribe(subject, cb=record)
    await observer.flush()
    admin = await connect_as("admin")
    token = b'{"type": "List", "user_id": "someone", "user_token": "a-user-token", "task_token": "a-task-token"}'
    for subject in (mesatee.tms("list"), mesatee.tdfs("list"), mesatee.TDFS_ACCESS, mesatee.FNS_INVOKE):
        await admin.publish(subject, token)
    await admin.publish("mesatee.probe.roles", b"{}")          # an external subject that carries none
    await admin.flush()
    key = await Requester(await connect_as("gateway")).request(mesatee.kms("Create"), {"type": "Create"})
    await eventually(lambda: any(subject == "mesatee.probe.roles" for subject, _ in seen)
                     and any(subject.startswith("events.mesatee.key.") for subject, _ in seen))
    assert not [subject for subject, data in seen if b"a-user-token" in data or b"a-task-token" in data], seen
    assert not [subject for subject, _ in seen if ".internal." in subject], seen
    assert key.payload["key_id"]
    pong = await Requester(observer, timeout=2).request("$SRV.PING.mesatee-kms", None)   # discovery
    assert pong.payload["name"] == "mesatee-kms"
    assert not violations, violations


async def _observer_refuses(connect_as, subject: str) -> bool:
    """Whether nats-server refuses the observer a subscription (a quick look, for allowed ones too)."""
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc).lower())

    client = await connect_as("observer", error_cb=on_error)
    await client.subscribe(subject)
    await client.flush()
    await asyncio.sleep(0.1)
    await client.flush()
    return any("permissions violation for subscription" in v for v in violations)


async def test_bus_sub_refuses_exactly_what_the_server_refuses_the_observer(connect_as):
    """`teebus bus sub` tells a user at once what nats-server would refuse the observer, and lets
    through what it serves (a wildcard that merely overlaps a secret subject)."""
    from teebus import cli

    subjects = [*SECRET, "mesatee.>", "mesatee.tms.>", "mesatee.fns.task.*", "mesatee.*.task.create", "enarx.>",
                "events.>", "$SRV.>", "mesatee.kms.internal.create", "_INBOX.>", "$KV.mesatee_users.>",
                "$TEEBUS.payload.>", "$JS.API.>"]
    disagree = {}
    for subject in subjects:
        server = await _observer_refuses(connect_as, subject)
        if server != cli._needs_admin(subject):
            disagree[subject] = f"server refuses: {server}"
    assert not disagree, disagree


# -- what JetStream tells the observer: stream names and sizes, never a bucket's keys -----------------------

async def test_the_observer_cannot_list_a_streams_subjects(start_component, connect_as):
    """STREAM.INFO with a subjects filter would list every key of a bucket (KMS key ids, user names):
    the observer may ask it of EVENTS only. STREAM.LIST, which `teebus status` asks, counts subjects
    and names none, and takes no subjects filter; STREAM.NAMES filters on the streams' configured
    subjects, so it tells no key from a key that is not there."""
    import json

    from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

    await start_component(KmsComponent)
    key_id = (await Requester(await connect_as("gateway")).request(mesatee.kms("Create"), {"type": "Create"})
              ).payload["key_id"]
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc).lower())

    observer = await connect_as("observer", error_cb=on_error)
    everything = json.dumps({"subjects_filter": ">"}).encode()
    with pytest.raises((NatsTimeout, NoRespondersError)):
        await observer.request("$JS.API.STREAM.INFO.KV_mesatee_kms_keys", everything, timeout=1)
    await eventually(lambda: any("permissions violation for publish" in v and "stream.info.kv_mesatee_kms_keys" in v
                                 for v in violations))
    listed = (await observer.request("$JS.API.STREAM.LIST", b'{"offset": 0}', timeout=2)).data
    assert key_id.encode() not in listed
    kms = next(s for s in json.loads(listed)["streams"] if s["config"]["name"] == "KV_mesatee_kms_keys")
    assert "subjects" not in kms["state"]
    filtered = json.loads((await observer.request("$JS.API.STREAM.LIST", everything, timeout=2)).data)
    assert "error" in filtered and not filtered.get("streams"), filtered
    names = []
    for key in (key_id, "no-such-key"):
        asked = json.dumps({"subject": f"$KV.mesatee_kms_keys.{key}"}).encode()
        names.append(json.loads((await observer.request("$JS.API.STREAM.NAMES", asked, timeout=2)).data)["streams"])
    assert names[0] == names[1]
    events = json.loads((await observer.request("$JS.API.STREAM.INFO.EVENTS", b"", timeout=2)).data)
    assert events["config"]["name"] == "EVENTS"          # `teebus events` still reads its stream
