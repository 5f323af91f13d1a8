"""Where the initial values of a KV watch end, without trusting nats-py's end marker.

nats-py's watcher puts a None in its stream of entries when it thinks the values the bucket held
at the start have all arrived. Under concurrent writes, and on a cluster, that marker can come
early (nats.py#842; the fix, PR #995, is not released): `KeyValue.keys()` then returns a partial
list (2 in 100 calls on a 3-node cluster, with 50 keys) and a mirror built on the marker misses
records. So we note the bucket's last sequence when a watch begins: the initial values are done
once an entry at or past it arrived. nats-py's marker is believed only when that message is gone
(the bucket was empty, or it aged out), which no later entry could tell us.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js.kv import KeyValue

KEYS_TIMEOUT = 30.0


@dataclass(frozen=True)
class InitialValues:
    """The bucket's last sequence when a watch began."""

    kv: KeyValue
    last: int

    @classmethod
    async def of(cls, kv: KeyValue) -> "InitialValues":
        """Take this before the watch starts: whatever it delivers up to here was there before."""
        return cls(kv, (await kv.status()).stream_info.state.last_seq)

    @property
    def empty(self) -> bool:
        return self.last == 0

    def reached_by(self, entry: KeyValue.Entry) -> bool:
        return entry.revision >= self.last

    async def ended_at_marker(self) -> bool:
        """At nats-py's marker: done only if the last message can no longer arrive."""
        if self.empty:
            return True
        state = (await self.kv.status()).stream_info.state
        return state.messages == 0 or state.first_seq > self.last
