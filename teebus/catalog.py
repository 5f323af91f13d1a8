"""Every runnable piece by name: what `teebus up` starts and what `teebus run NAME` accepts."""

from __future__ import annotations

import importlib
from typing import Any

COMPONENTS = {
    "mesatee.kms": "components.mesatee.kms:KmsComponent",
    "enarx.keepmgr": "components.enarx.keepmgr:KeepManager",
}

HTTP_ADAPTERS = {
    "http.mesatee": "adapters.http.mesatee:sites",
    "http.enarx": "adapters.http.enarx:sites",
}


def load(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def names() -> list[str]:
    return [*COMPONENTS, *HTTP_ADAPTERS]


def check(requested: list[str]) -> None:
    unknown = [name for name in requested if name not in COMPONENTS and name not in HTTP_ADAPTERS]
    if unknown:
        raise ValueError(f"unknown component or adapter {', '.join(unknown)}; "
                         f"known: {', '.join(names())}")
