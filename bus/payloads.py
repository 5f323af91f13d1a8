"""Payloads above the server's max_payload travel through the JetStream Object Store.

The sender seals the body (AES-GCM under a fresh key, bound to the object's name), stores it under
a fresh name and sends an empty message whose headers carry the name (`Teebus-Payload-Ref`) and the
key (`Teebus-Payload-Key`); the receiver fetches the object and opens it. The store is shared by
every role, so what rests there is ciphertext: only whoever receives the message (its subject's
permissions decide who) holds the key, and an object altered in the store does not open. No role
but the store's owner (admin, which creates it) may purge or delete in it: objects expire after
`TTL_SECONDS`, long enough for any receiver to fetch (it does so before it handles the message).
Every request and reply in teebus goes through `pack`/`unpack`, so no caller ever meets
`MaxPayloadError`.
"""

from __future__ import annotations

import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nats.aio.client import Client
from nats.nuid import NUID
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from bus import headers, log
from bus.errors import TooLarge, Unavailable

BUCKET = "teebus_payloads"
TTL_SECONDS = 300
NONCE_BYTES = 12
MAX_BYTES = 256 * 1024 * 1024          # the largest single payload teebus carries
STORE_BYTES = 4 * 1024 * 1024 * 1024   # the bucket's total bound
HEADROOM = 16 * 1024                   # room kept for headers inside max_payload

# What a NATS user needs to publish to put and get payloads here: every role's permissions take
# this one list (bus/roles.py, and any dynamic user a system adds through bus/users.py).
# (no purge: that is how objects are deleted, and only the owner may). Replies to these calls
# come to the caller's own inbox; nobody needs to subscribe to the store's subjects.
PUBLISH_PERMISSIONS = [
    "$JS.API.INFO", "$JS.API.STREAM.NAMES",
    f"$JS.API.STREAM.INFO.OBJ_{BUCKET}", f"$JS.API.STREAM.MSG.GET.OBJ_{BUCKET}",
    f"$JS.API.DIRECT.GET.OBJ_{BUCKET}",
    f"$JS.API.DIRECT.GET.OBJ_{BUCKET}.>", f"$JS.API.CONSUMER.CREATE.OBJ_{BUCKET}",
    f"$JS.API.CONSUMER.CREATE.OBJ_{BUCKET}.>", f"$JS.API.CONSUMER.DELETE.OBJ_{BUCKET}.>",
    f"$O.{BUCKET}.>", "$JS.FC.>", f"$JS.ACK.OBJ_{BUCKET}.>",
]

_log = log.get_logger("bus.payloads")


async def ensure_store(client: Client, replicas: int = 1) -> None:
    """Create the payload bucket if this deployment has none yet (idempotent)."""
    js = client.jetstream()
    try:
        await js.object_store(BUCKET)
    except BucketNotFoundError:
        await js.create_object_store(BUCKET, config=ObjectStoreConfig(
            description="teebus payloads above max_payload", ttl=TTL_SECONDS,
            max_bytes=STORE_BYTES, storage=StorageType.FILE, replicas=replicas))


class Payloads:
    """Packs and unpacks bodies for one connection."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._store: ObjectStore | None = None
        self._names = NUID()

    def fits(self, size: int) -> bool:
        return size + HEADROOM <= self._client.max_payload

    async def _bucket(self) -> ObjectStore:
        if self._store is None:
            try:
                self._store = await self._client.jetstream().object_store(BUCKET)
            except BucketNotFoundError:
                raise Unavailable(f"the payload bucket {BUCKET} is missing: start teebus with "
                                  "`teebus up` (or run `ensure_store` once) before sending large payloads")
        return self._store

    async def pack(self, data: bytes, hdrs: dict[str, str]) -> bytes:
        """Return the body to send; large bodies go to the store and `hdrs` gets the reference."""
        if self.fits(len(data)):
            return data
        if len(data) > MAX_BYTES:
            raise TooLarge(f"payload of {len(data)} bytes exceeds the bus limit of {MAX_BYTES} bytes")
        name = self._names.next().decode()
        key = AESGCM.generate_key(bit_length=128)
        nonce = os.urandom(NONCE_BYTES)
        store = await self._bucket()
        await store.put(name, nonce + AESGCM(key).encrypt(nonce, data, name.encode()))
        hdrs[headers.PAYLOAD_REF] = name
        hdrs[headers.PAYLOAD_KEY] = binascii.b2a_base64(key, newline=False).decode()
        _log.debug("payload offloaded", ref=name, size=len(data))
        return b""

    async def unpack(self, data: bytes, hdrs: dict[str, str] | None) -> bytes:
        """Return the real body of a received message, fetching and opening a stored one."""
        name = hdrs.get(headers.PAYLOAD_REF) if hdrs else None
        if not name:
            return data
        store = await self._bucket()
        try:
            result = await store.get(name)
        except (ObjectNotFoundError, NotFoundError):
            raise Unavailable(f"payload {name} is gone from the object store (it expires after "
                              f"{TTL_SECONDS}s); send it again") from None
        return _open(name, result.data or b"", hdrs.get(headers.PAYLOAD_KEY, ""))


def _open(name: str, sealed: bytes, key_text: str) -> bytes:
    """The plaintext of a stored payload; Unavailable when it does not open (altered, or no key)."""
    try:
        key = binascii.a2b_base64(key_text)
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], name.encode())
    except (InvalidTag, ValueError, binascii.Error):
        raise Unavailable(f"payload {name} does not open: it was altered in the object store or its "
                          "key did not arrive; send it again") from None
