"""What a keep loader may do on the bus: its own keep's subjects, the payload store, nothing else."""

from __future__ import annotations

from typing import Any

from components.enarx import subjects

# The Object Store bucket for payloads above max_payload (bus/payloads.py), as in nats.conf.
PAYLOAD_STORE = [
    "$JS.API.INFO", "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.INFO.OBJ_teebus_payloads", "$JS.API.STREAM.MSG.GET.OBJ_teebus_payloads",
    "$JS.API.STREAM.PURGE.OBJ_teebus_payloads", "$JS.API.DIRECT.GET.OBJ_teebus_payloads",
    "$JS.API.DIRECT.GET.OBJ_teebus_payloads.>", "$JS.API.CONSUMER.CREATE.OBJ_teebus_payloads",
    "$JS.API.CONSUMER.CREATE.OBJ_teebus_payloads.>", "$JS.API.CONSUMER.DELETE.OBJ_teebus_payloads.>",
    "$O.teebus_payloads.>", "$JS.FC.>", "$JS.ACK.OBJ_teebus_payloads.>",
]


def user_name(kuuid: str) -> str:
    return f"keep-{kuuid}"


def inbox_prefix(kuuid: str) -> str:
    """Replies to this keep arrive under its own inbox prefix, which no other keep may read."""
    return f"_INBOX.{kuuid}"


def permissions(kuuid: str) -> dict[str, Any]:
    """NATS permissions of the user of keep `kuuid`."""
    return {
        "publish": {"allow": [subjects.keep(kuuid), subjects.workload(kuuid), subjects.report(kuuid),
                              *PAYLOAD_STORE]},
        "subscribe": {"allow": [f"{inbox_prefix(kuuid)}.>", "$SRV.>", "$O.teebus_payloads.>",
                                subjects.keep(kuuid), subjects.workload(kuuid),
                                subjects.control("*", kuuid)]},
        "allow_responses": True,
    }
