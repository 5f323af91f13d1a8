"""`python -m teebus.host <system>.<host> ARGS`: a process a system declares in its manifest (`hosts`).

Such a process runs components and adapters together, as `teebus run` does, but with wiring of its
own (one Enarx keep: its loader, its socket, its wasmldr site). Its code lives on the component
side and is handed the adapters it needs, loaded here from the manifest: components never import
adapters, and this module names no system.
"""

from __future__ import annotations

import sys

from bus.loop import run
from bus.manifest import load
from teebus.systems import installed


def main(argv: list[str]) -> int:
    if not argv or "." not in argv[0]:
        print("usage: python -m teebus.host <system>.<host> ARGS...", file=sys.stderr)
        return 2
    system, _, name = argv[0].partition(".")
    manifests = {manifest.name: manifest for manifest in installed()}
    if system not in manifests:
        print(f"teebus.host: unknown system {system!r}; known: {', '.join(manifests)}", file=sys.stderr)
        return 2
    spec = manifests[system].host(name)
    adapters = {role: load(reference) for role, reference in spec.adapters.items()}
    return run(load(spec.target)(argv[1:], adapters))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
