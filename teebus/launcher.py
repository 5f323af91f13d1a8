"""Runs components and adapters in this process (`Node`, for `teebus run`), and a whole deployment
on one machine (`Deployment`, for `teebus up`: the embedded server plus a node of everything).

Both read the systems' manifests through a `Catalog` and name no system. Both work as `async with`.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass, field

from nats.aio.client import Client

from adapters.http.runner import INTERNAL_TOKEN_FILE, HttpServer
from adapters.unix.server import Listener
from bus import cluster_tls, log, log_shipping, roles, users
from bus.bootstrap import prepare
from bus.cluster import SECRET_FILE as CLUSTER_SECRET, ClusterNode, LocalCluster, wait_for_jetstream
from bus.component import Component, Context
from bus.connection import connect
from bus.credentials import ensure_secret_file
from bus.manifest import Manifest, load
from bus.requester import Requester
from bus.server import EmbeddedServer, ServerError
from teebus import systems
from teebus.catalog import Catalog
from teebus.settings import Settings

_log = log.get_logger("teebus")
RESTART_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)   # after the embedded server's 1st, 2nd, ... exit
QUORUM_TIMEOUT = 300.0                       # s a cluster node waits for its peers to start
RESTART_WINDOW = 60.0                        # more exits than delays within this many seconds: give up


def default_catalog() -> Catalog:
    return Catalog(systems.installed())


def context_for(settings: Settings, manifest: Manifest, client: Client) -> Context:
    """What a component of `manifest` gets: its connection, its system's configuration, the deployment."""
    return Context(client, settings.data_dir, settings.config_of(manifest.name), nats_url=settings.url,
                   replicas=settings.replicas, embedded=settings.embedded, http_host=settings.http_host,
                   ports=dict(settings.ports))


@dataclass
class Node:
    """A chosen set of components and adapters sharing this process."""

    settings: Settings
    names: list[str]
    catalog: Catalog = field(default_factory=default_catalog)
    components: list[Component] = field(default_factory=list)
    http: HttpServer | None = None
    sockets: dict[str, Listener] = field(default_factory=dict)
    _clients: list[Client] = field(default_factory=list)
    _requesters: dict[str, Requester] = field(default_factory=dict)
    _shipper: log_shipping.LogShipper | None = None

    async def _connect(self, role: str, name: str) -> Client:
        client = await connect(self.settings.url, role, data_dir=self.settings.data_dir, name=name)
        self._clients.append(client)
        if log_shipping.current() is None:           # this process's log lines, on the bus from now on
            self._shipper = log_shipping.install(client, role)
        return client

    async def start(self) -> None:
        self.catalog.check(self.names)
        for manifest in self.catalog.systems:
            log.redact(*manifest.secret_fields)
        components = self.catalog.components(self.names)
        try:
            if components:
                await self._prepare_bus()
            for manifest, spec in components:
                client = await self._connect(manifest.role, f"{manifest.name}.{spec.name}")
                component = load(spec.target)(context_for(self.settings, manifest, client))
                await component.start()
                self.components.append(component)
            adapters = self.catalog.adapters(self.names)
            sites = [site for manifest, spec in adapters if spec.kind == "http"
                     for site in load(spec.target)(self.settings.ports, self.settings.config_of(manifest.name))]
            if sites:
                await self._start_http(sites)
            for manifest, spec in adapters:
                if spec.kind == "unix":
                    await self._start_sockets(load(spec.target)(self.settings.data_dir,
                                                                self.settings.config_of(manifest.name)))
        except BaseException:
            await self.stop()
            raise

    async def _prepare_bus(self) -> None:
        admin = await connect(self.settings.url, roles.ADMIN, data_dir=self.settings.data_dir, name="teebus-setup")
        try:
            await prepare(admin, self.settings.replicas)
        finally:
            await admin.close()

    async def _requester(self, role: str) -> Requester:
        """One connection per role for all of this node's adapters."""
        if role not in self._requesters:
            self._requesters[role] = Requester(await self._connect(role, f"adapters-{role}"))
        return self._requesters[role]

    async def _start_http(self, sites: list) -> None:
        requesters = {role: await self._requester(role) for role in sorted({site.role for site in sites})}
        self.http = HttpServer(self.settings.http_host, self.settings.data_dir,
                               internal_host=self.settings.internal_host)
        await self.http.start(sites, requesters)

    async def _start_sockets(self, listeners: list[Listener]) -> None:
        for listener in listeners:
            await listener.start(await self._requester(listener.role))
            self.sockets[listener.name] = listener

    async def stop(self) -> None:
        """Adapters stop taking requests first, components finish theirs, connections drain."""
        if self.http is not None:
            await self.http.stop()
            self.http = None
        for server in self.sockets.values():
            await server.stop()
        self.sockets.clear()
        for component in reversed(self.components):
            await component.stop()
        self.components.clear()
        self._requesters.clear()
        if self._shipper is not None and log_shipping.current() is self._shipper:
            await log_shipping.uninstall()
        self._shipper = None
        for client in reversed(self._clients):
            await _close(client)
        self._clients.clear()

    async def __aenter__(self) -> "Node":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def listening(self) -> dict[str, str]:
        bound = {f"{name} (http)": url for name, url in (self.http.bound if self.http else {}).items()}
        bound.update({f"{name} (unix)": str(server.path) for name, server in self.sockets.items()})
        for component in self.components:
            bound[component.service_name] = "bus: " + ", ".join(e.subject for e in component.endpoints())
        return bound


async def _close(client: Client) -> None:
    """Drain a connection (its queued replies go out); a connection the bus dropped is just closed."""
    if client.is_closed:
        return
    try:
        await asyncio.wait_for(client.drain(), 5.0)
    except Exception:  # not connected, or the bus is gone: nothing left to flush
        try:
            await client.close()
        except Exception as exc:
            _log.info("connection closed uncleanly", client=client.options.get("name"), error=str(exc))


@dataclass
class Deployment:
    """`teebus up`: the embedded server (unless joining one) and every component and adapter.

    With `settings.nodes` above one (`teebus cluster up`) the embedded servers are a local cluster
    (bus/cluster.py), each node supervised alike.

    An embedded server is supervised: if it exits, it is started again on the same data directory
    (after RESTART_DELAYS) and the components' connections reconnect by themselves; if it keeps
    exiting, `failure` says why and `ended` is set, so `teebus up` stops everything and exits 1.
    """

    settings: Settings
    catalog: Catalog = field(default_factory=default_catalog)
    demo: bool = False               # `teebus up --demo`: each system's demo data too (never by default)
    server: EmbeddedServer | None = None        # the one embedded server (none when joining, or a cluster)
    cluster: LocalCluster | None = None
    node: Node | None = None
    failure: str | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    _supervisors: list[asyncio.Task] = field(default_factory=list)

    @property
    def servers(self) -> list[EmbeddedServer]:
        return self.cluster.servers if self.cluster else [self.server] if self.server else []

    async def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        ensure_secret_file(self.settings.data_dir / INTERNAL_TOKEN_FILE)
        self.node = Node(self.settings, self.catalog.names(), self.catalog)
        try:
            if self.settings.embedded:
                await self._start_servers()
            await self.node.start()
            if self.demo:
                await self._create_demo_data()
        except BaseException:
            await self.stop()
            raise
        self._supervisors = [asyncio.create_task(self._supervise(server), name=f"{server.name} supervisor")
                             for server in self.servers]

    async def _start_servers(self) -> None:
        settings, system_roles = self.settings, roles.all_roles(self.catalog.systems)
        if settings.nodes > 1:
            self.cluster = LocalCluster(settings.nats_conf, settings.data_dir, settings.nodes, settings.nats_host,
                                        settings.nats_port, settings.cluster_port, settings.monitor_port,
                                        roles=system_roles)
            await self.cluster.start()
            return
        self.server = EmbeddedServer(settings.nats_conf, settings.data_dir, settings.nats_host,
                                     settings.nats_port, roles=system_roles, node=cluster_node(settings))
        await self.server.start()
        if self.server.node is not None:       # JetStream answers once a majority of the nodes run
            _log.info("waiting for a majority of the cluster's servers", routes=settings.routes,
                      timeout=QUORUM_TIMEOUT)
            await wait_for_jetstream(self.server.url, self.server.passwords, QUORUM_TIMEOUT, where=self.server.home,
                                     data_dir=settings.data_dir)

    async def _create_demo_data(self) -> None:
        admin = await connect(self.settings.url, roles.ADMIN, data_dir=self.settings.data_dir, name="teebus-demo")
        try:
            for manifest in self.catalog.systems:
                if manifest.demo:
                    await load(manifest.demo)(admin)
                    _log.warning("demo data created: not for production", system=manifest.name)
        finally:
            await admin.close()

    async def _supervise(self, server: EmbeddedServer) -> None:
        exits: list[float] = []
        while True:
            code = await server.wait()
            now = time.monotonic()
            exits = [moment for moment in exits if now - moment < RESTART_WINDOW] + [now]
            if len(exits) > len(RESTART_DELAYS):
                self.failure = (f"the embedded {server.name} exited {len(exits)} times within {RESTART_WINDOW:g}s "
                                f"(last code {code}); stopping everything. Its log: {server.log_path}")
                _log.error("nats-server keeps exiting; stopping", exits=len(exits), code=code)
                self.ended.set()
                return
            delay = RESTART_DELAYS[len(exits) - 1]
            _log.error("nats-server exited; restarting it", server=server.name, code=code, delay=delay)
            await asyncio.sleep(delay)
            try:
                await server.start()
                _log.warning("nats-server restarted; connections resume", server=server.name, pid=server.pid)
            except ServerError as exc:
                _log.error("nats-server did not restart", server=server.name, error=str(exc))

    async def stop(self) -> None:
        for supervisor in self._supervisors:
            supervisor.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        self._supervisors = []
        if self.node is not None:
            await self.node.stop()
            self.node = None
        if self.cluster is not None:
            await self.cluster.stop()
            self.cluster = None
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def __aenter__(self) -> "Deployment":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def listening(self) -> dict[str, str]:
        bound = {"nats": self.settings.url}
        if self.cluster:
            bound.update({f"nats {name} monitoring": url for name, url in self.cluster.monitor_urls().items()})
        if self.node:
            bound.update(self.node.listening())
        return bound


def cluster_node(settings: Settings) -> ClusterNode | None:
    """This machine's server as a node of a cluster across machines (`teebus cluster node`), or None.
    Every machine needs the same cluster secret: the data directory's `nats/cluster.secret`."""
    if not settings.routes:
        return None
    secret = ensure_secret_file(users.directory(settings.data_dir) / CLUSTER_SECRET)
    tls = (cluster_tls.node_files(settings.data_dir, settings.node_name, [settings.nats_host])
           if cluster_tls.enabled(settings.data_dir) else None)
    return ClusterNode(settings.node_name, settings.cluster_port, settings.monitor_port, settings.peer_routes(),
                       secret, tls=tls)


async def serve_until_signalled(runnable: Deployment | Node, banner: bool = True) -> str | None:
    """Start, print what listens where, and stop cleanly on SIGINT/SIGTERM, or when a Deployment
    cannot go on; returns why it could not (None after a signal)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await runnable.start()
    watcher = loop.create_task(_forward(runnable.ended, stop)) if isinstance(runnable, Deployment) else None
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
        if watcher is not None:
            watcher.cancel()
        await runnable.stop()
    return getattr(runnable, "failure", None)


async def _forward(event: asyncio.Event, to: asyncio.Event) -> None:
    await event.wait()
    to.set()
