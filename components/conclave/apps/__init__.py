"""Enclave applications: plain Python classes with a `receive_mail(mail, routing_hint)` hook.

Each module holds one application class (a subclass of `EnclaveApp`) named in APPS. Its measurement
(mrenclave) is the SHA-256 of its module's source, so changing an application's code changes its
code hash, what clients pin with `C:`, and the key that seals its state.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect

from components.conclave.apps.base import EnclaveApp, EnclaveException

APPS = {"hello-world": "components.conclave.apps.hello_world:HelloWorld",
        "key-value": "components.conclave.apps.key_value:KeyValueStore",
        "relay": "components.conclave.apps.relay:Relay"}

__all__ = ["APPS", "EnclaveApp", "EnclaveException", "load", "code_hash"]


def load(name: str) -> type[EnclaveApp]:
    module_name, _, class_name = APPS[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def code_hash(app: type[EnclaveApp]) -> bytes:
    """The application's measurement: SHA-256 of the source of the module that defines it."""
    return hashlib.sha256(inspect.getsource(inspect.getmodule(app)).encode()).digest()
