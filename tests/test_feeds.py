"""bus/feeds.py on the session's nats-server: a toy component of the kernel test system streams
numbers and ticks to watchers; order, errors, leases, fan-out, flow control and bounds."""

from __future__ import annotations

import asyncio
import contextlib
import secrets

import orjson
import pytest

from bus import feeds, headers
from bus.component import Component, Endpoint, Incoming
from bus.errors import BadRequest, Conflict, NotFound, Timeout, Unavailable
from bus.feeds import NO_REPLY, Feeds, watch
from bus.requester import Requester
from tests.conftest import eventually

LIMIT, WINDOW = 6, 8
COUNT, TICKS = "kerneltest.feedtest.count", "kerneltest.feedtest.ticks"


class FeedTest(Component):
    """`count`: items {"i": 0..n-1}, then the end (an error end with `fail`); `ticks`: every
    `tick()` goes to every open ticks feed."""

    system = "kerneltest"
    name = "feedtest"

    async def setup(self) -> None:
        self.feeds = Feeds(self.client, limit=LIMIT, window=WINDOW)
        self.tick_feeds: list[feeds.Feed] = []

    async def teardown(self) -> None:
        await self.feeds.close_all()

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("count", COUNT, self.count), Endpoint("ticks", TICKS, self.ticks)]

    async def count(self, incoming: Incoming):
        if self.feeds.is_renewal(incoming):
            return self.feeds.answer_renewal(incoming)
        n = (incoming.payload or {}).get("n")
        if not isinstance(n, int) or n < 0:
            raise BadRequest(f"n must be a count, not {n!r}")
        feed = await self.feeds.open(incoming)
        self.spawn(self._count(feed, n, incoming.payload.get("fail", False), incoming.payload.get("big", 0)),
                   wait=False)
        return NO_REPLY

    async def _count(self, feed: feeds.Feed, n: int, fail: bool, big: int) -> None:
        for i in range(n):
            if not await feed.send({"i": i, "pad": "x" * big}):
                return
        await feed.end(Conflict("counted, then failed on purpose", details={"counted": n}) if fail else None)

    async def ticks(self, incoming: Incoming):
        feed = await self.feeds.open(incoming)
        self.tick_feeds.append(feed)
        return NO_REPLY

    async def tick(self, n: int) -> None:
        for i in range(n):
            for feed in [f for f in self.tick_feeds if not f.closed]:
                await feed.send({"tick": i})


@pytest.fixture
async def component(start_component) -> FeedTest:
    return await start_component(FeedTest)


async def collect(items) -> list:
    return [item async for item in items]


async def open_raw(client, subject: str, payload: dict, keepalive: float):
    """A hand-made watcher: subscribes, opens the feed, returns (feed id, inbox messages, ack)."""
    inbox = client.new_inbox()
    messages: asyncio.Queue = asyncio.Queue()
    await client.subscribe(inbox, cb=messages.put)
    feed_id = secrets.token_hex(8)
    await client.publish(subject, orjson.dumps(payload), reply=inbox,
                         headers={feeds.FEED: feed_id, feeds.KEEPALIVE: str(keepalive)})
    ack = await asyncio.wait_for(messages.get(), 5)
    return feed_id, messages, ack


async def test_items_arrive_in_order_then_the_end(component, connect_as):
    client = await connect_as("adapter")
    items = await collect(watch(client, COUNT, {"n": 200}, keepalive=0.5))
    assert [item["i"] for item in items] == list(range(200))   # 25 windows of 8: flow control held
    await eventually(lambda: len(component.feeds) == 0)


async def test_an_error_ack_raises_and_nothing_follows(component, connect_as):
    client = await connect_as("adapter")
    with pytest.raises(BadRequest, match="n must be a count, not -1"):
        await collect(watch(client, COUNT, {"n": -1}))
    assert len(component.feeds) == 0


async def test_an_error_end_raises_its_type_after_the_items(component, connect_as):
    client = await connect_as("adapter")
    seen = []
    with pytest.raises(Conflict, match="failed on purpose") as raised:
        async for item in watch(client, COUNT, {"n": 3, "fail": True}):
            seen.append(item["i"])
    assert seen == [0, 1, 2] and raised.value.details == {"counted": 3}


async def test_nobody_serving_the_subject_is_unavailable(connect_as):
    client = await connect_as("adapter")
    with pytest.raises(Unavailable, match="no component serves kerneltest.feedtest.nobody"):
        await collect(watch(client, "kerneltest.feedtest.nobody", {}))


async def test_a_plain_request_to_a_feed_is_refused(component, connect_as):
    requester = Requester(await connect_as("adapter"))
    with pytest.raises(BadRequest, match="is a feed: open it with bus.feeds.watch"):
        await requester.request(COUNT, {"n": 1})


async def test_two_watchers_each_get_every_item(component, connect_as):
    client = await connect_as("adapter")
    first, second = watch(client, TICKS, {}), watch(client, TICKS, {})
    got: dict[str, list[int]] = {"first": [], "second": []}

    async def read(name: str, items) -> None:
        async with contextlib.aclosing(items):
            async for item in items:
                got[name].append(item["tick"])
                if len(got[name]) == 100:
                    return

    readers = [asyncio.create_task(read("first", first)), asyncio.create_task(read("second", second))]
    await eventually(lambda: len(component.tick_feeds) == 2)
    await component.tick(100)
    await asyncio.wait_for(asyncio.gather(*readers), 10)
    assert got["first"] == got["second"] == list(range(100))
    await eventually(lambda: len(component.feeds) == 0)   # closing the iterators cancelled both feeds


async def test_a_watcher_that_goes_away_is_dropped_after_its_lease(component, connect_as):
    client = await connect_as("adapter")
    _, messages, ack = await open_raw(client, TICKS, {}, keepalive=0.1)   # and never renews
    assert ack.headers[feeds.KEEPALIVE] == "0.1" and ack.headers[feeds.RENEW_TO].startswith(TICKS + ".renew.")
    assert len(component.feeds) == 1
    started = asyncio.get_running_loop().time()
    await eventually(lambda: len(component.feeds) == 0, timeout=3)
    assert asyncio.get_running_loop().time() - started >= 0.2      # the lease is 3 keepalives
    end = await asyncio.wait_for(messages.get(), 2)                 # told, in case it still listens
    assert end.headers[feeds.END] == "error" and end.headers[headers.ERROR_CODE] == "504"
    assert component.tick_feeds[0].reason == "lapsed"


async def test_a_watcher_whose_connection_dies_is_dropped(component, connect_as):
    client = await connect_as("adapter")
    task = asyncio.create_task(collect(watch(client, TICKS, {}, keepalive=0.1)))
    await eventually(lambda: len(component.feeds) == 1)
    await component.tick(3)
    await client.close()        # no cancel is sent: only the lease tells
    await eventually(lambda: len(component.feeds) == 0, timeout=3)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_renewed_watcher_outlives_many_leases(component, connect_as):
    client = await connect_as("adapter")
    items = watch(client, TICKS, {}, keepalive=0.05)
    first = asyncio.ensure_future(anext(items))
    await eventually(lambda: len(component.feeds) == 1)
    await asyncio.sleep(0.6)                            # four leases long
    assert len(component.feeds) == 1
    await component.tick(1)
    assert await asyncio.wait_for(first, 2) == {"tick": 0}
    await items.aclose()
    await eventually(lambda: len(component.feeds) == 0)
    assert component.tick_feeds[0].reason == "cancelled"


async def test_renewals_on_the_feed_subject_itself_are_answered(component, connect_as):
    client = await connect_as("adapter")
    requester = Requester(client)
    feed_id, _, _ = await open_raw(client, COUNT, {"n": 0}, keepalive=5)
    with pytest.raises(NotFound):   # n=0: the feed ended at once, so it is no longer known
        await requester.request(COUNT, None, extra_headers={feeds.RENEW: feed_id})
    feed_id, _, ack = await open_raw(client, TICKS, {}, keepalive=5)
    reply = await client.request(ack.headers[feeds.RENEW_TO], b"", headers={feeds.RENEW: feed_id}, timeout=2)
    assert not reply.headers or headers.ERROR_CODE not in reply.headers


async def test_a_watcher_that_does_not_ack_holds_the_feed_at_its_window(component, connect_as):
    client = await connect_as("adapter")
    _, messages, _ = await open_raw(client, COUNT, {"n": 1000}, keepalive=5)
    await asyncio.sleep(0.3)
    feed = next(iter(component.feeds))
    assert feed.seq == WINDOW and messages.qsize() == WINDOW   # no more in flight than the window
    await client.publish(ack_subject(component, COUNT), b"",
                         headers={feeds.RENEW: feed.id, feeds.ACK: str(WINDOW)})
    await eventually(lambda: feed.seq == 2 * WINDOW)


def ack_subject(component: FeedTest, subject: str) -> str:
    return component.feeds.renew_subject(subject)


async def test_feeds_per_component_are_bounded(component, connect_as):
    client = await connect_as("adapter")
    held = [await open_raw(client, TICKS, {}, keepalive=5) for _ in range(LIMIT)]
    assert len(component.feeds) == LIMIT and all(feeds.FEED in ack.headers for _, _, ack in held)
    with pytest.raises(Unavailable, match=f"{LIMIT} feeds are open at this component"):
        await collect(watch(client, TICKS, {}))


async def test_an_item_above_max_payload_travels_through_the_payload_store(component, connect_as):
    client = await connect_as("adapter")
    big = client.max_payload + 1000
    items = await collect(watch(client, COUNT, {"n": 2, "big": big}))
    assert [len(item["pad"]) for item in items] == [big, big]


async def test_a_stopping_component_ends_its_feeds_with_503(component, connect_as):
    client = await connect_as("adapter")
    items = watch(client, TICKS, {})
    pending = asyncio.ensure_future(anext(items))
    await eventually(lambda: len(component.feeds) == 1)
    await component.stop(grace=1)
    with pytest.raises(Unavailable, match="stopped"):
        await asyncio.wait_for(pending, 3)


async def test_an_open_timeout_is_a_timeout(connect_as):
    client = await connect_as("adapter")
    silent = await connect_as("kerneltest")
    await silent.subscribe("kerneltest.feedtest.silent")   # hears the request, never answers
    await silent.flush()
    with pytest.raises(Timeout, match="did not open the feed within 0.3s"):
        await collect(watch(client, "kerneltest.feedtest.silent", {}, open_timeout=0.3))
