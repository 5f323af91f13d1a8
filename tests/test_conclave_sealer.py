"""Group commit of the enclave's sealed state (components/conclave/sealer.py): many mails, few
writes, nothing answered before it is on disk; a failed write fails its mails and stops the enclave."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import orjson
import pytest

from bus.errors import Unavailable
from components.conclave.sealer import Sealer
from tests.conclave_fixtures import client_of


class CountingSealer(Sealer):
    """The real sealer, counting its writes."""

    writes = 0

    def _write(self, state: bytes, files: bytes | None) -> None:
        super()._write(state, files)
        self.writes += 1


async def _never(durable: int) -> None:
    raise AssertionError("no write should fail here")


async def test_versions_handed_over_during_a_write_share_the_next_one(tmp_path: Path):
    sealer = CountingSealer(tmp_path / "state", None, _never)
    versions = [sealer.changed(f"state {n}".encode()) for n in range(50)]
    await asyncio.gather(*(sealer.wait(v) for v in versions))
    assert sealer.durable == 50 and sealer.writes <= 2          # the first version alone, then the rest at once
    assert (tmp_path / "state").read_bytes() == b"state 49"     # the newest state is what is on disk
    assert os.stat(tmp_path / "state").st_mode & 0o777 == 0o600


async def test_a_failed_write_fails_every_version_it_held(tmp_path: Path):
    (tmp_path / "state").mkdir()                                 # a directory where the file should go
    failures: list[int] = []

    async def failed(durable: int) -> None:
        failures.append(durable)

    sealer = Sealer(tmp_path / "state", None, failed)
    first, second = sealer.changed(b"a"), sealer.changed(b"b")
    for version in (first, second):
        with pytest.raises(Unavailable, match="could not seal"):
            await sealer.wait(version)
    assert failures and failures[0] == 0 and sealer.durable == 0


async def test_concurrent_mails_are_each_answered_after_their_state_is_sealed(conclave, session):
    host = await conclave()
    clients = [await client_of(host, session) for _ in range(8)]
    replies = await asyncio.gather(*(c.send(f"mail {n}".encode()) for n, c in enumerate(clients)))
    assert [r.body for r in replies] == [f"{n} liam".encode() for n in range(8)]
    await host.restart()                                        # every answered mail was sealed
    for client in clients:
        status, body = await client.deliver(client.mail(b"x", sequence=0))
        assert status == 400 and "was expecting 1" in orjson.loads(body)["message"]


async def test_an_enclave_that_cannot_seal_refuses_mail_until_restarted(conclave, session):
    host = await conclave()
    client = await client_of(host, session)
    assert (await client.send(b"before")).body == b"erofeb"
    state = Path(host.config.sealed_state_file)
    state.unlink()
    state.mkdir()                                               # the next write fails
    status, body = await client.deliver(client.mail(b"lost"))
    assert status == 503 and "could not seal" in orjson.loads(body)["message"]
    status, body = await client.deliver(client.mail(b"after"))
    assert status == 503 and "until it is restarted" in orjson.loads(body)["message"]
    await host.stop()
    state.rmdir()                                               # the disk is fixed; the state is gone
    await host.start()                                          # (a new key: the old one was never sealed)
    fresh = await client_of(host, session)
    assert (await fresh.send(b"again")).body == b"niaga"
