"""Replies to this connection's requests: one wildcard inbox subscription, a future per request.

This is what nats-py's `Client.request` does, minus what it costs per request on the hot path of
every adapter: a random suffix read from the OS, a done-callback closure, and `asyncio.wait_for`
(an extra future, a timer and two callbacks). Here a request is a counter, a future and a
deadline; one sweeper, alive while requests wait, fails the overdue ones every SWEEP_SECONDS
(a timer per request alone cost ~2 µs of the ~120 µs an adapter spends on one request).
"""

from __future__ import annotations

import asyncio
import itertools

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

SWEEP_SECONDS = 0.05   # a timeout fires at most this much late
_STATUS = "Status"
_NO_RESPONDERS = "503"


class ReplyInbox:
    """The reply side of one requester (bus/requester.py) on one connection."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._prefix = ""
        self._tokens = itertools.count()
        self._waiting: dict[str, tuple[asyncio.Future[Msg], float]] = {}  # token -> (reply, deadline)
        self._sweeper: asyncio.Task[None] | None = None
        self._opening = asyncio.Lock()

    async def request(self, subject: str, data: bytes, headers: dict[str, str] | None, timeout: float) -> Msg:
        """Publish with a reply inbox and return the reply (nats-py's NoResponders/Timeout errors)."""
        if not self._prefix:
            await self._open()
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = (future, loop.time() + timeout)
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())
        try:
            await self._client.publish(subject, data, reply=self._prefix + token, headers=headers)
            msg = await future
        finally:
            del self._waiting[token]
        if not msg.data and msg.headers and msg.headers.get(_STATUS) == _NO_RESPONDERS:
            raise NoRespondersError
        return msg

    async def _open(self) -> None:
        async with self._opening:
            if self._prefix:
                return
            prefix = self._client.new_inbox() + "."
            await self._client.subscribe(prefix + "*", cb=self._deliver)
            self._prefix = prefix

    async def _deliver(self, msg: Msg) -> None:
        waiting = self._waiting.get(msg.subject[len(self._prefix):])
        if waiting is not None and not waiting[0].done():
            waiting[0].set_result(msg)

    async def _sweep(self) -> None:
        """Fail overdue requests with nats-py's TimeoutError; ends when nothing waits."""
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                await asyncio.sleep(SWEEP_SECONDS)
                now = loop.time()
                for future, deadline in list(self._waiting.values()):
                    if deadline <= now and not future.done():
                        future.set_exception(NatsTimeout())
        finally:
            self._sweeper = None
