"""Aurae's manifest: what teebus runs, configures and permits for it (bus/manifest.py)."""

from bus.manifest import AdapterSpec, ComponentSpec, Manifest
from components.aurae.config import AuraeConfig
from components.aurae.subjects import OUTPUT_STREAM, SYSTEM

MANIFEST = Manifest(
    name=SYSTEM,
    summary="Aurae runtime: executables, cells, daemon and process logs, schedules (gRPC on a Unix socket)",
    config=AuraeConfig,
    components=(ComponentSpec("runtime", "components.aurae.runtime:Runtime"),
                ComponentSpec("observe", "components.aurae.observe:Observe"),
                ComponentSpec("schedule", "components.aurae.schedule:Schedule")),
    adapters=(AdapterSpec("unix", "adapters.unix.aurae:listeners"),),
    buckets=("aurae_schedule",),
    streams=(OUTPUT_STREAM,),
    reads_logs=True,
    verbs="components.aurae.cli:register",
)
