"""Conclave's mail ordering: per (sender key, topic) the numbers go 0, 1, 2... and nothing else.

A watermark per pair starts at -1; a mail is accepted only if its number is exactly watermark + 1
(conclave-wire.md §7). The check runs before the application sees the mail, and a refused mail does
not move the watermark. The messages follow Conclave's and name the number expected; Conclave's web
host answered these with a 500, ours with 400 ENCLAVE_EXCEPTION (docs/conclave.md).
"""

from __future__ import annotations

from components.conclave.mail import Mail


class SequenceError(Exception):
    """A replayed, skipped or out-of-order mail."""


def check_sequence(watermarks: dict[str, int], key: str, mail: Mail, max_senders: int) -> None:
    """Raise SequenceError unless `mail` is the next one of its (sender, topic); changes nothing."""
    number, topic = mail.header.sequence_number, mail.header.topic
    last = watermarks.get(key)
    if last is None:
        if number != 0:
            raise SequenceError(
                f"First time seeing mail with sender key {mail.sender.hex()} and topic {topic} so the sequence "
                f"number must be zero but is instead {number}. It may be the host is delivering mail out of order.")
        if len(watermarks) >= max_senders:
            raise SequenceError(f"this enclave already follows {max_senders} sender keys and topics; use an "
                                "existing topic")
        return
    expected = last + 1
    if number <= last:
        raise SequenceError(
            f"Mail with sequence number {number} on topic {topic} has already been seen, was expecting "
            f"{expected}. Make sure the same post office is used for the same sender key and topic, or if the "
            "sender key is long-term then a per-process topic is used.")
    if number != expected:
        raise SequenceError(
            f"Next sequence number on topic {topic} should be {expected} but is instead {number}. It may be "
            "that mail was dropped or the host is delivering out of order.")
