"""Aurae's `observe.Observe` on one host: Status, the daemon's log, and a process's output.

GetAuraeDaemonLogStream: one subscription to `$TEEBUS.log.>` (every teebus process ships its log
lines there, bus/log_shipping.py) fans each line out to every open feed as LogItem
`{"channel": "daemon", "line": <the JSON line>, "timestamp": <ns, as received>}`: every watcher sees
every line (Aurae split them between watchers). Each watcher has a queue of its own (RELAY_LINES);
one that reads too slowly loses lines, and is told how many in a line of its stream.

GetSubProcessStream: a process the runtime started (known by its record in AURAE_OUTPUT,
components/aurae/output_store.py; else 404) is replayed from what the stream kept for that pid
and channel, in order, then followed live until its end marker; then the feed ends. An ordered
consumer reads it, paced by the feed's flow control, so a slow watcher slows only its own reading.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from importlib import metadata
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerConfig, DeliverPolicy

from bus import log_shipping
from bus.component import NO_REPLY, Component, Endpoint, Incoming
from bus.errors import NotFound, Unavailable
from bus.feeds import Feed, Feeds
from components.aurae import messages, output_store, subjects
from components.aurae.config import AuraeConfig
from components.aurae.output_store import ProcessRecord

RELAY_LINES = 10_000          # daemon log lines queued per watcher
POLL_SECONDS = 1.0            # how soon a follower notices its feed closed while nothing arrives


def teebus_version() -> str:
    try:
        return metadata.version("teebus")
    except metadata.PackageNotFoundError:
        return "unknown"


class _Relay:
    """One daemon log watcher's queue."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self.lines: deque[dict[str, Any]] = deque()
        self.dropped = 0
        self.ready = asyncio.Event()

    def offer(self, item: dict[str, Any]) -> None:
        if len(self.lines) >= RELAY_LINES:
            self.dropped += 1
        else:
            self.lines.append(item)
        self.ready.set()


class Observe(Component):
    system = subjects.SYSTEM
    name = "observe"
    description = "Aurae observe: status, the daemon's log, a process's output"
    config: AuraeConfig

    async def setup(self) -> None:
        self.host = self.config.host
        self.started = time.monotonic()
        self.product = f"teebus {teebus_version()}"
        await output_store.ensure_stream(self.client, self.config, self.context.replicas)
        self.js = self.client.jetstream()
        self.feeds = Feeds(self.client)
        self._relays: dict[str, _Relay] = {}
        self._log_lines: Subscription = await self.client.subscribe(log_shipping.SUBJECTS, cb=self._on_log_line)

    async def teardown(self) -> None:
        try:
            await self._log_lines.unsubscribe()
        except Exception:
            pass
        await self.feeds.close_all()

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("status", subjects.status(self.host), self.status, inline=True),
                Endpoint("daemon_log", subjects.daemon_log(self.host), self.daemon_log),
                Endpoint("subprocess", subjects.subprocess_stream(self.host), self.subprocess)]

    async def status(self, incoming: Incoming) -> dict[str, Any]:
        uptime = int(time.monotonic() - self.started)
        return {"meta": messages.meta(self.product, f"auraed-compatible teebus on {self.host}, up {uptime} s")}

    # --- the daemon's log ------------------------------------------------------------------------

    async def daemon_log(self, incoming: Incoming) -> Any:
        if self.feeds.is_renewal(incoming):
            return self.feeds.answer_renewal(incoming)
        feed = await self.feeds.open(incoming)
        relay = self._relays[feed.id] = _Relay(feed)
        self.spawn(self._relay(relay), f"daemon log {feed.id}", wait=False)
        return NO_REPLY

    async def _on_log_line(self, msg: Msg) -> None:
        if not self._relays:
            return
        item = messages.log_item("daemon", msg.data.decode("utf-8", errors="replace"), time.time_ns())
        for relay in self._relays.values():
            relay.offer(item)

    async def _relay(self, relay: _Relay) -> None:
        feed = relay.feed
        try:
            while not feed.closed:
                if not relay.lines:
                    relay.ready.clear()
                    try:
                        await asyncio.wait_for(relay.ready.wait(), POLL_SECONDS)
                    except asyncio.TimeoutError:
                        pass
                    continue
                if relay.dropped:
                    notice = (f"[teebus: {relay.dropped} daemon log lines dropped here: this stream was read "
                              "more slowly than the daemon logged]")
                    relay.dropped = 0
                    if not await feed.send(messages.log_item("daemon", notice, time.time_ns())):
                        return
                if not await feed.send(relay.lines.popleft()):
                    return
        finally:
            self._relays.pop(feed.id, None)

    # --- a process's output ----------------------------------------------------------------------

    async def subprocess(self, incoming: Incoming) -> Any:
        if self.feeds.is_renewal(incoming):
            return self.feeds.answer_renewal(incoming)
        request = messages.subprocess_request(incoming.payload)
        record = await output_store.find(self.js, self.host, request.pid)
        if record is None:
            raise NotFound(f"no process {request.pid} was started by teebus's runtime on {self.host} "
                           "(or its output is no longer kept)")
        feed = await self.feeds.open(incoming)
        self.spawn(self._follow(feed, record, request.channel), f"subprocess {request.pid} {feed.id}", wait=False)
        return NO_REPLY

    async def _follow(self, feed: Feed, record: ProcessRecord, channel: str) -> None:
        """Replay what was kept of this run on `channel`, then follow it live to its end marker."""
        ended = asyncio.Event()

        async def on_message(msg: Msg) -> None:
            if ended.is_set():
                return
            if output_store.END in (msg.headers or {}):
                ended.set()
                return
            for item in output_store.lines(msg.data):
                if not await feed.send(item):
                    ended.set()
                    return

        try:
            subscription = await self.js.subscribe(
                subjects.output(self.host, record.pid, channel), stream=subjects.OUTPUT_STREAM, cb=on_message,
                ordered_consumer=True, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                config=ConsumerConfig(opt_start_seq=record.start_seq + 1))
        except Exception as exc:
            await feed.end(Unavailable(f"the output of process {record.pid} cannot be read now ({exc!r}); "
                                       "watch again"))
            raise
        try:
            while not ended.is_set() and not feed.closed:
                try:
                    await asyncio.wait_for(ended.wait(), POLL_SECONDS)
                except asyncio.TimeoutError:
                    pass
            await feed.end()          # a no-op when the feed closed first (lapsed, cancelled)
        finally:
            try:
                await subscription.unsubscribe()
            except Exception:
                pass
