"""MesaTEE's manifest: what teebus runs, configures and permits for it (bus/manifest.py)."""

from bus.manifest import AdapterSpec, ComponentSpec, Manifest
from components.mesatee.config import MesateeConfig
from components.mesatee.subjects import SYSTEM

MANIFEST = Manifest(
    name=SYSTEM,
    summary="MesaTEE services: KMS (more to come)",
    config=MesateeConfig,
    components=(ComponentSpec("kms", "components.mesatee.kms:KmsComponent"),),
    adapters=(AdapterSpec("http", "adapters.http.mesatee:sites"),),
    ports={"mesatee-kms": 6016},
    buckets=("mesatee_kms_keys",),
    secret_fields=("config", "nonce", "ad"),    # a KMS reply's key material
    verbs="components.mesatee.cli:register",
)
