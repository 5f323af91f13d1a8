"""Cyborg's manifest: what teebus runs, configures and permits for it (bus/manifest.py)."""

from bus.manifest import AdapterSpec, ComponentSpec, Manifest
from components.cyborg.config import CyborgConfig
from components.cyborg.subjects import SYSTEM

MANIFEST = Manifest(
    name=SYSTEM,
    summary="Cyborg accelerator management: drivers, agents, conductor",
    config=CyborgConfig,
    components=(ComponentSpec("conductor", "components.cyborg.conductor:Conductor"),
                ComponentSpec("agent", "components.cyborg.agent:Agent"),
                ComponentSpec("pci", "components.cyborg.driver:PciDriver"),
                ComponentSpec("nvidia", "components.cyborg.driver:NvidiaDriver"),
                ComponentSpec("inventory", "components.cyborg.driver:InventoryDriver")),
    adapters=(AdapterSpec("http", "adapters.http.cyborg:sites"),),
    ports={"cyborg-conductor": 6666, "cyborg-agent": 6667,
           "cyborg-pci": 6670, "cyborg-nvidia": 6671, "cyborg-inventory": 6672},
    buckets=("cyborg_agents", "cyborg_leases", "cyborg_devices", "cyborg_drivers"),
    verbs="components.cyborg.cli:register",
)
