"""Replayable event tests for the MesaTEE KMS (DESIGN.md "Events"): record, replay, and fail loudly.

The committed recording (tests/recordings/kms_scenario.jsonl, see tests/replay/record_kms.py) is
replayed into a fresh KMS with its own master key; it must replay green. Tampered copies must not,
which proves the harness can fail. A live scenario is recorded and replayed to cover the recorder.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest
from nats.aio.client import Client

from bus import headers as hdr
from components.mesatee import subjects
from components.mesatee.kms import KmsComponent
from tests.replay.harness import ReplayReport, replay
from tests.replay.record_kms import KMS_NORMALISER, RECORDING, record_kms
from tests.replay.recorder import is_noise
from tests.replay.recording import Message, Recording

# The committed scenario, by position: what each exchange is.
CREATE_1, CREATE_2, GET_1, DELETE_1, GET_DELETED, GET_2, GET_WITHOUT_ID = range(7)
EXPECTED_OPERATIONS = ["create", "create", "get", "delete", "get", "get", "get"]
EXPECTED_ERROR_CODES = [None, None, None, None, "404", None, "400"]
EXPECTED_EVENTS = ["events.mesatee.key.created", "events.mesatee.key.created", "events.mesatee.key.deleted"]


@pytest.fixture
async def replay_into_fresh_kms(start_component, connect_as, tmp_path: Path) -> Callable:
    """Factory: replay a recording into a KMS started just for it (fresh master key in tmp_path)."""
    async def run(recording: Recording) -> ReplayReport:
        await start_component(KmsComponent, tmp_path / "kms-replay")
        client: Client = await connect_as("mesatee")  # KMS subjects are internal
        return await replay(recording, client, await connect_as("admin"), KMS_NORMALISER)

    return run


def _reply(recording: Recording, position: int) -> Message:
    reply = recording.exchanges[position].reply
    assert reply is not None
    return reply


def _check_kms_shape(recording: Recording) -> None:
    """The recording holds exactly the KMS scenario: paired replies, the error codes, the events."""
    assert [e.request.subject for e in recording.exchanges] == [subjects.kms(op) for op in EXPECTED_OPERATIONS]
    assert all(e.reply is not None for e in recording.exchanges), "every request must be paired with its reply"
    assert [e.reply.error_code for e in recording.exchanges] == EXPECTED_ERROR_CODES
    assert [event.subject for event in recording.events] == EXPECTED_EVENTS
    assert recording.others == []


# --- the committed recording replays green -------------------------------------------------------

async def test_committed_recording_replays_green(replay_into_fresh_kms):
    recording = Recording.load(RECORDING)
    _check_kms_shape(recording)  # guards against an empty or truncated recording "replaying green"

    report = await replay_into_fresh_kms(recording)

    report.assert_green()
    assert (report.exchanges, report.events_recorded, report.events_replayed) == (7, 3, 3)
    recorded_ids = {_reply(recording, CREATE_1).json_view()["key_id"], _reply(recording, CREATE_2).json_view()["key_id"]}
    replayed_ids = {report.bindings.forward[key_id] for key_id in recorded_ids}
    assert len(replayed_ids) == 2 and not replayed_ids & recorded_ids, "fresh components make fresh ids"


# --- the harness fails when behaviour differs ----------------------------------------------------

def _error_code_changed(recording: Recording) -> Recording:
    reply = _reply(recording, GET_DELETED)
    return recording.with_reply(recording.exchanges[GET_DELETED], reply.with_headers({hdr.ERROR_CODE: "409"}))


def _reply_type_changed(recording: Recording) -> Recording:
    reply = _reply(recording, GET_1)
    return recording.with_reply(recording.exchanges[GET_1], reply.with_payload({**reply.json_view(), "type": "Fetch"}))


def _other_keys_material(recording: Recording) -> Recording:
    """Get #2 recorded as returning key #1's material: random, yet inconsistent with the bindings."""
    reply = _reply(recording, GET_2)
    first_config = _reply(recording, CREATE_1).json_view()["config"]
    return recording.with_reply(recording.exchanges[GET_2], reply.with_payload({**reply.json_view(), "config": first_config}))


def _key_id_not_a_uuid(recording: Recording) -> Recording:
    reply = _reply(recording, CREATE_2)
    return recording.with_reply(recording.exchanges[CREATE_2], reply.with_payload({**reply.json_view(), "key_id": "key-two"}))


def _event_renamed(recording: Recording) -> Recording:
    events = list(recording.events)
    deleted = events[2]
    events[2] = replace(deleted, subject="events.mesatee.key.destroyed").with_payload(
        {**deleted.json_view(), "what": "destroyed"})
    return replace(recording, events=events)


def _event_dropped(recording: Recording) -> Recording:
    return replace(recording, events=recording.events[:2])


def _error_message_changed(recording: Recording) -> Recording:
    reply = _reply(recording, GET_WITHOUT_ID)
    return recording.with_reply(recording.exchanges[GET_WITHOUT_ID], reply.with_headers({hdr.ERROR: "key_id is required"}))


TAMPERINGS = {
    # name: (tamper, exchange or event position it hits (None: an event), expected report fragments)
    "error code": (_error_code_changed, GET_DELETED,
                   ["reply header Nats-Service-Error-Code", "recorded '409', replayed '404'"]),
    "non-random field": (_reply_type_changed, GET_1, ["reply payload at type", "recorded 'Fetch', replayed 'Get'"]),
    "inconsistent random": (_other_keys_material, GET_2,
                            ["reply payload at config.key (random)", "replayed as"]),
    "random shape": (_key_id_not_a_uuid, CREATE_2,
                     ["reply payload at key_id (random)", "shape text of 7 chars became UUIDv4"]),
    "error message": (_error_message_changed, GET_WITHOUT_ID,
                      ["reply header Nats-Service-Error:", "'a Get request needs a key_id'"]),
    "event renamed": (_event_renamed, None,
                      ["events.mesatee.key.destroyed: event subject", "replayed 'events.mesatee.key.deleted'",
                       "event payload at what"]),
    "event dropped": (_event_dropped, None, ["(replay only) events.mesatee.key.deleted: event: recorded <missing>",
                                            "the replay emitted an extra event"]),
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
async def test_tampered_recording_reports_the_difference(replay_into_fresh_kms, name: str):
    tamper, position, fragments = TAMPERINGS[name]
    recording = tamper(Recording.load(RECORDING))

    report = await replay_into_fresh_kms(recording)

    report.assert_reports(fragments, None if position is None else recording.exchanges[position])
    with pytest.raises(AssertionError, match=r"\d+ differences?"):
        report.assert_green()


# --- the recorder --------------------------------------------------------------------------------

async def test_recorder_records_a_live_scenario(connect_as, start_component, tmp_path: Path):
    recording = await record_kms(connect_as, tmp_path / "kms-recorded")

    _check_kms_shape(recording)
    messages = [m for e in recording.exchanges for m in (e.request, e.reply)] + recording.events
    assert not [m.subject for m in messages if m.subject.startswith(("$JS.", "$KV.", "$O.", "$SRV."))]
    assert all(e.reply.subject == e.request.reply for e in recording.exchanges)
    assert all(not is_noise(e.request.subject) for e in recording.exchanges)
    indexes = [m.index for m in messages]
    assert len(set(indexes)) == len(indexes)
    assert all(e.request.index < e.reply.index for e in recording.exchanges)
    created = _reply(recording, CREATE_1).json_view()["key_id"]
    assert recording.events[0].json_view()["key_id"] == created
    assert recording.events[0].headers[hdr.REQUEST_ID] == recording.exchanges[CREATE_1].request.headers[hdr.REQUEST_ID]

    path = tmp_path / "live.jsonl"
    recording.dump(path)
    assert Recording.load(path) == recording, "a dumped recording loads back unchanged"
    assert len(path.read_text().splitlines()) == 1 + 7 + 3  # meta, exchanges, events

    # Freshly recorded traffic replays green too (its own fresh KMS, another master key).
    await start_component(KmsComponent, tmp_path / "kms-replay")
    report = await replay(recording, await connect_as("mesatee"), await connect_as("admin"), KMS_NORMALISER)
    report.assert_green()

