"""teebus's Conclave client and `teebus conclave` against a running web host: constraints checked
before any mail leaves, the synchronous reply, polling, a saved and restored client, and the
re-attestation Conclave's client does when the enclave's key changed under it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.conclave import apps
from components.conclave.client import ConclaveClient, ConclaveError, correlation_id


def constraint_for(app: str = "hello-world") -> str:
    return f"C:{apps.code_hash(apps.load(app)).hex()} SEC:INSECURE"


async def test_send_poll_and_the_correlation_id_as_conclaves_client_forms_it(conclave):
    host = await conclave("relay")
    async with ConclaveClient(host.url, constraint_for("relay")) as alice, \
            ConclaveClient(host.url, constraint_for("relay")) as bob:
        assert alice.correlation_id == __import__("hashlib").sha256(alice.private_key).hexdigest().upper()
        assert (await alice.send(b"", topic="room")).body == b'{"members": 1}'
        await bob.send(b"hello", topic="room")
        received = await alice.poll()
        assert b'"text": "hello"' in received.body and received.topic == "room"
        assert await alice.poll() is None


async def test_constraints_are_checked_before_any_mail_leaves(conclave):
    host = await conclave()
    wrong = "C:" + "ab" * 32 + " SEC:INSECURE"
    async with ConclaveClient(host.url, wrong) as client:
        with pytest.raises(ConclaveError, match="code hash"):
            await client.send(b"x")
    code = apps.code_hash(apps.load("hello-world")).hex()
    async with ConclaveClient(host.url, f"C:{code}") as client:          # default SEC:STALE
        with pytest.raises(ConclaveError, match="INSECURE"):
            await client.attest()
    async with ConclaveClient(host.url, f"C:{code} SEC:INSECURE REVOKE:3") as client:
        with pytest.raises(ConclaveError, match="revocation"):
            await client.attest()


async def test_a_new_enclave_key_is_re_attested_and_the_mail_sent_again(conclave):
    host = await conclave()
    async with ConclaveClient(host.url, constraint_for()) as client:
        assert (await client.send(b"abc")).body == b"cba"
        old = client.eii.encryption_key
        await host.stop()
        os.remove(host.config.sealed_state_file)                        # the enclave forgets its key
        await host.start()
        assert (await client.send(b"xyz")).body == b"zyx"               # MAIL_DECRYPTION, re-attest, resend
        assert client.eii.encryption_key != old
        assert (await client.send(b"again")).sequence_number == 1       # post offices began anew


async def test_a_restored_client_continues_its_sequence_numbers(conclave):
    host = await conclave()
    async with ConclaveClient(host.url, constraint_for()) as client:
        await client.send(b"one")
        await client.send(b"two")
        saved = client.state()
    async with ConclaveClient.restore(host.url, constraint_for(), saved) as again:
        assert again.correlation_id == correlation_id(client.private_key)
        assert (await again.send(b"three")).body == b"eerht"           # number 2, not a replay of 0


async def test_enclave_exceptions_reach_the_client_with_their_message(conclave):
    host = await conclave("key-value")
    async with ConclaveClient(host.url, constraint_for("key-value")) as client:
        with pytest.raises(ConclaveError, match="JSON") as refused:
            await client.send(b"not json")
        assert refused.value.error == "ENCLAVE_EXCEPTION" and refused.value.status == 400


async def _teebus(*args: str) -> subprocess.CompletedProcess:
    """`teebus ...` in a fresh interpreter, without blocking the loop that serves the host."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "teebus.cli", *args,
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    return subprocess.CompletedProcess(args, process.returncode, stdout.decode(), stderr.decode())


async def test_the_teebus_conclave_verbs(conclave, tmp_path: Path):
    host = await conclave("relay")
    constraint = constraint_for("relay")
    shown = await _teebus("conclave", "attest", "--url", host.url, "-c", constraint)
    assert shown.returncode == 0, shown.stderr
    assert apps.code_hash(apps.load("relay")).hex().upper() in shown.stdout and "MOCK / INSECURE" in shown.stdout
    alice, bob = tmp_path / "alice.json", tmp_path / "bob.json"
    joined = await _teebus("conclave", "send", "", "--topic", "t", "-c", constraint, "--state", str(alice), "--url", host.url)
    assert joined.returncode == 0 and '"members": 1' in joined.stdout, joined.stderr
    assert alice.stat().st_mode & 0o777 == 0o600
    spoke = await _teebus("conclave", "send", "hi", "--topic", "t", "-c", constraint, "--state", str(bob), "--url", host.url)
    assert spoke.returncode == 0, spoke.stderr
    polled = await _teebus("conclave", "poll", "--state", str(alice), "--url", host.url)
    assert polled.returncode == 0 and '"text": "hi"' in polled.stdout, polled.stderr
    again = await _teebus("conclave", "send", "more", "--topic", "t", "--state", str(bob), "-c", constraint, "--url", host.url)
    assert again.returncode == 0, again.stderr                              # numbers restored: no replay
    refused = await _teebus("conclave", "send", "x", "-c", "C:" + "00" * 32 + " SEC:INSECURE", "--url", host.url)
    assert refused.returncode == 1 and "code hash" in refused.stderr
    missing = await _teebus("conclave", "poll", "--url", host.url, "--state", str(tmp_path / "nobody.json"))
    assert missing.returncode == 1 and "--constraint" in missing.stderr


async def test_the_seeds_options_on_teebus_up_and_run(tmp_path: Path):
    for verb in ("up", "run"):
        shown = await _teebus(verb, "--help")
        for option in ("--sealed.state.file", "--filesystem.file", "--kds.url", "--kds.connection.timeout.seconds"):
            assert option in shown.stdout, (verb, option)
    refused = await _teebus("up", "--data-dir", str(tmp_path / "d"), "--kds.connection.timeout.seconds=3")
    assert refused.returncode == 1 and "needs --kds.url" in refused.stderr
    refused = await _teebus("run", "conclave.enclave", "--data-dir", str(tmp_path / "d"), "--kds.url=ftp://x")
    assert refused.returncode == 1 and "--kds.url must be an http" in refused.stderr
