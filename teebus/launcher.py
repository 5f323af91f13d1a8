"""Runs components and adapters in this process, and the whole system for `teebus up`."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field

from nats.aio.client import Client

from adapters.http.runner import HttpServer, INTERNAL_TOKEN_FILE
from bus import log, payloads
from bus import events as bus_events
from bus.component import Component, Context
from bus.connection import connect
from bus.credentials import ensure_secret_file
from bus.requester import Requester
from bus.server import EmbeddedServer
from teebus import catalog
from teebus.settings import Settings

_log = log.get_logger("teebus")


@dataclass
class Node:
    """A chosen set of components and adapters sharing this process."""

    settings: Settings
    names: list[str]
    components: list[Component] = field(default_factory=list)
    http: HttpServer | None = None
    _clients: list[Client] = field(default_factory=list)

    async def _connect(self, role: str, name: str) -> Client:
        client = await connect(self.settings.url, role, data_dir=self.settings.data_dir, name=name)
        self._clients.append(client)
        return client

    async def start(self) -> None:
        catalog.check(self.names)
        component_names = [n for n in self.names if n in catalog.COMPONENTS]
        adapter_names = [n for n in self.names if n in catalog.HTTP_ADAPTERS]
        try:
            for name in component_names:
                client = await self._connect("component", name)
                await payloads.ensure_store(client)
                await bus_events.ensure_stream(client)
                component = catalog.load(catalog.COMPONENTS[name])(
                    Context(client, self.settings.data_dir, self.settings.component_options()))
                await component.start()
                self.components.append(component)
            if adapter_names:
                await self._start_http(adapter_names)
        except BaseException:
            await self.stop()
            raise

    async def _start_http(self, adapter_names: list[str]) -> None:
        sites = [site for name in adapter_names
                 for site in catalog.load(catalog.HTTP_ADAPTERS[name])(self.settings.ports)]
        roles = sorted({site.role for site in sites})
        requesters = {role: Requester(await self._connect(role, f"http-{role}")) for role in roles}
        self.http = HttpServer(self.settings.http_host, self.settings.data_dir)
        await self.http.start(sites, requesters)

    async def stop(self) -> None:
        """Adapters stop taking requests first, components finish theirs, connections drain."""
        if self.http is not None:
            await self.http.stop()
            self.http = None
        for component in reversed(self.components):
            await component.stop()
        self.components.clear()
        for client in reversed(self._clients):
            if not client.is_closed:
                await client.drain()
        self._clients.clear()

    def listening(self) -> dict[str, str]:
        bound = {f"{name} (http)": url for name, url in (self.http.bound if self.http else {}).items()}
        for component in self.components:
            bound[component.service_name] = "bus: " + ", ".join(e.subject for e in component.endpoints())
        return bound


@dataclass
class System:
    """`teebus up`: the embedded server (unless joining one) and every component and adapter."""

    settings: Settings
    server: EmbeddedServer | None = None
    node: Node | None = None

    async def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        ensure_secret_file(self.settings.data_dir / INTERNAL_TOKEN_FILE)
        if self.settings.embedded:
            self.server = EmbeddedServer(self.settings.nats_conf, self.settings.data_dir,
                                         self.settings.nats_host, self.settings.nats_port)
            await self.server.start()
        self.node = Node(self.settings, catalog.names())
        try:
            await self.node.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.node is not None:
            await self.node.stop()
            self.node = None
        if self.server is not None:
            await self.server.stop()
            self.server = None

    def listening(self) -> dict[str, str]:
        bound = {"nats": self.settings.url}
        if self.node:
            bound.update(self.node.listening())
        return bound


async def serve_until_signalled(runnable: System | Node, banner: bool = True) -> None:
    """Start, print what listens where, and stop cleanly on SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await runnable.start()
    try:
        if banner:
            width = max(len(name) for name in runnable.listening())
            print("teebus is up:", flush=True)
            for name, where in runnable.listening().items():
                print(f"  {name:<{width}}  {where}", flush=True)
            print("Ctrl-C stops everything.", flush=True)
        await stop.wait()
    finally:
        _log.info("stopping")
        await runnable.stop()
