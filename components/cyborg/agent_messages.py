"""The agent's and drivers' messages: the seed's `POST /hello` body, and a driver's `GET /hardware`
answer, validated. Shared by the agent, the drivers and the HTTP adapter (which refuses a bad body
before it reaches the bus). Errors are BadRequests naming the field and saying what to send.

`POST /hello` (the seed's body, plus an optional `driver` naming it):

    {"status": "READY", "endpoint": "localhost:1337", "type": "CRYPTO"}

`endpoint` is `bus` for a built-in driver (then `driver` names it: pci, nvidia, inventory), or
where an external driver answers over HTTP: `host:port` (http) or an `http://` / `https://` URL,
under which the agent calls `POST <endpoint>/discovery` and `GET <endpoint>/hardware`.
`type` is the device type it reports (the seed's CRYPTO), or several separated by commas.

A driver's hardware answer is the seed's `{"hardware": [...]}`; ours adds `in_progress` (a
discovery is running: the list is the last complete one), `discovered_at` (when that one ended,
ISO 8601, null before the first) and `problem` (why the last discovery found nothing or failed,
null when it did not). External drivers may send them too; any other top-level key is refused.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Mapping

import yarl

from bus.errors import BadRequest
from components.cyborg.hardware import Device, devices_from_document
from components.cyborg.subjects import DRIVERS

READY = "READY"
SILENT = "SILENT"
BUS = "bus"
HELLO_SAMPLE = '{"status": "READY", "endpoint": "localhost:1337", "type": "CRYPTO"}'
MAX_ENDPOINT = 256
MAX_TYPE = 256
_HELLO_KEYS = frozenset({"status", "endpoint", "type", "driver"})
_TYPE = re.compile(r"[A-Za-z0-9_]{1,32}(?:,[A-Za-z0-9_]{1,32})*\Z")
_DRIVER_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}\Z")
_OURS = ("in_progress", "discovered_at", "problem")


@dataclass(frozen=True)
class Hello:
    """A driver's registration: `driver` is its id on this host; `url` is None for a bus driver."""

    driver: str
    endpoint: str
    type: str
    url: str | None

    @property
    def builtin(self) -> bool:
        return self.url is None

    def to_dict(self) -> dict[str, Any]:
        return {"driver": self.driver, "endpoint": self.endpoint, "type": self.type}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> "Hello":
        return parse_hello({"status": READY, "endpoint": value["endpoint"], "type": value["type"],
                            "driver": value["driver"]})


def parse_hello(body: Any) -> Hello:
    """The seed's `POST /hello` body, validated (BadRequest says what is wrong and what to send)."""
    if not isinstance(body, Mapping):
        raise BadRequest(f"the hello body must be a JSON object such as {HELLO_SAMPLE}")
    unknown = sorted(str(key)[:64] for key in body if key not in _HELLO_KEYS)
    if unknown:
        raise BadRequest(f"the hello body has unknown fields {', '.join(unknown[:5])}; "
                         f"it takes status, endpoint, type and optionally driver: {HELLO_SAMPLE}")
    for name in ("status", "endpoint", "type"):
        if name not in body:
            raise BadRequest(f"the hello body lacks {name}; send {HELLO_SAMPLE}")
        if not isinstance(body[name], str):
            raise BadRequest(f"{name} must be a string, not {type(body[name]).__name__}; send {HELLO_SAMPLE}")
    if body["status"] != READY:
        raise BadRequest(f"status must be {READY!r} (a driver says hello when it is ready), "
                         f"not {body['status'][:32]!r}")
    kind = body["type"]
    if len(kind) > MAX_TYPE or not _TYPE.match(kind):
        raise BadRequest("type must name the device type the driver reports, such as CRYPTO or GPU "
                         "(several separated by commas)")
    driver = body.get("driver")
    if driver is not None and (not isinstance(driver, str) or not _DRIVER_ID.match(driver)):
        raise BadRequest("driver must be a short lower-case name (letters, digits, - and _, at most 32), "
                         f"not {str(driver)[:40]!r}")
    endpoint = body["endpoint"]
    if endpoint == BUS:
        if driver not in DRIVERS:
            raise BadRequest(f"endpoint {BUS!r} is for the built-in drivers ({', '.join(DRIVERS)}), named in "
                             "driver; an external driver gives the host:port or URL where it answers")
        return Hello(driver, BUS, kind, None)
    url = external_url(endpoint)
    if driver in DRIVERS:
        raise BadRequest(f"driver {driver!r} is a built-in driver's name (endpoint {BUS!r}); "
                         "name an external driver otherwise, or leave driver out")
    return Hello(driver or external_id(url), endpoint, kind, url)


def external_url(endpoint: str) -> str:
    """The base URL of an external driver from its `host:port` or `http(s)://` endpoint."""
    if not endpoint or len(endpoint) > MAX_ENDPOINT or not endpoint.isprintable() or any(c.isspace() for c in endpoint):
        raise BadRequest(f"endpoint must be {BUS!r}, host:port or an http(s) URL of at most {MAX_ENDPOINT} "
                         "characters without spaces")
    text = endpoint if "://" in endpoint else f"http://{endpoint}"
    try:
        url = yarl.URL(text)
        host, port, scheme = url.host, url.explicit_port, url.scheme
    except (ValueError, TypeError):
        raise BadRequest(f"endpoint {endpoint[:80]!r} is not host:port nor an http(s) URL") from None
    if scheme not in ("http", "https"):
        raise BadRequest(f"endpoint {endpoint[:80]!r}: only http and https drivers are polled")
    if not host or url.user is not None or url.password is not None or url.query_string or url.fragment:
        raise BadRequest(f"endpoint {endpoint[:80]!r} must name a host (no credentials, query or fragment)")
    if "://" not in endpoint and port is None:
        raise BadRequest(f"endpoint {endpoint[:80]!r} must be host:port (the seed's localhost:1337)")
    return str(url).rstrip("/")


def external_id(url: str) -> str:
    """An external driver's id when it gave none: `ext-<host>-<port>`, or a digest when that is long."""
    parsed = yarl.URL(url)
    readable = re.sub(r"[^a-z0-9]+", "-", f"ext-{parsed.host}-{parsed.port}{parsed.path}".lower()).strip("-")
    if len(readable) <= 32:
        return readable
    return "ext-" + hashlib.sha256(url.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class HardwareAnswer:
    devices: list[Device]
    in_progress: bool
    discovered_at: str | None
    problem: str | None


def parse_hardware(value: Any, *, host: str, driver: str) -> HardwareAnswer:
    """A driver's `GET /hardware` answer (ours or an external driver's); ValueError names the field."""
    if not isinstance(value, Mapping):
        raise ValueError(f"the hardware answer must be a JSON object, not {type(value).__name__}")
    in_progress = value.get("in_progress", False)
    discovered_at = value.get("discovered_at")
    problem = value.get("problem")
    if not isinstance(in_progress, bool):
        raise ValueError("in_progress must be true or false")
    if discovered_at is not None and (not isinstance(discovered_at, str) or len(discovered_at) > 64):
        raise ValueError("discovered_at must be an ISO 8601 time or null")
    if problem is not None and not isinstance(problem, str):
        raise ValueError("problem must be a string or null")
    document = {key: item for key, item in value.items() if key not in _OURS}
    devices = devices_from_document(document, host=host, driver=driver)
    return HardwareAnswer(devices, in_progress, discovered_at, problem[:512] if problem else None)
