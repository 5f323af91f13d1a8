"""Fixtures: one real nats-server for the session (bus/testing.py), with the roles of every system
plus the kernel tests' own; connections, components and nodes per test, cleaned up after it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import warnings
import weakref
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import structlog
from nats.aio.client import Client

from bus import log
from bus.component import Component
from bus.manifest import Manifest
from bus.server import EmbeddedServer, share_listen_ports
from bus.testing import TestBus, running_bus
from teebus.catalog import Catalog
from teebus.launcher import Node, default_catalog
from teebus.testing import nodes, settings_for

log.configure("warning", json=True)

# Under pytest-xdist (pyproject's addopts: `-n`), each worker picks listening ports from its own slice.
if os.environ.get("PYTEST_XDIST_WORKER"):
    share_listen_ports(int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw")),
                       int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))

# The kernel tests' own system: test components under `kerneltest.*`, and the buckets they use.
KERNEL_TEST = Manifest("kerneltest", "kernel tests", buckets=("test_records", "test_mirror", "test_records_r3"))


@pytest.fixture(autouse=True)
def logging_restored() -> Iterator[None]:
    """A test that runs `teebus.cli.main` reconfigures structlog onto that moment's stderr, which
    pytest closes after the test: every later log line would then fail. Put the setting back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


# Every NATS client made in this process and the test that made it, so `connections_closed` can
# find the ones left behind (nats-py keeps no such list; wrapping its constructor is the one way
# in, and only in tests).
_CLIENTS: "weakref.WeakKeyDictionary[Client, str]" = weakref.WeakKeyDictionary()
_client_init = Client.__init__


def _registered_init(self: Client, *args, **kwargs) -> None:
    _client_init(self, *args, **kwargs)
    _CLIENTS[self] = os.environ.get("PYTEST_CURRENT_TEST", "(no test)")


Client.__init__ = _registered_init


def _server_gone(client: Client) -> bool:
    """Is the client's server gone? A client may not have noticed yet: its server is asked."""
    url = client.connected_url
    if not client.is_connected or url is None:
        return True
    try:
        socket.create_connection((url.hostname, url.port), timeout=0.5).close()
    except OSError:
        return True
    return False


async def _close_stray(clients: list[Client]) -> list[str]:
    """Close clients whose server is gone; who made each."""
    made_by = [f"{client.options.get('name')} (made by {_CLIENTS.get(client)})" for client in clients]
    for client in clients:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 1.0)    # a TLS transport may never finish closing
    return made_by


@pytest.fixture(autouse=True, scope="module")
async def connections_closed(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """A test module closes every NATS connection it opened whose server it stops: one left open
    reconnects forever, and its warnings land in later modules' logs (a hostile suite, which
    allows no warning, then fails for another module's leak). Such a connection fails its module;
    one found only later (its server stopped after its module ended) is closed before the next
    module starts, with a warning naming the test that made it."""
    before = {client for client in list(_CLIENTS) if not client.is_closed}
    earlier = await _close_stray([client for client in before if _server_gone(client)])
    for stray in earlier:
        warnings.warn(f"a NATS connection reconnecting to a server gone, closed: {stray}", ResourceWarning)
    yield
    own = [client for client in list(_CLIENTS) if client not in before and not client.is_closed]
    leaked = await _close_stray([client for client in own if _server_gone(client)])
    assert not leaked, f"{request.module.__name__} left NATS connections open to a server gone: {leaked}"


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return default_catalog()


@pytest.fixture(scope="session")
async def bus(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> AsyncIterator[TestBus]:
    """One real nats-server with JetStream for the whole session, on a free loopback port."""
    async with running_bus(tmp_path_factory.mktemp("teebus-data"), (*catalog.systems, KERNEL_TEST)) as running:
        yield running


@pytest.fixture(scope="session")
def nats_server(bus: TestBus) -> EmbeddedServer:
    return bus.server


@pytest.fixture
def data_dir(nats_server: EmbeddedServer) -> Path:
    """The data directory shared by the session's server and components (secrets live there)."""
    return nats_server.data_dir


@pytest.fixture
async def scope(bus: TestBus) -> AsyncIterator:
    async with bus.scope() as test_scope:
        yield test_scope


@pytest.fixture
def connect_as(scope) -> Callable[..., Awaitable[Client]]:
    """Factory: `await connect_as("adapter")` -> a client that is closed after the test."""
    return scope.connect


@pytest.fixture
def start_component(scope) -> Callable[..., Awaitable[Component]]:
    """Factory: `await start_component(KmsComponent)` -> a started component, stopped afterwards."""

    async def factory(cls: type[Component], directory: Path | None = None, **options) -> Component:
        return await scope.component(cls, data_dir=directory, **options)

    return factory


@pytest.fixture
async def start_node(bus: TestBus, catalog: Catalog) -> AsyncIterator[Callable[..., Awaitable[Node]]]:
    """Factory: `await start_node(["mesatee.kms", "http.mesatee"])` -> a running Node on free ports."""
    async with nodes(catalog) as start:
        async def factory(names: list[str], ports: dict[str, int] | None = None, document: dict | None = None,
                          data_dir: Path | None = None) -> Node:
            settings = settings_for(bus, catalog, document, ports)
            if data_dir is not None:
                settings.data_dir = data_dir
            return await start(settings, names)

        yield factory


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


pytest_plugins = ["tests.conclave_fixtures", "tests.aurae_fixtures"]
