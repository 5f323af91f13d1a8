"""Conclave's Key Derivation Service on the bus: `/public` and `/private` of docs/kds-rest-api.md.

Keys are derived (kds_keys.py) from master secrets made once per deployment. They live in the
`conclave_kds` bucket, created with compare-and-set so replicas racing at first start agree on one
set, and sealed there under `<data-dir>/conclave/kds.sealing.key` (bus/sealing.py): the bucket is
what keeps every replica on the same keys across restarts, the sealing key what keeps a copy of the
JetStream store from giving them away. A replica on another machine needs that file from the first
(as it needs the data directory's NATS credentials); without it, it refuses to start, saying so.

The KDS attests itself with a Mock EnclaveInstanceInfo (Conclave's KDS is an enclave): its keys come
from a durable secret kept with the master secrets, so every replica and restart shows the same EII
bytes. Its code hash is `KDS_CODE_HASH`, as a mock enclave's is the SHA-256 of its class name; a client
can pin it with `C:<hash> SEC:INSECURE`. `/public` signs with the EII's Ed25519 key; `/private` sends
the key material as Mail from the EII's X25519 key, so the requester can check both.
"""

from __future__ import annotations

import hashlib
import time
import uuid

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus.component import Component, Endpoint, Incoming
from bus.errors import BadRequest, Conflict, Internal, NotFound
from bus.records import Records
from bus.sealing import MasterKey, SealingError
from components.conclave import kds_keys
from components.conclave import kds_messages as messages
from components.conclave import subjects
from components.conclave.system import KDS_SEALING_KEY_FILE as SEALING_KEY_FILE
from components.conclave.constraints import EnclaveConstraint
from components.conclave.eii import EiiError, EnclaveInstanceInfo, keys_from_secret, mock_instance_info
from components.conclave.mail import encrypt_mail

BUCKET = "conclave_kds"
SECRETS_KEY = "secrets"
KDS_CLASS_NAME = "com.r3.conclave.kds.KdsEnclave"
KDS_CODE_HASH = hashlib.sha256(KDS_CLASS_NAME.encode()).digest()
KDS_PRODUCT_ID = 1


class KdsIdentity:
    """The KDS's own attestation and the keys behind it (signing for `/public`, Mail sender for `/private`)."""

    def __init__(self, secret: bytes, created: float) -> None:
        self._signing, _ = keys_from_secret(secret)
        self._secret = secret          # the X25519 private key is the same 32 bytes (conclave-wire.md §8)
        self.instance_info = mock_instance_info(secret, code_hash=KDS_CODE_HASH, product_id=KDS_PRODUCT_ID,
                                                revocation_level=0, timestamp=created)
        self.attestation = self.instance_info.serialize()

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        return self._signing

    @property
    def encryption_private(self) -> bytes:
        return self._secret

    def __repr__(self) -> str:
        return "KdsIdentity(<hidden>)"


async def _load_or_create(records: Records, sealer: MasterKey) -> tuple[kds_keys.MasterSecrets, float, bool]:
    """The deployment's secrets, when they were made, and whether this replica made them: its new
    ones if it is first (create is compare-and-set), otherwise the ones another replica stored."""
    fresh = kds_keys.MasterSecrets.generate()
    record = {**kds_keys.seal_secrets(fresh, sealer.seal), "created": time.time()}
    made = True
    try:
        stored = (await records.create(SECRETS_KEY, record)).value
    except Conflict:
        stored, made = (await records.get(SECRETS_KEY)).value, False
    try:
        secrets = kds_keys.open_secrets(stored, sealer.unseal)
        created = float(stored["created"])
    except (SealingError, ValueError, KeyError, TypeError):
        raise Internal(f"the KDS master secrets in bucket {BUCKET} do not open with <data-dir>/{SEALING_KEY_FILE}: "
                       "copy that file from the data directory of the KDS that first started") from None
    return secrets, created, made


class Kds(Component):
    system = subjects.SYSTEM
    name = "kds"
    description = "Conclave key derivation service: stable enclave keys by key specification"

    async def setup(self) -> None:
        sealer = MasterKey.load_or_create(self.context.data_dir / SEALING_KEY_FILE)
        self.records = await self.open_records(BUCKET, description="Conclave KDS master secrets (sealed)",
                                               max_value_size=4096)
        self._secrets, created, made = await _load_or_create(self.records, sealer)
        self.identity = KdsIdentity(self._secrets.identity, created)
        if made:
            self.log.info("KDS master secrets created", bucket=BUCKET)
            await self.events.publish("kds", "secrets_created", {"bucket": BUCKET, "created": created})

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("public", subjects.KDS_PUBLIC, self.public, inline=True),   # in-memory crypto, ~0.1 ms
                Endpoint("private", subjects.KDS_PRIVATE, self.private)]

    async def public(self, incoming: Incoming) -> dict[str, str]:
        version, body = messages.split_bus_request(incoming.payload)
        spec = messages.parse_public(body)
        self._policy(spec)
        encoded = kds_keys.public_key(self._key(spec))
        signature = self.identity.signing_key.sign(kds_keys.signed_bytes(spec, encoded, version))
        return messages.public_reply(encoded, signature, self.identity.attestation)

    async def private(self, incoming: Incoming) -> dict[str, str]:
        version, body = messages.split_bus_request(incoming.payload)
        request = messages.parse_private(body)
        spec = request.spec
        constraint = self._policy(spec)
        secret = self._master(spec)
        try:
            requester = EnclaveInstanceInfo.deserialize(request.attestation)
        except EiiError as exc:
            raise BadRequest(f"appAttestationReport is not a valid EnclaveInstanceInfo: {exc}") from None
        try:
            kds_keys.check_policy(constraint, requester, spec.master_key_type)
        except kds_keys.PolicyError as exc:
            self.log.info("private key refused", key_name=spec.name, reason=str(exc))
            raise BadRequest(str(exc)) from None
        mail = encrypt_mail(kds_keys.derive_private_key(secret, spec), recipient_public=requester.encryption_key,
                            sender_private=self.identity.encryption_private, topic=str(uuid.uuid4()),
                            sequence_number=0, envelope=kds_keys.encode_spec(spec, version))
        self.log.info("private key released", key_name=spec.name, master_key_type=spec.master_key_type.label,
                      code_hash=requester.code_hash.hex(), mode=str(requester.enclave_mode))
        return messages.private_reply(self.identity.attestation, mail)

    def _policy(self, spec: kds_keys.KeySpec) -> EnclaveConstraint:
        try:
            return kds_keys.parse_policy(spec, EnclaveConstraint.parse)
        except kds_keys.KeySpecError as exc:
            raise BadRequest(str(exc)) from None

    def _master(self, spec: kds_keys.KeySpec) -> bytes:
        try:
            return self._secrets.for_type(spec.master_key_type)
        except LookupError as exc:
            raise NotFound(str(exc)) from None

    def _key(self, spec: kds_keys.KeySpec) -> bytes:
        return kds_keys.derive_private_key(self._master(spec), spec)
