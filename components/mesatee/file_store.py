"""Where TDFS keeps files' encrypted bytes: `<data-dir>/mesatee/files/<file_id>`, directory mode 0700.

A client on this machine writes `ciphertext || tag` straight to a file's `access_path`, as in the
original. Over HTTP the bytes are staged in a temporary file beside it (`<file_id>.<random>.part`,
mode 0600) and renamed over it only once complete and flushed to disk (`Staged`), so a reader never
sees half an upload and a crash leaves only a `.part` file, which `sweep` removes. The bytes never
pass through memory whole nor over the bus: whoever streams them (the HTTP adapter) writes here.
Blocking file I/O runs in the default executor, in large pieces, off the event loop.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path
from typing import Awaitable, Callable

from bus.credentials import fsync_directory
from bus.errors import Conflict, Internal
from components.mesatee.tdfs_messages import is_file_id

FILES_DIR = "mesatee/files"
PART_SUFFIX = ".part"
FLUSH_BYTES = 1024 * 1024        # staged bytes are written in pieces of about this size
READ_BYTES = 256 * 1024          # a download reads the file in pieces of this size


def files_dir(data_dir: Path) -> Path:
    return data_dir / FILES_DIR


def open_store(data_dir: Path) -> Path:
    """The file store's directory, created (mode 0700) on first use and kept private."""
    directory = files_dir(data_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.stat().st_mode & 0o077:
        directory.chmod(0o700)
    return directory


def path_of(directory: Path, file_id: str) -> Path:
    """A file's access path; `file_id` is a validated UUID, so it cannot leave the directory."""
    return directory / file_id


def remove(path: Path) -> bool:
    """Delete a file's stored bytes (and any upload of it being staged); False if there were none."""
    removed = False
    try:
        path.unlink()
        removed = True
    except FileNotFoundError:
        pass
    for part in path.parent.glob(f"{path.name}.*{PART_SUFFIX}"):
        part.unlink(missing_ok=True)
    return removed


async def sweep(directory: Path, exists: Callable[[str], Awaitable[bool]], *, stale_after: float) -> list[str]:
    """Remove what no record stands for: `.part` files untouched for `stale_after` seconds (an
    upload whose writer died), and stored bytes of files `exists` denies, older than that (a Delete
    that raced an upload). Returns the names removed."""
    removed: list[str] = []
    cutoff = time.time() - stale_after
    for entry in await asyncio.to_thread(_entries, directory):
        name, modified = entry
        if modified > cutoff:
            continue
        file_id = name.split(".", 1)[0]
        if not is_file_id(file_id):
            continue                   # not ours: left alone
        if name.endswith(PART_SUFFIX) or not await exists(file_id):
            (directory / name).unlink(missing_ok=True)
            removed.append(name)
    return removed


def _entries(directory: Path) -> list[tuple[str, float]]:
    found = []
    try:
        with os.scandir(directory) as scan:
            for entry in scan:
                try:
                    if entry.is_file(follow_symlinks=False):
                        found.append((entry.name, entry.stat(follow_symlinks=False).st_mtime))
                except FileNotFoundError:
                    continue
    except FileNotFoundError:
        pass
    return found


class Vanished(Conflict):
    """The staged upload was removed before it completed: its file was deleted meanwhile."""


class Staged:
    """An upload of exactly `size` bytes to `target`, staged beside it; `commit` renames it into place.

    Use as `async with Staged(target, size) as staged: await staged.write(chunk) ...; await staged.commit()`;
    leaving the block without a commit removes the staged file.
    """

    def __init__(self, target: Path, size: int) -> None:
        self.target = target
        self.size = size
        self.received = 0
        self._part = target.with_name(f"{target.name}.{secrets.token_hex(8)}{PART_SUFFIX}")
        self._fd: int | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    async def __aenter__(self) -> "Staged":
        try:
            self._fd = await asyncio.to_thread(os.open, self._part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:
            raise Internal(f"the TDFS file store {self.target.parent} does not exist on this host: the "
                           "adapter must run on the machine (or share the file system) of the TDFS "
                           "component") from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._fd is not None:        # not committed: nothing of it stays
            fd, self._fd = self._fd, None
            await asyncio.to_thread(_discard, fd, self._part)

    @property
    def overflows(self) -> bool:
        return self.received > self.size

    async def write(self, chunk: bytes) -> None:
        """Add `chunk`; the caller checks `overflows` after each call (nothing past `size` is written)."""
        self.received += len(chunk)
        if self.overflows:
            return
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        if self._pending_bytes >= FLUSH_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        if self._pending:
            data, self._pending, self._pending_bytes = b"".join(self._pending), [], 0
            await asyncio.to_thread(_write_all, self._fd, data)

    async def commit(self) -> None:
        """Flush to disk and rename over the target (atomic); the size must be exactly `size`."""
        if self.received != self.size:
            raise ValueError(f"staged {self.received} bytes, expected {self.size}")
        await self._flush()
        fd, self._fd = self._fd, None
        try:
            await asyncio.to_thread(_install, fd, self._part, self.target)
        except FileNotFoundError:   # `remove` took the staged file too (a Delete of the file)
            raise Vanished(f"the upload to {self.target.name} was removed before it completed (was the file "
                           "deleted?); upload again") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _install(fd: int, part: Path, target: Path) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(part, target)
    except OSError:
        part.unlink(missing_ok=True)
        raise
    fsync_directory(target.parent)     # the rename itself survives a crash


def _discard(fd: int, part: Path) -> None:
    os.close(fd)
    part.unlink(missing_ok=True)
