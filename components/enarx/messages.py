"""Enarx messages in serde's CBOR form, as the Rust client encoded them (see FACTS.md).

A struct is a map with text keys, a unit enum variant a text string, `None` null. Decoders accept a
UUID as 16 bytes or as text and bytes as a byte string or an array of small integers; encoders emit
byte strings. Records in KV keep the same fields in JSON form (UUID as text, bytes as PEM text).
"""

from __future__ import annotations

import re
import reprlib
import uuid
from typing import Any

from bus.errors import BadRequest
from components.enarx.keep_record import KeepRecord

BACKENDS = ("Nil", "Sev", "Sgx", "Kvm")
SUCCESS, FAILURE = "Success", "Failure"
MAX_TEXT = 4096
# A host name as EnarxConfig.host and `?host=` take it (the pattern Aurae's host setting uses): no
# spaces or NATS wildcards, so it always makes a valid subject token (subjects.host_token).
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def error(details: str) -> dict[str, str]:
    """LocalCborErr."""
    return {"details": details}


def parse_uuid(value: Any, field: str) -> str:
    """A UUID from 16 bytes, text, or a cbor2 UUID; returned in canonical text form."""
    try:
        if isinstance(value, uuid.UUID):
            return str(value)
        if isinstance(value, (bytes, bytearray)) and len(value) == 16:
            return str(uuid.UUID(bytes=bytes(value)))
        if isinstance(value, list) and len(value) == 16:
            return str(uuid.UUID(bytes=parse_bytes(value, field)))
        if isinstance(value, str):
            return str(uuid.UUID(value))
    except ValueError:
        pass
    raise BadRequest(f"{field} must be a UUID (16-byte byte string or text such as "
                     f"'67e55044-10b1-426f-9247-bb680e5fe0c8'), got {_show(value)}")


def uuid_bytes(text: str) -> bytes:
    return uuid.UUID(text).bytes


def parse_bytes(value: Any, field: str) -> bytes:
    """serde `Vec<u8>`: a byte string, or an array of integers 0-255."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, list):
        try:
            return bytes(value)
        except (TypeError, ValueError):
            pass
    raise BadRequest(f"{field} must be a byte string or an array of integers 0-255, got {_show(value)}")


def parse_text(value: Any, field: str, optional: bool = False, limit: int = MAX_TEXT) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be text, got {_show(value)}")
    if len(value) > limit:
        raise BadRequest(f"{field} is {len(value)} characters long; the limit is {limit}")
    return value


def parse_host(value: Any, field: str) -> str:
    """A host name (HOST_NAME): what names one host's keep managers."""
    if not isinstance(value, str) or not HOST_NAME.fullmatch(value):
        raise BadRequest(f"{field} must be a host name (letters, digits, '.', '_' and '-', starting with a "
                         f"letter or digit, at most 253 characters), got {_show(value)}")
    return value


def parse_backend(value: Any) -> str:
    if isinstance(value, dict) and len(value) == 1:  # serde's externally tagged form {"Nil": null}
        value = next(iter(value))
    if value not in BACKENDS:
        raise BadRequest(f"backend must be one of {', '.join(BACKENDS)}, got {_show(value)}")
    return value


def require_map(value: Any, what: str, fields: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"the body must be a CBOR map ({what}), got {_show(value)}")
    missing = [name for name in fields if name not in value]
    if missing:
        raise BadRequest(f"{what} is missing {', '.join(missing)}")
    return value


def parse_contract(value: Any) -> dict[str, Any]:
    """A KeepContract as sent to /new_keep/: {keepmgr: {address, port}, backend, uuid[, socket_path]}."""
    body = require_map(value, "KeepContract", ("keepmgr", "backend", "uuid"))
    keepmgr = require_map(body["keepmgr"], "KeepContract.keepmgr", ("address", "port"))
    port = keepmgr["port"]
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise BadRequest(f"keepmgr.port must be an integer 0-65535, got {_show(port)}")
    return {"keepmgr": {"address": parse_text(keepmgr["address"], "keepmgr.address"), "port": port},
            "backend": parse_backend(body["backend"]), "uuid": parse_uuid(body["uuid"], "uuid"),
            "socket_path": parse_text(body.get("socket_path"), "socket_path", optional=True)}


def contract_cbor(contract: dict[str, Any]) -> dict[str, Any]:
    """A stored contract in serde form."""
    result = {"keepmgr": contract["keepmgr"], "backend": contract["backend"],
              "uuid": uuid_bytes(contract["uuid"])}
    if contract.get("socket_path"):
        result["socket_path"] = contract["socket_path"]
    return result


def keep_cbor(keep: KeepRecord) -> dict[str, Any]:
    """A stored keep record in serde form (Keep plus socket_path and certificate_as_pem)."""
    extra = {"error": keep.error} if keep.error else {}
    return {**extra, "backend": keep.backend, "kuuid": uuid_bytes(keep.kuuid), "state": str(keep.state),
            "wasmldr": keep.wasmldr, "human_readable_info": keep.human_readable_info,
            "socket_path": keep.socket_path,
            "certificate_as_pem": keep.certificate_as_pem.encode() if keep.certificate_as_pem else None}


def parse_workload(value: Any) -> dict[str, Any]:
    """A Workload plus our extensions args/env/stdin (DESIGN.md), checked for shape; its sizes and
    counts are checked once, against the keep's limits, by the runner (wasm_limits.check_request)."""
    body = require_map(value, "Workload", ("wasm_binary",))
    args = body.get("args") or []
    env = body.get("env") or {}
    if not isinstance(args, list):
        raise BadRequest("args must be a list of texts")
    if not isinstance(env, dict):
        raise BadRequest("env must be a map of text -> text entries")
    stdin = parse_bytes(body.get("stdin") or b"", "stdin")
    return {"wasm_binary": parse_bytes(body["wasm_binary"], "wasm_binary"),
            "human_readable_info": parse_text(body.get("human_readable_info"), "human_readable_info",
                                              optional=True),
            "args": [parse_text(arg, "args[]") for arg in args],
            "env": {parse_text(k, "env key"): parse_text(v, f"env[{k!r}]") for k, v in env.items()},
            "stdin": stdin}


_SHORT = reprlib.Repr()  # keyword arguments arrive in Python 3.12
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 40, 40, 6, 4, 2


def _show(value: Any) -> str:
    """A short picture of a bad value; never builds the repr of a huge one."""
    if isinstance(value, (bytes, bytearray)):
        return f"{len(value)} bytes {bytes(value[:16])!r}{'...' if len(value) > 16 else ''}"
    return _SHORT.repr(value)
