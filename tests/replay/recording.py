"""The recording format shared by the recorder and the replay harness (JSON lines).

A recording is a file of JSON lines, one entry per line, in the order the bus delivered them:

    {"kind": "meta", "format": "teebus-recording/1", "scenario": "kms", ...}
    {"kind": "exchange", "index": 0, "request": MESSAGE, "reply": MESSAGE | null}
    {"kind": "event", "index": 2, "message": MESSAGE}
    {"kind": "message", "index": 7, "message": MESSAGE}

One line holds a whole request/reply exchange (rather than one line per message) because the pair
is what a replay feeds and checks, and because a person reading the file sees each question next
to its answer. `event` lines are `events.>` publications (state changes); `message` lines are any
other publication without a reply subject. The first line (`meta`) names the format version.

A MESSAGE is

    {"index": 0, "subject": "...", "reply": "_INBOX..." | null, "headers": {...},
     "data": "<base64 of the exact payload bytes>", "json": <the payload decoded>}

`index` counts every recorded message in arrival order (monotonic across the file). `data` is the
truth: the bytes that travelled. `json` is a read-only view for people, present when the payload
is JSON; the loader refuses a file whose view disagrees with its bytes, so a hand edit of the view
alone cannot silently change nothing. To change a payload in code, use `Message.with_payload`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import orjson

from bus import headers as hdr

FORMAT = "teebus-recording/1"


class RecordingError(ValueError):
    """The file is not a recording this code can read; the message says where and why."""


@dataclass(frozen=True)
class Message:
    """One message as it travelled on the bus."""

    index: int
    subject: str
    reply: str | None
    headers: dict[str, str]
    data: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get(hdr.CONTENT_TYPE, hdr.JSON)

    @property
    def error_code(self) -> str | None:
        return self.headers.get(hdr.ERROR_CODE)

    def json_view(self) -> Any:
        """The decoded payload when it is JSON (the readable view), else None."""
        if self.content_type != hdr.JSON or not self.data:
            return None
        try:
            return orjson.loads(self.data)
        except orjson.JSONDecodeError:
            return None

    def with_payload(self, payload: Any) -> "Message":
        """A copy carrying `payload` JSON-encoded: how tests and tools edit a recording."""
        return replace(self, data=orjson.dumps(payload))

    def with_headers(self, changes: dict[str, str | None]) -> "Message":
        """A copy with headers set, or removed where the new value is None."""
        updated = dict(self.headers)
        for name, value in changes.items():
            if value is None:
                updated.pop(name, None)
            else:
                updated[name] = value
        return replace(self, headers=updated)

    def to_json(self) -> dict[str, Any]:
        line: dict[str, Any] = {"index": self.index, "subject": self.subject, "reply": self.reply,
                                "headers": self.headers}
        view = self.json_view()
        if view is not None:
            line["json"] = view
        line["data"] = base64.b64encode(self.data).decode()
        return line

    @classmethod
    def from_json(cls, line: dict[str, Any], where: str) -> "Message":
        try:
            message = cls(int(line["index"]), str(line["subject"]), line.get("reply"),
                          {str(k): str(v) for k, v in (line.get("headers") or {}).items()},
                          base64.b64decode(line.get("data", ""), validate=True))
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordingError(f"{where}: not a recorded message ({exc})") from None
        if "json" in line and line["json"] != message.json_view():
            raise RecordingError(f"{where}: the `json` view of message #{message.index} differs from its "
                                 "`data` bytes; edit `data` (Message.with_payload), the view is derived")
        return message


@dataclass(frozen=True)
class Exchange:
    """A request and the reply published on its reply subject (None when none was seen)."""

    request: Message
    reply: Message | None

    @property
    def index(self) -> int:
        return self.request.index


@dataclass
class Recording:
    """Everything a scenario put on the bus, minus the noise the recorder skips."""

    scenario: str
    exchanges: list[Exchange] = field(default_factory=list)
    events: list[Message] = field(default_factory=list)
    others: list[Message] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def replacing(self, old: Exchange, new: Exchange) -> "Recording":
        """A copy with `new` where `old` was (tests tamper with recordings this way)."""
        return replace(self, exchanges=[new if exchange is old else exchange for exchange in self.exchanges])

    def with_reply(self, exchange: Exchange, reply: Message) -> "Recording":
        """A copy in which `exchange` was answered with `reply`."""
        return self.replacing(exchange, Exchange(exchange.request, reply))

    def lines(self) -> Iterable[dict[str, Any]]:
        """The file's lines: meta first, then every entry in arrival order."""
        yield {"kind": "meta", "format": FORMAT, "scenario": self.scenario, **self.meta}
        entries: list[tuple[int, dict[str, Any]]] = []
        for exchange in self.exchanges:
            entries.append((exchange.index, {
                "kind": "exchange", "index": exchange.index, "request": exchange.request.to_json(),
                "reply": exchange.reply.to_json() if exchange.reply else None}))
        for kind, messages in (("event", self.events), ("message", self.others)):
            entries.extend((m.index, {"kind": kind, "index": m.index, "message": m.to_json()})
                           for m in messages)
        for _, line in sorted(entries, key=lambda entry: entry[0]):
            yield line

    def dump(self, path: Path) -> None:
        """Write the recording, fields in reading order (subject and the decoded view before bytes)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            for line in self.lines():
                out.write(orjson.dumps(line) + b"\n")

    @classmethod
    def load(cls, path: Path) -> "Recording":
        lines = path.read_bytes().splitlines()
        if not lines:
            raise RecordingError(f"{path} is empty")
        recording = cls._from_meta(_parse(lines[0], f"{path}:1"), f"{path}:1")
        for number, raw in enumerate(lines[1:], start=2):
            if raw.strip():
                recording._add_line(_parse(raw, f"{path}:{number}"), f"{path}:{number}")
        return recording

    @classmethod
    def _from_meta(cls, line: dict[str, Any], where: str) -> "Recording":
        if line.get("kind") != "meta" or line.get("format") != FORMAT:
            raise RecordingError(f"{where}: expected a meta line with format {FORMAT!r}, got {line!r:.200}")
        meta = {k: v for k, v in line.items() if k not in ("kind", "format", "scenario")}
        return cls(scenario=str(line.get("scenario", "")), meta=meta)

    def _add_line(self, line: dict[str, Any], where: str) -> None:
        kind = line.get("kind")
        if kind == "exchange":
            reply = line.get("reply")
            self.exchanges.append(Exchange(Message.from_json(line.get("request") or {}, where),
                                           Message.from_json(reply, where) if reply else None))
        elif kind == "event":
            self.events.append(Message.from_json(line.get("message") or {}, where))
        elif kind == "message":
            self.others.append(Message.from_json(line.get("message") or {}, where))
        else:
            raise RecordingError(f"{where}: unknown entry kind {kind!r}")


def _parse(raw: bytes, where: str) -> dict[str, Any]:
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RecordingError(f"{where}: not JSON ({exc})") from None
    if not isinstance(line, dict):
        raise RecordingError(f"{where}: each line must be a JSON object")
    return line
