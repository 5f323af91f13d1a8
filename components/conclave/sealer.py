"""Group commit for the enclave's sealed state: one durable write for every mail handled meanwhile.

The enclave handles mails one at a time in memory (fast: the crypto of one mail is well under a
millisecond) and hands each resulting state here; a mail's reply waits until a write that includes
its state is on disk. While one write (a file, an fsync, a rename, an fsync of the directory: about
a millisecond on this machine) is under way, the mails handled meanwhile queue up, and the next write
covers all of them. Nothing is answered before it is durable. When a write fails, every mail not yet
durable fails with it and the enclave goes back to the last durable state (`on_failure`), so what it
remembers never runs ahead of what it sealed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from bus.credentials import write_private
from bus.errors import Unavailable


@dataclass
class Sealed:
    """One version of what must be on disk: the sealed state, and the file store when it changed."""

    version: int
    state: bytes
    files: bytes | None = None


class Sealer:
    def __init__(self, state_path: Path, files_path: Path | None,
                 on_failure: Callable[[int], Awaitable[None]]) -> None:
        self._state_path, self._files_path = state_path, files_path
        self._on_failure = on_failure           # called with the last durable version
        self._latest: Sealed | None = None      # handed over, not yet being written
        self._files_pending: bytes | None = None
        self._version = 0
        self.durable = 0                        # the last version on disk
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._writer: asyncio.Task[None] | None = None

    def changed(self, state: bytes, files: bytes | None = None) -> int:
        """Record the newest state (and file store, if it changed); its version, for `wait`."""
        self._version += 1
        if files is not None:
            self._files_pending = files
        self._latest = Sealed(self._version, state)
        self._waiters[self._version] = asyncio.get_running_loop().create_future()
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_all())
        return self._version

    async def wait(self, version: int) -> None:
        """Return once `version` is on disk; Unavailable when the write that held it failed. Every
        version `changed` returned is waited for once (by the mail that made it)."""
        await asyncio.shield(self._waiters[version])
        del self._waiters[version]

    def forget_pending(self) -> None:
        """Drop versions not yet written (after a failure, the enclave's memory went back)."""
        self._latest, self._files_pending = None, None
        self._fail(self._version, "an earlier write of the sealed state failed")

    async def _write_all(self) -> None:
        try:
            while self._latest is not None:
                batch, files = self._latest, self._files_pending
                self._latest, self._files_pending = None, None
                try:
                    await asyncio.to_thread(self._write, batch.state, files)
                except OSError as exc:
                    self._fail(batch.version, f"the enclave could not seal its state ({exc.strerror or exc}); "
                                              "the mail was not accepted: send it again")
                    await self._on_failure(self.durable)
                    continue
                self.durable = batch.version
                self._release(batch.version)
        finally:
            self._writer = None

    def _write(self, state: bytes, files: bytes | None) -> None:
        if files is not None and self._files_path is not None:
            write_private(self._files_path, files)
        write_private(self._state_path, state)

    def _release(self, version: int) -> None:
        for number, waiter in self._waiters.items():
            if number <= version and not waiter.done():
                waiter.set_result(None)

    def _fail(self, version: int, message: str) -> None:
        for number, waiter in self._waiters.items():
            if number <= version and not waiter.done():
                waiter.set_exception(Unavailable(message))
