"""Per-role NATS secrets: generated once into the data directory, never committed or logged.

Clients read each role's plaintext password from `<data-dir>/nats.credentials` (0600); the server
only ever sees bcrypt hashes (bus/users.py writes them into its rendered configuration).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Iterable

import bcrypt
import orjson

FILE_NAME = "nats.credentials"
BCRYPT_COST = 10


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file atomically with mode 0600 (no window where it is readable by others),
    durably: the data and then the rename are on disk when this returns (a power cut leaves the old
    file or the new one)."""
    write_durably(path, data, 0o600)


def write_durably(path: Path, data: bytes, mode: int, *, overwrite: bool = True) -> None:
    """Write `path` whole or not at all, born with `mode`, on disk when this returns. With
    `overwrite` False the file is claimed atomically and FileExistsError says one is there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if overwrite:
        os.replace(tmp, path)
    else:
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(f"{path} already exists; it is left as it was") from None
        finally:
            os.unlink(tmp)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new name in `directory` survive a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_private(path: Path) -> bytes:
    """Read a secret file, refusing one that its group or others may read."""
    if path.stat().st_mode & 0o077:
        raise PermissionError(f"{path} holds a secret but others may read it: run `chmod 600 {path}`")
    return path.read_bytes()


def ensure_secret_file(path: Path, nbytes: int = 32) -> str:
    """Return the hex secret stored at `path`, creating it on first use."""
    if not path.exists():
        write_private(path, secrets.token_hex(nbytes).encode())
    return read_private(path).decode().strip()


def ensure(data_dir: Path, roles: Iterable[str]) -> dict[str, str]:
    """Load the role passwords, generating any of `roles` that are missing."""
    path = data_dir / FILE_NAME
    current: dict[str, str] = orjson.loads(read_private(path)) if path.exists() else {}
    missing = [role for role in roles if role not in current]
    if missing:
        for role in missing:
            current[role] = secrets.token_urlsafe(32)
        write_private(path, orjson.dumps(current, option=orjson.OPT_INDENT_2))
    return current


def load(data_dir: Path) -> dict[str, str]:
    """Read existing credentials; a clear error if `teebus up` never ran on this data directory."""
    path = data_dir / FILE_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: start `teebus up --data-dir {data_dir}` once, "
                                "or copy the credentials file of the deployment you join")
    return orjson.loads(read_private(path))


def password_hash(password: str) -> str:
    """What the server stores for a password: a bcrypt hash (it never sees the plaintext)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()
