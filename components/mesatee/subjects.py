"""Every MesaTEE subject, built here and nowhere else."""

SYSTEM = "mesatee"

# KMS is internal in MesaTEE (the enclave API on port 6016): `internal` keeps adapters out.
KMS_OPERATIONS = ("Create", "Get", "Delete")


def kms(operation: str) -> str:
    """`mesatee.kms.internal.create` and friends, from the request's `type` tag."""
    return f"{SYSTEM}.kms.internal.{operation.lower()}"
