"""Typed errors that travel as micro error headers and come back as the same type.

A handler raises one of these; the component base turns it into `Nats-Service-Error-Code` /
`Nats-Service-Error`; the request helper turns those headers back into the same class, so an adapter
maps one exception type onto its API's error shape.
"""

from __future__ import annotations


class BusError(Exception):
    """An error with an HTTP-style status and a message a person can act on."""

    status: int = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
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


class TooLarge(BusError):
    status = 413


class Internal(BusError):
    status = 500


class Unavailable(BusError):
    status = 503


class Timeout(BusError):
    status = 504


_BY_STATUS = {cls.status: cls for cls in (BadRequest, Unauthorized, Forbidden, NotFound, Conflict,
                                           TooLarge, Internal, Unavailable, Timeout)}


def from_status(status: int, message: str) -> BusError:
    """Rebuild the typed error a responder raised from its status code."""
    cls = _BY_STATUS.get(status, BusError)
    return cls(message, status=status)
