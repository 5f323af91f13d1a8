"""Replay a recording into fresh components and report every way the replay differs.

    report = await replay(Recording.load(path), client, observer, normaliser)
    report.assert_green()

For each recorded exchange, in recorded order, the harness sends the recorded request (subject,
headers incl. Content-Type, payload) with a real NATS request, after rewriting every recorded random
value it has learned a replacement for (`normalise.Bindings`): that is how a Get reaches the key
the replayed Create made, not the one in the file. Random request headers (the request id) get a
fresh value of the same shape, so the replay's events can be told apart from anyone else's.

Each reply is compared with the recorded one: the error headers (`Nats-Service-Error-Code`, and the
message with bound values substituted), the Content-Type and the decoded payload. Fields the
scenario's `Normaliser` declares random are compared by shape and bound; every other field must be
equal. Afterwards the events the replay caused are compared with the recorded ones, in order, the
same way. Differences are collected, not raised at the first one, so one run shows them all.

When the recording names its driver's inbox (recorder.py, `is_driven`), only the driver's requests
are resent; the requests the components made of each other are made again by the replayed
components, and compared afterwards like the events: the same exchanges in the same order (subject,
request and reply, random fields by shape and binding), among those carrying the scenario's request
ids. Side effects off the bus (a client writing a file where the TDFS said) are the scenario's:
its `after_reply(exchange, replayed_reply)` runs after each replayed reply, before the next request.
A component's unanswered requests on a subject the normaliser declares polled (a keep manager
pinging a keep loader until it answers) depend on timing and are not compared.

Payloads are compared decoded: JSON, CBOR (byte strings and tag-37 UUIDs are values like any
other, normalise.py), and octet-stream payloads too when the normaliser says they are CBOR items
(`opaque_cbor`); an opaque payload the normaliser's `opener` can read (a mail encrypted to a
scenario's client) is compared as what it reads; any other is compared byte for byte, bound values
substituted. A text with random parts the normaliser names (`random_text`: a pid inside a message)
is compared whole but for those parts, which must keep their shape.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import cbor2
import orjson
from nats.aio.client import Client
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

from bus import headers as hdr
from tests.replay.normalise import (Bindings, Normaliser, FieldPath, bindable, describe, fresh_like, random_parts,
                                    same_shape, show_path)
from tests.replay.recorder import DRIVER_INBOX, Recorder, is_driven, to_message
from tests.replay.recording import Exchange, Message, Recording

REPLY_TIMEOUT = 5.0
_MISSING = "<missing>"

# Called with each recorded exchange the replay resent and the reply it got: the scenario's side
# effects off the bus (None or an awaitable).
AfterReply = Callable[[Exchange, Message], Awaitable[None] | None]


@dataclass(frozen=True)
class Difference:
    """One way the replay differs: where (recorded index, subject, part) and both values.

    `index` is the recorded message's index, None for something only the replay produced.
    """

    index: int | None
    subject: str
    where: str
    recorded: Any
    replayed: Any
    note: str = ""

    def __str__(self) -> str:
        origin = "(replay only)" if self.index is None else f"#{self.index}"
        text = (f"{origin} {self.subject}: {self.where}: recorded {_show(self.recorded)}, "
                f"replayed {_show(self.replayed)}")
        return f"{text} ({self.note})" if self.note else text


def _show(value: Any, limit: int = 160) -> str:
    text = value if value == _MISSING else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class ReplayReport:
    """The outcome: what was replayed, what differed, and the replay's own recording for debugging."""

    scenario: str
    exchanges: int = 0
    events_recorded: int = 0
    events_replayed: int = 0
    differences: list[Difference] = field(default_factory=list)
    bindings: Bindings = field(default_factory=Bindings)
    replayed: Recording | None = None
    component_exchanges_recorded: int = 0
    component_exchanges_replayed: int = 0
    replies: list[Message | None] = field(default_factory=list)   # as the driver got them, in order

    @property
    def ok(self) -> bool:
        return not self.differences

    def __str__(self) -> str:
        components = (f"component exchanges {self.component_exchanges_replayed} replayed / "
                      f"{self.component_exchanges_recorded} recorded, "
                      if self.component_exchanges_recorded or self.component_exchanges_replayed else "")
        head = (f"replay of {self.scenario!r}: {self.exchanges} exchanges, {components}events "
                f"{self.events_replayed} replayed / {self.events_recorded} recorded, "
                f"{len(self.differences)} difference{'' if len(self.differences) == 1 else 's'}")
        return "\n  ".join([head, *map(str, self.differences)])

    def assert_green(self) -> None:
        if not self.ok:
            raise AssertionError(str(self))

    def assert_reports(self, fragments: list[str], exchange: Exchange | None = None) -> None:
        """A tampered replay must fail, and say so in these words (prefixed by `exchange`'s place)."""
        assert not self.ok, "the tampering went unnoticed"
        if exchange is not None:
            fragments = [f"#{exchange.index} {exchange.request.subject}: ", *fragments]
        text = str(self)
        for fragment in fragments:
            assert fragment in text, f"{fragment!r} missing from the report:\n{text}"


@dataclass(frozen=True)
class Place:
    """Where a comparison happens, for the report."""

    index: int | None
    subject: str
    part: str  # "reply", "event", "component request", "component reply"


class Checker:
    """Compares recorded with replayed messages under one normaliser, learning bindings as it goes."""

    def __init__(self, normaliser: Normaliser, bindings: Bindings) -> None:
        self.normaliser = normaliser
        self.bindings = bindings
        self.differences: list[Difference] = []

    def differ(self, place: Place, where: str, recorded: Any, replayed: Any, note: str = "") -> None:
        self.differences.append(Difference(place.index, place.subject, f"{place.part} {where}".strip(),
                                           recorded, replayed, note))

    def message(self, place: Place, recorded: Message, replayed: Message) -> None:
        """Headers, then payload: the whole comparison of one reply or event."""
        self.headers(place, recorded.headers, replayed.headers)
        self.payload(place, recorded, replayed)

    def headers(self, place: Place, recorded: dict[str, str], replayed: dict[str, str]) -> None:
        for name in self.normaliser.compared_headers:
            expected = recorded.get(name)
            if expected is not None:
                expected = self.bindings.substitute_text(expected)
            if expected != replayed.get(name):
                self.differ(place, f"header {name}", recorded.get(name, _MISSING), replayed.get(name, _MISSING))
        for name in self.normaliser.random_headers:
            if name in recorded or name in replayed:
                self.random(place, f"header {name}", recorded.get(name), replayed.get(name))

    def payload(self, place: Place, recorded: Message, replayed: Message) -> None:
        expected, got = self.readable(recorded), self.readable(replayed)
        if isinstance(expected, bytes) or isinstance(got, bytes):
            if self.bindings.substitute_bytes(recorded.data) != replayed.data:
                self.differ(place, "payload bytes", recorded.data, replayed.data)
            return
        self.value(place, expected, got, ())

    def readable(self, message: Message) -> Any:
        """The payload decoded, or what the normaliser's `opener` reads in an opaque one."""
        value = decode(message, self.normaliser.opaque_cbor)
        if isinstance(value, bytes) and self.normaliser.opener is not None:
            opened = self.normaliser.opener(message)
            return value if opened is None else opened
        return value

    def value(self, place: Place, recorded: Any, replayed: Any, path: FieldPath) -> None:
        """Walk both payloads: random paths by shape and binding, everything else by equality."""
        if self.normaliser.is_random(path):
            self.random(place, f"payload at {show_path(path)}", recorded, replayed)
        elif isinstance(recorded, dict) and isinstance(replayed, dict):
            self._objects(place, recorded, replayed, path)
        elif isinstance(recorded, list) and isinstance(replayed, list) and len(recorded) == len(replayed):
            for position, (left, right) in enumerate(zip(recorded, replayed)):
                self.value(place, left, right, path + (str(position),))
        elif isinstance(recorded, str) and isinstance(replayed, str) and self.normaliser.text_patterns(path):
            self._text(place, recorded, replayed, path)
        elif not _equal(self.bindings.substitute(recorded), replayed):
            self.differ(place, f"payload at {show_path(path)}", recorded, replayed)

    def _text(self, place: Place, recorded: str, replayed: str, path: FieldPath) -> None:
        """A text with random parts (`Normaliser.random_text`): the parts by shape, the rest exactly."""
        patterns = self.normaliser.text_patterns(path)
        (expected, recorded_parts), (got, replayed_parts) = random_parts(recorded, patterns), random_parts(
            replayed, patterns)
        if expected != got:
            self.differ(place, f"payload at {show_path(path)}", recorded, replayed)
            return
        for recorded_part, replayed_part in zip(recorded_parts, replayed_parts):
            if not same_shape(recorded_part, replayed_part):
                self.differ(place, f"payload at {show_path(path)} (random part)", recorded, replayed,
                            f"shape {describe(recorded_part)} became {describe(replayed_part)}")

    def _objects(self, place: Place, recorded: dict, replayed: dict, path: FieldPath) -> None:
        for key in sorted(recorded.keys() | replayed.keys(), key=str):
            if key in recorded and key in replayed:
                self.value(place, recorded[key], replayed[key], path + (str(key),))
            else:
                self.differ(place, f"payload at {show_path(path + (str(key),))}",
                            recorded.get(key, _MISSING), replayed.get(key, _MISSING))

    def random(self, place: Place, where: str, recorded: Any, replayed: Any) -> None:
        """A random field: same shape, and consistent with every binding learned so far."""
        if recorded is None or replayed is None:
            if recorded is not replayed:
                self.differ(place, f"{where} (random)", _or_missing(recorded), _or_missing(replayed))
            return
        if not same_shape(recorded, replayed):
            self.differ(place, f"{where} (random)", recorded, replayed,
                        f"shape {describe(recorded)} became {describe(replayed)}")
            return
        if bindable(recorded) and type(recorded) is type(replayed):
            problem = self.bindings.bind(recorded, replayed)
            if problem:
                self.differ(place, f"{where} (random)", recorded, replayed, problem)


def _or_missing(value: Any) -> Any:
    return _MISSING if value is None else value


def _equal(left: Any, right: Any) -> bool:
    """Equality that tells 1 from 1.0 and True (JSON types matter to clients)."""
    return type(left) is type(right) and left == right


def decode(message: Message, opaque_cbor: bool = False) -> Any:
    """The payload as a value: JSON or CBOR decoded (octet-stream too, as CBOR, with `opaque_cbor`),
    None when empty, bytes when opaque or broken."""
    if not message.data:
        return None
    try:
        if message.content_type == hdr.JSON:
            return orjson.loads(message.data)
        if message.content_type == hdr.CBOR or (opaque_cbor and message.content_type == hdr.OCTETS):
            return cbor2.loads(message.data)
    except (orjson.JSONDecodeError, cbor2.CBORDecodeError, ValueError, EOFError):
        pass
    return message.data


def encode_like(message: Message, value: Any) -> bytes:
    """Encode `value` the way `message` was (only called for payloads `decode` decoded: JSON or CBOR)."""
    return orjson.dumps(value) if message.content_type == hdr.JSON else cbor2.dumps(value)


# --- the replay ---------------------------------------------------------------------------------

class Replayer:
    """Sends a recording's requests in order and checks each reply (one replay, one instance)."""

    def __init__(self, client: Client, checker: Checker, timeout: float,
                 after_reply: AfterReply | None = None) -> None:
        self.client = client
        self.checker = checker
        self.bindings = checker.bindings
        self.timeout = timeout
        self.after_reply = after_reply
        self.sent_request_ids: set[str] = set()
        self.replies: list[Message | None] = []

    async def exchange(self, exchange: Exchange) -> None:
        request = exchange.request
        place = Place(request.index, request.subject, "reply")
        if hdr.PAYLOAD_REF in request.headers:
            self.checker.differ(place, "request", "payload in the payload stream", _MISSING,
                                "such payloads are consumed on delivery: record with smaller payloads")
            self.replies.append(None)
            return
        replayed = await self._send(request)
        self.replies.append(replayed)
        if exchange.reply is None or replayed is None:
            if exchange.reply is not replayed:
                self.checker.differ(place, "(the whole reply)", _summary(exchange.reply), _summary(replayed))
        else:
            self.checker.message(place, exchange.reply, replayed)
        if self.after_reply is not None and replayed is not None:
            effect = self.after_reply(exchange, replayed)
            if inspect.isawaitable(effect):
                await effect

    async def _send(self, request: Message) -> Message | None:
        """The request rewritten with the bindings; None when nobody answered in time."""
        subject = self.bindings.substitute_subject(request.subject)
        try:
            msg = await self.client.request(subject, self._payload(request), timeout=self.timeout,
                                            headers=self._headers(request.headers) or None)
        except (NoRespondersError, NatsTimeout):
            return None
        return to_message(-1, msg)

    def _headers(self, recorded: dict[str, str]) -> dict[str, str]:
        sent: dict[str, str] = {}
        for name, value in recorded.items():
            if name in self.checker.normaliser.random_headers:
                sent[name] = self.bindings.forward.get(value) or fresh_like(value)
                self.bindings.bind(value, sent[name])
                if name == hdr.REQUEST_ID:
                    self.sent_request_ids.add(sent[name])
            else:
                sent[name] = self.bindings.substitute_text(value)
        return sent

    def _payload(self, request: Message) -> bytes:
        value = decode(request, self.checker.normaliser.opaque_cbor)
        if value is None:
            return request.data
        if isinstance(value, bytes):
            return self.bindings.substitute_bytes(request.data)
        return encode_like(request, self.bindings.substitute(value))


def _summary(message: Message | None) -> Any:
    if message is None:
        return "no reply"
    return {"error": message.error_code, "payload": message.json_view() or message.data}


def scenario_events(events: list[Message], request_ids: set[str]) -> list[Message]:
    """The events a scenario's own requests caused (or that name no request at all).

    The bus is shared: an event carrying another request's id belongs to someone else's traffic.
    """
    return [event for event in events
            if event.headers.get(hdr.REQUEST_ID) in (None, *request_ids)]


def scenario_exchanges(exchanges: list[Exchange], request_ids: set[str],
                       normaliser: Normaliser | None = None) -> list[Exchange]:
    """The exchanges carrying one of the scenario's request ids (components pass the id on), but
    for the unanswered polls on the normaliser's `polled_subjects`."""
    return [exchange for exchange in exchanges if exchange.request.headers.get(hdr.REQUEST_ID) in request_ids
            and not (exchange.reply is None and normaliser is not None
                     and normaliser.is_polled(exchange.request.subject))]


def compare_component_exchanges(checker: Checker, recorded: list[Exchange], replayed: list[Exchange]) -> None:
    """The requests components made of each other: the same ones in the same order, each with its reply."""
    for position in range(max(len(recorded), len(replayed))):
        if position >= len(replayed):
            request = recorded[position].request
            checker.differ(Place(request.index, request.subject, "component request"), "", request.json_view(),
                           _MISSING, "the replayed components made fewer requests")
        elif position >= len(recorded):
            request = replayed[position].request
            checker.differ(Place(None, request.subject, "component request"), "", _MISSING, request.json_view(),
                           "the replayed components made an extra request")
        else:
            _compare_component_exchange(checker, recorded[position], replayed[position])


def _compare_component_exchange(checker: Checker, recorded: Exchange, replayed: Exchange) -> None:
    request = recorded.request
    place = Place(request.index, request.subject, "component request")
    if checker.bindings.substitute_subject(request.subject) != replayed.request.subject:
        checker.differ(place, "subject", request.subject, replayed.request.subject)
    checker.message(place, request, replayed.request)
    place = Place(request.index, request.subject, "component reply")
    if recorded.reply is None or replayed.reply is None:
        if recorded.reply is not replayed.reply:
            checker.differ(place, "(the whole reply)", _summary(recorded.reply), _summary(replayed.reply))
        return
    checker.message(place, recorded.reply, replayed.reply)


def compare_events(checker: Checker, recorded: list[Message], replayed: list[Message]) -> None:
    """Same events in the same order: subject, compared/random headers, payload fields."""
    for position in range(max(len(recorded), len(replayed))):
        if position >= len(replayed):
            event = recorded[position]
            checker.differ(Place(event.index, event.subject, "event"), "", event.json_view(), _MISSING,
                           "the replay emitted fewer events")
            continue
        if position >= len(recorded):
            event = replayed[position]
            checker.differ(Place(None, event.subject, "event"), "", _MISSING, event.json_view(),
                           "the replay emitted an extra event")
            continue
        _compare_event(checker, recorded[position], replayed[position])


def _compare_event(checker: Checker, recorded: Message, replayed: Message) -> None:
    place = Place(recorded.index, recorded.subject, "event")
    if checker.bindings.substitute_subject(recorded.subject) != replayed.subject:
        checker.differ(place, "subject", recorded.subject, replayed.subject)
    checker.message(place, recorded, replayed)


async def replay(recording: Recording, client: Client, observer: Client, normaliser: Normaliser,
                 *, timeout: float = REPLY_TIMEOUT, after_reply: AfterReply | None = None) -> ReplayReport:
    """Replay `recording` through `client`, watch the bus with `observer`, return the report.

    `client` must be allowed to request the recorded subjects (e.g. the "component" role for
    internal ones); `observer` must be allowed to subscribe to `>` (the "admin" role: replies and internal subjects are hidden from the observer role).
    A recording that names its driver's inbox is replayed through a connection of the same role
    (its replies must come to that prefix, or the replay could not tell its requests from the
    components'). `after_reply` performs the scenario's side effects off the bus (see above).
    """
    driver_inbox = recording.meta.get(DRIVER_INBOX)
    if driver_inbox is not None and not client.new_inbox().startswith(driver_inbox):
        raise ValueError(f"the recording was driven from {driver_inbox}*: replay it through a connection "
                         f"of that role, not one whose replies come to {client.new_inbox()}")
    driven = [exchange for exchange in recording.exchanges if is_driven(exchange, driver_inbox)]
    checker = Checker(normaliser, Bindings())
    replayer = Replayer(client, checker, timeout, after_reply)
    async with Recorder(observer, f"replay of {recording.scenario}", driver_inbox=driver_inbox) as watcher:
        for exchange in driven:
            await replayer.exchange(exchange)
    recorded_ids = _request_ids(driven)
    recorded_internal: list[Exchange] = []
    replayed_internal: list[Exchange] = []
    if driver_inbox is not None:
        recorded_internal = scenario_exchanges([e for e in recording.exchanges if not is_driven(e, driver_inbox)],
                                               recorded_ids, normaliser)
        replayed_internal = scenario_exchanges(
            [e for e in watcher.recording.exchanges if not is_driven(e, driver_inbox)], replayer.sent_request_ids,
            normaliser)
        compare_component_exchanges(checker, recorded_internal, replayed_internal)
    recorded_events = scenario_events(recording.events, recorded_ids)
    replayed_events = scenario_events(watcher.recording.events, replayer.sent_request_ids)
    compare_events(checker, recorded_events, replayed_events)
    return ReplayReport(recording.scenario, len(driven), len(recorded_events), len(replayed_events),
                        checker.differences, checker.bindings, watcher.recording,
                        len(recorded_internal), len(replayed_internal), replayer.replies)


def _request_ids(exchanges: list[Exchange]) -> set[str]:
    return {e.request.headers[hdr.REQUEST_ID] for e in exchanges if hdr.REQUEST_ID in e.request.headers}
