"""The `nvidia` driver: NVIDIA GPUs through NVML (`pynvml`, from the `nvidia-ml-py` package).

No NVML is no devices, not an error: without the package, or when NVML does not initialise
(no driver: the usual case on hosts without NVIDIA GPUs), `discover` returns `([], reason)`.
Every NVML call goes through the `nvml` object passed in (the `pynvml` module by default), so
tests substitute an object with the same functions and `NVMLError`.

A GPU's uuid is the one the `pci` driver gives it (host and PCI address), so one GPU is one
device whichever driver reports it; its NVML uuid (`GPU-...`) is in `details.nvml_uuid`.

Health, from queries that are cheap and need no event loop:
* a query for the GPU's identity or memory fails (for instance NVML's "GPU is lost");
* retired pages are pending (older GPUs) or row remapping is pending (Ampere and later): the GPU
  needs a reset, so `reboot_required` is also set; a failed row remapping is unhealthy too.
A query the GPU does not support (NVML's NotSupported) is skipped, and so is a health query
this user may not make or the installed driver lacks. XID errors are not read: NVML
delivers them only as events to a registered listener, which a periodic probe is not.
"""

from __future__ import annotations

from typing import Any

from components.cyborg.hardware import HEALTHY, UNHEALTHY, Device, device_uuid, normalize_pci_address

DRIVER = "nvidia"
MAX_GPUS = 64
NVIDIA_VENDOR = "10de"
_NOT_SUPPORTED = 3          # NVML_ERROR_NOT_SUPPORTED
# a health query failing so says nothing about the GPU: not supported on it, not allowed to this
# user (NO_PERMISSION), or absent from an older driver's library (FUNCTION_NOT_FOUND)
_NOT_ANSWERED = frozenset({3, 4, 13})
_FEATURE_ENABLED = 1        # NVML_FEATURE_ENABLED


def load_nvml() -> tuple[Any | None, str]:
    """The `pynvml` module, or None and why not."""
    try:
        import pynvml
    except ImportError:
        return None, "pynvml is not installed (pip install nvidia-ml-py)"
    return pynvml, ""


def discover(*, host: str, nvml: Any | None = None) -> tuple[list[Device], str]:
    """The GPUs NVML sees, with their health, and "" -- or no devices and the reason NVML could
    not be used (not installed, no driver, no permission). Never raises for NVML's failures."""
    if nvml is None:
        nvml, reason = load_nvml()
        if nvml is None:
            return [], reason
    try:
        nvml.nvmlInit()
    except Exception as exc:   # NVMLError, or OSError from loading libnvidia-ml itself
        return [], f"NVML did not initialise: {_describe(exc)}"
    try:
        count = min(int(nvml.nvmlDeviceGetCount()), MAX_GPUS)
        return [_gpu_or_lost(nvml, index, host) for index in range(count)], ""
    except Exception as exc:
        return [], f"NVML could not list GPUs: {_describe(exc)}"
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:   # nothing left to do about it
            pass


def _gpu_or_lost(nvml: Any, index: int, host: str) -> Device:
    """One GPU; one that answers nonsense is reported Unhealthy rather than hiding the others."""
    try:
        return _gpu(nvml, index, host)
    except Exception as exc:
        return _lost(index, host, [f"NVML answered what teebus cannot use: {_describe(exc)}"])


def _gpu(nvml: Any, index: int, host: str) -> Device:
    """One GPU as a Device; a failing identity query makes it Unhealthy, not absent."""
    reasons: list[str] = []
    details: dict[str, Any] = {"nvml_index": index}

    def query(what: str, call: Any, *args: Any, optional: bool = False) -> Any:
        try:
            return call(*args)
        except nvml.NVMLError as exc:
            code = getattr(exc, "value", None)
            if code != _NOT_SUPPORTED and not (optional and code in _NOT_ANSWERED):
                reasons.append(f"NVML {what} query failed: {_describe(exc)}")
            return None

    handle = query("handle", nvml.nvmlDeviceGetHandleByIndex, index)
    if handle is None:
        return _lost(index, host, reasons)
    name = query("name", nvml.nvmlDeviceGetName, handle)
    nvml_uuid = query("uuid", nvml.nvmlDeviceGetUUID, handle)
    pci = query("PCI info", nvml.nvmlDeviceGetPciInfo, handle)
    memory = query("memory", nvml.nvmlDeviceGetMemoryInfo, handle)

    address = None
    if pci is not None:
        try:
            address = normalize_pci_address(_text(pci.busId))
        except (AttributeError, ValueError) as exc:
            reasons.append(f"NVML gave no usable PCI address: {exc}")
        device_id = getattr(pci, "pciDeviceId", None)
        if isinstance(device_id, int):
            details["pci_device_id"] = f"{device_id >> 16:04x}"
    if name is not None:
        details["name"] = _text(name)[:128]
    if nvml_uuid is not None:
        details["nvml_uuid"] = _text(nvml_uuid)[:80]

    reboot = False
    pending = query("retired pages", nvml.nvmlDeviceGetRetiredPagesPendingStatus, handle, optional=True)
    if pending == _FEATURE_ENABLED:
        reboot = True
        reasons.append("retired pages are pending: the GPU needs a reset")
    rows = query("row remapping", nvml.nvmlDeviceGetRemappedRows, handle, optional=True)
    if rows is not None:
        _corrected, _uncorrected, remap_pending, remap_failed = rows
        if remap_failed:
            reasons.append("row remapping failed: the GPU's memory has uncorrectable errors")
        if remap_pending:
            reboot = True
            reasons.append("row remapping is pending: the GPU needs a reset")

    numa = None
    if hasattr(nvml, "nvmlDeviceGetNumaNodeId"):
        try:
            value = nvml.nvmlDeviceGetNumaNodeId(handle)
            numa = value if isinstance(value, int) and 0 <= value <= 4095 else None
        except Exception:   # old drivers lack it; NUMA is a detail, not health
            numa = None

    key = address or (details.get("nvml_uuid")) or f"nvml-index-{index}"
    capability: dict[str, Any] = {"family": "nvidia", "kind": "gpu"}
    if memory is not None and isinstance(getattr(memory, "total", None), int):
        capability["memory_mib"] = memory.total // (1 << 20)
    return Device(
        uuid=device_uuid(host, key),
        host=host,
        device_type="GPU",
        address=address,
        vendor=NVIDIA_VENDOR,
        product=details.get("name", ""),
        acc_capability=capability,
        reboot_required=reboot,
        health=UNHEALTHY if reasons else HEALTHY,
        health_reason="; ".join(reasons)[:512],
        numa_node=numa,
        driver=DRIVER,
        details=details,
    )


def _lost(index: int, host: str, reasons: list[str]) -> Device:
    """A GPU NVML counts but cannot open: reported Unhealthy under its index, the only key left."""
    return Device(uuid=device_uuid(host, f"nvml-index-{index}"), host=host, device_type="GPU",
                  vendor=NVIDIA_VENDOR, health=UNHEALTHY, health_reason="; ".join(reasons)[:512],
                  driver=DRIVER, details={"nvml_index": index})


def _text(value: Any) -> str:
    """NVML strings arrive as str or bytes depending on the binding's version."""
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def _describe(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:200]
