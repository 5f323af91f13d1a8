"""Requests over the bus with timeouts, request ids, codecs, large payloads and typed errors."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from nats.aio.client import Client
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

from bus import codec, errors, headers, log
from bus.payloads import Payloads
from bus.replies import ReplyInbox

DEFAULT_TIMEOUT = 5.0


@dataclass
class Reply:
    """A reply: `data` as received, `payload` decoded on first use (adapters often pass `data` on)."""

    data: bytes
    content_type: str
    headers: dict[str, str]

    @cached_property
    def payload(self) -> Any:
        return codec.decode(self.data, self.content_type)


def raise_for_error(hdrs: dict[str, str] | None, body: bytes = b"") -> None:
    """Turn micro error headers (and the details in `body`) back into the typed BusError raised."""
    if not hdrs or headers.ERROR_CODE not in hdrs:
        return
    try:
        status = int(hdrs[headers.ERROR_CODE])
    except ValueError:
        status = 500
    details = None
    if body:
        try:
            decoded = codec.decode(body, codec.content_type_of(hdrs))
            details = decoded if isinstance(decoded, dict) else None
        except errors.BadRequest:
            details = None  # details that do not decode are dropped; the message still says what happened
    raise errors.from_status(status, hdrs.get(headers.ERROR, "the component failed without a message"), details)


NO_RESPONDERS_GRACE = 0.6    # s: a component whose server was lost resubscribes within this
NO_RESPONDERS_RETRY = 0.1


class Requester:
    """Sends requests for one connection; shared by adapters, components and tools."""

    def __init__(self, client: Client, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.client = client
        self.timeout = timeout
        self.payloads = Payloads(client)
        self._replies = ReplyInbox(client)

    async def request(self, subject: str, payload: Any = None, *, content_type: str = headers.JSON,
                      timeout: float | None = None, request_id: str | None = None,
                      extra_headers: dict[str, str] | None = None, encoded: bool = False) -> Reply:
        """Send `payload` to `subject` and return the decoded reply, or raise a BusError.

        With `encoded`, `payload` is already bytes in `content_type` (an adapter passing a body on).
        """
        timeout = timeout or self.timeout
        request_id = request_id or log.current_request_id() or log.new_request_id()
        hdrs = {headers.REQUEST_ID: request_id, headers.TIMEOUT: f"{timeout:.3f}"}
        if content_type != headers.JSON:  # JSON is the default and goes unnamed, as replies do
            hdrs[headers.CONTENT_TYPE] = content_type
        if extra_headers:
            hdrs.update(extra_headers)
        data = payload if encoded else codec.encode(payload, content_type)
        if not self.payloads.fits(len(data)):
            data = await self.payloads.pack(data, hdrs)
        try:
            msg = await self._deliver(subject, data, hdrs, timeout)
        except NoRespondersError:
            raise errors.NoResponders(f"no component serves {subject}: is it running? "
                                     "(`teebus status` lists the live services)") from None
        except NatsTimeout:
            raise errors.Timeout(f"{subject} did not answer within {timeout:g}s") from None
        if not msg.headers:  # the common reply: JSON, no error, small
            return Reply(msg.data, headers.JSON, {headers.REQUEST_ID: request_id})
        body = await self.payloads.unpack(msg.data, msg.headers)
        raise_for_error(msg.headers, body)
        return Reply(body, codec.content_type_of(msg.headers), {headers.REQUEST_ID: request_id, **msg.headers})

    async def _deliver(self, subject: str, data: bytes, hdrs: dict[str, str], timeout: float) -> Any:
        """The request, sent again while nobody subscribes, for at most NO_RESPONDERS_GRACE of the
        timeout: "no responders" means no component got it, so a resend is safe, and it bridges the
        moment a component reconnects after its server was lost (NATS drops and then restores its
        subscriptions). Past the grace, NoRespondersError goes up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        grace = loop.time() + min(NO_RESPONDERS_GRACE, timeout / 2)
        while True:
            try:
                return await self._replies.request(subject, data, hdrs, max(0.001, deadline - loop.time()))
            except NoRespondersError:
                if loop.time() + NO_RESPONDERS_RETRY > grace:
                    raise
            await asyncio.sleep(NO_RESPONDERS_RETRY)
