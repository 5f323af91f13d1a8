"""Where things live and listen, and each system's configuration: defaults, then teebus.toml, then
the command line. Every default is the documented one and every value configurable.

The file has a `[teebus]` section (the fields of `Settings` below), a `[ports]` table (site name ->
port) and one section per system, validated by that system's configuration class. An unknown
section, key or site is an error that names it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from bus.config import ConfigError, from_mapping, merge, to_mapping
from bus.log import is_secret
from bus.cluster import MAX_NODES
from bus.server import DEFAULT_CONF
from teebus.catalog import Catalog

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = Path("./teebus-data")
DEFAULT_NATS_PORT = 4222
LOG_LEVELS = ("debug", "info", "warning", "error")
CORE_SECTION = "teebus"
PORTS_SECTION = "ports"


@dataclass
class Settings:
    data_dir: Path = DEFAULT_DATA_DIR
    nats_url: str | None = None           # join an existing deployment instead of embedding one
    nats_host: str = "127.0.0.1"
    nats_port: int = DEFAULT_NATS_PORT
    nats_conf: Path = DEFAULT_CONF
    http_host: str = "127.0.0.1"
    internal_host: str = "127.0.0.1"      # where internal sites (behind internal.token) listen
    log_level: str = "info"
    replicas: int = 0                     # JetStream copies of every bucket, stream and store (0: as many
                                          # as the servers, at most 3: 1 alone, 3 on a cluster of 3 or more)
    nodes: int = 1                        # embedded nats-servers: more than one is a local cluster
    cluster_port: int = 6222              # a local cluster's first route port (one per node, upwards)
    monitor_port: int = 8222              # a local cluster's first monitoring port (likewise)
    node_name: str = ""                   # this machine's server as a node of a cluster across machines
    routes: str = ""                      # ... and its peers' route addresses, "host:port,host:port"
    # filled by `build`: every site's port (defaults applied), and each system's configuration object
    ports: dict[str, int] = field(default_factory=dict, init=False)
    configs: dict[str, Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.replicas == 0:
            self.replicas = min(3, self.servers())
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}")
        if not 1 <= self.replicas <= 5:
            raise ValueError(f"replicas must be 1 to 5 (JetStream's limit), not {self.replicas}")
        if not 1 <= self.nodes <= MAX_NODES:
            raise ValueError(f"nodes must be 1 to {MAX_NODES}, not {self.nodes}")
        if self.routes and self.nodes > 1:
            raise ValueError("a node of a cluster across machines (routes) runs one server here, not several (nodes)")
        if self.routes and not self.node_name:
            raise ValueError("a cluster node needs a name unique in its cluster (--name)")
        if self.replicas > self.nodes and self.embedded and not self.routes:
            raise ValueError(f"replicas ({self.replicas}) cannot exceed the embedded servers ({self.nodes}): "
                             f"`teebus cluster up --nodes {self.replicas}` runs that many")
        for name in ("nats_port", "cluster_port", "monitor_port"):
            if not 0 < getattr(self, name) <= 65536 - self.nodes:
                raise ValueError(f"{name} must be 1-{65536 - self.nodes}, not {getattr(self, name)}")

    @property
    def url(self) -> str:
        """The joined deployment's URL(s), or every embedded server's, comma-separated."""
        return self.nats_url or ",".join(f"nats://{self.nats_host}:{self.nats_port + i}" for i in range(self.nodes))

    @property
    def embedded(self) -> bool:
        return self.nats_url is None

    def servers(self) -> int:
        """How many nats-servers this deployment knows of: a joined one's URLs, a local cluster's
        nodes, or this machine's node and its peers."""
        if self.nats_url:
            return len([part for part in self.nats_url.split(",") if part.strip()])
        return self.nodes + len(self.peer_routes())

    def peer_routes(self) -> tuple[str, ...]:
        """The peers' route addresses, each checked to be host:port."""
        peers = tuple(part.strip() for part in self.routes.split(",") if part.strip())
        for peer in peers:
            host, _, port = peer.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"routes: {peer!r} is not host:port (a peer's route address, e.g. 10.0.0.2:6222)")
        return peers

    def resolved(self) -> "Settings":
        """The same settings with an absolute data directory (children may change directory)."""
        self.data_dir = self.data_dir.expanduser().resolve()
        return self

    def config_of(self, system: str) -> Any:
        return self.configs[system]

    def describe(self) -> dict[str, Any]:
        """The effective configuration as TOML-like data (what `teebus config` prints); secrets hidden."""
        core = to_mapping(self, is_secret)
        core.pop(PORTS_SECTION, None)
        core.pop("configs", None)
        return {CORE_SECTION: core, PORTS_SECTION: dict(self.ports),
                **{name: to_mapping(config, is_secret) for name, config in self.configs.items()
                   if config is not None}}


def build(catalog: Catalog, document: Mapping[str, Any] | None = None) -> Settings:
    """Settings for `catalog`'s systems from a TOML-like document (file and command line merged)."""
    document = dict(document or {})
    sections = {CORE_SECTION, PORTS_SECTION, *(manifest.name for manifest in catalog.systems)}
    unknown = [name for name in document if name not in sections]
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}]; the sections are "
                          f"{', '.join(f'[{name}]' for name in sorted(sections))}")
    settings = from_mapping(Settings, document.get(CORE_SECTION) or {}, CORE_SECTION)
    settings.ports = _ports(catalog, document.get(PORTS_SECTION) or {})
    for manifest in catalog.systems:
        values = document.get(manifest.name) or {}
        if manifest.config is type(None):
            if values:
                raise ConfigError(f"[{manifest.name}] takes no options")
            settings.configs[manifest.name] = None
        else:
            settings.configs[manifest.name] = from_mapping(manifest.config, values, manifest.name)
    return settings.resolved()


def _ports(catalog: Catalog, overrides: Mapping[str, Any]) -> dict[str, int]:
    ports = catalog.ports()
    for site, port in overrides.items():
        if site not in ports:
            raise ConfigError(f"[{PORTS_SECTION}] names no site {site!r}; the sites are "
                              f"{', '.join(sorted(ports))}")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ConfigError(f"[{PORTS_SECTION}] {site} must be a port 1-65535, not {port!r}")
        ports[site] = port
    return ports


def read_file(path: Path) -> dict[str, Any]:
    """A teebus.toml; a clear error when it is missing or not TOML."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def parse_port_overrides(values: list[str]) -> dict[str, int]:
    """`--port SITE=PORT` overrides; a clear error on anything else (unknown sites: `build`)."""
    ports = {}
    for value in values:
        name, sep, number = value.partition("=")
        if not sep or not number.isdigit() or not 0 < int(number) < 65536:
            raise ConfigError(f"--port takes SITE=PORT with a port 1-65535 (`teebus config` lists the sites), "
                              f"got {value!r}")
        ports[name] = int(number)
    return ports


def layered(*documents: Mapping[str, Any]) -> dict[str, Any]:
    """Documents laid over each other in order (the file, then the command line)."""
    result: dict[str, Any] = {}
    for document in documents:
        result = merge(result, document)
    return result
