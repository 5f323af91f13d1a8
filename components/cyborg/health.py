"""Health hysteresis: a device that fails one probe is Unhealthy at once, and comes back by itself
after `recover_after` consecutive clean probes (3 by default) -- no restart needed, which is the
most common complaint about device plugins (FACTS.md, Cyborg), and no flapping back to Healthy
on one lucky probe.

Pure and deterministic: no clock and no I/O; the caller passes `now` (seconds) with each probe.
`step` is the rule for one device; `HealthBook` keeps it for a host's devices, treats a device
that discovery stops finding as failing its probe (a vanished device is noticed, not dropped),
and forgets it after `forget_after` rounds missing. Each change of state is a `Transition`,
returned for events and kept in a per-device history of the last `history` transitions.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Iterable

from components.cyborg.hardware import HEALTHY, MAX_REASON, UNHEALTHY, Device

VANISHED = "not found by the last discovery"


@dataclass(frozen=True)
class HealthPolicy:
    recover_after: int = 3     # consecutive clean probes that make an Unhealthy device Healthy
    history: int = 16          # transitions kept per device
    forget_after: int = 10     # discoveries a device may be missing from before it is forgotten

    def __post_init__(self) -> None:
        if not 1 <= self.recover_after <= 1000:
            raise ValueError(f"recover_after must be from 1 to 1000, not {self.recover_after}")
        if not 1 <= self.history <= 1000:
            raise ValueError(f"history must be from 1 to 1000, not {self.history}")
        if not 1 <= self.forget_after <= 100_000:
            raise ValueError(f"forget_after must be from 1 to 100000, not {self.forget_after}")


@dataclass(frozen=True)
class Transition:
    """A device's health changed at `at`: from `before` to `after`, for `reason`."""

    uuid: str
    at: float
    before: str
    after: str
    reason: str


@dataclass(frozen=True)
class DeviceHealth:
    """One device's hysteresis state. A device is presumed Healthy until a probe fails."""

    health: str = HEALTHY
    reason: str = ""                          # the last failure's reason, while Unhealthy
    clean: int = 0                            # consecutive clean probes since that failure
    history: tuple[Transition, ...] = ()      # the last transitions, oldest first

    def describe(self, policy: HealthPolicy) -> str:
        """The health_reason to report: the failure, and how far recovery has come."""
        if self.health == HEALTHY:
            return ""
        if self.clean == 0:
            return self.reason
        return f"recovering ({self.clean} of {policy.recover_after} clean probes) after: {self.reason}"


_RECOVERING = re.compile(r"recovering \(\d+ of \d+ clean probes\) after: (.*)\Z", re.DOTALL)


def failure_of(health_reason: str) -> str:
    """The failure a reported health_reason names: `DeviceHealth.describe` undone."""
    recovering = _RECOVERING.match(health_reason)
    return recovering.group(1) if recovering else health_reason


def step(state: DeviceHealth, uuid: str, ok: bool, reason: str, now: float,
         policy: HealthPolicy = HealthPolicy()) -> tuple[DeviceHealth, Transition | None]:
    """The state after one probe (`ok`, or failed for `reason`) at `now`, and the transition it
    made, if any. A failure while Unhealthy restarts the count of clean probes."""
    if not isinstance(now, (int, float)) or not math.isfinite(now):
        raise ValueError(f"now must be a finite number of seconds, not {now!r}")
    if not ok:
        reason = (reason or "the probe failed")[:MAX_REASON]
        if state.health == HEALTHY:
            change = Transition(uuid, float(now), HEALTHY, UNHEALTHY, reason)
            return DeviceHealth(UNHEALTHY, reason, 0, _keep(state.history, change, policy)), change
        return replace(state, reason=reason, clean=0), None
    if state.health == HEALTHY:
        return state, None
    clean = state.clean + 1
    if clean < policy.recover_after:
        return replace(state, clean=clean), None
    why = f"{clean} consecutive clean probes after: {state.reason}"[:MAX_REASON]
    change = Transition(uuid, float(now), UNHEALTHY, HEALTHY, why)
    return DeviceHealth(HEALTHY, "", 0, _keep(state.history, change, policy)), change


def _keep(history: tuple[Transition, ...], change: Transition, policy: HealthPolicy) -> tuple[Transition, ...]:
    return (history + (change,))[-policy.history:]


class HealthBook:
    """The hysteresis of one host's devices, fed one discovery at a time. Holds at most the
    devices seen in the last `forget_after` discoveries."""

    def __init__(self, policy: HealthPolicy = HealthPolicy()) -> None:
        self.policy = policy
        self._states: dict[str, DeviceHealth] = {}
        self._last: dict[str, Device] = {}      # as last discovered, to keep reporting it while missing
        self._missing: dict[str, int] = {}

    def observe(self, uuid: str, ok: bool, reason: str, now: float) -> Transition | None:
        """One probe of one device; its transition, if it made one."""
        state, change = step(self._states.get(uuid, DeviceHealth()), uuid, ok, reason, now, self.policy)
        self._states[uuid] = state
        return change

    def settle(self, devices: Iterable[Device], now: float) -> tuple[list[Device], list[Transition]]:
        """Feed one discovery: every device's probe (its `health`), and a failed probe for each
        device known before and missing now. Returns the devices to report -- those found, then
        the missing ones not yet forgotten, with health and reason after hysteresis -- and the
        transitions made. Reports sharing a uuid (one GPU from two drivers) count as one probe,
        clean only if all are."""
        found = list(devices)
        probes: dict[str, list[str]] = {}
        for device in found:
            reasons = probes.setdefault(device.uuid, [])
            if device.health != HEALTHY:
                reasons.append(device.health_reason)
            self._last[device.uuid] = device
            self._missing.pop(device.uuid, None)
        changes = [change for uuid, reasons in probes.items()
                   if (change := self.observe(uuid, not reasons, "; ".join(reasons), now)) is not None]
        report = [self._smoothed(device) for device in found]
        for uuid in [uuid for uuid in self._states if uuid not in probes]:
            missed = self._missing.get(uuid, 0) + 1
            if missed > self.policy.forget_after:
                self.forget(uuid)
                continue
            self._missing[uuid] = missed
            change = self.observe(uuid, False, VANISHED, now)
            if change is not None:
                changes.append(change)
            if uuid in self._last:
                report.append(self._smoothed(self._last[uuid]))
        return report, changes

    def seed(self, uuid: str, reason: str) -> bool:
        """Hold the device Unhealthy for `reason`, as known before this book was (the conductor's
        view of a device before an agent's restart, say): no transition, and its recovery takes
        `recover_after` clean probes from here. A device the book already holds Unhealthy is left
        as it is (its own probes are fresher): False."""
        state = self.state(uuid)
        if state.health != HEALTHY:
            return False
        self._states[uuid] = DeviceHealth(UNHEALTHY, (reason or "Unhealthy before a restart")[:MAX_REASON], 0,
                                          state.history)
        return True

    def __contains__(self, uuid: object) -> bool:
        """Whether the book has probed (or been seeded with) the device."""
        return uuid in self._states

    def state(self, uuid: str) -> DeviceHealth:
        """The device's state (a fresh Healthy one for a device never probed)."""
        return self._states.get(uuid, DeviceHealth())

    def history(self, uuid: str) -> tuple[Transition, ...]:
        """The device's last transitions, oldest first."""
        return self.state(uuid).history

    def forget(self, uuid: str) -> None:
        """Drop everything known about the device (removed hardware, say)."""
        self._states.pop(uuid, None)
        self._last.pop(uuid, None)
        self._missing.pop(uuid, None)

    def __len__(self) -> int:
        return len(self._states)

    def _smoothed(self, device: Device) -> Device:
        state = self.state(device.uuid)
        return replace(device, health=state.health, health_reason=state.describe(self.policy))
