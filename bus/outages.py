"""Which failures of NATS itself mean "the bus is briefly out", so that a handler caught by one
answers 503 (retry in a moment) instead of 500 (our bug), and logs one line instead of a traceback.

On a cluster these are routine: a server that held a stream's leader dies and JetStream elects
another within seconds; meanwhile a write finds no leader (NoStreamResponseError, or "no
responders"), the API answers 503 "JetStream system temporarily unavailable", or the
acknowledgement does not come in time. A write that timed out may still have been stored: the
caller hears an error, never a silent success, and may retry (docs/scaling.md).

A write that found no leader was not stored, so `patiently` tries it again for a moment: the
election usually ends first, and the caller never hears of it.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, TypeVar

import nats.errors
from nats.js import errors as js_errors

from bus.errors import BusError, Timeout, Unavailable

RETRY = "retry in a moment (a NATS server was lost or JetStream is electing a leader)"
PATIENCE_SECONDS = 2.0       # how long a storage call waits out an election before it is an outage
# Answers that mean "nothing was done": no server listened for the write, or JetStream said so.
NOT_DONE = (js_errors.NoStreamResponseError, nats.errors.NoRespondersError, js_errors.ServiceUnavailableError)

T = TypeVar("T")


def as_bus_error(exc: BaseException) -> BusError | None:
    """The BusError a NATS outage becomes, or None when `exc` is no outage."""
    if isinstance(exc, (js_errors.NoStreamResponseError, nats.errors.NoRespondersError,
                        js_errors.ServiceUnavailableError, nats.errors.ConnectionClosedError,
                        nats.errors.OutboundBufferLimitError)):
        return Unavailable(f"the bus's storage did not answer: {RETRY}")
    if isinstance(exc, nats.errors.TimeoutError):
        return Timeout(f"the bus's storage did not acknowledge in time (the change may or may not have "
                       f"been kept): {RETRY}")
    return None


async def patiently(call: Callable[[], Awaitable[T]], patience: float = PATIENCE_SECONDS) -> T:
    """`call()`, tried again while the answer is one of NOT_DONE, for up to `patience` seconds
    (0.05 s, doubling to 0.5 s, between tries); then that error. A timeout is never retried: the
    call may have been done."""
    loop = asyncio.get_running_loop()
    give_up, pause = loop.time() + patience, 0.05
    while True:
        try:
            return await call()
        except NOT_DONE:
            if loop.time() + pause > give_up:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.5)
