"""Test support for teebus and for users' own tests, in the spirit of `structlog.testing`: a real
nats-server with the roles of chosen systems, connections as those roles, and started components,
all cleaned up by the scope that made them.

    async with running_bus(tmp_path, [MANIFEST]) as bus:
        async with bus.scope() as scope:
            component = await scope.component(MyComponent)        # connected as its system's role
            requester = Requester(await scope.connect("adapter"))

Nothing here is mocked: the server is the nats-server binary with JetStream on `data_dir`, set up
as `teebus up` sets up its own (payload bucket, EVENTS stream). A node of components *and* adapters
comes from the launcher: `teebus.testing.start_node`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterable

from nats.aio.client import Client

from bus import log
from bus.bootstrap import prepare
from bus.component import Component, Context
from bus.connection import connect
from bus.manifest import Manifest
from bus.roles import ADMIN, all_roles
from bus.server import DEFAULT_CONF, EmbeddedServer, free_port


@dataclass
class Scope:
    """Connections and components made for one test (or one script); `close` ends them all."""

    bus: "TestBus"
    clients: list[Client] = field(default_factory=list)
    components: list[Component] = field(default_factory=list)

    async def connect(self, role: str, **options: Any) -> Client:
        """A connection as `role` (a kernel role, a system's name, or `<system>-<role>`)."""
        client = await connect(self.bus.url, role, passwords=self.bus.passwords, **options)
        self.clients.append(client)
        return client

    async def component(self, cls: type[Component], *, config: Any = None, data_dir: Path | None = None,
                        **context: Any) -> Component:
        """A started component of `cls`, connected as its system's role, with its system's default
        configuration unless `config` is given; `context` sets other Context fields."""
        manifest = self.bus.manifest(cls.system)
        client = await self.connect(manifest.role)
        if config is None:
            config = manifest.default_config()
        component = cls(Context(client, data_dir or self.bus.data_dir, config, nats_url=self.bus.url, **context))
        await component.start()
        self.components.append(component)
        return component

    async def close(self) -> None:
        for component in reversed(self.components):
            await component.stop()
        self.components.clear()
        for client in self.clients:
            if not client.is_closed:
                await client.close()
        self.clients.clear()

    async def __aenter__(self) -> "Scope":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@dataclass
class TestBus:
    """A running nats-server whose users are the roles of `systems` (bus/roles.py)."""

    __test__ = False  # not a pytest test class

    server: EmbeddedServer
    systems: tuple[Manifest, ...]

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def passwords(self) -> dict[str, str]:
        return self.server.passwords

    def manifest(self, system: str) -> Manifest:
        for manifest in self.systems:
            if manifest.name == system:
                return manifest
        raise LookupError(f"system {system!r} is not on this test bus; pass its manifest to running_bus")

    def scope(self) -> Scope:
        return Scope(self)


@contextlib.asynccontextmanager
async def running_bus(data_dir: Path, systems: Iterable[Manifest] = (), *,
                      conf: Path = DEFAULT_CONF) -> AsyncIterator[TestBus]:
    """A real nats-server on a free loopback port, JetStream under `data_dir`, ready for components."""
    systems = tuple(systems)
    for manifest in systems:
        log.redact(*manifest.secret_fields)
    server = EmbeddedServer(conf, data_dir, port=free_port(), roles=all_roles(systems))
    await server.start()
    try:
        admin = await connect(server.url, ADMIN, passwords=server.passwords)
        try:
            await prepare(admin)
        finally:
            await admin.close()
        yield TestBus(server, systems)
    finally:
        await server.stop()
