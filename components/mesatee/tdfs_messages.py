"""The Trusted DFS messages of the seed, validated: shared by the TDFS component and its HTTP adapter.

Requests and responses are the seed's tagged JSON (`{"type": "Create", ...}`), unchanged on the bus.
The adapter parses a body to refuse it early and to pick the subject; the component parses the same
bytes again, so nothing reaches a rule unvalidated. Unknown fields are ignored, as serde does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from bus.errors import BadRequest
from components.mesatee import fields
from components.mesatee.subjects import TDFS_INTERNAL_OPERATIONS, TDFS_OPERATIONS

TAG_BYTES = 16                         # AES-GCM tag after the ciphertext: a stored file is file_size + 16
MAX_FILE_SIZE = 2 ** 32 - 1            # file_size is a u32
MAX_STORED_BYTES = MAX_FILE_SIZE + TAG_BYTES
MAX_FILE_NAME_CHARS = 1024
MAX_TASK_ID_CHARS = 128
OWNER_ONLY, COLLABORATORS, EVERYONE = 0, 1, 2    # allow_policy
POLICIES = (OWNER_ONLY, COLLABORATORS, EVERYONE)
READ, WRITE = "read", "write"                     # modes of an access request (upload/download)
_HEX64 = re.compile(r"[0-9a-fA-F]{64}\Z")


@dataclass(frozen=True)
class TdfsRequest:
    """One validated DFSRequest; fields an operation does not take stay at their defaults."""

    operation: str
    user_id: str = ""
    user_token: str = field(default="", repr=False)
    file_id: str = ""
    file_name: str = ""
    sha256: str = ""
    file_size: int = 0
    task_id: str | None = None
    collaborator_list: tuple[str, ...] = ()
    allow_policy: int = OWNER_ONLY


@dataclass(frozen=True)
class AccessRequest:
    """Where may this user read or write a file's encrypted bytes (subjects.TDFS_ACCESS)."""

    file_id: str
    user_id: str
    user_token: str = field(repr=False)
    mode: str


# -- fields ---------------------------------------------------------------------------------------------


def is_file_id(value: str) -> bool:
    """Whether `value` is a file id as the TDFS makes them (a lower-case UUID)."""
    return fields.is_canonical_uuid(value)


def parse_sha256(value: Any) -> str:
    """The plaintext's SHA-256 as 64 hexadecimal digits (either case), kept in lower case."""
    if not isinstance(value, str) or not _HEX64.match(value):
        raise BadRequest("sha256 must be the plaintext's SHA-256 as 64 hexadecimal digits")
    return value.lower()


def parse_file_size(value: Any) -> int:
    """The plaintext's size, a u32."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"file_size must be an integer (the plaintext's size in bytes), not {fields.json_type(value)}")
    if not 0 <= value <= MAX_FILE_SIZE:
        raise BadRequest(f"file_size must be between 0 and {MAX_FILE_SIZE} (a u32), not {value}")
    return value


def parse_policy(value: Any) -> int:
    if isinstance(value, bool) or value not in POLICIES:
        raise BadRequest("allow_policy must be 0 (owner only), 1 (owner and collaborator_list) or 2 (everyone)")
    return value


# -- requests -------------------------------------------------------------------------------------------


def parse_request(body: Any, expected: str | None = None) -> TdfsRequest:
    """Validate an external DFSRequest (port 5065); `expected` pins the operation a bus endpoint serves."""
    operation = fields.operation(body, TDFS_OPERATIONS, expected, "external TDFS")
    credentials = fields.credentials(body, operation)
    if operation == "Create":
        return TdfsRequest(
            operation, **credentials,
            file_name=fields.text(fields.required(body, "file_name", operation), "file_name",
                                      MAX_FILE_NAME_CHARS, empty=True),
            sha256=parse_sha256(fields.required(body, "sha256", operation)),
            file_size=parse_file_size(fields.required(body, "file_size", operation)))
    if operation == "List":
        return TdfsRequest(operation, **credentials)
    return TdfsRequest(operation, **credentials, file_id=fields.uuid_id(fields.required(body, "file_id", operation), "file_id"))


def parse_internal_request(body: Any, expected: str | None = None) -> TdfsRequest:
    """Validate an internal DFSRequest (port 5066: task outputs of the TMS and FNS)."""
    operation = fields.operation(body, TDFS_INTERNAL_OPERATIONS, expected, "internal TDFS")
    if operation == "Get":
        return TdfsRequest(operation, file_id=fields.uuid_id(fields.required(body, "file_id", operation), "file_id"))
    task_id = fields.text(fields.required(body, "task_id", operation), "task_id", MAX_TASK_ID_CHARS)
    return TdfsRequest(
        operation, user_id=fields.user_id(fields.required(body, "user_id", operation)),
        file_name=task_id, task_id=task_id,        # the original named a task's output after its task
        sha256=parse_sha256(fields.required(body, "sha256", operation)),
        file_size=parse_file_size(fields.required(body, "file_size", operation)),
        collaborator_list=fields.collaborators(fields.required(body, "collaborator_list", operation)),
        allow_policy=parse_policy(fields.required(body, "allow_policy", operation)))


def parse_access(body: Any) -> AccessRequest:
    """Validate an access request (the upload/download routes ask it for an authenticated user)."""
    if not isinstance(body, dict):
        raise BadRequest('an access request is {"file_id", "user_id", "user_token", "mode"}')
    mode = fields.required(body, "mode", "access")
    if mode not in (READ, WRITE):
        raise BadRequest(f"mode must be {READ!r} or {WRITE!r}")
    return AccessRequest(fields.uuid_id(fields.required(body, "file_id", "access"), "file_id"),
                         fields.user_id(fields.required(body, "user_id", "access")),
                         fields.user_token(fields.required(body, "user_token", "access")), mode)


def may_read(user_id: str, owner: str, allow_policy: int, collaborators: Iterable[str]) -> bool:
    """TDFS's rule for who may read a file: 0 its owner, 1 and its collaborators, 2 everyone."""
    return (user_id == owner or allow_policy == EVERYONE
            or (allow_policy == COLLABORATORS and user_id in collaborators))


def stored_size(file_size: int) -> int:
    """The exact size of a file's stored bytes: ciphertext (as long as the plaintext) and the tag."""
    return file_size + TAG_BYTES


# -- responses ------------------------------------------------------------------------------------------

def create_response(file_id: str, access_path: str, key_config: Mapping[str, str]) -> dict[str, Any]:
    return {"type": "Create", "file_id": file_id, "access_path": access_path, "key_config": dict(key_config)}


def file_info(info: Mapping[str, Any], *, key_config: Mapping[str, str] | None = None,
              allow_policy: int | None = None, key_id: str | None = None) -> dict[str, Any]:
    """FileInfo in the seed's field order: external replies end with `key_config`, internal ones
    with `allow_policy` and `key_id`."""
    base = {name: info[name] for name in ("user_id", "file_name", "sha256", "file_size", "access_path",
                                          "task_id", "collaborator_list")}
    if key_config is not None:
        return {**base, "key_config": dict(key_config)}
    return {**base, "allow_policy": allow_policy, "key_id": key_id}


def info_response(operation: str, info: dict[str, Any]) -> dict[str, Any]:
    """A Get or Delete response around a `file_info`."""
    return {"type": operation, "file_info": info}


def list_response(file_ids: list[str]) -> dict[str, Any]:
    return {"type": "List", "list": file_ids}


def access_response(access_path: str, limit: int) -> dict[str, Any]:
    """`limit`: the exact size of the stored bytes (file_size + 16), the most an upload may send."""
    return {"access_path": access_path, "limit": limit}
