"""The one list of systems teebus runs. Adding a system adds its manifest here, and nothing else
outside its own folders (docs/adding-a-system.md)."""

from __future__ import annotations

from bus.manifest import Manifest, load

SYSTEMS = (
    "components.mesatee.system:MANIFEST",
    "components.enarx.system:MANIFEST",
    "components.cyborg.system:MANIFEST",
    "components.conclave.system:MANIFEST",
    "components.aurae.system:MANIFEST",
)


def installed() -> tuple[Manifest, ...]:
    """Every system's manifest, in the order above (cheap: manifests import no runtime)."""
    return tuple(load(reference) for reference in SYSTEMS)
