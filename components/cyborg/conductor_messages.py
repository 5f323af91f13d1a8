"""The conductor's messages, validated: an agent's hello, heartbeat and report; the hardware query.

Every parser takes a decoded JSON value and returns a typed, bounded request or raises BadRequest
with a message naming the field. The HTTP adapter parses the same bodies before they reach the bus
(nothing reaches the conductor unvalidated), and the conductor parses them again.

The seed's `POST /hello` body is `{"status": "READY", "endpoint": "compute-whatever:1337"}`; on the
bus it carries `host` too. Over HTTP `host` may be missing: it is then the endpoint's host part.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from bus.errors import BadRequest
from components.cyborg import hardware
from components.cyborg.hardware import HEALTH_STATES, MAX_REASON, Device

READY, LOST = "READY", "LOST"
AGENT_STATES = (READY, LOST)
REGISTERED = "REGISTERED"
MAX_ENDPOINT = 261                      # a 253-character host name, a colon and a port (brackets for IPv6)
MAX_TRANSITIONS_PER_DEVICE = 4          # transitions one report may carry per device it may name
HELLO_SAMPLE = '{"status": "READY", "endpoint": "compute-whatever:1337"}'
_HOST = re.compile(r"[^\s\x00-\x1f\x7f]{1,253}\Z")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_HELLO_KEYS = frozenset({"status", "endpoint", "host"})
_REPORT_KEYS = frozenset({"host", "full", "added", "changed", "removed", "transitions"})
_TRANSITION_KEYS = frozenset({"uuid", "from", "to", "reason", "at"})
QUERY_KEYS = ("host", "device_type", "health", "since")


@dataclass(frozen=True)
class Hello:
    host: str
    endpoint: str


@dataclass(frozen=True)
class HealthChange:
    """One health transition the agent's hysteresis made (components/cyborg/health.py), or, when
    `derived`, one the conductor inferred from a report whose entry changed health without one."""

    uuid: str
    before: str
    after: str
    reason: str
    at: float
    derived: bool = False

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"from": self.before, "to": self.after, "reason": self.reason, "at": self.at}
        if self.derived:
            body["derived"] = True
        return body


@dataclass(frozen=True)
class Report:
    host: str
    full: bool
    upserts: tuple[Device, ...]           # added and changed: each one the device as it is now
    removed: tuple[str, ...]
    transitions: tuple[HealthChange, ...]


@dataclass(frozen=True)
class HardwareQuery:
    host: str | None = None
    device_type: str | None = None
    health: str | None = None
    since: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {name: value for name in QUERY_KEYS if (value := getattr(self, name)) is not None}


def host_key(host: str) -> str:
    """Host names compare without case (as hardware.from_seed_json compares them)."""
    return host.lower()


# -- hello, heartbeat ----------------------------------------------------------------------------

def parse_hello(value: Any) -> Hello:
    body = _object(value, "the hello body", _HELLO_KEYS, HELLO_SAMPLE)
    status = body.get("status")
    if status != READY:
        raise BadRequest(f"status must be \"READY\" (an agent says hello when it is ready), not "
                         f"{_quote(status)}; send {HELLO_SAMPLE}")
    endpoint = body.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise BadRequest(f"endpoint is missing: it is where the agent listens, host:port; send {HELLO_SAMPLE}")
    endpoint_host = endpoint_host_of(endpoint)
    host = body.get("host", endpoint_host)
    return Hello(parse_host(host, "host"), endpoint)


def endpoint_host_of(endpoint: str) -> str:
    """The host part of `host:port` (`[v6]:port` too), the endpoint checked on the way."""
    if len(endpoint) > MAX_ENDPOINT:
        raise BadRequest(f"endpoint is longer than {MAX_ENDPOINT} characters")
    if endpoint.startswith("["):
        inside, bracket, rest = endpoint[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise BadRequest(f"endpoint must be host:port (IPv6 as [address]:port), not {_quote(endpoint)}")
        host, port = inside, rest[1:]
    else:
        host, colon, port = endpoint.rpartition(":")
        if not colon or ":" in host:
            raise BadRequest(f"endpoint must be host:port, like compute-whatever:1337, not {_quote(endpoint)}")
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise BadRequest(f"endpoint's port must be 1 to 65535, not {_quote(port)}")
    return parse_host(host, "endpoint's host")


def parse_host(value: Any, name: str = "host") -> str:
    if not isinstance(value, str) or not _HOST.match(value):
        raise BadRequest(f"{name} must be a host name of 1 to 253 characters without spaces, not {_quote(value)}")
    return value


def parse_heartbeat(value: Any) -> str:
    body = _object(value, "the heartbeat body", frozenset({"host"}), '{"host": "<this host>"}')
    if "host" not in body:
        raise BadRequest('host is missing; send {"host": "<this host>"}')
    return parse_host(body["host"])


# -- reports -------------------------------------------------------------------------------------

def parse_report(value: Any, max_devices: int) -> Report:
    """An agent's report, every entry validated for its host (hardware.from_seed_json), every
    count bounded by `max_devices` (config.max_devices_per_host); a uuid appears once."""
    body = _object(value, "the report", _REPORT_KEYS,
                   '{"host", "full", "added": [...], "changed": [...], "removed": [...], "transitions": [...]}')
    if "host" not in body:
        raise BadRequest("host is missing: the report names the agent's host")
    host = parse_host(body["host"])
    full = body.get("full", False)
    if not isinstance(full, bool):
        raise BadRequest(f"full must be true or false, not {_quote(full)}")
    added = _list(body, "added", max_devices)
    changed = _list(body, "changed", max_devices)
    removed = _list(body, "removed", max_devices)
    if len(added) + len(changed) > max_devices:
        raise BadRequest(f"a host has at most {max_devices} devices (max_devices_per_host); this report "
                         f"adds and changes {len(added) + len(changed)}")
    seen: dict[str, str] = {}
    upserts = []
    for name, entries in (("added", added), ("changed", changed)):
        for index, entry in enumerate(entries):
            where = f"{name}[{index}]"
            try:
                device = hardware.from_seed_json(entry, host=host, driver="agent", where=where)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            _once(seen, device.uuid, where)
            upserts.append(device)
    gone = []
    for index, item in enumerate(removed):
        uuid = parse_uuid(item, f"removed[{index}]")
        _once(seen, uuid, f"removed[{index}]")
        gone.append(uuid)
    transitions = _list(body, "transitions", MAX_TRANSITIONS_PER_DEVICE * max_devices)
    changes = tuple(parse_transition(item, f"transitions[{index}]") for index, item in enumerate(transitions))
    return Report(host, full, tuple(upserts), tuple(gone), changes)


def parse_transition(value: Any, where: str) -> HealthChange:
    body = _object(value, where, _TRANSITION_KEYS, '{"uuid", "from", "to", "reason", "at"}')
    missing = [key for key in ("uuid", "from", "to", "at") if key not in body]
    if missing:
        raise BadRequest(f"{where}.{missing[0]} is missing")
    uuid = parse_uuid(body["uuid"], f"{where}.uuid")
    before, after = body["from"], body["to"]
    for name, state in (("from", before), ("to", after)):
        if state not in HEALTH_STATES:
            raise BadRequest(f"{where}.{name} must be {' or '.join(HEALTH_STATES)}, not {_quote(state)}")
    if before == after:
        raise BadRequest(f"{where} goes from {before} to {after}: a transition changes the health")
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise BadRequest(f"{where}.reason must be a string of at most {MAX_REASON} characters")
    at = body["at"]
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at) or at < 0:
        raise BadRequest(f"{where}.at must be a time in seconds since the epoch, not {_quote(at)}")
    return HealthChange(uuid, before, after, reason, float(at))


def parse_uuid(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _UUID.match(value):
        raise BadRequest(f"{where} must be a device uuid like 8e45a2ea-5364-4b0d-a252-bf8becaa606e, "
                         f"not {_quote(value)}")
    return value.lower()


# -- the hardware query --------------------------------------------------------------------------

def parse_hardware_query(value: Any) -> HardwareQuery:
    """`{"host"?, "device_type"?, "health"?, "since"?}`; over HTTP, the query string's values
    (strings: `since` a non-negative integer). health is Healthy or Unhealthy (any case)."""
    if value is None:
        value = {}
    body = _object(value, "the hardware query", frozenset(QUERY_KEYS), "host, device_type, health, since")
    host = parse_host(body["host"]) if body.get("host") is not None else None
    device_type = body.get("device_type")
    if device_type is not None:
        if not isinstance(device_type, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,31}", device_type):
            raise BadRequest(f"device_type must be a type name like GPU or FPGA, not {_quote(device_type)}")
        device_type = device_type.upper()
    health = body.get("health")
    if health is not None:
        matching = [state for state in HEALTH_STATES if isinstance(health, str) and state.lower() == health.lower()]
        if not matching:
            raise BadRequest(f"health must be {' or '.join(HEALTH_STATES)}, not {_quote(health)}")
        health = matching[0]
    since = body.get("since")
    if since is not None:
        since = parse_since(since)
    return HardwareQuery(host, device_type, health, since)


def parse_since(value: Any) -> int:
    """A revision: a non-negative integer (or its decimal digits, from a query string)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2 ** 63:
        raise BadRequest(f"since must be a non-negative integer (a revision a reply gave), not {_quote(value)}")
    return value


def query_from_params(params: Mapping[str, str]) -> HardwareQuery:
    """The query of `GET /hardware?host=&device_type=&health=&since=`: unknown or repeated
    parameters are refused, so a typo is not silently ignored."""
    unknown = sorted({key for key in params if key not in QUERY_KEYS})
    if unknown:
        raise BadRequest(f"unknown query parameters: {', '.join(_quote(k) for k in unknown[:5])}; "
                         f"known: {', '.join(QUERY_KEYS)}")
    values: dict[str, str] = {}
    for key in QUERY_KEYS:
        given = params.getall(key, []) if hasattr(params, "getall") else ([params[key]] if key in params else [])
        if len(given) > 1:
            raise BadRequest(f"{key} is given {len(given)} times; give it once")
        if given:
            values[key] = given[0]
    return parse_hardware_query(values)


# -- helpers -------------------------------------------------------------------------------------

def _object(value: Any, what: str, allowed: frozenset[str], sample: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BadRequest(f"{what} must be a JSON object, not {_kind(value)}; send {sample}")
    unknown = sorted(str(key)[:64] for key in value if key not in allowed)
    if unknown:
        raise BadRequest(f"{what} has unknown fields: {', '.join(unknown[:5])} (known: {', '.join(sorted(allowed))})")
    return value


def _list(body: Mapping[str, Any], name: str, limit: int) -> list[Any]:
    value = body.get(name, [])
    if not isinstance(value, list):
        raise BadRequest(f"{name} must be a list, not {_kind(value)}")
    if len(value) > limit:
        raise BadRequest(f"{name} holds {len(value)} items; at most {limit} (max_devices_per_host)")
    return value


def _once(seen: dict[str, str], uuid: str, where: str) -> None:
    if uuid in seen:
        raise BadRequest(f"{where}: device {uuid} is already named by {seen[uuid]}; name each device once")
    seen[uuid] = where


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _quote(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 64 else text[:61] + "..."
