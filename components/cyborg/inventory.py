"""The `inventory` driver: devices listed in a file, for hosts where no driver can find them (the
role of Cyborg's `fake_driver`) and for hardware that no probe reaches.

The file is TOML (`.toml`) or JSON (`.json`), a list of devices under `device`:

    [[device]]
    key = "fpga-slot-0"          # names the device on this host; or address = "0000:3b:00.0";
                                 # or uuid = "..." to keep a uuid given elsewhere
    device_type = "FPGA"         # required: GPU, FPGA, AICHIP, QAT, NIC, SSD, or another upper-case name
    vendor = "xilinx"            # optional from here on
    product = "u250"
    num = 1
    remote = 0
    setup_required = false
    reboot_required = false      # the seed's reboot_equired is accepted too
    health = "Healthy"           # or "Unhealthy" with a health_reason
    numa_node = 0
    acc_capability = { family = "xilinx", lut = 1728000 }
    details = { slot = "PCIe 3" }

    JSON: {"device": [{"key": "fpga-slot-0", "device_type": "FPGA", ...}]}

The uuid is derived from the host and the address or key (`hardware.device_uuid`), so it is the
same on every load; `key` is kept in `details.inventory_key`. Errors are InventoryErrors (a
ValueError) naming the file, the entry and the field.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Mapping

from components.cyborg.hardware import MAX_DEVICES, MAX_TEXT, Device, device_uuid

DRIVER = "inventory"
MAX_FILE_BYTES = 1 << 20
_FIELDS = frozenset({"key", "uuid", "address", "device_type", "vendor", "product", "num", "remote",
                     "setup_required", "reboot_required", "reboot_equired", "health", "health_reason",
                     "numa_node", "acc_capability", "details"})
_PASSED_ON = ("device_type", "address", "vendor", "product", "num", "remote", "setup_required",
              "health", "health_reason", "numa_node", "acc_capability")


class InventoryError(ValueError):
    """The inventory file is missing, unreadable, or not a valid list of devices."""


def load(path: Path | str, *, host: str) -> list[Device]:
    """The devices of the inventory file at `path`, on `host`, in the file's order."""
    path = Path(path)
    document = _parse(path)
    entries = document.get("device", [])
    unknown = sorted(str(key)[:64] for key in document if key != "device")
    if unknown:
        raise InventoryError(f"inventory {path}: unknown top-level keys {', '.join(unknown[:5])} "
                             f"(devices go in a list named device)")
    if not isinstance(entries, list):
        raise InventoryError(f"inventory {path}: device must be a list of devices")
    if len(entries) > MAX_DEVICES:
        raise InventoryError(f"inventory {path}: {len(entries)} devices, at most {MAX_DEVICES}")
    devices: list[Device] = []
    seen: dict[str, str] = {}
    for index, entry in enumerate(entries):
        where = f"device[{index}]"
        if isinstance(entry, Mapping) and isinstance(entry.get("key"), str):
            where += f" ({entry['key'][:64]!r})"
        try:
            device = entry_device(entry, host=host)
        except ValueError as exc:
            raise InventoryError(f"inventory {path}: {where}: {exc}") from None
        if device.uuid in seen:
            raise InventoryError(f"inventory {path}: {where} is the same device (uuid {device.uuid}) "
                                 f"as {seen[device.uuid]}")
        seen[device.uuid] = where
        devices.append(device)
    return devices


def entry_device(entry: Any, *, host: str) -> Device:
    """One inventory entry as a Device; ValueError names the field."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"must be a table of fields, not {type(entry).__name__}")
    unknown = sorted(str(key)[:64] for key in entry if key not in _FIELDS)
    if unknown:
        raise ValueError(f"unknown fields {', '.join(unknown[:5])} (known: {', '.join(sorted(_FIELDS))})")
    if "device_type" not in entry:
        raise ValueError("device_type is missing")
    reboot = [entry[name] for name in ("reboot_required", "reboot_equired") if name in entry]
    if len(reboot) == 2 and reboot[0] != reboot[1]:
        raise ValueError("reboot_required and reboot_equired disagree")
    key = entry.get("key")
    if key is not None and (not isinstance(key, str) or not key or len(key) > MAX_TEXT):
        raise ValueError(f"key must be a non-empty string of at most {MAX_TEXT} characters")
    details = entry.get("details", {})
    if key is not None:
        if not isinstance(details, Mapping):
            raise ValueError(f"details must be a table, not {type(details).__name__}")
        details = {**details, "inventory_key": key}
    fields = {name: entry[name] for name in _PASSED_ON if name in entry}
    uuid = entry.get("uuid")
    if uuid is None:
        anchor = entry.get("address") or key
        if anchor is None:
            raise ValueError("needs an address, a key or a uuid to name the device")
        if not isinstance(anchor, str):
            raise ValueError(f"address must be a PCI address string, not {type(anchor).__name__}")
        try:
            uuid = device_uuid(host, anchor)
        except ValueError as exc:
            raise ValueError(f"host: {exc}") from None
    return Device(uuid=uuid, host=host, reboot_required=reboot[0] if reboot else False,
                  driver=DRIVER, details=details, **fields)


def _parse(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise InventoryError(f"inventory {path}: the name must end in .toml or .json")
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise InventoryError(f"inventory {path} does not exist") from None
    except OSError as exc:
        raise InventoryError(f"inventory {path} cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE_BYTES:
        raise InventoryError(f"inventory {path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
        document = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except RecursionError:
        raise InventoryError(f"inventory {path} nests too deeply") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise InventoryError(f"inventory {path} is not valid {suffix[1:].upper()}: {exc}") from None
    if not isinstance(document, dict):
        raise InventoryError(f"inventory {path}: the top level must be a table with a device list")
    return document
