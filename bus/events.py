"""State-change events: `events.<system>.<entity>.<what>`, JSON, kept in the EVENTS stream."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson
from nats.aio.client import Client
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from bus import headers, log, outages, streams

STREAM = "EVENTS"
SUBJECTS = "events.>"
MAX_AGE_SECONDS = 30 * 24 * 3600
MAX_BYTES = 1024 * 1024 * 1024
MAX_EVENT_BYTES = 64 * 1024


# What a read-only consumer of the stream (the observer role) may ask of JetStream.
READ_PERMISSIONS = [
    f"$JS.API.STREAM.INFO.{STREAM}", f"$JS.API.CONSUMER.CREATE.{STREAM}",
    f"$JS.API.CONSUMER.CREATE.{STREAM}.>", f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.>",
    f"$JS.API.CONSUMER.DELETE.{STREAM}.>", f"$JS.ACK.{STREAM}.>",
]


def subject(system: str, entity: str, what: str) -> str:
    return f"events.{system}.{entity}.{what}"


def publish_permission(system: str) -> str:
    """The subjects a system's components may publish events on (and no other system's)."""
    return f"events.{system}.>"


async def ensure_stream(client: Client, replicas: int = 1) -> None:
    """Create the EVENTS stream if missing, or scale it up to `replicas` (idempotent; replicas may
    race here safely: bus/streams.py). An existing one keeps its limits."""
    js = client.jetstream()
    config = StreamConfig(
        name=STREAM, subjects=[SUBJECTS], storage=StorageType.FILE, max_age=MAX_AGE_SECONDS,
        max_bytes=MAX_BYTES, max_msg_size=MAX_EVENT_BYTES, discard=DiscardPolicy.OLD,
        num_replicas=replicas, description="teebus state changes, replayable")
    await streams.ensure_replicas(client, STREAM, replicas, create=lambda: js.add_stream(config))


class Events:
    """Publishes one system's events; each publish waits for the stream's acknowledgement."""

    def __init__(self, client: Client, system: str) -> None:
        self._js = client.jetstream()
        self._system = system
        self._log = log.get_logger(f"{system}.events")

    async def publish(self, entity: str, what: str, data: dict[str, Any]) -> None:
        """Record that `entity` went through `what`; never put secrets in `data`."""
        body = {"system": self._system, "entity": entity, "what": what,
                "at": datetime.now(timezone.utc).isoformat(), **data}
        hdrs = {headers.CONTENT_TYPE: headers.JSON}
        request_id = log.current_request_id()
        if request_id:
            hdrs[headers.REQUEST_ID] = request_id
        encoded = orjson.dumps(body)
        await outages.patiently(lambda: self._js.publish(subject(self._system, entity, what), encoded, headers=hdrs))
        self._log.debug("event", subject=subject(self._system, entity, what))
