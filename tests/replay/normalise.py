"""What a replay may differ in: declared random fields, their shapes, and learned bindings.

A scenario declares which fields are random (`Normaliser`); a replay cannot reproduce their values,
only their shape (`same_shape`: a UUID stays a UUID, base64 keeps its decoded length, a timestamp
stays a timestamp, an absolute path stays one whose last part has the same shape: the directories
above it differ from one data directory to the next). Random values also flow: a Get sends the
key_id its Create was given. So the replay learns `Bindings` (recorded value -> replayed value)
wherever a random field shows up, and rewrites every later request with them. A binding is
one-to-one: seeing a recorded value again with a different replayed value (e.g. Get returning other
key material than Create) is a difference, and so are two recorded values collapsing into one
replayed value.

Some texts are fixed but for a part (Aurae's "running as pid 4242 since <time>; restarts: 0"): a
scenario names such parts by path and regex (`Normaliser.random_text`, `random_parts`); they are
compared by shape (a decimal number stays one), the rest of the text exactly.

CBOR payloads (Enarx) carry two more kinds of value: byte strings (a 16-byte UUID, a 32-byte
measurement, a PEM certificate) and tag-37 UUIDs (`uuid.UUID`). Both are random values like any
string: they have shapes and are bound. One UUID travels in three forms (text in subjects and JSON
events, 16 bytes or a tag-37 UUID in CBOR), so binding one form of it binds the other two as well.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import string
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from bus import headers as hdr
from tests.replay.recording import Message

FieldPath = tuple[str, ...]
Shape = tuple[Any, ...]
_HEX = frozenset(string.hexdigits)


@dataclass(frozen=True)
class Normaliser:
    """Declared per scenario: the random JSON paths and headers, and the headers worth comparing.

    `random_paths` are dotted paths into request, reply and event payloads (`key_id`, `config.key`);
    a `*` segment matches any one key or list index (`keys.*.id`). Headers not in `compared_headers`
    or `random_headers` are ignored: they describe the transport, not the behaviour.
    """

    random_paths: tuple[str, ...] = ()
    random_headers: tuple[str, ...] = (hdr.REQUEST_ID,)
    compared_headers: tuple[str, ...] = (hdr.CONTENT_TYPE, hdr.ERROR_CODE, hdr.ERROR)
    # Opaque (application/octet-stream) payloads that are one CBOR item each (Enarx's keep
    # conversation): compared decoded, field by field, rather than byte for byte.
    opaque_cbor: bool = False
    # Subjects (`*` matches one token) a component polls until something answers (Enarx's keep
    # manager pings a keep loader that is still starting): how many of its requests go unanswered
    # depends on timing, so those are left out of the comparison; the answered one is compared.
    polled_subjects: tuple[str, ...] = ()
    # Opaque payloads only the scenario can read (Conclave's mail: encrypted afresh, with a new
    # ephemeral key, on every run): `opener(message)` returns what it reads in one (a value whose
    # random parts `random_paths` name), compared field by field; None: compare the bytes.
    opener: Callable[[Message], Any] | None = None
    # Texts with random parts (Aurae's "running as pid 4242 since <time>"): (path, regex) pairs; at a
    # matching path, what each group of the regex matches is random, compared by shape only (never
    # bound: a short number would rewrite every later text holding it); the rest is compared exactly.
    random_text: tuple[tuple[str, str], ...] = ()

    def is_random(self, path: FieldPath) -> bool:
        return any(_matches(pattern.split("."), path) for pattern in self.random_paths)

    def text_patterns(self, path: FieldPath) -> list[re.Pattern[str]]:
        """The `random_text` regexes that apply at `path` (none: the text is compared whole)."""
        return [re.compile(regex) for pattern, regex in self.random_text if _matches(pattern.split("."), path)]

    def is_polled(self, subject: str) -> bool:
        return any(_matches(pattern.split("."), tuple(subject.split("."))) for pattern in self.polled_subjects)


def _matches(pattern: list[str], path: FieldPath) -> bool:
    return len(pattern) == len(path) and all(p in ("*", segment) for p, segment in zip(pattern, path))


def show_path(path: FieldPath) -> str:
    return ".".join(path) if path else "(whole payload)"


RANDOM_PART = "<random>"


def random_parts(text: str, patterns: list[re.Pattern[str]]) -> tuple[str, list[str]]:
    """`text` with what the patterns' groups match replaced by RANDOM_PART, and those parts in order
    (a part overlapping an earlier one is left in the text)."""
    spans = sorted({match.span(group) for regex in patterns for match in regex.finditer(text)
                    for group in range(1, (regex.groups or 0) + 1) if match.start(group) >= 0})
    kept: list[tuple[int, int]] = []
    for start, end in spans:
        if not kept or start >= kept[-1][1]:
            kept.append((start, end))
    skeleton, parts, at = [], [], 0
    for start, end in kept:
        skeleton.append(text[at:start] + RANDOM_PART)
        parts.append(text[start:end])
        at = end
    return "".join(skeleton) + text[at:], parts


# --- shapes -------------------------------------------------------------------------------------

def shapes(value: Any) -> frozenset[Shape]:
    """Every shape `value` has; two values match when they share one (see `same_shape`).

    A string can have several (16 hex digits are also base64 of 12 bytes), so matching on any
    shared shape never fails a replay because a random value happened to look like something else.
    """
    if isinstance(value, str):
        return _string_shapes(value) or frozenset({("text", len(value))})
    if isinstance(value, bool) or value is None:
        return frozenset({(type(value).__name__,)})
    if isinstance(value, (int, float)):
        return frozenset({("number",)})
    if isinstance(value, list):
        return frozenset({("list", len(value))})
    if isinstance(value, dict):
        return frozenset({("object", tuple(sorted(value, key=str)))})
    if isinstance(value, bytes):
        pem = _pem_label(value.decode("ascii", "replace"))
        return frozenset({("bytes", len(value)), *([("pem", pem)] if pem else [])})
    if isinstance(value, uuid.UUID):
        return frozenset({("uuid", value.version)})
    return frozenset({(type(value).__name__,)})


def _string_shapes(value: str) -> frozenset[Shape]:
    found: set[Shape] = set()
    if value.isascii() and value.isdigit():
        found.add(("decimal",))     # a number inside a text (`random_text`): a pid, an uptime
    version = _uuid_version(value)
    if version is not None:
        found.add(("uuid", version))
    if _is_timestamp(value):
        found.add(("timestamp",))
    if value and len(value) % 2 == 0 and set(value) <= _HEX:
        found.add(("hex", len(value)))
    decoded = _base64_length(value)
    if decoded is not None:
        found.add(("base64", decoded))
    if _is_absolute_path(value):
        found.update(("path", *shape) for shape in shapes(value.rsplit("/", 1)[1]))
    pem = _pem_label(value)
    if pem:
        found.add(("pem", pem))   # a certificate's length varies with its serial number and signature
    return frozenset(found)


def _pem_label(value: str) -> str | None:
    """`CERTIFICATE` for a PEM certificate (text or its ASCII bytes), None for anything else."""
    if not value.startswith("-----BEGIN "):
        return None
    label = value[len("-----BEGIN "):].split("-----", 1)[0]
    return label if value.rstrip().endswith(f"-----END {label}-----") else None


def _is_absolute_path(value: str) -> bool:
    return len(value) > 1 and value.startswith("/") and not value.endswith("/") and not any(
        character.isspace() for character in value)


def _uuid_version(value: str) -> int | None:
    if len(value) != 36:
        return None
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return None
    return parsed.version if str(parsed) == value.lower() else None


def _is_timestamp(value: str) -> bool:
    if len(value) < 16 or "T" not in value:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _base64_length(value: str) -> int | None:
    if not value or len(value) % 4:
        return None
    try:
        return len(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        return None


def same_shape(recorded: Any, replayed: Any) -> bool:
    return bool(shapes(recorded) & shapes(replayed))


def describe(value: Any) -> str:
    """A person's name for a value's shape, for difference reports."""
    return " / ".join(_describe(shape) for shape in sorted(shapes(value), key=repr))


def _describe(shape: Shape) -> str:
    if shape[0] == "path":
        return f"a path ending in {_describe(shape[1:])}"
    names = {"uuid": "UUIDv{}", "timestamp": "timestamp", "decimal": "a decimal number", "hex": "{} hex digits",
             "base64": "base64 of {} bytes", "text": "text of {} chars", "list": "list of {}",
             "object": "object with keys {}", "bytes": "{} bytes", "pem": "PEM {}"}
    template = names.get(shape[0], shape[0])
    return template.format(*shape[1:]) if "{}" in template else template


def fresh_like(value: str) -> str:
    """A new random value of the same shape: what a replay sends for a random request header."""
    found = shapes(value)
    if any(shape[0] == "uuid" for shape in found):
        return str(uuid.uuid4())
    if ("hex", len(value)) in found:
        return secrets.token_hex(len(value) // 2)
    for shape in found:
        if shape[0] == "base64":
            return base64.b64encode(os.urandom(shape[1])).decode()
    return secrets.token_urlsafe(len(value))[:len(value)]


# --- bindings -----------------------------------------------------------------------------------

Bindable = str | bytes | uuid.UUID     # the random values a binding can hold (str: JSON; all: CBOR)


def bindable(value: Any) -> bool:
    return isinstance(value, (str, bytes, uuid.UUID))


def uuid_forms(value: Bindable) -> list[Bindable]:
    """The other forms of a UUID (text, 16 bytes, tag-37 UUID); [] for a value that is not one."""
    if isinstance(value, uuid.UUID):
        parsed = value
    elif isinstance(value, bytes) and len(value) == 16:
        parsed = uuid.UUID(bytes=value)
    elif isinstance(value, str) and _uuid_version(value) is not None:
        parsed = uuid.UUID(value)
    else:
        return []
    return [form for form in (str(parsed), parsed.bytes, parsed) if type(form) is not type(value)]


@dataclass
class Bindings:
    """Recorded random value -> its replayed counterpart, kept one-to-one."""

    forward: dict[Bindable, Bindable] = field(default_factory=dict)
    backward: dict[Bindable, Bindable] = field(default_factory=dict)

    def bind(self, recorded: Bindable, replayed: Bindable) -> str | None:
        """Learn recorded -> replayed (and a UUID's other forms); return why that contradicts an
        earlier binding, else None."""
        problem = self._bind_one(recorded, replayed)
        if problem is None and type(recorded) is type(replayed):
            for recorded_form, replayed_form in zip(uuid_forms(recorded), uuid_forms(replayed)):
                problem = problem or self._bind_one(recorded_form, replayed_form)
        return problem

    def _bind_one(self, recorded: Bindable, replayed: Bindable) -> str | None:
        earlier = self.forward.get(recorded)
        if earlier is not None and earlier != replayed:
            return f"this recorded value was replayed as {earlier!r} earlier"
        owner = self.backward.get(replayed)
        if owner is not None and owner != recorded:
            return f"the replayed value already stands for recorded {owner!r}"
        self.forward[recorded] = replayed
        self.backward[replayed] = recorded
        return None

    def substitute(self, value: Any) -> Any:
        """`value` with every whole string, byte string or UUID (and object key) that is a recorded
        random value replaced."""
        if bindable(value):
            return self.forward.get(value, value)
        if isinstance(value, list):
            return [self.substitute(item) for item in value]
        if isinstance(value, dict):
            return {self.substitute(key): self.substitute(item) for key, item in value.items()}
        return value

    def substitute_text(self, text: str) -> str:
        """Free text (an error message) with recorded random values replaced inside it."""
        for recorded in sorted((k for k in self.forward if isinstance(k, str)), key=len, reverse=True):
            text = text.replace(recorded, self.forward[recorded])
        return text

    def substitute_bytes(self, data: bytes) -> bytes:
        """Opaque payloads: replace the bytes of each recorded value (a text one's UTF-8)."""
        pairs = [(k.encode(), v.encode()) if isinstance(k, str) else (k, v)
                 for k, v in self.forward.items() if isinstance(k, (str, bytes))]
        for recorded, replayed in sorted(pairs, key=lambda pair: len(pair[0]), reverse=True):
            data = data.replace(recorded, replayed)
        return data

    def substitute_subject(self, subject: str) -> str:
        """Subjects carry ids as whole tokens (`enarx.keep.<kuuid>`)."""
        return ".".join(self.forward.get(token, token) for token in subject.split("."))
