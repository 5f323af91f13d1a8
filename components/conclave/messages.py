"""What travels between the web host's adapter and Conclave's components, checked in one place.

The adapter passes the client's `Correlation-ID` on as the bus header ROUTING_HINT and, for a long
poll, the wait it asked for as POLL_WAIT. Conclave's own errors travel as a 400 whose details name
them (`{"conclave": "MAIL_DECRYPTION" | "ENCLAVE_EXCEPTION"}`), so the adapter renders Conclave's
`{"error", "message"}` for those and its generic shape for everything else.
"""

from __future__ import annotations

import re
from typing import Mapping

from bus.errors import BadRequest

ROUTING_HINT = "Conclave-Routing-Hint"
POLL_WAIT = "Conclave-Poll-Wait"
MAX_HINT = 1024                         # characters of a Correlation-ID
MAIL_DECRYPTION, ENCLAVE_EXCEPTION = "MAIL_DECRYPTION", "ENCLAVE_EXCEPTION"
_SECONDS = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?", re.ASCII)


def check_hint(hint: str | None) -> str:
    """A Correlation-ID as the web host accepts it: present, printable ASCII, bounded."""
    if hint is None or hint == "":
        raise BadRequest("Required request header 'Correlation-ID' is not present: send the routing hint "
                         "your replies are queued under (Conclave's client sends the SHA-256 of its key)")
    if len(hint) > MAX_HINT:
        raise BadRequest(f"Correlation-ID is longer than {MAX_HINT} characters")
    if not all(" " <= c <= "~" for c in hint):
        raise BadRequest("Correlation-ID must be printable ASCII")
    return hint


def routing_hint(bus_headers: Mapping[str, str]) -> str:
    return check_hint(bus_headers.get(ROUTING_HINT))


def check_wait(value: str | None, longest: float) -> float:
    """A long poll's wait in seconds: absent means 0 (answer at once, as Conclave's host does)."""
    if value is None or value == "":
        return 0.0
    if not _SECONDS.fullmatch(value):
        raise BadRequest(f"the poll wait must be a number of seconds from 0 to {longest:g}, like 10 or 2.5")
    wait = float(value)
    if not 0 <= wait <= longest:
        raise BadRequest(f"the poll wait must be a number of seconds from 0 to {longest:g}")
    return wait


def poll_wait(bus_headers: Mapping[str, str], longest: float) -> float:
    return check_wait(bus_headers.get(POLL_WAIT), longest)


def mail_decryption() -> BadRequest:
    """The mail could not be opened (Conclave's message is always null for this one)."""
    return BadRequest("the mail could not be decrypted", details={"conclave": MAIL_DECRYPTION})


def enclave_exception(message: str | None) -> BadRequest:
    """The enclave refused the mail or its application failed; `message` None in release mode."""
    return BadRequest(message or "the enclave raised an exception",
                      details={"conclave": ENCLAVE_EXCEPTION, "message": message})
