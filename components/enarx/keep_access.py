"""What a keep loader may do on the bus: its own keep's subjects and payloads, nothing else."""

from __future__ import annotations

from typing import Any

from bus import payloads
from components.enarx import subjects

# The role keep loaders share when the server is not teebus's to add per-keep users to (`--nats URL`):
# declared in the manifest as `keepldr`, so its NATS user is `enarx-keepldr`.
SHARED_ROLE = "keepldr"
SHARED_USER = f"{subjects.SYSTEM}-{SHARED_ROLE}"


def user_name(kuuid: str) -> str:
    return f"keep-{kuuid}"


# Keeps' inbox prefixes and payload names sit under one token of their own, so the shared role's
# wildcard (`permissions("*")`) reaches other keeps only, never a static role's replies or payloads.
PRINCIPALS = f"{subjects.SYSTEM}-keep"


def principal(kuuid: str) -> str:
    return f"{PRINCIPALS}.{kuuid}"


def inbox_prefix(kuuid: str) -> str:
    """Replies to this keep arrive under its own inbox prefix, which no other keep may read."""
    return f"_INBOX.{principal(kuuid)}"


def permissions(kuuid: str) -> dict[str, Any]:
    """NATS permissions of the user of keep `kuuid`."""
    return {
        "publish": {"allow": [subjects.keep(kuuid), subjects.workload(kuuid), subjects.report(kuuid),
                              *payloads.permissions(principal(kuuid))]},
        "subscribe": {"allow": [f"{inbox_prefix(kuuid)}.>", "$SRV.>",
                                subjects.keep(kuuid), subjects.workload(kuuid),
                                subjects.control("*", kuuid)]},
        "allow_responses": True,
    }
