"""Every Enarx subject, built here and nowhere else."""

SYSTEM = "enarx"

CONTRACTS = "enarx.keepmgr.contracts"
NEW_KEEP = "enarx.keepmgr.new_keep"
KEEPS = "enarx.keepmgr.keeps"
KEEP_GET = "enarx.keepmgr.keep.get"
KEEP_DELETE = "enarx.keepmgr.keep.delete"
REPORTS = "enarx.keepmgr.internal.report.*"


def report(kuuid: str) -> str:
    """A keep loader tells the keep manager about its keep's progress (internal)."""
    return f"enarx.keepmgr.internal.report.{kuuid}"


def keep(kuuid: str) -> str:
    """The opaque conversation with one keep's loader (raw bytes both ways)."""
    return f"enarx.keep.{kuuid}"


def workload(kuuid: str) -> str:
    """One keep's wasmldr: a CBOR Workload in, its result out."""
    return f"enarx.wasmldr.workload.{kuuid}"


def control(operation: str, kuuid: str) -> str:
    """Keep loader control (ping, shutdown): components only."""
    return f"enarx.keepldr.internal.{operation}.{kuuid}"


def kuuid_of(subject: str) -> str:
    """The keep id: always the last token of a per-keep subject."""
    return subject.rsplit(".", 1)[-1]
