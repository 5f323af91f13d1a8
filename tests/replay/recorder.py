"""Record a scenario's bus traffic into a replayable `Recording` (format: tests/replay/recording.py).

    observer = await connect_as("admin")    # replies and internal subjects: only admin may watch them
    async with Recorder(observer, "kms") as recorder:
        ... drive the scenario over the bus ...
    recorder.recording.dump(path)                     # JSON lines, one exchange/event per line

The recorder subscribes to `>` and sorts each message into one of:
- a reply: published on the reply subject of a request recorded earlier -> completes that exchange
  (the first reply wins; micro services answer once);
- noise, skipped: `$JS.*` (JetStream API, acks, flow control), `$KV.*`, `$O.*`, `$SRV.*`, and any
  `_INBOX.*` message that answers nothing we recorded (JetStream publish acks, KV/API replies);
- an event: `events.>` (state changes; its reply subject is JetStream's ack inbox, never paired);
- a request: any other message with a reply subject;
- a plain message: any other message without one.

Nothing is inferred from timing: requests and replies are paired by their exact reply subject, and
`settle()` proves (by a PING/PONG round trip) that everything sent before it has been recorded.

Requests the components make of each other (a TDFS asking the KMS for a key) are exchanges too.
Given `driver_inbox` (the inbox prefix of the driver's role, `_INBOX.<role>.`: bus/roles.py), the
recording's meta names it, and a replay resends only the exchanges whose reply subject starts with
it (`is_driven`): the replayed components make their own requests again.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tests.replay.recording import Exchange, Message, Recording

NOISE_PREFIXES = ("$JS.", "$KV.", "$O.", "$SRV.")
EVENTS_PREFIX = "events."
INBOX_PREFIXES = ("_INBOX.",)
SETTLE_TIMEOUT = 5.0
DRIVER_INBOX = "driver_inbox"   # the meta field naming the driver's inbox prefix


async def settle(client: Client, subscription: Subscription, timeout: float = SETTLE_TIMEOUT) -> None:
    """Return once every message the server routed to `subscription` before this call was handled.

    The server queues its PONG behind every message it already routed to this connection, and the
    client parses in order, so after `flush()` those messages sit in the subscription's queue. The
    callbacks used here never await, so once the queue is empty each of them has run to completion.
    Why this holds for a reply the driver just received: the server routes one published message to
    all its subscribers in one pass, so the observer's copy was queued before our PING arrived.
    """
    await client.flush(timeout)
    deadline = asyncio.get_running_loop().time() + timeout
    while subscription.pending_msgs:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{subscription.pending_msgs} messages still unhandled after {timeout}s")
        await asyncio.sleep(0.001)


def to_message(index: int, msg: Msg) -> Message:
    return Message(index, msg.subject, msg.reply or None, dict(msg.headers or {}), bytes(msg.data))


def is_noise(subject: str, inbox_prefixes: tuple[str, ...] = INBOX_PREFIXES) -> bool:
    """Infrastructure traffic no scenario is about (replies are checked before this)."""
    return subject.startswith(NOISE_PREFIXES) or subject.startswith(inbox_prefixes)


def is_driven(exchange: Exchange, driver_inbox: str | None) -> bool:
    """Did the scenario's driver send this request (rather than a component, serving one)?

    Without a `driver_inbox` (recordings made before it was recorded) every exchange is the driver's.
    """
    return driver_inbox is None or (exchange.request.reply or "").startswith(driver_inbox)


class Recorder:
    """Records everything on the bus between `__aenter__` and `__aexit__` (or `start`/`stop`)."""

    def __init__(self, observer: Client, scenario: str, *, meta: dict[str, Any] | None = None,
                 inbox_prefixes: tuple[str, ...] = INBOX_PREFIXES, driver_inbox: str | None = None) -> None:
        self._client = observer
        self._inbox_prefixes = inbox_prefixes
        self._subscription: Subscription | None = None
        self._next_index = 0
        self._awaiting_reply: dict[str, int] = {}       # reply subject -> position in exchanges
        meta = dict(meta or {})
        if driver_inbox is not None:
            meta[DRIVER_INBOX] = driver_inbox
        self.recording = Recording(scenario=scenario, meta=meta)

    async def __aenter__(self) -> "Recorder":
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        """Subscribe to `>`; the flush makes sure the server has the subscription before we return."""
        self._subscription = await self._client.subscribe(">", cb=self._on_message)
        await self._client.flush()

    async def settle(self) -> None:
        """Wait until everything published so far is recorded (e.g. before reading `recording`)."""
        if self._subscription is not None:
            await settle(self._client, self._subscription)

    async def stop(self) -> None:
        """Record what is still in flight, then stop listening."""
        if self._subscription is None:
            return
        await self.settle()
        await self._subscription.unsubscribe()
        self._subscription = None

    async def _on_message(self, msg: Msg) -> None:
        # Must never await (see `settle`): it only sorts the message into the recording.
        if msg.subject in self._awaiting_reply:
            self._record_reply(msg)
        elif is_noise(msg.subject, self._inbox_prefixes):
            return
        elif msg.subject.startswith(EVENTS_PREFIX):
            self.recording.events.append(self._take(msg))
        elif msg.reply:
            self._awaiting_reply[msg.reply] = len(self.recording.exchanges)
            self.recording.exchanges.append(Exchange(self._take(msg), None))
        else:
            self.recording.others.append(self._take(msg))

    def _record_reply(self, msg: Msg) -> None:
        position = self._awaiting_reply.pop(msg.subject)
        exchange = self.recording.exchanges[position]
        self.recording.exchanges[position] = Exchange(exchange.request, self._take(msg))

    def _take(self, msg: Msg) -> Message:
        """The message with the next index: indexes follow arrival order across all kinds."""
        message = to_message(self._next_index, msg)
        self._next_index += 1
        return message
