"""MesaTEE's manifest: what teebus runs, configures and permits for it (bus/manifest.py)."""

from bus.manifest import AdapterSpec, CommandSpec, ComponentSpec, Manifest
from components.mesatee.config import MesateeConfig
from components.mesatee.subjects import FNS_INVOKE, SYSTEM, tdfs, tms

MASTER_KEY_FILE = "mesatee/kms.master.key"     # the KMS's sealing key, alike on every machine running it

MANIFEST = Manifest(
    name=SYSTEM,
    summary="MesaTEE services: users, KMS, Trusted DFS, task management, function node",
    config=MesateeConfig,
    components=(ComponentSpec("kms", "components.mesatee.kms:KmsComponent"),
                ComponentSpec("users", "components.mesatee.users:UsersComponent"),
                ComponentSpec("tdfs", "components.mesatee.tdfs:TdfsComponent"),
                ComponentSpec("tms", "components.mesatee.tms:TmsComponent"),
                ComponentSpec("fns", "components.mesatee.fns:FnsComponent"),),
    adapters=(AdapterSpec("http", "adapters.http.mesatee:sites"),),
    ports={"mesatee-kms": 6016, "mesatee-tdfs": 5065, "mesatee-tdfs-internal": 5066,
           "mesatee-tms": 5554, "mesatee-tms-internal": 5555, "mesatee-fns": 3444},
    buckets=("mesatee_kms_keys", "mesatee_users", "mesatee_tdfs_files", "mesatee_tms_tasks"),
    shared_keys=(MASTER_KEY_FILE,),
    secret_fields=("config", "nonce", "ad",     # a KMS reply's key material
                   "user_token", "token"),     # a user's credential (users.py)
    # every request to the TMS and the TDFS carries the user's token, every invocation the task's
    secret_subjects=(tms("*"), tdfs("*"), FNS_INVOKE),
    verbs="components.mesatee.cli:register",
    commands=(CommandSpec("users", "components.mesatee.users_cli:register",
                          "MesaTEE users: add, list, remove, rotate (tokens shown once)"),),
    demo="components.mesatee.users_cli:create_demo_users",
)
