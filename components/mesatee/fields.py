"""The fields MesaTEE's messages share, validated one way for every service (KMS, TDFS, TMS, FNS).

Each parser takes the value as JSON gave it and returns it checked (and canonical), or raises
BadRequest with a message naming the field and what it should be. A message never quotes the value
it refuses: refusals are logged, and a credential sent in the wrong field (a token as an id or a
tag) must not reach the logs. Unknown fields are ignored, as serde does.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from bus.errors import BadRequest

MAX_USER_ID_CHARS = 64      # a registered user's name is no longer (user_store.py's rule)
MAX_TOKEN_CHARS = 256       # nor is a token
MAX_COLLABORATORS = 64
MAX_ID_CHARS = 64
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_SAMPLE_ID = "0a9ca5ac-2150-4bdd-ab63-c2c12252e747"


def json_type(value: Any) -> str:
    """How a person would name the JSON type of `value`."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def required(body: Mapping[str, Any], name: str, operation: str) -> Any:
    if name not in body:
        raise BadRequest(f"a {operation} request needs the field {name!r}")
    return body[name]


def text(value: Any, name: str, limit: int, *, empty: bool = False) -> str:
    """A string of at most `limit` characters (and not empty, unless `empty`)."""
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string, not {json_type(value)}")
    if not empty and not value:
        raise BadRequest(f"{name} may not be empty")
    if len(value) > limit:
        raise BadRequest(f"{name} is longer than {limit} characters")
    return value


def uuid_id(value: Any, name: str) -> str:
    """An id that is a UUID (file, task, key ids), answered in canonical lower case."""
    if not isinstance(value, str) or len(value) > MAX_ID_CHARS or not UUID.match(value):
        given = "a string of another form" if isinstance(value, str) else json_type(value)
        raise BadRequest(f"{name} must be a UUID such as {_SAMPLE_ID!r} (8-4-4-4-12 hexadecimal digits), "
                         f"not {given}")
    return value.lower()


def is_canonical_uuid(value: str) -> bool:
    """Whether `value` is an id as teebus makes them (a lower-case UUID)."""
    return len(value) == 36 and UUID.match(value) is not None and value == value.lower()


def user_id(value: Any, name: str = "user_id") -> str:
    return text(value, name, MAX_USER_ID_CHARS)


def user_token(value: Any, name: str = "user_token") -> str:
    return text(value, name, MAX_TOKEN_CHARS, empty=True)


def credentials(body: Mapping[str, Any], operation: str) -> dict[str, str]:
    """The `user_id` and `user_token` every external request carries (checked by auth.py after)."""
    return {"user_id": user_id(required(body, "user_id", operation)),
            "user_token": user_token(required(body, "user_token", operation))}


def collaborators(value: Any) -> tuple[str, ...]:
    """A list of user ids (at most MAX_COLLABORATORS), duplicates dropped, order kept."""
    if not isinstance(value, list):
        raise BadRequest(f"collaborator_list must be a list of user ids, not {json_type(value)}")
    if len(value) > MAX_COLLABORATORS:
        raise BadRequest(f"collaborator_list names {len(value)} users; at most {MAX_COLLABORATORS} are allowed")
    return tuple(dict.fromkeys(user_id(item, "each collaborator_list entry") for item in value))


def operation(body: Any, operations: Iterable[str], expected: str | None, which: str) -> str:
    """The `type` tag of a tagged request; `which` names the API ("external TDFS") in errors."""
    operations = tuple(operations)
    if not isinstance(body, dict):
        article = "an" if which[:1] in "aeiou" else "a"
        raise BadRequest(f"{article} {which} request is a JSON object such as "
                         f"{{\"type\": \"{operations[0]}\", ...}}")
    tag = body.get("type")
    if tag not in operations:
        given = "missing" if tag is None else "another string" if isinstance(tag, str) else json_type(tag)
        raise BadRequest(f"unknown {which} request type ({given}); expected one of {', '.join(operations)}")
    if expected is not None and tag != expected:
        raise BadRequest(f"this endpoint serves {expected} requests, not {tag}")
    return tag
