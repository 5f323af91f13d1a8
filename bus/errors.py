"""Typed errors that travel as micro error headers and come back as the same type.

A handler raises one of these; the component base turns it into `Nats-Service-Error-Code` /
`Nats-Service-Error`; the request helper turns those headers back into the same class, so an adapter
maps one exception type onto its API's error shape. Structured `details` (say, what a stopped
workload printed) travel as the error message's body (micro's error data), encoded like the
request, and the adapter renders them inside its API's error shape.
"""

from __future__ import annotations

from typing import Any, Mapping


class BusError(Exception):
    """An error with an HTTP-style status, a message a person can act on, and optional details."""

    status: int = 500

    def __init__(self, message: str, status: int | None = None,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: Mapping[str, Any] = details or {}
        if status is not None:
            self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.message!r})"


class BadRequest(BusError):
    status = 400


class Unauthorized(BusError):
    status = 401


class Forbidden(BusError):
    status = 403


class NotFound(BusError):
    status = 404


class Conflict(BusError):
    status = 409


class PreconditionFailed(BusError):
    """The host lacks what the request needs (a kernel feature, a device): nothing the caller can fix."""

    status = 412


class ReplicasRefused(PreconditionFailed):
    """The deployment asks for more JetStream copies of an asset than its servers can keep (a single
    server, a cluster too small). A BusError, so `teebus` prints just its message when a component's
    setup or the bootstrap raises it, and a request that meets it gets it as a 412, not a traceback;
    its own class, so callers and tests can tell it from other refusals."""


class TooLarge(BusError):
    status = 413


class Unprocessable(BusError):
    """Well-formed input that was refused on its merits (a workload stopped by a limit, say)."""

    status = 422


class Internal(BusError):
    status = 500


class Unavailable(BusError):
    status = 503


class NoResponders(Unavailable):
    """Nothing subscribes to the subject: no component serves it (as against one that answered 503)."""


class Timeout(BusError):
    status = 504


_BY_STATUS = {cls.status: cls for cls in (BadRequest, Unauthorized, Forbidden, NotFound, Conflict,
                                           PreconditionFailed, TooLarge, Unprocessable, Internal, Unavailable,
                                           Timeout)}


def from_status(status: int, message: str, details: Mapping[str, Any] | None = None) -> BusError:
    """Rebuild the typed error a responder raised from its status code."""
    cls = _BY_STATUS.get(status, BusError)
    return cls(message, status=status, details=details)
