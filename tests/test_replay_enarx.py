"""Replayable event tests for Enarx's main flow (DESIGN.md "Events"): a Nil keep from contract to shutdown.

The committed recording (tests/recordings/enarx_scenario.jsonl, see tests/replay/record_enarx.py)
is replayed into a fresh deployment: its own nats-server on a new data directory and a keep manager
on it, which starts a keep process of its own. The driver's requests are resent (the kuuid in the
subjects, the contract uuid in new_keep, rewritten to the replayed ones) and every reply, every
request the keep manager and the keep make of each other, and every event is compared. Tampered
copies must not replay green. A live recording replays green too. Every keep process ends with its
replay (the scenario shuts its keep down; the keep manager stops any left over).
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import cbor2
import pytest

from bus import headers as hdr, procfs
from bus.testing import running_bus
from components.enarx import evidence, subjects
from components.enarx.keep_processes import HOST
from components.enarx.system import MANIFEST
from tests.replay.fresh import assert_dumps_and_loads, driven, reply_of
from tests.replay.harness import ReplayReport, decode, replay
from tests.replay.normalise import Bindings, shapes
from tests.replay.record_enarx import (DRIVER_INBOX, DRIVER_ROLE, ECHOED, ENARX_NORMALISER, RECORDING,
                                       record_enarx, running_keepmgr)
from tests.replay.recorder import DRIVER_INBOX as DRIVER_INBOX_FIELD, is_driven
from tests.replay.recording import Exchange, Message, Recording

pytestmark = pytest.mark.timeout(120)

# The driver's exchanges, by position among them: (subject, with the keep's id as KUUID; error code).
KUUID = "KUUID"
DRIVEN = [
    (subjects.CONTRACTS, None), (subjects.NEW_KEEP, None), (subjects.KEEP_GET, None),   # Indeterminate
    (subjects.keep(KUUID), None), (subjects.keep(KUUID), None),                        # evidence; Success
    (subjects.KEEP_GET, None), (subjects.workload(KUUID), None),                       # Ready; the result
    (subjects.NEW_KEEP, "409"), (subjects.keep(KUUID), "400"),                         # the bad requests
    (subjects.KEEP_DELETE, None),                                                      # Shutdown
]
(CONTRACTS, NEW_KEEP, INDETERMINATE, EVIDENCE, LAUNCH, READY, WORKLOAD, REDEEMED_AGAIN, NOT_AN_ITEM,
 SHUTDOWN) = range(len(DRIVEN))
# What the keep manager and the keep ask of each other (the ping that was answered; none refused).
PING, REPORT, STOP = (subjects.control("ping", KUUID), subjects.report(KUUID), subjects.control("shutdown", KUUID))
COMPONENT_SUBJECTS = [PING, REPORT, REPORT, REPORT, STOP]      # start; Ready, Running, Ready; shutdown
EVENTS = [f"events.enarx.{name}" for name in (
    "contract.redeemed", "contract.offered", "keep.created", "keep.ready", "keep.running", "keep.ready",
    "keep.shutdown")]


def keep_loaders_of(data_dir: Path) -> list[int]:
    """The pids of keep processes started on `data_dir` (their command line names it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = procfs.argv(int(entry.name))
            if HOST.encode() in argv and str(data_dir).encode() in argv:
                pids.append(int(entry.name))
    return pids


@pytest.fixture
async def fresh_enarx(tmp_path: Path) -> AsyncIterator[Callable]:
    """Factory: run `use(bus, connect_as)` on a nats-server of its own, on a new data directory; after
    it, no keep process started on that directory may be left running."""
    numbers = itertools.count()
    data_dirs: list[Path] = []

    async def run(use: Callable) -> Any:
        data_dir = tmp_path / f"deployment-{next(numbers)}"
        data_dirs.append(data_dir)
        async with running_bus(data_dir, [MANIFEST]) as bus:
            async with bus.scope() as scope:
                return await use(bus, scope.connect)

    yield run
    for data_dir in data_dirs:
        assert keep_loaders_of(data_dir) == [], f"keep processes left running on {data_dir}"


@pytest.fixture
def replay_into_fresh_keepmgr(fresh_enarx) -> Callable:
    """Factory: replay a recording into a keep manager started just for it."""
    async def run(recording: Recording) -> ReplayReport:
        async def use(bus, connect_as) -> ReplayReport:
            async with running_keepmgr(bus, connect_as):
                return await replay(recording, await connect_as(DRIVER_ROLE), await connect_as("admin"),
                                    ENARX_NORMALISER)
        return await fresh_enarx(use)

    return run


def _driven(recording: Recording) -> list[Exchange]:
    return driven(recording, DRIVER_INBOX)


def _by_components(recording: Recording) -> list[Exchange]:
    """The components' exchanges that are compared: all but the unanswered pings of a starting keep."""
    return [exchange for exchange in recording.exchanges if not is_driven(exchange, DRIVER_INBOX)
            and not (exchange.reply is None and ENARX_NORMALISER.is_polled(exchange.request.subject))]


_reply = reply_of


def _value(message: Message) -> Any:
    return decode(message, ENARX_NORMALISER.opaque_cbor)


def _with_value(message: Message, value: Any) -> Message:
    """A copy carrying `value` encoded as the message was (CBOR, or JSON for the events and reports)."""
    return replace(message, data=cbor2.dumps(value)) if message.content_type != hdr.JSON else message.with_payload(value)


def _kuuid(recording: Recording) -> str:
    return str(uuid.UUID(bytes=_value(_reply(_driven(recording)[NEW_KEEP]))["kuuid"]))


def _check_enarx_shape(recording: Recording) -> None:
    """The recording holds exactly the Enarx scenario: who asked what, the error codes, the events."""
    assert recording.meta[DRIVER_INBOX_FIELD] == DRIVER_INBOX
    kuuid = _kuuid(recording)
    driven = _driven(recording)
    assert all(e.reply is not None for e in driven), "every driven request must be paired with its reply"
    assert [(e.request.subject, e.reply.error_code) for e in driven] == [
        (subject.replace(KUUID, kuuid), code) for subject, code in DRIVEN]
    unanswered = [e for e in recording.exchanges if e.reply is None]
    assert {e.request.subject for e in unanswered} <= {PING.replace(KUUID, kuuid)}, "only pings go unanswered"
    components = _by_components(recording)
    assert [e.request.subject for e in components] == [subject.replace(KUUID, kuuid) for subject in COMPONENT_SUBJECTS]
    assert [e.reply.error_code for e in components] == [None] * len(COMPONENT_SUBJECTS)
    assert [event.subject for event in recording.events] == EVENTS
    assert recording.others == []
    driver_ids = {e.request.headers[hdr.REQUEST_ID] for e in driven}
    passed_on = [e.request.headers[hdr.REQUEST_ID] for e in components] + [
        event.headers[hdr.REQUEST_ID] for event in recording.events]
    assert set(passed_on) <= driver_ids, "the keep manager and the keep pass the driver's request ids on"


# --- the committed recording replays green -------------------------------------------------------

async def test_committed_recording_replays_green(replay_into_fresh_keepmgr):
    recording = Recording.load(RECORDING)
    _check_enarx_shape(recording)  # guards against an empty or truncated recording "replaying green"

    report = await replay_into_fresh_keepmgr(recording)

    report.assert_green()
    assert (report.exchanges, report.component_exchanges_recorded, report.component_exchanges_replayed,
            report.events_recorded, report.events_replayed) == (10, 5, 5, 7, 7)
    driven = _driven(recording)
    kuuid = _value(_reply(driven[NEW_KEEP]))["kuuid"]
    replayed_kuuid = report.bindings.forward[kuuid]
    assert replayed_kuuid != kuuid, "a fresh keep manager makes fresh contracts"
    assert report.bindings.forward[_kuuid(recording)] == str(uuid.UUID(bytes=replayed_kuuid)), \
        "the kuuid's text form (subjects, events) is bound with its bytes"
    proof = _value(_reply(driven[EVIDENCE]))["evidence"]
    assert report.bindings.forward[proof["measurement"]] == evidence.measurement(), \
        "the replayed keep measures this code"
    result = _value(report.replies[WORKLOAD])
    assert {name: result[name] for name in ECHOED} == ECHOED


# --- the harness fails when behaviour differs ----------------------------------------------------

def _error_code_changed(recording: Recording) -> Recording:
    exchange = _driven(recording)[REDEEMED_AGAIN]
    return recording.with_reply(exchange, _reply(exchange).with_headers({hdr.ERROR_CODE: "404"}))


def _output_changed(recording: Recording) -> Recording:
    exchange = _driven(recording)[WORKLOAD]
    result = _value(_reply(exchange))
    return recording.with_reply(exchange, _with_value(_reply(exchange), {**result, "stdout": b"one\ntwo\n"}))


def _event_dropped(recording: Recording) -> Recording:
    return replace(recording, events=[e for e in recording.events if e.subject != "events.enarx.keep.running"])


def _other_certificate(recording: Recording) -> Recording:
    """The Ready keep recorded with another certificate than its evidence's: random, yet inconsistent."""
    exchange = _driven(recording)[READY]
    other = evidence.new_identity(_kuuid(recording), "127.0.0.1").certificate_pem
    keep = {**_value(_reply(exchange)), "certificate_as_pem": other}
    return recording.with_reply(exchange, _with_value(_reply(exchange), keep))


def _other_workload_info(recording: Recording) -> Recording:
    """The keep reporting another workload name as it runs: a component's own request, compared too."""
    exchange = next(e for e in _by_components(recording) if (e.request.json_view() or {}).get("state") == "Running")
    request = exchange.request.with_payload({**exchange.request.json_view(), "human_readable_info": "cat"})
    return recording.replacing(exchange, Exchange(request, exchange.reply))


TAMPERINGS = {
    # name: (tamper, driven position it hits (None: elsewhere), expected report fragments)
    "error code": (_error_code_changed, REDEEMED_AGAIN,
                   ["reply header Nats-Service-Error-Code", "recorded '404', replayed '409'"]),
    "non-random field": (_output_changed, WORKLOAD,
                         ["reply payload at stdout", "recorded b'one\\ntwo\\n', replayed b'one\\ntwo\\nhi\\nfrom stdin\\n'"]),
    "event dropped": (_event_dropped, None,
                      ["events.enarx.keep.ready: event subject", "replayed 'events.enarx.keep.running'",
                       "(replay only) events.enarx.keep.shutdown: event: recorded <missing>",
                       "the replay emitted an extra event"]),
    "inconsistent random": (_other_certificate, READY,
                            ["reply payload at certificate_as_pem (random)", "already stands for recorded"]),
    "component request": (_other_workload_info, None,
                          ["component request payload at human_readable_info: recorded 'cat', replayed 'echo'"]),
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
async def test_tampered_recording_reports_the_difference(replay_into_fresh_keepmgr, name: str):
    tamper, position, fragments = TAMPERINGS[name]
    recording = tamper(Recording.load(RECORDING))

    report = await replay_into_fresh_keepmgr(recording)

    report.assert_reports(fragments, None if position is None else _driven(recording)[position])


# --- CBOR values in the normaliser ---------------------------------------------------------------

def test_a_uuid_is_bound_in_all_its_forms_and_certificates_keep_their_shape():
    recorded, replayed = uuid.uuid4(), uuid.uuid4()
    bindings = Bindings()
    assert bindings.bind(recorded.bytes, replayed.bytes) is None
    assert bindings.substitute({"kuuid": recorded.bytes, "id": recorded}) == {"kuuid": replayed.bytes, "id": replayed}
    assert bindings.substitute_subject(f"enarx.keep.{recorded}") == f"enarx.keep.{replayed}"
    assert bindings.substitute_text(f"contract {recorded} was already redeemed") == \
        f"contract {replayed} was already redeemed"
    assert "already stands for" in bindings.bind(str(uuid.uuid4()), str(replayed))
    one, other = (evidence.new_identity("k", "127.0.0.1").certificate_pem for _ in range(2))
    assert ("pem", "CERTIFICATE") in shapes(one) & shapes(other) & shapes(other.decode())
    assert ("bytes", 16) in shapes(recorded.bytes) and ("uuid", 4) in shapes(recorded) & shapes(str(recorded))


# --- the recorder --------------------------------------------------------------------------------

async def test_a_live_recording_replays_green(fresh_enarx, replay_into_fresh_keepmgr, tmp_path: Path):
    recording = await fresh_enarx(record_enarx)

    _check_enarx_shape(recording)
    assert_dumps_and_loads(recording, tmp_path)

    report = await replay_into_fresh_keepmgr(recording)   # another bus, keep manager and keep
    report.assert_green()
