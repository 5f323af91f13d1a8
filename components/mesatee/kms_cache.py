"""Opened key configs of the KMS, kept for repeated `Get`s of the same key.

Unsealing costs the hot path more than anything else the KMS does (~4 µs of ~40 per Get, measured
in bench/bus_overhead.py). The component process already holds the master key that opens every
record, so keeping opened configs beside it in memory exposes nothing new; at rest every key stays
sealed. An entry is valid only for the record revision it was opened from, so a changed or deleted
record is never answered from here; the map is bounded and forgets its oldest entries first.
"""

from __future__ import annotations

DEFAULT_MAX_ENTRIES = 10_000


class OpenedConfigs:
    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._entries: dict[str, tuple[int, dict[str, str]]] = {}  # key_id -> (revision, config)

    def get(self, key_id: str, revision: int) -> dict[str, str] | None:
        """The config opened from this revision of the record, if it is here."""
        entry = self._entries.get(key_id)
        return entry[1] if entry is not None and entry[0] == revision else None

    def put(self, key_id: str, revision: int, config: dict[str, str]) -> None:
        self._entries.pop(key_id, None)
        if len(self._entries) >= self._max:
            del self._entries[next(iter(self._entries))]  # the oldest (dicts keep insertion order)
        self._entries[key_id] = (revision, config)

    def forget(self, key_id: str) -> None:
        self._entries.pop(key_id, None)

    def __len__(self) -> int:
        return len(self._entries)
