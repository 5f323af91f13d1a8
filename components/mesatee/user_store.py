"""MesaTEE users at rest: who they are, and a salted scrypt hash of their token (never the token).

A token is checked by deriving its hash again with the stored salt and comparing in constant time.
Deriving costs tens of milliseconds by design (it makes a stolen bucket expensive to guess from),
so it runs on a small thread pool of its own (`TokenHasher`): the event loop keeps serving, and a
flood of wrong tokens occupies a bounded number of threads and bounded memory (16 MiB each).
The parameters travel inside each stored hash, so raising them later leaves old hashes valid.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from bus.errors import BadRequest, Conflict, NotFound
from bus.records import MAX_CAS_ATTEMPTS, Record, Records
from components.mesatee.fields import MAX_TOKEN_CHARS, MAX_USER_ID_CHARS

BUCKET = "mesatee_users"
NEW_TOKEN_BYTES = 24            # secrets.token_urlsafe: 192 random bits, 32 characters
# scrypt's "interactive" parameters (Percival): 16 MiB and ~40 ms per derivation on a small core.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
KDF_WORKERS = min(4, os.cpu_count() or 1)

_USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")
USER_ID_RULE = (f"1 to {MAX_USER_ID_CHARS} characters of letters A-Z a-z, digits, '_' and '-', "
                "starting with a letter or digit")


def is_user_id(value: Any) -> bool:
    """Whether `value` could name a user (the rule is public: saying no reveals nobody)."""
    return isinstance(value, str) and len(value) <= MAX_USER_ID_CHARS and _USER_ID.match(value) is not None


def parse_user_id(value: Any) -> str:
    """A user name as the registry stores it (also its KV key); BadRequest says the rule."""
    if not isinstance(value, str):
        raise BadRequest(f"user_id must be a string: {USER_ID_RULE}")
    if not is_user_id(value):
        shown = value if len(value) <= MAX_USER_ID_CHARS else value[:MAX_USER_ID_CHARS] + "..."
        raise BadRequest(f"user_id {shown!r} is not a valid user name: use {USER_ID_RULE}")
    return value


def parse_token(value: Any) -> str:
    """A token an operator chose (the demo's `token1`); random ones come from `new_token`."""
    if not isinstance(value, str) or not value:
        raise BadRequest("token must be a non-empty string (or leave it out for a random one)")
    if len(value) > MAX_TOKEN_CHARS:
        raise BadRequest(f"token is longer than {MAX_TOKEN_CHARS} characters")
    return value


def new_token() -> str:
    """A new user token; never one that begins with `-`, which a command line would take for an
    option (`--token -abc...` fails in argparse)."""
    while True:
        token = secrets.token_urlsafe(NEW_TOKEN_BYTES)
        if not token.startswith("-"):
            return token


def token_bytes(token: str) -> bytes:
    """A token as the KDF and digests see it (any string JSON can carry, lone surrogates too)."""
    return token.encode("utf-8", "surrogatepass")


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


# -- hashing ---------------------------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_token(token: str) -> str:
    """`scrypt$N$r$p$<salt>$<hash>` (base64) for `token`, with a fresh random salt. Blocking."""
    salt = os.urandom(SALT_BYTES)
    derived = Scrypt(salt=salt, length=HASH_BYTES, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(token_bytes(token))
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(derived)}"


class DamagedHash(ValueError):
    """A stored hash that does not parse: the record was written by something else, or damaged."""


def _parse(token_hash: str) -> tuple[int, int, int, bytes, bytes]:
    try:
        kdf, n, r, p, salt, derived = token_hash.split("$")
        if kdf != "scrypt":
            raise ValueError(kdf)
        return int(n), int(r), int(p), base64.b64decode(salt, validate=True), base64.b64decode(derived, validate=True)
    except (ValueError, binascii.Error):
        raise DamagedHash("stored token hash is not scrypt$N$r$p$salt$hash") from None


def verify_token(token: str, token_hash: str) -> bool:
    """Whether `token` derives to `token_hash` (compared in constant time). Blocking."""
    n, r, p, salt, derived = _parse(token_hash)
    try:
        Scrypt(salt=salt, length=len(derived), n=n, r=r, p=p).verify(token_bytes(token), derived)
    except InvalidKey:  # cryptography compares in constant time before raising this
        return False
    return True


class TokenHasher:
    """Hashing and verifying on a bounded thread pool of its own; `dummy` is a hash no token
    matches, verified against when a user does not exist, so that costs the same as a wrong token."""

    def __init__(self, workers: int = KDF_WORKERS) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mesatee-users-kdf")
        self.dummy = ""

    async def start(self) -> None:
        self.dummy = await self.hash(secrets.token_urlsafe(NEW_TOKEN_BYTES))

    async def hash(self, token: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(self._pool, hash_token, token)

    async def verify(self, token: str, token_hash: str) -> bool:
        return await asyncio.get_running_loop().run_in_executor(self._pool, verify_token, token, token_hash)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# -- records ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UserRecord:
    """One user as the bucket holds it (the key is the user id)."""

    token_hash: str
    created: str
    rotated: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> "UserRecord":
        return cls(value["token_hash"], value["created"], value.get("rotated"))

    def public(self, user_id: str) -> dict[str, Any]:
        """What `list` shows: never the hash."""
        return {"user_id": user_id, "created": self.created, "rotated": self.rotated}


class UserStore:
    """The `mesatee_users` bucket: compare-and-set writes, and a mirror for the authenticate path."""

    def __init__(self, records: Records) -> None:
        self.records = records

    async def start(self) -> None:
        await self.records.mirror()

    async def close(self) -> None:
        await self.records.close()

    def mirrored(self, user_id: str) -> Record | None:
        """The record as this replica's mirror holds it (milliseconds behind other replicas)."""
        return self.records.mirrored_record(user_id)

    async def find(self, user_id: str) -> Record | None:
        """The record as the bucket holds it now."""
        return await self.records.find(user_id)

    async def get(self, user_id: str) -> Record:
        """The record as the bucket holds it now; NotFound names the user."""
        record = await self.find(user_id)
        if record is None:
            raise _absent(user_id)
        return record

    async def create(self, user_id: str, token_hash: str) -> Record:
        """A new user; Conflict when the name is taken (compare-and-set: one of racing adds wins)."""
        try:
            return await self.records.create(user_id, UserRecord(token_hash, now()))
        except Conflict:
            raise Conflict(f"user {user_id} already exists: `teebus users rotate {user_id}` gives it "
                           "a new token") from None

    async def replace_hash(self, user_id: str, token_hash: str) -> Record:
        """Give a user a new token hash (compare-and-set against concurrent changes)."""
        try:
            change = await self.records.mutate(user_id, lambda value: replace(value, token_hash=token_hash,
                                                                              rotated=now()))
        except NotFound:
            raise _absent(user_id) from None
        return change.after

    async def remove(self, user_id: str) -> None:
        """Delete a user at the revision read, retried if it changed in between."""
        for _ in range(MAX_CAS_ATTEMPTS):
            record = await self.get(user_id)
            try:
                await self.records.delete(user_id, record.revision)
                return
            except Conflict:
                continue
        raise Conflict(f"user {user_id} is changing too fast to remove; try again")

    async def all(self) -> list[Record]:
        """Every user, in name order (the bucket's keys; values from the mirror when it has them)."""
        found = []
        for user_id in sorted(await self.records.keys()):
            try:
                found.append(await self.records.lookup(user_id))
            except NotFound:  # removed since the keys were listed
                continue
        return found


def _absent(user_id: str) -> NotFound:
    return NotFound(f"no user {user_id} (`teebus users list` shows the registered users)")
