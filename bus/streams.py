"""JetStream streams a system owns beside its KV buckets (a mailbox, a log): what their owner may do,
and the one place where every JetStream asset (stream, KV bucket `KV_<name>`, the payload and EVENTS
streams) is created or brought to the deployment's replica count (`--replicas`).

An asset made with fewer copies than configured (a deployment that grew from one server to a
cluster) is scaled up by a stream update, which clustered JetStream performs in place, data kept.
One the servers cannot copy (a single server, a cluster too small) is refused with `ReplicasRefused`,
whose message says what to do. One with more copies than configured keeps them: shrinking loses
redundancy and is an operator's decision (`nats stream edit`), never a side effect of a restart.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import StreamConfig, StreamInfo
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from bus import log
from bus.errors import ReplicasRefused, Unavailable

SETTLE_SECONDS = 10.0      # how long a scale-up waits for the new copies to catch up before going on
UPDATE_TIMEOUT = 2.0       # s for one stream update's answer (a racing update may get none)
ANSWER_SECONDS = 20.0      # how long an ensure waits for JetStream to answer at all (a forming cluster)
PLACEMENT_SECONDS = 20.0   # how long a create or scale-up waits for the cluster to have peers enough
_NO_SUITABLE_PEERS = 10005  # nats-server's "no suitable peers for placement"
FIX = "run with --replicas 1, or join a cluster of at least {replicas} servers: docs/scaling.md"

_log = log.get_logger("bus.streams")
_kept: set[str] = set()    # assets already reported as keeping more copies than configured

Create = Callable[[], Awaitable[Any]]


def permissions(stream: str) -> list[str]:
    """What the owner of `stream` may publish: its JetStream API calls (create, info, update, direct
    get, message get and delete, consumers) and acknowledgements; its subjects are the system's own
    already. Info and update are all `ensure_replicas` needs, on its own streams and no other."""
    return [f"$JS.API.*.*.{stream}", f"$JS.API.*.*.{stream}.>", f"$JS.API.STREAM.MSG.*.{stream}", f"$JS.ACK.{stream}.>", "$JS.FC.>",
            "$JS.API.INFO"]


async def ensure(client: Client, wanted: StreamConfig) -> None:
    """Create the stream `wanted` describes, or bring an existing one to its limits and replica
    count (idempotent: replicas starting together may race here)."""
    js = client.jetstream()
    await ensure_replicas(client, wanted.name, wanted.num_replicas or 1, create=lambda: js.add_stream(wanted),
                          config=wanted)


async def ensure_replicas(client: Client, name: str, replicas: int, *, create: Create | None = None,
                          config: StreamConfig | None = None) -> None:
    """Bring the stream `name` to at least `replicas` copies; `create()` it (with `replicas`) when
    missing, and apply `config` (its limits) when given. Raises ReplicasRefused when the servers
    cannot keep that many copies, having changed nothing.

    Several replicas of a component may run this at once: a create that loses the race finds the
    stream made, and an update that fails is judged by what the stream has afterwards.
    """
    js = client.jetstream()
    info = await _answered(name, lambda: _existing(js, name, replicas, create))
    if info is None:                            # created just now, with `replicas` copies
        await _settle(js, name, replicas)       # on a cluster: until it has its leader
        return
    have = _copies(info)
    target = max(have, replicas)
    if have > replicas:
        _report_kept(name, have, replicas)
    if config is None and target == have:
        return
    await _update(client, name, (config or info.config).evolve(num_replicas=target), have)
    if target > have:
        _log.info("stream scaled up", stream=name, replicas=target, had=have)
        await _settle(js, name, target)


async def _update(client: Client, name: str, config: StreamConfig, have: int) -> None:
    """Apply `config` to the stream that has `have` copies. Of updates racing on one stream the
    server may leave all but one unanswered, so an unanswered one is judged by the copies the
    stream has afterwards (and sent again, until SETTLE_SECONDS, while they are too few)."""
    js = client.jetstream(timeout=UPDATE_TIMEOUT)
    target = config.num_replicas or 1
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        try:
            await _placed(lambda: js.update_stream(config))
            return
        except APIError as exc:
            if target == have:
                raise                           # a limit the server refused: not about copies
            if await _copies_now(js, name) < target:
                raise _refusal(name, have, target, exc) from None
            return                              # another replica scaled it up a moment ago
        except NatsTimeout:
            if await _copies_now(js, name) >= target:
                return
            if time.monotonic() > deadline:
                raise Unavailable(f"{describe(name)} was not scaled up to {target} replicas: the NATS "
                                  f"servers did not answer within {SETTLE_SECONDS:g}s; start again") from None


async def _existing(js: JetStreamContext, name: str, replicas: int, create: Create | None) -> StreamInfo | None:
    """The stream's info, or None after creating it; a creation refused for its replica count
    raises ReplicasRefused."""
    try:
        return await js.stream_info(name)
    except NotFoundError:
        if create is None:
            raise
    try:
        await _placed(create)
        return None
    except APIError as exc:
        try:
            return await js.stream_info(name)   # another replica created it a moment ago
        except NotFoundError:
            if replicas > 1:
                raise _refusal(name, 0, replicas, exc) from None
            raise exc from None


async def _answered(name: str, attempt: Callable[[], Awaitable[Any]]) -> Any:
    """`attempt`, tried again while JetStream does not answer (a cluster electing its meta leader,
    or still forming: its API times out or says it is unavailable), for at most ANSWER_SECONDS."""
    deadline = time.monotonic() + ANSWER_SECONDS
    while True:
        try:
            return await attempt()
        except (NatsTimeout, ServiceUnavailableError) as exc:
            if time.monotonic() > deadline:
                raise Unavailable(f"JetStream did not answer for {describe(name)} within {ANSWER_SECONDS:g}s "
                                  f"({exc or type(exc).__name__}): are a majority of the cluster's servers "
                                  "running? (`teebus status`)") from None
        await asyncio.sleep(0.5)


async def _placed(attempt: Callable[[], Awaitable[Any]]) -> Any:
    """`attempt` (a create or an update), tried again while the cluster has too few peers to place
    the copies on, for at most PLACEMENT_SECONDS: a cluster that is still forming (its last node
    not yet joined) gains them in a moment; one that stays short is refused after that."""
    deadline = time.monotonic() + PLACEMENT_SECONDS
    while True:
        try:
            return await attempt()
        except APIError as exc:
            if exc.err_code != _NO_SUITABLE_PEERS or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)


def _copies(info: StreamInfo) -> int:
    return info.config.num_replicas or 1


async def _copies_now(js: JetStreamContext, name: str) -> int:
    """The stream's copies as the servers say now; 0 while they do not answer (mid-election)."""
    try:
        return _copies(await js.stream_info(name))
    except NatsTimeout:
        return 0


def _refusal(name: str, have: int, wanted: int, exc: APIError) -> ReplicasRefused:
    """The error that names the asset, the counts and the fix, in the server's words too."""
    asset = describe(name)
    why = exc.description or str(exc)
    fix = FIX.format(replicas=wanted)
    if have == 0:
        return ReplicasRefused(f"cannot create {asset} with {wanted} replicas as configured: the NATS "
                               f"server refused ({why}); {fix}")
    return ReplicasRefused(f"{asset} has {have} {_plural(have)} but {wanted} are configured, and the "
                           f"NATS server cannot add more ({why}); {fix}")


def describe(name: str) -> str:
    """An asset as an operator knows it: KV buckets and object stores by their own names."""
    for prefix, kind in (("KV_", "KV bucket"), ("OBJ_", "object store")):
        if name.startswith(prefix):
            return f"the {kind} {name[len(prefix):]} (stream {name})"
    return f"the JetStream stream {name}"


def _plural(count: int) -> str:
    return "replica" if count == 1 else "replicas"


def _report_kept(name: str, have: int, replicas: int) -> None:
    """Say once per process that an asset keeps more copies than configured, and why."""
    if name in _kept:
        return
    _kept.add(name)
    _log.info("stream keeps more replicas than configured; teebus never shrinks one (nats stream edit "
              "does)", stream=name, replicas=have, configured=replicas)


async def _settle(js: JetStreamContext, name: str, replicas: int, timeout: float = SETTLE_SECONDS) -> None:
    """Wait until a new or scaled-up stream has a leader and every copy is current, so the first
    request after setup does not meet a leader election; past `timeout` the copies go on catching
    up by themselves, and setup goes on. A server that is not clustered has nothing to wait for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cluster = (await js.stream_info(name)).cluster
        if cluster is None:
            return
        peers = cluster.replicas or []
        if cluster.leader and len(peers) >= replicas - 1 and all(p.current for p in peers):
            return
        await asyncio.sleep(0.1)
    _log.info("stream copies still catching up", stream=name, replicas=replicas, waited=timeout)
