"""Who is asking: the one check every MesaTEE component makes of a request's user_id and user_token.

The user registry (components/mesatee/users.py) decides, over the bus; this only makes sure the two
fields are strings (400 naming the field otherwise) and lets its 401 propagate, so every service
refuses a wrong token with the same words and none can tell whether the user exists.
"""

from __future__ import annotations

from typing import Any

from bus.errors import BadRequest
from bus.requester import Requester
from components.mesatee import subjects
from components.mesatee.fields import json_type

AUTHENTICATE = subjects.users("authenticate")


def credentials(user_id: Any, user_token: Any) -> tuple[str, str]:
    """The two fields, checked to be strings; BadRequest names the first that is not."""
    for name, value in (("user_id", user_id), ("user_token", user_token)):
        if value is None:
            raise BadRequest(f"{name} is missing: every request names its user with user_id and user_token")
        if not isinstance(value, str):
            raise BadRequest(f"{name} must be a string, not {json_type(value)}")
    return user_id, user_token


async def authenticate(requester: Requester, user_id: Any, user_token: Any) -> str:
    """The user id when `user_token` is that user's token; raises Unauthorized (401) otherwise,
    BadRequest (400) for fields that are not strings, Unavailable (503) when no registry runs."""
    user_id, user_token = credentials(user_id, user_token)
    reply = await requester.request(AUTHENTICATE, {"user_id": user_id, "user_token": user_token})
    return reply.payload["user_id"]

