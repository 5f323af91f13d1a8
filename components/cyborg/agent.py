"""The Cyborg agent: one per host. It wrangles the host's drivers and keeps the conductor current.

Bus calls (components/cyborg/subjects.py):
- `agent_hello(host)` (internal): the seed's `POST /hello` body `{"status": "READY", "endpoint",
  "type"}` (+ optional `driver`). `endpoint: "bus"` is a built-in driver (named by `driver`); any
  other endpoint is an external driver's `host:port` or URL, polled over HTTP. Registrations live
  in the KV bucket `cyborg_drivers` (key `<host>.<driver id>`), so a restarted agent keeps them.
  -> `{"status": "REGISTERED", "driver": <id>}`.
- `agent_discovery(host)` (internal): -> `{"status": "IN-PROGRESS"}`, starting a rediscovery round
  now (one asked for while one runs follows it, once).
- `agent_hardware(host)`: -> `{"hardware": [entry...], "drivers": [{"driver", "endpoint", "type",
  "status": "READY"|"SILENT", "last_seen", "problem"}], "discovered_at", "in_progress"}`: every
  driver's devices after health hysteresis, as of the last complete round.

A rediscovery round (at start, every `rediscover_seconds`, and on request): every driver's
discovery is triggered at once, its hardware polled until it is no longer `in_progress` (at most
`discovery_timeout_seconds`), and read. Every call to a driver is bounded by
`driver_timeout_seconds`. A driver that does not answer, or answers what cannot be used, is marked
SILENT (an event `events.cyborg.driver.silent`), and its devices are kept as in its last good
answer, neither probed nor aged, until it answers again (`events.cyborg.driver.ready`): a silent
driver makes no device Unhealthy and none recover. The devices are merged (one uuid from two
drivers is one device: the entry of the richer driver, nvidia over pci, is reported; its health is
one probe, clean only if both are), health hysteresis is applied (health.py: Unhealthy at once,
Healthy after `healthy_after` clean probes; a device no driver finds any more is Unhealthy, then
removed after `forget_after` rounds), and the difference from what the conductor last accepted is
reported: `CONDUCTOR_REPORT` `{"host", "full", "added": [entry], "changed": [entry], "removed":
[uuid], "transitions": [{"uuid", "from", "to", "reason", "at"}]}` (`at` in seconds since the epoch). A round with
no difference sends nothing. `full` is true on the first report after start, after a failed
report, and after the conductor said it does not know this host.

The conductor: the agent says hello at start (`CONDUCTOR_HELLO`, the seed's body plus `host`),
retrying every few seconds while no conductor answers, then renews its lease with a heartbeat every
`heartbeat_seconds`; a heartbeat answered 404 (the conductor forgot us) means hello again and a
full report.

Health and the drivers' last answers live in memory, so the agent takes what a restart lost from
the conductor's view of its host (`CONDUCTOR_HARDWARE` for this host, over the bus), once per
start: before its first round, or, when no conductor answered then, at its hello, before its first
report (nothing is reported before). A device the conductor shows Unhealthy is held Unhealthy here
(its reason kept, no transition) and recovers only after `healthy_after` clean probes from the
restart, with one transition; transitions noted since the start that the view makes moot
(Healthy -> Unhealthy of a device it shows Unhealthy) are dropped. A driver that has not answered
since the start has its devices held as the conductor shows them, as a silent driver's are held
as it last answered: a driver slower to start than the agent loses no device (nor its history) to
the first, full, report. If the view cannot be read even at the hello, devices start Healthy, and
the conductor, which records every health change of an entry (a derived transition when none
came), keeps the history whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

from bus.component import Component, Endpoint, Incoming
from bus.errors import BadRequest, BusError, Conflict, NotFound, TooLarge
from bus.records import Records
from components.cyborg import subjects
from components.cyborg.agent_messages import BUS, READY, SILENT, Hello, HardwareAnswer, parse_hardware, parse_hello
from components.cyborg.config import CyborgConfig
from components.cyborg.driver import iso
from components.cyborg.external_driver import ExternalDriverError, ExternalDrivers
from components.cyborg.hardware import HEALTHY, UNHEALTHY, Device, from_seed_json, to_seed_json
from components.cyborg.health import VANISHED, HealthBook, HealthPolicy, Transition, failure_of

BUCKET = "cyborg_drivers"
AGENT_SITE = "cyborg-agent"
MAX_DRIVERS = 64                    # registrations per host
TRANSITIONS_PER_DEVICE = 4          # kept for the conductor while it cannot be reached (its bound too)
UNREGISTERED_RETRY_SECONDS = 2.0    # hello again this often while no conductor answers
_RANK = {"pci": 0, "nvidia": 2}     # which entry of a device two drivers report wins: the higher
_KEY_TOKEN = re.compile(r"[-_=a-zA-Z0-9]{1,128}\Z")
_CONDUCTORS_OWN = ("stale", "revision", "history")    # what the conductor adds to an entry's teebus part


@dataclass
class DriverState:
    hello: Hello
    status: str = READY
    last_seen: float | None = None
    devices: list[Device] = field(default_factory=list)     # as in its last good answer
    answered: bool = False
    problem: str | None = None

    def describe(self) -> dict[str, Any]:
        return {**self.hello.to_dict(), "status": self.status,
                "last_seen": iso(self.last_seen) if self.last_seen is not None else None,
                "problem": self.problem}


def _report_order(device: Device) -> tuple:
    return (device.address is None, device.address or "", device.driver, device.uuid)


def key_token(host: str) -> str:
    """The host as a KV key token (a digest for names KV keys cannot hold)."""
    token = subjects.host_token(host)
    return token if _KEY_TOKEN.match(token) else "h-" + hashlib.sha256(host.lower().encode()).hexdigest()[:32]


def transition_json(change: Transition) -> dict[str, Any]:
    return {"uuid": change.uuid, "from": change.before, "to": change.after, "reason": change.reason,
            "at": change.at}


class Agent(Component):
    system = subjects.SYSTEM
    name = "agent"
    description = "Cyborg agent: the host's drivers, rediscovery, health and reports to the conductor"
    config: CyborgConfig

    @property
    def host(self) -> str:
        return self.config.host

    async def setup(self) -> None:
        self.registry: Records = await self.open_records(BUCKET, description="Cyborg driver registrations",
                                                         max_value_size=4096)
        self.drivers: dict[str, DriverState] = {name: DriverState(Hello(name, BUS, name.upper(), None))
                                                for name in self.config.drivers}
        await self._load_registrations()
        self.http = ExternalDrivers(self.config.driver_timeout_seconds)
        self.book = HealthBook(HealthPolicy(recover_after=self.config.healthy_after,
                                            forget_after=self.config.forget_after))
        self._last: dict[str, Device] = {}          # every device reported, as last found
        self._missing: dict[str, int] = {}          # rounds a device has been missing from
        self.current: list[Device] | None = None    # the last complete round's devices (None before one)
        self.discovered_at: float | None = None
        self._reported: dict[str, Any] = {}         # uuid -> entry, as the conductor last accepted
        self._transitions: list[dict[str, Any]] = []
        self._full = True
        self.registered = False
        self.lease: dict[str, Any] = {}
        self._report_lock = asyncio.Lock()
        self._round: asyncio.Task | None = None
        self._round_wanted = False
        self._lease_wake = asyncio.Event()
        self._seeded = False                        # the book holds the conductor's view of this host
        self._seeds: dict[str, str] = {}            # uuid -> failure: Unhealthy there, not probed here yet
        self._seed_lock = asyncio.Lock()
        self.request_round()
        self.spawn(self._keep_lease_loop(), "conductor lease", wait=False)
        self.every(self.config.rediscover_seconds, self._periodic, "rediscovery")

    async def teardown(self) -> None:
        await self.http.close()

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("hello", subjects.agent_hello(self.host), self.hello),
                Endpoint("discovery", subjects.agent_discovery(self.host), self.discovery, inline=True),
                Endpoint("hardware", subjects.agent_hardware(self.host), self.hardware, inline=True)]

    # -- endpoints -------------------------------------------------------------------------------------

    async def hello(self, incoming: Incoming) -> dict[str, Any]:
        hello = parse_hello(incoming.payload)
        known = self.drivers.get(hello.driver)
        if known is None and len(self.drivers) >= MAX_DRIVERS:
            raise TooLarge(f"host {self.host} has {len(self.drivers)} drivers, the most an agent takes")
        if known is not None and known.hello.builtin != hello.builtin:
            raise Conflict(f"driver {hello.driver} is registered as "
                           f"{'a built-in' if known.hello.builtin else 'an external'} driver; choose another name")
        await self._store(hello)
        if known is None:
            self.drivers[hello.driver] = DriverState(hello)
        else:
            known.hello = hello
        self.log.info("driver registered", driver=hello.driver, endpoint=hello.endpoint, type=hello.type)
        await self.events.publish("driver", "registered", {"host": self.host, **hello.to_dict()})
        if known is None or known.status == SILENT or not known.answered:
            self.request_round()          # a new driver's devices (or one back) are wanted now
        return {"status": "REGISTERED", "driver": hello.driver}

    async def discovery(self, incoming: Incoming) -> dict[str, Any]:
        if incoming.payload not in (None, {}):
            raise BadRequest("discovery takes an empty body or {}")
        self.request_round()
        return {"status": "IN-PROGRESS"}

    async def hardware(self, incoming: Incoming) -> dict[str, Any]:
        return {"hardware": [to_seed_json(device) for device in self.current or []],
                "drivers": [state.describe() for state in self.drivers.values()],
                "discovered_at": iso(self.discovered_at) if self.discovered_at is not None else None,
                "in_progress": self.in_progress}

    # -- registrations ---------------------------------------------------------------------------------

    def _key(self, driver: str) -> str:
        return f"{key_token(self.host)}.{driver}"

    async def _load_registrations(self) -> None:
        prefix = self._key("")
        for key in await self.registry.keys():
            if not key.startswith(prefix):
                continue
            record = await self.registry.find(key)
            if record is None:
                continue
            try:
                hello = Hello.from_dict(record.value)
            except (BusError, KeyError, TypeError) as exc:
                self.log.warning("stored driver registration ignored", key=key, error=str(exc))
                continue
            state = self.drivers.setdefault(hello.driver, DriverState(hello))
            state.hello = hello

    async def _store(self, hello: Hello) -> None:
        key, value = self._key(hello.driver), hello.to_dict()
        for _ in range(4):
            existing = await self.registry.find(key)
            try:
                if existing is None:
                    await self.registry.create(key, value)
                elif existing.value != value:
                    await self.registry.update(key, value, existing.revision)
                return
            except Conflict:
                continue
        raise Conflict(f"the registration of driver {hello.driver} is changing too fast; say hello again")

    # -- rediscovery -----------------------------------------------------------------------------------

    @property
    def in_progress(self) -> bool:
        return self._round is not None and not self._round.done()

    def request_round(self) -> None:
        """Start a rediscovery round now; one asked for while one runs follows it (once)."""
        self._round_wanted = True
        if not self.in_progress:
            self._round = self.spawn(self._rounds(), "rediscovery round")

    async def _periodic(self) -> None:
        self.request_round()

    async def _rounds(self) -> None:
        while self._round_wanted:
            self._round_wanted = False
            try:
                if self.current is None and not self._seeded:
                    await self.seed_health(registered=False)
                await self.rediscover()
            except Exception:
                self.log.exception("rediscovery round failed")

    async def rediscover(self) -> None:
        """One round: every driver discovers, the answers are merged, settled and reported."""
        states = list(self.drivers.values())
        answers = await asyncio.gather(*(self._ask(state) for state in states))
        now = time.time()
        for state, answer in zip(states, answers):
            await self._note(state, answer, now)
        live = [device for state, answer in zip(states, answers) if isinstance(answer, HardwareAnswer)
                for device in answer.devices]
        held = [device for state, answer in zip(states, answers) if not isinstance(answer, HardwareAnswer)
                for device in state.devices]
        devices, changes = self._settle(live, held, now)
        self.current, self.discovered_at = devices, now
        keep = TRANSITIONS_PER_DEVICE * self.config.max_devices_per_host
        self._transitions = (self._transitions + [transition_json(c) for c in changes])[-keep:]
        for change in changes:
            self.log.info("device health changed", uuid=change.uuid, before=change.before, after=change.after,
                          reason=change.reason)
        await self.send_report()

    async def _ask(self, state: DriverState) -> HardwareAnswer | str:
        """Trigger the driver's discovery, wait (bounded) until it completes, read its hardware: the
        answer, or why there is none. Never raises, never waits past the bounds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.discovery_timeout_seconds
        try:
            await self._call(state, discovery=True)
            delay = 0.02
            while True:
                answer = await self._call(state, discovery=False)
                if not answer.in_progress or loop.time() >= deadline:
                    return answer
                await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
                delay = min(delay * 2, 0.5)
        except (BusError, ExternalDriverError) as exc:
            return getattr(exc, "message", None) or str(exc)
        except ValueError as exc:
            return f"the driver answered hardware the agent cannot use: {exc}"

    async def _call(self, state: DriverState, *, discovery: bool) -> HardwareAnswer:
        hello = state.hello
        timeout = self.config.driver_timeout_seconds
        if hello.builtin:
            subject = (subjects.driver_discovery if discovery else subjects.driver_hardware)(self.host, hello.driver)
            reply = (await self.requester.request(subject, {}, timeout=timeout)).payload
        else:
            reply = await (self.http.discovery(hello.url) if discovery else self.http.hardware(hello.url))
        if discovery:
            return HardwareAnswer([], True, None, None)
        return parse_hardware(reply, host=self.host, driver=hello.driver)

    async def _note(self, state: DriverState, answer: HardwareAnswer | str, now: float) -> None:
        """Record what the driver said (or that it said nothing); events when it falls silent or comes back."""
        name = state.hello.driver
        if isinstance(answer, HardwareAnswer):
            back = state.status == SILENT
            state.status, state.last_seen, state.answered = READY, now, True
            state.devices, state.problem = answer.devices, answer.problem
            if back:
                self.log.info("driver answers again", driver=name)
                await self.events.publish("driver", "ready", {"host": self.host, "driver": name})
            return
        state.problem = answer[:512]
        if state.status != SILENT:
            state.status = SILENT
            self.log.warning("driver is silent", driver=name, reason=state.problem)
            await self.events.publish("driver", "silent", {"host": self.host, "driver": name,
                                                            "reason": state.problem})

    def _seed_once(self, uuid: str) -> None:
        """A device the conductor showed Unhealthy starts so in the book (see `_seeds`), once."""
        if uuid in self._seeds and uuid not in self.book:
            self.book.seed(uuid, self._seeds[uuid])

    def _settle(self, live: list[Device], held: list[Device], now: float) -> tuple[list[Device], list[Transition]]:
        """Merge and apply hysteresis: live devices are probed; a silent driver's `held` devices are
        reported as they were, unprobed; a device neither finds fails its probe until forgotten."""
        probes: dict[str, list[Device]] = {}
        for device in sorted(live, key=lambda d: _RANK.get(d.driver, 1)):   # the preferred entry last
            probes.setdefault(device.uuid, []).append(device)
        changes: list[Transition] = []
        report: dict[str, Device] = {}
        for uuid, found in probes.items():
            self._seed_once(uuid)
            reasons = [device.health_reason for device in found if device.health != HEALTHY]
            change = self.book.observe(uuid, not reasons, "; ".join(reasons), now)
            if change is not None:
                changes.append(change)
            self._last[uuid] = found[-1]
            self._missing.pop(uuid, None)
            report[uuid] = self._smoothed(found[-1])
        for device in held:
            if device.uuid not in report:
                self._seed_once(device.uuid)
                self._last[device.uuid] = device
                self._missing.pop(device.uuid, None)
                report[device.uuid] = self._smoothed(device)
        for uuid in [uuid for uuid in self._last if uuid not in report]:
            missed = self._missing.get(uuid, 0) + 1
            if missed > self.book.policy.forget_after:
                self.book.forget(uuid)
                del self._last[uuid]
                self._missing.pop(uuid, None)
                continue
            self._missing[uuid] = missed
            change = self.book.observe(uuid, False, VANISHED, now)
            if change is not None:
                changes.append(change)
            report[uuid] = self._smoothed(self._last[uuid])
        self._seeds.clear()         # a device the conductor had and this round did not find is gone
        devices = sorted(report.values(), key=_report_order)
        if len(devices) > self.config.max_devices_per_host:
            self.log.warning("more devices than max_devices_per_host: the rest are not reported",
                             devices=len(devices), limit=self.config.max_devices_per_host)
            devices = devices[:self.config.max_devices_per_host]
        return devices, changes

    def _smoothed(self, device: Device) -> Device:
        state = self.book.state(device.uuid)
        return replace(device, health=state.health, health_reason=state.describe(self.book.policy))

    def history(self, uuid: str) -> tuple[Transition, ...]:
        """The device's last health transitions, oldest first."""
        return self.book.history(uuid)

    # -- the conductor ---------------------------------------------------------------------------------

    async def seed_health(self, *, registered: bool) -> None:
        """Seed the health book from the conductor's view of this host, once per start (see the
        module's docstring). Before the first round a conductor that does not answer is asked again
        at the hello (`registered`); at the hello, one that does not answer leaves every device
        Healthy here, with a warning."""
        async with self._seed_lock:
            if self._seeded:
                return
            shown = await self._conductor_view(quiet=not registered)
            if shown is None and not registered:
                return
            self._seeded = True
            if shown is None:
                self.log.warning("the conductor's view of this host could not be read: its devices start Healthy "
                                 "here (the conductor derives a transition for any health this changes)")
                return
            self._adopt(shown)

    async def _conductor_view(self, *, quiet: bool) -> list[Device] | None:
        """This host's devices as the conductor shows them (health after hysteresis); None if unread."""
        try:
            reply = await self.requester.request(subjects.CONDUCTOR_HARDWARE, {"host": self.host},
                                                 timeout=max(self.config.driver_timeout_seconds, 1.0))
        except BusError as exc:
            (self.log.debug if quiet else self.log.warning)("the conductor's view of this host is unread",
                                                            error=exc.message)
            return None
        entries = reply.payload.get("hardware") if isinstance(reply.payload, dict) else None
        if not isinstance(entries, list):
            self.log.warning("the conductor's view of this host is not a hardware document")
            return None
        shown = []
        for index, entry in enumerate(entries[:self.config.max_devices_per_host]):
            try:
                teebus = {key: value for key, value in entry["teebus"].items() if key not in _CONDUCTORS_OWN}
                shown.append(from_seed_json({**entry, "teebus": teebus}, host=self.host, where=f"hardware[{index}]"))
            except (KeyError, TypeError, AttributeError, ValueError) as exc:
                self.log.warning("an entry of the conductor's view of this host is ignored", error=str(exc)[:200])
        return shown

    def _adopt(self, shown: list[Device]) -> None:
        """Take the conductor's view of this host, as the memory a restart lost.

        A driver that has not answered since the start has its devices held as the conductor shows
        them (as a silent driver's are held as it last answered), so a report does not remove a
        slow driver's devices. A device the conductor shows Unhealthy is held Unhealthy: when it is
        first probed or held, if that is before this view is adopted or in the round adopting it;
        at once if it was probed since the start and held Healthy here (its recovery starts over,
        its noted transitions are moot); as it is if held Unhealthy here, without the Healthy ->
        Unhealthy transition the conductor never saw."""
        failures = {device.uuid: failure_of(device.health_reason) for device in shown if device.health == UNHEALTHY}
        held = []
        for device in shown:
            state = self.drivers.get(device.driver)
            if state is not None and not state.answered and device.uuid not in {d.uuid for d in state.devices}:
                state.devices.append(device)
                held.append(device)
        adopted = []
        for uuid, reason in failures.items():
            if uuid not in self.book:
                if self.current is None:
                    self._seeds[uuid] = reason
                elif any(device.uuid == uuid for device in held):
                    self.book.seed(uuid, reason)
                continue
            if self.book.seed(uuid, reason):
                self._transitions = [t for t in self._transitions if t["uuid"] != uuid]
            else:
                first = next((i for i, t in enumerate(self._transitions) if t["uuid"] == uuid), None)
                if first is not None and self._transitions[first]["from"] == HEALTHY:
                    del self._transitions[first]
            adopted.append(uuid)
        if self.current is not None and (adopted or held):
            present = {device.uuid for device in self.current}
            for device in held:
                if device.uuid not in present:
                    self._last[device.uuid] = device
                    self._missing.pop(device.uuid, None)
                    self.current.append(device)
            self.current = sorted((self._smoothed(device) for device in self.current), key=_report_order)
        if shown:
            self.log.info("the conductor's view of this host taken", devices=len(shown), unhealthy=len(failures),
                          held=len(held))

    async def send_report(self) -> None:
        """Send the conductor what changed since it last accepted a report (everything when `full`)."""
        async with self._report_lock:
            if not self.registered or self.current is None or not self._seeded:
                return
            entries = {device.uuid: to_seed_json(device) for device in self.current}
            full = self._full
            if full:
                added, changed, removed = list(entries.values()), [], []
            else:
                added = [entry for uuid, entry in entries.items() if uuid not in self._reported]
                changed = [entry for uuid, entry in entries.items()
                           if uuid in self._reported and self._reported[uuid] != entry]
                removed = [uuid for uuid in self._reported if uuid not in entries]
            transitions = list(self._transitions)
            if not (full or added or changed or removed or transitions):
                return
            body = {"host": self.host, "full": full, "added": added, "changed": changed, "removed": removed,
                    "transitions": transitions}
            try:
                await self.requester.request(subjects.CONDUCTOR_REPORT, body,
                                             timeout=max(self.config.driver_timeout_seconds, 5.0))
            except NotFound:
                self.log.warning("the conductor does not know this host: saying hello again")
                self.registered, self._full = False, True
                self._lease_wake.set()
                return
            except BusError as exc:
                self.log.warning("report to the conductor failed; the next one is full", error=exc.message)
                self._full = True
                return
            self._reported, self._full = entries, False
            del self._transitions[:len(transitions)]
            self.log.info("reported to the conductor", full=full, added=len(added), changed=len(changed),
                          removed=len(removed), transitions=len(transitions))

    async def _keep_lease_loop(self) -> None:
        while True:
            try:
                await self.keep_lease()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("keeping the conductor lease failed")
            interval = self.config.heartbeat_seconds
            if not self.registered:
                interval = min(interval, UNREGISTERED_RETRY_SECONDS)
            self._lease_wake.clear()
            try:
                await asyncio.wait_for(self._lease_wake.wait(), interval)
            except asyncio.TimeoutError:
                pass

    async def keep_lease(self) -> None:
        """Hello when not registered (then a full report), else a heartbeat."""
        timeout = max(self.config.driver_timeout_seconds, 5.0)
        if self.registered:
            try:
                reply = await self.requester.request(subjects.CONDUCTOR_HEARTBEAT, {"host": self.host},
                                                     timeout=timeout)
                self.lease = {**self.lease, **(reply.payload if isinstance(reply.payload, dict) else {})}
                return
            except NotFound:
                self.log.warning("the conductor does not know this host: saying hello again")
                self.registered, self._full = False, True
            except BusError as exc:
                self.log.warning("heartbeat failed", error=exc.message)
                return
        port = self.context.ports.get(AGENT_SITE, 6667)
        body = {"status": READY, "endpoint": f"{self.host}:{port}", "host": self.host}
        try:
            reply = await self.requester.request(subjects.CONDUCTOR_HELLO, body, timeout=timeout)
        except BusError as exc:
            self.log.debug("no conductor yet; saying hello again later", error=exc.message)
            return
        self.lease = reply.payload if isinstance(reply.payload, dict) else {}
        await self.seed_health(registered=True)        # before the first report, which sends health
        self.registered, self._full = True, True
        self.log.info("registered with the conductor", lease=self.lease)
        await self.send_report()
