"""Payloads above the server's max_payload travel through JetStream, in a store each sender writes alone.

The sender seals the body (AES-GCM under a fresh key, bound to the payload's name), cuts the sealed
bytes into chunks of at most max_payload, and stores chunk `i` on the subject
`$TEEBUS.payload.<principal>.<name>.<i>` of the stream `TEEBUS_PAYLOADS`; the message it sends is
empty, and its headers carry the reference (`<principal>.<name>`), the number of chunks and the key.
The receiver reads the chunks by subject (JetStream direct get) and opens them.

This is the layout of the JetStream Object Store (chunks on a stream, read back by subject), with
one difference that is the point: the sender's principal is a token of the subject, so subject
permissions say who may write where. A principal is what follows `_INBOX.` in a connection's inbox
prefix (bus/roles.py: a role, or a dynamic user such as one keep), and may publish only under its
own name (`permissions(principal)`). Reading is one permission for all (direct get on the stream),
and yields ciphertext only: the key travels in the message, to whoever its subject's permissions let
receive it. So no principal can read, alter, replace or delete another's payload; the Object Store
could not say that, since any writer there may publish the marker that deletes any object. Nobody
but admin may delete or purge (the stream denies deletes; payloads expire after `TTL_SECONDS`, long
enough for any receiver, which reads before it handles the message). Every request and reply in
teebus goes through `pack`/`unpack`, so no caller ever meets `MaxPayloadError`.
"""

from __future__ import annotations

import asyncio
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nats.aio.client import Client
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError
from nats.nuid import NUID

from bus import headers, log, streams
from bus.errors import TooLarge, Unavailable

STREAM = "TEEBUS_PAYLOADS"
SUBJECT_PREFIX = "$TEEBUS.payload"
TTL_SECONDS = 300
NONCE_BYTES = 12
MAX_BYTES = 256 * 1024 * 1024          # the largest single payload teebus carries
STORE_BYTES = 4 * 1024 * 1024 * 1024   # the stream's total bound: past it, a sender is told to retry
HEADROOM = 16 * 1024                   # room kept for headers inside max_payload
IN_FLIGHT = 4                          # chunks written or read at once
TIMEOUT_SECONDS = 30.0                 # one chunk's round trip

_log = log.get_logger("bus.payloads")


def permissions(principal: str) -> list[str]:
    """What a NATS user whose inbox prefix is `_INBOX.<principal>` may publish to send and receive
    payloads: its own chunks, and reads of anyone's (ciphertext). Every role takes this list
    (bus/roles.py), and so does any dynamic user a system adds (bus/users.py)."""
    return [f"{SUBJECT_PREFIX}.{principal}.>", f"$JS.API.DIRECT.GET.{STREAM}.{SUBJECT_PREFIX}.>"]


def principal_of(client: Client) -> str:
    """The connection's principal: its inbox prefix without `_INBOX.` (nats-py's public new_inbox)."""
    return client.new_inbox().split(".", 1)[1].rsplit(".", 1)[0]


async def ensure_store(client: Client, replicas: int = 1) -> None:
    """Create the payload stream if this deployment has none yet, or scale it up to `replicas`
    (idempotent; bus/streams.py). An existing one keeps its limits: an operator may have tuned them."""
    js = client.jetstream()
    config = StreamConfig(
        name=STREAM, description="teebus payloads above max_payload (sealed chunks, by sender)",
        subjects=[f"{SUBJECT_PREFIX}.>"], max_age=TTL_SECONDS, max_bytes=STORE_BYTES,
        max_msgs_per_subject=1, discard=DiscardPolicy.NEW, storage=StorageType.FILE,
        num_replicas=replicas, allow_direct=True, deny_delete=True)
    await streams.ensure_replicas(client, STREAM, replicas, create=lambda: js.add_stream(config))


class Payloads:
    """Packs and unpacks bodies for one connection."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._names = NUID()
        self._principal: str | None = None

    def fits(self, size: int) -> bool:
        return size + HEADROOM <= self._client.max_payload

    @property
    def _chunk_bytes(self) -> int:
        return self._client.max_payload - HEADROOM

    async def pack(self, data: bytes, hdrs: dict[str, str]) -> bytes:
        """Return the body to send; large bodies go to the stream and `hdrs` gets the reference."""
        if self.fits(len(data)):
            return data
        if len(data) > MAX_BYTES:
            raise TooLarge(f"payload of {len(data)} bytes exceeds the bus limit of {MAX_BYTES} bytes")
        if self._principal is None:
            self._principal = principal_of(self._client)
        ref = f"{self._principal}.{self._names.next().decode()}"
        key = AESGCM.generate_key(bit_length=128)
        nonce = os.urandom(NONCE_BYTES)
        sealed = memoryview(nonce + AESGCM(key).encrypt(nonce, data, ref.encode()))
        size = self._chunk_bytes
        chunks = [sealed[at:at + size] for at in range(0, len(sealed), size)]
        await _bounded(self._put(ref, index, chunk) for index, chunk in enumerate(chunks))
        hdrs[headers.PAYLOAD_REF] = ref
        hdrs[headers.PAYLOAD_CHUNKS] = str(len(chunks))
        hdrs[headers.PAYLOAD_KEY] = binascii.b2a_base64(key, newline=False).decode()
        _log.debug("payload offloaded", ref=ref, size=len(data), chunks=len(chunks))
        return b""

    async def _put(self, ref: str, index: int, chunk: memoryview) -> None:
        try:
            await self._client.jetstream().publish(f"{SUBJECT_PREFIX}.{ref}.{index}", bytes(chunk),
                                                   stream=STREAM, timeout=TIMEOUT_SECONDS)
        except NoRespondersError:
            raise Unavailable(f"the payload stream {STREAM} is missing: start teebus with `teebus up` "
                              "(or run bus.bootstrap.prepare once) before sending large payloads") from None
        except NatsTimeout:
            raise Unavailable("the payload stream did not store a chunk in time; send again") from None
        except APIError as exc:
            raise Unavailable(f"the payload stream refused a chunk ({exc.description}): it holds at "
                              f"most {STORE_BYTES} bytes of payloads younger than {TTL_SECONDS}s; "
                              "send again shortly") from None

    async def unpack(self, data: bytes, hdrs: dict[str, str] | None) -> bytes:
        """Return the real body of a received message, reading and opening a stored one."""
        ref = hdrs.get(headers.PAYLOAD_REF) if hdrs else None
        if not ref:
            return data
        try:
            count = int(hdrs.get(headers.PAYLOAD_CHUNKS, ""))
        except ValueError:
            count = 0
        if not 0 < count <= MAX_BYTES // self._chunk_bytes + 1:
            raise Unavailable(f"payload {ref} arrived without a valid chunk count; send it again")
        chunks = await _bounded(self._get(ref, index) for index in range(count))
        return _open(ref, b"".join(chunks), hdrs.get(headers.PAYLOAD_KEY, ""))

    async def _get(self, ref: str, index: int) -> bytes:
        try:
            message = await self._client.jetstream().get_msg(STREAM, subject=f"{SUBJECT_PREFIX}.{ref}.{index}",
                                                             direct=True)
        except NotFoundError:
            raise Unavailable(f"payload {ref} is gone from the payload stream (it expires after "
                              f"{TTL_SECONDS}s); send it again") from None
        except (NoRespondersError, NatsTimeout):
            raise Unavailable(f"the payload stream did not answer for payload {ref}; send it again") from None
        return message.data or b""


async def _bounded(calls) -> list:
    """Await the coroutines `calls`, at most IN_FLIGHT at once, results in order."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(call):
        async with gate:
            return await call

    return await asyncio.gather(*(one(call) for call in calls))


def _open(ref: str, sealed: bytes, key_text: str) -> bytes:
    """The plaintext of a stored payload; Unavailable when it does not open (altered, or no key)."""
    try:
        key = binascii.a2b_base64(key_text)
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], ref.encode())
    except (InvalidTag, ValueError, binascii.Error):
        raise Unavailable(f"payload {ref} does not open: it was altered or its key did not arrive; "
                          "send it again") from None
