"""Replayable event tests for Aurae's main flow (DESIGN.md "Events"): status, executables, a scheduled service.

The committed recording (tests/recordings/aurae_scenario.jsonl, see tests/replay/record_aurae.py)
is replayed into a fresh deployment: a nats-server of its own on a new data directory and the
runtime, observe and schedule components of the scenario's node on it. The driver's requests (what
the gRPC adapter sends) are resent, and every reply and every event is compared: what the commands
printed, their exit codes and statuses, names and messages exactly; pids, start times and the
uptime by shape (the normaliser's random fields and random parts of texts). What the runtime stores
in AURAE_OUTPUT (JetStream publications that carry no request id) is recorded, not compared.
Tampered copies must not replay green. A live recording replays green too. The scheduled process
ends with its replay (the scenario disables it).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest

from bus import headers as hdr, procfs
from components.aurae import subjects
from components.aurae.system import MANIFEST
from tests.replay.fresh import assert_dumps_and_loads, by_components, driven, fresh_deployments, reply_of
from tests.replay.harness import ReplayReport, replay
from tests.replay.record_aurae import (AURAE_NORMALISER, DRIVER_INBOX, DRIVER_ROLE, HOST, MISSING, MISSING_MESSAGE,
                                       QUOTED, QUOTED_STDOUT, RECORDING, SHELL, TICKER, pid_in,
                                       record_aurae, running_aurae)
from tests.replay.recorder import DRIVER_INBOX as DRIVER_INBOX_FIELD
from tests.replay.recording import Exchange, Recording

pytestmark = pytest.mark.timeout(60)

STATUS, RUN = subjects.status(HOST), subjects.run_executable(HOST)
ENABLE, DISABLE, DESTROY = (subjects.schedule(op, HOST) for op in ("enable", "disable", "destroy"))
SHOW_ENABLED, SHOW_DISABLED = subjects.schedule("show_enabled", HOST), subjects.schedule("show_disabled", HOST)
# The driver's exchanges, by position among them: (subject, error code).
DRIVEN = [
    (STATUS, None),
    (RUN, None), (RUN, None), (RUN, None),             # quoted printf; sh to both streams, exit 3; no such binary
    (ENABLE, None), (SHOW_ENABLED, None),              # the ticker runs
    (ENABLE, "400"),                                   # a program not on PATH
    (DISABLE, None), (SHOW_DISABLED, None),            # SIGTERM; listed as disabled
    (DESTROY, None), (SHOW_DISABLED, None),            # gone
]
(DAEMON, QUOTED_RUN, SHELL_RUN, MISSING_RUN, ENABLED, LISTED_ENABLED, REFUSED, DISABLED, LISTED_DISABLED, DESTROYED,
 LISTED_NOTHING) = range(len(DRIVEN))
EVENTS = [f"events.aurae.{what}" for what in (
    "process.ended", "process.ended",                  # the two runs that started (the missing binary never did)
    "schedule.enabled", "schedule.disabled", "schedule.destroyed")]
OUTPUT_PREFIX = subjects.output_filter().removesuffix(">")


@pytest.fixture
def fresh_aurae(tmp_path: Path) -> Callable:
    """Factory: run `use(bus, connect_as)` on a nats-server of its own, on a new data directory."""
    return fresh_deployments(tmp_path, [MANIFEST])


@pytest.fixture
def replay_into_fresh_aurae(fresh_aurae) -> Callable:
    """Factory: replay a recording into a node's components started just for it."""
    async def run(recording: Recording) -> ReplayReport:
        async def use(bus, connect_as) -> ReplayReport:
            async with running_aurae(bus, connect_as):
                return await replay(recording, await connect_as(DRIVER_ROLE), await connect_as("admin"),
                                    AURAE_NORMALISER)
        return await fresh_aurae(use)

    return run


def _driven(recording: Recording) -> list[Exchange]:
    return driven(recording, DRIVER_INBOX)


def _by_components(recording: Recording) -> list[Exchange]:
    return by_components(recording, DRIVER_INBOX)


_reply = reply_of


def _answer(recording: Recording, position: int) -> Any:
    return _reply(_driven(recording)[position]).json_view()


def _check_aurae_shape(recording: Recording) -> None:
    """The recording holds exactly the Aurae scenario: who asked what, the outcomes, the events, and
    one process throughout the ticker's life."""
    assert recording.meta[DRIVER_INBOX_FIELD] == DRIVER_INBOX
    assert all(e.reply is not None for e in recording.exchanges), "every request must be paired with its reply"
    driven = _driven(recording)
    assert [(e.request.subject, e.reply.error_code) for e in driven] == DRIVEN
    assert [e.request.json_view()["command"] for e in driven[QUOTED_RUN:MISSING_RUN + 1]] == [QUOTED, SHELL, MISSING]
    runs = [_answer(recording, at) for at in (QUOTED_RUN, SHELL_RUN, MISSING_RUN)]
    assert [(r["status"], r["exit_code"], r["stdout"], r["stderr"], r["meta"]["message"]) for r in runs] == [
        ("STATUS_COMPLETE", "0", QUOTED_STDOUT, "", "exited with code 0"),
        ("STATUS_COMPLETE", "3", "to stdout\n", "to stderr\n", "exited with code 3"),
        ("STATUS_ERROR", "", "", "", MISSING_MESSAGE)]
    assert runs[0]["proc"]["pid"] > 0 and runs[1]["proc"]["pid"] > 0 and runs[2]["proc"]["pid"] == 0
    pid = pid_in(_answer(recording, ENABLED)["meta"]["message"])
    assert pid and pid_in(_answer(recording, LISTED_ENABLED)["Executables"][0]["meta"]["message"]) == pid
    assert _answer(recording, DISABLED)["meta"]["message"] == f"disabled; pid {pid} stopped with SIGTERM"
    assert "not found on PATH" in _reply(driven[REFUSED]).headers[hdr.ERROR]
    assert _answer(recording, LISTED_NOTHING)["Executables"] == []
    assert [event.subject for event in recording.events] == EVENTS
    ended, scheduled = [e.json_view() for e in recording.events[:2]], [e.json_view() for e in recording.events[2:]]
    assert [(e["pid"], e["host"], e["kind"], e["status"], e["exit_code"], e["message"]) for e in ended] == [
        (runs[0]["proc"]["pid"], HOST, "executable", "STATUS_COMPLETE", "0", "exited with code 0"),
        (runs[1]["proc"]["pid"], HOST, "executable", "STATUS_COMPLETE", "3", "exited with code 3")]
    assert [(e["name"], e["host"], e["pid"]) for e in scheduled] == [(TICKER, HOST, pid), (TICKER, HOST, pid),
                                                                     (TICKER, HOST, None)]
    assert recording.others == []
    driver_ids = {e.request.headers[hdr.REQUEST_ID] for e in driven}
    assert {event.headers.get(hdr.REQUEST_ID) for event in recording.events} <= driver_ids, \
        "every event follows from one of the driver's requests"
    stored = _by_components(recording)
    assert stored and all(e.request.subject.startswith(OUTPUT_PREFIX) and hdr.REQUEST_ID not in e.request.headers
                          for e in stored), "the components ask nothing of each other; the runtime stores output"
    stdout = [e.request.json_view()["line"] for e in stored if e.request.subject.endswith(".stdout")
              and e.request.json_view() and "line" in e.request.json_view()]
    assert stdout == [QUOTED_STDOUT, "to stdout"], "every line printed is kept for GetSubProcessStream"


# --- the committed recording replays green -------------------------------------------------------

async def test_committed_recording_replays_green(replay_into_fresh_aurae):
    recording = Recording.load(RECORDING)
    _check_aurae_shape(recording)  # guards against an empty or truncated recording "replaying green"

    report = await replay_into_fresh_aurae(recording)

    report.assert_green()
    assert (report.exchanges, report.component_exchanges_recorded, report.component_exchanges_replayed,
            report.events_recorded, report.events_replayed) == (len(DRIVEN), 0, 0, len(EVENTS), len(EVENTS))
    _check_aurae_shape(report.replayed)
    recorded_pid = pid_in(_answer(recording, ENABLED)["meta"]["message"])
    replayed_pid = pid_in(_answer(report.replayed, ENABLED)["meta"]["message"])
    assert replayed_pid != recorded_pid or _answer(report.replayed, QUOTED_RUN)["proc"]["pid"] != \
        _answer(recording, QUOTED_RUN)["proc"]["pid"], "a fresh node runs fresh processes"
    assert not procfs.argv(replayed_pid), "the ticker ended with its replay"


# --- the harness fails when behaviour differs ----------------------------------------------------

def _with_answer(recording: Recording, position: int, change: Callable[[Any], None]) -> Recording:
    """A copy whose driven exchange at `position` was answered with its JSON changed by `change`."""
    exchange = _driven(recording)[position]
    payload = _reply(exchange).json_view()
    change(payload)
    return recording.with_reply(exchange, _reply(exchange).with_payload(payload))


def _set(path: str, value: Any) -> Callable[[Any], None]:
    def change(payload: Any) -> None:
        *parents, last = path.split(".")
        for key in parents:
            payload = payload[int(key)] if isinstance(payload, list) else payload[key]
        payload[last] = value
    return change


def _edit(path: str, old: str, new: str) -> Callable[[Any], None]:
    """Replace `old` by `new` in the text at `path`."""
    def change(payload: Any) -> None:
        *parents, last = path.split(".")
        for key in parents:
            payload = payload[int(key)] if isinstance(payload, list) else payload[key]
        assert old in payload[last], f"{old!r} is not in {payload[last]!r}"
        payload[last] = payload[last].replace(old, new)
    return change


def _error_code_changed(recording: Recording) -> Recording:
    exchange = _driven(recording)[REFUSED]
    return recording.with_reply(exchange, _reply(exchange).with_headers({hdr.ERROR_CODE: "404"}))


def _event_dropped(recording: Recording) -> Recording:
    return replace(recording, events=[e for e in recording.events if e.subject != "events.aurae.schedule.disabled"])


def _start_time_not_a_time(recording: Recording) -> Recording:
    def change(payload: Any) -> None:
        payload["meta"]["message"] = re.sub(r"since \S+;", "since yesterday;", payload["meta"]["message"])
    return _with_answer(recording, ENABLED, change)


def _pid_in_the_event(recording: Recording) -> Recording:
    events = [e.with_payload({**e.json_view(), "pid": 4242}) if e.subject.endswith(".destroyed") else e
              for e in recording.events]
    return replace(recording, events=events)


TAMPERINGS = {
    # name: (tamper, driven position it hits (None: elsewhere), expected report fragments)
    "stdout": (lambda r: _with_answer(r, QUOTED_RUN, _set("stdout", "two words|a quoted one|its|")), QUOTED_RUN,
               ["reply payload at stdout: recorded 'two words|a quoted one|its|', replayed 'two words|a \"quoted\""]),
    "exit code": (lambda r: _with_answer(r, SHELL_RUN, _set("exit_code", "4")), SHELL_RUN,
                  ["reply payload at exit_code: recorded '4', replayed '3'"]),
    "stderr": (lambda r: _with_answer(r, SHELL_RUN, _set("stderr", "")), SHELL_RUN,
               ["reply payload at stderr: recorded '', replayed 'to stderr\\n'"]),
    "status": (lambda r: _with_answer(r, MISSING_RUN, _set("status", "STATUS_COMPLETE")), MISSING_RUN,
               ["reply payload at status: recorded 'STATUS_COMPLETE', replayed 'STATUS_ERROR'"]),
    "name": (lambda r: _with_answer(r, SHELL_RUN, _set("meta.name", SHELL)), SHELL_RUN,
             ["reply payload at meta.name: recorded 'sh -c \\'echo", "replayed 'both-streams'"]),
    "a number outside the random parts": (
        lambda r: _with_answer(r, ENABLED, _edit("meta.message", "restarts: 0", "restarts: 1")), ENABLED,
        ["reply payload at meta.message: recorded 'enabled on aurae-replay-node; running as pid ",
         "; restarts: 1', replayed 'enabled on aurae-replay-node; running as pid "]),
    "signal": (lambda r: _with_answer(r, DISABLED, _edit("meta.message", "SIGTERM", "SIGKILL")), DISABLED,
               ["reply payload at meta.message: recorded 'disabled; pid ", "stopped with SIGKILL', replayed"]),
    "a random part's shape": (_start_time_not_a_time, ENABLED,
                              ["reply payload at meta.message (random part)",
                               "shape text of 9 chars became timestamp"]),
    "still listed": (lambda r: _with_answer(r, LISTED_NOTHING, _set("Executables", [{"meta": {"name": TICKER}}])),
                     LISTED_NOTHING, ["reply payload at Executables: recorded [{'meta': {'name': 'ticker'}}], "
                                      "replayed []"]),
    "error code": (_error_code_changed, REFUSED,
                   ["reply header Nats-Service-Error-Code", "recorded '404', replayed '400'"]),
    "event dropped": (_event_dropped, None,
                      ["events.aurae.schedule.destroyed: event subject: recorded 'events.aurae.schedule.destroyed', "
                       "replayed 'events.aurae.schedule.disabled'",
                       "(replay only) events.aurae.schedule.destroyed: event: recorded <missing>",
                       "the replay emitted an extra event"]),
    "a pid where none was": (_pid_in_the_event, None,
                             ["events.aurae.schedule.destroyed: event payload at pid (random): recorded 4242, "
                              "replayed <missing>"]),
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
async def test_tampered_recording_reports_the_difference(replay_into_fresh_aurae, name: str):
    tamper, position, fragments = TAMPERINGS[name]
    recording = tamper(Recording.load(RECORDING))

    report = await replay_into_fresh_aurae(recording)

    report.assert_reports(fragments, None if position is None else _driven(recording)[position])


async def test_a_replay_through_another_role_is_refused(connect_as):
    with pytest.raises(ValueError, match="replay it through a connection of that role"):
        await replay(Recording.load(RECORDING), await connect_as("aurae"), await connect_as("admin"),
                     AURAE_NORMALISER)


# --- the recorder --------------------------------------------------------------------------------

async def test_a_live_recording_replays_green(fresh_aurae, replay_into_fresh_aurae, tmp_path: Path):
    recording = await fresh_aurae(record_aurae)

    _check_aurae_shape(recording)
    assert_dumps_and_loads(recording, tmp_path)
    committed = Recording.load(RECORDING)
    assert [e.request.data for e in _driven(recording)] == [e.request.data for e in _driven(committed)], \
        "fixed commands: every run sends the same bytes"

    report = await replay_into_fresh_aurae(recording)   # another bus, another node
    report.assert_green()
