"""`python -m tests.replay.record_<scenario>`: record a scenario on a throw-away nats-server and
write it where its test reads it. Each scenario module gives its manifest and a `record` function;
this one place sets up the bus as the test session does (bus/testing.py)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Awaitable, Callable

from bus import errors, log
from bus.manifest import Manifest
from bus.requester import Requester
from bus.roles import ADMIN, inbox_prefix
from bus.testing import TestBus, running_bus
from tests.replay.recorder import Recorder
from tests.replay.recording import Recording

async def expect_error(status: int, pending: Awaitable[object], step: str) -> None:
    """The step must fail with `status`; anything else means a component misbehaves: a scenario
    refuses to record it."""
    try:
        result = await pending
    except errors.BusError as exc:
        if exc.status != status:
            raise AssertionError(f"{step}: expected status {status}, got {exc!r}") from None
        return
    raise AssertionError(f"{step}: expected status {status}, got a reply {result!r}")


async def record_driven(connect_as: Callable, scenario: str, driver_role: str,
                        drive: Callable[[Requester], Awaitable[None]]) -> Recording:
    """Record `drive` run through a connection of `driver_role`: the recording names that role's
    inbox prefix, so a replay resends the driver's requests and compares the components' own."""
    driver = Requester(await connect_as(driver_role))
    async with Recorder(await connect_as(ADMIN), scenario, driver_inbox=f"{inbox_prefix(driver_role)}.",
                        meta={"recorded_with": f"python -m tests.replay.record_{scenario}"}) as recorder:
        await drive(driver)
    return recorder.recording


# record(bus, connect_as, scratch directory) -> the recording of one run of the scenario
Record = Callable[[TestBus, Callable, Path], Awaitable[Recording]]


async def record_on_a_fresh_bus(manifest: Manifest, record: Record) -> Recording:
    with tempfile.TemporaryDirectory(prefix="teebus-record-") as tmp:
        async with running_bus(Path(tmp) / "data", [manifest]) as bus:
            async with bus.scope() as scope:
                return await record(bus, scope.connect, Path(tmp))


def main(argv: list[str], default_output: Path, manifest: Manifest, record: Record) -> int:
    """Record into `argv[0]` (default `default_output`) and say what was recorded."""
    output = Path(argv[0]) if argv else default_output
    log.configure("warning")
    recording = asyncio.run(record_on_a_fresh_bus(manifest, record))
    recording.dump(output)
    print(f"recorded {len(recording.exchanges)} exchanges and {len(recording.events)} events into {output}")
    return 0
