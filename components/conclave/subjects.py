"""Every Conclave subject, built here and nowhere else.

The web host's three calls and the KDS are external (the `adapter` role may request them). Stored
mail sits on the mailbox stream under an `internal` subject, so only Conclave's components may
write or read it. Per-instance parts go last: `conclave.enclave.deliver.<enclave>`.
"""

import hashlib

SYSTEM = "conclave"
MAIL_STREAM = "CONCLAVE_MAIL"


def enclave_token(name: str) -> str:
    """An enclave name as one subject token (names are checked in config.py: letters, digits, - and _)."""
    return name


def hint_token(routing_hint: str) -> str:
    """A routing hint (any string a client chose) as one fixed-size subject token."""
    return hashlib.sha256(routing_hint.encode("utf-8", "surrogatepass")).hexdigest()


def attestation(enclave: str) -> str:
    return f"{SYSTEM}.enclave.attestation.{enclave_token(enclave)}"


def deliver(enclave: str) -> str:
    return f"{SYSTEM}.enclave.deliver.{enclave_token(enclave)}"


def poll(enclave: str) -> str:
    return f"{SYSTEM}.mailbox.poll.{enclave_token(enclave)}"


def stored_mail(enclave: str, routing_hint: str) -> str:
    """Where one routing hint's queued mail is stored (the mailbox stream)."""
    return f"{SYSTEM}.mailbox.internal.mail.{enclave_token(enclave)}.{hint_token(routing_hint)}"


def stored_mail_filter(enclave: str | None = None) -> str:
    return f"{SYSTEM}.mailbox.internal.mail.{enclave_token(enclave) if enclave else '*'}.*"


KDS_PUBLIC = f"{SYSTEM}.kds.public"
KDS_PRIVATE = f"{SYSTEM}.kds.private"
