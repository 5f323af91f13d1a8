"""What `teebus status` says of NATS itself: the servers, the JetStream meta leader, and each
JetStream asset (stream, KV bucket, object store) with its replicas and their health.

Servers and the meta leader come from the servers' monitoring endpoints (`/varz`, `/jsz`), which
a client connection cannot ask for; `teebus cluster up` records its nodes' in cluster.json
(bus/cluster.py), others are given with `--monitor URL`. Without any, the connected server is all
that is shown. Assets come from the JetStream API on the connection itself.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

import aiohttp
from nats.aio.client import Client

MONITOR_TIMEOUT = 2.0
MAX_ASSETS = 1000
ASSETS_TIMEOUT = 3.0


@dataclass
class ServerView:
    monitor: str
    name: str = "?"
    version: str = "?"
    uptime: str = "?"
    connections: int = 0
    error: str = ""             # unreachable: why


@dataclass
class AssetView:
    name: str
    replicas: int
    messages: int
    size: int
    leader: str = ""
    peers: list[dict[str, Any]] = field(default_factory=list)   # the followers: name, current, lag, offline

    @property
    def health(self) -> str:
        """"ok", or what is wrong: no leader, a follower offline or behind."""
        if self.replicas > 1 and not self.leader:
            return "NO LEADER"
        behind = [p["name"] for p in self.peers if p.get("offline") or not p.get("current")]
        if len(self.peers) < self.replicas - 1:
            return f"{self.replicas - 1 - len(self.peers)} replica(s) missing"
        return f"catching up: {', '.join(behind)}" if behind else "ok"


async def read_servers(monitors: list[str]) -> tuple[list[ServerView], dict[str, Any] | None]:
    """Each monitored server, and the meta cluster as most servers see it."""
    if not monitors:
        return [], None
    timeout = aiohttp.ClientTimeout(total=MONITOR_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        results = await asyncio.gather(*(_read_server(session, url) for url in monitors))
    views = [view for view, _ in results]
    metas = [meta for _, meta in results if meta and meta.get("leader")]
    if not metas:
        return views, None
    votes = Counter(meta["leader"] for meta in metas)   # a node just restarted may name an old leader
    return views, next(meta for meta in metas if meta["leader"] == votes.most_common(1)[0][0])


async def _read_server(session: aiohttp.ClientSession, monitor: str) -> tuple[ServerView, dict[str, Any] | None]:
    view = ServerView(monitor.rstrip("/"))
    try:
        async with session.get(f"{view.monitor}/varz") as response:
            varz = await response.json(content_type=None)
        async with session.get(f"{view.monitor}/jsz") as response:
            jsz = await response.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        view.error = str(exc) or type(exc).__name__
        return view, None
    view.name, view.version = varz.get("server_name", "?"), varz.get("version", "?")
    view.uptime, view.connections = varz.get("uptime", "?"), varz.get("connections", 0)
    meta = jsz.get("meta_cluster")
    if meta:   # its replicas are the answering server's peers: the answering server is a member too
        meta = {**meta, "members": sorted({view.name, *(p.get("name", "?") for p in meta.get("replicas") or [])})}
    return view, meta


async def read_assets(client: Client) -> list[AssetView] | str:
    """Every stream the connection may see (KV buckets are KV_*, object stores OBJ_*), or why not
    (no answer while a cluster elects its meta leader, say)."""
    js = client.jetstream(timeout=ASSETS_TIMEOUT)
    try:
        infos = await js.streams_info()
    except Exception as exc:       # the status of a sick cluster is exactly what must still print
        return f"JetStream did not list its streams ({exc or type(exc).__name__}): no meta leader? retry in a moment"
    assets = []
    for info in infos[:MAX_ASSETS]:
        cluster = info.cluster
        assets.append(AssetView(
            info.config.name, info.config.num_replicas or 1, info.state.messages, info.state.bytes,
            leader=(cluster.leader or "") if cluster else "",
            peers=[{"name": p.name, "current": p.current, "lag": p.lag or 0, "offline": bool(p.offline)}
                   for p in ((cluster.replicas or []) if cluster else [])]))
    return sorted(assets, key=lambda asset: asset.name)


def connected_server(client: Client) -> str:
    """The server this connection talks to, from what it announced (nats-py keeps no public copy)."""
    info = getattr(client, "_server_info", {}) or {}
    url = client.connected_url
    where = f"{url.hostname}:{url.port}" if url else "?"
    return f"{info.get('server_name', '?')} at {where} (nats-server {info.get('version', '?')})"


def render(out: TextIO, client: Client, servers: list[ServerView], meta: dict[str, Any] | None,
           assets: list[AssetView] | str) -> None:
    print(f"connected to {connected_server(client)}", file=out)
    if servers:
        print("servers:", file=out)
        for server in servers:
            if server.error:
                print(f"  {server.monitor}  UNREACHABLE ({server.error})", file=out)
            else:
                print(f"  {server.name:<10} {server.version:<8} up {server.uptime:<10} "
                      f"connections {server.connections:<5} {server.monitor}", file=out)
        if meta:
            print(f"JetStream meta leader: {meta.get('leader')} (cluster {meta.get('name', '?')}, "
                  f"size {meta.get('cluster_size', '?')}: {', '.join(meta['members'])})", file=out)
        else:
            print("JetStream meta leader: none reported (a single server, or no quorum)", file=out)
    else:
        print("servers: no monitoring URL (a local cluster records them in <data-dir>/cluster.json; "
              "else pass --monitor http://host:8222)", file=out)
    if isinstance(assets, str):
        print(assets, file=out)
        return
    print(f"JetStream assets ({len(assets)}):", file=out)
    for asset in assets:
        where = f"  leader {asset.leader}" if asset.leader else ""
        print(f"  {asset.name:<32} replicas {asset.replicas}{where}  msgs {asset.messages:<8} "
              f"bytes {asset.size:<10} {asset.health}", file=out)
