"""Conclave's manifest: what teebus runs, configures and permits for it (bus/manifest.py)."""

from bus.manifest import AdapterSpec, ComponentSpec, Manifest
from components.conclave.config import ConclaveConfig
from components.conclave.subjects import SYSTEM, deliver, poll

KDS_SEALING_KEY_FILE = "conclave/kds.sealing.key"   # seals the KDS master secrets, alike on every machine

MANIFEST = Manifest(
    name=SYSTEM,
    summary="Conclave web host: enclave, durable mailboxes, key derivation service",
    config=ConclaveConfig,
    components=(ComponentSpec("enclave", "components.conclave.enclave:Enclave"),
                ComponentSpec("mailbox", "components.conclave.mailbox:Mailboxes"),
                ComponentSpec("kds", "components.conclave.kds:Kds")),
    adapters=(AdapterSpec("http", "adapters.http.conclave:sites"),),
    ports={"conclave-host": 8080, "conclave-kds": 8090},
    buckets=("conclave_kds",),
    shared_keys=(KDS_SEALING_KEY_FILE,),
    streams=("CONCLAVE_MAIL",),
    # a mail's and a poll's Correlation-ID (a bus header) is all it takes to poll that mailbox empty
    secret_subjects=(deliver("*"), poll("*")),
    verbs="components.conclave.cli:register",
)
