"""Fixtures: a real nats-server per test session, connections per role, components and adapters."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import pytest
from nats.aio.client import Client

from adapters.http import enarx as enarx_http
from adapters.http import mesatee as mesatee_http
from bus import events, log, payloads
from bus.component import Component, Context
from bus.connection import connect
from bus.server import EmbeddedServer, free_port
from teebus.launcher import Node
from teebus.settings import REPO_ROOT, Settings

log.configure("warning", json=True)


@pytest.fixture(scope="session")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedServer]:
    """One real nats-server with JetStream for the whole session, on a free loopback port."""
    server = EmbeddedServer(REPO_ROOT / "nats.conf", tmp_path_factory.mktemp("teebus-data"),
                            port=free_port())
    await server.start()
    admin = await connect(server.url, "admin", passwords=server.passwords)
    await payloads.ensure_store(admin)
    await events.ensure_stream(admin)
    await admin.close()
    yield server
    await server.stop()


@pytest.fixture
def data_dir(nats_server: EmbeddedServer) -> Path:
    """The data directory shared by the session's server and components (secrets live there)."""
    return nats_server.data_dir


@pytest.fixture
async def connect_as(nats_server: EmbeddedServer) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    """Factory: `await connect_as("adapter")` -> a client that is closed after the test."""
    clients: list[Client] = []

    async def factory(role: str, **options) -> Client:
        client = await connect(nats_server.url, role, passwords=nats_server.passwords, **options)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        if not client.is_closed:
            await client.close()


@pytest.fixture
async def start_component(connect_as, data_dir: Path) -> AsyncIterator[Callable[..., Awaitable[Component]]]:
    """Factory: `await start_component(KmsComponent)` -> a started component, stopped afterwards."""
    started: list[Component] = []

    async def factory(cls: type[Component], directory: Path | None = None) -> Component:
        client = await connect_as("component")
        component = cls(Context(client, directory or data_dir))
        await component.start()
        started.append(component)
        return component

    yield factory
    for component in reversed(started):
        await component.stop()


@pytest.fixture
async def start_node(nats_server: EmbeddedServer) -> AsyncIterator[Callable[..., Awaitable[Node]]]:
    """Factory: `await start_node(["mesatee.kms", "http.mesatee"])` -> a running Node on free ports."""
    nodes: list[Node] = []

    async def factory(names: list[str], ports: dict[str, int] | None = None) -> Node:
        settings = Settings(data_dir=nats_server.data_dir, nats_url=nats_server.url,
                            ports=ports or free_site_ports())
        node = Node(settings, names)
        await node.start()
        nodes.append(node)
        return node

    yield factory
    for node in reversed(nodes):
        await node.stop()


def free_site_ports() -> dict[str, int]:
    """A free port for every HTTP site, so tests never meet a `teebus up` running on the defaults."""
    return {site: free_port() for site in (*mesatee_http.DEFAULT_PORTS, *enarx_http.DEFAULT_PORTS)}


def internal_token(data_dir: Path) -> str:
    return (data_dir / "internal.token").read_text().strip()


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 5.0) -> None:
    """Wait until `check()` is true; fail with a clear message otherwise."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)
