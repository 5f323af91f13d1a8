"""JetStream KV records with compare-and-set updates, so replicas never overwrite each other.

A bucket holds JSON values: plain dicts, or a record dataclass of the component's own (`kind`: any
class with `to_dict()` and a `from_dict()` classmethod), so a component works with typed values
and the bucket stays readable with `nats kv get`.

Reads that may be a few milliseconds behind another replica's write can use `lookup`, served from an
in-memory mirror that a KV watch keeps current (see `mirror`); writes always go to the bucket with the
revision they expect, so a stale mirror can never cause a lost update.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic, Protocol, TypeVar

import orjson
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from bus import outages, streams
from bus.kv_watch import KEYS_TIMEOUT, InitialValues
from bus.errors import Conflict, NotFound

_WRONG_LAST_SEQUENCE = (10071, 10164)
MAX_CAS_ATTEMPTS = 16


class Storable(Protocol):
    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> "Storable": ...


V = TypeVar("V")


@dataclass(frozen=True)
class Record(Generic[V]):
    key: str
    value: V
    revision: int


@dataclass(frozen=True)
class Change(Generic[V]):
    """What `mutate` did: the record as it was read and as it was written."""

    before: Record[V]
    after: Record[V]


def bucket_permissions(bucket: str) -> list[str]:
    """What the owner of `bucket` may publish: its JetStream API calls and its keys, nothing else."""
    return [*streams.permissions(f"KV_{bucket}"), f"$KV.{bucket}.>"]


async def open_bucket(client: Client, config: KeyValueConfig) -> KeyValue:
    """The KV bucket `config` names, created as it says when missing, with at least
    `config.replicas` copies either way: every bucket goes through the one replica rule of
    bus/streams.py (ReplicasRefused when the servers cannot keep that many). An existing bucket's
    other settings are its own."""
    js = client.jetstream()
    await streams.ensure_replicas(client, f"KV_{config.bucket}", config.replicas,
                                  create=lambda: js.create_key_value(config))
    return await js.key_value(config.bucket)


class Records(Generic[V]):
    """One bucket of JSON records; every write states the revision it expects."""

    def __init__(self, kv: KeyValue, name: str, kind: type | None = None) -> None:
        self._kv = kv
        self.name = name
        self._kind = kind
        self._mirror: dict[str, Record] | None = None
        self._tombstones: set[str] = set()   # deleted here, delete not yet seen by the watch
        self._follower: asyncio.Task | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        self._loaded = asyncio.Event()         # the mirror holds every record that existed at start

    @classmethod
    async def open(cls, client: Client, bucket: str, *, kind: type | None = None, description: str = "",
                   history: int = 1, max_value_size: int = 1024 * 1024, max_bytes: int = -1,
                   replicas: int = 1) -> "Records":
        """Bind to `bucket`, creating it (file storage, `replicas` copies) when this is the first
        replica to start, or scaling it up to `replicas` (bus/streams.py); values are `kind`
        instances when given, dicts otherwise."""
        kv = await open_bucket(client, KeyValueConfig(
            bucket=bucket, description=description, history=history, storage=StorageType.FILE,
            max_value_size=max_value_size, max_bytes=max_bytes, direct=True, replicas=replicas))
        return cls(kv, bucket, kind)

    def _load(self, data: bytes) -> V:
        value = orjson.loads(data)
        return self._kind.from_dict(value) if self._kind is not None else value

    @staticmethod
    def _dump(value: V) -> bytes:
        return orjson.dumps(value.to_dict() if hasattr(value, "to_dict") else value)

    async def get(self, key: str) -> Record[V]:
        try:
            entry = await outages.patiently(lambda: self._kv.get(key))
        except KeyNotFoundError:
            raise NotFound(f"{key} not found") from None
        return Record(key, self._load(entry.value), entry.revision)

    def mirrored_record(self, key: str) -> Record | None:
        """The mirror's copy of a record, without waiting (None when absent or not mirrored)."""
        return self._mirror.get(key) if self._mirror is not None else None

    async def lookup(self, key: str) -> Record:
        """Like `get`, from the mirror when there is one (falls back to the bucket on a miss)."""
        return self.mirrored_record(key) or await self.get(key)

    async def find(self, key: str) -> Record | None:
        try:
            return await self.get(key)
        except NotFound:
            return None

    async def create(self, key: str, value: V) -> Record[V]:
        """Store a new record; Conflict if the key already exists."""
        try:
            data = self._dump(value)
            revision = await outages.patiently(lambda: self._kv.create(key, data))
        except KeyWrongLastSequenceError:
            raise Conflict(f"{key} already exists") from None
        return self._remember(Record(key, value, revision))

    async def update(self, key: str, value: V, revision: int) -> Record[V]:
        """Replace a record only if it is still at `revision`; Conflict otherwise."""
        try:
            data = self._dump(value)
            new_revision = await outages.patiently(lambda: self._kv.update(key, data, last=revision))
        except KeyWrongLastSequenceError:
            raise Conflict(f"{key} changed concurrently (expected revision {revision})") from None
        return self._remember(Record(key, value, new_revision))

    async def delete(self, key: str, revision: int) -> None:
        """Delete a record only if it is still at `revision`; Conflict otherwise."""
        try:
            await outages.patiently(lambda: self._kv.delete(key, last=revision))
        except APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE:
                raise Conflict(f"{key} changed concurrently (expected revision {revision})") from None
            raise
        if self._mirror is not None:
            self._mirror.pop(key, None)
            self._tombstones.add(key)

    async def mutate(self, key: str, change: Callable[[V], Awaitable[V] | V], *,
                     attempts: int = MAX_CAS_ATTEMPTS) -> Change[V]:
        """Read-modify-write with compare-and-set, retried when another writer got there first.

        `change` gets the current value (a copy, for dicts) and returns the new one; returning the
        value unchanged writes nothing. The result holds the record before and after. Of N writers
        racing on one key, one wins each round: `attempts` should be at least N.
        """
        for _ in range(attempts):
            current = await self.get(key)
            new_value = change(dict(current.value) if isinstance(current.value, dict) else current.value)
            if isinstance(new_value, Awaitable):
                new_value = await new_value
            if new_value == current.value:
                return Change(current, current)
            try:
                return Change(current, await self.update(key, new_value, current.revision))
            except Conflict:
                continue
        raise Conflict(f"{key} is changing too fast: gave up after {attempts} attempts")

    async def keys(self) -> list[str]:
        """Every key the bucket holds (bus/kv_watch.py says why not nats-py's `keys()`)."""
        initial = await InitialValues.of(self._kv)
        if initial.empty:
            return []
        watcher = await self._kv.watchall(meta_only=True)
        keys: set[str] = set()
        try:
            async with asyncio.timeout(KEYS_TIMEOUT):
                async for entry in watcher:
                    if entry is None:
                        if await initial.ended_at_marker():
                            break
                        continue
                    if entry.operation in ("DEL", "PURGE"):
                        keys.discard(entry.key)
                    else:
                        keys.add(entry.key)
                    if initial.reached_by(entry):
                        break
        finally:
            await watcher.stop()
        return sorted(keys)

    async def mirror(self, limit: int = 100_000, timeout: float = 30.0) -> None:
        """Follow the bucket in memory so `lookup` costs no round trip; at most `limit` records.

        Returns once the records that existed at the start are in memory (or after `timeout`).
        """
        if self._mirror is not None:
            return
        self._mirror = {}
        initial = await InitialValues.of(self._kv)
        if initial.empty:
            self._loaded.set()
        self._watcher = await self._kv.watchall()
        self._follower = asyncio.create_task(self._follow(limit, initial))
        try:
            await asyncio.wait_for(self._loaded.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def mirrored(self) -> list[Record]:
        """Every record in the mirror (milliseconds behind other replicas' writes at most)."""
        if self._mirror is None:
            raise RuntimeError(f"{self.name} is not mirrored: call `mirror()` first")
        return list(self._mirror.values())

    async def close(self) -> None:
        if self._watcher is not None:
            await self._watcher.stop()
            self._watcher = None
        if self._follower is not None:
            self._follower.cancel()
            self._follower = None
        self._mirror = None

    async def _follow(self, limit: int, initial: InitialValues) -> None:
        async for entry in self._watcher:
            if entry is None:  # nats-py's end of the initial values: may come early (bus/kv_watch.py)
                if not self._loaded.is_set() and await initial.ended_at_marker():
                    self._loaded.set()
                continue
            if entry.operation in ("DEL", "PURGE"):
                self._mirror.pop(entry.key, None)
                self._tombstones.discard(entry.key)
            elif entry.key not in self._tombstones and (entry.key in self._mirror or len(self._mirror) < limit):
                self._remember(Record(entry.key, self._load(entry.value), entry.revision))
            if initial.reached_by(entry):
                self._loaded.set()

    def _remember(self, record: Record) -> Record:
        if self._mirror is not None:
            known = self._mirror.get(record.key)
            if known is None or known.revision < record.revision:
                self._mirror[record.key] = record
        return record
