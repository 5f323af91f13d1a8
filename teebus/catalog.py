"""Every runnable piece by name, from the systems' manifests: what `teebus up` starts and what
`teebus run NAME` accepts (`<system>.<component>`, `<kind>.<system>` for adapters)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from bus.manifest import AdapterSpec, ComponentSpec, Manifest


@dataclass(frozen=True)
class Catalog:
    systems: tuple[Manifest, ...]

    def __post_init__(self) -> None:
        names = [manifest.name for manifest in self.systems]
        if len(names) != len(set(names)):
            raise ValueError(f"systems repeat: {names}")
        verbs = names + [command.name for manifest in self.systems for command in manifest.commands]
        if len(verbs) != len(set(verbs)):
            raise ValueError(f"top-level commands repeat (a system's name is one too): {sorted(verbs)}")

    def manifest(self, system: str) -> Manifest:
        for manifest in self.systems:
            if manifest.name == system:
                return manifest
        raise ValueError(f"unknown system {system!r}; known: {', '.join(m.name for m in self.systems)}")

    def components(self, names: Iterable[str]) -> list[tuple[Manifest, ComponentSpec]]:
        wanted = set(names)
        return [(m, c) for m in self.systems for c in m.components if f"{m.name}.{c.name}" in wanted]

    def adapters(self, names: Iterable[str]) -> list[tuple[Manifest, AdapterSpec]]:
        wanted = set(names)
        return [(m, a) for m in self.systems for a in m.adapters if f"{a.kind}.{m.name}" in wanted]

    def names(self) -> list[str]:
        return [*(n for m in self.systems for n in m.component_names()),
                *(n for m in self.systems for n in m.adapter_names())]

    def check(self, requested: Iterable[str]) -> None:
        known = set(self.names())
        unknown = [name for name in requested if name not in known]
        if unknown:
            raise ValueError(f"unknown component or adapter {', '.join(unknown)}; "
                             f"known: {', '.join(self.names())}")

    def ports(self) -> dict[str, int]:
        """Every site's default port."""
        return {site: port for manifest in self.systems for site, port in manifest.ports.items()}
