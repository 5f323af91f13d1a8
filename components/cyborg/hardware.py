"""The hardware model: one discovered device, its stable uuid, and the seed's `GET /hardware` JSON.

A device's JSON entry is the seed's shape, field names as written there (`reboot_equired`
included), plus one key of ours, `teebus`, that a reader of the seed can ignore:

    {"uuid": "<uuid>",
     "acc_specs": {"remote": 0, "num": 1, "device_type": "GPU", "acc_capability": {...}},
     "acc_status": {"setup_required": false, "reboot_equired": false},
     "teebus": {"host": "...", "address": "0000:3b:00.0" | null, "vendor": "10de",
                "product": "2330", "health": "Healthy" | "Unhealthy", "health_reason": "",
                "numa_node": 0 | null, "driver": "pci", "details": {...}}}

`from_seed_json` reads that back (and what external drivers send over HTTP): `reboot_required`
is accepted for `reboot_equired`, `teebus` is optional, unknown keys are refused, and every
size is bounded, so a hostile driver costs little. Errors are ValueErrors naming the field.

A device's uuid is a UUIDv5 of its host and PCI address (or of a driver's key for devices not
on PCI) under a fixed namespace: the same device keeps its uuid across runs, restarts and
drivers (the `pci` and `nvidia` drivers give one GPU the same uuid), and the same address on
another host gets another.
"""

from __future__ import annotations

import math
import re
import uuid as uuidlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
HEALTH_STATES = (HEALTHY, UNHEALTHY)

# The types our drivers report (the later Cyborg's names); input may carry others (the seed's CRYPTO).
DEVICE_TYPES = frozenset({"GPU", "FPGA", "AICHIP", "QAT", "NIC", "SSD"})

# uuid5(NAMESPACE_URL, "urn:teebus:cyborg:device"), written out: changing it renames every device
NAMESPACE = uuidlib.UUID("3fac2885-593e-554d-9d22-1db3bd2e7042")
MAX_DEVICES = 1024          # entries in one hardware document
MAX_TEXT = 256              # host, vendor, product, strings inside trees
MAX_REASON = 512            # health_reason
MAX_NUM = 65_535            # acc_specs.num
MAX_TREE_DEPTH = 4          # nesting of acc_capability / details
MAX_TREE_ITEMS = 128        # values in one acc_capability / details, all levels together
MAX_KEY = 64                # a key inside acc_capability / details

_DEVICE_TYPE = re.compile(r"[A-Z][A-Z0-9_]{0,31}\Z")
_DRIVER = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}\Z")
_HOST = re.compile(r"[^\s\x00-\x1f\x7f]{1,253}\Z")
_BDF = re.compile(r"(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])\Z")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")

Tree = Mapping[str, Any]     # read-only JSON-like mapping: str keys; scalars, tuples, trees


def normalize_pci_address(value: str) -> str:
    """`dddd:bb:dd.f` in lower case, the form sysfs names devices by; NVML's 8-digit domain and
    a missing domain (domain 0) are accepted, so every driver names one device alike."""
    match = _BDF.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"not a PCI address (domain:bus:device.function): {str(value)[:40]!r}")
    domain, bus, slot, function = match.groups()
    slot_value = int(slot, 16)
    if slot_value > 0x1F:
        raise ValueError(f"not a PCI address: device {slot_value:#x} is above 0x1f in {value!r}")
    return f"{int(domain or '0', 16):04x}:{int(bus, 16):02x}:{slot_value:02x}.{function}"


def device_uuid(host: str, address_or_key: str) -> str:
    """The device's stable uuid: UUIDv5 of `host` (case-insensitive) and its PCI address
    (normalised) or, for devices not on PCI, a key its driver keeps stable."""
    _check_host(host, "host")
    if not isinstance(address_or_key, str) or not address_or_key or len(address_or_key) > MAX_TEXT:
        raise ValueError(f"a device key must be a non-empty string of at most {MAX_TEXT} characters")
    try:
        key = normalize_pci_address(address_or_key)
    except ValueError:
        key = address_or_key
    return str(uuidlib.uuid5(NAMESPACE, f"{host.lower()}/{key}"))


@dataclass(frozen=True)
class Device:
    """One piece of hardware on a host, as a driver found it ("hardware", not an accelerator:
    it may not be ready to use). `health` is this probe's result; hysteresis is `health.py`'s."""

    uuid: str
    host: str
    device_type: str                               # GPU, FPGA, AICHIP, QAT, NIC, SSD (or an external driver's)
    address: str | None = None                     # PCI address dddd:bb:dd.f, None off PCI
    vendor: str = ""                               # PCI vendor id (4 hex digits) on PCI, else a name
    product: str = ""                              # PCI device id, or a model name the driver knows
    acc_capability: Tree = field(default_factory=dict, hash=False)
    num: int = 1
    remote: int = 0                                # the seed's 0/1
    setup_required: bool = False
    reboot_required: bool = False
    health: str = HEALTHY
    health_reason: str = ""                        # why Unhealthy (or recovering); empty when plainly Healthy
    numa_node: int | None = None
    driver: str = "pci"                            # the teebus driver that found it
    details: Tree = field(default_factory=dict, hash=False)   # driver-specific facts (kernel driver, ids, ...)

    def __post_init__(self) -> None:
        object.__setattr__(self, "uuid", _uuid(self.uuid, "uuid"))
        _check_host(self.host, "host")
        _check_device_type(self.device_type, "device_type")
        if self.address is not None:
            try:
                object.__setattr__(self, "address", normalize_pci_address(self.address))
            except ValueError as exc:
                raise ValueError(f"address: {exc}") from None
        for name in ("vendor", "product"):
            _text(getattr(self, name), name, MAX_TEXT, empty=True)
        object.__setattr__(self, "acc_capability", freeze_tree(self.acc_capability, "acc_capability"))
        object.__setattr__(self, "details", freeze_tree(self.details, "details"))
        _integer(self.num, "num", 1, MAX_NUM)
        _integer(self.remote, "remote", 0, 1)
        for name in ("setup_required", "reboot_required"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, not {getattr(self, name)!r}")
        if self.health not in HEALTH_STATES:
            raise ValueError(f"health must be {HEALTHY!r} or {UNHEALTHY!r}, not {self.health!r}")
        _text(self.health_reason, "health_reason", MAX_REASON, empty=True)
        if self.health == UNHEALTHY and not self.health_reason:
            raise ValueError("health_reason must say why a device is Unhealthy")
        if self.numa_node is not None:
            _integer(self.numa_node, "numa_node", 0, 4095)
        if not isinstance(self.driver, str) or not _DRIVER.match(self.driver):
            raise ValueError(f"driver must be a short lower-case name like 'pci', not {self.driver!r}")


def to_seed_json(device: Device) -> dict[str, Any]:
    """The device's entry of `GET /hardware`: the seed's keys as written, ours under `teebus`."""
    return {
        "uuid": device.uuid,
        "acc_specs": {
            "remote": device.remote,
            "num": device.num,
            "device_type": device.device_type,
            "acc_capability": thaw_tree(device.acc_capability),
        },
        "acc_status": {
            "setup_required": device.setup_required,
            "reboot_equired": device.reboot_required,   # sic: the seed's spelling
        },
        "teebus": {
            "host": device.host,
            "address": device.address,
            "vendor": device.vendor,
            "product": device.product,
            "health": device.health,
            "health_reason": device.health_reason,
            "numa_node": device.numa_node,
            "driver": device.driver,
            "details": thaw_tree(device.details),
        },
    }


def hardware_document(devices: Iterable[Device]) -> dict[str, Any]:
    """The body of `GET /hardware`: `{"hardware": [entry, ...]}` in the order given."""
    entries = [to_seed_json(device) for device in devices]
    if len(entries) > MAX_DEVICES:
        raise ValueError(f"a hardware document holds at most {MAX_DEVICES} devices, not {len(entries)}")
    return {"hardware": entries}


_TOP_KEYS = frozenset({"uuid", "acc_specs", "acc_status", "teebus"})
_SPEC_KEYS = frozenset({"remote", "num", "device_type", "acc_capability"})
_STATUS_KEYS = frozenset({"setup_required", "reboot_equired", "reboot_required"})
_TEEBUS_KEYS = frozenset({"host", "address", "vendor", "product", "health", "health_reason",
                          "numa_node", "driver", "details"})


def from_seed_json(value: Any, *, host: str | None = None, driver: str = "external",
                   where: str = "") -> Device:
    """A Device from one `GET /hardware` entry, validated. `host`, when given, is the host the
    entry is taken for (an agent passes its own): an entry naming another host is refused.
    Without `teebus`, the device is Healthy and `driver` names who reported it."""
    prefix = f"{where}." if where else ""
    top = _mapping(value, where or "hardware entry", _TOP_KEYS)
    for required in ("uuid", "acc_specs"):
        if required not in top:
            raise ValueError(f"{prefix}{required} is missing")
    specs = _mapping(top["acc_specs"], f"{prefix}acc_specs", _SPEC_KEYS)
    if "device_type" not in specs:
        raise ValueError(f"{prefix}acc_specs.device_type is missing")
    status = _mapping(top.get("acc_status", {}), f"{prefix}acc_status", _STATUS_KEYS)
    reboot = _seed_reboot(status, f"{prefix}acc_status")
    ours = _mapping(top.get("teebus", {}), f"{prefix}teebus", _TEEBUS_KEYS)

    stated_host = ours.get("host")
    if host is None and stated_host is None:
        raise ValueError(f"{prefix}teebus.host is missing and no host was given")
    if host is not None and stated_host is not None and _host_key(stated_host) != _host_key(host):
        raise ValueError(f"{prefix}teebus.host {str(stated_host)[:64]!r} is not this host ({host!r})")
    fields = {
        "uuid": top["uuid"],
        "host": host if host is not None else stated_host,
        "device_type": specs["device_type"],
        "acc_capability": specs.get("acc_capability", {}),
        "num": specs.get("num", 1),
        "remote": specs.get("remote", 0),
        "setup_required": status.get("setup_required", False),
        "reboot_required": reboot,
        "address": ours.get("address"),
        "vendor": ours.get("vendor", ""),
        "product": ours.get("product", ""),
        "health": ours.get("health", HEALTHY),
        "health_reason": ours.get("health_reason", ""),
        "numa_node": ours.get("numa_node"),
        "driver": ours.get("driver", driver),
        "details": ours.get("details", {}),
    }
    # remote is 0/1 in the seed; accept JSON booleans for it too
    if isinstance(fields["remote"], bool):
        fields["remote"] = int(fields["remote"])
    try:
        return Device(**fields)
    except ValueError as exc:
        raise ValueError(f"{prefix}{_seed_path(str(exc))}") from None


def devices_from_document(value: Any, *, host: str | None = None, driver: str = "external") -> list[Device]:
    """Every device of a `{"hardware": [...]}` document (an external driver's answer), validated;
    errors name the entry (`hardware[2].acc_specs.num ...`)."""
    document = _mapping(value, "hardware document", frozenset({"hardware"}))
    entries = document.get("hardware")
    if not isinstance(entries, list):
        raise ValueError("hardware must be a list of devices")
    if len(entries) > MAX_DEVICES:
        raise ValueError(f"hardware holds at most {MAX_DEVICES} devices, not {len(entries)}")
    devices = [from_seed_json(entry, host=host, driver=driver, where=f"hardware[{index}]")
               for index, entry in enumerate(entries)]
    seen: dict[str, int] = {}
    for index, device in enumerate(devices):
        if device.uuid in seen:
            raise ValueError(f"hardware[{index}].uuid {device.uuid} repeats hardware[{seen[device.uuid]}]")
        seen[device.uuid] = index
    return devices


# -- JSON-like trees (acc_capability, details) ------------------------------------------------

def freeze_tree(value: Any, name: str) -> Tree:
    """A read-only copy of a JSON-like mapping, validated and bounded (depth, items, sizes):
    str keys; values None, bool, int, finite float, str, lists of those, or mappings."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a mapping of JSON values, not {type(value).__name__}")
    budget = [MAX_TREE_ITEMS + 1]   # the top mapping is free
    return _freeze(value, name, 1, budget)


def _freeze(value: Any, path: str, depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError(f"{path.split('.')[0]} holds more than {MAX_TREE_ITEMS} values")
    if isinstance(value, Mapping):
        if depth > MAX_TREE_DEPTH:
            raise ValueError(f"{path} nests deeper than {MAX_TREE_DEPTH} levels")
        frozen = {}
        for key, item in value.items():
            if not isinstance(key, str) or not key or len(key) > MAX_KEY:
                raise ValueError(f"{path} has a key that is not a string of 1 to {MAX_KEY} characters: "
                                 f"{str(key)[:MAX_KEY]!r}")
            frozen[key] = _freeze(item, f"{path}.{key}", depth + 1, budget)
        return MappingProxyType(frozen)
    if value is None or isinstance(value, (bool, int)):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2 ** 63:
            raise ValueError(f"{path} is out of range: {value}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path} must be a finite number, not {value}")
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise ValueError(f"{path} is longer than {MAX_TEXT} characters")
        return value
    if isinstance(value, (list, tuple)):
        if depth > MAX_TREE_DEPTH:
            raise ValueError(f"{path} nests deeper than {MAX_TREE_DEPTH} levels")
        items = tuple(value)
        for index, item in enumerate(items):
            if isinstance(item, (Mapping, list, tuple)):
                raise ValueError(f"{path}[{index}] must be a plain value (lists hold no lists or mappings)")
        return tuple(_freeze(item, f"{path}[{index}]", depth + 1, budget) for index, item in enumerate(items))
    raise ValueError(f"{path} must be a mapping of JSON values, not {type(value).__name__}")


def thaw_tree(value: Any) -> Any:
    """A frozen tree as plain dicts and lists, for JSON."""
    if isinstance(value, Mapping):
        return {key: thaw_tree(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [thaw_tree(item) for item in value]
    return value


# -- field checks ---------------------------------------------------------------------------

_SEED_PATHS = {"num": "acc_specs.num", "remote": "acc_specs.remote", "device_type": "acc_specs.device_type",
               "acc_capability": "acc_specs.acc_capability", "setup_required": "acc_status.setup_required",
               "reboot_required": "acc_status.reboot_equired", "uuid": "uuid"}
_FIELD_NAME = re.compile(r"([a-z_]*)(.*)", re.S)


def _seed_path(message: str) -> str:
    """Device's message for a field, with the field named where the seed's JSON has it."""
    name, rest = _FIELD_NAME.match(message).groups()
    if name in _SEED_PATHS:
        return f"{_SEED_PATHS[name]}{rest}"
    if name in _TEEBUS_KEYS:
        return f"teebus.{message}"
    return message


def _seed_reboot(status: Mapping[str, Any], path: str) -> Any:
    values = [status[key] for key in ("reboot_equired", "reboot_required") if key in status]
    if len(values) == 2 and values[0] != values[1]:
        raise ValueError(f"{path}.reboot_equired and {path}.reboot_required disagree")
    return values[0] if values else False


def _mapping(value: Any, path: str, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{path} must be a JSON object, not {type(value).__name__}")
    unknown = sorted(str(key)[:MAX_KEY] for key in value if key not in allowed)
    if unknown:
        raise ValueError(f"{path} has unknown fields: {', '.join(unknown[:5])} "
                         f"(known: {', '.join(sorted(allowed))})")
    return value


def _uuid(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _UUID.match(value):
        raise ValueError(f"{name} must be a uuid like 8e45a2ea-5364-4b0d-a252-bf8becaa606e, "
                         f"not {str(value)[:40]!r}")
    return value.lower()


def _host_key(value: Any) -> str:
    return value.lower() if isinstance(value, str) else repr(value)


def _check_host(value: Any, name: str) -> None:
    if not isinstance(value, str) or not _HOST.match(value):
        raise ValueError(f"{name} must be a host name of 1 to 253 characters without spaces, "
                         f"not {str(value)[:64]!r}")


def _check_device_type(value: Any, name: str) -> None:
    if not isinstance(value, str) or not _DEVICE_TYPE.match(value):
        raise ValueError(f"{name} must be an upper-case name like GPU or FPGA, not {str(value)[:40]!r}")


def _text(value: Any, name: str, limit: int, *, empty: bool) -> None:
    if not isinstance(value, str) or len(value) > limit or (not empty and not value):
        raise ValueError(f"{name} must be a string of at most {limit} characters")


def _integer(value: Any, name: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, not {str(value)[:40]!r}")
