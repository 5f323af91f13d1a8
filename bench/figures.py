"""Small helpers the benchmarks share: percentiles, progress lines, where a path lives."""

from __future__ import annotations

import math
import sys
from pathlib import Path


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (0.0 when empty)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))]


def progress(text: str) -> None:
    """A progress line on stderr (stdout carries the report, JSON with --json)."""
    print(text, file=sys.stderr, flush=True)


def filesystem(path: Path) -> str:
    """The file system type `path` is on (the longest mount point of /proc/mounts above it)."""
    target, best, kind = str(path.resolve()), "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, kind = mount, parts[2]
    return kind
