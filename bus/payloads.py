"""Payloads above the server's max_payload travel through the JetStream Object Store.

The sender stores the body under a fresh name and sends an empty message whose `Teebus-Payload-Ref`
header names the object; the receiver fetches it and deletes it. Objects nobody collects expire
after `TTL_SECONDS`. Every request and reply in teebus goes through `pack`/`unpack`, so no caller
ever meets `MaxPayloadError`.
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.nuid import NUID
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from bus import headers, log
from bus.errors import TooLarge, Unavailable

BUCKET = "teebus_payloads"
TTL_SECONDS = 3600
MAX_BYTES = 256 * 1024 * 1024          # the largest single payload teebus carries
STORE_BYTES = 4 * 1024 * 1024 * 1024   # the bucket's total bound
HEADROOM = 16 * 1024                   # room kept for headers inside max_payload

# What a NATS user needs to publish to put and get payloads here: every role's permissions take
# this one list (bus/roles.py, and any dynamic user a system adds through bus/users.py).
PUBLISH_PERMISSIONS = [
    "$JS.API.INFO", "$JS.API.STREAM.NAMES",
    f"$JS.API.STREAM.INFO.OBJ_{BUCKET}", f"$JS.API.STREAM.MSG.GET.OBJ_{BUCKET}",
    f"$JS.API.STREAM.PURGE.OBJ_{BUCKET}", f"$JS.API.DIRECT.GET.OBJ_{BUCKET}",
    f"$JS.API.DIRECT.GET.OBJ_{BUCKET}.>", f"$JS.API.CONSUMER.CREATE.OBJ_{BUCKET}",
    f"$JS.API.CONSUMER.CREATE.OBJ_{BUCKET}.>", f"$JS.API.CONSUMER.DELETE.OBJ_{BUCKET}.>",
    f"$O.{BUCKET}.>", "$JS.FC.>", f"$JS.ACK.OBJ_{BUCKET}.>",
]
SUBSCRIBE_PERMISSIONS = [f"$O.{BUCKET}.>"]

_log = log.get_logger("bus.payloads")


async def ensure_store(client: Client, replicas: int = 1) -> None:
    """Create the payload bucket if this deployment has none yet (idempotent)."""
    js = client.jetstream()
    try:
        await js.object_store(BUCKET)
    except BucketNotFoundError:
        await js.create_object_store(BUCKET, config=ObjectStoreConfig(
            description="teebus payloads above max_payload", ttl=TTL_SECONDS,
            max_bytes=STORE_BYTES, storage=StorageType.FILE, replicas=replicas))


class Payloads:
    """Packs and unpacks bodies for one connection."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._store: ObjectStore | None = None
        self._deletes: set[asyncio.Task] = set()
        self._names = NUID()

    def fits(self, size: int) -> bool:
        return size + HEADROOM <= self._client.max_payload

    async def _bucket(self) -> ObjectStore:
        if self._store is None:
            try:
                self._store = await self._client.jetstream().object_store(BUCKET)
            except BucketNotFoundError:
                raise Unavailable(f"the payload bucket {BUCKET} is missing: start teebus with "
                                  "`teebus up` (or run `ensure_store` once) before sending large payloads")
        return self._store

    async def pack(self, data: bytes, hdrs: dict[str, str]) -> bytes:
        """Return the body to send; large bodies go to the store and `hdrs` gets the reference."""
        if self.fits(len(data)):
            return data
        if len(data) > MAX_BYTES:
            raise TooLarge(f"payload of {len(data)} bytes exceeds the bus limit of {MAX_BYTES} bytes")
        name = self._names.next().decode()
        store = await self._bucket()
        await store.put(name, data)
        hdrs[headers.PAYLOAD_REF] = name
        _log.debug("payload offloaded", ref=name, size=len(data))
        return b""

    async def unpack(self, data: bytes, hdrs: dict[str, str] | None) -> bytes:
        """Return the real body of a received message, fetching and deleting a stored one."""
        name = hdrs.get(headers.PAYLOAD_REF) if hdrs else None
        if not name:
            return data
        store = await self._bucket()
        try:
            result = await store.get(name)
        except (ObjectNotFoundError, NotFoundError):
            raise Unavailable(f"payload {name} is gone from the object store (expired after "
                              f"{TTL_SECONDS}s or already consumed); send it again") from None
        task = asyncio.create_task(self._delete(store, name))
        self._deletes.add(task)
        task.add_done_callback(self._deletes.discard)
        return result.data or b""

    @staticmethod
    async def _delete(store: ObjectStore, name: str) -> None:
        try:
            await store.delete(name)
        except Exception as exc:  # the TTL collects it anyway
            _log.warning("payload delete failed", ref=name, error=str(exc))
