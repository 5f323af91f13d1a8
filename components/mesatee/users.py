"""The MesaTEE user registry: who may use TDFS and TMS, and the check of their tokens.

The original MesaTEE accepted any token; here every user is added by an operator (`teebus users add`)
and holds a random token, stored only as a salted scrypt hash (user_store.py). Every other MesaTEE
service asks `authenticate` on every request (auth.py), so that path is answered from memory once a
(user, token) pair has verified: see `VerifiedTokens` for why that stays correct. Every failure is one
401 with one message, as slow for an unknown user as for a wrong token (a dummy hash is verified).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

from bus.component import Component, Endpoint, Incoming
from bus.errors import BadRequest, Unauthorized
from components.mesatee import subjects
from components.mesatee.auth import credentials
from components.mesatee.config import MesateeConfig
from components.mesatee.user_store import (BUCKET, MAX_TOKEN_CHARS, DamagedHash, TokenHasher, UserRecord,
                                           UserStore, is_user_id, new_token, parse_token, parse_user_id,
                                           token_bytes)

UNAUTHORIZED = "user_id and user_token do not match a registered user"


class VerifiedTokens:
    """(user id, token digest) pairs that verified, each valid for the record revision it verified
    against: a rotation or removal (through any replica: the component's mirror follows the bucket)
    changes or drops the revision, so the old token misses here at once and fails the KDF check.

    The digest is keyed BLAKE2b under a random per-process key: the map never holds a token, and its
    lookups cost nothing an attacker could time into knowledge of one. Bounded; oldest out first.
    """

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._key = os.urandom(32)
        self._entries: dict[tuple[str, bytes], int] = {}

    def digest(self, token: str) -> bytes:
        return hashlib.blake2b(token_bytes(token), key=self._key, digest_size=32).digest()

    def holds(self, user_id: str, digest: bytes, revision: int) -> bool:
        return self._entries.get((user_id, digest)) == revision

    def put(self, user_id: str, digest: bytes, revision: int) -> None:
        key = (user_id, digest)
        self._entries.pop(key, None)
        if len(self._entries) >= self._max:
            del self._entries[next(iter(self._entries))]   # the oldest (dicts keep insertion order)
        self._entries[key] = revision

    def __len__(self) -> int:
        return len(self._entries)


class UsersComponent(Component):
    system = subjects.SYSTEM
    name = "users"
    description = "MesaTEE user registry: users, their hashed tokens, and authentication"
    config: MesateeConfig

    async def setup(self) -> None:
        self.hasher = TokenHasher()
        await self.hasher.start()
        records = await self.open_records(BUCKET, kind=UserRecord, description="MesaTEE users (token hashes)",
                                          max_value_size=4096)
        self.store = UserStore(records)
        await self.store.start()   # authenticate reads the mirror
        self.verified = VerifiedTokens(self.config.users_cache_entries)
        self._verifying: dict[tuple[str, bytes], tuple[Any, asyncio.Task]] = {}   # (record seen, check)
        self.cold_verifies = 0     # KDF runs for authenticate: what the cache saves is visible

    async def teardown(self) -> None:
        await self.store.close()
        self.hasher.close()

    def endpoints(self) -> list[Endpoint]:
        handlers = {"authenticate": self.authenticate, "add": self.add, "list": self.list_users,
                    "remove": self.remove, "rotate": self.rotate}
        return [Endpoint(operation, subjects.users(operation), handlers[operation])
                for operation in subjects.USERS_OPERATIONS]

    async def authenticate(self, incoming: Incoming) -> dict[str, str]:
        body = _fields(incoming.payload, "authenticate", ("user_id", "user_token"), ())
        user_id, token = credentials(body.get("user_id"), body.get("user_token"))
        if not is_user_id(user_id) or not token or len(token) > MAX_TOKEN_CHARS:
            raise Unauthorized(UNAUTHORIZED)   # no such user can exist (the rules are public)
        digest = self.verified.digest(token)
        record = self.store.mirrored(user_id)
        if record is not None and self.verified.holds(user_id, digest, record.revision):
            return {"user_id": user_id}
        if await self._verify(user_id, token, digest):
            return {"user_id": user_id}
        raise Unauthorized(UNAUTHORIZED)

    async def add(self, incoming: Incoming) -> dict[str, str]:
        body = _fields(incoming.payload, "add", ("user_id",), ("token",))
        user_id = parse_user_id(body["user_id"])
        token = new_token() if body.get("token") is None else parse_token(body["token"])
        await self.store.create(user_id, await self.hasher.hash(token))
        await self.events.publish("user", "added", {"user_id": user_id})
        self.log.info("user added", user_id=user_id)
        return {"user_id": user_id, "user_token": token}

    async def list_users(self, incoming: Incoming) -> dict[str, Any]:
        _fields(incoming.payload, "list", (), ())
        return {"users": [record.value.public(record.key) for record in await self.store.all()]}

    async def remove(self, incoming: Incoming) -> dict[str, str]:
        user_id = parse_user_id(_fields(incoming.payload, "remove", ("user_id",), ())["user_id"])
        await self.store.remove(user_id)
        await self.events.publish("user", "removed", {"user_id": user_id})
        self.log.info("user removed", user_id=user_id)
        return {"user_id": user_id}

    async def rotate(self, incoming: Incoming) -> dict[str, str]:
        user_id = parse_user_id(_fields(incoming.payload, "rotate", ("user_id",), ())["user_id"])
        await self.store.get(user_id)   # 404 before paying for a hash
        token = new_token()
        await self.store.replace_hash(user_id, await self.hasher.hash(token))
        await self.events.publish("user", "rotated", {"user_id": user_id})
        self.log.info("user token rotated", user_id=user_id)
        return {"user_id": user_id, "user_token": token}

    async def _verify(self, user_id: str, token: str, digest: bytes) -> bool:
        """The KDF check, once for concurrent requests bearing the same (user, token) -- while the
        user's record stays as it was when that check began: a request arriving after a rotation or
        removal (here, or seen through the mirror) starts a check of its own against the new state."""
        key = (user_id, digest)
        seen = self.store.mirrored(user_id)   # the mirror replaces a record's object on every change
        pending = self._verifying.get(key)
        if pending is None or pending[0] is not seen:
            pending = (seen, asyncio.create_task(self._verify_cold(user_id, token, digest)))
            self._verifying[key] = pending
            pending[1].add_done_callback(lambda done, mine=pending: self._verified(key, mine, done))
        return await asyncio.shield(pending[1])

    def _verified(self, key: tuple[str, bytes], pending: tuple[Any, asyncio.Task], done: asyncio.Task) -> None:
        if self._verifying.get(key) is pending:
            del self._verifying[key]
        if not done.cancelled():
            done.exception()   # retrieved: the requests that awaited it report it

    async def _verify_cold(self, user_id: str, token: str, digest: bytes) -> bool:
        """Against the bucket's record (not the mirror: a user just added through another replica
        is found), or against the dummy hash when there is none, so both cost one KDF run."""
        self.cold_verifies += 1
        record = await self.store.find(user_id)
        token_hash = record.value.token_hash if record is not None else self.hasher.dummy
        try:
            matches = await self.hasher.verify(token, token_hash)
        except DamagedHash:
            self.log.error("the user's stored token hash is damaged: `teebus users remove` and `add` it again",
                           user_id=user_id)
            await self.hasher.verify(token, self.hasher.dummy)   # the same time as any other refusal
            return False
        if matches and record is not None:
            self.verified.put(user_id, digest, record.revision)
            return True
        return False


def _fields(body: Any, operation: str, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, Any]:
    """The request object, with exactly the fields `operation` takes; BadRequest names what is off."""
    takes = (*required, *optional)
    shape = ", ".join(f'"{name}": ...' for name in takes)
    if body is None and not required:
        return {}
    if not isinstance(body, dict):
        raise BadRequest(f"{operation} takes a JSON object {{{shape}}}")
    unknown = [name for name in body if name not in takes]
    if unknown:
        raise BadRequest(f"{operation} takes no field {unknown[0]!r}; its fields are "
                         f"{', '.join(takes) or 'none'}")
    if operation != "authenticate":   # authenticate says which credential is missing (auth.credentials)
        missing = [name for name in required if name not in body]
        if missing:
            raise BadRequest(f"{operation} needs {missing[0]}")
    return body
