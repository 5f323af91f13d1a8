"""A keep as the keep manager stores it (`enarx_keeps` bucket, one JSON record per keep).

The record is a frozen dataclass: a change is `dataclasses.replace(record, ...)` inside
`Records.mutate`, so every write is a compare-and-set of a whole, valid record. Its JSON form is
what `nats kv get enarx_keeps <kuuid>` shows; `messages.keep_cbor` renders it in serde's form.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any


class KeepState(StrEnum):
    """The seed's keep states; Shutdown and Error are final."""

    INDETERMINATE = "Indeterminate"
    READY = "Ready"
    RUNNING = "Running"
    SHUTDOWN = "Shutdown"
    ERROR = "Error"

    @property
    def live(self) -> bool:
        return self in (KeepState.INDETERMINATE, KeepState.READY, KeepState.RUNNING)

    @property
    def ended(self) -> bool:
        return not self.live


# What a keep loader may report about its own keep (the keep manager alone ends a keep otherwise).
REPORTABLE = (KeepState.READY, KeepState.RUNNING, KeepState.ERROR)


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass(frozen=True)
class KeepRecord:
    kuuid: str
    backend: str
    host: str                                   # EnarxConfig.host of the keep manager that started and owns it
    socket_path: str
    wasmldr_port: int
    state: KeepState = KeepState.INDETERMINATE
    wasmldr: dict[str, Any] | None = None       # {"wasmldr_ipaddr", "wasmldr_port"} once Ready
    human_readable_info: str | None = None
    certificate_as_pem: str | None = None
    pid: int | None = None
    error: str | None = None
    client: str | None = None                   # the address that asked for it (limits per client)
    created: str = dataclasses.field(default_factory=now)
    updated: str = dataclasses.field(default_factory=now)

    def to_dict(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> "KeepRecord":
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in value.items() if k in known}, "state": KeepState(value["state"])})

    def changed(self, **fields: Any) -> "KeepRecord":
        """This record with `fields` changed and `updated` set to now."""
        return dataclasses.replace(self, **fields, updated=now())

    def is_local_live(self, host: str) -> bool:
        return self.host == host and self.state.live
