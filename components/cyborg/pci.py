"""The `pci` driver: accelerators found in the kernel's sysfs (`<root>/bus/pci/devices/*`).

Classification (ids first, since they are specific; then the 16-bit class code):

| match                                                    | device_type | acc_capability.family    |
| -------------------------------------------------------- | ----------- | ------------------------ |
| Intel QAT ids (8086:0435 37c8 19e2 18ee 6f54 18a0 4940 4942 4944 4946 and their VFs), any class | QAT | dh895xcc, c62x, ... |
| Huawei Ascend 19e5:d100 d500 d801 d802, any class        | AICHIP      | ascend                   |
| Intel FPGA PAC ids (8086:09c4 0b2b 0b30 bcc0 bcce and VFs), any class | FPGA | intel             |
| class 0x0300 VGA, 0x0302 3D, 0x0380 display; vendor 10de, 1002 or 8086 | GPU | nvidia, amd, intel   |
| class 0x1200 processing accelerator, vendor 10ee, 1172, 1bd4 | FPGA    | xilinx, altera, inspur   |
| class 0x1200, vendor 1da3 (Habana)                       | AICHIP      | habana                   |
| class 0x1200, any other vendor                           | AICHIP      | processing-accelerator   |
| class 0x1080 encryption controller, vendor 8086          | QAT         | intel-encryption         |
| class 0x0108 NVMe                                        | SSD         | (interface: nvme)        |
| class 0x02xx network controller                          | NIC         | (link: ethernet, ...)    |

Everything else (bridges, USB, SATA, other vendors' VGA such as a BMC's) is not reported.

Reading is bounded and never raises: at most `MAX_SCANNED` entries are looked at and `limit`
devices reported, an attribute is read once, at most `MAX_ATTRIBUTE_BYTES`, only if it is a
regular file, and an attribute that cannot be read is left out (class, vendor and device fall
back to `modalias`). A device whose class or (for GPUs) vendor is unknown cannot be classified
and is skipped; any other missing attribute only leaves a fact out. No subprocess, no pci.ids.

Health, from cheap reads (each failing check adds to `health_reason`):
* the device directory vanished while it was being read (hot-unplug, surprise removal);
* `config` reads vendor 0xffff: the device no longer answers (it "fell off the bus"). Skipped
  when the device is runtime-suspended or in D3cold, because reading config space wakes it;
* `power_state` says `error`;
* a driver is bound but `enable` is 0: drivers enable the device when they probe it, except
  vfio-pci and pci-stub, which enable it only when a user opens it;
* `driver_override` names a driver but that driver is not the one bound.
An unbound device is not unhealthy: nothing is wrong with it, it is only not ready, so it is
reported with `setup_required` true (the seed's meaning: hardware that may not be ready to use).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

from components.cyborg.hardware import HEALTHY, UNHEALTHY, Device, device_uuid

DRIVER = "pci"
MAX_DEVICES = 1024            # devices reported by one discovery
MAX_SCANNED = 8192            # entries of bus/pci/devices looked at
MAX_ATTRIBUTE_BYTES = 256     # an attribute longer than this is treated as unreadable
PARKING_DRIVERS = frozenset({"vfio-pci", "pci-stub", "pci_stub"})   # bind without enabling

_BDF_NAME = re.compile(r"[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]\Z")
_MODALIAS = re.compile(r"pci:v([0-9A-F]{8})d([0-9A-F]{8})sv[0-9A-F]{8}sd[0-9A-F]{8}"
                       r"bc([0-9A-F]{2})sc([0-9A-F]{2})i([0-9A-F]{2})", re.I)

INTEL = 0x8086
QAT_DEVICES = {   # Linux drivers/crypto/intel/qat (adf_accel_devices.h) and the out-of-tree QAT driver
    0x0435: ("dh895xcc", "pf"), 0x0443: ("dh895xcc", "vf"),
    0x37C8: ("c62x", "pf"), 0x37C9: ("c62x", "vf"),
    0x19E2: ("c3xxx", "pf"), 0x19E3: ("c3xxx", "vf"),
    0x18EE: ("200xx", "pf"), 0x18EF: ("200xx", "vf"),
    0x6F54: ("d15xx", "pf"), 0x6F55: ("d15xx", "vf"),
    0x18A0: ("c4xxx", "pf"), 0x18A1: ("c4xxx", "vf"),
    0x4940: ("4xxx", "pf"), 0x4941: ("4xxx", "vf"),
    0x4942: ("401xx", "pf"), 0x4943: ("401xx", "vf"),
    0x4944: ("402xx", "pf"), 0x4945: ("402xx", "vf"),
    0x4946: ("420xx", "pf"), 0x4947: ("420xx", "vf"),
}
ASCEND = (0x19E5, frozenset({0xD100, 0xD500, 0xD801, 0xD802}))
INTEL_FPGA_DEVICES = frozenset({0x09C4, 0x09C5, 0x0B2B, 0x0B2C, 0x0B30, 0x0B31, 0xBCC0, 0xBCC1,
                                0xBCCE, 0xBCCF})
GPU_CLASSES = {0x0300: "vga", 0x0302: "3d-controller", 0x0380: "display"}
GPU_VENDORS = {0x10DE: "nvidia", 0x1002: "amd", 0x8086: "intel"}
FPGA_VENDORS = {0x10EE: "xilinx", 0x1172: "altera", 0x1BD4: "inspur"}
AI_VENDORS = {0x1DA3: "habana"}
NIC_LINKS = {0x00: "ethernet", 0x07: "infiniband", 0x08: "fabric"}
VENDOR_NAMES = {**GPU_VENDORS, **FPGA_VENDORS, **AI_VENDORS, 0x19E5: "huawei", 0x15B3: "mellanox",
                0x1AF4: "virtio", 0x14E4: "broadcom", 0x144D: "samsung"}


def classify(pci_class: int | None, vendor: int | None, device: int | None) -> tuple[str, dict[str, Any]] | None:
    """(device_type, acc_capability) for a PCI function, or None when it is no accelerator we
    report. `pci_class` is the 24-bit class code (class, subclass, programming interface)."""
    if vendor == INTEL and device in QAT_DEVICES:
        family, function = QAT_DEVICES[device]
        return "QAT", {"family": family, "services": ("crypto", "compression")}
    if vendor == ASCEND[0] and device in ASCEND[1]:
        return "AICHIP", {"family": "ascend"}
    if vendor == INTEL and device in INTEL_FPGA_DEVICES:
        return "FPGA", {"family": "intel"}
    if pci_class is None:
        return None
    base = pci_class >> 8
    if base in GPU_CLASSES and vendor in GPU_VENDORS:
        return "GPU", {"family": GPU_VENDORS[vendor], "kind": GPU_CLASSES[base]}
    if base == 0x1200 and vendor is not None:
        if vendor in FPGA_VENDORS:
            return "FPGA", {"family": FPGA_VENDORS[vendor]}
        return "AICHIP", {"family": AI_VENDORS.get(vendor, "processing-accelerator")}
    if base == 0x1080 and vendor == INTEL:
        return "QAT", {"family": "intel-encryption", "services": ("crypto",)}
    if base == 0x0108:
        return "SSD", {"interface": "nvme"}
    if base >> 8 == 0x02:
        return "NIC", {"link": NIC_LINKS.get(base & 0xFF, "network")}
    return None


def discover(root: Path = Path("/sys"), *, host: str, limit: int = MAX_DEVICES,
             probe_config: bool = True) -> list[Device]:
    """The accelerators under `root` (the sysfs mount, or a tree laid out like it), sorted by
    address; at most `limit`. A missing or unreadable tree is no devices, never an error."""
    devices_dir = Path(root) / "bus" / "pci" / "devices"
    try:
        names = sorted(name for name in os.listdir(devices_dir) if _BDF_NAME.match(name))
    except OSError:
        return []
    found: list[Device] = []
    for name in names[:MAX_SCANNED]:
        if len(found) >= limit:
            break
        device = probe(devices_dir / name, host=host, probe_config=probe_config)
        if device is not None:
            found.append(device)
    return found


def probe(path: Path, *, host: str, probe_config: bool = True) -> Device | None:
    """One PCI function's Device (with its health), or None when it is no accelerator we report
    or cannot be classified. `path` is its sysfs directory, named by its address."""
    alias = _modalias(_read(path / "modalias"))
    pci_class = _hex(_read(path / "class"))
    vendor = _hex(_read(path / "vendor"))
    device_id = _hex(_read(path / "device"))
    if alias is not None:
        pci_class = alias[2] if pci_class is None else pci_class
        vendor = alias[0] if vendor is None else vendor
        device_id = alias[1] if device_id is None else device_id
    classified = classify(pci_class, vendor, device_id)
    if classified is None:
        return None
    device_type, capability = classified

    facts = _facts(path)
    physfn = facts.get("physfn")
    capability["function"] = "vf" if physfn is not None else "pf"
    if device_type == "QAT" and device_id in QAT_DEVICES and vendor == INTEL:
        capability["function"] = QAT_DEVICES[device_id][1]
    details: dict[str, Any] = {"pci_class": f"0x{pci_class:06x}" if pci_class is not None else None}
    if vendor in VENDOR_NAMES:
        details["vendor_name"] = VENDOR_NAMES[vendor]
    details.update(facts)
    reasons = _health(path, facts, probe_config)
    address = path.name
    return Device(
        uuid=device_uuid(host, address),
        host=host,
        device_type=device_type,
        address=address,
        vendor=f"{vendor:04x}" if vendor is not None else "",
        product=f"{device_id:04x}" if device_id is not None else "",
        acc_capability=capability,
        setup_required=facts.get("kernel_driver") is None,
        health=UNHEALTHY if reasons else HEALTHY,
        health_reason="; ".join(reasons),
        numa_node=facts.get("numa_node"),
        driver=DRIVER,
        details={key: value for key, value in details.items() if value is not None},
    )


def _facts(path: Path) -> dict[str, Any]:
    """What sysfs says about the function beyond its identity; unknown facts are None."""
    subsystem_vendor = _hex(_read(path / "subsystem_vendor"))
    subsystem_device = _hex(_read(path / "subsystem_device"))
    numa = _int(_read(path / "numa_node"))
    override = _read(path / "driver_override")
    facts: dict[str, Any] = {
        "kernel_driver": _link_name(path / "driver"),
        "subsystem": (f"{subsystem_vendor:04x}:{subsystem_device:04x}"
                      if subsystem_vendor is not None and subsystem_device is not None else None),
        "revision": _read(path / "revision"),
        "enable": _int(_read(path / "enable")),
        "driver_override": None if override in (None, "", "(null)") else override,
        "power_state": _read(path / "power_state"),
        "runtime_status": _read(path / "power" / "runtime_status"),
        "physfn": _link_name(path / "physfn"),
        "sriov_numvfs": _int(_read(path / "sriov_numvfs")),
        "local_cpulist": _read(path / "local_cpulist"),
        "link_speed": _read(path / "current_link_speed"),
        "link_width": _int(_read(path / "current_link_width")),
        "max_link_speed": _read(path / "max_link_speed"),
        "max_link_width": _int(_read(path / "max_link_width")),
        "numa_node": numa if numa is not None and 0 <= numa <= 4095 else None,   # -1: no NUMA
    }
    return facts


def _health(path: Path, facts: dict[str, Any], probe_config: bool) -> list[str]:
    """Why the function is unhealthy (empty when it is healthy); see the module's docstring."""
    reasons = []
    if not path.is_dir():
        return ["the device vanished from sysfs during discovery"]
    asleep = facts.get("runtime_status") == "suspended" or facts.get("power_state") == "D3cold"
    if probe_config and not asleep:
        header = _read_bytes(path / "config", 4)
        if header is not None and len(header) >= 2 and header[:2] == b"\xff\xff":
            reasons.append("the device does not answer: config space reads vendor 0xffff "
                           "(fell off the bus)")
    if facts.get("power_state") == "error":
        reasons.append("power_state is error")
    bound = facts.get("kernel_driver")
    if bound is not None and bound not in PARKING_DRIVERS and facts.get("enable") == 0:
        reasons.append(f"driver {bound} is bound but the device is disabled (enable is 0)")
    wanted = facts.get("driver_override")
    if wanted is not None and bound != wanted:
        reasons.append(f"driver_override asks for {wanted} but "
                       + (f"{bound} is bound" if bound else "no driver is bound"))
    return reasons


# -- bounded sysfs reads -----------------------------------------------------------------------

def _read_bytes(path: Path, limit: int) -> bytes | None:
    """Up to `limit` bytes of a regular file, None when it cannot be read (missing, not a regular
    file, permission, I/O error). Non-blocking open: a FIFO in a fake tree cannot hang us."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def _read(path: Path) -> str | None:
    """A text attribute, stripped; None when unreadable, longer than the bound, or not ASCII."""
    data = _read_bytes(path, MAX_ATTRIBUTE_BYTES + 1)
    if data is None or len(data) > MAX_ATTRIBUTE_BYTES:
        return None
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def _link_name(path: Path) -> str | None:
    """The last component of a symlink's target (`driver` -> ../../../bus/pci/drivers/nvidia)."""
    try:
        target = os.readlink(path)
    except OSError:
        return None
    name = os.path.basename(target.rstrip("/"))
    return name[:64] or None


def _hex(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 16) if len(text) <= 10 else None
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
    if text is None or len(text) > 12:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _modalias(text: str | None) -> tuple[int, int, int] | None:
    """(vendor, device, 24-bit class) from `modalias`, the fallback when those files fail."""
    match = _MODALIAS.match(text or "")
    if match is None:
        return None
    vendor, device, base, sub, interface = match.groups()
    return int(vendor, 16) & 0xFFFF, int(device, 16) & 0xFFFF, int(base + sub + interface, 16)
