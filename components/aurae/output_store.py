"""AURAE_OUTPUT: what every process the runtime started printed, kept for observe's
GetSubProcessStream, and the record that it was started here (so observe knows a pid, or says
NOT_FOUND).

Subjects (`subjects.output(host, pid, channel)`), per pid:
  ...<pid>.proc     the process record: JSON `{"pid", "host", "command", "kind", "cell", "started_ns"}`
                    with header `Aurae-Start`, later the same with `status`, `message`, `exit_code`,
                    `dropped`, `start_seq` and header `Aurae-End: <status>`.
  ...<pid>.stdout   the lines in the order printed, as LogItem JSON `{"channel", "line", "timestamp"}`
  ...<pid>.stderr   (ns): one per message, or under load several per message as JSON lines (`lines()`
                    splits them; components/aurae/output_writer.py says why); last, an end marker:
                    header `Aurae-End: STATUS_COMPLETE|STATUS_ERROR` (and `Aurae-Dropped: <lines>`
                    when lines were dropped), body as the record's end.
A pid comes back once the kernel reuses it. Each run's lines follow its start record in the
stream, so a reader starts after the start record's sequence (`ProcessRecord.start_seq`) and never
shows an earlier run's lines.

Bounds: per channel, the last `output_kept_bytes // LINE_BYTES` messages are kept
(`max_msgs_per_subject`, discard old: 65,536 with the default 8 MiB, i.e. the budget for single
lines averaging 128 bytes stored, JSON included; longer lines and batches keep more, which the
total bounds); the whole stream keeps `output_kept_bytes * STREAM_PROCESSES` bytes (512 MiB by
default), oldest first out; and everything `output_kept_seconds`. JetStream has no byte limit
per subject, hence the estimate. Once a process's record has aged out, observe no longer knows
its pid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from nats.aio.client import Client
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from bus import streams
from components.aurae import subjects
from components.aurae.config import AuraeConfig

PROC = "proc"                 # the third kind of subject beside the channels: the process record
CHANNELS = ("stdout", "stderr")
START = "Aurae-Start"
END = "Aurae-End"
DROPPED = "Aurae-Dropped"
LINE_BYTES = 128
STREAM_PROCESSES = 64
_STREAM_NOT_FOUND = 10059


def stream_config(config: AuraeConfig, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=subjects.OUTPUT_STREAM, subjects=[subjects.output_filter()], storage=StorageType.FILE,
        max_msgs_per_subject=max(64, config.output_kept_bytes // LINE_BYTES),
        max_bytes=config.output_kept_bytes * STREAM_PROCESSES, max_age=config.output_kept_seconds,
        discard=DiscardPolicy.OLD, num_replicas=replicas, allow_direct=True,
        description="Aurae: what the processes the runtime started printed, and their records")


async def ensure_stream(client: Client, config: AuraeConfig, replicas: int = 1) -> None:
    """Create the stream, or bring its limits to `config` (idempotent; replicas may race)."""
    await streams.ensure(client, stream_config(config, replicas))


@dataclass
class ProcessRecord:
    """A process the runtime started, as its `proc` subject keeps it."""

    pid: int
    host: str
    command: str
    kind: str                     # "executable" or "container"
    started_ns: int
    cell: str = ""                # the cell of a container
    ended: bool = False
    status: str = ""              # STATUS_COMPLETE / STATUS_ERROR once ended
    message: str = ""
    exit_code: str = ""
    dropped: int = 0              # lines not kept: the stream could not keep up
    start_seq: int = 0            # the stream sequence of the start record (0: unknown)

    def to_json(self) -> bytes:
        return orjson.dumps(self)        # orjson writes dataclasses natively, ~20x faster than asdict

    @classmethod
    def from_json(cls, data: bytes, seq: int) -> "ProcessRecord":
        fields = orjson.loads(data)
        known = {name: fields[name] for name in cls.__dataclass_fields__ if name in fields}
        record = cls(**known)
        if not record.start_seq:
            record.start_seq = seq          # the start record is its own start
        return record


def proc_subject(host: str, pid: int) -> str:
    return subjects.output(host, pid, PROC)


async def find(js: JetStreamContext, host: str, pid: int) -> ProcessRecord | None:
    """The latest run of `pid` on `host` the stream still knows, or None."""
    try:
        found = await js.get_msg(subjects.OUTPUT_STREAM, subject=proc_subject(host, pid), direct=True)
    except NotFoundError:
        return None
    except APIError as exc:
        if exc.err_code == _STREAM_NOT_FOUND:
            return None
        raise
    return ProcessRecord.from_json(found.data or b"{}", found.seq)


def lines(data: bytes) -> list[dict[str, Any]]:
    """The LogItems one stored message holds."""
    return [orjson.loads(line) for line in data.split(b"\n") if line]


def end_body(record: ProcessRecord) -> dict[str, Any]:
    """What an end marker says."""
    return {"status": record.status, "message": record.message, "exit_code": record.exit_code,
            "dropped": record.dropped}
