"""How a system declares itself: one `Manifest` in its own package (`components/<system>/system.py`).

The launcher, settings, CLI, server configuration and test fixtures read manifests and name no
system. A manifest is cheap to import: components, adapters and CLI verbs are named as
`"module:attribute"` references and imported only when used, so `teebus --help` loads no runtime.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

ADAPTER_KINDS = ("http", "unix")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_SITE = re.compile(r"^[a-z][a-z0-9-]{0,63}$")


def load(reference: str) -> Any:
    """Import `"package.module:attribute"` and return the attribute."""
    module, _, attribute = reference.partition(":")
    if not module or not attribute:
        raise ValueError(f"a reference is 'module:attribute', not {reference!r}")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class ComponentSpec:
    """A component of the system: `teebus run <system>.<name>` runs `target` (a Component class)."""

    name: str
    target: str

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"component name {self.name!r} must be lower-case letters, digits or '_'")


@dataclass(frozen=True)
class AdapterSpec:
    """An adapter module and the function that declares what it serves.

    `kind` is the folder under `adapters/`, and the run name is `<kind>.<system>`:
    - "http": `target` is `(ports: Mapping[str, int], config) -> list[Site]` (adapters/http/runner.py),
      `config` being the system's configuration (a site may need more than its port: a host name);
    - "unix": `target` is `(data_dir: Path, config) -> list[Listener]` (adapters/unix/server.py): sockets
      that serve themselves once given their role's requester (a stream protocol, a gRPC server).
    """

    kind: str
    target: str

    def __post_init__(self) -> None:
        if self.kind not in ADAPTER_KINDS:
            raise ValueError(f"adapter kind {self.kind!r} is not one of {', '.join(ADAPTER_KINDS)}")


@dataclass(frozen=True)
class HostSpec:
    """A process of the system's own that runs components and adapters together (a keep, say), run
    as `python -m teebus.host <system>.<name> ARGS`.

    `target` is `async (argv, adapters) -> exit status`, on the component side; `adapters` names the
    adapter callables it is handed (name -> "module:attribute"), so no component imports an adapter:
    the generic host, which may import both, loads them.
    """

    name: str
    target: str
    adapters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CommandSpec:
    """A top-level CLI verb of the system (`teebus <name> ...`), beside `teebus <system> ...`.

    `target` is `register(parser, common)`, as for `Manifest.verbs`.
    """

    name: str
    target: str
    help: str

    def __post_init__(self) -> None:
        if not _SITE.match(self.name):
            raise ValueError(f"command name {self.name!r} must be lower-case letters, digits or '-'")


@dataclass(frozen=True)
class RoleSpec:
    """An extra NATS role of the system (beyond its components' role), e.g. for helper processes.

    The NATS user is named `<system>-<name>`; `permissions` is a NATS permissions block.
    """

    name: str
    permissions: Mapping[str, Any]
    description: str = ""


@dataclass(frozen=True)
class Manifest:
    """Everything teebus needs to know to run, configure, permit and operate one system."""

    name: str
    summary: str
    config: type = type(None)                                # a dataclass; its instance is Context.config
    components: tuple[ComponentSpec, ...] = ()
    adapters: tuple[AdapterSpec, ...] = ()
    ports: Mapping[str, int] = field(default_factory=dict)   # site name -> default port
    buckets: tuple[str, ...] = ()                            # KV buckets its components own
    streams: tuple[str, ...] = ()                            # other JetStream streams they own
    reads_logs: bool = False                                 # its components watch every process's log lines
    roles: tuple[RoleSpec, ...] = ()
    secret_fields: tuple[str, ...] = ()                      # message fields logs never show
    # its subjects (NATS wildcards allowed) whose requests carry credentials in their bodies (a
    # user's token, say): the observer role never subscribes to them (bus/roles.py); watching
    # them is an admin's act
    secret_subjects: tuple[str, ...] = ()
    # data-directory files holding a bus.sealing.MasterKey that opens what its components keep in
    # shared buckets: every machine running them needs the same file (`teebus cluster init`)
    shared_keys: tuple[str, ...] = ()
    verbs: str | None = None                                 # "module:register" for `teebus <system> ...`
    commands: tuple[CommandSpec, ...] = ()                   # top-level verbs (`teebus users ...`)
    demo: str | None = None        # "module:fn", `async fn(admin client)`: demo data for `teebus up --demo`
    hosts: tuple[HostSpec, ...] = ()                         # processes of its own (`teebus.host`)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"system name {self.name!r} must be lower-case letters, digits or '_'")
        if self.config is not type(None) and not dataclasses.is_dataclass(self.config):
            raise TypeError(f"{self.name}: config must be a dataclass, not {self.config!r}")
        for site in self.ports:
            if not _SITE.match(site) or not site.startswith(self.name + "-"):
                raise ValueError(f"{self.name}: site {site!r} must be named '{self.name}-<what>'")
        names = [c.name for c in self.components]
        if len(names) != len(set(names)):
            raise ValueError(f"{self.name}: component names repeat: {names}")
        for subject in self.secret_subjects:
            tokens = subject.split(".")
            if (not subject.startswith(self.name + ".") or "" in tokens or ">" in tokens[:-1]
                    or any(c.isspace() for c in subject)):
                raise ValueError(f"{self.name}: secret subject {subject!r} must be one of its own subjects, "
                                 f"'{self.name}.<...>' (wildcards * and a last >)")

    @property
    def role(self) -> str:
        """The NATS role (user) every component of this system connects as."""
        return self.name

    def role_name(self, role: RoleSpec) -> str:
        return f"{self.name}-{role.name}"

    def component_names(self) -> list[str]:
        return [f"{self.name}.{component.name}" for component in self.components]

    def adapter_names(self) -> list[str]:
        return [f"{adapter.kind}.{self.name}" for adapter in self.adapters]

    def host(self, name: str) -> HostSpec:
        for spec in self.hosts:
            if spec.name == name:
                return spec
        raise ValueError(f"{self.name} declares no host {name!r}; it declares "
                         f"{', '.join(h.name for h in self.hosts) or 'none'}")

    def default_config(self) -> Any:
        return None if self.config is type(None) else self.config()
