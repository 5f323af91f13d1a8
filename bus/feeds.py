"""Feeds: a stream of messages from a component to one watcher (a gRPC server stream, on the bus).

A feed is a bus subscription of the watcher's own; the component publishes into it. The protocol:

1. The watcher subscribes to a fresh inbox of its connection (`client.new_inbox()`) and sends the
   feed's subject a request whose reply subject is that inbox, with headers `Teebus-Feed: <id>`
   (random) and `Teebus-Feed-Keepalive: <seconds>`.
2. The component's handler opens a `Feed` (`Feeds.open`) and returns `NO_REPLY`. The first message
   on the inbox is the ack: headers `Teebus-Feed: <id>`, `Teebus-Feed-Keepalive` (as granted),
   `Teebus-Feed-Window` and `Teebus-Feed-Renew-To` (see 4). Or it is a micro error
   (`Nats-Service-Error-Code` / `Nats-Service-Error`: the handler raised), and nothing follows.
3. Items: headers `Teebus-Feed-Seq: n` (1, 2, ...), body JSON. Last, the end: `Teebus-Feed-End: ok`,
   or `Teebus-Feed-End: error` with the error headers (a lease that lapsed ends with 504).
4. Leases. The watcher renews every `keepalive` seconds with a request carrying
   `Teebus-Feed-Renew: <id>` and `Teebus-Feed-Ack: <last seq it consumed>`, answered at once (empty
   body; 404 when the feed is unknown). A component drops a feed not renewed for 3 keepalives:
   that is how it learns a gRPC client went away. Renewals go to `Teebus-Feed-Renew-To`,
   `<feed subject>.renew.<token of this Feeds>`, a plain (not queue) subscription of the component
   that owns the feed: the feed subject itself is served by a queue group, so with replicas a
   renewal sent there reaches the owner only by chance. (A renewal that does arrive on the feed
   subject is understood too: `is_renewal` / `renew` in the handler.) A watcher that leaves
   publishes `Teebus-Feed-Cancel: <id>` there, so the feed is dropped at once.
5. Flow control: at most `Teebus-Feed-Window` items are unacknowledged; `Feed.send` waits for the
   watcher's acks beyond that (an ack is a renewal sent without a reply subject, every quarter
   window). So a slow watcher slows its own feed, nothing queues without bound, and the watcher's
   buffer never overflows. A gap in the sequence (never expected) ends the watch with 503.

Bounds: `limit` feeds per `Feeds` (a component's), more is 503; `window` items in flight per
feed; an item above the server's max_payload travels through the payload stream (bus/payloads.py).
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
from collections import deque
from typing import Any, AsyncIterator, Callable

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

from bus import headers, log
from bus.component import NO_REPLY, Incoming
from bus.errors import BadRequest, BusError, NotFound, Timeout, Unavailable
from bus.payloads import Payloads
from bus.requester import raise_for_error

__all__ = ["NO_REPLY", "Feed", "Feeds", "watch"]

FEED = "Teebus-Feed"
SEQ = "Teebus-Feed-Seq"
END = "Teebus-Feed-End"
RENEW = "Teebus-Feed-Renew"
ACK = "Teebus-Feed-Ack"
CANCEL = "Teebus-Feed-Cancel"
RENEW_TO = "Teebus-Feed-Renew-To"
KEEPALIVE = "Teebus-Feed-Keepalive"
WINDOW = "Teebus-Feed-Window"

LEASE_KEEPALIVES = 3
MIN_KEEPALIVE, MAX_KEEPALIVE, DEFAULT_KEEPALIVE = 0.05, 600.0, 10.0
DEFAULT_LIMIT = 1024
DEFAULT_WINDOW = 512
MAX_WINDOW = 65_536
_ID = re.compile(r"[A-Za-z0-9_-]{8,64}\Z")
_STATUS = "Status"
_log = log.get_logger("bus.feeds")


def _keepalive(text: str | None) -> float:
    try:
        value = float(text) if text else DEFAULT_KEEPALIVE
    except ValueError:
        value = DEFAULT_KEEPALIVE
    if not math.isfinite(value):
        value = DEFAULT_KEEPALIVE
    return min(max(value, MIN_KEEPALIVE), MAX_KEEPALIVE)


def _error_headers(error: BusError) -> dict[str, str]:
    return {headers.ERROR_CODE: str(error.status), headers.ERROR: " ".join(error.message.split())[:2048]}


# --- the component's side ------------------------------------------------------------------------

class Feed:
    """One open feed: `send` items in order, then `end`; False from `send` once it is closed
    (ended, lapsed, cancelled by the watcher, or its component stopping)."""

    def __init__(self, owner: "Feeds", feed_id: str, inbox: str, subject: str, keepalive: float,
                 request_id: str) -> None:
        self.id = feed_id
        self.inbox = inbox
        self.subject = subject
        self.keepalive = keepalive
        self.request_id = request_id
        self.seq = 0                     # items sent
        self.reason = ""                 # why it closed: ended, lapsed, cancelled, stopped, unreachable
        self._owner = owner
        self._acked = 0
        self._expires = asyncio.get_running_loop().time() + keepalive * LEASE_KEEPALIVES
        self._credit = asyncio.Event()
        self._ending = False             # no item goes out once the end is decided
        self._done = asyncio.Event()
        self._sending = asyncio.Lock()

    @property
    def closed(self) -> bool:
        return self._done.is_set()

    async def wait_closed(self) -> None:
        await self._done.wait()

    async def send(self, payload: Any) -> bool:
        """Publish one item (JSON); waits while `window` items are unacknowledged. False when closed."""
        async with self._sending:
            while not self._ending and self.seq - self._acked >= self._owner.window:
                self._credit.clear()
                await self._credit.wait()
            if self._ending:
                return False
            self.seq += 1
            return await self._publish(orjson.dumps(payload), {SEQ: str(self.seq)})

    async def end(self, error: BusError | None = None) -> None:
        """The last message: `Teebus-Feed-End: ok`, or the error's headers. Idempotent."""
        await self._finish(error, "ended")

    async def _finish(self, error: BusError | None, reason: str) -> None:
        if self._ending:
            return
        self._ending = True
        self._credit.set()               # a send waiting for credit gives up, and so lets go of the lock
        async with self._sending:        # ... while one already publishing finishes first: order holds
            if not self.closed:
                hdrs = {END: "ok"} if error is None else {END: "error", **_error_headers(error)}
                body = b""
                if error is not None and error.details:     # travels as a micro error's data does
                    body, hdrs[headers.CONTENT_TYPE] = orjson.dumps(dict(error.details), default=str), headers.JSON
                await self._publish(body, hdrs)
            self._close(reason)

    async def _publish(self, data: bytes, hdrs: dict[str, str]) -> bool:
        payloads = self._owner.payloads
        try:
            if not payloads.fits(len(data)):
                data = await payloads.pack(data, hdrs)
            await self._owner.client.publish(self.inbox, data, headers=hdrs)
            return True
        except Exception as exc:     # closed connection, a payload the store refused: the feed is over
            _log.warning("feed item not sent; feed closed", feed=self.id, subject=self.subject, error=repr(exc))
            self._close("unreachable")
            return False

    def _renewed(self, acked: int | None) -> None:
        self._expires = asyncio.get_running_loop().time() + self.keepalive * LEASE_KEEPALIVES
        if acked is not None and acked > self._acked:
            self._acked = min(acked, self.seq)
            self._credit.set()

    def _close(self, reason: str) -> None:
        if self.closed:
            return
        self._ending = True
        self.reason = reason
        self._done.set()
        self._credit.set()
        self._owner._forget(self)


class Feeds:
    """A component's open feeds: opens them, renews their leases, drops lapsed ones.

    Owned by one component: create it in `setup`, call `close_all()` in `teardown`. A feed
    endpoint's handler starts with `if feeds.is_renewal(incoming): return feeds.answer_renewal(incoming)`,
    validates its request (raising BusErrors: they become the error ack), then
    `feed = await feeds.open(incoming)`, hands `feed` to whatever produces its items (a spawned
    task, `wait=False`: a feed may last as long as its watcher) and returns `NO_REPLY`.
    """

    def __init__(self, client: Client, *, limit: int = DEFAULT_LIMIT, window: int = DEFAULT_WINDOW) -> None:
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be 1 to {MAX_WINDOW}, not {window}")
        self.client = client
        self.limit = limit
        self.window = window
        self.payloads = Payloads(client)
        self._token = secrets.token_hex(8)
        self._feeds: dict[str, Feed] = {}
        self._renewal_subs: dict[str, Subscription] = {}
        self._subscribing = asyncio.Lock()
        self._sweeper: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._feeds)

    def __iter__(self):
        return iter(list(self._feeds.values()))

    def renew_subject(self, subject: str) -> str:
        """Where watchers of `subject` renew the feeds this instance owns."""
        return f"{subject}.renew.{self._token}"

    async def open(self, incoming: Incoming) -> Feed:
        """Acknowledge the feed `incoming` asks for and return it (BadRequest / Unavailable otherwise)."""
        feed_id = incoming.headers.get(FEED, "")
        if not incoming.reply or not _ID.match(feed_id):
            raise BadRequest(f"{incoming.subject} is a feed: open it with bus.feeds.watch (a request with a "
                             f"reply subject and a {FEED} header of 8 to 64 letters, digits, '-' or '_')")
        if feed_id in self._feeds:
            raise BadRequest(f"feed {feed_id} is open already; each watch needs a fresh id")
        if len(self._feeds) >= self.limit:
            raise Unavailable(f"{len(self._feeds)} feeds are open at this component, the most it serves; "
                              "close one or try again later")
        renew_to = await self._listen(incoming.subject)
        keepalive = _keepalive(incoming.headers.get(KEEPALIVE))
        feed = Feed(self, feed_id, incoming.reply, incoming.subject, keepalive, incoming.request_id)
        self._feeds[feed_id] = feed
        ack = {FEED: feed_id, KEEPALIVE: repr(keepalive), WINDOW: str(self.window), RENEW_TO: renew_to,
               headers.REQUEST_ID: incoming.request_id}
        if not await feed._publish(b"", ack):
            raise Unavailable("the feed could not be acknowledged: the bus connection is down")
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep(), name="feeds sweeper")
        self._wake.set()
        return feed

    def is_renewal(self, incoming: Incoming) -> bool:
        return RENEW in incoming.headers or CANCEL in incoming.headers

    def renew(self, incoming: Incoming) -> bool:
        """Handle a renewal (or cancel) that arrived on the feed's own subject; False when the feed
        is not open here (the handler answers NotFound)."""
        return self._renewal(incoming.headers)

    def answer_renewal(self, incoming: Incoming) -> Any:
        """A handler's whole answer to a renewal: `return feeds.answer_renewal(incoming)`."""
        if not self.renew(incoming):
            raise NotFound("this feed is not open (it ended, lapsed, or its component restarted)")
        return {} if incoming.reply else NO_REPLY

    async def close_all(self, error: BusError | None = None) -> None:
        """End every open feed (with `error`, by default 503: the component stops) and unsubscribe."""
        error = error or Unavailable("the component serving this feed stopped; watch again")
        for feed in list(self._feeds.values()):
            await feed._finish(error, "stopped")
        for subscription in self._renewal_subs.values():
            try:
                await subscription.unsubscribe()
            except Exception:
                pass
        self._renewal_subs.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None

    def _forget(self, feed: Feed) -> None:
        if self._feeds.get(feed.id) is feed:
            del self._feeds[feed.id]

    def _renewal(self, hdrs: dict[str, str]) -> bool:
        cancelled = hdrs.get(CANCEL)
        if cancelled:
            feed = self._feeds.get(cancelled)
            if feed is not None:
                feed._close("cancelled")
            return feed is not None
        feed = self._feeds.get(hdrs.get(RENEW, ""))
        if feed is None:
            return False
        acked = hdrs.get(ACK, "")
        feed._renewed(int(acked) if acked.isdigit() else None)
        return True

    async def _listen(self, subject: str) -> str:
        renew_to = self.renew_subject(subject)
        if subject in self._renewal_subs:
            return renew_to
        async with self._subscribing:
            if subject not in self._renewal_subs:
                self._renewal_subs[subject] = await self.client.subscribe(renew_to, cb=self._on_renewal)
        return renew_to

    async def _on_renewal(self, msg: Msg) -> None:
        known = self._renewal(msg.headers or {})
        if not msg.reply:
            return                              # an ack or a cancel: nobody waits for an answer
        answer = {} if known else _error_headers(NotFound("this feed is not open (it ended, lapsed, or its "
                                                          "component restarted)"))
        try:
            await self.client.publish(msg.reply, b"", headers=answer or None)
        except Exception:
            pass

    async def _sweep(self) -> None:
        """Drop feeds whose lease lapsed, telling the watcher (504) in case it still listens."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            for feed in list(self._feeds.values()):
                if feed._expires <= now:
                    _log.info("feed lease lapsed; dropped", feed=feed.id, subject=feed.subject, sent=feed.seq)
                    await feed._finish(Timeout(f"the watcher did not renew its lease within "
                                               f"{feed.keepalive * LEASE_KEEPALIVES:g}s"), "lapsed")
            if not self._feeds:
                self._wake.clear()
                await self._wake.wait()
                continue
            soonest = min(feed._expires for feed in self._feeds.values())
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.01, min(soonest - loop.time(), 1.0)) + 0.005)
            except asyncio.TimeoutError:
                pass


# --- the watcher's side --------------------------------------------------------------------------

class _Stop:
    """A failure found outside the item stream (renewals), queued behind what already arrived."""

    def __init__(self, error: BusError) -> None:
        self.error = error


async def watch(client: Client, subject: str, payload: Any, *, keepalive: float = DEFAULT_KEEPALIVE,
                open_timeout: float = 5.0, request_id: str | None = None) -> AsyncIterator[Any]:
    """Open the feed on `subject` with `payload` (JSON) and yield its items until it ends.

    Raises the typed BusError of an error ack or an error end (Unavailable when nobody serves
    `subject` or the owner vanished, Timeout when it does not answer); stops at the ok end.
    Closing or cancelling the iterator unsubscribes, stops renewing and cancels the feed.
    """
    feed_id = secrets.token_hex(12)
    inbox = client.new_inbox()
    arrived: deque[Msg | _Stop] = deque()
    ready = asyncio.Event()
    cap = [MAX_WINDOW + 16]                  # until the ack names the window
    overflowed = [False]

    async def on_message(msg: Msg) -> None:
        if len(arrived) >= cap[0]:
            overflowed[0] = True
        else:
            arrived.append(msg)
        ready.set()

    def stop_with(error: BusError) -> None:
        arrived.append(_Stop(error))
        ready.set()

    async def next_message(timeout: float | None) -> Msg | _Stop:
        while not arrived:
            if overflowed[0]:
                raise Unavailable(f"the feed on {subject} sent more than its window; items were lost")
            ready.clear()
            if timeout is None:
                await ready.wait()
            else:
                await asyncio.wait_for(ready.wait(), timeout)
        return arrived.popleft()

    request_id = request_id or log.current_request_id() or log.new_request_id()
    subscription = await client.subscribe(inbox, cb=on_message)
    renewer: asyncio.Task[None] | None = None
    renew_to = ""
    consumed = 0
    finished = False
    try:
        await client.publish(subject, orjson.dumps(payload), reply=inbox,
                             headers={FEED: feed_id, KEEPALIVE: repr(keepalive), headers.REQUEST_ID: request_id})
        try:
            ack = await next_message(open_timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"{subject} did not open the feed within {open_timeout:g}s") from None
        assert isinstance(ack, Msg)
        hdrs = ack.headers or {}
        if hdrs.get(_STATUS) == "503" and not ack.data:
            raise Unavailable(f"no component serves {subject}: is it running? "
                              "(`teebus status` lists the live services)")
        raise_for_error(hdrs, ack.data)
        if hdrs.get(FEED) != feed_id:
            raise Unavailable(f"{subject} answered, but did not open a feed (is it a feed endpoint?)")
        granted = _keepalive(hdrs.get(KEEPALIVE))
        offered = hdrs.get(WINDOW, "")
        window = min(int(offered), MAX_WINDOW) if offered.isdigit() and int(offered) > 0 else DEFAULT_WINDOW
        cap[0] = window + 16
        renew_to = hdrs.get(RENEW_TO) or subject
        progress = {"consumed": 0}
        renewer = asyncio.create_task(_renew(client, renew_to, feed_id, granted, progress, stop_with),
                                      name=f"feed {feed_id} renewals")
        payloads = Payloads(client)
        acked = 0
        while True:
            msg = await next_message(None)
            if isinstance(msg, _Stop):
                raise msg.error
            hdrs = msg.headers or {}
            data = await payloads.unpack(msg.data, hdrs) if headers.PAYLOAD_REF in hdrs else msg.data
            finished = END in hdrs or headers.ERROR_CODE in hdrs
            raise_for_error(hdrs, data)
            if finished:
                return
            seq = int(hdrs[SEQ]) if hdrs.get(SEQ, "").isdigit() else -1
            if seq != consumed + 1:
                raise Unavailable(f"the feed on {subject} lost items: expected item {consumed + 1}, got "
                                  f"{hdrs.get(SEQ, 'a message without a sequence number')}")
            consumed = progress["consumed"] = seq
            yield orjson.loads(data) if data else None
            if consumed - acked >= max(1, window // 4):
                acked = consumed
                await client.publish(renew_to, b"", headers={RENEW: feed_id, ACK: str(consumed)})
    finally:
        if renewer is not None:
            renewer.cancel()
        try:
            if renew_to and not finished:
                await client.publish(renew_to, b"", headers={CANCEL: feed_id})
            await subscription.unsubscribe()
        except Exception:     # a closed connection: nothing to release
            pass
        if renewer is not None:
            await asyncio.gather(renewer, return_exceptions=True)


async def _renew(client: Client, renew_to: str, feed_id: str, keepalive: float, progress: dict[str, int],
                 stop_with: Callable[[BusError], None]) -> None:
    """Renew every `keepalive`; a failure ends the watch, after a moment in which an end already on
    its way (the owner ended the feed just before it forgot it) is read first."""
    loop = asyncio.get_running_loop()
    last_ok = loop.time()
    lease = keepalive * LEASE_KEEPALIVES
    while True:
        await asyncio.sleep(keepalive)
        error: BusError | None = None
        try:
            reply = await client.request(renew_to, b"", timeout=max(keepalive, 0.5),
                                         headers={RENEW: feed_id, ACK: str(progress["consumed"])})
            raise_for_error(reply.headers, reply.data)
            last_ok = loop.time()
            continue
        except NoRespondersError:
            error = Unavailable("the component serving this feed went away; watch again")
        except NatsTimeout:
            if loop.time() - last_ok < lease:
                continue
            error = Timeout(f"the component serving this feed has not answered for {lease:g}s")
        except BusError as exc:
            error = exc if not isinstance(exc, NotFound) else Unavailable(f"the feed was dropped: {exc.message}")
        except Exception as exc:    # the connection closed under us
            error = Unavailable(f"the feed's renewals failed: {exc!r}")
        await asyncio.sleep(min(1.0, keepalive))
        stop_with(error)
        return
