"""The KMS scenario: how it is driven, what in it is random, and how its recording is regenerated.

Regenerate tests/recordings/kms_scenario.jsonl (needs no running NATS: it embeds its own server):

    python -m tests.replay.record_kms [OUTPUT]

The scenario checks every outcome while recording, so a broken KMS cannot be recorded as "expected".
The file holds throw-away key material generated for the recording; nothing else uses it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Awaitable, Callable

from nats.aio.client import Client

from bus.component import Context
from bus.requester import Requester
from components.mesatee import subjects
from components.mesatee.config import MesateeConfig
from components.mesatee.kms import KmsComponent
from components.mesatee.system import MANIFEST
from tests.replay.normalise import Normaliser
from tests.replay import regenerate
from tests.replay.recorder import Recorder
from tests.replay.recording import Recording

RECORDING = Path(__file__).resolve().parent.parent / "recordings" / "kms_scenario.jsonl"
SCENARIO = "kms"

# Fresh on every run: ids, the generated key material, event timestamps (and request ids, by default).
KMS_NORMALISER = Normaliser(random_paths=("key_id", "config.key", "config.nonce", "config.ad", "at"))

Connect = Callable[[str], Awaitable[Client]]


async def drive_kms_scenario(requester: Requester) -> None:
    """Create, Create, Get #1, Delete #1, Get #1 (404), Get #2, Get without key_id (400)."""
    async def kms(operation: str, body: dict) -> dict:
        return (await requester.request(subjects.kms(operation), body)).payload

    first = await kms("Create", {"type": "Create"})
    second = await kms("Create", {"type": "Create"})
    fetched = await kms("Get", {"type": "Get", "key_id": first["key_id"]})
    assert fetched["config"] == first["config"], "Get must return the key Create made"
    deleted = await kms("Delete", {"type": "Delete", "key_id": first["key_id"]})
    assert deleted["config"] == first["config"], "Delete must return the deleted key"
    await regenerate.expect_error(404, kms("Get", {"type": "Get", "key_id": first["key_id"]}), "Get of a deleted key")
    fetched = await kms("Get", {"type": "Get", "key_id": second["key_id"]})
    assert fetched["config"] == second["config"], "the second key must survive the first one's deletion"
    await regenerate.expect_error(400, kms("Get", {"type": "Get"}), "Get without key_id")


async def record_kms(connect_as: Connect, component_dir: Path) -> Recording:
    """Run a fresh KMS (master key under `component_dir`) and record the scenario driven against it."""
    component = KmsComponent(Context(await connect_as("mesatee"), component_dir, MesateeConfig()))
    await component.start()
    try:
        driver = Requester(await connect_as("mesatee"))  # KMS subjects are internal: components only
        async with Recorder(await connect_as("admin"), SCENARIO,
                            meta={"recorded_with": "python -m tests.replay.record_kms"}) as recorder:
            await drive_kms_scenario(driver)
    finally:
        await component.stop()
    return recorder.recording


def main(argv: list[str]) -> int:
    return regenerate.main(argv, RECORDING, MANIFEST, lambda bus, connect_as, tmp: record_kms(connect_as, tmp / "kms"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
