"""Aurae's schedule (components/aurae/schedule.py, supervisor.py) over the bus, with real processes:
Enable keeps an executable running (a SIGKILLed one comes back with a new pid), Disable stops it
(SIGTERM, SIGKILL after the grace) and keeps it listed, Destroy removes it, a restarted component
runs the enabled ones again, a crash loop backs off within bounds, bad requests are clear 400/404/409.

Every test schedules on a host of its own (the bucket is shared by the session), with short backoffs,
and destroys what it enabled."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
import uuid
from typing import Any

import orjson
import pytest

from bus import procfs
from bus.errors import BadRequest, BusError, Conflict, NotFound
from bus.records import Records
from bus.requester import Requester
from components.aurae import subjects
from components.aurae.config import AuraeConfig
from components.aurae.schedule import BUCKET, Schedule, Scheduled, record_key
from components.aurae.supervisor import Backoff
from tests.conftest import eventually

TIMEOUT = 15.0   # above grace_seconds: Disable answers once the process is gone


def config(**overrides: Any) -> AuraeConfig:
    values = dict(host=f"sched-{uuid.uuid4().hex[:8]}", grace_seconds=1.0, restart_backoff_seconds=0.1,
                  restart_backoff_max_seconds=0.8)
    return AuraeConfig(**{**values, **overrides})


def executable(name: str, command: str = "sleep 300", comment: str = "") -> dict[str, Any]:
    return {"meta": {"name": name, "message": ""}, "command": command, "comment": comment}


def alive(pid: int | None) -> bool:
    """Running (a zombie waiting for its reaper does not count)."""
    return bool(pid) and bool(procfs.argv(pid))


def pid_in(message: str) -> int | None:
    found = re.search(r"\bpid (\d+)", message)
    return int(found.group(1)) if found else None


class Aurae:
    """The gRPC adapter's side of the bus for one host: the five schedule subjects."""

    def __init__(self, requester: Requester, host: str) -> None:
        self.requester, self.host = requester, host

    async def call(self, operation: str, payload: Any) -> dict[str, Any]:
        reply = await self.requester.request(subjects.schedule(operation, self.host), payload, timeout=TIMEOUT)
        return reply.payload

    async def enable(self, name: str, command: str = "sleep 300", comment: str = "") -> dict[str, Any]:
        return await self.call("enable", executable(name, command, comment))

    async def disable(self, name: str) -> dict[str, Any]:
        return await self.call("disable", executable(name, ""))

    async def destroy(self, name: str) -> dict[str, Any]:
        return await self.call("destroy", executable(name, ""))

    async def listed(self, which: str) -> dict[str, dict[str, Any]]:
        reply = await self.call(f"show_{which}", {"meta": {"name": "", "message": ""}})
        names = [e["meta"]["name"] for e in reply["Executables"]]
        assert names == sorted(names)
        return {e["meta"]["name"]: e for e in reply["Executables"]}

    async def pid(self, name: str) -> int | None:
        entry = (await self.listed("enabled")).get(name)
        return pid_in(entry["meta"]["message"]) if entry else None


class Events:
    """Every `events.aurae.schedule.>` message of one host."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.seen: list[tuple[str, dict[str, Any]]] = []

    async def start(self, client) -> "Events":
        async def keep(msg) -> None:
            body = orjson.loads(msg.data)
            if body.get("host") == self.host:
                self.seen.append((msg.subject.rsplit(".", 1)[1], body))
        await client.subscribe("events.aurae.schedule.>", cb=keep)
        await client.flush()
        return self

    def of(self, what: str, **match: Any) -> list[dict[str, Any]]:
        return [body for kind, body in self.seen if kind == what and all(body.get(k) == v for k, v in match.items())]


@pytest.fixture
async def events(connect_as) -> Any:
    async def factory(host: str) -> Events:
        return await Events(host).start(await connect_as("observer"))
    return factory


@pytest.fixture
async def aurae(connect_as, start_component):
    """Factory: a started Schedule for `cfg` and the adapter's requester for its host."""
    async def factory(cfg: AuraeConfig) -> tuple[Schedule, Aurae]:
        component = await start_component(Schedule, config=cfg)
        return component, Aurae(Requester(await connect_as("adapter")), cfg.host)
    return factory


async def new_pid(bus: Aurae, name: str, old: int | None) -> int:
    """Wait until `name` runs with a pid other than `old`, and return it."""
    seen: list[int | None] = []

    async def moved() -> bool:
        seen.append(await bus.pid(name))
        return seen[-1] is not None and seen[-1] != old and alive(seen[-1])
    await eventually(moved, timeout=5.0)
    return seen[-1]


# -- the life of one executable ---------------------------------------------------------------------

async def test_enable_kill_restart_disable_enable_destroy(aurae, events):
    cfg = config()
    component, bus = await aurae(cfg)
    seen = await events(cfg.host)
    name = "web"

    reply = await bus.enable(name, "sleep 300", comment="the web server")
    assert reply["meta"]["name"] == name and reply["meta"]["message"].startswith(f"enabled on {cfg.host}")
    first = pid_in(reply["meta"]["message"])
    assert alive(first) and procfs.argv(first) == [b"sleep", b"300"]
    entry = (await bus.listed("enabled"))[name]
    assert entry["command"] == "sleep 300" and entry["comment"] == "the web server"
    assert pid_in(entry["meta"]["message"]) == first and "restarts: 0" in entry["meta"]["message"]
    assert name not in await bus.listed("disabled")

    killed_at = time.monotonic()
    os.kill(first, signal.SIGKILL)
    second = await new_pid(bus, name, first)
    assert time.monotonic() - killed_at < 3.0            # the first restart waits 0.1 s
    assert "restarts: 1" in (await bus.listed("enabled"))[name]["meta"]["message"]
    record = (await component.records.get(record_key(cfg.host, name))).value
    assert record.enabled and record.pid == second and record.restarts == 1
    assert record.last_exit["signal"] == "SIGKILL" and record.last_exit["pid"] == first
    await eventually(lambda: seen.of("restarted", name=name, pid=second, restarts=1))
    assert seen.of("exited", name=name, pid=first, signal="SIGKILL")

    reply = await bus.disable(name)
    assert reply["meta"]["message"] == f"disabled; pid {second} stopped with SIGTERM"
    assert not alive(second)
    assert name not in await bus.listed("enabled")
    disabled = (await bus.listed("disabled"))[name]
    assert disabled["command"] == "sleep 300" and disabled["meta"]["message"].startswith("disabled")
    assert (await bus.disable(name))["meta"]["message"] == "already disabled"

    reply = await bus.enable(name, "sleep 300")
    third = pid_in(reply["meta"]["message"])
    assert alive(third) and third not in (first, second)
    assert name in await bus.listed("enabled") and name not in await bus.listed("disabled")

    reply = await bus.destroy(name)
    assert reply["meta"]["message"] == f"destroyed; pid {third} stopped with SIGTERM"
    assert not alive(third)
    assert name not in await bus.listed("enabled") and name not in await bus.listed("disabled")
    assert await component.records.find(record_key(cfg.host, name)) is None
    with pytest.raises(NotFound):
        await bus.destroy(name)

    kinds = [kind for kind, _ in seen.seen]
    for what in ("enabled", "exited", "restarted", "disabled", "destroyed"):
        assert what in kinds
    assert not any("sleep" in orjson.dumps(body).decode() or "the web server" in orjson.dumps(body).decode()
                   for _, body in seen.seen), "events carry no command or comment"


async def test_disable_kills_what_ignores_sigterm_after_the_grace(aurae):
    cfg = config(grace_seconds=0.5)
    _, bus = await aurae(cfg)
    name = "stubborn"
    pid = pid_in((await bus.enable(name, "sh -c 'trap \"\" TERM; sleep 300 & wait'"))["meta"]["message"])
    await eventually(lambda: len(group(pid)) == 2)       # sh and its sleep
    began = time.monotonic()
    reply = await bus.disable(name)
    assert reply["meta"]["message"] == f"disabled; pid {pid} ignored SIGTERM; killed with SIGKILL after 0.5s"
    assert time.monotonic() - began >= 0.5
    await eventually(lambda: group(pid) == [])           # the whole group, the forked sleep too
    await bus.destroy(name)


def group(pgid: int) -> list[int]:
    """Live members of a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            parts = stat[stat.rindex(")") + 2:].split()
            if int(parts[2]) == pgid and parts[0] not in ("Z", "X"):
                members.append(int(entry))
    return members


# -- enabling rules ---------------------------------------------------------------------------------

async def test_enable_again_same_command_or_another(aurae):
    cfg = config()
    _, bus = await aurae(cfg)
    name = "api"
    pid = pid_in((await bus.enable(name, "sleep 300"))["meta"]["message"])

    again = await bus.enable(name, "sleep 300", comment="new comment")
    assert again["meta"]["message"].startswith("already enabled") and pid_in(again["meta"]["message"]) == pid
    assert (await bus.listed("enabled"))[name]["comment"] == "new comment"

    with pytest.raises(Conflict, match="disable it first"):
        await bus.enable(name, "sleep 301")
    assert await bus.pid(name) == pid and alive(pid)

    await bus.disable(name)
    reply = await bus.enable(name, "sleep 301")           # a disabled one takes the new command
    new = pid_in(reply["meta"]["message"])
    assert procfs.argv(new) == [b"sleep", b"301"]
    assert (await bus.listed("enabled"))[name]["command"] == "sleep 301"
    await bus.destroy(name)
    assert not alive(new)


@pytest.mark.parametrize("payload, reason", [
    ("sleep 1", "must be an Executable object"),
    ({"command": "sleep 1"}, "meta is missing"),
    (executable(""), "meta.name is missing or empty"),
    ({"meta": {"name": 7}, "command": "sleep 1"}, "meta.name is missing or empty"),
    (executable("x" * 254), "254 characters long; at most 253"),
    (executable("two\nlines"), "control character"),
    (executable("ok", ""), "command is missing or empty"),
    (executable("ok", "   "), "command is missing or empty"),
    (executable("ok", "echo 'unbalanced"), "no closing quotation"),
    (executable("ok", "no-such-program-teebus --flag"), "'no-such-program-teebus': it is not found on PATH"),
    ({**executable("ok"), "comment": 5}, "comment must be text"),
])
async def test_enable_refuses_bad_requests_clearly(aurae, payload, reason):
    cfg = config()
    component, bus = await aurae(cfg)
    with pytest.raises(BadRequest, match=re.escape(reason)):
        await bus.call("enable", payload)
    assert await bus.listed("enabled") == {} and await bus.listed("disabled") == {}


async def test_enable_refuses_a_file_that_is_not_executable(aurae, tmp_path):
    cfg = config()
    _, bus = await aurae(cfg)
    plain = tmp_path / "not-a-program"
    plain.write_text("echo hi\n")
    plain.chmod(0o644)
    with pytest.raises(BadRequest, match=re.escape(f"cannot run '{plain}': it is not an executable file")):
        await bus.enable("ok", f"{plain} --flag")


async def test_unknown_names_are_404_and_odd_names_work(aurae):
    cfg = config()
    component, bus = await aurae(cfg)
    for operation in ("disable", "destroy"):
        with pytest.raises(NotFound, match="no executable named 'ghost'"):
            await bus.call(operation, executable("ghost", ""))
    with pytest.raises(BadRequest, match="meta.name"):
        await bus.call("disable", {"meta": {}})
    with pytest.raises(BadRequest):
        await bus.call("show_enabled", "everything")

    odd = ["web.server", "dienst/ünïcode ✓", "x" * 253, ".leading-dot", "a..b"]
    for name in odd:
        await bus.enable(name, "sleep 300")
    assert sorted(await bus.listed("enabled")) == sorted(odd)
    keys = {record_key(cfg.host, name) for name in odd}
    assert len(keys) == len(odd)
    for name in odd:
        await bus.destroy(name)
    assert await bus.listed("enabled") == {}


# -- restarts ---------------------------------------------------------------------------------------

async def test_a_restarted_component_runs_the_enabled_again_and_keeps_the_disabled(aurae):
    cfg = config()
    first, bus = await aurae(cfg)
    old = pid_in((await bus.enable("kept", "sleep 300"))["meta"]["message"])
    await bus.enable("parked", "sleep 300")
    await bus.disable("parked")

    await first.stop()
    assert not alive(old)                                  # teardown stops what it supervised...
    record = (await first.records.get(record_key(cfg.host, "kept"))).value
    assert record.enabled and record.pid is None          # ...and leaves it enabled
    assert record.last_exit["by"] == "teardown"

    second, bus = await aurae(cfg)
    new = await new_pid(bus, "kept", old)
    assert procfs.argv(new) == [b"sleep", b"300"]
    assert list(await bus.listed("disabled")) == ["parked"]
    assert list(await bus.listed("enabled")) == ["kept"]
    await bus.destroy("kept")
    await bus.destroy("parked")
    assert not alive(new)


async def test_a_process_left_by_a_crashed_run_is_stopped_before_running_again(aurae, connect_as):
    """A predecessor killed without its teardown left its child running: it must not run twice."""
    cfg = config()
    leftover = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        records = await Records.open(await connect_as("aurae"), BUCKET, kind=Scheduled)
        now = "2024-01-01T00:00:00.000+00:00"
        await records.create(record_key(cfg.host, "orphaned"), Scheduled(
            "orphaned", cfg.host, "sleep 300", "", True, now, pid=leftover.pid, started=now))
        _, bus = await aurae(cfg)
        assert leftover.wait(timeout=5) == -signal.SIGTERM
        new = await new_pid(bus, "orphaned", leftover.pid)
        assert alive(new)
        await bus.destroy("orphaned")
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


async def test_a_command_that_exits_at_once_backs_off_within_bounds(aurae, events):
    cfg = config(restart_backoff_seconds=0.05, restart_backoff_max_seconds=0.4)
    component, bus = await aurae(cfg)
    seen = await events(cfg.host)
    name = "flaky"
    await bus.enable(name, "sh -c 'exit 3'")
    await eventually(lambda: len(seen.of("exited", name=name)) >= 7, timeout=10)
    exits = seen.of("exited", name=name)
    delays = [e["restart_in"] for e in exits]
    assert delays[:5] == [0.05, 0.1, 0.2, 0.4, 0.4]       # doubling, then held at the maximum
    assert max(delays) == 0.4
    assert [e["restarts"] for e in exits[:5]] == [0, 1, 2, 3, 4]
    assert all(e["exit_code"] == 3 and e["message"].startswith("exited with code 3") for e in exits)
    record = (await component.records.get(record_key(cfg.host, name))).value
    assert record.restarts >= 6 and record.last_exit["exit_code"] == 3
    message = (await bus.listed("enabled"))[name]["meta"]["message"]
    assert re.search(r"restarting in [\d.]+s; last run exited with code 3|running as pid|starting", message)
    reply = await bus.destroy(name)
    assert reply["meta"]["message"].startswith("destroyed; ")
    count = len(seen.of("exited", name=name))
    await asyncio.sleep(0.6)
    assert len(seen.of("exited", name=name)) == count      # no more restarts once destroyed


def test_backoff_doubles_to_its_maximum_and_resets_after_a_long_run():
    backoff = Backoff(1.0, 8.0)
    assert [backoff.after(0.1) for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    assert backoff.after(79.0) == 8                       # below 10 x 8 s: still backing off
    assert backoff.after(80.0) == 1                       # a run of 10 x the delay: fresh start
    assert backoff.after(0.1) == 2


# -- output ---------------------------------------------------------------------------------------

async def test_output_of_supervised_processes_reaches_the_hook(aurae):
    cfg = config()
    component, bus = await aurae(cfg)
    lines: list[tuple[int, str, str]] = []

    async def hook(pid: int, channel: str, line: str, timestamp_ns: int) -> None:
        assert abs(timestamp_ns - time.time_ns()) < 10**10
        lines.append((pid, channel, line))
    component.on_output = hook
    reply = await bus.enable("chatty", "sh -c 'echo hello; echo oops >&2; exec sleep 300'")
    pid = pid_in(reply["meta"]["message"])
    await eventually(lambda: {(pid, "stdout", "hello"), (pid, "stderr", "oops")} <= set(lines))
    await bus.destroy("chatty")


async def test_requests_are_refused_by_type_not_by_crash(aurae):
    """A BusError subclass always, never a 500."""
    cfg = config()
    _, bus = await aurae(cfg)
    for payload in (None, [], {"meta": None}, {"meta": {"name": "n"}, "command": ["sleep", "1"]}):
        with pytest.raises(BusError) as raised:
            await bus.call("enable", payload)
        assert raised.value.status == 400
