"""Least privilege for Cyborg's internal subjects, with real connections to a real nats-server: the
seed's registration and discovery calls (components/cyborg/subjects.py) are refused on the bus to
the `adapter` role and to another system's role, an `observer` may not even listen there, and
only Cyborg's components (and the `gateway`, behind the internal credential) reach them.

Each case starts the real component that serves the subject, so "refused" is checked where it
matters: the server reports a permissions violation naming the subject, and the component's
endpoint never served the request; "allowed" is the component's own answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bus.errors import BusError
from bus.requester import Requester
from components.cyborg import subjects
from components.cyborg.agent import Agent
from components.cyborg.conductor import Conductor
from components.cyborg.config import CyborgConfig
from components.cyborg.driver import PciDriver
from tests.conftest import eventually

HOST = "compute-roles"
REFUSED_ROLES = ("adapter", "enarx")          # the external face, and another system's components
ALLOWED_ROLES = ("cyborg", "gateway")         # Cyborg's components; the internal HTTP routes' role
# subject, the component serving it, its endpoint's name, a body it answers (a 200 or its own 400)
INTERNAL = [
    (subjects.CONDUCTOR_HELLO, Conductor, "hello", {}),
    (subjects.CONDUCTOR_HEARTBEAT, Conductor, "heartbeat", {}),
    (subjects.CONDUCTOR_REPORT, Conductor, "report", {}),
    (subjects.agent_hello(HOST), Agent, "hello", {}),
    (subjects.agent_discovery(HOST), Agent, "discovery", {}),
    (subjects.driver_discovery(HOST, "pci"), PciDriver, "discovery", {}),
]


def config_for(tmp_path: Path) -> CyborgConfig:
    # an agent with no drivers, nothing on a timer soon: only this test's requests reach the endpoints
    return CyborgConfig(host=HOST, drivers=(), sysfs_root=str(tmp_path / "sys"), heartbeat_seconds=30.0,
                        rediscover_seconds=3600.0)


async def _connect(connect_as, role: str) -> tuple[Any, list[str]]:
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc).lower())

    return await connect_as(role, error_cb=on_error), violations


def test_the_cases_are_cyborgs_internal_subjects():
    for subject, *_ in INTERNAL:
        assert subject.startswith(f"{subjects.SYSTEM}.") and subject.split(".")[2] == "internal", subject
    assert {subject for subject, *_ in INTERNAL} >= {
        "cyborg.conductor.internal.hello", f"cyborg.agent.internal.{HOST}.hello",
        f"cyborg.driver.internal.{HOST}.pci.discovery"}


@pytest.mark.parametrize("subject,component,endpoint,body", INTERNAL, ids=[case[0] for case in INTERNAL])
async def test_cyborgs_internal_subject_is_its_components_alone(tmp_path, start_component, connect_as,
                                                               subject, component, endpoint, body):
    (tmp_path / "sys").mkdir()
    served = await start_component(component, config=config_for(tmp_path))

    def count() -> int:
        counters = served.stats().get(endpoint)
        return counters.served if counters is not None else 0

    before = count()
    for role in REFUSED_ROLES:
        client, violations = await _connect(connect_as, role)
        with pytest.raises(BusError) as refused:
            await Requester(client, timeout=0.5).request(subject, body)
        assert refused.value.status in (503, 504), (role, refused.value.status, refused.value.message)
        await eventually(lambda: any("permissions violation" in v and subject.lower() in v for v in violations))
        assert count() == before, f"{role}'s request reached {component.__name__}.{endpoint}"

    # an observer (teebus bus sub, status) may not listen there either
    client, violations = await _connect(connect_as, "observer")
    await client.subscribe(subject)
    await client.flush()
    await eventually(lambda: any("permissions violation for subscription" in v and subject.lower() in v
                                 for v in violations))

    # Cyborg's components (and the gateway) reach it: the component answers, be it with its own 400
    for role in ALLOWED_ROLES:
        client, violations = await _connect(connect_as, role)
        answered = count()
        try:
            await Requester(client, timeout=5).request(subject, body)
        except BusError as exc:
            assert exc.status == 400, (role, exc.status, exc.message)
        assert count() == answered + 1, role
        assert not any(subject.lower() in v for v in violations), (role, violations)


@pytest.mark.parametrize("pattern", ["cyborg.*.internal.>", f"cyborg.agent.internal.{HOST}.*",
                                     f"cyborg.driver.internal.{HOST}.>"])
async def test_an_observer_cannot_subscribe_to_cyborgs_internal_subjects_by_wildcard(connect_as, pattern):
    client, violations = await _connect(connect_as, "observer")
    await client.subscribe(pattern)
    await client.flush()
    await eventually(lambda: any("permissions violation for subscription" in v and pattern.lower() in v
                                 for v in violations))


async def test_an_observer_watching_all_of_cyborg_sees_no_internal_message(connect_as):
    """`cyborg.>` is an observer's to watch (`teebus bus sub`), but the server delivers none of the
    internal subjects' messages on it."""
    observer, _ = await _connect(connect_as, "observer")
    seen: list[str] = []

    async def keep(msg) -> None:
        seen.append(msg.subject)

    await observer.subscribe("cyborg.>", cb=keep)
    await observer.flush()
    component = await connect_as("cyborg")
    for subject, *_ in INTERNAL:
        await component.publish(subject, b"{}")
    await component.publish(subjects.CONDUCTOR_HARDWARE, b"{}")        # external: an observer may see it
    await component.flush()
    await eventually(lambda: subjects.CONDUCTOR_HARDWARE in seen)
    await observer.flush()
    assert seen == [subjects.CONDUCTOR_HARDWARE]
