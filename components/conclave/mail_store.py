"""The mailboxes' storage: one JetStream stream, one subject per (enclave, routing hint).

Conclave's web host kept undelivered mail in a HashMap that died with the process; here it is on
disk from the moment the enclave posts it until a poller takes it. Each mailbox is FIFO (the stream's
order) and each mail is handed out once: a poller reads the first mail of its subject and then
deletes it by sequence number, and only the poller whose delete succeeds hands it out (two pollers
racing on one Correlation-ID read the same mail, one of them wins the delete, the other tries the
next). Bounds are the stream's: mails per routing hint (`discard new` per subject: a full mailbox
refuses more), age (older mail expires) and total bytes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout
from nats.js.client import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from bus import headers, log, outages, streams
from bus.errors import Unavailable
from components.conclave import subjects
from components.conclave.config import ConclaveConfig

_MAILBOX_FULL = 10077        # JetStream: maximum messages per subject exceeded
_STREAM_FULL = 10047         # JetStream: maximum bytes exceeded (insufficient resources)
_GONE = (10043, 10057)     # JetStream: sequence not found / no message found (deleted by a racer)
_TAKE_ATTEMPTS = 64          # reads lost to racing pollers before a poll answers "try again"


def stream_config(config: ConclaveConfig, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=subjects.MAIL_STREAM, subjects=[subjects.stored_mail_filter()], storage=StorageType.FILE,
        max_msgs_per_subject=config.mailbox_depth, discard=DiscardPolicy.NEW, discard_new_per_subject=True,
        max_age=config.mailbox_age_seconds, max_bytes=config.mailbox_bytes,
        max_msg_size=config.max_mail_bytes + 1024, num_replicas=replicas, allow_direct=True,
        description="Conclave mail waiting for /poll-mail, FIFO per routing hint")


async def ensure_stream(client: Client, config: ConclaveConfig, replicas: int = 1) -> None:
    """Create the mailbox stream, or bring its limits to `config` (idempotent; replicas may race)."""
    await streams.ensure(client, stream_config(config, replicas))


async def store(client: Client, enclave: str, routing_hint: str, mail: bytes) -> None:
    """Queue `mail` for `routing_hint`; returns once the stream has it on disk."""
    request_id = log.current_request_id()
    try:
        await outages.patiently(lambda: client.jetstream().publish(
            subjects.stored_mail(enclave, routing_hint), mail, stream=subjects.MAIL_STREAM,
            headers={headers.REQUEST_ID: request_id} if request_id else None))
    except APIError as exc:
        if exc.err_code == _MAILBOX_FULL:
            raise Unavailable("the mailbox of this Correlation-ID already holds the most mails it may; "
                              "poll them with /poll-mail, then send again") from None
        if exc.err_code == _STREAM_FULL:
            raise Unavailable("the host's mail storage is full; poll queued mail or wait for old mail "
                              "to expire, then send again") from None
        raise Unavailable(f"queued mail could not be stored ({exc.description}); send again") from None


@dataclass
class Taken:
    mail: bytes
    sequence: int


async def take(client: Client, enclave: str, routing_hint: str) -> Taken | None:
    """The oldest mail queued for `routing_hint`, removed from the mailbox; None when it is empty."""
    js = client.jetstream()
    subject = subjects.stored_mail(enclave, routing_hint)
    for _ in range(_TAKE_ATTEMPTS):
        try:
            found = await js.get_msg(subjects.MAIL_STREAM, seq=1, subject=subject, direct=True, next=True)
        except NotFoundError:
            return None
        try:
            await js.delete_msg(subjects.MAIL_STREAM, found.seq)
        except APIError as exc:
            if isinstance(exc, NotFoundError) or exc.err_code in _GONE:
                continue          # another poller took it first
            raise
        except NatsTimeout:
            if not await _gone(js, found.seq):
                raise             # not deleted: it stays queued, the poller hears 504 and polls again
            # Deleted, by us or by a racing poller: hand it out. Twice at worst, which a Conclave
            # client refuses as a replay (its sequence number); once lost, it would refuse every
            # later mail as a gap.
        return Taken(found.data or b"", found.seq)
    raise Unavailable("this Correlation-ID is being polled by many at once; poll again")


async def _gone(js: JetStreamContext, seq: int) -> bool:
    """Whether the mailbox no longer holds message `seq` (asked after a delete went unanswered)."""
    try:
        await js.get_msg(subjects.MAIL_STREAM, seq=seq, direct=True)
    except NotFoundError:
        return True
    return False


async def wait_and_take(client: Client, enclave: str, routing_hint: str, wait: float) -> Taken | None:
    """`take`, waiting up to `wait` seconds for mail to arrive when the mailbox is empty (long poll)."""
    taken = await take(client, enclave, routing_hint)
    if taken is not None or wait <= 0:
        return taken
    arrived = asyncio.Event()

    async def wake(_msg) -> None:
        arrived.set()

    subscription = await client.subscribe(subjects.stored_mail(enclave, routing_hint), cb=wake)
    try:
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            taken = await take(client, enclave, routing_hint)    # mail stored before we subscribed
            remaining = deadline - asyncio.get_running_loop().time()
            if taken is not None or remaining <= 0:
                return taken
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return await take(client, enclave, routing_hint)
    finally:
        await subscription.unsubscribe()
