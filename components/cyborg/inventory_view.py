"""The conductor's view of every host's hardware: the `cyborg_devices` bucket followed in memory,
filtered, and read "since a revision".

The inventory's revision is the bucket's own: every write to `cyborg_devices` gets the next
sequence number of its stream, so revisions are monotonic, shared by every conductor replica,
and survive restarts with the bucket. A device record's revision is the sequence of its last
write; `since=R` returns the records written after R.

Records of the bucket (JSON), keyed by device uuid:

    live:       {"host", "entry": <hardware.to_seed_json>, "stale": bool, "history": [transition]}
    removed:    {"host", "device_type", "removed": true, "at": <epoch seconds>}   (a tombstone)
    "horizon":  {"revision": R}  tombstones written at or before R were forgotten

A removed device leaves a tombstone so `since` can report it; the conductor keeps at most
`removed_kept` of them, forgets the oldest beyond that and raises the horizon. A `since` below the
horizon cannot be answered (the removals it would need are forgotten): that is a 410 Gone, whose
message tells the client to re-read the whole inventory.

The view is fed by a KV watch, in the stream's order: once it has applied revision R it holds
every write up to R, so an answer "as of revision R" is consistent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from bus.errors import BusError
from components.cyborg.conductor_messages import HardwareQuery, host_key

HORIZON_KEY = "horizon"
GONE = 410


class Gone(BusError):
    """A `since` older than what the conductor remembers: re-read the whole inventory."""

    status = GONE


@dataclass
class Live:
    host: str
    device_type: str
    health: str
    stale: bool
    revision: int
    value: dict[str, Any]          # the record as stored
    reply: dict[str, Any]          # the entry as GET /hardware shows it


@dataclass
class Tombstone:
    host: str
    device_type: str
    revision: int
    value: dict[str, Any]


def reply_entry(value: dict[str, Any], revision: int) -> dict[str, Any]:
    """A live record as a `GET /hardware` entry: the seed's entry, with stale, revision and the
    health history under `teebus`."""
    entry = value["entry"]
    return {**entry, "teebus": {**entry["teebus"], "stale": value.get("stale", False), "revision": revision,
                                "history": value.get("history", [])}}


class InventoryView:
    """Every device record, removed devices and the horizon, by uuid; updated by `apply`."""

    def __init__(self) -> None:
        self.devices: dict[str, Live] = {}
        self.tombstones: dict[str, Tombstone] = {}
        self.by_host: dict[str, set[str]] = {}
        self.revision = 0               # the last bucket revision applied
        self.horizon = 0
        self._waiters: list[tuple[int, asyncio.Future]] = []

    # -- feeding -----------------------------------------------------------------------------

    def apply(self, key: str, value: dict[str, Any] | None, revision: int) -> None:
        """One write of the bucket (value None for a delete), in the stream's order."""
        if key == HORIZON_KEY:
            if value is not None:
                self.horizon = max(self.horizon, int(value.get("revision", 0)))
        else:
            self._forget(key)
            if value is not None and value.get("removed"):
                self.tombstones[key] = Tombstone(value["host"], value.get("device_type", ""), revision, value)
            elif value is not None:
                teebus = value["entry"]["teebus"]
                self.devices[key] = Live(value["host"], value["entry"]["acc_specs"]["device_type"],
                                         teebus.get("health", ""), bool(value.get("stale")), revision, value,
                                         reply_entry(value, revision))
                self.by_host.setdefault(host_key(value["host"]), set()).add(key)
        if revision > self.revision:
            self.revision = revision
            self._wake()

    def _forget(self, key: str) -> None:
        self.tombstones.pop(key, None)
        known = self.devices.pop(key, None)
        if known is not None:
            uuids = self.by_host.get(host_key(known.host))
            if uuids is not None:
                uuids.discard(key)
                if not uuids:
                    del self.by_host[host_key(known.host)]

    async def wait_for(self, revision: int, timeout: float) -> bool:
        """Wait until the view has applied `revision`; False if `timeout` passed first."""
        if self.revision >= revision:
            return True
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((revision, future))
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._waiters = [(r, f) for r, f in self._waiters if f is not future]

    def _wake(self) -> None:
        if not self._waiters:
            return
        for wanted, future in self._waiters:
            if wanted <= self.revision and not future.done():
                future.set_result(None)

    # -- reading -----------------------------------------------------------------------------

    def record(self, uuid: str) -> tuple[dict[str, Any], int] | None:
        """The stored value and revision of a device or its tombstone, as far as the view knows."""
        live = self.devices.get(uuid)
        if live is not None:
            return live.value, live.revision
        tombstone = self.tombstones.get(uuid)
        return (tombstone.value, tombstone.revision) if tombstone is not None else None

    def host_uuids(self, host: str) -> list[str]:
        return list(self.by_host.get(host_key(host), ()))

    def count(self, host: str) -> int:
        return len(self.by_host.get(host_key(host), ()))

    def query(self, query: HardwareQuery) -> dict[str, Any]:
        """The body of `GET /hardware`: `{"hardware": [...], "revision": R}`, and with `since`
        only what changed after it, plus `"removed": [{"uuid", "host", "revision"}]`. Filters
        apply to both: with a filter, `since` lists what changed and matches now (a device that
        changed out of the filter is not listed: follow the inventory unfiltered to see every
        change), and removals of the host and type asked for."""
        since = query.since
        if since is not None and since < self.horizon:
            raise Gone(f"since={since} is older than the oldest change this conductor remembers (revision "
                       f"{self.horizon}): re-read the whole inventory (GET /hardware without since) and follow "
                       "it from the revision that reply gives", details={"revision": self.revision,
                                                                          "horizon": self.horizon})
        if query.host is not None:
            candidates = (self.devices[uuid] for uuid in self.by_host.get(host_key(query.host), ()))
        else:
            candidates = iter(self.devices.values())
        kind, health = query.device_type, query.health
        entries = [live.reply for live in candidates
                   if (since is None or live.revision > since)
                   and (kind is None or live.device_type == kind)
                   and (health is None or live.health == health)]
        body: dict[str, Any] = {"hardware": entries, "revision": self.revision}
        if since is not None:
            wanted = host_key(query.host) if query.host is not None else None
            body["removed"] = [{"uuid": uuid, "host": stone.host, "revision": stone.revision}
                               for uuid, stone in self.tombstones.items()
                               if stone.revision > since
                               and (wanted is None or host_key(stone.host) == wanted)
                               and (kind is None or stone.device_type == kind)]
        return body

    def oldest_tombstones(self, keep: int) -> list[tuple[str, int]]:
        """The tombstones beyond the newest `keep`, oldest first: (uuid, revision)."""
        excess = len(self.tombstones) - keep
        if excess <= 0:
            return []
        ordered = sorted(self.tombstones.items(), key=lambda item: item[1].revision)
        return [(uuid, stone.revision) for uuid, stone in ordered[:excess]]
