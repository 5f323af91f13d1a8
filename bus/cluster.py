"""A NATS cluster on one machine: N nats-server processes with routes between them and JetStream
clustered (Raft), for development, tests and `teebus cluster up`. Several machines run one server
each, configured the same way (docs/scaling.md); nothing here is needed for that.

Every node shares the data directory's users, roles and credentials (bus/users.py renders one
`server.conf`, which each node's `node-<name>.conf` includes, and a user added or removed reloads
every node) and has its own home, `<data-dir>/cluster/<name>`, for its JetStream store and log.
Routes authenticate with a secret generated on first start (`<data-dir>/nats/cluster.secret`).
Each node serves NATS monitoring on loopback (`/varz`, `/jsz`: `teebus status` reads the servers
and the JetStream meta leader there); `cluster.json` in the data directory says where each node
listens, for the tools.

    async with LocalCluster(conf, data_dir, nodes=3) as cluster:
        url = cluster.url                      # "nats://127.0.0.1:4222,nats://127.0.0.1:4223,..."
        await cluster.servers[1].kill()        # and `await cluster.restart(1)`
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import orjson

from bus import cluster_tls, credentials, log, users
from bus.cluster_tls import NodeTls
from bus.connection import connect
from bus.roles import ADMIN, Role, all_roles
from bus.sealing import MasterKey
from bus.server import EmbeddedServer, ServerError, free_port

_log = log.get_logger("bus.cluster")
CLUSTER_NAME = "teebus"
ROUTE_USER = "route"
SECRET_FILE = "cluster.secret"
LAYOUT_FILE = "cluster.json"
JETSTREAM_TIMEOUT = 30.0      # s for a fresh cluster to elect its JetStream meta leader
MAX_NODES = 9


@dataclass(frozen=True)
class ClusterNode:
    """One node's part of the cluster: its name, its route listener, its peers' routes, monitoring."""

    name: str
    cluster_port: int
    monitor_port: int
    peers: tuple[str, ...]            # the other nodes' routes, "host:port"
    secret: str
    cluster_name: str = CLUSTER_NAME
    monitor_host: str = "127.0.0.1"   # monitoring has no authentication: loopback unless chosen otherwise
    tls: NodeTls | None = None        # a cluster across machines: clients and routes over TLS (bus/cluster_tls.py)

    def ports(self) -> list[tuple[int, str]]:
        """The ports this node listens on beside its client port, with the option that moves them."""
        return [(self.cluster_port, "--cluster-port"), (self.monitor_port, "--monitor-port")]

    def write_config(self, data_dir: Path, host: str) -> Path:
        """`<data-dir>/nats/node-<name>.conf`: the shared server.conf, then this node's identity."""
        routes = ", ".join(f'"nats-route://{ROUTE_USER}:{self.secret}@{peer}"' for peer in self.peers)
        client_tls, route_tls = cluster_tls.config_blocks(self.tls) if self.tls else ("", "")
        text = (f"# Written by teebus for cluster node {self.name}; edits here are overwritten.\n"
                f'include "{users.SERVER_CONF}"\n\n'
                f"server_name: {self.name}\n"
                f"http: {self.monitor_host}:{self.monitor_port}\n"
                f"{client_tls}"
                f"cluster {{\n  name: {self.cluster_name}\n  listen: {host}:{self.cluster_port}\n"
                f'  authorization {{ user: {ROUTE_USER}, password: "{self.secret}", timeout: 2 }}\n'
                f"{route_tls}"
                f"  routes: [{routes}]\n}}\n")
        path = users.directory(data_dir) / f"node-{self.name}.conf"
        credentials.write_private(path, text.encode())
        return path


@dataclass
class LocalCluster:
    """`nodes` nats-servers on `host`: client ports from `port`, routes from `cluster_port`,
    monitoring from `monitor_port` (each the next one up per node), unless `free_ports` (tests):
    then any free ones."""

    config: Path
    data_dir: Path
    nodes: int = 3
    host: str = "127.0.0.1"
    port: int = 4222
    cluster_port: int = 6222
    monitor_port: int = 8222
    roles: list[Role] = field(default_factory=lambda: all_roles([]))
    free_ports: bool = False
    servers: list[EmbeddedServer] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= MAX_NODES:
            raise ValueError(f"a local cluster has 1 to {MAX_NODES} nodes, not {self.nodes}")

    def _ports(self, base: int) -> list[int]:
        if self.free_ports:
            return [free_port(self.host) for _ in range(self.nodes)]
        return [base + i for i in range(self.nodes)]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated: what `--nats` takes."""
        return ",".join(server.url for server in self.servers)

    @property
    def passwords(self) -> dict[str, str]:
        return self.servers[0].passwords if self.servers else {}

    def monitor_urls(self) -> dict[str, str]:
        return {server.name: f"http://{self.host}:{server.node.monitor_port}" for server in self.servers}

    async def start(self) -> None:
        """Start every node, then wait until JetStream has a meta leader and answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        secret = credentials.ensure_secret_file(users.directory(self.data_dir) / SECRET_FILE)
        clients, routes, monitors = (self._ports(self.port), self._ports(self.cluster_port),
                                     self._ports(self.monitor_port))
        self.servers = [
            EmbeddedServer(self.config, self.data_dir, self.host, clients[i], roles=self.roles,
                           node=ClusterNode(f"n{i + 1}", routes[i], monitors[i],
                                            tuple(f"{self.host}:{p}" for p in routes if p != routes[i]), secret))
            for i in range(self.nodes)]
        try:
            await self.servers[0].prepare()
            await asyncio.gather(*(server.start(prepared=True) for server in self.servers))
            self._write_layout()
            await self.wait_for_jetstream()
        except BaseException:
            await self.stop()
            raise
        _log.info("nats cluster ready", nodes=self.nodes, url=self.url)

    async def wait_for_jetstream(self, timeout: float = JETSTREAM_TIMEOUT) -> None:
        await wait_for_jetstream(self.url, self.passwords, timeout, where=self.data_dir / "cluster")

    async def restart(self, index: int) -> None:
        """Start node `index` again (after `kill` or `stop`), on its own store: it catches up."""
        await self.servers[index].start(prepared=True)

    async def stop(self) -> None:
        await asyncio.gather(*(server.stop() for server in self.servers), return_exceptions=True)
        (self.data_dir / LAYOUT_FILE).unlink(missing_ok=True)

    async def __aenter__(self) -> "LocalCluster":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _write_layout(self) -> None:
        credentials.write_private(self.data_dir / LAYOUT_FILE, orjson.dumps(self.layout(), option=orjson.OPT_INDENT_2))

    def layout(self) -> dict[str, Any]:
        return {"url": self.url, "nodes": [
            {"name": s.name, "url": s.url, "monitor": f"http://{self.host}:{s.node.monitor_port}",
             "home": str(s.home)} for s in self.servers]}


async def wait_for_jetstream(url: str, passwords: dict[str, str], timeout: float = JETSTREAM_TIMEOUT,
                             where: Path | None = None, data_dir: Path | None = None) -> None:
    """Until the JetStream API answers through `url`: a cluster answers once it has elected its
    meta leader, i.e. once a majority of its servers run (the first node of several waits here)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    client = await connect(url, ADMIN, data_dir=data_dir, passwords=passwords, name="teebus-cluster-check")
    try:
        while time.monotonic() < deadline:
            try:
                await client.jetstream(timeout=2).account_info()
                return
            except Exception as exc:       # no meta leader yet: "JetStream system temporarily unavailable"
                last = str(exc) or type(exc).__name__
            await asyncio.sleep(0.2)
    finally:
        await client.close()
    logs = f"; see the servers' logs under {where}" if where else ""
    raise ServerError(f"JetStream did not answer within {timeout:g}s ({last}): a cluster needs a majority of "
                      f"its servers running{logs}")


def shared_secrets(data_dir: Path, role_names: Iterable[str], secret_files: Iterable[str] = (),
                   master_keys: Iterable[str] = ()) -> list[Path]:
    """Create (if missing) what every machine of a cluster must hold alike: the roles' passwords,
    the route secret, the cluster's TLS CA (bus/cluster_tls.py), `secret_files` (hex secrets) and
    `master_keys` (bus/sealing.py keys; the manifests' `shared_keys`), all relative to `data_dir`;
    returns their paths, to be copied to the other machines' data directories before they start."""
    data_dir.mkdir(parents=True, exist_ok=True)
    credentials.ensure(data_dir, list(role_names))
    secrets = [users.directory(data_dir) / SECRET_FILE, *(data_dir / name for name in secret_files)]
    for path in secrets:
        credentials.ensure_secret_file(path)
    keys = [data_dir / name for name in master_keys]
    for path in keys:
        MasterKey.load_or_create(path)
    return [data_dir / credentials.FILE_NAME, *secrets, *cluster_tls.ensure_ca(data_dir), *keys]


def read_layout(data_dir: Path) -> dict[str, Any] | None:
    """What `cluster.json` says of the local cluster started from `data_dir`, or None."""
    path = data_dir / LAYOUT_FILE
    return orjson.loads(path.read_bytes()) if path.exists() else None


def monitor_urls(data_dir: Path, extra: Iterable[str] = ()) -> list[str]:
    layout = read_layout(data_dir) or {"nodes": []}
    return [node["monitor"] for node in layout["nodes"]] + list(extra)
