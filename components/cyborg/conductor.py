"""The Cyborg conductor: agents register (the seed's `POST /hello`), hold leases, report their
hardware's changes; everyone reads one versioned inventory of every host's hardware.

State lives in three KV buckets, every change a compare-and-set, so conductor replicas never
overwrite each other and a restart loses nothing:

- `cyborg_agents`: one record per host: endpoint, status READY or LOST, when it registered,
  reported, was lost. Key: the host name in lower case (hashed when it has characters a KV key
  cannot hold).
- `cyborg_leases`: the agents' leases, a bucket whose entries live `lease_seconds`
  (heartbeat_seconds x lease_heartbeats) unless renewed. Hello, heartbeat and report each put the
  host's key again. A sweep (every lease/10 s, at most 1 s) finds READY agents whose key is gone,
  marks them LOST and their devices stale (a change: it bumps the revision) and raises
  `events.cyborg.agent.lost`. The first hello, heartbeat or report afterwards makes the agent READY
  again, clears `stale` and raises `events.cyborg.agent.recovered`. Of replicas racing on one LOST
  transition, one wins the compare-and-set and raises the event; the others see it done.
- `cyborg_devices`: one record per device (components/cyborg/inventory_view.py has the shapes,
  the revision, tombstones and the horizon).

Events: `events.cyborg.agent.registered|lost|recovered`, `events.cyborg.device.added|changed|removed`
and, for each health transition, `events.cyborg.device.unhealthy|healthy`. Every change of the
health the conductor shows is one transition, an event and an entry of the device's history
(`health_path`): the agent's transitions that follow from the health shown, and, when an entry's
health changes without one (an agent that lost its health state), one derived here and marked
`derived`.
A READY agent saying hello again (say, restarted) renews its lease and endpoint without an event.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
from typing import Any, Awaitable, Callable, Iterable

import orjson
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyNotFoundError

from bus.component import Component, Endpoint, Incoming
from bus.errors import BadRequest, Conflict, NotFound, Unavailable
from bus.records import MAX_CAS_ATTEMPTS, Records, open_bucket
from components.cyborg import conductor_messages as messages
from components.cyborg import hardware, subjects
from components.cyborg.conductor_messages import LOST, READY, REGISTERED, HealthChange, Report, host_key
from components.cyborg.config import CyborgConfig
from components.cyborg.inventory_view import HORIZON_KEY, Gone, InventoryView

AGENTS, LEASES, DEVICES = "cyborg_agents", "cyborg_leases", "cyborg_devices"
WRITERS = 32                   # KV writes of one report in flight at once
VIEW_WAIT_SECONDS = 2.0        # how long an answer waits for the view to catch up with a write
_KV_KEY = re.compile(r"[-_.A-Za-z0-9]{1,200}\Z")

Change = Callable[[dict[str, Any] | None], dict[str, Any] | None]


def agent_key(host: str) -> str:
    """The host's key in `cyborg_agents` and `cyborg_leases`."""
    key = host_key(host)
    if _KV_KEY.match(key) and not key.startswith(".") and not key.endswith(".") and ".." not in key:
        return key
    return "h-" + hashlib.sha256(key.encode()).hexdigest()[:40]


class Conductor(Component):
    system = subjects.SYSTEM
    name = "conductor"
    description = "Cyborg conductor: agent registration and leases, every host's hardware, versioned"
    config: CyborgConfig

    async def setup(self) -> None:
        self.lease_seconds = round(self.config.lease_seconds, 3)
        self.agents = await self.open_records(AGENTS, description="Cyborg agents", max_value_size=16 * 1024)
        self.leases = await self._open_leases()
        self.devices = await self.open_records(DEVICES, description="Cyborg hardware of every host",
                                               max_value_size=256 * 1024)
        await self.agents.mirror()
        await self.leases.mirror()
        self.view = InventoryView()
        self._written = 0
        kv = await self.client.jetstream().key_value(DEVICES)
        self._watcher = await kv.watchall()
        loaded = asyncio.Event()
        self.spawn(self._follow(loaded), "follow cyborg_devices", wait=False)
        await asyncio.wait_for(loaded.wait(), 60)
        # Leases that lapsed while no conductor ran are not the agents' fault: they get one lease
        # from the moment this conductor answers (`start`) to renew before the sweep may call them LOST.
        self._lenient_until = math.inf
        self.every(min(1.0, self.lease_seconds / 10), self._sweep, "sweep lapsed leases")

    async def start(self) -> None:
        await super().start()
        self._lenient_until = time.monotonic() + self.lease_seconds

    async def teardown(self) -> None:
        if self._watcher is not None:
            await self._watcher.stop()
            self._watcher = None
        await self.agents.close()
        await self.leases.close()

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("hello", subjects.CONDUCTOR_HELLO, self.hello),
                Endpoint("heartbeat", subjects.CONDUCTOR_HEARTBEAT, self.heartbeat),
                Endpoint("report", subjects.CONDUCTOR_REPORT, self.report),
                Endpoint("hardware", subjects.CONDUCTOR_HARDWARE, self.hardware),
                Endpoint("agents", subjects.CONDUCTOR_AGENTS, self.list_agents, inline=True)]

    # -- agents --------------------------------------------------------------------------------

    async def hello(self, incoming: Incoming) -> dict[str, Any]:
        hello = messages.parse_hello(incoming.payload)
        key = agent_key(hello.host)
        await self._renew(hello.host)             # the lease first: the sweep never sees READY without one
        now = time.time()
        try:
            await self.agents.create(key, {"host": hello.host, "endpoint": hello.endpoint, "status": READY,
                                           "registered": now, "last_report": None, "last_heartbeat": now,
                                           "lost_at": None})
        except Conflict:
            def again(current: dict[str, Any]) -> dict[str, Any]:
                return {**current, "host": hello.host, "endpoint": hello.endpoint, "status": READY}
            change = await self.agents.mutate(key, again)
            if change.before.value["status"] == LOST:
                await self._recovered(hello.host, "hello")
            await self._clear_stale(hello.host)
        else:
            await self.events.publish("agent", "registered", {"host": hello.host, "endpoint": hello.endpoint})
            self.log.info("agent registered", host=hello.host, endpoint=hello.endpoint)
        return {"status": REGISTERED, "host": hello.host, "lease_seconds": self.lease_seconds,
                "heartbeat_seconds": self.config.heartbeat_seconds, "revision": self.view.revision}

    async def heartbeat(self, incoming: Incoming) -> dict[str, Any]:
        host = messages.parse_heartbeat(incoming.payload)
        await self._known(host)
        await self._renew(host)
        await self._ready(host)
        return {"lease_seconds": self.lease_seconds}

    async def list_agents(self, incoming: Incoming) -> dict[str, Any]:
        agents = []
        for record in sorted(self.agents.mirrored(), key=lambda r: host_key(r.value["host"])):
            agent = record.value
            lease = self.leases.mirrored_record(record.key)
            renewed = lease.value.get("renewed") if lease is not None else None
            last_heartbeat = max(filter(None, (renewed, agent.get("last_heartbeat"))), default=None)
            agents.append({"host": agent["host"], "endpoint": agent["endpoint"], "status": agent["status"],
                           "registered": agent["registered"], "last_report": agent.get("last_report"),
                           "last_heartbeat": last_heartbeat,
                           "lease_expires": last_heartbeat + self.lease_seconds if last_heartbeat else None,
                           "lost_at": agent.get("lost_at"), "devices": self.view.count(agent["host"])})
        return {"agents": agents}

    async def _known(self, host: str) -> dict[str, Any]:
        key = agent_key(host)
        record = self.agents.mirrored_record(key) or await self.agents.find(key)
        if record is None:
            raise NotFound(f"host {host} never said hello to this conductor: say hello first "
                           f"({subjects.CONDUCTOR_HELLO}, or POST /hello)")
        return record.value

    async def _renew(self, host: str) -> None:
        now = time.time()
        value = orjson.dumps({"host": host, "renewed": now, "lease_seconds": self.lease_seconds})
        await self._lease_kv.put(agent_key(host), value)

    async def _lease_alive(self, key: str) -> bool:
        try:
            await self._lease_kv.get(key)
        except KeyNotFoundError:
            return False
        return True

    async def _ready(self, host: str) -> None:
        """The agent showed life: LOST becomes READY (once, whoever else races), stale clears."""
        def ready(current: dict[str, Any]) -> dict[str, Any]:
            return current if current["status"] == READY else {**current, "status": READY}
        record = self.agents.mirrored_record(agent_key(host))
        if record is None or record.value["status"] != READY:
            change = await self.agents.mutate(agent_key(host), ready)
            if change.before.value["status"] == LOST and change.after.value["status"] == READY:
                await self._recovered(host, "heartbeat")
        await self._clear_stale(host)

    async def _recovered(self, host: str, how: str) -> None:
        await self.events.publish("agent", "recovered", {"host": host, "by": how})
        self.log.info("agent recovered", host=host, by=how)

    async def _clear_stale(self, host: str) -> None:
        stale = [uuid for uuid in self.view.host_uuids(host) if self.view.devices[uuid].stale]
        if stale:
            await self._gather(stale, lambda uuid: self._write_device(uuid, _with_stale(host, False)))

    # -- the sweep -----------------------------------------------------------------------------

    async def _sweep(self) -> None:
        """READY agents whose lease lapsed become LOST; LOST agents' devices are stale; the
        tombstones beyond `removed_kept` are forgotten."""
        judging = time.monotonic() >= self._lenient_until
        records = list(self.agents.mirrored())
        # one direct get per READY agent, WRITERS at once (100 agents' gets: ~45 ms one after
        # another here, ~20 ms so; the sweep's run adds to every detection): listing the bucket's
        # keys would leave a consumer behind each time
        ready = [record.key for record in records if record.value["status"] == READY] if judging else []
        alive = dict(zip(ready, await self._gather(ready, self._lease_alive)))
        for record in records:
            agent = record.value
            if agent["status"] == READY and judging and not alive.get(record.key, True):
                await self._lose(record.key, agent["host"])
            elif agent["status"] == LOST:
                await self._mark_stale(agent["host"])
        await self._trim_tombstones()

    async def _lose(self, key: str, host: str) -> None:
        lease = self.leases.mirrored_record(key)

        async def lost(current: dict[str, Any]) -> dict[str, Any]:
            if current["status"] != READY or await self._lease_alive(key):
                return current
            renewed = lease.value.get("renewed") if lease is not None else None
            return {**current, "status": LOST, "lost_at": time.time(),
                    "last_heartbeat": renewed or current.get("last_heartbeat")}

        change = await self.agents.mutate(key, lost)
        if change.before.value["status"] == READY and change.after.value["status"] == LOST:
            await self.events.publish("agent", "lost", {
                "host": host, "endpoint": change.after.value["endpoint"], "lease_seconds": self.lease_seconds,
                "last_heartbeat": change.after.value.get("last_heartbeat"), "devices": self.view.count(host)})
            self.log.warning("agent lost: its lease lapsed", host=host, lease_seconds=self.lease_seconds)
            await self._mark_stale(host)

    async def _mark_stale(self, host: str) -> None:
        fresh = [uuid for uuid in self.view.host_uuids(host) if not self.view.devices[uuid].stale]
        if fresh:
            await self._gather(fresh, lambda uuid: self._write_device(uuid, _with_stale(host, True)))

    async def _trim_tombstones(self) -> None:
        forget = self.view.oldest_tombstones(self.config.removed_kept)
        if not forget:
            return
        horizon = max(revision for _, revision in forget)
        await self._write_device(HORIZON_KEY, lambda current: None if current and current["revision"] >= horizon
                                 else {"revision": horizon})
        for uuid, revision in forget:
            try:
                await self.devices.delete(uuid, revision)
            except Conflict:
                continue      # written again meanwhile (the device came back): not ours to forget

    # -- reports -------------------------------------------------------------------------------

    async def report(self, incoming: Incoming) -> dict[str, Any]:
        report = messages.parse_report(incoming.payload, self.config.max_devices_per_host)
        await self._known(report.host)
        await self._renew(report.host)
        await self._ready(report.host)
        await self.view.wait_for(self._written, VIEW_WAIT_SECONDS)
        upserts = {device.uuid: device for device in report.upserts}
        mine = set(self.view.host_uuids(report.host))
        removed = set(report.removed) | (mine - set(upserts) if report.full else set())
        # A device another host owns is refused alone: the rest of the report still counts (two
        # hosts' drivers reporting one fixed uuid must not silence a host for good).
        refused = {uuid: self._owner_elsewhere(uuid, report.host) for uuid in set(upserts) | removed}
        refused = {uuid: owner for uuid, owner in refused.items() if owner is not None}
        for uuid in refused:
            upserts.pop(uuid, None)
            removed.discard(uuid)
        if len(mine | set(upserts)) - len(removed) > self.config.max_devices_per_host:
            raise BadRequest(f"host {report.host} would have more than {self.config.max_devices_per_host} "
                             "devices (max_devices_per_host)")
        changes = {uuid: change for uuid, change in _by_device(report.transitions).items() if uuid not in refused}
        for uuid in changes:
            if uuid not in upserts and uuid not in removed and uuid not in mine:
                raise BadRequest(f"a transition names device {uuid}, which host {report.host} does not have")
        touched = set(upserts) | removed | set(changes)
        order = sorted(touched)
        written_per_device = await self._gather(order, lambda uuid: self._apply(
            report, uuid, upserts.get(uuid), uuid in removed, changes.get(uuid, ())))
        # uuid -> the transitions written, in order
        recorded = {uuid: kept for uuid, kept in zip(order, written_per_device) if kept}
        for uuid, owner in sorted(refused.items()):
            self.log.warning("device refused: another host owns it", uuid=uuid, host=report.host, owner=owner)
            await self.events.publish("device", "conflict", {"uuid": uuid, "host": report.host, "owner": owner})
        # the reported transitions in the report's order, then those derived here
        written = {id(change) for kept in recorded.values() for change in kept}
        ordered = [change for change in report.transitions if id(change) in written]
        ordered += [change for uuid in sorted(recorded) for change in recorded[uuid] if change.derived]
        for change in ordered:
            body = {"uuid": change.uuid, "host": report.host, "from": change.before, "to": change.after,
                    "reason": change.reason, "probed_at": change.at}
            if change.derived:
                body["derived"] = True
            await self.events.publish("device", change.after.lower(), body)
        now = time.time()
        await self.agents.mutate(agent_key(report.host), lambda current: {**current, "last_report": now})
        await self.view.wait_for(self._written, VIEW_WAIT_SECONDS)
        answer: dict[str, Any] = {"revision": max(self._written, self.view.revision)}
        if refused:
            answer["refused"] = [{"uuid": uuid, "reason": f"device {uuid} belongs to host {owner}, not {report.host}"}
                                 for uuid, owner in sorted(refused.items())]
        return answer

    def _owner_elsewhere(self, uuid: str, host: str) -> str | None:
        """The host that owns device `uuid`, when that is not `host`."""
        known = self.view.devices.get(uuid)
        if known is not None and host_key(known.host) != host_key(host):
            return known.host
        return None

    async def _apply(self, report: Report, uuid: str, device: hardware.Device | None, remove: bool,
                     changes: Iterable[HealthChange]) -> list[HealthChange]:
        """Write one device's part of a report; the health transitions written, in order."""
        history_limit = self.config.history_per_device
        changes = tuple(changes)
        host = report.host
        kept: list[HealthChange] = []

        def upsert(current: dict[str, Any] | None) -> dict[str, Any] | None:
            live = current is not None and not current.get("removed")
            if live and host_key(current["host"]) != host_key(host):
                raise BadRequest(f"device {uuid} belongs to host {current['host']}, not {host}")
            kept[:] = health_path(uuid, host, current if live else None, device, changes, time.time())
            if remove:
                if not live:
                    return None
                return {"host": host, "device_type": current["entry"]["acc_specs"]["device_type"],
                        "removed": True, "at": time.time()}
            history = (current.get("history", []) if live else []) + [change.to_dict() for change in kept]
            if device is None:      # only transitions for a device the report did not resend
                return {**current, "history": history[-history_limit:]} if live and kept else None
            return {"host": host, "entry": hardware.to_seed_json(device), "stale": False,
                    "history": history[-history_limit:]}

        before, record = await self._write_device(uuid, upsert)
        if record is None:
            return []
        dropped = [change for change in changes if not any(change is mine for mine in kept)]
        if dropped:
            self.log.info("reported health transitions that do not follow the health shown were dropped",
                          uuid=uuid, host=host, dropped=[f"{c.before}->{c.after}" for c in dropped])
        for change in kept:
            if change.derived:
                self.log.warning("device health changed without a transition: one derived", uuid=uuid, host=host,
                                 before=change.before, after=change.after)
        was_live = before is not None and not before.get("removed")
        if remove:
            what = "removed"
        elif not was_live:
            what = "added"
        elif before.get("entry") != record.value.get("entry"):
            what = "changed"
        else:
            return kept             # history or stale only: no device event
        device_type = (device.device_type if device is not None else before["entry"]["acc_specs"]["device_type"])
        await self.events.publish("device", what, {"uuid": uuid, "host": host, "device_type": device_type,
                                                   "revision": record.revision})
        return kept

    async def _write_device(self, uuid: str, change: Change) -> tuple[dict[str, Any] | None, Any]:
        """Compare-and-set one device record: `change(current or None)` gives the new value (None:
        nothing to write). The view's copy is tried first; a conflict re-reads the bucket."""
        known = self.view.record(uuid) if uuid != HORIZON_KEY else None
        fresh = uuid == HORIZON_KEY
        for _ in range(MAX_CAS_ATTEMPTS):
            if fresh:
                record = await self.devices.find(uuid)
                known = (record.value, record.revision) if record is not None else None
            current, revision = known if known is not None else (None, 0)
            new = change(current)
            if new is None or new == current:
                return current, None
            try:
                if revision:
                    written = await self.devices.update(uuid, new, revision)
                else:
                    written = await self.devices.create(uuid, new)
            except Conflict:
                fresh = True
                continue
            self._written = max(self._written, written.revision)
            return current, written
        raise Conflict(f"device {uuid} is changing too fast: gave up after {MAX_CAS_ATTEMPTS} attempts")

    async def _gather(self, items: list[str], work: Callable[[str], Awaitable[Any]]) -> list[Any]:
        """`work(item)` for every item, WRITERS at once; the results in the items' order."""
        slots = asyncio.Semaphore(WRITERS)

        async def one(item: str) -> Any:
            async with slots:
                return await work(item)

        return list(await asyncio.gather(*(one(item) for item in items)))

    # -- the inventory -------------------------------------------------------------------------

    async def hardware(self, incoming: Incoming) -> dict[str, Any]:
        query = messages.parse_hardware_query(incoming.payload)
        await self.view.wait_for(self._written, VIEW_WAIT_SECONDS)       # read your own writes
        if query.since is not None and query.since > self.view.revision:
            await self._catch_up(query.since)
        return self.view.query(query)

    async def _catch_up(self, since: int) -> None:
        """A `since` ahead of this view: another replica's write not here yet, or a revision of
        some other inventory (a bucket since deleted)."""
        info = await self.client.jetstream().stream_info(f"KV_{DEVICES}")
        if since > info.state.last_seq:
            raise Gone(f"since={since} is ahead of this inventory (at revision {info.state.last_seq}): "
                       "re-read the whole inventory (GET /hardware without since)",
                       details={"revision": self.view.revision})
        if not await self.view.wait_for(since, VIEW_WAIT_SECONDS):
            raise Unavailable(f"this conductor has not caught up with revision {since} yet; retry")

    async def _follow(self, loaded: asyncio.Event) -> None:
        async for entry in self._watcher:
            if entry is None:
                loaded.set()
                continue
            value = None if entry.operation in ("DEL", "PURGE") else orjson.loads(entry.value)
            self.view.apply(entry.key, value, entry.revision)

    async def _open_leases(self) -> Records:
        """The lease bucket: entries live `lease_seconds`; a changed lease length is applied."""
        js = self.client.jetstream()
        ttl = self.lease_seconds
        kv = await open_bucket(self.client, KeyValueConfig(     # created, or scaled up to the replicas
            bucket=LEASES, description="Cyborg agents' leases", ttl=ttl, history=1,
            storage=StorageType.FILE, max_value_size=4096, direct=True, replicas=self.context.replicas))
        info = await js.stream_info(f"KV_{LEASES}")
        if info.config.max_age is None or abs(info.config.max_age - ttl) > 1e-3:
            config = info.config
            config.max_age = ttl
            config.duplicate_window = min(ttl, 120.0)
            await js.update_stream(config)
            self.log.info("lease length changed", lease_seconds=ttl)
        self._lease_kv = kv          # leases are put, not compare-and-set: renewing one is idempotent
        return Records(kv, LEASES)


def _with_stale(host: str, stale: bool) -> Change:
    def change(current: dict[str, Any] | None) -> dict[str, Any] | None:
        if current is None or current.get("removed") or host_key(current["host"]) != host_key(host):
            return None
        return None if current.get("stale", False) == stale else {**current, "stale": stale}
    return change


def health_path(uuid: str, host: str, current: dict[str, Any] | None, device: hardware.Device | None,
                changes: Iterable[HealthChange], now: float) -> list[HealthChange]:
    """The health transitions to record for one device of a report, so that every change of the
    health the conductor shows is one transition (an event and a history entry), whatever the
    agent remembered: `current` is the live record (None for a new device, presumed Healthy, as the
    agent's hysteresis presumes), `device` the entry as resent (None when it was not).

    The reported transitions are followed from the health the record's history (else its entry)
    last shows; one that does not start there is dropped: it changes nothing the conductor showed
    (an agent restarted with its health forgotten reports Healthy -> Unhealthy for a device shown
    Unhealthy all along). When the resent entry's health is not where they lead -- an agent that
    forgot a device's state reports it Healthy without a transition -- one transition is derived,
    marked `derived`, at `now`."""
    history = current.get("history", []) if current is not None else []
    shown = current["entry"]["teebus"].get("health", hardware.HEALTHY) if current is not None else hardware.HEALTHY
    state = history[-1].get("to", shown) if history else shown
    kept = []
    for change in changes:
        if change.before == state:
            kept.append(change)
            state = change.after
    if device is not None and device.health != state:
        if device.health == hardware.UNHEALTHY:
            reason = device.health_reason or "reported Unhealthy without a transition"
        else:
            reason = (f"reported {device.health} by host {host} without a transition (its agent's health "
                      "state was lost, as by a restart)")
        kept.append(HealthChange(uuid, state, device.health, reason[:hardware.MAX_REASON], now, derived=True))
    return kept


def _by_device(changes: Iterable[HealthChange]) -> dict[str, list[HealthChange]]:
    grouped: dict[str, list[HealthChange]] = {}
    for change in changes:
        grouped.setdefault(change.uuid, []).append(change)
    return grouped
