"""JetStream streams a system owns beside its KV buckets (a mailbox, a log): what their owner may do."""

from __future__ import annotations

from nats.aio.client import Client
from nats.js.api import StreamConfig
from nats.js.errors import APIError, NotFoundError


def permissions(stream: str) -> list[str]:
    """What the owner of `stream` may publish: its JetStream API calls (create, info, direct get,
    message get and delete, consumers) and acknowledgements; its subjects are the system's own already."""
    return [f"$JS.API.*.*.{stream}", f"$JS.API.*.*.{stream}.>", f"$JS.API.STREAM.MSG.*.{stream}", f"$JS.ACK.{stream}.>", "$JS.FC.>",
            "$JS.API.INFO"]


async def ensure(client: Client, wanted: StreamConfig) -> None:
    """Create the stream `wanted` describes, or bring an existing one to its limits (idempotent:
    replicas starting together may race here)."""
    js = client.jetstream()
    try:
        await js.stream_info(wanted.name)
    except NotFoundError:
        try:
            await js.add_stream(wanted)
            return
        except APIError:
            pass     # another replica created it a moment ago: bring it to these limits below
    await js.update_stream(wanted)
