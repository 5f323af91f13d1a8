"""components/aurae/observe.py on the session bus, through bus requests and feeds (the gRPC adapter
is tested elsewhere): Status, the daemon log to every watcher, a process's output replayed and
followed, unknown pids, and watchers that vanish."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from importlib import metadata

import orjson
import pytest

from bus import log, log_shipping
from bus.errors import BadRequest, NotFound
from bus.feeds import watch
from bus.requester import Requester
from components.aurae import output_store, subjects
from components.aurae.config import AuraeConfig
from components.aurae.observe import Observe
from components.aurae.runtime import Runtime
from tests.conftest import eventually

CONFIG = AuraeConfig(timeout_seconds=30.0, grace_seconds=0.5)
HOST = CONFIG.host


@pytest.fixture
async def observe(start_component) -> Observe:
    return await start_component(Observe, config=CONFIG)


@pytest.fixture
async def runtime(start_component) -> Runtime:
    return await start_component(Runtime, config=CONFIG)


@pytest.fixture
async def adapter(connect_as):
    return await connect_as("adapter")


def subprocess_request(pid: int, channel: str = "CHANNEL_STDOUT") -> dict:
    return {"channel_type": channel, "process_id": pid}


async def test_status_names_teebus_its_host_and_uptime(observe, adapter):
    reply = (await Requester(adapter).request(subjects.status(HOST), {"meta": {"name": "", "message": ""}})).payload
    assert reply["meta"]["name"] == f"teebus {metadata.version('teebus')}"
    assert re.fullmatch(rf"auraed-compatible teebus on {re.escape(HOST)}, up \d+ s", reply["meta"]["message"])


async def test_every_daemon_log_watcher_sees_every_line(observe, adapter, connect_as):
    burst = 300
    got: dict[int, list[int]] = {0: [], 1: []}

    async def read(index: int) -> None:
        async with contextlib.aclosing(watch(adapter, subjects.daemon_log(HOST), {"meta": {}})) as items:
            async for item in items:
                assert item["channel"] == "daemon" and item["timestamp"] > 1.6e18
                line = orjson.loads(item["line"])
                if line.get("component") == "observe-test":
                    got[index].append(line["n"])
                    if len(got[index]) == burst:
                        return

    readers = [asyncio.create_task(read(0)), asyncio.create_task(read(1))]
    await eventually(lambda: len(observe.feeds) == 2)
    log.configure("info", json=True, stream=io.StringIO())
    log_shipping.install(await connect_as("adapter"), "adapter")
    try:
        logger = log.get_logger("observe-test")
        for n in range(burst):
            logger.info("burst", n=n)
        await asyncio.wait_for(asyncio.gather(*readers), 15)
    finally:
        await log_shipping.uninstall()
        log.configure("warning", json=True)
    assert got[0] == got[1] == list(range(burst))
    await eventually(lambda: len(observe.feeds) == 0 and not observe._relays)


async def test_a_process_is_followed_live_and_joined_late_to_its_end(observe, runtime, adapter, connect_as):
    admin = await connect_as("admin")
    started: asyncio.Queue = asyncio.Queue()

    async def on_record(msg) -> None:
        if output_store.START in (msg.headers or {}):
            started.put_nowait(orjson.loads(msg.data))

    await admin.subscribe(subjects.output(HOST, "*", output_store.PROC), cb=on_record)
    await admin.flush()
    script = "for i in $(seq 1 20); do echo line$i; sleep 0.1; done; echo bye >&2"
    run = asyncio.create_task(Requester(adapter, timeout=30).request(
        subjects.run_executable(HOST), {"meta": {"name": "printer", "message": ""}, "command": f"sh -c '{script}'"}))
    record = await asyncio.wait_for(started.get(), 5)
    pid = record["pid"]

    async def lines(channel: str = "CHANNEL_STDOUT") -> list[str]:
        return [item["line"] async for item in watch(adapter, subjects.subprocess_stream(HOST),
                                                      subprocess_request(pid, channel))]

    early = asyncio.create_task(lines())
    await asyncio.sleep(1.0)                        # about half of it printed
    late = asyncio.create_task(lines())
    errors = asyncio.create_task(lines("CHANNEL_STDERR"))
    assert not late.done()
    expected = [f"line{i}" for i in range(1, 21)]
    assert await asyncio.wait_for(early, 10) == expected
    assert await asyncio.wait_for(late, 10) == expected
    assert await asyncio.wait_for(errors, 10) == ["bye"]
    assert (await run).payload["stdout"] == "".join(f"{line}\n" for line in expected)
    # once it ended, a watcher gets what was kept, then the end at once
    assert await asyncio.wait_for(lines(), 5) == expected
    await eventually(lambda: len(observe.feeds) == 0)


async def test_channel_type_may_be_a_number(observe, runtime, adapter):
    reply = await Requester(adapter, timeout=30).request(subjects.run_executable(HOST),
                                                         {"command": "sh -c 'echo to-err >&2'"})
    pid = reply.payload["proc"]["pid"]
    items = [item async for item in watch(adapter, subjects.subprocess_stream(HOST), subprocess_request(pid, 1))]
    assert [(item["channel"], item["line"]) for item in items] == [("stderr", "to-err")]


async def test_an_unknown_pid_is_not_found(observe, adapter):
    with pytest.raises(NotFound, match=r"no process 2147483647 was started by teebus's runtime"):
        async for _ in watch(adapter, subjects.subprocess_stream(HOST), subprocess_request(2**31 - 1)):
            pass


@pytest.mark.parametrize("payload, reason", [
    ({"channel_type": "CHANNEL_BOTH", "process_id": 5}, "channel_type must be CHANNEL_STDOUT or CHANNEL_STDERR"),
    ({"channel_type": "CHANNEL_STDOUT", "process_id": 0}, "process_id must be a process id"),
    ({"channel_type": "CHANNEL_STDOUT", "process_id": True}, "process_id must be a process id"),
])
async def test_a_bad_subprocess_request_is_a_400(observe, adapter, payload, reason):
    with pytest.raises(BadRequest, match=reason):
        async for _ in watch(adapter, subjects.subprocess_stream(HOST), payload):
            pass


async def test_a_watcher_that_disappears_is_dropped(observe, connect_as):
    gone = await connect_as("adapter")
    reading = asyncio.create_task(asyncio.wait_for(
        anext(watch(gone, subjects.daemon_log(HOST), {}, keepalive=0.1)), 30))
    await eventually(lambda: len(observe.feeds) == 1)
    await gone.close()                       # no goodbye: only its lapsed lease tells
    await eventually(lambda: len(observe.feeds) == 0 and not observe._relays, timeout=4)
    reading.cancel()
    await asyncio.gather(reading, return_exceptions=True)


async def test_a_subprocess_watcher_that_disappears_is_dropped(observe, runtime, adapter, connect_as):
    run = asyncio.create_task(Requester(adapter, timeout=30).request(
        subjects.run_executable(HOST), {"command": "sh -c 'echo first; sleep 2'"}))
    await eventually(lambda: bool(runtime.processes))
    pid = next(iter(runtime.processes))
    gone = await connect_as("adapter")
    items = watch(gone, subjects.subprocess_stream(HOST), subprocess_request(pid), keepalive=0.1)
    assert (await asyncio.wait_for(anext(items), 5))["line"] == "first"
    await gone.close()
    await eventually(lambda: len(observe.feeds) == 0, timeout=4)
    await run
