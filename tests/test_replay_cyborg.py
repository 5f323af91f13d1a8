"""Replayable event tests for Cyborg's main flow (DESIGN.md "Events"): an agent at the conductor.

The committed recording (tests/recordings/cyborg_scenario.jsonl, see tests/replay/record_cyborg.py)
is replayed into a fresh deployment: a nats-server of its own on a new data directory (empty
buckets) and a conductor on it. The driver's requests (an agent's hello, reports and heartbeat, the
readers' hardware and agents queries) are resent, and every reply and every event is compared; the
conductor asks no other component anything, and a request it made would show as a difference.
Revisions are compared exactly (a fresh bucket numbers them alike). Tampered copies must not replay
green. A live recording replays green too.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest

from bus import headers as hdr
from components.cyborg import subjects
from components.cyborg.system import MANIFEST
from tests.replay.fresh import assert_dumps_and_loads, by_components, driven, fresh_deployments, reply_of
from tests.replay.harness import ReplayReport, replay
from tests.replay.record_cyborg import (CRYPTO, CYBORG_NORMALISER, DRIVER_INBOX, DRIVER_ROLE, GPU, HOST, OTHER,
                                        RECORDING, record_cyborg, running_conductor)
from tests.replay.recorder import DRIVER_INBOX as DRIVER_INBOX_FIELD
from tests.replay.recording import Exchange, Recording

pytestmark = pytest.mark.timeout(60)

HELLO, REPORT, HEARTBEAT = subjects.CONDUCTOR_HELLO, subjects.CONDUCTOR_REPORT, subjects.CONDUCTOR_HEARTBEAT
HARDWARE, AGENTS = subjects.CONDUCTOR_HARDWARE, subjects.CONDUCTOR_AGENTS
# The driver's exchanges, by position among them: (subject, error code).
DRIVEN = [
    (HELLO, None), (REPORT, None),                     # the agent registers; its full report
    (HARDWARE, None), (HARDWARE, None),                # every device; since the first one's revision
    (AGENTS, None), (HEARTBEAT, None),
    (REPORT, None),                                    # the GPU removed, the CRYPTO device Unhealthy
    (HELLO, None), (REPORT, "400"),                    # another host, reporting a transition that changes nothing
    (HARDWARE, None), (HARDWARE, None),                # the hardware after; since before the second report
]
(FIRST_HELLO, FULL_REPORT, EVERYTHING, SINCE_FIRST, AGENT_LIST, BEAT, SECOND_REPORT, OTHER_HELLO, FOREIGN_REPORT,
 AFTER, SINCE_BEFORE) = range(len(DRIVEN))
EVENTS = [f"events.cyborg.{name}" for name in (
    "agent.registered", "device.added", "device.added",                       # hello; the full report
    "device.removed", "device.changed", "device.unhealthy",                    # the second report
    "agent.registered")]                                                       # the other host
# The inventory's revisions: the GPU is written first (its uuid sorts first), then the CRYPTO device;
# the GPU's tombstone is 3 and the CRYPTO device's failed probe 4.
REVISIONS = {FULL_REPORT: 2, EVERYTHING: 2, SINCE_FIRST: 2, SECOND_REPORT: 4, OTHER_HELLO: 4, AFTER: 4,
             SINCE_BEFORE: 4}


@pytest.fixture
def fresh_cyborg(tmp_path: Path) -> Callable:
    """Factory: run `use(bus, connect_as)` on a nats-server of its own, on a new data directory."""
    return fresh_deployments(tmp_path, [MANIFEST])


@pytest.fixture
def replay_into_fresh_conductor(fresh_cyborg) -> Callable:
    """Factory: replay a recording into a conductor started just for it."""
    async def run(recording: Recording) -> ReplayReport:
        async def use(bus, connect_as) -> ReplayReport:
            async with running_conductor(bus, connect_as):
                return await replay(recording, await connect_as(DRIVER_ROLE), await connect_as("admin"),
                                    CYBORG_NORMALISER)
        return await fresh_cyborg(use)

    return run


def _driven(recording: Recording) -> list[Exchange]:
    return driven(recording, DRIVER_INBOX)


def _by_components(recording: Recording) -> list[Exchange]:
    return by_components(recording, DRIVER_INBOX)


_reply = reply_of


def _check_cyborg_shape(recording: Recording) -> None:
    """The recording holds exactly the Cyborg scenario: who asked what, the error codes, the events,
    the revisions, and the seed's bodies."""
    assert recording.meta[DRIVER_INBOX_FIELD] == DRIVER_INBOX
    driven = _driven(recording)
    assert all(e.reply is not None for e in recording.exchanges), "every request must be paired with its reply"
    assert [(e.request.subject, e.reply.error_code) for e in driven] == DRIVEN
    assert _by_components(recording) == [], "the conductor asks nobody anything"
    assert [event.subject for event in recording.events] == EVENTS
    assert recording.others == []
    driver_ids = {e.request.headers[hdr.REQUEST_ID] for e in driven}
    assert {event.headers.get(hdr.REQUEST_ID) for event in recording.events} <= driver_ids, \
        "every event follows from one of the driver's requests"
    assert {position: _reply(driven[position]).json_view()["revision"] for position in REVISIONS} == REVISIONS
    hello = driven[FIRST_HELLO].request.json_view()
    assert (hello["status"], hello["endpoint"], hello["host"]) == ("READY", "compute-whatever:1337", HOST)
    assert driven[FULL_REPORT].request.json_view()["added"] == [CRYPTO, GPU]
    assert (driven[OTHER_HELLO].request.json_view()["host"], driven[FOREIGN_REPORT].request.json_view()["host"]) == (
        OTHER, OTHER)
    assert "a transition changes the health" in _reply(driven[FOREIGN_REPORT]).headers[hdr.ERROR]


# --- the committed recording replays green -------------------------------------------------------

async def test_committed_recording_replays_green(replay_into_fresh_conductor):
    recording = Recording.load(RECORDING)
    _check_cyborg_shape(recording)  # guards against an empty or truncated recording "replaying green"

    report = await replay_into_fresh_conductor(recording)

    report.assert_green()
    assert (report.exchanges, report.component_exchanges_recorded, report.component_exchanges_replayed,
            report.events_recorded, report.events_replayed) == (len(DRIVEN), 0, 0, len(EVENTS), len(EVENTS))
    after = report.replies[AFTER].json_view()["hardware"]
    assert [(e["uuid"], e["teebus"]["health"]) for e in after] == [(CRYPTO["uuid"], "Unhealthy")]
    agents = report.replies[AGENT_LIST].json_view()["agents"]
    recorded_agents = _reply(_driven(recording)[AGENT_LIST]).json_view()["agents"]
    assert agents[0]["registered"] != recorded_agents[0]["registered"], "a fresh conductor registers anew"


# --- the harness fails when behaviour differs ----------------------------------------------------

def _error_code_changed(recording: Recording) -> Recording:
    exchange = _driven(recording)[FOREIGN_REPORT]
    return recording.with_reply(exchange, _reply(exchange).with_headers({hdr.ERROR_CODE: "404"}))


def _health_changed(recording: Recording) -> Recording:
    exchange = _driven(recording)[AFTER]
    payload = _reply(exchange).json_view()
    payload["hardware"][0]["teebus"]["health"] = "Healthy"
    return recording.with_reply(exchange, _reply(exchange).with_payload(payload))


def _event_dropped(recording: Recording) -> Recording:
    return replace(recording, events=[e for e in recording.events if e.subject != "events.cyborg.device.unhealthy"])


def _revision_changed(recording: Recording) -> Recording:
    """Revisions are not random: a conductor that numbered its inventory otherwise is caught."""
    exchange = _driven(recording)[SINCE_BEFORE]
    payload = _reply(exchange).json_view()
    payload["removed"][0]["revision"] = 2
    return recording.with_reply(exchange, _reply(exchange).with_payload(payload))


def _stale_device(recording: Recording) -> Recording:
    """A device recorded stale: the replayed conductor, whose agent holds a live lease, says it is not."""
    exchange = _driven(recording)[EVERYTHING]
    payload = _reply(exchange).json_view()
    payload["hardware"][1]["teebus"]["stale"] = True
    return recording.with_reply(exchange, _reply(exchange).with_payload(payload))


TAMPERINGS = {
    # name: (tamper, driven position it hits (None: elsewhere), expected report fragments)
    "error code": (_error_code_changed, FOREIGN_REPORT,
                   ["reply header Nats-Service-Error-Code", "recorded '404', replayed '400'"]),
    "health": (_health_changed, AFTER,
               ["reply payload at hardware.0.teebus.health", "recorded 'Healthy', replayed 'Unhealthy'"]),
    "event dropped": (_event_dropped, None,
                      ["events.cyborg.agent.registered: event subject: recorded 'events.cyborg.agent.registered', "
                       "replayed 'events.cyborg.device.unhealthy'",
                       "(replay only) events.cyborg.agent.registered: event: recorded <missing>",
                       "the replay emitted an extra event"]),
    "revision": (_revision_changed, SINCE_BEFORE, ["reply payload at removed.0.revision: recorded 2, replayed 3"]),
    "stale": (_stale_device, EVERYTHING, ["reply payload at hardware.1.teebus.stale: recorded True, replayed False"]),
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
async def test_tampered_recording_reports_the_difference(replay_into_fresh_conductor, name: str):
    tamper, position, fragments = TAMPERINGS[name]
    recording = tamper(Recording.load(RECORDING))

    report = await replay_into_fresh_conductor(recording)

    report.assert_reports(fragments, None if position is None else _driven(recording)[position])


async def test_a_replay_through_another_role_is_refused(connect_as):
    with pytest.raises(ValueError, match="replay it through a connection of that role"):
        await replay(Recording.load(RECORDING), await connect_as("cyborg"), await connect_as("admin"),
                     CYBORG_NORMALISER)


# --- the recorder --------------------------------------------------------------------------------

async def test_a_live_recording_replays_green(fresh_cyborg, replay_into_fresh_conductor, tmp_path: Path):
    recording = await fresh_cyborg(record_cyborg)

    _check_cyborg_shape(recording)
    assert_dumps_and_loads(recording, tmp_path)

    report = await replay_into_fresh_conductor(recording)   # another bus, another conductor
    report.assert_green()
