"""Aurae's `schedule.ScheduleExecutable` (Enable, Disable, Destroy) and `schedule.Schedule`
(ShowEnabled, ShowDisabled) for this host: executables kept running, restarted with backoff.

The October 2022 daemon ran an enabled command once, synchronously, and never served `Schedule`;
here an enabled executable is supervised (components/aurae/supervisor.py) until it is disabled or
destroyed, and both lists are served.

Choices, where Aurae said nothing:
- Enable of a new name registers it, starts it and answers once it has a pid (meta.message says
  which). Enable of an enabled name with the same command is a success that changes nothing but
  the comment; with another command it is a 409 (disable it first: a running service is not
  swapped under its users by a typo). Enable of a *disabled* name enables it again with the
  command and comment given, so Disable + Enable is how a command is changed.
- The command must split (process.split_command) and its program must be found (on PATH, or an
  executable file): a 400 now beats a crash loop later. After that, failing to start is the
  supervisor's business: it retries with backoff and never gives up (meta.message tells).
- Disable stops the process (SIGTERM to its group, SIGKILL after `grace_seconds`) and answers when
  it is gone; a caller's request timeout must allow for the grace. Disable of a disabled
  executable is a success that does nothing. Destroy disables first (so a crash halfway leaves it
  listed as disabled, never running unlisted), then deletes it.
- meta.name: 1 to 253 characters, no control characters. Lists are sorted by name; each entry's
  meta.message says its state, e.g. "running as pid 4242 since ...; restarts: 0".
- One schedule component per host: it runs what is enabled for `config.host`. (A second replica
  for the same host would run every service twice; hosts scale out, replicas do not.)

State: bucket `aurae_schedule`, key `<host token>.<name>` (names outside `[A-Za-z0-9_-.]` are
base64url-encoded behind `=`), value `Scheduled`; every write is a compare-and-set. On start every
enabled record of this host runs again; a process a crashed predecessor left behind (its recorded
pid, still running the recorded command as a session leader) is stopped first, so nothing runs
twice. On stop every process is stopped and its record stays enabled.

Events `events.aurae.schedule.<what>`: enabled, disabled, destroyed, exited, restarted. They carry
name, host, pids and exit facts, never the command or comment (a command line may hold a secret).
Output: `on_output` (process.OnOutput) gets every line of every supervised process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import shutil
import signal
import time
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from typing import Any, AsyncIterator

from bus import procfs
from bus.component import Component, Context, Endpoint, Incoming
from bus.errors import BadRequest, Conflict, NotFound
from bus.records import Record, Records
from components.aurae import subjects
from components.aurae.config import AuraeConfig
from components.aurae.process import OnOutput, split_command
from components.aurae.supervisor import Backoff, Ended, Reports, Stopped, Supervisor, describe

BUCKET = "aurae_schedule"
MAX_NAME = 253
MAX_COMMAND = 32 * 1024
MAX_COMMENT = 4 * 1024
FIRST_START_SECONDS = 5.0       # how long Enable waits for a pid before answering anyway
DELETE_ATTEMPTS = 8
TEARDOWN_NOTES_SECONDS = 5.0    # how long stopping waits to write "no pid now" into the records
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Scheduled:
    """One executable's record in `aurae_schedule`."""

    name: str
    host: str
    command: str
    comment: str
    enabled: bool
    updated: str                       # ISO 8601, UTC
    restarts: int = 0                  # since it was last enabled
    pid: int | None = None             # the running process, while there is one
    started: str | None = None         # when `pid` started
    last_exit: dict[str, Any] | None = None   # {"pid", "exit_code", "signal", "message", "at"[, "by"]}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> "Scheduled":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in known})

    def executable(self, message: str) -> dict[str, Any]:
        """The record as a runtime.Executable."""
        return {"meta": {"name": self.name, "message": message}, "command": self.command, "comment": self.comment}


def record_key(host: str, name: str) -> str:
    """`<host token>.<name>`, or `<host token>.=<base64url name>` for names a KV key cannot hold."""
    part = name if _PLAIN_KEY.fullmatch(name) else "=" + base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")
    return f"{subjects.host_token(host)}.{part}"


class Schedule(Component):
    system = subjects.SYSTEM
    name = "schedule"
    description = "Aurae schedule: executables kept running on this host, restarted with backoff"
    config: AuraeConfig
    records: Records

    def __init__(self, context: Context, on_output: OnOutput | None = None) -> None:
        super().__init__(context)
        self.on_output = on_output     # set before start to receive every supervised line
        self._supervisors: dict[str, Supervisor] = {}
        self._locks: dict[str, list[Any]] = {}   # key -> [lock, users]

    # -- lifecycle -------------------------------------------------------------------------------

    async def setup(self) -> None:
        self.host = self.config.host
        self._prefix = subjects.host_token(self.host) + "."
        self.records = await self.open_records(BUCKET, kind=Scheduled, description="Aurae scheduled executables",
                                               max_value_size=64 * 1024)
        await self.records.mirror()
        mine = self._mine()
        await asyncio.gather(*(self._reap_leftover(record) for record in mine if record.value.pid))
        for record in mine:
            if record.value.enabled:
                self._supervise(record.key, record.value)
        self.log.info("schedule resumed", host=self.host, enabled=sum(r.value.enabled for r in mine),
                      disabled=sum(not r.value.enabled for r in mine))

    async def teardown(self) -> None:
        keys = list(self._supervisors)
        stops = await asyncio.gather(*(self._stop(key) for key in keys))
        notes = asyncio.gather(*(self._record_stop(key, stopped, "teardown") for key, stopped in zip(keys, stops)),
                               return_exceptions=True)
        try:   # best effort, and bounded: the bus may be going away too
            await asyncio.wait_for(notes, TEARDOWN_NOTES_SECONDS)
        except asyncio.TimeoutError:
            self.log.warning("could not note every stop in the records; the next start runs them all the same")
        await self.records.close()

    def endpoints(self) -> list[Endpoint]:
        def at(operation: str) -> str:
            return subjects.schedule(operation, self.config.host)
        return [Endpoint("enable", at("enable"), self.enable),
                Endpoint("disable", at("disable"), self.disable),
                Endpoint("destroy", at("destroy"), self.destroy),
                Endpoint("show_enabled", at("show_enabled"), self.show_enabled, inline=True),
                Endpoint("show_disabled", at("show_disabled"), self.show_disabled, inline=True)]

    # -- ScheduleExecutable ----------------------------------------------------------------------

    async def enable(self, incoming: Incoming) -> dict[str, Any]:
        name, command, comment = _executable(incoming.payload)
        argv = _argv(command)
        key = record_key(self.host, name)
        async with self._exclusive(key):
            now = _now()
            existing = await self.records.find(key)
            if existing is None:
                record = await self.records.create(key, Scheduled(name, self.host, command, comment, True, now))
                again = False
            else:
                def enabled(current: Scheduled) -> Scheduled:
                    if not current.enabled:
                        return replace(current, enabled=True, command=command, comment=comment, updated=now,
                                       restarts=0, pid=None, started=None)
                    if current.command != command:
                        raise Conflict(f"{name!r} is enabled with another command; disable it first to change "
                                       "its command (ShowEnabled shows the one it runs)")
                    return current if current.comment == comment else replace(current, comment=comment, updated=now)
                change = await self.records.mutate(key, enabled)
                record, again = change.after, change.before.value.enabled
            supervisor = self._supervisors.get(key) or self._supervise(key, record.value, argv)
            await supervisor.first_start(FIRST_START_SECONDS)
            if not again:
                await self.events.publish("schedule", "enabled", {"name": name, "host": self.host,
                                                                  "pid": supervisor.pid})
                self.log.info("executable enabled", executable=name, pid=supervisor.pid)
            state = _state(supervisor)
            return _reply(name, f"already enabled; {state}" if again else f"enabled on {self.host}; {state}")

    async def disable(self, incoming: Incoming) -> dict[str, Any]:
        name = _name(incoming.payload)
        key = record_key(self.host, name)
        async with self._exclusive(key):
            await self._known(key, name)
            change = await self.records.mutate(
                key, lambda current: replace(current, enabled=False, updated=_now()) if current.enabled else current)
            if not change.before.value.enabled and key not in self._supervisors:
                return _reply(name, "already disabled")
            stopped = await self._stop(key)
            await self._record_stop(key, stopped, "disable")
            await self.events.publish("schedule", "disabled", {"name": name, "host": self.host, "pid": stopped.pid,
                                                               "how": stopped.how})
            self.log.info("executable disabled", executable=name, how=stopped.how)
            return _reply(name, f"disabled; {stopped.how}")

    async def destroy(self, incoming: Incoming) -> dict[str, Any]:
        name = _name(incoming.payload)
        key = record_key(self.host, name)
        async with self._exclusive(key):
            await self._known(key, name)
            await self.records.mutate(   # disabled first: a crash before the delete must not run it again
                key, lambda current: replace(current, enabled=False, updated=_now()) if current.enabled else current)
            stopped = await self._stop(key)
            await self._delete(key)
            await self.events.publish("schedule", "destroyed", {"name": name, "host": self.host, "pid": stopped.pid,
                                                                "how": stopped.how})
            self.log.info("executable destroyed", executable=name, how=stopped.how)
            return _reply(name, f"destroyed; {stopped.how}")

    # -- Schedule ------------------------------------------------------------------------------

    async def show_enabled(self, incoming: Incoming) -> dict[str, Any]:
        return self._listing(incoming.payload, enabled=True)

    async def show_disabled(self, incoming: Incoming) -> dict[str, Any]:
        return self._listing(incoming.payload, enabled=False)

    def _listing(self, payload: Any, *, enabled: bool) -> dict[str, Any]:
        if payload is not None and not isinstance(payload, dict):
            raise BadRequest("the request must be an object like {\"meta\": {}}")
        chosen = sorted((r for r in self._mine() if r.value.enabled == enabled), key=lambda r: r.value.name)
        listed = [r.value.executable(self._message(r)) for r in chosen]
        what = "enabled" if enabled else "disabled"
        return {"meta": {"name": self.host, "message": f"{len(listed)} {what} on {self.host}"},
                "Executables": listed}

    def _message(self, record: Record) -> str:
        value: Scheduled = record.value
        if not value.enabled:
            last = (value.last_exit or {}).get("message")
            return f"disabled; {last}" if last else "disabled"
        supervisor = self._supervisors.get(record.key)
        if supervisor is None:
            return "enabled; not supervised here (another schedule component for this host wrote it)"
        return _state(supervisor)

    # -- supervision -----------------------------------------------------------------------------

    def _supervise(self, key: str, value: Scheduled, argv: list[str] | None = None) -> Supervisor:
        supervisor = Supervisor(
            value.name, argv or split_command(value.command),
            backoff=Backoff(self.config.restart_backoff_seconds, self.config.restart_backoff_max_seconds),
            grace_seconds=self.config.grace_seconds, reports=self._reports(key, value.name),
            on_output=self._output, restarts=value.restarts)
        self._supervisors[key] = supervisor
        supervisor.start()
        return supervisor

    async def _output(self, pid: int, channel: str, line: str, timestamp_ns: int) -> None:
        if self.on_output is not None:
            await self.on_output(pid, channel, line, timestamp_ns)

    def _reports(self, key: str, name: str) -> Reports:
        async def started(pid: int, restarts: int) -> None:
            now = _now()
            await self.records.mutate(key, lambda current: replace(
                current, pid=pid, started=now, restarts=restarts, updated=now) if current.enabled else current)
            if restarts:
                await self.events.publish("schedule", "restarted", {"name": name, "host": self.host, "pid": pid,
                                                                    "restarts": restarts})

        async def ended(end: Ended) -> None:
            last = _exit_record(end.outcome.pid, end.outcome.exit_code, end.outcome.signal, describe(end))
            await self.records.mutate(key, lambda current: replace(
                current, pid=None, started=None, restarts=end.restarts, last_exit=last, updated=last["at"]))
            await self.events.publish("schedule", "exited", {"name": name, "host": self.host, **last,
                                                             "restarts": end.restarts, "restart_in": end.delay})

        return Reports(started, ended)

    async def _stop(self, key: str) -> Stopped:
        supervisor = self._supervisors.pop(key, None)
        if supervisor is None:
            return Stopped(None, "it was not running")
        return await supervisor.stop()

    async def _record_stop(self, key: str, stopped: Stopped, by: str) -> None:
        """The record says no process runs now, and who stopped the last one (disable, teardown, setup)."""
        last = {**_exit_record(stopped.pid, None, None, stopped.how), "by": by}
        await self.records.mutate(key, lambda current: replace(current, pid=None, started=None, last_exit=last,
                                                               updated=last["at"]))

    async def _reap_leftover(self, record: Record) -> None:
        """Stop the process a predecessor that died without its teardown left running (if it still
        runs the recorded command as a session leader: pids are reused), and forget its pid."""
        value: Scheduled = record.value
        pid = value.pid
        try:
            argv = [os.fsencode(arg) for arg in split_command(value.command)]
            leader = os.getpgid(pid) == pid
        except (ValueError, OSError):
            argv, leader = [], False
        how = "it was no longer running"
        if leader and procfs.argv(pid) == argv:
            how = await _stop_leftover(pid, self.config.grace_seconds)
            self.log.warning("stopped a scheduled process left behind by an earlier run", executable=value.name,
                             pid=pid, how=how)
        await self._record_stop(record.key, Stopped(pid, how), "setup")

    # -- helpers ---------------------------------------------------------------------------------

    def _mine(self) -> list[Record]:
        return [r for r in self.records.mirrored() if r.key.startswith(self._prefix)]

    async def _known(self, key: str, name: str) -> Record:
        record = await self.records.find(key)
        if record is None:
            raise NotFound(f"no executable named {name!r} is scheduled on {self.host}")
        return record

    async def _delete(self, key: str) -> None:
        for _ in range(DELETE_ATTEMPTS):
            record = await self.records.find(key)
            if record is None:
                return
            try:
                await self.records.delete(key, record.revision)
                return
            except Conflict:
                continue
        raise Conflict(f"{key} keeps changing; destroy it again")

    @contextlib.asynccontextmanager
    async def _exclusive(self, key: str) -> AsyncIterator[None]:
        """One request at a time per executable (KV compare-and-set guards against everyone else)."""
        entry = self._locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[key]


def _state(supervisor: Supervisor) -> str:
    """What a supervised executable is doing now, for meta.message."""
    restarts = f"restarts: {supervisor.restarts}"
    if supervisor.pid is not None:
        since = datetime.fromtimestamp(supervisor.started_at or time.time(), timezone.utc).isoformat(timespec="seconds")
        return f"running as pid {supervisor.pid} since {since}; {restarts}"
    if supervisor.last is not None and supervisor.next_start is not None:
        wait = max(0.0, supervisor.next_start - time.monotonic())
        return f"restarting in {wait:.3g}s; last run {describe(supervisor.last)}; {restarts}"
    return f"starting; {restarts}"


async def _stop_leftover(pid: int, grace: float) -> str:
    """SIGTERM a group we do not parent (so cannot reap), SIGKILL it after `grace`."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not procfs.argv(pid):   # gone, or a zombie its new parent has yet to reap
            return f"pid {pid} stopped with SIGTERM"
        await asyncio.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return f"pid {pid} ignored SIGTERM; killed with SIGKILL after {grace:g}s"


def _exit_record(pid: int | None, exit_code: int | None, signal_name: str | None, message: str) -> dict[str, Any]:
    return {"pid": pid, "exit_code": exit_code, "signal": signal_name, "message": message, "at": _now()}


def _reply(name: str, message: str) -> dict[str, Any]:
    return {"meta": {"name": name, "message": message}}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# -- request parsing -------------------------------------------------------------------------------

def _name(payload: Any) -> str:
    if not isinstance(payload, dict):
        raise BadRequest("the request must be an Executable object: {\"meta\": {\"name\": ...}, ...}")
    meta = payload.get("meta")
    if not isinstance(meta, dict):
        raise BadRequest("meta is missing: the executable is named by meta.name")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("meta.name is missing or empty: name the executable (1 to 253 characters)")
    if len(name) > MAX_NAME:
        raise BadRequest(f"meta.name is {len(name)} characters long; at most {MAX_NAME} are allowed")
    if _CONTROL.search(name):
        raise BadRequest("meta.name contains a control character (a newline, a tab, ...); use printable text")
    return name


def _executable(payload: Any) -> tuple[str, str, str]:
    """(name, command, comment) of an Enable request."""
    name = _name(payload)
    command, comment = payload.get("command"), payload.get("comment") or ""
    if not isinstance(command, str) or not command.strip():
        raise BadRequest(f"command is missing or empty: say what {name!r} runs, e.g. \"sleep 3600\"")
    if len(command) > MAX_COMMAND:
        raise BadRequest(f"command is {len(command)} characters long; at most {MAX_COMMAND} are allowed")
    if not isinstance(comment, str):
        raise BadRequest("comment must be text")
    if len(comment) > MAX_COMMENT:
        raise BadRequest(f"comment is {len(comment)} characters long; at most {MAX_COMMENT} are allowed")
    return name, command, comment


def _argv(command: str) -> list[str]:
    """The command split like a shell would, its program found: refused now rather than crash-looped."""
    try:
        argv = split_command(command)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if shutil.which(argv[0]) is None:
        where = "is not an executable file" if os.sep in argv[0] else "is not found on PATH"
        raise BadRequest(f"cannot run {argv[0]!r}: it {where}")
    return argv
