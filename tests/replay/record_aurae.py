"""The Aurae scenario: a node's daemon status, three executables run and a service scheduled, on the bus.

Regenerate tests/recordings/aurae_scenario.jsonl (needs no running NATS: it embeds its own server):

    python -m tests.replay.record_aurae [OUTPUT]

The driver speaks as the `adapter` role and sends what the gRPC adapter (adapters/unix/aurae.py)
sends for each call: the request proto as JSON (`to_payload`: proto field names, every field
present) on the subject components/aurae/subjects.py names for this node; its replies come to
`_INBOX.adapter.` and the recording names that prefix. The node is `aurae-replay-node` (a host of
its own: subjects and schedule records are per host, so nothing another test schedules interferes).

  observe.Status                         the daemon's name and a message with its uptime
  runtime.RunExecutable                  `printf` of quoted arguments (no shell: the command is split
                                         like a shell would); `sh -c '...'` printing to both streams
                                         and exiting 3; a binary that does not exist (STATUS_ERROR,
                                         pid 0, a message naming it)
  schedule.ScheduleExecutable.Enable     `ticker`, a loop printing a line a second for ten seconds
  schedule.Schedule.ShowEnabled          it runs (its pid, since when, no restarts)
  ScheduleExecutable.Enable              another name whose program is not on PATH: 400
  ScheduleExecutable.Disable             SIGTERM to its group; the answer once it is gone
  schedule.Schedule.ShowDisabled         listed, with how it was stopped
  ScheduleExecutable.Destroy             it was not running any more; gone
  schedule.Schedule.ShowDisabled         nothing left

Events: `events.aurae.process.ended` for each run that started (the missing binary never did), then
`events.aurae.schedule.enabled|disabled|destroyed`. What the runtime's processes print goes to
AURAE_OUTPUT for GetSubProcessStream: those JetStream publications carry no request id, so they are
recorded but not compared. The ticker lives ten seconds, far longer than Enable to Disable takes
even on a slow machine, so it never ends by itself within the scenario (no `exited`/`restarted`
events, whose number would depend on timing); should a run be interrupted, it ends by itself soon.

A fresh deployment is a nats-server of its own on a new data directory and the runtime, observe
and schedule components on it. What differs from run to run: pids (a run's `proc.pid`, the events'
`pid`; in texts, "pid 4242"), when a service started ("since <ISO time>"), the daemon's uptime ("up
0 s"), how long a process ran (`seconds`) and the events' `at`. The normaliser declares those fields
random (compared by shape) and those parts of texts (`random_text`, compared by shape); every other
character of every output, status and message is compared exactly. The commands print fixed text,
so their output needs no normalising. The scenario checks every outcome while recording, so a broken
component cannot be recorded as "expected".
"""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

from google.protobuf.message import Message as Proto
from nats.aio.client import Client

from adapters.unix.aurae import to_payload
from components.aurae.protos import meta_pb2, observe_pb2, runtime_pb2, schedule_pb2
from bus.component import Component, Context
from bus.requester import Requester
from bus.roles import ADAPTER, inbox_prefix
from bus.testing import TestBus
from components.aurae import subjects
from components.aurae.config import AuraeConfig
from components.aurae.observe import Observe
from components.aurae.runtime import Runtime
from components.aurae.schedule import Schedule
from components.aurae.system import MANIFEST
from tests.replay import regenerate
from tests.replay.normalise import Normaliser
from tests.replay.recording import Recording

RECORDING = Path(__file__).resolve().parent.parent / "recordings" / "aurae_scenario.jsonl"
SCENARIO = "aurae"
DRIVER_ROLE = ADAPTER
DRIVER_INBOX = f"{inbox_prefix(DRIVER_ROLE)}."

HOST = "aurae-replay-node"
# A short grace (Disable answers within 2 s even of a process that ignored SIGTERM) and a long first
# restart delay (nothing the scenario runs restarts within it).
CONFIG = AuraeConfig(host=HOST, timeout_seconds=30.0, grace_seconds=2.0, restart_backoff_seconds=5.0,
                     restart_backoff_max_seconds=10.0)
REQUEST_TIMEOUT = 20.0           # above the grace: Disable answers once the process is gone

QUOTED = "printf '%s|' 'two words' \"a \\\"quoted\\\" one\" it\\'s"
QUOTED_STDOUT = "two words|a \"quoted\" one|it's|"
SHELL = "sh -c 'echo \"to stdout\"; echo \"to stderr\" >&2; exit 3'"
MISSING = "/nonexistent/aurae-replay-binary --flag"
MISSING_MESSAGE = "cannot start '/nonexistent/aurae-replay-binary': No such file or directory"
TICKER = "ticker"
TICKER_COMMAND = "sh -c 'for i in 1 2 3 4 5 6 7 8 9 10; do echo \"tick $i\"; sleep 1; done'"
TICKER_COMMENT = "prints a line a second for ten seconds"
UNKNOWN = "ghost"
UNKNOWN_COMMAND = "aurae-replay-no-such-program --serve"

# Fresh on every run: pids, the events' `at`, how long a process ran (process.ended's `seconds`);
# inside texts, pids, a start time and the uptime.
AURAE_NORMALISER = Normaliser(
    random_paths=("proc.pid", "pid", "at", "seconds"),
    random_text=(
        ("meta.message", r"\bup (\d+) s\b"),                       # Status: the daemon's uptime
        ("meta.message", r"\bpid (\d+)\b"),                        # Enable, Disable: the service's pid
        ("meta.message", r"\bsince (\S+);"),                       # Enable: when it started
        ("Executables.*.meta.message", r"\bpid (\d+)\b"),          # ShowEnabled, ShowDisabled
        ("Executables.*.meta.message", r"\bsince (\S+);"),
        ("how", r"\bpid (\d+)\b"),                                 # the disabled event
    ),
)

Connect = Callable[[str], Awaitable[Client]]


# -- a fresh deployment -------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def running_aurae(bus: TestBus, connect_as: Connect) -> AsyncIterator[list[Component]]:
    """The runtime, observe and schedule components of the scenario's node on `bus`, as the `aurae` role."""
    started: list[Component] = []
    try:
        for cls in (Runtime, Observe, Schedule):
            component = cls(Context(await connect_as(MANIFEST.role), bus.data_dir, CONFIG, nats_url=bus.url))
            await component.start()
            started.append(component)
        yield started
    finally:
        for component in reversed(started):
            await component.stop()


# -- the scenario -------------------------------------------------------------------------------------

def _check(condition: bool, step: str, value: Any) -> None:
    if not condition:
        raise AssertionError(f"{step}: unexpected {value!r}")


def executable(command: str, name: str = "", comment: str = "") -> runtime_pb2.Executable:
    return runtime_pb2.Executable(meta=meta_pb2.AuraeMeta(name=name), command=command, comment=comment)


def pid_in(text: str) -> int | None:
    found = re.search(r"\bpid (\d+)\b", text)
    return int(found.group(1)) if found else None


async def drive_aurae_scenario(driver: Requester) -> None:
    """Status; three RunExecutables; a service's Enable, ShowEnabled, a refused Enable, Disable,
    ShowDisabled, Destroy and an empty ShowDisabled."""
    async def call(subject: str, request: Proto) -> Any:
        return (await driver.request(subject, to_payload(request), timeout=REQUEST_TIMEOUT)).payload

    def schedule(operation: str) -> str:
        return subjects.schedule(operation, HOST)

    status = await call(subjects.status(HOST), observe_pb2.StatusRequest())
    _check(status["meta"]["name"].startswith("teebus ")
           and re.fullmatch(rf"auraed-compatible teebus on {HOST}, up \d+ s", status["meta"]["message"]),
           "Status", status)

    quoted = await call(subjects.run_executable(HOST), executable(QUOTED))
    _check((quoted["status"], quoted["exit_code"], quoted["stdout"], quoted["stderr"], quoted["meta"])
           == ("STATUS_COMPLETE", "0", QUOTED_STDOUT, "", {"name": QUOTED, "message": "exited with code 0"})
           and quoted["proc"]["pid"] > 0, "a quoted command", quoted)
    shell = await call(subjects.run_executable(HOST), executable(SHELL, name="both-streams"))
    _check((shell["status"], shell["exit_code"], shell["stdout"], shell["stderr"], shell["meta"])
           == ("STATUS_COMPLETE", "3", "to stdout\n", "to stderr\n",
               {"name": "both-streams", "message": "exited with code 3"}) and shell["proc"]["pid"] > 0,
           "a shell printing to both streams", shell)
    missing = await call(subjects.run_executable(HOST), executable(MISSING))
    _check(missing == {"meta": {"name": MISSING, "message": MISSING_MESSAGE}, "proc": {"pid": 0},
                       "status": "STATUS_ERROR", "stdout": "", "stderr": "", "exit_code": ""},
           "a binary that does not exist", missing)

    enabled = await call(schedule("enable"), executable(TICKER_COMMAND, TICKER, TICKER_COMMENT))
    message = enabled["meta"]["message"]
    _check(enabled["meta"]["name"] == TICKER and re.fullmatch(
        rf"enabled on {HOST}; running as pid \d+ since \S+; restarts: 0", message), "Enable", enabled)
    pid = pid_in(message)
    listed = await call(schedule("show_enabled"), schedule_pb2.ShowEnabledRequest())
    _check(listed["meta"] == {"name": HOST, "message": f"1 enabled on {HOST}"}
           and [(e["meta"]["name"], e["command"], e["comment"], pid_in(e["meta"]["message"]))
                for e in listed["Executables"]] == [(TICKER, TICKER_COMMAND, TICKER_COMMENT, pid)]
           and listed["Executables"][0]["meta"]["message"] == message.split("; ", 1)[1],
           "ShowEnabled", listed)
    await regenerate.expect_error(400, call(schedule("enable"), executable(UNKNOWN_COMMAND, UNKNOWN)),
                                  "Enable of a program not on PATH")

    disabled = await call(schedule("disable"), executable("", TICKER))
    _check(disabled["meta"] == {"name": TICKER, "message": f"disabled; pid {pid} stopped with SIGTERM"},
           "Disable", disabled)
    listed = await call(schedule("show_disabled"), schedule_pb2.ShowDisabledRequest())
    _check(listed["meta"] == {"name": HOST, "message": f"1 disabled on {HOST}"}
           and listed["Executables"] == [{"meta": {"name": TICKER, "message": f"disabled; pid {pid} stopped with "
                                                   "SIGTERM"}, "command": TICKER_COMMAND, "comment": TICKER_COMMENT}],
           "ShowDisabled", listed)
    destroyed = await call(schedule("destroy"), executable("", TICKER))
    _check(destroyed["meta"] == {"name": TICKER, "message": "destroyed; it was not running"}, "Destroy", destroyed)
    listed = await call(schedule("show_disabled"), schedule_pb2.ShowDisabledRequest())
    _check(listed == {"meta": {"name": HOST, "message": f"0 disabled on {HOST}"}, "Executables": []},
           "ShowDisabled after Destroy", listed)


async def record_aurae(bus: TestBus, connect_as: Connect) -> Recording:
    """Run the scenario's node on `bus` and record the scenario driven against it."""
    async with running_aurae(bus, connect_as):
        return await regenerate.record_driven(connect_as, SCENARIO, DRIVER_ROLE, drive_aurae_scenario)


def main(argv: list[str]) -> int:
    return regenerate.main(argv, RECORDING, MANIFEST, lambda bus, connect_as, tmp: record_aurae(bus, connect_as))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
