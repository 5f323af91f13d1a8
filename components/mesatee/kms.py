"""The MesaTEE key management service: AEAD keys created, fetched and deleted by id.

Key material never rests in plaintext: each record holds the key, nonce and ad sealed (AES-GCM)
under the master key in `<data-dir>/mesatee/kms.master.key`, bound to its key id. `Get` reads the
record from an in-memory mirror of the bucket and, for a key it opened before, the opened config
from memory (kms_cache.py says why that is safe).
"""

from __future__ import annotations

import base64
import binascii
import os
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from bus.component import Component, Endpoint, Incoming
from bus.errors import Conflict, Internal, NotFound
from bus.records import Record
from bus.sealing import MasterKey, SealingError
from components.mesatee import kms_messages as messages
from components.mesatee import subjects
from components.mesatee.config import MesateeConfig
from components.mesatee.kms_cache import OpenedConfigs
from components.mesatee.system import MASTER_KEY_FILE

BUCKET = "mesatee_kms_keys"


@dataclass(frozen=True)
class SealedKey:
    """A key as the bucket holds it: its material sealed under the master key (base64), bound to its id."""

    sealed: str
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> "SealedKey":
        return cls(value["sealed"], value["created"])


class KmsComponent(Component):
    system = subjects.SYSTEM
    name = "kms"
    description = "MesaTEE KMS: AES-GCM key configs by key_id"
    config: MesateeConfig

    async def setup(self) -> None:
        self.master = MasterKey.load_or_create(self.context.data_dir / MASTER_KEY_FILE)
        self.keys = await self.open_records(BUCKET, kind=SealedKey, description="MesaTEE KMS keys (sealed)",
                                            max_value_size=4096)
        await self.keys.mirror()  # Get is the hot path: served from memory
        self.opened = OpenedConfigs(self.config.kms_opened_configs)

    async def teardown(self) -> None:
        await self.keys.close()

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("create", subjects.kms("Create"), self.create),
                Endpoint("get", subjects.kms("Get"), self.get, inline=True),  # from the mirror
                Endpoint("delete", subjects.kms("Delete"), self.delete)]

    async def create(self, incoming: Incoming) -> dict:
        messages.parse_request(incoming.payload, expected="Create")
        key_id = str(uuid.uuid4())
        material = os.urandom(messages.MATERIAL_BYTES)  # key || nonce || ad
        sealed = self.master.seal(material, key_id.encode())
        try:
            await self.keys.create(key_id, SealedKey(base64.b64encode(sealed).decode()))
        except Conflict:  # a UUIDv4 collision: astronomically unlikely, never silently overwritten
            raise Internal("key id collision; retry the request") from None
        await self.events.publish("key", "created", {"key_id": key_id})
        self.log.info("key created", key_id=key_id)
        return messages.create_response(key_id, messages.config_json(material))

    async def get(self, incoming: Incoming) -> dict:
        request = messages.parse_request(incoming.payload, expected="Get")
        record = self.keys.mirrored_record(request.key_id) or await self._find(request.key_id)
        config = self.opened.get(record.key, record.revision)
        if config is None:
            config = messages.config_json(self._unseal(record.key, record.value))
            self.opened.put(record.key, record.revision, config)
        return messages.config_response("Get", config)

    async def delete(self, incoming: Incoming) -> dict:
        request = messages.parse_request(incoming.payload, expected="Delete")
        record = await self._find(request.key_id)
        material = self._unseal(record.key, record.value)
        try:
            await self.keys.delete(record.key, record.revision)
        except Conflict:
            raise NotFound(f"key {request.key_id} was deleted concurrently") from None
        self.opened.forget(request.key_id)
        await self.events.publish("key", "deleted", {"key_id": request.key_id})
        self.log.info("key deleted", key_id=request.key_id)
        return messages.config_response("Delete", messages.config_json(material))

    async def _find(self, key_id: str) -> Record[SealedKey]:
        """The record as the bucket holds it now: Delete needs its revision; a Get comes here when
        its mirror does not hold the key yet (made by another replica a moment ago) or at all."""
        try:
            return await self.keys.get(key_id)
        except NotFound:
            self.opened.forget(key_id)  # deleted through another replica
            raise NotFound(f"no key with key_id {key_id}") from None

    def _unseal(self, key_id: str, value: SealedKey) -> bytes:
        """The key material of a record (MATERIAL_BYTES), opened with the master key."""
        try:
            material = self.master.unseal(binascii.a2b_base64(value.sealed), key_id.encode())
        except (SealingError, ValueError):
            self.log.error("sealed key does not open: is this the data directory's master key?", key_id=key_id)
            raise Internal(f"key {key_id} cannot be unsealed with this host's master key: every KMS replica "
                           f"needs the same <data-dir>/{MASTER_KEY_FILE} (`teebus cluster init` lists the "
                           "files to copy from the first machine)") from None
        if len(material) != messages.MATERIAL_BYTES:
            raise Internal(f"key {key_id} holds {len(material)} bytes of key material, not "
                           f"{messages.MATERIAL_BYTES}: the record is damaged")
        return material
