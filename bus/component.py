"""The component base: a nats.micro service whose handlers take decoded payloads and raise BusErrors.

A component lists its endpoints; the base registers them in one queue group (so replicas share the
load and `$SRV.PING|INFO|STATS` discovery works), decodes payloads by Content-Type, fetches large
ones from the payload stream, runs handlers concurrently up to `max_in_flight`, and turns exceptions
into `Nats-Service-Error-Code` / `Nats-Service-Error` replies (with the error's details as body).

One lifecycle: `start()` (setup, then endpoints), `stop(grace)` (endpoints off, requests and
`spawn`ed work get `grace` seconds, stragglers are cancelled, then teardown); `async with` does both.
Background work belongs to the component: `spawn(coro)` and `every(seconds, fn)`.
A handler that answers on its own (opening a feed, bus/feeds.py) returns `NO_REPLY`.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, Mapping

from nats import micro
from nats.aio.client import Client
from nats.micro.request import Request
from nats.micro.service import EndpointStats, Service

from bus import codec, headers, log, outages
from bus.errors import BusError
from bus.events import Events
from bus.records import Records
from bus.requester import Requester


_log = log.get_logger("bus.component")

@dataclass(slots=True)  # built for every request: slots without frozen cost a quarter as much
class Incoming:
    """One decoded request as a handler sees it."""

    subject: str
    payload: Any
    content_type: str
    headers: dict[str, str]
    request_id: str
    reply: str = ""      # the requester's reply subject: a handler that answers itself (a feed) needs it
    received: float = 0.0  # the loop's time when it arrived

    def seconds_left(self) -> float | None:
        """How long the requester still waits for the answer (its Teebus-Timeout header), or None
        when it did not say; never below 0."""
        try:
            timeout = float(self.headers.get(headers.TIMEOUT, ""))
        except ValueError:
            return None
        if not math.isfinite(timeout) or timeout <= 0:
            return None
        return max(0.0, timeout - (asyncio.get_running_loop().time() - self.received))


@dataclass(slots=True)
class Outgoing:
    """Return this from a handler to choose the reply's content type explicitly."""

    payload: Any
    content_type: str = headers.JSON
    headers: dict[str, str] | None = None  # extra reply headers, e.g. a flag an adapter maps to a status


class _NoReply:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_REPLY"


# Return this from a handler that answered the request itself on `Incoming.reply` (bus/feeds.py
# acknowledges a feed and then sends its items there): the dispatcher then sends no reply of its own.
# A BusError the handler raises is still answered as usual.
NO_REPLY: Any = _NoReply()

Handler = Callable[[Incoming], Awaitable[Any]]


@dataclass(frozen=True)
class Endpoint:
    """A subject and its handler. `inline` handlers answer from memory (no waiting on I/O): they run
    one at a time in the subscription's own task instead of a task per request, which saves a
    task and a loop iteration per request; one that does wait stalls only its own endpoint."""

    name: str
    subject: str
    handler: Handler
    inline: bool = False


@dataclass
class Context:
    """What every component gets from whoever runs it (launcher, `teebus run`, a test)."""

    client: Client
    data_dir: Path
    config: Any = None                  # the system's configuration object (its manifest's class)
    nats_url: str = ""                  # the bus as a process this component starts should dial it
    replicas: int = 1                   # JetStream copies of every bucket, stream and store
    embedded: bool = False              # the bus is `teebus up`'s own server, ended with it
    http_host: str = "127.0.0.1"        # where the deployment's sites listen
    ports: Mapping[str, int] = field(default_factory=dict)   # every site's port, defaults applied


@dataclass
class EndpointCounters:
    """One endpoint's figures (`Component.stats()`, and `$SRV.STATS` data)."""

    served: int = 0
    errors: int = 0
    in_flight: int = 0
    busy_ns: int = 0

    def as_dict(self) -> dict[str, Any]:
        average = self.busy_ns / self.served / 1e6 if self.served else 0.0
        return {"served": self.served, "errors": self.errors, "in_flight": self.in_flight,
                "average_ms": round(average, 3)}


class Component:
    """Subclass, set `system`/`name`, implement `endpoints()` (and `setup()` for state)."""

    system: str = ""
    name: str = ""
    version: str = "0.1.0"
    description: str = ""
    queue_group: str = "q"
    max_in_flight: int = 256

    def __init__(self, context: Context) -> None:
        self.context = context
        self.client = context.client
        self.requester = Requester(context.client)
        self.payloads = self.requester.payloads
        self.events = Events(context.client, self.system)
        self.log = log.get_logger(self.service_name)
        self._service: Service | None = None
        self._slots = asyncio.Semaphore(self.max_in_flight)
        self._tasks: set[asyncio.Task] = set()        # requests being served, and spawned work
        self._daemons: set[asyncio.Task] = set()      # `every` loops, watchers: cancelled first at stop
        self._counters: dict[str, EndpointCounters] = {}

    @property
    def config(self) -> Any:
        """The system's configuration object (Context.config)."""
        return self.context.config

    @property
    def service_name(self) -> str:
        """The micro service name, `<system>-<name>` (micro names allow no dots)."""
        return f"{self.system}-{self.name}"

    @property
    def service_id(self) -> str | None:
        """This replica's micro service id (what `$SRV.INFO` reports), None when not started."""
        return self._service.id if self._service is not None else None

    def stats(self) -> dict[str, EndpointCounters]:
        """Figures per endpoint name, as `$SRV.STATS` reports them."""
        return dict(self._counters)

    async def open_records(self, bucket: str, **options: Any) -> Records:
        """A KV bucket of this component, with the deployment's replica count."""
        return await Records.open(self.client, bucket, replicas=self.context.replicas, **options)

    def spawn(self, work: Coroutine[Any, Any, Any], name: str = "", *, wait: bool = True) -> asyncio.Task:
        """Run `work` in the background, owned by the component; a failure is logged, never lost.

        `stop` waits for it up to the grace period, then cancels it; with `wait=False` (a watcher
        that only ends when what it watches does) `stop` cancels it at once.
        """
        task = asyncio.create_task(work, name=name or None)
        (self._tasks if wait else self._daemons).add(task)
        task.add_done_callback(self._background_done)
        return task

    def every(self, seconds: float, work: Callable[[], Awaitable[Any]], name: str = "") -> asyncio.Task:
        """Call `work` every `seconds` until `stop`; a failing pass is logged and the next one runs."""
        if seconds <= 0:
            raise ValueError(f"every() needs a positive interval, not {seconds!r}")

        async def loop() -> None:
            me = asyncio.current_task()
            while True:
                await asyncio.sleep(seconds)
                try:
                    await work()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.log.exception("periodic work failed", work=name or getattr(work, "__name__", "?"))
                if me is not None and me.cancelling():
                    # asyncio.wait_for (3.11, gh-86296) may swallow a cancel that lands as its awaited
                    # reply does (nats-py's requests use it): the request still asked us to stop
                    raise asyncio.CancelledError

        return self.spawn(loop(), name, wait=False)

    def _background_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._daemons.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("background work failed", task=task.get_name(), exc_info=task.exception())

    async def __aenter__(self) -> "Component":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def endpoints(self) -> list[Endpoint]:
        raise NotImplementedError

    async def setup(self) -> None:
        """Open buckets, load keys: anything needed before the first request."""

    async def teardown(self) -> None:
        """Release what `setup` took (watchers, files) after the last request finished."""

    async def start(self) -> None:
        """Set up state, then register the endpoints: the first request finds everything ready."""
        await self.setup()
        self._service = await micro.add_service(
            self.client, name=self.service_name, version=self.version,
            description=self.description or self.service_name, queue_group=self.queue_group,
            stats_handler=self._endpoint_stats)
        for endpoint in self.endpoints():
            self._counters[endpoint.name] = EndpointCounters()
            await self._service.add_endpoint(name=endpoint.name, subject=endpoint.subject,
                                             handler=self._dispatcher(endpoint))
        await self.client.flush()
        self.log.info("component started", service=self.service_name, id=self._service.id,
                      endpoints=[e.subject for e in self.endpoints()])

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking requests; requests in flight and spawned work get `grace` seconds, then
        whatever still runs is cancelled; periodic work stops at once. Then `teardown`."""
        if self._service is not None:
            await self._service.stop()
            self._service = None
        await _cancel(set(self._daemons))
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        stragglers = set(self._tasks)
        if stragglers:
            self.log.warning("cancelling work still running after the grace period", tasks=len(stragglers),
                             grace=grace)
            await _cancel(stragglers)
        await self.teardown()
        self.log.info("component stopped", service=self.service_name)

    def _endpoint_stats(self, stats: EndpointStats) -> dict[str, Any]:
        counters = self._counters.get(stats.name)
        return counters.as_dict() if counters else {}

    def _dispatcher(self, endpoint: Endpoint) -> Callable[[Request], Awaitable[None]]:
        counters = self._counters[endpoint.name]

        async def serve_inline(request: Request) -> None:
            counters.in_flight += 1
            await self._serve(endpoint, request, counters)

        async def dispatch(request: Request) -> None:
            await self._slots.acquire()  # back-pressure: the subscription waits when we are full
            counters.in_flight += 1
            task = asyncio.create_task(self._serve(endpoint, request, counters))
            self._tasks.add(task)
            task.add_done_callback(self._finished)

        return serve_inline if endpoint.inline else dispatch

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _serve(self, endpoint: Endpoint, request: Request, counters: EndpointCounters) -> None:
        started = time.perf_counter_ns()
        hdrs = request.headers or {}  # this message's own dict (nats-py builds one per message)
        request_id = hdrs.get(headers.REQUEST_ID) or log.new_request_id()
        log.bind_request(request_id, service=self.service_name, endpoint=endpoint.name)
        try:
            outgoing = await self._handle(endpoint, request, hdrs, request_id)
            if outgoing is not NO_REPLY:
                await self._respond(request, outgoing, request_id)
        except BusError as exc:
            counters.errors += 1
            self.log.info("request refused", status=exc.status, error=exc.message)
            await self._respond_error(request, exc.status, exc.message, request_id, exc.details,
                                      codec.content_type_of(request.headers))
        except Exception as exc:
            counters.errors += 1
            outage = outages.as_bus_error(exc)
            if outage is not None:
                self.log.warning("bus storage unavailable", status=outage.status, error=repr(exc))
                await self._respond_error(request, outage.status, outage.message, request_id)
                return
            self.log.exception("handler failed")
            await self._respond_error(request, 500, f"{self.service_name} failed on this request "
                                      f"(request id {request_id}); its log has the details", request_id)
        finally:
            counters.in_flight -= 1
            counters.served += 1
            counters.busy_ns += time.perf_counter_ns() - started

    async def _handle(self, endpoint: Endpoint, request: Request, hdrs: dict[str, str],
                      request_id: str) -> Outgoing | Any:
        received = asyncio.get_running_loop().time()
        content_type = codec.content_type_of(hdrs)
        body = await self.payloads.unpack(request.data, hdrs) if headers.PAYLOAD_REF in hdrs else request.data
        incoming = Incoming(request.subject, codec.decode(body, content_type), content_type, hdrs, request_id,
                            request._msg.reply, received)  # micro's Request has no accessor for reply
        result = await endpoint.handler(incoming)
        if isinstance(result, Outgoing) or result is NO_REPLY:
            return result
        return Outgoing(result, headers.JSON if content_type == headers.OCTETS else content_type)

    async def _respond(self, request: Request, outgoing: Outgoing, request_id: str) -> None:
        data = codec.encode(outgoing.payload, outgoing.content_type)
        if outgoing.content_type == headers.JSON and not outgoing.headers and self.payloads.fits(len(data)):
            # the common reply needs no headers: JSON is the default type and the requester knows its
            # request id; a header-less message is markedly cheaper for nats-py on both ends
            await request.respond(data)
            return
        reply_headers = {headers.CONTENT_TYPE: outgoing.content_type, headers.REQUEST_ID: request_id}
        if outgoing.headers:
            reply_headers.update(outgoing.headers)
        await request.respond(await self.payloads.pack(data, reply_headers), headers=reply_headers)

    async def _respond_error(self, request: Request, status: int, message: str, request_id: str,
                             details: Mapping[str, Any] | None = None, content_type: str = headers.JSON) -> None:
        one_line = " ".join(message.split())[:2048]  # header values cannot carry newlines
        reply_headers = {headers.REQUEST_ID: request_id}
        data = b""
        try:
            if details:
                content_type = headers.JSON if content_type == headers.OCTETS else content_type
                encoded = codec.encode(dict(details), content_type)
                reply_headers[headers.CONTENT_TYPE] = content_type
                data = await self.payloads.pack(encoded, reply_headers)
        except (TypeError, ValueError, BusError) as exc:
            self.log.error("error details dropped: they do not encode", error=str(exc))
        try:
            await request.respond_error(str(status), one_line, data=data, headers=reply_headers)
        except Exception:  # the requester is gone; nothing left to tell
            pass


CANCEL_ROUNDS = 10            # a cancel swallowed by a library (see `every`) is asked again this often
CANCEL_ROUND_SECONDS = 0.5


async def _cancel(tasks: set[asyncio.Task]) -> None:
    """Cancel `tasks` and wait for them; a task that swallowed its cancel is cancelled again, and
    one that still runs after every round is left (logged), so a stop never hangs."""
    pending = set(tasks)
    for _ in range(CANCEL_ROUNDS):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=CANCEL_ROUND_SECONDS)
    for task in tasks - pending:
        if not task.cancelled():
            task.exception()           # retrieved: a failure was logged where it happened
    if pending:
        _log.warning("tasks still running after being cancelled; left behind",
                     tasks=[task.get_name() for task in pending])
