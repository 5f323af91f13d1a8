"""Log lines on the bus (bus/log_shipping.py): redacted, from any thread, only under one's own name."""

from __future__ import annotations

import asyncio
import io

import orjson

from bus import log, log_shipping
from tests.conftest import eventually


async def test_a_process_ships_its_redacted_lines_and_threads_lines_too(connect_as):
    watcher = await connect_as("admin")
    seen: list[dict] = []

    async def keep(msg) -> None:
        seen.append({"subject": msg.subject, **orjson.loads(msg.data)})

    await watcher.subscribe(log_shipping.SUBJECTS, cb=keep)
    await watcher.flush()
    log.configure("info", json=True, stream=io.StringIO())
    shipper = log_shipping.install(await connect_as("adapter"), "adapter")
    try:
        logger = log.get_logger("shipping-test")
        logger.info("hello from the loop", token="s3cret", n=1)
        await asyncio.to_thread(lambda: logger.warning("hello from a thread", n=2))
        await eventually(lambda: len([e for e in seen if e.get("component") == "shipping-test"]) == 2)
    finally:
        await log_shipping.uninstall()
        log.configure("warning", json=True)
    ours = [e for e in seen if e.get("component") == "shipping-test"]
    assert [e["event"] for e in ours] == ["hello from the loop", "hello from a thread"]
    assert all(e["subject"] == "$TEEBUS.log.adapter" for e in ours)
    assert ours[0]["token"] == log.REDACTED and "s3cret" not in str(seen)
    assert ours[1]["level"] == "warning" and shipper.dropped == 0
    assert log_shipping.current() is None


async def test_a_role_may_ship_only_under_its_own_name(connect_as):
    watcher = await connect_as("admin")
    seen: list[str] = []

    async def keep(msg) -> None:
        seen.append(msg.subject)

    await watcher.subscribe(log_shipping.SUBJECTS, cb=keep)
    await watcher.flush()
    impostor = await connect_as("adapter")
    await impostor.publish(log_shipping.subject("gateway"), b'{"event": "forged"}')
    await impostor.publish(log_shipping.subject("adapter"), b'{"event": "mine"}')
    await impostor.flush()
    await eventually(lambda: "$TEEBUS.log.adapter" in seen)
    assert "$TEEBUS.log.gateway" not in seen
