"""Nodes for tests and benchmarks: components and adapters of chosen systems, through the same
launcher path as `teebus run`, on a bus from `bus.testing.running_bus`.

    async with running_bus(tmp_path, catalog.systems) as bus:
        async with node(bus, ["<system>.<component>", "http.<system>"], catalog) as running:
            url = running.http.bound["<system>-<site>"]
"""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

from bus.server import free_port
from bus.testing import TestBus
from teebus.catalog import Catalog
from teebus.launcher import Node, default_catalog
from teebus.settings import Settings, build, layered


def free_ports(catalog: Catalog) -> dict[str, int]:
    """A free port for every site, so tests never meet a `teebus up` running on the defaults."""
    return {site: free_port() for site in catalog.ports()}


def settings_for(bus: TestBus, catalog: Catalog, document: Mapping[str, Any] | None = None,
                 ports: Mapping[str, int] | None = None):
    """Settings joined to `bus`, every site on a free port unless `ports` says otherwise; `document`
    is what teebus.toml would hold (a section per system)."""
    base = {"teebus": {"data_dir": bus.data_dir, "nats_url": bus.url},
            "ports": {**free_ports(catalog), **(ports or {})}}
    return build(catalog, layered(base, document or {}))


@contextlib.asynccontextmanager
async def nodes(catalog: Catalog) -> AsyncIterator[Callable[[Settings, list[str]], Awaitable[Node]]]:
    """`start(settings, names)` -> a started Node; on exit every one is stopped, the last first."""
    started: list[Node] = []

    async def start(settings: Settings, names: list[str]) -> Node:
        running = Node(settings, names, catalog)
        await running.start()
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in reversed(started):
            await running.stop()


@contextlib.asynccontextmanager
async def node(bus: TestBus, names: list[str], catalog: Catalog | None = None,
               document: Mapping[str, Any] | None = None,
               ports: Mapping[str, int] | None = None) -> AsyncIterator[Node]:
    """A started Node of `names` joined to `bus`, stopped on exit."""
    catalog = catalog or default_catalog()
    running = Node(settings_for(bus, catalog, document, ports), names, catalog)
    async with running:
        yield running
