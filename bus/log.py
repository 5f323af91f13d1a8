"""structlog setup: JSON lines in production, key=value on a terminal, request ids everywhere.

The request id lives in a context variable (structlog.contextvars), so every log line a request
causes carries it without being passed around; secrets are redacted by key name before rendering:
the kernel's words below, plus the fields each system's manifest declares (`redact`).
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from contextvars import ContextVar
from typing import Any, MutableMapping, TextIO

import structlog

from bus import log_shipping

# The request being served in this task and what its log lines carry: one variable set once per
# request (cheaper than structlog's one-variable-per-key contextvars), merged in at log time.
_request: ContextVar[dict[str, Any] | None] = ContextVar("teebus_request", default=None)

REDACTED = "[redacted]"
# Field names that are secrets wherever they appear, also as a prefix (`token_x`) or suffix (`user_token`).
_SECRET_WORDS = ("key", "token", "password", "secret", "authorization")
_secret_fields: set[str] = set(_SECRET_WORDS)   # exact names: the words plus what systems declare


def redact(*names: str) -> None:
    """Never render these field names in this process's logs (a manifest's `secret_fields`)."""
    _secret_fields.update(name.lower() for name in names)


def is_secret(name: str) -> bool:
    """True for a field name whose value logs (and printed settings) never show."""
    lowered = name.lower()
    return lowered in _secret_fields or any(
        lowered.endswith(word) or lowered.startswith(word + "_") for word in _SECRET_WORDS)


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace values whose key names a secret; ids (key_id, request_id) stay readable."""
    for name in list(event):
        if name.endswith("_id") or name in ("event", "level", "timestamp", "component"):
            continue
        if is_secret(name):
            event[name] = REDACTED
    return event


def merge_request(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Add the current request's id and context to a log line (values the line sets win)."""
    context = _request.get()
    if context:
        for name, value in context.items():
            event.setdefault(name, value)
    return event


def configure(level: str = "info", json: bool | None = None, stream: TextIO | None = None) -> None:
    """Configure structlog for this process (callable again, e.g. by tests capturing lines)."""
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            merge_request,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            log_shipping.ship,           # the bus's copy, when this process ships its lines
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,  # module-level loggers follow a later configure()
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger bound to a component or adapter name (lazy: safe to create at import time)."""
    return structlog.get_logger(component=name)


_ID_PREFIX = os.urandom(8).hex()  # this process's ids: a random prefix and a counter (32 hex digits)
_id_counter = itertools.count(1)


def new_request_id() -> str:
    """A request id unique across processes (random prefix) that costs no system call."""
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def bind_request(request_id: str, **values: Any) -> None:
    """Start a request's logging context (called once per request by components and adapters)."""
    _request.set({"request_id": request_id, **values})


def current_request_id() -> str | None:
    """The request being served in this task (its own variable: read on every outgoing request)."""
    context = _request.get()
    return context["request_id"] if context else None
