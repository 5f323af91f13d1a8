"""Conclave's KDS end to end: the documented REST API (docs/kds-rest-api.md) over HTTP, through the
`conclave-kds` site and the bus to the Kds component, against the session's nats-server.

Request bodies are written out as JSON here, as the docs print them (the docs' own examples verbatim
where they still apply); signatures and envelopes are checked against byte layouts built here by
hand from the docs, not with the code under test. Keys must be deterministic per key spec, survive a
restart, and a private key must reach only an enclave meeting the key's policy, as Mail it alone
can open, from the KDS's attested key."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from types import SimpleNamespace

import aiohttp
import orjson
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bus.errors import BadRequest, Internal
from bus.records import Records
from bus.requester import Requester
from bus.sealing import MasterKey
from bus.server import free_port
from components.conclave import eii as eiis
from components.conclave import kds_keys, mail, subjects
from components.conclave.constraints import EnclaveConstraint
from components.conclave.kds import KDS_CODE_HASH, Kds, _load_or_create
from components.conclave.kds_client import (KdsBadReply, KdsRefused, KdsUnavailable, fetch_private_key,
                                            fetch_public_key)
from tests.local_http import serve_locally

SPKI_X25519 = bytes.fromhex("302a300506032b656e032100")
DOC_SIGNER = "4924CA3A9C8241A3C0AA1A24A407AA86401D2B79FA9FF84932DA798A942166D4"
DOC_POLICY = f"S:{DOC_SIGNER} PROD:1 SEC:INSECURE"
APP_CODE_HASH = hashlib.sha256(b"com.example.KeyValueEnclave").digest()
POLICY = f"C:{APP_CODE_HASH.hex().upper()} SEC:INSECURE"
KDS_PIN = f"C:{KDS_CODE_HASH.hex()} SEC:INSECURE"

# docs/kds-rest-api.md, "/public" request example, byte for byte.
DOC_PUBLIC = b'''{
    "name": "MasterKeyForTesting",
    "masterKeyType": "development",
    "policyConstraint":"S:4924CA3A9C8241A3C0AA1A24A407AA86401D2B79FA9FF84932DA798A942166D4 PROD:1 SEC:INSECURE"
}'''
# docs/kds-rest-api.md, "/private" request example, byte for byte (a simulation-mode EII of Conclave's).
DOC_PRIVATE = b'''{
    "appAttestationReport": "RUlJAAAALDAqMAUGAytlcAMhAINkJMp+IBZSnSWEY1ux0z/HRfpzllu1I2oT0R6zl82MAAAAIARTUJux1z0gV889af4tL3iOAM300VuZbWppAZLZ/QwzAgAAAY0AAAAAYfK2fykTkGBIIPM3auay8gNNO3pLSKd4AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAHAAAAAAAAAAcAAAAAAAAAWN4G6qxjHqRGYJjDJViSVwClv6xlhw5HtR26hr1swdoAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEkkyjqcgkGjwKoaJKQHqoZAHSt5+p/4STLaeYqUIWbUAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAQABAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAIczKEHJt2DTFS6SfYsgVDWPAMMgy6wnPBhVHs8tfNiZevzUaW2+1dYfm62aUeGmAOI24vKtY++UV6nkTWYWRXcB",
    "name": "MasterKeyForTesting",
    "masterKeyType": "development",
    "policyConstraint": "S:4924CA3A9C8241A3C0AA1A24A407AA86401D2B79FA9FF84932DA798A942166D4 PROD:1 SEC:INSECURE"
}'''


def public_body(name: str = "MasterKeyForTesting", kind: str = '"development"', policy: str = POLICY) -> bytes:
    return f'{{"name": "{name}", "masterKeyType": {kind}, "policyConstraint": "{policy}"}}'.encode()


def private_body(report: bytes | str, name: str = "MasterKeyForTesting", kind: str = '"development"',
                 policy: str = POLICY) -> bytes:
    encoded = report if isinstance(report, str) else base64.b64encode(report).decode()
    return (f'{{\n    "appAttestationReport": "{encoded}",\n    "name": "{name}",\n'
            f'    "masterKeyType": {kind},\n    "policyConstraint": "{policy}"\n}}').encode()


def spec_bytes(name: str, kind: int, policy: str) -> bytes:
    """docs/kds-rest-api.md: version | i32 len + name | type | i32 len + constraint (the envelope)."""
    return (b"\x01" + struct.pack(">i", len(name.encode())) + name.encode() + bytes([kind])
            + struct.pack(">i", len(policy.encode())) + policy.encode())


def signed_bytes(name: str, kind: int, policy: str, public_key: bytes) -> bytes:
    """docs/kds-rest-api.md, Public Key Integrity Check: the spec, then u16 len + the key as sent."""
    return spec_bytes(name, kind, policy) + struct.pack(">H", len(public_key)) + public_key


def app_enclave(code_hash: bytes = APP_CODE_HASH, **fields) -> tuple[bytes, bytes]:
    """A mock application enclave: (its secret = X25519 private key, its serialized EII)."""
    secret = os.urandom(32)
    info = eiis.mock_instance_info(secret, code_hash=code_hash, product_id=fields.pop("product_id", 1),
                                   revocation_level=fields.pop("revocation_level", 0), **fields)
    return secret, info.serialize()


def b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


@pytest.fixture
async def http(kds_url):
    async with aiohttp.ClientSession(base_url=kds_url) as session:
        yield session


async def call(http: aiohttp.ClientSession, path: str, body: bytes, *, method: str = "POST",
               version: str | None = "1") -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if version is not None:
        headers["API-VERSION"] = version
    async with http.request(method, path, data=body, headers=headers) as response:
        assert response.content_type == "application/json"
        return response.status, orjson.loads(await response.read())


async def ok(http: aiohttp.ClientSession, path: str, body: bytes, **options) -> dict:
    status, reply = await call(http, path, body, **options)
    assert status == 200, reply
    return reply


async def refused(http: aiohttp.ClientSession, path: str, body: bytes, status: int, **options) -> str:
    got, reply = await call(http, path, body, **options)
    assert got == status, reply
    assert set(reply) == {"reason"}, reply
    return reply["reason"]


# --- /public ----------------------------------------------------------------------------------------

async def test_docs_public_example_signed_by_the_attested_kds(http):
    async with http.post("/public", data=DOC_PUBLIC,
                         headers={"API-version": "1", "Content-Type": "application/json"}) as response:
        assert response.status == 200
        reply = orjson.loads(await response.read())
    assert list(reply) == ["publicKey", "signature", "kdsAttestationReport"]
    public_key, signature = b64(reply["publicKey"]), b64(reply["signature"])
    assert len(public_key) == 44 and public_key[:12] == SPKI_X25519
    kds = eiis.EnclaveInstanceInfo.deserialize(b64(reply["kdsAttestationReport"]))
    assert kds.code_hash == KDS_CODE_HASH
    EnclaveConstraint.parse(KDS_PIN).check(kds)
    verifier = Ed25519PublicKey.from_public_bytes(kds.signing_key[12:])
    verifier.verify(signature, signed_bytes("MasterKeyForTesting", 0, DOC_POLICY, public_key))
    # PUT is the docs' heading for the same call
    assert await ok(http, "/public", DOC_PUBLIC, method="PUT") == reply


async def test_public_key_is_deterministic_per_key_spec(http):
    first = (await ok(http, "/public", public_body()))["publicKey"]
    assert (await ok(http, "/public", public_body()))["publicKey"] == first
    for kind in ('"DEVELOPMENT"', '"Development"', "0"):          # Jackson's enum reading, and the id
        assert (await ok(http, "/public", public_body(kind=kind)))["publicKey"] == first
    others = {(await ok(http, "/public", public_body(name="OtherKey")))["publicKey"],
              (await ok(http, "/public", public_body(policy=DOC_POLICY)))["publicKey"],
              (await ok(http, "/public", public_body(policy=POLICY + " REVOKE:0")))["publicKey"]}
    assert first not in others and len(others) == 3


# --- /private ---------------------------------------------------------------------------------------

async def test_private_key_reaches_a_satisfying_enclave_as_mail_from_the_kds(http):
    secret, report = app_enclave()
    reply = await ok(http, "/private", private_body(report))
    assert list(reply) == ["kdsAttestationReport", "encryptedPrivateKey"]
    kds = eiis.EnclaveInstanceInfo.deserialize(b64(reply["kdsAttestationReport"]))
    opened = mail.decrypt_mail(b64(reply["encryptedPrivateKey"]), secret)
    assert opened.sender == kds.encryption_key
    assert opened.header.envelope == spec_bytes("MasterKeyForTesting", 0, POLICY)
    assert opened.header.sequence_number == 0 and opened.header.key_derivation is None
    mail.check_topic(opened.header.topic)
    assert len(opened.body) == 32
    public = b64((await ok(http, "/public", public_body()))["publicKey"])
    derived = X25519PrivateKey.from_private_bytes(opened.body).public_key().public_bytes_raw()
    assert public == SPKI_X25519 + derived
    # the same key for another enclave meeting the policy, not for another spec
    other_secret, other_report = app_enclave()
    again = mail.decrypt_mail(b64((await ok(http, "/private", private_body(other_report)))["encryptedPrivateKey"]),
                              other_secret)
    assert again.body == opened.body
    renamed = await ok(http, "/private", private_body(report, name="OtherKey"))
    assert mail.decrypt_mail(b64(renamed["encryptedPrivateKey"]), secret).body != opened.body


async def test_docs_private_example_is_served(http):
    """The docs' request verbatim: its simulation EII meets its S:/PROD:/SEC: policy. Nobody holds that
    enclave's key, so only the mail's cleartext header can be checked."""
    reply = await ok(http, "/private", DOC_PRIVATE)
    header = mail.read_header(b64(reply["encryptedPrivateKey"]))
    assert header.envelope == spec_bytes("MasterKeyForTesting", 0, DOC_POLICY)
    assert header.sequence_number == 0 and header.key_derivation is None


async def test_refused_when_the_enclave_does_not_meet_the_policy(http):
    _, stranger = app_enclave(code_hash=hashlib.sha256(b"com.example.Impostor").digest())
    reason = await refused(http, "/private", private_body(stranger), 400)
    assert "does not meet the required key policy" in reason and "C term" in reason
    assert APP_CODE_HASH.hex() in reason.lower()
    _, wrong_product = app_enclave(code_signer=bytes.fromhex(DOC_SIGNER), product_id=2)
    reason = await refused(http, "/private", private_body(wrong_product, policy=DOC_POLICY), 400)
    assert "PROD term" in reason
    _, old = app_enclave(revocation_level=1)
    reason = await refused(http, "/private", private_body(old, policy=POLICY + " REVOKE:2"), 400)
    assert "REVOKE term" in reason


async def test_api_version_header_is_required(http):
    for path, body in (("/public", public_body()), ("/private", private_body(app_enclave()[1]))):
        assert "API-VERSION header is missing" in await refused(http, path, body, 400, version=None)
        assert "not supported" in await refused(http, path, body, 400, version="2")
        assert "not supported" in await refused(http, path, body, 400, version="one")


async def test_master_key_types(http):
    _, report = app_enclave()
    for kind in ('"foo"', "7", "-1", "true", '"debug"', "1.5", "{}"):
        reason = await refused(http, "/public", public_body(kind=kind), 400)
        assert "masterKeyType" in reason or "master key type" in reason
    for kind in ('"cluster"', '"AZURE_HSM"', "2"):
        reason = await refused(http, "/public", public_body(kind=kind), 404)
        assert "not available on this KDS" in reason and "development" in reason
        assert "not available" in await refused(http, "/private", private_body(report, kind=kind), 404)


@pytest.mark.parametrize("body, says", [
    (b'{"name": "k", "masterKeyType": "development",', "not valid JSON"),
    (b"[]", "must be a JSON object"),
    (b'"MasterKeyForTesting"', "must be a JSON object"),
    (b'{"masterKeyType": "development", "policyConstraint": "C:00"}', "missing field(s) name"),
    (public_body(name=""), "name must not be empty"),
    (public_body(name="k" * 256), "at most 255"),
    (b'{"name": 7, "masterKeyType": "development", "policyConstraint": "SEC:INSECURE"}', "name must be a string"),
    (b'{"name": "k\\u0000", "masterKeyType": "development", "policyConstraint": "S:00"}', "control characters"),
    (public_body(policy="X:1"), "not a valid enclave constraint"),
    (public_body(policy="C:1234"), "not a valid enclave constraint"),
    (public_body(policy="SEC:INSECURE"), "not a valid enclave constraint"),
    (public_body(policy="C:" + "ab" * 32 + " " * 9000), "at most 8192"),
    (b'{"name": "k", "masterKeyType": "development", "policyConstraint": "S:00", "mkURL": "x"}', "unknown field"),
])
async def test_malformed_public_requests(http, body, says):
    assert says in await refused(http, "/public", body, 400)


async def test_malformed_private_requests(http):
    _, report = app_enclave()
    for body, says in ((private_body("not base64!"), "not valid Base64"),
                       (private_body(b"garbage"), "not a valid EnclaveInstanceInfo"),
                       (private_body(report[:-10]), "not a valid EnclaveInstanceInfo"),
                       (private_body(""), "appAttestationReport is empty"),
                       (public_body(), "missing field(s) appAttestationReport"),
                       (private_body(b"EII" + bytes(41 * 1024)), "at most 40960 bytes")):
        assert says in await refused(http, "/private", body, 400)


async def test_oversized_bodies_and_other_methods(http):
    huge = private_body(b"EII" + bytes(50 * 1024))
    assert len(huge) > 64 * 1024
    assert "exceeds the limit of 65536 bytes" in await refused(http, "/private", huge, 413)
    assert "Method Not Allowed" in await refused(http, "/private", b"", 405, method="GET")
    assert "Not Found" in await refused(http, "/keys", public_body(), 404)


async def test_the_bus_checks_requests_on_its_own(connect_as, kds):
    bus = Requester(await connect_as("adapter"))
    body = orjson.loads(public_body())
    with pytest.raises(BadRequest, match="API-VERSION"):
        await bus.request(subjects.KDS_PUBLIC, body)
    with pytest.raises(BadRequest, match="policyConstraint"):
        await bus.request(subjects.KDS_PUBLIC, {"apiVersion": 1, **body, "policyConstraint": "C:1"})
    reply = (await bus.request(subjects.KDS_PUBLIC, {"apiVersion": 1, **body})).payload
    assert set(reply) == {"publicKey", "signature", "kdsAttestationReport"}


# --- durability -------------------------------------------------------------------------------------

async def test_a_restarted_kds_gives_the_same_keys(http, kds, start_component):
    secret, report = app_enclave()
    before_public = await ok(http, "/public", public_body())
    before_key = mail.decrypt_mail(b64((await ok(http, "/private", private_body(report)))["encryptedPrivateKey"]),
                                   secret).body
    await kds.stop()
    await start_component(Kds)
    assert await ok(http, "/public", public_body()) == before_public     # same key, signature and EII
    after = mail.decrypt_mail(b64((await ok(http, "/private", private_body(report)))["encryptedPrivateKey"]), secret)
    assert after.body == before_key


async def test_a_replica_without_the_sealing_key_refuses_to_start(start_component, tmp_path):
    await start_component(Kds)                     # the deployment's secrets exist (the session's data dir)
    with pytest.raises(Internal, match="kds.sealing.key"):
        await start_component(Kds, tmp_path)
    assert (tmp_path / "conclave" / "kds.sealing.key").stat().st_mode & 0o777 == 0o600


async def test_replicas_racing_at_first_start_agree(connect_as, tmp_path):
    admin = await connect_as("admin")
    bucket = f"kds_race_{os.urandom(4).hex()}"
    sealer = MasterKey.load_or_create(tmp_path / "sealing.key")
    try:
        records = [await Records.open(admin, bucket) for _ in range(5)]
        results = await asyncio.gather(*(_load_or_create(r, sealer) for r in records))
        assert len({(s.development, s.identity, created) for s, created, _ in results}) == 1
        assert sorted(made for _, _, made in results) == [False] * 4 + [True]
        stored = (await records[0].get("secrets")).value
        assert results[0][0].development.hex() not in orjson.dumps(stored).decode()   # sealed at rest
    finally:
        await admin.jetstream().delete_key_value(bucket)


# --- the client an enclave uses -------------------------------------------------------------------

async def test_fetch_private_and_public_key(kds_url, http):
    secret, report = app_enclave()
    key = await fetch_private_key(kds_url, eii=report, encryption_private=secret, name="MasterKeyForTesting",
                                  master_key_type=0, policy_constraint=POLICY, timeout=5, kds_constraint=KDS_PIN)
    via_http = mail.decrypt_mail(b64((await ok(http, "/private", private_body(report)))["encryptedPrivateKey"]),
                                 secret).body
    assert key == via_http
    public = await fetch_public_key(kds_url + "/", name="MasterKeyForTesting", master_key_type=0,
                                    policy_constraint=POLICY, timeout=5, kds_constraint=KDS_PIN)
    assert public == X25519PrivateKey.from_private_bytes(key).public_key().public_bytes_raw()


async def test_fetch_reports_refusals_and_untrusted_kds(kds_url):
    secret, report = app_enclave(code_hash=bytes(32))
    with pytest.raises(KdsRefused, match="key policy") as refusal:
        await fetch_private_key(kds_url, eii=report, encryption_private=secret, name="k", master_key_type=0,
                                policy_constraint=POLICY, timeout=5)
    assert refusal.value.status == 400
    with pytest.raises(KdsRefused, match="not available") as missing:
        await fetch_public_key(kds_url, name="k", master_key_type=1, policy_constraint=POLICY, timeout=5)
    assert missing.value.status == 404
    with pytest.raises(KdsBadReply, match="KDS enclave constraint"):
        await fetch_public_key(kds_url, name="k", master_key_type=0, policy_constraint=POLICY, timeout=5,
                               kds_constraint=f"C:{'00' * 32} SEC:INSECURE")


async def test_fetch_rejects_replies_that_prove_nothing(kds_url):
    """A KDS in the middle: it relays the real KDS's answers, altered."""
    secret, report = app_enclave()
    async with aiohttp.ClientSession() as session:
        async with session.post(kds_url + "/public", data=public_body(), headers={"API-VERSION": "1"}) as response:
            real_public = orjson.loads(await response.read())
        async with session.post(kds_url + "/private", data=private_body(report), headers={"API-VERSION": "1"}) as r:
            real_private = orjson.loads(await r.read())
    impostor = os.urandom(32)
    forged = mail.encrypt_mail(os.urandom(32), recipient_public=mail.public_key(secret), sender_private=impostor,
                               topic="kds", sequence_number=0, envelope=spec_bytes("MasterKeyForTesting", 0, POLICY))
    flipped = bytearray(b64(real_public["publicKey"]))
    flipped[-1] ^= 1
    answers = {
        "tampered": {**real_public, "publicKey": base64.b64encode(bytes(flipped)).decode()},
        "forged": {**real_private, "encryptedPrivateKey": base64.b64encode(forged).decode()},
        "other": real_private,             # the real KDS's key for MasterKeyForTesting, asked as OtherKey
        "huge": {"reason": "x" * (300 * 1024)},
        "empty": {},
    }
    served: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        served.append(request.headers.get("API-VERSION", ""))
        return web.json_response(answers[request.match_info["case"]])

    app = web.Application()
    app.router.add_post("/{case}/public", handler)
    app.router.add_post("/{case}/private", handler)
    port = free_port()
    runner = await serve_locally(app, port)
    fake = f"http://127.0.0.1:{port}"
    spec = dict(name="MasterKeyForTesting", master_key_type=0, policy_constraint=POLICY, timeout=5)
    try:
        with pytest.raises(KdsBadReply, match="signature does not verify"):
            await fetch_public_key(f"{fake}/tampered", **spec)
        with pytest.raises(KdsBadReply, match="not sent by the KDS"):
            await fetch_private_key(f"{fake}/forged", eii=report, encryption_private=secret, **spec)
        with pytest.raises(KdsBadReply, match="another key spec"):
            await fetch_private_key(f"{fake}/other", eii=report, encryption_private=secret,
                                    **{**spec, "name": "OtherKey"})
        with pytest.raises(KdsBadReply, match="more than|bytes; at most"):
            await fetch_public_key(f"{fake}/huge", **spec)
        with pytest.raises(KdsBadReply, match="lacks"):
            await fetch_public_key(f"{fake}/empty", **spec)
        assert set(served) == {"1"}
    finally:
        await runner.cleanup()


async def test_fetch_times_out_and_reports_an_unreachable_kds():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(KdsUnavailable, match="did not answer within 0.3 s"):
            await fetch_public_key(f"http://127.0.0.1:{port}", name="k", master_key_type=0,
                                   policy_constraint=POLICY, timeout=0.3)
        assert asyncio.get_running_loop().time() - started < 2
    finally:
        server.close()
    with pytest.raises(KdsUnavailable, match="cannot reach"):
        await fetch_public_key(f"http://127.0.0.1:{free_port()}", name="k", master_key_type=0,
                               policy_constraint=POLICY, timeout=5)


# --- pure parts ---------------------------------------------------------------------------------------

def test_development_keys_are_not_released_to_release_enclaves():
    passes = SimpleNamespace(check=lambda attestation: None)
    release = SimpleNamespace(enclave_mode=eiis.EnclaveMode.RELEASE)
    with pytest.raises(kds_keys.PolicyError, match="release mode"):
        kds_keys.check_policy(passes, release, kds_keys.MasterKeyType.DEVELOPMENT)
    kds_keys.check_policy(passes, SimpleNamespace(enclave_mode=eiis.EnclaveMode.DEBUG),
                          kds_keys.MasterKeyType.DEVELOPMENT)


def test_key_spec_bounds_and_layouts():
    spec = kds_keys.key_spec("k" * 255, "development", POLICY)
    assert kds_keys.encode_spec(spec) == spec_bytes("k" * 255, 0, POLICY)
    assert kds_keys.decode_spec(kds_keys.encode_spec(spec)) == (1, spec)
    with pytest.raises(ValueError, match="bytes after"):
        kds_keys.decode_spec(kds_keys.encode_spec(spec) + b"\x00")
    for bad in (("", "development", POLICY), ("k", "development", ""), ("k", None, POLICY), ("k", 3, POLICY)):
        with pytest.raises(kds_keys.KeySpecError):
            kds_keys.key_spec(*bad)
    master = os.urandom(32)
    key = kds_keys.derive_private_key(master, spec)
    assert key == kds_keys.derive_private_key(master, spec) != kds_keys.derive_private_key(os.urandom(32), spec)
    assert kds_keys.raw_public_key(kds_keys.public_key(key)) == kds_keys.public_key(key)[12:]
    assert "hidden" in repr(kds_keys.MasterSecrets.generate())
