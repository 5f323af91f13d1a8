"""Connecting to the bus as a role, with the credentials from the data directory."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from nats.aio.client import Client
from nats.errors import AuthorizationError

from bus import cluster_tls, credentials, log
from bus.roles import inbox_prefix

_log = log.get_logger("bus.connection")
FIRST_CONNECT_TIMEOUT = 5.0
# A server reloading its users (bus/users.py) may refuse a login for a moment: by default a refusal
# is final only once it persists this long.
AUTH_SETTLE_SECONDS = 1.0
ABANDON_SECONDS = 0.5         # how long closing a client that never connected may take


class BusConnectError(ConnectionError):
    """The first connection failed; the message says why (refused, wrong credentials, ...)."""


def role_login(url: str, role: str, passwords: dict[str, str]) -> dict[str, str]:
    """The role's user and password as connection options (so they serve every server of a
    cluster, the announced ones too), unless the URL carries credentials of its own."""
    if any(urlsplit(one).username for one in server_urls(url)) or role not in passwords:
        return {}
    return {"user": role, "password": passwords[role]}


def server_urls(url: str) -> list[str]:
    """The servers of `url`: one URL, or several separated by commas (a cluster's nodes)."""
    urls = [part.strip() for part in url.split(",") if part.strip()]
    if not urls:
        raise ValueError(f"no NATS server in {url!r}: give nats://HOST:PORT, or several separated by commas")
    return urls


def _display(url: str) -> str:
    shown = []
    for one in server_urls(url):
        parts = urlsplit(one)
        shown.append(f"{parts.scheme}://{parts.hostname}:{parts.port or 4222}")
    return ",".join(shown)


async def connect(url: str, role: str, data_dir: Path | None = None, name: str | None = None,
                  passwords: dict[str, str] | None = None, auth_settle: float = AUTH_SETTLE_SECONDS,
                  **options) -> Client:
    """A NATS connection as `role`: fails fast and clearly at first, then reconnects forever.

    `url` may name several servers, comma-separated (a cluster): the first connection goes to
    any of them that answers (in random order, so a cluster's clients spread), and a lost one
    fails over to the others and to the servers the cluster announces.

    Replies come to the role's own inbox prefix (bus/roles.py), the only one it may subscribe to.
    With a `data_dir` holding a TLS cluster's CA, the connection is TLS, checked against that CA.
    A refused login is retried for `auth_settle` seconds (a user just added becomes valid when the
    server has reloaded its configuration).
    """
    if passwords is None and data_dir is not None:
        passwords = credentials.load(data_dir)
    if data_dir is not None and "tls" not in options:
        context = cluster_tls.client_context(data_dir)    # a TLS cluster's data directory holds its CA
        if context is not None:
            options = {**options, "tls": context, "tls_handshake_first": True}
    deadline = asyncio.get_running_loop().time() + auth_settle
    while True:
        try:
            return await _connect_once(url, role, name, passwords or {}, options)
        except BusConnectError as exc:
            if "wrong credentials" not in str(exc) or asyncio.get_running_loop().time() > deadline:
                raise
        except ConnectionResetError:  # a refusal can also arrive as the server hanging up
            if asyncio.get_running_loop().time() > deadline:
                raise BusConnectError(f"{_display(url)} closed the connection of role {role!r} "
                                      "during the login") from None
        await asyncio.sleep(0.05)


async def _connect_once(url: str, role: str, name: str | None, passwords: dict[str, str],
                        options: dict) -> Client:
    connected = False
    last_error: list[BaseException] = []
    name = name or f"teebus-{role}"

    async def on_error(exc: Exception) -> None:
        if not connected:
            last_error[:] = [exc]
            if isinstance(exc, AuthorizationError) or "Authorization" in str(exc):
                raise BusConnectError(f"{_display(url)} refused role {role!r}: wrong credentials")
            return
        _log.warning("nats connection error", client=name, error=str(exc))

    settings = dict(name=name, connect_timeout=2, max_reconnect_attempts=-1,
                    reconnect_time_wait=0.25, error_cb=on_error, inbox_prefix=inbox_prefix(role),
                    **role_login(url, role, passwords))
    settings.update(options)
    client = Client()
    try:
        await _first_connection(client, server_urls(url), settings)
    except asyncio.TimeoutError:
        reason = last_error[0] if last_error else "no answer"
        raise BusConnectError(f"cannot reach NATS at {_display(url)} as {role!r}: {reason}") from None
    except ssl.SSLError as exc:
        raise BusConnectError(f"cannot reach NATS at {_display(url)} as {role!r} over TLS ({exc.reason or exc}): "
                              "does the data directory hold the cluster's CA, nats/tls/ca.crt?") from None
    connected = True
    return client


async def _first_connection(client: Client, urls: list[str], settings: dict) -> None:
    """`client.connect`, closing the client when it fails: it would go on reconnecting in the
    background. The close is bounded: its state is CLOSED and its tasks cancelled at once, but the
    rest may wait on a transport that never finishes closing (a TLS handshake the server refused:
    nats-py then waits forever)."""
    try:
        await asyncio.wait_for(client.connect(urls, **settings), FIRST_CONNECT_TIMEOUT)
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), ABANDON_SECONDS)
        raise
