"""JetStream KV records with compare-and-set updates, so replicas never overwrite each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import orjson
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (APIError, BucketNotFoundError, KeyNotFoundError,
                            KeyWrongLastSequenceError, NoKeysError)
from nats.js.kv import KeyValue

from bus.errors import Conflict, NotFound

_WRONG_LAST_SEQUENCE = (10071, 10164)
MAX_CAS_ATTEMPTS = 16


@dataclass(frozen=True)
class Record:
    key: str
    value: dict[str, Any]
    revision: int


class Records:
    """One bucket of JSON records; every write states the revision it expects."""

    def __init__(self, kv: KeyValue, name: str) -> None:
        self._kv = kv
        self.name = name

    @classmethod
    async def open(cls, client: Client, bucket: str, *, description: str = "", history: int = 1,
                   max_value_size: int = 1024 * 1024, max_bytes: int = -1) -> "Records":
        """Bind to `bucket`, creating it (file storage) when this is the first replica to start."""
        js = client.jetstream()
        try:
            kv = await js.key_value(bucket)
        except BucketNotFoundError:
            kv = await js.create_key_value(KeyValueConfig(
                bucket=bucket, description=description, history=history, storage=StorageType.FILE,
                max_value_size=max_value_size, max_bytes=max_bytes))
        return cls(kv, bucket)

    async def get(self, key: str) -> Record:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            raise NotFound(f"{key} not found") from None
        return Record(key, orjson.loads(entry.value), entry.revision)

    async def find(self, key: str) -> Record | None:
        try:
            return await self.get(key)
        except NotFound:
            return None

    async def create(self, key: str, value: dict[str, Any]) -> Record:
        """Store a new record; Conflict if the key already exists."""
        try:
            revision = await self._kv.create(key, orjson.dumps(value))
        except KeyWrongLastSequenceError:
            raise Conflict(f"{key} already exists") from None
        return Record(key, value, revision)

    async def update(self, key: str, value: dict[str, Any], revision: int) -> Record:
        """Replace a record only if it is still at `revision`; Conflict otherwise."""
        try:
            new_revision = await self._kv.update(key, orjson.dumps(value), last=revision)
        except KeyWrongLastSequenceError:
            raise Conflict(f"{key} changed concurrently (expected revision {revision})") from None
        return Record(key, value, new_revision)

    async def delete(self, key: str, revision: int) -> None:
        """Delete a record only if it is still at `revision`; Conflict otherwise."""
        try:
            await self._kv.delete(key, last=revision)
        except APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE:
                raise Conflict(f"{key} changed concurrently (expected revision {revision})") from None
            raise

    async def mutate(self, key: str, change: Callable[[dict[str, Any]], Awaitable[dict[str, Any]] | dict[str, Any]]
                     ) -> Record:
        """Read-modify-write with compare-and-set, retried when another writer got there first."""
        for _ in range(MAX_CAS_ATTEMPTS):
            current = await self.get(key)
            new_value = change(dict(current.value))
            if isinstance(new_value, Awaitable):
                new_value = await new_value
            try:
                return await self.update(key, new_value, current.revision)
            except Conflict:
                continue
        raise Conflict(f"{key} is changing too fast: gave up after {MAX_CAS_ATTEMPTS} attempts")

    async def keys(self) -> list[str]:
        try:
            return await self._kv.keys()
        except NoKeysError:
            return []
