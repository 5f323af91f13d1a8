"""Keep loader processes: started detached (they outlive a keep manager restart), found by pid again.

A keep's pid is only trusted while /proc shows the same keep loader command line for the same keep,
so a reused pid never gets a signal meant for a keep.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import orjson

from bus import procfs

HOST = "enarx.keep"   # the manifest's host: `python -m teebus.host enarx.keep ...` (keep_host.py)


def log_path(data_dir: Path, kuuid: str) -> Path:
    return data_dir / "keeps" / f"{kuuid}.log"


def socket_path(data_dir: Path, kuuid: str) -> Path:
    return data_dir / "keeps" / f"{kuuid}.sock"


async def spawn(kuuid: str, *, data_dir: Path, nats_url: str, user: str, password: str, host: str,
                port: int, evidence_timeout: float, handshake_timeout: float, limits: dict,
                loader: Path | None = None
                ) -> asyncio.subprocess.Process:
    """Start a keep loader for `kuuid`; the secret travels in the environment, never in argv."""
    command = [str(loader)] if loader else [sys.executable, "-m", "teebus.host", HOST]
    command += ["--kuuid", kuuid, "--data-dir", str(data_dir), "--nats", nats_url, "--host", host,
                "--port", str(port), "--evidence-timeout", str(evidence_timeout),
                "--handshake-timeout", str(handshake_timeout),
                "--limits", orjson.dumps(limits).decode()]
    env = {**os.environ, "TEEBUS_KEEP_USER": user, "TEEBUS_KEEP_PASSWORD": password}
    path = log_path(data_dir, kuuid)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path, "ab") as output:
        os.chmod(path, 0o600)
        process = await asyncio.create_subprocess_exec(
            *command, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output,
            start_new_session=True, cwd=str(data_dir))
    return process


def is_alive(pid: int | None, kuuid: str) -> bool:
    """True while `pid` is the keep loader of `kuuid` (not a zombie, not a reused pid)."""
    return kuuid.encode() in procfs.argv(pid)


def terminate(pid: int | None, kuuid: str, hard: bool = False) -> None:
    if is_alive(pid, kuuid):
        try:
            os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
        except ProcessLookupError:
            pass


async def wait_gone(pid: int | None, kuuid: str, timeout: float) -> bool:
    """Wait until the loader is gone; False if it still runs after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while is_alive(pid, kuuid):
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True
