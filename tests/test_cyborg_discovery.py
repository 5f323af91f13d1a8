"""Cyborg's discovery layer: the hardware model and the seed's JSON, the pci, nvidia and inventory
drivers, and health hysteresis. No bus, no HTTP.

The pci driver reads a sysfs tree built here as the kernel lays it out: the functions live under
`devices/pci<domain>:<bus>/...` (a function behind a bridge one level deeper), `bus/pci/devices/<bdf>`
is a symlink to that directory, and `driver` is a symlink to `../../../bus/pci/drivers/<name>`
relative to it. The machine's real /sys is read as well, whatever it holds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid as uuidlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from components.cyborg import health, inventory, nvidia, pci
from components.cyborg.hardware import (DEVICE_TYPES, HEALTHY, MAX_DEVICES, MAX_TREE_ITEMS, UNHEALTHY,
                                        Device, device_uuid, devices_from_document, from_seed_json,
                                        hardware_document, normalize_pci_address, to_seed_json)
from components.cyborg.health import HealthBook, HealthPolicy, Transition

HOST = "compute-1"


# -- a sysfs tree ------------------------------------------------------------------------------

def add_function(root: Path, bdf: str, *, pci_class: str, vendor: str, device: str,
                 driver: str | None = None, numa: str = "0", enable: str = "1",
                 subsystem: tuple[str, str] = ("0x0000", "0x0000"), parent: str | None = None,
                 config: bytes | None = None, files: dict[str, str] | None = None) -> Path:
    """A PCI function as sysfs shows it; `parent` is the bridge it sits behind (one level deeper)."""
    domain_bus = f"pci{bdf[:4]}:{(parent or bdf)[5:7]}"
    relative = Path("devices") / domain_bus / (f"{parent}/{bdf}" if parent else bdf)
    real = root / relative
    real.mkdir(parents=True)
    attributes = {"class": pci_class, "vendor": vendor, "device": device,
                  "subsystem_vendor": subsystem[0], "subsystem_device": subsystem[1],
                  "numa_node": numa, "enable": enable, "revision": "0xa1",
                  "driver_override": "(null)", "local_cpulist": "0-15", "power_state": "D0",
                  "modalias": (f"pci:v0000{vendor[2:].upper()}d0000{device[2:].upper()}"
                               f"sv0000{subsystem[0][2:].upper()}sd0000{subsystem[1][2:].upper()}"
                               f"bc{pci_class[2:4].upper()}sc{pci_class[4:6].upper()}i{pci_class[6:8].upper()}")}
    attributes.update(files or {})
    for name, value in attributes.items():
        (real / name).write_text(value + "\n")
    (real / "power").mkdir()
    (real / "power" / "runtime_status").write_text("active\n")
    if config is None:
        config = int(vendor, 16).to_bytes(2, "little") + int(device, 16).to_bytes(2, "little") + bytes(60)
    (real / "config").write_bytes(config)
    depth = len(relative.parts)
    if driver is not None:
        (root / "bus" / "pci" / "drivers" / driver).mkdir(parents=True, exist_ok=True)
        (real / "driver").symlink_to("../" * depth + f"bus/pci/drivers/{driver}")
    (real / "subsystem").symlink_to("../" * depth + "bus/pci")
    links = root / "bus" / "pci" / "devices"
    links.mkdir(parents=True, exist_ok=True)
    (links / bdf).symlink_to(f"../../../{relative}")
    return real


GPU, FPGA, QAT, QAT4, NIC, NVME, ASCEND = ("0000:3b:00.0", "0000:5e:00.0", "0000:60:00.0", "0000:61:00.0",
                                          "0000:86:00.0", "0000:d8:00.0", "0000:af:00.0")
BRIDGE, BMC_VGA, USB = "0000:3a:00.0", "0000:03:00.0", "0000:00:14.0"


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """A host with a GPU behind a bridge, an FPGA, two QATs, a NIC, an NVMe drive, an Ascend chip,
    and things that are not accelerators: the bridge, a BMC's VGA and a USB controller."""
    root = tmp_path / "sys"
    add_function(root, BRIDGE, pci_class="0x060400", vendor="0x8086", device="0x347a", driver="pcieport")
    add_function(root, GPU, pci_class="0x030200", vendor="0x10de", device="0x2330", driver="nvidia",
                 subsystem=("0x10de", "0x16c1"), parent=BRIDGE,
                 files={"current_link_speed": "16.0 GT/s PCIe", "current_link_width": "16",
                        "max_link_speed": "32.0 GT/s PCIe", "max_link_width": "16"})
    add_function(root, FPGA, pci_class="0x120000", vendor="0x10ee", device="0x5000", driver="xclmgmt", numa="1")
    add_function(root, QAT, pci_class="0x108000", vendor="0x8086", device="0x37c8", driver="c6xx", numa="0")
    add_function(root, QAT4, pci_class="0x0b4000", vendor="0x8086", device="0x4940", driver="4xxx", numa="1")
    add_function(root, NIC, pci_class="0x020000", vendor="0x15b3", device="0x101d", driver="mlx5_core", numa="1")
    add_function(root, NVME, pci_class="0x010802", vendor="0x144d", device="0xa80a", driver="nvme", numa="1")
    add_function(root, ASCEND, pci_class="0x120000", vendor="0x19e5", device="0xd100", numa="-1")
    add_function(root, BMC_VGA, pci_class="0x030000", vendor="0x1a03", device="0x2000", driver="ast")
    add_function(root, USB, pci_class="0x0c0330", vendor="0x8086", device="0xa1af", driver="xhci_hcd")
    return root


def by_address(devices: list[Device]) -> dict[str, Device]:
    return {device.address: device for device in devices}


# -- pci ---------------------------------------------------------------------------------------

def test_pci_classifies_a_kernel_laid_out_tree(sysfs: Path) -> None:
    found = by_address(pci.discover(sysfs, host=HOST))
    assert {address: device.device_type for address, device in found.items()} == {
        GPU: "GPU", FPGA: "FPGA", QAT: "QAT", QAT4: "QAT", NIC: "NIC", NVME: "SSD", ASCEND: "AICHIP"}
    gpu = found[GPU]
    assert (gpu.vendor, gpu.product, gpu.driver, gpu.numa_node) == ("10de", "2330", "pci", 0)
    assert dict(gpu.acc_capability) == {"family": "nvidia", "kind": "3d-controller", "function": "pf"}
    assert gpu.details["kernel_driver"] == "nvidia"
    assert gpu.details["subsystem"] == "10de:16c1"
    assert gpu.details["pci_class"] == "0x030200"
    assert (gpu.details["link_width"], gpu.details["max_link_speed"]) == (16, "32.0 GT/s PCIe")
    assert gpu.health == HEALTHY and gpu.health_reason == ""
    assert not gpu.setup_required and not gpu.reboot_required
    assert found[FPGA].acc_capability["family"] == "xilinx" and found[FPGA].numa_node == 1
    assert dict(found[QAT].acc_capability) == {"family": "c62x", "services": ("crypto", "compression"),
                                               "function": "pf"}
    assert found[QAT4].acc_capability["family"] == "4xxx"       # QAT by id, whatever its class
    assert found[NIC].acc_capability["link"] == "ethernet"
    assert found[NVME].acc_capability["interface"] == "nvme"
    ascend = found[ASCEND]
    assert ascend.acc_capability["family"] == "ascend"
    assert ascend.numa_node is None                              # sysfs says -1: no NUMA
    assert ascend.setup_required and ascend.health == HEALTHY     # no driver bound: not ready, not broken
    assert [device.address for device in pci.discover(sysfs, host=HOST)] == sorted(found)


def test_classification_table() -> None:
    assert pci.classify(0x030000, 0x1002, 0x73BF) == ("GPU", {"family": "amd", "kind": "vga"})
    assert pci.classify(0x038000, 0x8086, 0x0BD5)[0] == "GPU"
    assert pci.classify(0x030000, 0x1A03, 0x2000) is None        # a BMC's VGA is no accelerator
    assert pci.classify(0x120000, 0x1172, 0x5052)[1]["family"] == "altera"
    assert pci.classify(0x120000, 0x1BD4, 0x0001)[1]["family"] == "inspur"
    assert pci.classify(0x120000, 0x8086, 0x0B30) == ("FPGA", {"family": "intel"})
    assert pci.classify(0x120000, 0x1DA3, 0x1020) == ("AICHIP", {"family": "habana"})
    assert pci.classify(0x120000, 0x1234, 0x0001) == ("AICHIP", {"family": "processing-accelerator"})
    assert pci.classify(None, 0x8086, 0x37C9)[0] == "QAT"        # an id needs no class
    assert pci.classify(0x108000, 0x177D, 0x0011) is None        # not Intel: not QAT
    assert pci.classify(0x020700, 0x15B3, 0x1021) == ("NIC", {"link": "infiniband"})
    assert pci.classify(0x010601, 0x8086, 0xA182) is None        # SATA
    assert pci.classify(0x060400, 0x8086, 0x347A) is None        # bridge


def test_uuids_are_stable_across_runs_and_differ_across_hosts(sysfs: Path) -> None:
    first = [device.uuid for device in pci.discover(sysfs, host=HOST)]
    again = [device.uuid for device in pci.discover(sysfs, host=HOST)]
    elsewhere = [device.uuid for device in pci.discover(sysfs, host="compute-2")]
    assert first == again
    assert len(set(first)) == len(first)
    assert not set(first) & set(elsewhere)
    assert first[0] == device_uuid(HOST, GPU) == device_uuid("COMPUTE-1", "3b:00.0")
    assert uuidlib.UUID(first[0]).version == 5
    assert device_uuid(HOST, "00000000:3B:00.0") == device_uuid(HOST, GPU)    # NVML's form


def test_real_sysfs_of_this_machine_parses() -> None:
    host = socket.gethostname() or "localhost"
    devices = pci.discover(Path("/sys"), host=host)
    assert isinstance(devices, list)
    for device in devices:
        assert isinstance(device, Device)
        assert device.device_type in DEVICE_TYPES
        assert device.address is not None and device.host == host
        assert device.health in (HEALTHY, UNHEALTHY)
        assert isinstance(device.setup_required, bool)
        assert from_seed_json(json.loads(json.dumps(to_seed_json(device)))) == device
    assert [device.uuid for device in pci.discover(Path("/sys"), host=host)] == [d.uuid for d in devices]


def test_unreadable_and_missing_attributes_are_tolerated(sysfs: Path) -> None:
    real = sysfs / "devices" / "pci0000:5e" / FPGA
    (real / "numa_node").unlink()
    (real / "numa_node").mkdir()                                  # EISDIR on read
    (real / "enable").unlink()
    (real / "vendor").unlink()                                    # falls back on modalias
    (real / "subsystem_vendor").write_text("not hex\n")
    (real / "revision").write_text("x" * 5000)                    # over the bound
    (real / "local_cpulist").write_bytes(b"\xff\xfe\n")           # not ASCII
    (real / "power_state").unlink()
    os.mkfifo(real / "power_state")                               # must not block
    (real / "power" / "runtime_status").unlink()
    nic = sysfs / "devices" / "pci0000:86" / NIC
    (nic / "class").write_text("0x" + "0" * 400)                  # unreadable class -> modalias
    ghost = sysfs / "devices" / "pci0000:99" / "0000:99:00.0"
    ghost.mkdir(parents=True)                                     # no attributes at all: skipped
    (sysfs / "bus/pci/devices/0000:99:00.0").symlink_to("../../../devices/pci0000:99/0000:99:00.0")
    (sysfs / "bus/pci/devices/0000:9a:00.0").symlink_to("../../../devices/pci0000:9a/gone")  # dangling
    (sysfs / "bus/pci/devices/README").write_text("not a device\n")

    found = by_address(pci.discover(sysfs, host=HOST))
    fpga = found[FPGA]
    assert fpga.device_type == "FPGA" and fpga.vendor == "10ee"
    assert fpga.numa_node is None
    for absent in ("enable", "subsystem", "revision", "local_cpulist", "power_state", "runtime_status"):
        assert absent not in fpga.details
    assert fpga.health == HEALTHY
    assert found[NIC].device_type == "NIC" and found[NIC].details["pci_class"] == "0x020000"
    assert "0000:99:00.0" not in found and "0000:9a:00.0" not in found


def test_missing_sysfs_and_limit(tmp_path: Path, sysfs: Path) -> None:
    assert pci.discover(tmp_path / "nothing", host=HOST) == []
    assert [device.address for device in pci.discover(sysfs, host=HOST, limit=2)] == [GPU, FPGA]


def test_pci_health_checks(sysfs: Path) -> None:
    def attr(address: str, name: str, value: str | bytes) -> None:
        target = next((sysfs / "devices").glob(f"**/{address}")) / name
        target.write_bytes(value) if isinstance(value, bytes) else target.write_text(value + "\n")

    attr(GPU, "config", b"\xff" * 64)                              # fell off the bus
    attr(FPGA, "enable", "0")                                     # bound, yet disabled
    attr(QAT, "driver_override", "vfio-pci")                      # c6xx bound instead
    attr(NIC, "power_state", "error")
    found = by_address(pci.discover(sysfs, host=HOST))
    assert found[GPU].health == UNHEALTHY and "0xffff" in found[GPU].health_reason
    assert "xclmgmt is bound but the device is disabled" in found[FPGA].health_reason
    assert "driver_override asks for vfio-pci but c6xx is bound" in found[QAT].health_reason
    assert found[NIC].health_reason == "power_state is error"
    assert found[NVME].health == HEALTHY
    # a config space probe can be left out, and is when the device sleeps (reading would wake it)
    assert by_address(pci.discover(sysfs, host=HOST, probe_config=False))[GPU].health == HEALTHY
    attr(GPU, "power/runtime_status", "suspended")
    assert by_address(pci.discover(sysfs, host=HOST))[GPU].health == HEALTHY


def test_parking_drivers_leave_the_device_disabled(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    add_function(root, GPU, pci_class="0x030200", vendor="0x10de", device="0x2330", driver="vfio-pci", enable="0")
    add_function(root, FPGA, pci_class="0x120000", vendor="0x10ee", device="0x5000", enable="0",
                 files={"driver_override": "vfio-pci"})
    found = by_address(pci.discover(root, host=HOST))
    assert found[GPU].health == HEALTHY and not found[GPU].setup_required
    assert found[FPGA].setup_required
    assert found[FPGA].health_reason == "driver_override asks for vfio-pci but no driver is bound"


def test_a_device_vanishing_during_discovery_is_unhealthy(sysfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_facts = pci._facts

    def facts_then_unplug(path: Path):
        facts = real_facts(path)
        if path.name == NVME:
            shutil.rmtree(path.resolve())
        return facts

    monkeypatch.setattr(pci, "_facts", facts_then_unplug)
    nvme = by_address(pci.discover(sysfs, host=HOST))[NVME]
    assert nvme.health == UNHEALTHY
    assert nvme.health_reason == "the device vanished from sysfs during discovery"


# -- the seed's JSON ---------------------------------------------------------------------------

SEED_EXAMPLE = """
{
   "hardware":[
    {
      "uuid":"8e45a2ea-5364-4b0d-a252-bf8becaa606e",
      "acc_specs":
      {
         "remote":0,
         "num":1,
         "device_type":"CRYPTO",
         "acc_capability":
         {
            "num":2,
            "ipsec":
            {
               "aes":
               {
                  "3des":50,
                  "num":1
               }
            }
         }
       },
       "acc_status":
       {
         "setup_required":true,
         "reboot_equired":false
       }
     }]
}
"""


def test_the_seeds_example_parses_and_renders_back() -> None:
    document = json.loads(SEED_EXAMPLE)
    [device] = devices_from_document(document, host=HOST)
    assert device.uuid == "8e45a2ea-5364-4b0d-a252-bf8becaa606e"
    assert device.device_type == "CRYPTO" and device.setup_required and not device.reboot_required
    assert device.acc_capability["ipsec"]["aes"]["3des"] == 50
    assert (device.host, device.driver, device.health) == (HOST, "external", HEALTHY)
    entry = to_seed_json(device)
    assert {key: entry[key] for key in ("uuid", "acc_specs", "acc_status")} == document["hardware"][0]
    assert entry["acc_status"] == {"setup_required": True, "reboot_equired": False}
    assert set(entry["teebus"]) == {"host", "address", "vendor", "product", "health", "health_reason",
                                    "numa_node", "driver", "details"}
    rendered = json.loads(json.dumps(hardware_document([device])))
    assert list(rendered) == ["hardware"] and rendered["hardware"][0] == entry
    assert devices_from_document(rendered, host=HOST) == [device]


def test_reboot_required_is_accepted_on_input() -> None:
    entry = json.loads(SEED_EXAMPLE)["hardware"][0]
    entry["acc_status"] = {"setup_required": False, "reboot_required": True}
    device = from_seed_json(entry, host=HOST)
    assert device.reboot_required
    assert to_seed_json(device)["acc_status"] == {"setup_required": False, "reboot_equired": True}
    entry["acc_status"] = {"reboot_required": True, "reboot_equired": False}
    with pytest.raises(ValueError, match=r"acc_status.reboot_equired and acc_status.reboot_required disagree"):
        from_seed_json(entry, host=HOST)


def test_full_entries_round_trip(sysfs: Path) -> None:
    for device in pci.discover(sysfs, host=HOST):
        assert from_seed_json(json.loads(json.dumps(to_seed_json(device)))) == device
        assert from_seed_json(to_seed_json(device), host=HOST.upper()).host == HOST.upper()


def seed_entry(**changes) -> dict:
    entry = json.loads(SEED_EXAMPLE)["hardware"][0]
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = entry
        for parent in parents:
            target = target.setdefault(parent, {})
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return entry


@pytest.mark.parametrize(("changes", "message"), [
    ({"uuid": KeyError}, r"^uuid is missing"),
    ({"uuid": "not-a-uuid"}, r"^uuid must be a uuid"),
    ({"acc_specs": KeyError}, r"^acc_specs is missing"),
    ({"acc_specs__device_type": KeyError}, r"^acc_specs.device_type is missing"),
    ({"acc_specs__device_type": "crypto"}, r"^acc_specs.device_type must be an upper-case name"),
    ({"acc_specs__num": "1"}, r"^acc_specs.num must be an integer from 1 to 65535"),
    ({"acc_specs__num": 0}, r"^acc_specs.num must be an integer"),
    ({"acc_specs__num": True}, r"^acc_specs.num must be an integer"),
    ({"acc_specs__remote": 2}, r"^acc_specs.remote must be an integer from 0 to 1"),
    ({"acc_specs__speed": 1}, r"^acc_specs has unknown fields: speed"),
    ({"acc_specs__acc_capability": [1, 2]}, r"^acc_specs.acc_capability must be a mapping"),
    ({"acc_specs__acc_capability": {"a": {"b": {"c": {"d": {"e": 1}}}}}},
     r"^acc_specs.acc_capability.a.b.c.d nests deeper than 4 levels"),
    ({"acc_specs__acc_capability": {f"k{i}": i for i in range(MAX_TREE_ITEMS + 1)}},
     r"^acc_specs.acc_capability holds more than 128 values"),
    ({"acc_specs__acc_capability": {"ipsec": "x" * 300}}, r"^acc_specs.acc_capability.ipsec is longer than 256"),
    ({"acc_specs__acc_capability": {"rate": float("nan")}}, r"^acc_specs.acc_capability.rate must be a finite"),
    ({"acc_status__reboot_equired": "no"}, r"^acc_status.reboot_equired must be true or false"),
    ({"acc_status__setup_required": 1}, r"^acc_status.setup_required must be true or false"),
    ({"acc_status__rebooted": False}, r"^acc_status has unknown fields: rebooted"),
    ({"extra": 1}, r"^hardware entry has unknown fields: extra"),
    ({"teebus__host": "compute-9"}, r"^teebus.host 'compute-9' is not this host"),
    ({"teebus__health": "Sick"}, r"^teebus.health must be 'Healthy' or 'Unhealthy'"),
    ({"teebus__health": "Unhealthy"}, r"^teebus.health_reason must say why"),
    ({"teebus__address": "3b:00"}, r"^teebus.address: not a PCI address"),
    ({"teebus__numa_node": -1}, r"^teebus.numa_node must be an integer from 0"),
    ({"teebus__vendor": "v" * 300}, r"^teebus.vendor must be a string of at most 256"),
    ({"teebus__driver": "My Driver"}, r"^teebus.driver must be a short lower-case name"),
    ({"teebus__details": {"": 1}}, r"^teebus.details has a key that is not a string"),
])
def test_bad_entries_are_refused_naming_the_field(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_seed_json(seed_entry(**changes), host=HOST)


def test_bad_documents_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^hardware entry must be a JSON object, not list"):
        from_seed_json([], host=HOST)
    with pytest.raises(ValueError, match=r"teebus.host is missing and no host was given"):
        from_seed_json(seed_entry())
    with pytest.raises(ValueError, match=r"^hardware must be a list"):
        devices_from_document({"hardware": {}}, host=HOST)
    with pytest.raises(ValueError, match=r"^hardware\[1\].acc_specs.num must be"):
        devices_from_document({"hardware": [seed_entry(), seed_entry(acc_specs__num=-1)]}, host=HOST)
    with pytest.raises(ValueError, match=r"^hardware\[1\].uuid .* repeats hardware\[0\]"):
        devices_from_document({"hardware": [seed_entry(), seed_entry()]}, host=HOST)
    with pytest.raises(ValueError, match=r"at most 1024 devices"):
        devices_from_document({"hardware": [seed_entry()] * (MAX_DEVICES + 1)}, host=HOST)


def test_device_model_validates_and_freezes() -> None:
    device = Device(uuid=device_uuid(HOST, GPU).upper(), host=HOST, device_type="GPU", address="3B:00.0",
                    acc_capability={"modes": ["a", "b"]})
    assert device.address == GPU and device.uuid == device_uuid(HOST, GPU)
    assert device.acc_capability["modes"] == ("a", "b")
    with pytest.raises(TypeError):
        device.acc_capability["x"] = 1
    with pytest.raises(ValueError, match=r"^host must be a host name"):
        Device(uuid=device.uuid, host="a b", device_type="GPU")
    assert normalize_pci_address("10000:01:00.1") == "10000:01:00.1"     # VMD domains
    with pytest.raises(ValueError, match="above 0x1f"):
        normalize_pci_address("0000:00:20.0")
    assert hash(device) == hash(device)


# -- inventory ---------------------------------------------------------------------------------

INVENTORY_TOML = """
[[device]]
key = "fpga-slot-0"
device_type = "FPGA"
vendor = "xilinx"
product = "u250"
setup_required = true
numa_node = 1
acc_capability = { family = "xilinx", lut = 1728000 }

[[device]]
address = "0000:3b:00.0"
device_type = "GPU"
reboot_equired = true
health = "Unhealthy"
health_reason = "fan stopped"
details = { slot = "PCIe 3" }
"""


def test_inventory_from_toml_and_json(tmp_path: Path) -> None:
    toml_path = tmp_path / "inventory.toml"
    toml_path.write_text(INVENTORY_TOML)
    fpga, gpu = inventory.load(toml_path, host=HOST)
    assert fpga.uuid == device_uuid(HOST, "fpga-slot-0") and fpga.address is None
    assert (fpga.device_type, fpga.vendor, fpga.numa_node, fpga.driver) == ("FPGA", "xilinx", 1, "inventory")
    assert fpga.setup_required and fpga.acc_capability["lut"] == 1728000
    assert fpga.details["inventory_key"] == "fpga-slot-0"
    assert gpu.uuid == device_uuid(HOST, GPU) and gpu.reboot_required
    assert (gpu.health, gpu.health_reason) == (UNHEALTHY, "fan stopped")
    assert inventory.load(toml_path, host=HOST) == [fpga, gpu]            # stable

    json_path = tmp_path / "inventory.json"
    json_path.write_text(json.dumps({"device": [
        {"uuid": "8e45a2ea-5364-4b0d-a252-bf8becaa606e", "device_type": "CRYPTO", "reboot_required": True},
        {"key": "qat-0", "device_type": "QAT", "num": 2, "remote": 1}]}))
    crypto, qat = inventory.load(json_path, host=HOST)
    assert crypto.uuid == "8e45a2ea-5364-4b0d-a252-bf8becaa606e" and crypto.reboot_required
    assert (qat.num, qat.remote) == (2, 1)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert inventory.load(empty, host=HOST) == []


@pytest.mark.parametrize(("name", "text", "message"), [
    ("a.toml", '[[device]]\nkey = "x"\ndevice_type = "GPU"\ncolour = "red"\n',
     r"device\[0\] \('x'\): unknown fields colour"),
    ("a.toml", '[[device]]\nkey = "x"\n', r"device\[0\] \('x'\): device_type is missing"),
    ("a.toml", '[[device]]\ndevice_type = "GPU"\n', r"device\[0\]: needs an address, a key or a uuid"),
    ("a.toml", '[[device]]\nkey = "x"\ndevice_type = "GPU"\nnum = 0\n', r"device\[0\] \('x'\): num must be"),
    ("a.toml", '[[device]]\naddress = "zz"\ndevice_type = "GPU"\n', r"device\[0\]: address: not a PCI address"),
    ("a.toml", '[[device]]\nkey = "x"\ndevice_type = "GPU"\n[[device]]\nkey = "x"\ndevice_type = "FPGA"\n',
     r"device\[1\] \('x'\) is the same device .* as device\[0\] \('x'\)"),
    ("a.toml", 'devices = []\n', r"unknown top-level keys devices"),
    ("a.toml", '[[device', r"is not valid TOML"),
    ("a.json", '{"device": {}}', r"device must be a list of devices"),
    ("a.json", '[1]', r"the top level must be a table"),
    ("a.json", '{"device": [5]}', r"device\[0\]: must be a table of fields"),
    ("a.yaml", '', r"must end in .toml or .json"),
])
def test_bad_inventories_are_refused(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(inventory.InventoryError, match=message):
        inventory.load(path, host=HOST)


def test_a_missing_inventory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(inventory.InventoryError, match=r"inventory .*nowhere.toml does not exist"):
        inventory.load(tmp_path / "nowhere.toml", host=HOST)


# -- nvidia ------------------------------------------------------------------------------------

class FakeNVMLError(Exception):
    def __init__(self, value: int, text: str) -> None:
        super().__init__(text)
        self.value = value


class FakeNVML:
    """The NVML calls the nvidia driver makes, over a list of GPUs described as dicts."""

    NVMLError = FakeNVMLError

    def __init__(self, gpus: list[dict], init_error: Exception | None = None) -> None:
        self.gpus, self.init_error, self.shutdowns = gpus, init_error, 0

    def nvmlInit(self) -> None:
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict:
        return self.gpus[index]

    def _get(self, gpu: dict, key: str):
        value = gpu[key]
        if isinstance(value, Exception):
            raise value
        return value

    def nvmlDeviceGetName(self, gpu: dict) -> str:
        return self._get(gpu, "name")

    def nvmlDeviceGetUUID(self, gpu: dict) -> str:
        return self._get(gpu, "uuid")

    def nvmlDeviceGetPciInfo(self, gpu: dict) -> SimpleNamespace:
        return SimpleNamespace(busId=self._get(gpu, "bus_id"), pciDeviceId=gpu["pci_device_id"])

    def nvmlDeviceGetMemoryInfo(self, gpu: dict) -> SimpleNamespace:
        return SimpleNamespace(total=gpu["memory"], used=0, free=gpu["memory"])

    def nvmlDeviceGetRetiredPagesPendingStatus(self, gpu: dict) -> int:
        return self._get(gpu, "retired_pending")

    def nvmlDeviceGetRemappedRows(self, gpu: dict) -> tuple[int, int, int, int]:
        return self._get(gpu, "remapped")

    def nvmlDeviceGetNumaNodeId(self, gpu: dict) -> int:
        return self._get(gpu, "numa")


def fake_gpus() -> list[dict]:
    healthy = {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-0b1d", "bus_id": b"00000000:3B:00.0",
               "pci_device_id": 0x233010DE, "memory": 80 * 1024 ** 3, "retired_pending": 0,
               "remapped": FakeNVMLError(3, "Not Supported"), "numa": 0}
    failing = {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-9f2e", "bus_id": "00000000:86:00.0",
               "pci_device_id": 0x233010DE, "memory": 80 * 1024 ** 3,
               "retired_pending": FakeNVMLError(13, "Function Not Found"), "remapped": (0, 2, 1, 0),
               "numa": FakeNVMLError(13, "Function Not Found")}
    return [healthy, failing]


def test_nvidia_with_a_fake_nvml() -> None:
    fake = FakeNVML(fake_gpus())
    devices, reason = nvidia.discover(host=HOST, nvml=fake)
    assert reason == "" and fake.shutdowns == 1
    good, bad = devices
    assert (good.address, good.vendor, good.product, good.driver) == (GPU, "10de", "NVIDIA H100 80GB HBM3", "nvidia")
    assert good.uuid == device_uuid(HOST, GPU)                    # the pci driver's uuid for this GPU
    assert dict(good.acc_capability) == {"family": "nvidia", "kind": "gpu", "memory_mib": 81920}
    assert good.details["nvml_uuid"] == "GPU-0b1d" and good.details["pci_device_id"] == "2330"
    assert (good.health, good.numa_node, good.reboot_required) == (HEALTHY, 0, False)
    assert bad.address == "0000:86:00.0" and bad.numa_node is None
    assert bad.health == UNHEALTHY and bad.reboot_required
    assert bad.health_reason == "row remapping is pending: the GPU needs a reset"


def test_nvidia_reports_a_lost_gpu_as_unhealthy() -> None:
    gpus = fake_gpus()
    gpus[1]["name"] = FakeNVMLError(15, "GPU is lost")
    gpus[1]["remapped"] = FakeNVMLError(15, "GPU is lost")
    devices, reason = nvidia.discover(host=HOST, nvml=FakeNVML(gpus))
    assert reason == "" and devices[1].health == UNHEALTHY
    assert devices[1].health_reason.startswith("NVML name query failed: GPU is lost")
    gpus[1]["numa"] = 7
    gpus[1]["memory"] = "lots"                                    # nonsense: that GPU only is Unhealthy
    gpus[1]["bus_id"] = None
    devices, reason = nvidia.discover(host=HOST, nvml=FakeNVML(gpus))
    assert reason == "" and [device.health for device in devices] == [HEALTHY, UNHEALTHY]
    assert devices[1].address is None and "no usable PCI address" in devices[1].health_reason
    gpus[1]["bus_id"] = RuntimeError("garbage")                  # not an NVMLError: still one GPU only
    devices, reason = nvidia.discover(host=HOST, nvml=FakeNVML(gpus))
    assert reason == "" and devices[0].health == HEALTHY
    assert devices[1].uuid == device_uuid(HOST, "nvml-index-1")
    assert devices[1].health_reason == "NVML answered what teebus cannot use: garbage"


def test_nvidia_without_nvml_is_no_devices() -> None:
    fake = FakeNVML([], init_error=FakeNVMLError(12, "NVML Shared Library Not Found"))
    assert nvidia.discover(host=HOST, nvml=fake) == ([], "NVML did not initialise: NVML Shared Library Not Found")
    # the real probe on this machine: no NVIDIA driver (or no pynvml) -> no devices, a reason, no error
    devices, reason = nvidia.discover(host=HOST)
    assert devices == [] and reason
    module, why = nvidia.load_nvml()
    assert (module is None) == bool(why)


# -- health hysteresis -------------------------------------------------------------------------

def test_a_flapping_device_recovers_only_after_three_clean_probes() -> None:
    book = HealthBook()
    uuid = device_uuid(HOST, GPU)
    probes = [(False, "config space reads 0xffff"), (True, ""), (False, "enable is 0"), (True, ""), (True, ""), (True, "")]
    seen = []
    for at, (ok, reason) in enumerate(probes):
        change = book.observe(uuid, ok, reason, float(at))
        seen.append((book.state(uuid).health, change))
    assert [state for state, _ in seen] == [UNHEALTHY] * 5 + [HEALTHY]
    assert seen[0][1] == Transition(uuid, 0.0, HEALTHY, UNHEALTHY, "config space reads 0xffff")
    assert [change for _, change in seen[1:5]] == [None] * 4
    assert seen[5][1] == Transition(uuid, 5.0, UNHEALTHY, HEALTHY, "3 consecutive clean probes after: enable is 0")
    assert book.history(uuid) == (seen[0][1], seen[5][1])


def test_step_is_pure_and_reports_recovery_progress() -> None:
    policy = HealthPolicy(recover_after=2)
    start = health.DeviceHealth()
    failed, change = health.step(start, "u", False, "", 10.0, policy)
    assert start == health.DeviceHealth() and change.reason == "the probe failed"
    once, change = health.step(failed, "u", True, "", 11.0, policy)
    assert change is None and once.describe(policy) == "recovering (1 of 2 clean probes) after: the probe failed"
    back, change = health.step(once, "u", True, "", 12.0, policy)
    assert back.health == HEALTHY and back.describe(policy) == "" and change.after == HEALTHY
    assert health.step(back, "u", True, "", 13.0, policy) == (back, None)
    with pytest.raises(ValueError, match="now must be a finite number"):
        health.step(back, "u", True, "", float("nan"), policy)


def test_history_is_bounded() -> None:
    book = HealthBook(HealthPolicy(recover_after=1, history=4))
    for at in range(50):
        book.observe("u", at % 2 == 1, f"failure {at}", float(at))
    history = book.history("u")
    assert len(history) == 4
    assert [change.at for change in history] == [46.0, 47.0, 48.0, 49.0]
    assert history[-1].after == HEALTHY and history[-2].reason == "failure 48"


def test_a_seeded_device_is_unhealthy_without_a_transition_until_clean_probes() -> None:
    """An agent's restart: the book takes a device Unhealthy as the conductor shows it."""
    book = HealthBook(HealthPolicy(recover_after=3))
    shown = health.DeviceHealth(UNHEALTHY, "Xid 79", 2).describe(book.policy)
    assert shown == "recovering (2 of 3 clean probes) after: Xid 79"
    assert health.failure_of(shown) == "Xid 79" and health.failure_of("Xid 79") == "Xid 79"
    assert "u" not in book and book.seed("u", health.failure_of(shown)) and "u" in book
    assert (book.state("u").health, book.state("u").describe(book.policy)) == (UNHEALTHY, "Xid 79")
    assert [book.observe("u", True, "", float(at)) for at in (1, 2)] == [None, None]   # the count starts over
    change = book.observe("u", True, "", 3.0)
    assert (change.before, change.after, change.reason) == (UNHEALTHY, HEALTHY, "3 consecutive clean probes after: Xid 79")
    assert book.history("u") == (change,)
    book.observe("v", False, "its own failure", 1.0)
    assert not book.seed("v", "older") and book.state("v").reason == "its own failure"   # fresher: kept


@pytest.mark.parametrize("field", ["recover_after", "history", "forget_after"])
def test_health_policy_is_validated(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        HealthPolicy(**{field: 0})


def test_health_book_settles_discoveries(sysfs: Path) -> None:
    book = HealthBook(HealthPolicy(recover_after=3, forget_after=2))
    devices = pci.discover(sysfs, host=HOST)
    report, changes = book.settle(devices, 0.0)
    assert report == devices and changes == []

    # the GPU fails once: Unhealthy at once, and stays so while clean probes accumulate
    config = next((sysfs / "devices").glob(f"**/{GPU}")) / "config"
    good_config = config.read_bytes()
    config.write_bytes(b"\xff" * 64)
    report, changes = book.settle(pci.discover(sysfs, host=HOST), 1.0)
    assert [(c.uuid, c.after) for c in changes] == [(device_uuid(HOST, GPU), UNHEALTHY)]
    config.write_bytes(good_config)
    for at in (2.0, 3.0):
        report, changes = book.settle(pci.discover(sysfs, host=HOST), at)
        gpu = by_address(report)[GPU]
        assert changes == [] and gpu.health == UNHEALTHY and gpu.health_reason.startswith("recovering")
    report, changes = book.settle(pci.discover(sysfs, host=HOST), 4.0)
    assert [c.after for c in changes] == [HEALTHY] and by_address(report)[GPU].health == HEALTHY

    # the NVMe drive disappears: still reported, Unhealthy, until forgotten
    (sysfs / "bus/pci/devices" / NVME).unlink()
    report, changes = book.settle(pci.discover(sysfs, host=HOST), 5.0)
    nvme = by_address(report)[NVME]
    assert (nvme.health, nvme.health_reason) == (UNHEALTHY, health.VANISHED)
    assert [(c.uuid, c.reason) for c in changes] == [(device_uuid(HOST, NVME), health.VANISHED)]
    report, _ = book.settle(pci.discover(sysfs, host=HOST), 6.0)
    assert NVME in by_address(report)
    report, _ = book.settle(pci.discover(sysfs, host=HOST), 7.0)
    assert NVME not in by_address(report) and len(book) == len(devices) - 1


def test_two_drivers_reporting_one_gpu_count_as_one_probe(sysfs: Path) -> None:
    book = HealthBook()
    from_pci = by_address(pci.discover(sysfs, host=HOST))[GPU]
    gpus = fake_gpus()
    gpus[0]["retired_pending"] = 1
    from_nvml = nvidia.discover(host=HOST, nvml=FakeNVML(gpus[:1]))[0][0]
    assert from_nvml.uuid == from_pci.uuid and from_nvml.health == UNHEALTHY
    report, changes = book.settle([from_pci, from_nvml], 0.0)
    assert len(changes) == 1 and "retired pages are pending" in changes[0].reason
    assert [device.health for device in report] == [UNHEALTHY, UNHEALTHY]
