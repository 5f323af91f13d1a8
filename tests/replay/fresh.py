"""What every system's replay test needs besides its scenario: fresh deployments to replay into,
the recording's exchanges by who made them, and the checks a live recording must pass."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from bus.manifest import Manifest
from bus.testing import running_bus
from tests.replay.recorder import is_driven
from tests.replay.recording import Exchange, Message, Recording


def fresh_deployments(tmp_path: Path, manifests: Iterable[Manifest]) -> Callable:
    """`run(use)`: `use(bus, connect_as)` on a nats-server of its own, on a new data directory."""
    numbers = itertools.count()
    manifests = list(manifests)

    async def run(use: Callable) -> Any:
        async with running_bus(tmp_path / f"deployment-{next(numbers)}", manifests) as bus:
            async with bus.scope() as scope:
                return await use(bus, scope.connect)

    return run


def driven(recording: Recording, driver_inbox: str) -> list[Exchange]:
    """The exchanges the scenario's driver made (what a replay resends)."""
    return [exchange for exchange in recording.exchanges if is_driven(exchange, driver_inbox)]


def by_components(recording: Recording, driver_inbox: str) -> list[Exchange]:
    """The exchanges the components made of each other."""
    return [exchange for exchange in recording.exchanges if not is_driven(exchange, driver_inbox)]


def reply_of(exchange: Exchange) -> Message:
    assert exchange.reply is not None
    return exchange.reply


def assert_dumps_and_loads(recording: Recording, tmp_path: Path) -> None:
    """A live recording dumps, loads back unchanged, and stays small enough to review and commit."""
    path = tmp_path / "live.jsonl"
    recording.dump(path)
    assert Recording.load(path) == recording, "a dumped recording loads back unchanged"
    assert os.path.getsize(path) < 64 * 1024, "small enough to review and commit"
