"""Replayable event tests for Conclave's main flow (DESIGN.md "Events"): attest, deliver, relay, poll.

The committed recording (tests/recordings/conclave_scenario.jsonl, see tests/replay/record_conclave.py)
is replayed into a fresh deployment: a nats-server of its own on a new data directory, the
hello-world and relay enclaves (given the recorded identity before they start) and relay's
mailboxes. The driver's requests (the HTTP adapter's) are resent byte for byte, and every reply and
event is compared; the enclave's mail, sealed afresh on every run, is compared as the clients read
it (the normaliser's opener). Without the recorded identity nothing opens. Tampered copies must not
replay green. A live recording replays green too.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest

from bus import headers as hdr
from components.conclave import messages, subjects
from components.conclave.system import MANIFEST
from tests import conclave_wire as wire
from tests.replay.fresh import assert_dumps_and_loads, by_components, driven, fresh_deployments, reply_of
from tests.replay.harness import ReplayReport, replay
from tests.replay.record_conclave import (ALICE, BOB, CONCLAVE_NORMALISER, DRIVER_INBOX, DRIVER_ROLE,
                                          ENCLAVE_SECRETS, GREETING, HELLO, RECORDING, RELAY, read_payload,
                                          record_conclave, running_conclave)
from tests.replay.recorder import DRIVER_INBOX as DRIVER_INBOX_FIELD
from tests.replay.recording import Exchange, Recording

pytestmark = pytest.mark.timeout(60)

ATTEST_HELLO, DELIVER_HELLO = subjects.attestation(HELLO), subjects.deliver(HELLO)
ATTEST_RELAY, DELIVER_RELAY, POLL_RELAY = subjects.attestation(RELAY), subjects.deliver(RELAY), subjects.poll(RELAY)
# The driver's exchanges, by position among them: (subject, error code).
DRIVEN = [
    (ATTEST_HELLO, None), (DELIVER_HELLO, None),       # alice's mail 0, answered reversed
    (DELIVER_HELLO, "400"), (DELIVER_HELLO, "400"),    # mail 0 again (ENCLAVE_EXCEPTION); mail 1 tampered (MAIL_DECRYPTION)
    (DELIVER_HELLO, None),                             # mail 1: the refusals moved nothing
    (ATTEST_RELAY, None), (DELIVER_RELAY, None), (DELIVER_RELAY, None),   # alice, then bob, join the room
    (DELIVER_RELAY, None),                             # alice speaks: queued for bob
    (POLL_RELAY, None), (POLL_RELAY, None),            # bob polls it; then nothing
]
(HELLO_EII, GREETED, REPLAYED, TAMPERED, AGAIN, RELAY_EII, ALICE_JOINS, BOB_JOINS, ALICE_SPEAKS, BOB_POLLS,
 BOB_POLLS_AGAIN) = range(len(DRIVEN))
EVENTS = [f"events.conclave.mail.{what}" for what in (
    "accepted", "accepted",                            # hello-world's two accepted mails
    "accepted", "accepted", "accepted",                # relay: two joins, alice's words
    "taken")]                                          # bob's poll
STORED_MAIL = subjects.stored_mail(RELAY, BOB.correlation_id)


@pytest.fixture
def fresh_conclave(tmp_path: Path) -> Callable:
    """Factory: run `use(bus, connect_as)` on a nats-server of its own, on a new data directory."""
    return fresh_deployments(tmp_path, [MANIFEST])


@pytest.fixture
def replay_into_fresh_conclave(fresh_conclave) -> Callable:
    """Factory: replay a recording into enclaves started just for it (with the recorded identity,
    unless told otherwise)."""
    async def run(recording: Recording, *, identity: bool = True) -> ReplayReport:
        async def use(bus, connect_as) -> ReplayReport:
            async with running_conclave(bus, connect_as, identity=identity):
                return await replay(recording, await connect_as(DRIVER_ROLE), await connect_as("admin"),
                                    CONCLAVE_NORMALISER)
        return await fresh_conclave(use)

    return run


def _driven(recording: Recording) -> list[Exchange]:
    return driven(recording, DRIVER_INBOX)


def _by_components(recording: Recording) -> list[Exchange]:
    return by_components(recording, DRIVER_INBOX)


_reply = reply_of


def _said(exchange: Exchange) -> dict[str, Any]:
    """What the enclave's reply says (its mail, read with the clients' keys)."""
    opened = read_payload(_reply(exchange))
    assert opened is not None and "mail" in opened, f"#{exchange.index}: the reply is no mail to a client"
    return opened["mail"]


def _check_conclave_shape(recording: Recording) -> None:
    """The recording holds exactly the Conclave scenario: who asked what, the error codes and Conclave's
    errors, what the enclave's mail says, the queued mail and the events."""
    assert recording.meta[DRIVER_INBOX_FIELD] == DRIVER_INBOX
    assert all(e.reply is not None for e in recording.exchanges), "every request must be paired with its reply"
    driven = _driven(recording)
    assert [(e.request.subject, e.reply.error_code) for e in driven] == DRIVEN
    assert driven[REPLAYED].request.data == driven[GREETED].request.data, "a replay is the same bytes again"
    assert _reply(driven[REPLAYED]).json_view()["conclave"] == messages.ENCLAVE_EXCEPTION
    assert _reply(driven[TAMPERED]).json_view() == {"conclave": messages.MAIL_DECRYPTION}
    assert [read_payload(_reply(driven[at]))["attestation"]["encryption_key"] for at in (HELLO_EII, RELAY_EII)] \
        == [HELLO, RELAY], "the enclaves attest the recorded keys"
    assert [(_said(driven[at])["to"], _said(driven[at])["body"]) for at in (GREETED, AGAIN, ALICE_JOINS, BOB_JOINS,
                                                                            ALICE_SPEAKS, BOB_POLLS)] == [
        ("alice", GREETING[::-1]), ("alice", "niaga"), ("alice", '{"members": 1}'), ("bob", '{"members": 2}'),
        ("alice", '{"members": 2}'), ("bob", _said(driven[BOB_POLLS])["body"])]
    assert '"text": "bob, are you there?"' in _said(driven[BOB_POLLS])["body"]
    assert _reply(driven[BOB_POLLS_AGAIN]).data == b""
    assert [e.request.subject for e in _by_components(recording)] == [STORED_MAIL], "the one queued mail"
    assert [event.subject for event in recording.events] == EVENTS
    assert recording.others == []
    driver_ids = {e.request.headers[hdr.REQUEST_ID] for e in driven}
    assert {event.headers.get(hdr.REQUEST_ID) for event in recording.events} <= driver_ids, \
        "every event follows from one of the driver's requests"


# --- the committed recording replays green -------------------------------------------------------

async def test_committed_recording_replays_green(replay_into_fresh_conclave):
    recording = Recording.load(RECORDING)
    _check_conclave_shape(recording)  # guards against an empty or truncated recording "replaying green"

    report = await replay_into_fresh_conclave(recording)

    report.assert_green()
    assert (report.exchanges, report.events_recorded, report.events_replayed) == (len(DRIVEN), len(EVENTS),
                                                                                 len(EVENTS))
    recorded, replayed = _driven(recording), _driven(report.replayed)
    for position in (GREETED, ALICE_SPEAKS, BOB_POLLS):
        assert _reply(replayed[position]).data != _reply(recorded[position]).data, "the enclave seals its mail afresh"
        assert _said(replayed[position]) | {"state_id": None, "previous_state_id": None} \
            == _said(recorded[position]) | {"state_id": None, "previous_state_id": None}, "and it says the same"


async def test_without_the_recorded_identity_nothing_opens(replay_into_fresh_conclave):
    """A fresh enclave draws its own key: the recorded mails are not for it, and it attests another key."""
    recording = Recording.load(RECORDING)

    report = await replay_into_fresh_conclave(recording, identity=False)

    attested, greeted = _driven(recording)[HELLO_EII].request, _driven(recording)[GREETED].request
    report.assert_reports([f"#{attested.index} {ATTEST_HELLO}: reply payload at attestation.encryption_key: "
                           "recorded 'hello-world'",
                           f"#{greeted.index} {DELIVER_HELLO}: reply header Nats-Service-Error-Code: "
                           "recorded <missing>, replayed '400'"])


# --- the harness fails when behaviour differs ----------------------------------------------------

def _with_data(recording: Recording, position: int, data: bytes) -> Recording:
    """A copy whose driven exchange at `position` was answered with `data` (its headers kept)."""
    exchange = _driven(recording)[position]
    return recording.with_reply(exchange, replace(_reply(exchange), data=data))


def _other_body(recording: Recording) -> Recording:
    """The greeting's reply recorded as saying something else (a mail the enclave's key wrote)."""
    mail = wire.write_mail(b"Hello, client!", sender_private=ENCLAVE_SECRETS[HELLO], recipient_public=ALICE.public,
                           sequence=0, topic="default", ephemeral_private=os.urandom(32))
    return _with_data(recording, GREETED, mail)


def _trailing_bytes(recording: Recording) -> Recording:
    """Bob's mail recorded 16 bytes longer (a reader ignores them: only the length tells)."""
    return _with_data(recording, BOB_POLLS, _reply(_driven(recording)[BOB_POLLS]).data + bytes(16))


def _other_key_attested(recording: Recording) -> Recording:
    data = _reply(_driven(recording)[HELLO_EII]).data
    position = 3 + 4 + 44 + 4        # §11: "EII", i32 + 44-byte signing key, i32, then the encryption key
    return _with_data(recording, HELLO_EII, data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1:])


def _unreadable_reply(recording: Recording) -> Recording:
    """Alice's second reply recorded damaged: no client's key opens it, so its bytes are compared."""
    data = _reply(_driven(recording)[AGAIN]).data
    return _with_data(recording, AGAIN, data[:-1] + bytes([data[-1] ^ 0x01]))


def _conclave_error_changed(recording: Recording) -> Recording:
    exchange = _driven(recording)[TAMPERED]
    return recording.with_reply(exchange, _reply(exchange).with_payload({"conclave": messages.ENCLAVE_EXCEPTION}))


def _mail_handed_out_twice(recording: Recording) -> Recording:
    return _with_data(recording, BOB_POLLS_AGAIN, _reply(_driven(recording)[BOB_POLLS]).data)


def _replies_swapped(recording: Recording) -> Recording:
    """Alice's words answered with her join's reply: its state id is bound to the join's already."""
    return _with_data(recording, ALICE_SPEAKS, _reply(_driven(recording)[ALICE_JOINS]).data)


def _nothing_queued(recording: Recording) -> Recording:
    events = [event.with_payload({**event.json_view(), "queued": []}) if event.json_view().get("queued") else event
              for event in recording.events]
    return replace(recording, events=events)


def _event_dropped(recording: Recording) -> Recording:
    return replace(recording, events=[e for e in recording.events if e.subject != "events.conclave.mail.taken"])


TAMPERINGS = {
    # name: (tamper, driven position it hits (None: elsewhere), expected report fragments)
    "reply body": (_other_body, GREETED,
                   ["reply payload at mail.body: recorded 'Hello, client!', replayed '!evalcne ,olleH'"]),
    "reply length": (_trailing_bytes, BOB_POLLS, ["reply payload at mail.length: recorded "]),
    "attested key": (_other_key_attested, HELLO_EII,
                     ["reply payload at attestation.encryption_key", "replayed 'hello-world'"]),
    "unreadable reply": (_unreadable_reply, AGAIN, ["reply payload bytes: recorded b'"]),
    "conclave error": (_conclave_error_changed, TAMPERED,
                       ["reply payload at conclave: recorded 'ENCLAVE_EXCEPTION', replayed 'MAIL_DECRYPTION'"]),
    "mail handed out twice": (_mail_handed_out_twice, BOB_POLLS_AGAIN, ["reply payload at (whole payload)",
                                                                        "replayed None"]),
    "inconsistent state id": (_replies_swapped, ALICE_SPEAKS,
                              ["reply payload at mail.state_id (random)", "replayed as",
                               "reply payload at mail.sequence: recorded 0, replayed 1"]),
    "queued": (_nothing_queued, None, ["events.conclave.mail.accepted: event payload at queued: recorded []"]),
    "event dropped": (_event_dropped, None, ["(replay only) events.conclave.mail.taken: event: recorded <missing>",
                                            "the replay emitted an extra event"]),
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
async def test_tampered_recording_reports_the_difference(replay_into_fresh_conclave, name: str):
    tamper, position, fragments = TAMPERINGS[name]
    recording = tamper(Recording.load(RECORDING))

    report = await replay_into_fresh_conclave(recording)

    report.assert_reports(fragments, None if position is None else _driven(recording)[position])


async def test_a_replay_through_another_role_is_refused(connect_as):
    with pytest.raises(ValueError, match="replay it through a connection of that role"):
        await replay(Recording.load(RECORDING), await connect_as("conclave"), await connect_as("admin"),
                     CONCLAVE_NORMALISER)


# --- the recorder --------------------------------------------------------------------------------

async def test_a_live_recording_replays_green(fresh_conclave, replay_into_fresh_conclave, tmp_path: Path):
    recording = await fresh_conclave(record_conclave)

    _check_conclave_shape(recording)
    assert_dumps_and_loads(recording, tmp_path)
    committed = Recording.load(RECORDING)
    assert [e.request.data for e in _driven(recording)] == [e.request.data for e in _driven(committed)], \
        "fixed keys: every run sends the same bytes"

    report = await replay_into_fresh_conclave(recording)   # another bus, other enclaves with the same identity
    report.assert_green()
