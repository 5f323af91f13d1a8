"""Which keep backends this host can run: the device probe, and the loader each backend needs.

The probe reads device nodes under `dev_root` (`/` in production; tests point it at a directory
that imitates a host with other hardware). Nil needs nothing and runs on our own keep loader.
Kvm, Sev and Sgx need a platform loader that teebus does not ship: they are offered only when the
device is present *and* a loader executable is configured for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEVICES = {
    "Kvm": (("dev/kvm",),),
    "Sev": (("dev/kvm",), ("dev/sev",)),
    "Sgx": (("dev/sgx/enclave", "dev/sgx_enclave"),),
}


@dataclass(frozen=True)
class Backends:
    """The probe's inputs: where devices live, and the platform loaders configured per backend."""

    dev_root: Path = Path("/")
    loaders: dict[str, Path] = field(default_factory=dict)

    def present(self) -> list[str]:
        """Backends whose devices this host has (Nil always)."""
        return ["Nil", *(name for name, needs in DEVICES.items() if self._has_all(needs))]

    def runnable(self) -> list[str]:
        """Backends a keep can be started for now: present, and with a loader where one is needed."""
        return [name for name in self.present() if name == "Nil" or self._loader_ok(name)]

    def why_not(self, backend: str) -> str:
        """A person-readable reason `backend` cannot run here."""
        if backend not in self.present():
            wanted = " and ".join("/" + " or /".join(alternatives) for alternatives in DEVICES[backend])
            return f"backend {backend} needs {wanted}, which this host does not have"
        loader = self.loaders.get(backend)
        if loader is None:
            return (f"backend {backend} needs a platform keep loader, which teebus does not ship; "
                    f"configure one with --keep-loader {backend}=PATH")
        return f"the {backend} keep loader {loader} is not an executable file"

    def _has_all(self, needs: tuple[tuple[str, ...], ...]) -> bool:
        return all(any((self.dev_root / alternative).exists() for alternative in alternatives)
                   for alternatives in needs)

    def _loader_ok(self, backend: str) -> bool:
        loader = self.loaders.get(backend)
        return loader is not None and loader.is_file() and os.access(loader, os.X_OK)
