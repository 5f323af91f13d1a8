"""JetStream streams a system owns beside its KV buckets (a mailbox, a log): what their owner may do."""

from __future__ import annotations


def permissions(stream: str) -> list[str]:
    """What the owner of `stream` may publish: its JetStream API calls (create, info, direct get,
    message get and delete, consumers) and acknowledgements; its subjects are the system's own already."""
    return [f"$JS.API.*.*.{stream}", f"$JS.API.*.*.{stream}.>", f"$JS.API.STREAM.MSG.*.{stream}", f"$JS.ACK.{stream}.>", "$JS.FC.>",
            "$JS.API.INFO"]
