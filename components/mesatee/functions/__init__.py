"""The Function Node's functions: what a task computes, apart from how it is fetched and recorded.

A function is a module of this package with
* `NAME: str` -- the `function_name` of tasks it serves;
* `MULTIPARTY: bool` -- TMS makes its tasks Multiparty (every collaborator approves first);
* `INLINE: bool` -- cheap enough to run in the caller's event loop (no file I/O, O(1) work), so
  it never waits behind long tasks for a worker process; everything else runs in a worker
  (`components/mesatee/function_pool.py`);
* `output_owners(inputs) -> list[str]` -- the owners, in order, of the outputs `run` returns;
* `run(invocation) -> Outcome` -- the computation: the result string and each output's
  plaintext, which the caller registers with TDFS (its sha256 and size decide the new file's
  record, and TDFS hands out the key it is sealed under: `files.write_sealed`). It raises
  `FunctionFailed` with a reason a
  person can act on, which the task keeps and its users see. Reasons name files and owners,
  never contents or digests of contents: the collaborators of a task see them too.

Adding a function is one new module in this package: every module here that defines `NAME` is
a function (`files` is the shared helper, and defines none). Everything that crosses to a worker
process is a frozen dataclass of plain values, so it pickles.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any, Mapping

from components.mesatee.kms_messages import AD_BYTES, KEY_BYTES, NONCE_BYTES

_SHA256_HEX = re.compile(r"[0-9a-f]{64}\Z")
_INTERFACE = ("NAME", "MULTIPARTY", "INLINE", "output_owners", "run")


class FunctionFailed(Exception):
    """The task failed; the message is the reason kept on the task and shown to its users."""


class UnknownFunction(FunctionFailed, KeyError):
    """No function has this name (a KeyError for lookups, a task failure for the pool)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown function"


@dataclass(frozen=True)
class KeyConfig:
    """An AES-256-GCM key config from the KMS. The key stays out of repr, hence out of logs."""

    key: bytes = field(repr=False)
    nonce: bytes
    ad: bytes

    def __post_init__(self) -> None:
        for name, want in (("key", KEY_BYTES), ("nonce", NONCE_BYTES), ("ad", AD_BYTES)):
            value = getattr(self, name)
            if not isinstance(value, bytes):
                raise TypeError(f"KeyConfig.{name} must be bytes, not {type(value).__name__}")
            if len(value) != want:
                raise ValueError(f"KeyConfig.{name} must be {want} bytes, not {len(value)}")


@dataclass(frozen=True)
class InputFile:
    """A TDFS file a task reads: `path` holds AES-GCM `ciphertext || tag` of `size` plaintext
    bytes whose sha256 (hex) is `sha256`, as its owner registered them."""

    owner: str
    file_id: str
    path: str
    key: KeyConfig
    sha256: str
    size: int

    def __post_init__(self) -> None:
        _require_text(self, "owner", "file_id", "path")
        if not isinstance(self.key, KeyConfig):
            raise TypeError("InputFile.key must be a KeyConfig")
        digest = self.sha256.lower() if isinstance(self.sha256, str) else None
        if digest is None or not _SHA256_HEX.match(digest):
            raise ValueError(f"InputFile.sha256 of {self.file_id} must be 64 hex digits")
        object.__setattr__(self, "sha256", digest)  # TDFS documents lower case; accept either
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f"InputFile.size of {self.file_id} must be a non-negative integer")


@dataclass(frozen=True)
class Invocation:
    """One run of a function: the invoke payload and the task's inputs in task order (a tuple)."""

    function: str
    payload: str | None
    inputs: tuple[InputFile, ...] = ()

    def __post_init__(self) -> None:
        _require_text(self, "function")
        if self.payload is not None and not isinstance(self.payload, str):
            raise TypeError("Invocation.payload must be a string or None")
        values = tuple(self.inputs)
        if not all(isinstance(value, InputFile) for value in values):
            raise TypeError("Invocation.inputs must hold InputFile values")
        object.__setattr__(self, "inputs", values)


@dataclass(frozen=True)
class Outcome:
    """What a run gives back: the task's result string and each output's plaintext, in the order
    of `output_owners(inputs)`."""

    result: str
    outputs: tuple[bytes, ...] = ()


def _require_text(instance: Any, *names: str) -> None:
    for name in names:
        value = getattr(instance, name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"{type(instance).__name__}.{name} must be a non-empty string")


def check_function(candidate: Any) -> Any:
    """`candidate` if it has the interface a function module must have, else TypeError."""
    missing = [name for name in _INTERFACE if not hasattr(candidate, name)]
    if missing:
        raise TypeError(f"function {getattr(candidate, '__name__', candidate)!r} lacks {', '.join(missing)}")
    if not isinstance(candidate.NAME, str) or not candidate.NAME:
        raise TypeError(f"function {candidate.__name__!r}: NAME must be a non-empty string")
    return candidate


def _load() -> Mapping[str, ModuleType]:
    found = [importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__)]
    modules = sorted((check_function(module) for module in found if hasattr(module, "NAME")),
                     key=lambda module: module.NAME)
    names = [module.NAME for module in modules]
    if len(names) != len(set(names)):
        raise TypeError(f"two function modules declare one NAME: {names}")
    return MappingProxyType({module.NAME: module for module in modules})


FUNCTIONS: Mapping[str, ModuleType] = _load()


def function(name: str) -> ModuleType:
    """The module serving `name`; UnknownFunction (a KeyError) names the ones there are."""
    try:
        return FUNCTIONS[name]
    except KeyError:
        raise UnknownFunction(f"no function named {name!r}; this function node serves: "
                              f"{', '.join(sorted(FUNCTIONS))}") from None


def is_multiparty(name: str) -> bool:
    """True for functions whose tasks wait for every collaborator; unknown names are Single."""
    module = FUNCTIONS.get(name)
    return bool(module is not None and module.MULTIPARTY)
