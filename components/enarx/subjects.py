"""Every Enarx subject, built here and nowhere else.

Several hosts' keep managers may share one bus. The shared subjects (`NEW_KEEP` and the others)
are served by every keep manager in one queue group, so any of them answers; `new_keep_on(host)` and
`delete_on(host)` reach one host's keep managers only. A host name becomes one subject token with
its dots as `_` (as Aurae's subjects do).
"""

from __future__ import annotations

SYSTEM = "enarx"

CONTRACTS = "enarx.keepmgr.contracts"
NEW_KEEP = "enarx.keepmgr.new_keep"
KEEPS = "enarx.keepmgr.keeps"
KEEP_GET = "enarx.keepmgr.keep.get"
KEEP_DELETE = "enarx.keepmgr.keep.delete"
REPORTS = "enarx.keepmgr.internal.report.*"


def host_token(host: str) -> str:
    """A host name as one subject token (a NATS token holds no dots)."""
    return host.replace(".", "_")


def new_keep_on(host: str) -> str:
    """`new_keep` for one host's keep managers only (`POST /new_keep?host=NAME`)."""
    return f"{NEW_KEEP}.{host_token(host)}"


def delete_on(host: str) -> str:
    """A keep manager hands the shutdown of another host's keep to that host's keep manager, which
    alone can wait for and signal the keep's process (internal)."""
    return f"enarx.keepmgr.internal.delete.{host_token(host)}"


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
