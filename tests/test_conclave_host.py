"""The Conclave web host end to end: HTTP -> bus -> enclave and mailboxes, against the real session
nats-server, with mail and attestations built and read by tests/conclave_wire.py (the published
format, not our encoder). Each test names its own enclave, since the mailbox stream is shared."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import orjson
import pytest

from bus.errors import Unavailable
from components.conclave import mail_store
from bus.server import free_port
from components.conclave.config import ConclaveConfig
from components.conclave.kds_client import fetch_public_key
from tests import conclave_wire as wire
from tests.conclave_fixtures import NO_CACHE, Client, client_of

# -- attestation and the hello-world round trip ------------------------------------------------------

async def test_hello_world_round_trip_with_mail_written_from_the_format(conclave, session):
    host = await conclave()
    client = Client(host.url, session)
    eii = await client.attest()
    assert eii.attestation_type == 2 and len(eii.signing_key) == 44 and len(eii.encryption_key) == 32
    assert eii.report_data == hashlib.sha512(eii.signing_key + eii.encryption_key).digest()   # keys bound
    assert eii.product_id == 1 and eii.revocation_level == 0 and eii.code_signer == bytes(32)
    status, body, response = await client.post("/deliver-mail", client.mail("hello world".encode()))
    assert status == 200 and response.content_type == "application/octet-stream"
    reply = client.open(body)
    assert reply.body == b"dlrow olleh" and reply.topic == "default" and reply.sequence == 0
    assert reply.private_header == b""                  # hello-world keeps no persistent map
    second = await client.send("ab€".encode())
    assert second.body == "€ba".encode() and second.sequence == 1
    assert await client.poll() is None                  # the reply was synchronous: nothing queued


async def test_missing_correlation_id_is_400_in_springs_shape(conclave, session):
    host = await conclave()
    for path in ("/deliver-mail", "/poll-mail"):
        async with session.post(host.url + path, data=b"x") as response:
            assert response.status == 400 and response.headers["Cache-Control"] == NO_CACHE
            body = await response.json()
        assert body["status"] == 400 and body["error"] == "Bad Request" and "Correlation-ID" in body["message"]


async def test_any_tampered_byte_is_mail_decryption_with_a_null_message(conclave, session):
    host = await conclave()
    client = await client_of(host, session)
    mail = client.mail(b"secret")
    for position in (0, 1, 5, 20, 30, len(mail) // 2, len(mail) - 20, len(mail) - 1):
        tampered = bytearray(mail)
        tampered[position] ^= 0x01
        status, body = await client.deliver(bytes(tampered))
        assert status == 400, position
        assert orjson.loads(body) == {"error": "MAIL_DECRYPTION", "message": None}, position
    status, body = await client.deliver(b"not a mail at all")
    assert status == 400 and orjson.loads(body)["error"] == "MAIL_DECRYPTION"
    status, body = await client.deliver(mail)             # the untouched mail still goes through
    assert status == 200 and client.open(body).body == b"terces"


async def test_replays_and_gaps_are_refused_before_and_after_a_restart(conclave, session):
    host = await conclave()
    client = await client_of(host, session)
    first = client.mail(b"one")
    assert (await client.deliver(first))[0] == 200
    status, body = await client.deliver(first)
    error = orjson.loads(body)
    assert status == 400 and error["error"] == "ENCLAVE_EXCEPTION" and "was expecting 1" in error["message"]
    status, body = await client.deliver(client.mail(b"skip", sequence=5))
    assert status == 400 and "should be 1 but is instead 5" in orjson.loads(body)["message"]
    fresh = Client(host.url, session, enclave_key=client.enclave_key)
    status, body = await fresh.deliver(fresh.mail(b"x", sequence=3))
    assert status == 400 and "must be zero" in orjson.loads(body)["message"]
    known = client.enclave_key
    await host.restart()
    assert (await client.attest()).encryption_key == known        # the key survives: no re-attestation
    status, body = await client.deliver(first)                    # still a replay after the restart
    assert status == 400 and "was expecting 1" in orjson.loads(body)["message"]
    assert (await client.send(b"two")).body == b"owt"             # and the next number goes through
    other_topic = await client.send(b"x", topic="other")          # topics count on their own
    assert other_topic.sequence == 0


async def test_release_mode_hides_enclave_messages(conclave, session):
    host = await conclave(mode="release")
    client = await client_of(host, session)
    first = client.mail(b"one")
    await client.deliver(first)
    status, body = await client.deliver(first)
    assert status == 400 and orjson.loads(body) == {"error": "ENCLAVE_EXCEPTION", "message": None}


# -- mailboxes -----------------------------------------------------------------------------------------

async def test_relay_queues_mail_that_survives_a_restart_and_is_handed_out_once(conclave, session):
    host = await conclave("relay")
    alice, bob = await client_of(host, session), await client_of(host, session)
    assert orjson.loads((await alice.send(b"", topic="room1")).body) == {"members": 1}
    assert orjson.loads((await bob.send(b"hi alice", topic="room1")).body) == {"members": 2}
    assert orjson.loads((await bob.send(b"still there?", topic="room1")).body) == {"members": 2}
    await host.restart()
    first, second = await alice.poll(), await alice.poll()
    assert orjson.loads(first.body)["text"] == "hi alice" and orjson.loads(second.body)["text"] == "still there?"
    assert (first.sequence, second.sequence) == (1, 2)             # after the synchronous reply 0
    assert await alice.poll() is None and await bob.poll() is None


async def test_two_pollers_racing_on_one_correlation_id_get_each_mail_once_in_order(conclave, session):
    host = await conclave("relay")
    alice, bob = await client_of(host, session), await client_of(host, session)
    await alice.send(b"", topic="race")
    for n in range(30):
        await bob.send(f"m{n}".encode(), topic="race")
    twin = Client(await host.add_site(), session, private=alice.private, enclave_key=alice.enclave_key)

    async def drain(poller: Client) -> list[int]:
        got = []
        while (mail := await poller.poll()) is not None:
            got.append(int(orjson.loads(mail.body)["text"][1:]))
        return got

    mine, theirs = await asyncio.gather(drain(alice), drain(twin))
    assert sorted(mine + theirs) == list(range(30))               # every mail once
    assert mine == sorted(mine) and theirs == sorted(theirs)      # each poller sees FIFO order


async def test_replicas_of_the_host_serve_one_enclave(conclave, session):
    host = await conclave("relay")
    second, third = await host.add_site(), await host.add_site()
    alice = await client_of(host, session, url=second)            # attests through one replica
    alice.url = third                                             # delivers through another
    await alice.send(b"", topic="r")
    bob = await client_of(host, session, url=host.url)
    await bob.send(b"hello", topic="r")
    alice.url = host.url                                          # and polls through a third
    assert orjson.loads((await alice.poll()).body)["text"] == "hello"


async def test_a_long_poll_waits_for_mail_and_a_plain_poll_does_not(conclave, session):
    host = await conclave("relay")
    alice, bob = await client_of(host, session), await client_of(host, session)
    await alice.send(b"", topic="wait")
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await alice.poll() is None and loop.time() - started < 2
    waiting = asyncio.create_task(alice.poll(**{"Teebus-Poll-Wait": "20"}))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    await bob.send(b"now", topic="wait")
    mail = await asyncio.wait_for(waiting, 10)
    assert orjson.loads(mail.body)["text"] == "now"
    status, body, _ = await alice.post("/poll-mail", **{"Teebus-Poll-Wait": "9999"})
    assert status == 400 and "poll wait" in orjson.loads(body)["message"]


async def test_a_full_mailbox_refuses_and_the_sender_may_resend(conclave, session, connect_as):
    host = await conclave("relay", mailbox_depth=2)
    try:
        alice, bob = await client_of(host, session), await client_of(host, session)
        await alice.send(b"", topic="full")
        await bob.send(b"1", topic="full")
        await bob.send(b"2", topic="full")
        third = bob.mail(b"3", topic="full")
        status, body = await bob.deliver(third)
        assert status == 503 and "poll them" in orjson.loads(body)["message"]
        assert orjson.loads((await alice.poll()).body)["text"] == "1"
        status, body = await bob.deliver(third)                      # refused mail changed nothing
        assert status == 200 and bob.open(body).body == b'{"members": 2}'
    finally:
        await mail_store.ensure_stream(await connect_as("conclave"), ConclaveConfig())  # the default depth again


async def test_after_an_unanswered_delete_a_mail_counts_as_taken_only_once_it_is_gone(connect_as):
    """What `take` asks when its delete got no answer (a cluster losing a server): a mail still in
    the mailbox was not taken (the poller hears 504 and polls again); a gone one is handed out."""
    conclave_role = await connect_as("conclave")
    await mail_store.ensure_stream(conclave_role, ConclaveConfig())
    js = conclave_role.jetstream()
    stored = await js.publish(mail_store.subjects.stored_mail("unanswered", "hint"), b"mail")
    assert not await mail_store._gone(js, stored.seq)
    await js.delete_msg(mail_store.subjects.MAIL_STREAM, stored.seq)
    assert await mail_store._gone(js, stored.seq)


# -- state and bounds ---------------------------------------------------------------------------------

async def test_key_value_state_is_sealed_and_restored(conclave, session):
    host = await conclave("key-value")
    client = await client_of(host, session)
    put = await client.send(orjson.dumps({"op": "put", "key": "colour", "value": "green"}))
    assert orjson.loads(put.body) == {"ok": True, "previous": None}
    assert put.private_header[0] == 1 and len(put.private_header) == 18    # version, id, previous is null
    state_file = Path(host.config.sealed_state_file)
    raw = state_file.read_bytes()
    assert raw[:6] == b"\x00\x00\x00\x02\x01\x03" and b"green" not in raw  # header [1, MOCK], sealed
    assert state_file.stat().st_mode & 0o777 == 0o600
    await host.restart()
    got = await client.send(orjson.dumps({"op": "get", "key": "colour"}))
    assert orjson.loads(got.body) == {"ok": True, "value": "green"}
    assert got.private_header[1:17] != put.private_header[1:17] and got.private_header[18:] == put.private_header[1:17]
    bad = client.mail(b"not json")
    status, body = await client.deliver(bad)
    assert status == 400 and "JSON" in orjson.loads(body)["message"]
    assert orjson.loads((await client.send(orjson.dumps({"op": "keys"}))).body) == {"ok": True, "keys": ["colour"]}


async def test_a_sealed_state_of_another_mode_is_refused(conclave, session):
    host = await conclave()
    await host.stop()
    with pytest.raises(Unavailable, match="sealed by a MOCK enclave"):
        await host.restart(mode="debug")


async def test_another_application_gets_a_new_key_and_the_old_state_is_kept(conclave, session):
    host = await conclave()
    old = (await client_of(host, session)).enclave_key
    await host.restart(app="key-value")
    assert (await client_of(host, session)).enclave_key != old
    assert list(Path(host.config.sealed_state_file).parent.glob("*.unopenable"))


async def test_bounds_on_mail_and_correlation_id(conclave, session):
    host = await conclave(max_mail_bytes=4096)
    client = await client_of(host, session)
    status, _ = await client.deliver(client.mail(b"x" * 5000))
    assert status == 413
    status, body, _ = await client.post("/deliver-mail", client.mail(b"x"), **{"Correlation-ID": "x" * 2000})
    assert status == 400 and "longer than" in orjson.loads(body)["message"]
    client.numbers["default"] = 0                          # refused unread: they used up no number
    assert (await client.send(b"ok")).body == b"ko"


# -- the KDS: a sealing key for the enclave, and mail encrypted to a KDS key --------------------------

def kds_spec(name: str, constraint: str) -> bytes:
    """§2 key derivation type 1, by hand: 01 | i32 name | u8 master key type | i32 constraint."""
    raw_name, raw_constraint = name.encode(), constraint.encode()
    spec = (b"\x01" + len(raw_name).to_bytes(4, "big") + raw_name + b"\x00"
            + len(raw_constraint).to_bytes(4, "big") + raw_constraint)
    return spec + b"\x00" if len(spec) == 18 else spec


async def test_with_a_kds_the_enclave_seals_under_its_key_and_opens_kds_mail(conclave, session, kds_url):
    host = await conclave(kds_url=kds_url, kds_connection_timeout_seconds=5)
    client = await client_of(host, session)
    assert (await client.send(b"abc")).body == b"cba"
    await host.restart()
    assert (await client.attest()).encryption_key == client.enclave_key       # unsealed with the KDS's key
    constraint = "C:" + (await client.attest()).code_hash.hex() + " SEC:INSECURE"
    public = await fetch_public_key(kds_url, name="shared", master_key_type=0, policy_constraint=constraint, timeout=5)
    for attempt in range(2):                       # KDS mail is exempt from the sequence check: 0 twice
        mail = wire.write_mail(b"to the kds key", sender_private=client.private, recipient_public=public,
                               sequence=0, ephemeral_private=os.urandom(32),
                               key_derivation=kds_spec("shared", constraint))
        status, body = await client.deliver(mail)
        assert status == 200, body
        reply = wire.read_mail(body, client.private)
        assert reply.body == b"yek sdk eht ot" and reply.sender == public and reply.sequence == 0, attempt
    sealed_by_kds = client.enclave_key
    await host.restart(kds_url="", kds_connection_timeout_seconds=None)     # the host's own key: no state
    assert (await client.attest()).encryption_key != sealed_by_kds


async def test_an_unreachable_kds_stops_the_enclave_with_a_clear_error(conclave):
    with pytest.raises(Unavailable, match="--kds.url"):
        await conclave(kds_url=f"http://127.0.0.1:{free_port()}", kds_connection_timeout_seconds=1)


def test_kds_timeout_without_a_kds_url_is_refused():
    with pytest.raises(ValueError, match="needs --kds.url"):
        ConclaveConfig(kds_connection_timeout_seconds=5)
    assert ConclaveConfig(kds_url="http://kds:8090").kds_timeout == 10


async def test_the_filesystem_file_holds_the_key_value_store_sealed(conclave, session, tmp_path):
    store = tmp_path / "enclave.fs"
    host = await conclave("key-value", filesystem_file=str(store))
    client = await client_of(host, session)
    await client.send(orjson.dumps({"op": "put", "key": "k", "value": "in the file store"}))
    raw = store.read_bytes()
    assert raw[:6] == b"\x00\x00\x00\x02\x01\x03" and b"in the file store" not in raw
    assert store.stat().st_mode & 0o777 == 0o600
    await host.restart()
    got = await client.send(orjson.dumps({"op": "get", "key": "k"}))
    assert orjson.loads(got.body) == {"ok": True, "value": "in the file store"}
    await host.restart(filesystem_file="")                 # without the file store: the map, empty
    got = await client.send(orjson.dumps({"op": "get", "key": "k"}))
    assert orjson.loads(got.body) == {"ok": True, "value": None}
