"""Who a pid is now: pids are reused, so a stored pid is trusted only while its command line matches."""

from __future__ import annotations

from pathlib import Path


def argv(pid: int | None) -> list[bytes]:
    """The command line of a live process; empty for none, a zombie, or one we may not read."""
    if not pid:
        return []
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return raw.split(b"\0")[:-1] if raw else []
