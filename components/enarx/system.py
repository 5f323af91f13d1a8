"""Enarx's manifest: what teebus runs, configures and permits for it (bus/manifest.py)."""

from bus.manifest import AdapterSpec, ComponentSpec, HostSpec, Manifest, RoleSpec
from components.enarx import keep_access
from components.enarx.config import EnarxConfig
from components.enarx.subjects import SYSTEM, workload

MANIFEST = Manifest(
    name=SYSTEM,
    summary="Enarx keep manager: contracts, keeps, WebAssembly workloads",
    config=EnarxConfig,
    components=(ComponentSpec("keepmgr", "components.enarx.keepmgr:KeepManager"),),
    adapters=(AdapterSpec("http", "adapters.http.enarx:sites"),),
    ports={"enarx-keepmgr": 3030, "enarx-wasmldr": 3040},   # wasmldr: the first keep's port
    buckets=("enarx_contracts", "enarx_keeps"),
    # a workload: the module, its env and stdin, which its client sent over TLS to the keep alone
    secret_subjects=(workload("*"),),
    roles=(RoleSpec(keep_access.SHARED_ROLE, keep_access.permissions("*"),
                    "keep loaders when the server is not teebus's to add per-keep users to"),),
    verbs="components.enarx.cli:register",
    hosts=(HostSpec("keep", "components.enarx.keep_host:main",
                    {"socket": "adapters.unix.enarx:KeepSocket", "wasmldr": "adapters.http.enarx:serve_wasmldr"}),),
)
