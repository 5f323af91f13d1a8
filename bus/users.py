"""The embedded server's users: the static roles (bus/roles.py) and dynamic users that exist only
while the thing they serve does (a keep, say).

The embedded server does not run `nats.conf` directly. `install_roles` stores the deployment's
roles (bcrypt hash and permissions) in `<data-dir>/nats/roles.json` on every start; `render` writes
`<data-dir>/nats/server.conf`, which includes a copy of `nats.conf` (server settings only) and adds
the `authorization` block: every role, plus one user per file in `<data-dir>/nats/users/` (all mode
0600). Adding or removing a dynamic user re-renders and sends the running server SIGHUP; the server
reloads users without dropping anyone else's connection.

Only a server started from this data directory can be reconfigured; joined to a NATS deployment
with `--nats URL`, `available` is false and callers fall back to a static role.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import orjson

from bus import credentials, log, procfs
from bus.roles import Role

DIRECTORY = "nats"
SERVER_CONF = "server.conf"
BASE_CONF = "base.conf"
ROLES_FILE = "roles.json"
PID_FILE = "nats-server.pid"
USERS_DIR = "users"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_log = log.get_logger("bus.users")


class UsersUnavailable(RuntimeError):
    """No server started from this data directory runs here, so users cannot be added."""


@dataclass(frozen=True)
class User:
    """A dynamic user: its name, the bcrypt hash of its password, its NATS permissions block."""

    name: str
    password_hash: str
    permissions: dict[str, Any]

    @classmethod
    def with_password(cls, name: str, password: str, permissions: dict[str, Any]) -> "User":
        if not _NAME.match(name):
            raise ValueError(f"user name {name!r} must be 1-64 letters, digits, '-' or '_'")
        return cls(name, credentials.password_hash(password), permissions)


def directory(data_dir: Path) -> Path:
    return data_dir / DIRECTORY


def pid_file(data_dir: Path, node: str = "") -> Path:
    """The pid file of the server started from `data_dir` (of its cluster node `node`, if one)."""
    return directory(data_dir) / (f"nats-server.{node}.pid" if node else PID_FILE)


def install_roles(data_dir: Path, roles: Iterable[Role], passwords: Mapping[str, str]) -> None:
    """Store the static roles with the hashes of their passwords (hashed once per server start)."""
    folder = directory(data_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    stored = [{"name": role.name, "password_hash": credentials.password_hash(passwords[role.name]),
               "permissions": role.permissions, "description": role.description} for role in roles]
    credentials.write_private(folder / ROLES_FILE, orjson.dumps(stored, option=orjson.OPT_INDENT_2))


def role_permissions(data_dir: Path) -> dict[str, Any]:
    """The permissions of every static role, as the running server has them (role -> block)."""
    return {user.name: user.permissions for user in _static(data_dir)}


def render(base: Path, data_dir: Path) -> Path:
    """Write server.conf (base config + static roles + dynamic users) and return its path."""
    folder = directory(data_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if base.resolve() != (folder / BASE_CONF).resolve():
        shutil.copyfile(base, folder / BASE_CONF)  # includes resolve beside the including file
    entries = [f"    {{ user: {_quote(user.name)}, password: {_quote(user.password_hash)}, "
               f"permissions: {orjson.dumps(user.permissions).decode()} }}"
               for user in [*_static(data_dir), *_stored(data_dir)]]
    text = (f"# Written by teebus from {base}, {folder / ROLES_FILE} and {folder / USERS_DIR}; "
            "edits here are overwritten.\n"
            f'include "{BASE_CONF}"\n\nauthorization {{\n  timeout: 5\n  users = [\n'
            + "\n".join(entries) + "\n  ]\n}\n")
    credentials.write_private(folder / SERVER_CONF, text.encode())
    return folder / SERVER_CONF


def add(data_dir: Path, user: User) -> None:
    """Store `user` and make the running server accept it."""
    with _locked(data_dir):
        credentials.write_private(_user_file(data_dir, user.name), orjson.dumps(
            {"name": user.name, "password_hash": user.password_hash, "permissions": user.permissions}))
        _reload(data_dir)
    _log.info("nats user added", user=user.name)


def remove(data_dir: Path, name: str) -> None:
    """Forget a dynamic user; the server closes its connections on reload."""
    with _locked(data_dir):
        try:
            _user_file(data_dir, name).unlink()
        except FileNotFoundError:
            return
        _reload(data_dir)
    _log.info("nats user removed", user=name)


def names(data_dir: Path) -> list[str]:
    return [user.name for user in _stored(data_dir)]


def available(data_dir: Path) -> bool:
    """True when a server started from this data directory runs on this host."""
    return bool(_server_pids(data_dir))


def _reload(data_dir: Path) -> None:
    """Every server started from this data directory (each node of a local cluster) reloads."""
    pids = _server_pids(data_dir)
    if not pids:
        raise UsersUnavailable(f"no nats-server started from {data_dir} runs on this host, so its users "
                               "cannot change; start the system with `teebus up` on this data directory")
    render(directory(data_dir) / BASE_CONF, data_dir)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:    # a node that just died: it reads the new file when it restarts
            pass


def _server_pids(data_dir: Path) -> list[int]:
    """The pids in the pid files whose processes are still nats-servers (pids get reused)."""
    pids = []
    for path in sorted(directory(data_dir).glob("nats-server*.pid")):
        try:
            pid = int(path.read_text().strip())
        except (FileNotFoundError, ValueError):
            continue
        command = procfs.argv(pid)
        if command and b"nats-server" in command[0]:
            pids.append(pid)
    return pids


def _static(data_dir: Path) -> list[User]:
    path = directory(data_dir) / ROLES_FILE
    if not path.exists():
        return []
    return [User(entry["name"], entry["password_hash"], entry["permissions"])
            for entry in orjson.loads(credentials.read_private(path))]


def _stored(data_dir: Path) -> list[User]:
    folder = directory(data_dir) / USERS_DIR
    if not folder.is_dir():
        return []
    users = []
    for path in sorted(folder.glob("*.json")):
        fields = orjson.loads(credentials.read_private(path))
        users.append(User(fields["name"], fields["password_hash"], fields["permissions"]))
    return users


def _user_file(data_dir: Path, name: str) -> Path:
    if not _NAME.match(name):
        raise ValueError(f"user name {name!r} must be 1-64 letters, digits, '-' or '_'")
    folder = directory(data_dir) / USERS_DIR
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder / f"{name}.json"


def _quote(value: str) -> str:
    return orjson.dumps(value).decode()


@contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """One writer at a time across processes (several nodes may share a data directory)."""
    directory(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory(data_dir) / "users.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
