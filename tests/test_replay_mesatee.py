"""Replayable event tests for MesaTEE's main flow (DESIGN.md "Events"): users, KMS, TDFS, TMS and FNS.

The committed recording (tests/recordings/mesatee_scenario.jsonl, see tests/replay/record_mesatee.py)
is replayed into fresh components on a new data directory: the driver's requests are resent, its
files written again where the replayed TDFS says, and every reply, every request the components
make of each other, and every event is compared. Tampered copies must not replay green. A live
recording replays green too.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest

from bus import headers as hdr
from bus.requester import Requester
from components.mesatee import subjects
from tests.replay.fresh import by_components, driven, reply_of
from tests.replay.harness import ReplayReport, replay
from tests.replay.record_mesatee import (DRIVER_INBOX, DRIVER_ROLE, GOLDEN, MESATEE_NORMALISER, RECORDING,
                                         after_reply, ensure_users, read_result, record_mesatee,
                                         running_mesatee)
from tests.replay.recorder import DRIVER_INBOX as DRIVER_INBOX_FIELD
from tests.replay.recording import Exchange, Recording

# The driver's exchanges, by position among them: (subject, error code).
DRIVEN = [
    (subjects.tdfs("Create"), None), (subjects.tdfs("Create"), None),          # the two psi inputs
    (subjects.tms("Create"), None), (subjects.tms("Get"), None),               # psi task: Created
    (subjects.FNS_INVOKE, "409"),                                              # before the approval
    (subjects.tms("Update"), None), (subjects.FNS_INVOKE, None),               # approved: Ready; Finished
    (subjects.tms("Get"), None), (subjects.tms("Get"), None),                  # each user's result id
    (subjects.tdfs("Get"), None), (subjects.tdfs("Get"), None),                # each user's result file
    (subjects.tdfs("Get"), "404"),                                             # user1's result, by user2
    (subjects.tms("Create"), None), (subjects.FNS_INVOKE, None), (subjects.FNS_INVOKE, "409"),   # echo
    (subjects.tms("Get"), "401"),                                              # a wrong user_token
]
(INPUT_1, INPUT_2, PSI_CREATE, PSI_GET, EARLY_INVOKE, APPROVE, PSI_INVOKE, TASK_OF_1, TASK_OF_2, RESULT_1,
 RESULT_2, OTHERS_RESULT, ECHO_CREATE, ECHO_INVOKE, ECHO_AGAIN, WRONG_TOKEN) = range(len(DRIVEN))

AUTH, KMS_CREATE, KMS_GET = subjects.users("authenticate"), subjects.kms("Create"), subjects.kms("Get")
TDFS_GET, TDFS_CREATE = subjects.tdfs_internal("Get"), subjects.tdfs_internal("Create")
TMS_GET, TMS_UPDATE = subjects.tms_internal("Get"), subjects.tms_internal("Update")
# The requests the components make of each other, in order (all answered, the last one with a 401).
COMPONENT_SUBJECTS = [
    AUTH, KMS_CREATE, AUTH, KMS_CREATE,                       # TDFS Create x2
    AUTH, TDFS_GET, AUTH,                                     # TMS Create (reads user1's input), TMS Get
    TMS_GET,                                                  # the early invoke
    AUTH, TDFS_GET,                                           # TMS Update (reads user2's input)
    TMS_GET, TMS_UPDATE, TDFS_GET, KMS_GET, TDFS_GET, KMS_GET,  # psi: Running, the inputs and their keys
    TDFS_CREATE, KMS_CREATE, TDFS_CREATE, KMS_CREATE, TMS_UPDATE,  # two outputs, Finished
    AUTH, AUTH, AUTH, KMS_GET, AUTH, KMS_GET, AUTH,           # TMS Get x2, TDFS Get x2, the refused Get
    AUTH, TMS_GET, TMS_UPDATE, TMS_UPDATE, TMS_GET,           # echo: Create, invoke, invoke again
    AUTH,                                                     # the wrong token
]
EVENTS = [f"events.mesatee.{name}" for name in (
    "key.created", "file.created", "key.created", "file.created", "task.created", "task.approved", "task.ready",
    "task.running", "key.created", "file.created", "key.created", "file.created", "task.finished",
    "task.created", "task.running", "task.finished")]


@pytest.fixture
async def replay_into_fresh_mesatee(connect_as, tmp_path: Path) -> Callable:
    """Factory: replay a recording into a MesaTEE started just for it, on data directories of its own."""
    async def run(recording: Recording, *, side_effects: bool = True) -> ReplayReport:
        async with running_mesatee(connect_as, tmp_path / "replay"):
            await ensure_users(Requester(await connect_as("admin")))
            return await replay(recording, await connect_as(DRIVER_ROLE), await connect_as("admin"),
                                MESATEE_NORMALISER, after_reply=after_reply if side_effects else None)

    return run


def _driven(recording: Recording) -> list[Exchange]:
    return driven(recording, DRIVER_INBOX)


def _by_components(recording: Recording) -> list[Exchange]:
    return by_components(recording, DRIVER_INBOX)


_reply = reply_of


def _check_mesatee_shape(recording: Recording) -> None:
    """The recording holds exactly the MesaTEE scenario: who asked what, the error codes, the events."""
    assert recording.meta[DRIVER_INBOX_FIELD] == DRIVER_INBOX
    assert all(e.reply is not None for e in recording.exchanges), "every request must be paired with its reply"
    assert [(e.request.subject, e.reply.error_code) for e in _driven(recording)] == DRIVEN
    components = _by_components(recording)
    assert [e.request.subject for e in components] == COMPONENT_SUBJECTS
    assert [e.reply.error_code for e in components] == [None] * (len(COMPONENT_SUBJECTS) - 1) + ["401"]
    assert [event.subject for event in recording.events] == EVENTS
    assert recording.others == []
    driver_ids = {e.request.headers[hdr.REQUEST_ID] for e in _driven(recording)}
    assert all(e.request.headers[hdr.REQUEST_ID] in driver_ids for e in components), \
        "components pass the driver's request id on"


def _check_results(report: ReplayReport) -> None:
    """The replayed psi's outputs, read with the replayed TDFS Gets' paths and keys, are the golden ones."""
    assert report.replayed is not None
    gets = [e for e in _driven(report.replayed) if e.request.subject == subjects.tdfs("Get")]
    infos = [_reply(e).json_view()["file_info"] for e in gets[:2]]
    assert [read_result(info) for info in infos] == [GOLDEN["user1"], GOLDEN["user2"]]


# --- the committed recording replays green -------------------------------------------------------

async def test_committed_recording_replays_green(replay_into_fresh_mesatee, tmp_path: Path):
    recording = Recording.load(RECORDING)
    _check_mesatee_shape(recording)  # guards against an empty or truncated recording "replaying green"

    report = await replay_into_fresh_mesatee(recording)

    report.assert_green()
    assert (report.exchanges, report.component_exchanges_recorded, report.component_exchanges_replayed,
            report.events_recorded, report.events_replayed) == (16, 34, 34, 16, 16)
    _check_results(report)
    created = _reply(_driven(recording)[INPUT_1]).json_view()
    replayed_path = report.bindings.forward[created["access_path"]]
    assert replayed_path.startswith(str(tmp_path / "replay")), "the replayed TDFS keeps files in its own directory"
    assert report.bindings.forward[created["file_id"]] != created["file_id"], "fresh components make fresh ids"


async def test_without_the_side_effects_the_psi_fails(replay_into_fresh_mesatee):
    """The input files are written outside the bus; a replay that skips them cannot reproduce the run."""
    recording = Recording.load(RECORDING)

    report = await replay_into_fresh_mesatee(recording, side_effects=False)

    invoke = _driven(recording)[PSI_INVOKE].request
    assert f"#{invoke.index} {subjects.FNS_INVOKE}: reply header Nats-Service-Error-Code: recorded <missing>, " \
           "replayed '422'" in str(report)


# --- the harness fails when behaviour differs ----------------------------------------------------

def _error_code_changed(recording: Recording) -> Recording:
    exchange = _driven(recording)[EARLY_INVOKE]
    return recording.with_reply(exchange, _reply(exchange).with_headers({hdr.ERROR_CODE: "423"}))


def _status_changed(recording: Recording) -> Recording:
    exchange = _driven(recording)[PSI_GET]
    payload = _reply(exchange).json_view()
    payload["task_info"]["status"] = "Ready"
    return recording.with_reply(exchange, _reply(exchange).with_payload(payload))


def _event_dropped(recording: Recording) -> Recording:
    return replace(recording, events=[e for e in recording.events if e.subject != "events.mesatee.task.ready"])


def _other_results_key(recording: Recording) -> Recording:
    """user2's result recorded with user1's key: random, yet inconsistent with the bindings."""
    first, second = _driven(recording)[RESULT_1], _driven(recording)[RESULT_2]
    payload = _reply(second).json_view()
    payload["file_info"]["key_config"] = _reply(first).json_view()["file_info"]["key_config"]
    return recording.with_reply(second, _reply(second).with_payload(payload))


def _output_size_changed(recording: Recording) -> Recording:
    """The FNS registering user1's psi output as 5 bytes: a component's own request, compared too."""
    exchange = next(e for e in _by_components(recording) if e.request.subject == TDFS_CREATE)
    request = exchange.request.with_payload({**exchange.request.json_view(), "file_size": 5})
    return recording.replacing(exchange, Exchange(request, exchange.reply))


def _component_exchange_dropped(recording: Recording) -> Recording:
    last = _by_components(recording)[-1]
    return replace(recording, exchanges=[e for e in recording.exchanges if e is not last])


TAMPERINGS = {
    # name: (tamper, driven position it hits (None: elsewhere), expected report fragments)
    "error code": (_error_code_changed, EARLY_INVOKE,
                   ["reply header Nats-Service-Error-Code", "recorded '423', replayed '409'"]),
    "status": (_status_changed, PSI_GET, ["reply payload at task_info.status", "recorded 'Ready', replayed 'Created'"]),
    "event dropped": (_event_dropped, None,
                      ["events.mesatee.task.running: event subject", "replayed 'events.mesatee.task.ready'",
                       "the replay emitted an extra event"]),
    "inconsistent random": (_other_results_key, RESULT_2,
                            ["reply payload at file_info.key_config.key (random)", "replayed as"]),
    "component request": (_output_size_changed, None,
                          [f"{TDFS_CREATE}: component request payload at file_size: recorded 5, replayed 4"]),
    "component exchange dropped": (_component_exchange_dropped, None,
                                   [f"(replay only) {AUTH}: component request: recorded <missing>",
                                    "the replayed components made an extra request"]),
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
async def test_tampered_recording_reports_the_difference(replay_into_fresh_mesatee, name: str):
    tamper, position, fragments = TAMPERINGS[name]
    recording = tamper(Recording.load(RECORDING))

    report = await replay_into_fresh_mesatee(recording)

    report.assert_reports(fragments, None if position is None else _driven(recording)[position])


async def test_a_replay_through_another_role_is_refused(connect_as):
    with pytest.raises(ValueError, match="replay it through a connection of that role"):
        await replay(Recording.load(RECORDING), await connect_as("mesatee"), await connect_as("admin"),
                     MESATEE_NORMALISER)


# --- the recorder --------------------------------------------------------------------------------

async def test_a_live_recording_replays_green(connect_as, replay_into_fresh_mesatee, tmp_path: Path):
    recording = await record_mesatee(connect_as, tmp_path / "recorded")

    _check_mesatee_shape(recording)
    path = tmp_path / "live.jsonl"
    recording.dump(path)
    assert Recording.load(path) == recording, "a dumped recording loads back unchanged"

    report = await replay_into_fresh_mesatee(recording)   # its own fresh components, other keys
    report.assert_green()
    _check_results(report)
