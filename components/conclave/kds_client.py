"""What an enclave (or a client) uses to get keys from a KDS over HTTP, as Conclave's host and
KDSPostOfficeBuilder do (EnclaveHost.executeKdsPrivateKeyRequest, KdsPrivateKeyResponse.kt,
KDSPostOfficeBuilder.kt).

`fetch_private_key` posts the enclave's attestation and key spec to `<url>/private`, decrypts the
Mail it gets with the enclave's X25519 key and accepts the 32 bytes only if the Mail came from the
KDS's attested encryption key and its envelope repeats the spec asked for. `fetch_public_key` posts
the spec to `<url>/public` and accepts the key only under a valid signature of the KDS's attested
signing key. Either may pin the KDS with an enclave constraint (`kds_constraint`), as Conclave's
enclaves do with their `kdsEnclaveConstraint`. Replies are read up to MAX_REPLY_BYTES; every failure
is a KdsError saying what went wrong, never quoting key material.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from components.conclave import kds_keys
from components.conclave import kds_messages as messages
from components.conclave.constraints import EnclaveConstraint
from components.conclave.eii import SIGNING_KEY_PREFIX, EiiError, EnclaveInstanceInfo
from components.conclave.mail import MailDecryptionError, decrypt_mail

MAX_REPLY_BYTES = 256 * 1024       # two Base64 EIIs and a mail fit many times over


class KdsError(Exception):
    """Getting a key from the KDS failed; the message says how."""


class KdsUnavailable(KdsError):
    """The KDS could not be reached, or did not answer in time."""


class KdsRefused(KdsError):
    """The KDS answered with an error (`{"reason"}`): `status` and `reason` are its words."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"the KDS refused the request ({status}): {reason}")
        self.status = status
        self.reason = reason


class KdsBadReply(KdsError):
    """The KDS's answer is malformed, or does not prove what it must (signature, sender, envelope)."""


async def fetch_private_key(url: str, *, eii: bytes, encryption_private: bytes, name: str, master_key_type: int,
                            policy_constraint: str, timeout: float, kds_constraint: str | None = None) -> bytes:
    """The 32 bytes of key material for (name, master key type, policy constraint), released to the
    enclave attested by `eii`, whose X25519 private key is `encryption_private`."""
    spec = _spec(name, master_key_type, policy_constraint)
    body = {"appAttestationReport": messages.b64encode(eii), **_spec_json(spec)}
    reply = _fields(await _post(url, "/private", body, timeout), messages.PRIVATE_REPLY_FIELDS)
    kds = _kds_instance(reply["kdsAttestationReport"], kds_constraint)
    try:
        mail = decrypt_mail(reply["encryptedPrivateKey"], encryption_private, max_size=kds_keys.KEY_BYTES)
    except MailDecryptionError as exc:
        raise KdsBadReply(f"the KDS's encryptedPrivateKey does not decrypt with this enclave's key: {exc}") from None
    if mail.sender != kds.encryption_key:
        raise KdsBadReply("the private key mail was not sent by the KDS's attested encryption key")
    if mail.header.envelope is None:
        raise KdsBadReply("the private key mail has no envelope naming the key spec")
    try:
        version, released = kds_keys.decode_spec(mail.header.envelope)
    except ValueError as exc:
        raise KdsBadReply(f"the private key mail's envelope is unreadable: {exc}") from None
    if version != kds_keys.API_VERSION or released != spec:
        raise KdsBadReply("the KDS released a key for another key spec than the one requested")
    if len(mail.body) != kds_keys.KEY_BYTES:
        raise KdsBadReply(f"the KDS released {len(mail.body)} bytes of key material, not {kds_keys.KEY_BYTES}")
    return bytes(mail.body)


async def fetch_public_key(url: str, *, name: str, master_key_type: int, policy_constraint: str, timeout: float,
                           kds_constraint: str | None = None) -> bytes:
    """The raw 32-byte X25519 public key of a key spec, after checking the KDS's signature over it."""
    spec = _spec(name, master_key_type, policy_constraint)
    reply = _fields(await _post(url, "/public", _spec_json(spec), timeout), messages.PUBLIC_REPLY_FIELDS)
    kds = _kds_instance(reply["kdsAttestationReport"], kds_constraint)
    encoded = reply["publicKey"]
    verifier = Ed25519PublicKey.from_public_bytes(kds.signing_key[len(SIGNING_KEY_PREFIX):])
    try:
        verifier.verify(reply["signature"], kds_keys.signed_bytes(spec, encoded))
    except InvalidSignature:
        raise KdsBadReply("the public key's signature does not verify with the KDS's attested signing key: "
                          "the reply was altered, or answers another key spec") from None
    try:
        return kds_keys.raw_public_key(encoded)
    except ValueError as exc:
        raise KdsBadReply(str(exc)) from None


def _spec(name: str, master_key_type: int, policy_constraint: str) -> kds_keys.KeySpec:
    try:
        return kds_keys.key_spec(name, master_key_type, policy_constraint)
    except kds_keys.KeySpecError as exc:
        raise ValueError(str(exc)) from None


def _spec_json(spec: kds_keys.KeySpec) -> dict[str, Any]:
    """As Conclave's Jackson mapper writes a KDSKeySpec: the enum by its name."""
    return {"name": spec.name, "masterKeyType": spec.master_key_type.name, "policyConstraint": spec.policy_constraint}


def _fields(body: Any, fields: tuple[str, ...]) -> dict[str, bytes]:
    """The reply's Base64 fields, decoded (KdsBadReply when one is missing or malformed)."""
    try:
        return messages.read_reply(body, fields)
    except ValueError as exc:
        raise KdsBadReply(f"the KDS's reply is not what Conclave's KDS sends: {exc}") from None


def _kds_instance(attestation: bytes, kds_constraint: str | None) -> EnclaveInstanceInfo:
    try:
        kds = EnclaveInstanceInfo.deserialize(attestation)
    except EiiError as exc:
        raise KdsBadReply(f"the KDS's kdsAttestationReport is not an EnclaveInstanceInfo: {exc}") from None
    if kds_constraint is not None:
        try:
            EnclaveConstraint.parse(kds_constraint).check(kds)
        except ValueError as exc:
            raise KdsBadReply(f"the KDS does not meet the KDS enclave constraint: {exc}") from None
    return kds


async def _post(url: str, path: str, body: dict[str, Any], timeout: float) -> Any:
    """POST `body` as JSON with `API-VERSION: 1`; the reply's JSON, or the KdsError it amounts to."""
    target = url.rstrip("/") + path
    headers = {"API-VERSION": str(kds_keys.API_VERSION), "Content-Type": "application/json"}
    try:
        async with asyncio.timeout(timeout):
            async with aiohttp.ClientSession() as session:
                async with session.post(target, data=orjson.dumps(body), headers=headers,
                                        allow_redirects=False) as response:
                    status = response.status
                    data = await _read_bounded(response, target)
    except TimeoutError:
        raise KdsUnavailable(f"the KDS at {target} did not answer within {timeout:g} s") from None
    except aiohttp.ClientError as exc:
        raise KdsUnavailable(f"cannot reach the KDS at {target}: {exc}") from None
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        parsed = None
    if status != 200:
        reason = parsed.get("reason") if isinstance(parsed, dict) else None
        if not isinstance(reason, str):
            reason = f"HTTP {status} without a KDS error body"
        raise KdsRefused(status, reason[:1000])
    if parsed is None:
        raise KdsBadReply(f"the KDS at {target} answered 200 with a body that is not JSON")
    return parsed


async def _read_bounded(response: aiohttp.ClientResponse, target: str) -> bytes:
    if response.content_length is not None and response.content_length > MAX_REPLY_BYTES:
        raise KdsBadReply(f"the KDS at {target} sent {response.content_length} bytes; at most {MAX_REPLY_BYTES} "
                          "are accepted")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            raise KdsBadReply(f"the KDS at {target} sent more than {MAX_REPLY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
