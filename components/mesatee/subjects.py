"""Every MesaTEE subject, built here and nowhere else.

`<system>.<service>.<entity>.<operation>`, with `internal` as the third token for what only
components and the internal ports (behind the internal credential) may reach.
"""

SYSTEM = "mesatee"

# KMS is internal in MesaTEE (the enclave API on port 6016): `internal` keeps adapters out.
KMS_OPERATIONS = ("Create", "Get", "Delete")
TDFS_OPERATIONS = ("Create", "Get", "List", "Delete")          # external (5065)
TDFS_INTERNAL_OPERATIONS = ("Create", "Get")                   # internal (5066)
TMS_OPERATIONS = ("Create", "Get", "Update", "List")           # external (5554)
TMS_INTERNAL_OPERATIONS = ("Get", "Update")                    # internal (5555)
USERS_OPERATIONS = ("authenticate", "add", "list", "remove", "rotate")


def kms(operation: str) -> str:
    """`mesatee.kms.internal.create` and friends, from the request's `type` tag."""
    return f"{SYSTEM}.kms.internal.{operation.lower()}"


def users(operation: str) -> str:
    """`mesatee.users.internal.authenticate` and friends: the user registry (components/mesatee/users.py)."""
    return f"{SYSTEM}.users.internal.{operation}"


def tdfs(operation: str) -> str:
    """`mesatee.tdfs.file.create` ...: the external Trusted DFS, from the request's `type` tag."""
    return f"{SYSTEM}.tdfs.file.{operation.lower()}"


def tdfs_internal(operation: str) -> str:
    """`mesatee.tdfs.internal.file.create` ...: the internal Trusted DFS."""
    return f"{SYSTEM}.tdfs.internal.file.{operation.lower()}"


# The HTTP adapter asks here, for an authenticated user, where a file's encrypted bytes go or come from.
TDFS_ACCESS = f"{SYSTEM}.tdfs.file.access"


def tms(operation: str) -> str:
    """`mesatee.tms.task.create` ...: the external Task Management Service."""
    return f"{SYSTEM}.tms.task.{operation.lower()}"


def tms_internal(operation: str) -> str:
    """`mesatee.tms.internal.task.get` ...: the internal Task Management Service."""
    return f"{SYSTEM}.tms.internal.task.{operation.lower()}"


FNS_INVOKE = f"{SYSTEM}.fns.task.invoke"
