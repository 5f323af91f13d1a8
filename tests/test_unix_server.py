"""adapters/unix/server.py: private sockets, stale ones cleaned, live ones never stolen, clean stop."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from adapters.unix.server import MAX_SUN_PATH, SocketInUse, UnixServer, reachable


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory under /tmp: AF_UNIX paths must stay below 108 bytes, tmp_path may not."""
    directory = Path(tempfile.mkdtemp(dir="/tmp", prefix="tbu-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # longer than the server's limit
                writer.write(b"too long\n")
                await writer.drain()
                break
            if not line:
                break
            writer.write(b"echo: " + line)
            await writer.drain()
    finally:
        writer.close()


async def talk(path: Path, line: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(line)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 2)
    finally:
        writer.close()


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


async def test_socket_is_private_and_serves_the_handler(short_dir):
    path = short_dir / "private" / "keep.sock"  # the parent does not exist yet
    umask_before = current_umask()
    server = UnixServer(path, echo)
    await server.start()
    try:
        mode = path.lstat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700 & ~umask_before
        assert current_umask() == umask_before  # the temporary umask did not leak into the process
        assert await talk(path, b"hello\n") == b"echo: hello\n"
        assert await talk(path, b"again\n") == b"echo: again\n"  # one connection after another
    finally:
        await server.stop()


async def test_socket_is_0600_even_with_a_permissive_umask(short_dir):
    path = short_dir / "open.sock"
    previous = os.umask(0)
    try:
        server = UnixServer(path, echo)
        await server.start()
    finally:
        os.umask(previous)
    try:
        assert stat.S_IMODE(path.lstat().st_mode) == 0o600
    finally:
        await server.stop()


async def test_reader_limit_applies(short_dir):
    path = short_dir / "limit.sock"
    server = UnixServer(path, echo, limit=64)
    await server.start()
    try:
        assert await talk(path, b"x" * 10 + b"\n") == b"echo: " + b"x" * 10 + b"\n"
        assert await talk(path, b"x" * 500 + b"\n") == b"too long\n"
    finally:
        await server.stop()


async def test_stale_socket_is_removed_on_start(short_dir):
    path = short_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # bound, never served, then closed: what a crashed process leaves
    os.chmod(path, 0o644)  # marks the stale file apart from the one start() creates
    assert stat.S_ISSOCK(path.lstat().st_mode)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_unix_connection(str(path))

    server = UnixServer(path, echo)
    await server.start()
    try:
        assert stat.S_IMODE(path.lstat().st_mode) == 0o600  # a new socket, not the stale one
        assert await talk(path, b"fresh\n") == b"echo: fresh\n"
    finally:
        await server.stop()


async def test_live_socket_is_never_stolen(short_dir):
    path = short_dir / "live.sock"
    first = UnixServer(path, echo)
    await first.start()
    try:
        inode = path.lstat().st_ino
        second = UnixServer(path, echo)
        with pytest.raises(SocketInUse) as info:
            await second.start()
        assert str(path) in str(info.value)
        assert "running process" in str(info.value)
        assert path.lstat().st_ino == inode
        await second.stop()  # the loser's cleanup must not remove the winner's socket
        assert path.lstat().st_ino == inode
        assert await talk(path, b"still mine\n") == b"echo: still mine\n"
    finally:
        await first.stop()


async def test_regular_file_at_the_path_is_refused_and_kept(short_dir):
    path = short_dir / "notes.sock"
    path.write_text("someone's data")
    server = UnixServer(path, echo)
    with pytest.raises(FileExistsError) as info:
        await server.start()
    assert "is not a socket" in str(info.value)
    assert path.read_text() == "someone's data"


async def test_dangling_symlink_at_the_path_is_refused(short_dir):
    path = short_dir / "link.sock"
    path.symlink_to(short_dir / "nowhere")
    with pytest.raises(FileExistsError):
        await UnixServer(path, echo).start()
    assert path.is_symlink()


async def test_stop_removes_the_socket_and_refuses_new_clients(short_dir):
    path = short_dir / "stop.sock"
    server = UnixServer(path, echo)
    await server.start()
    assert await talk(path, b"before\n") == b"echo: before\n"
    await server.stop()
    assert not path.exists() and not path.is_symlink()
    with pytest.raises(FileNotFoundError):
        await asyncio.open_unix_connection(str(path))
    await server.stop()  # a second stop is harmless

    await server.start()  # and the same object can serve again
    try:
        assert await talk(path, b"after\n") == b"echo: after\n"
    finally:
        await server.stop()


async def test_stop_does_not_hang_on_an_idle_client(short_dir):
    path = short_dir / "idle.sock"
    server = UnixServer(path, echo)
    await server.start()
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readline(), 2) == b"echo: ping\n"
        await asyncio.wait_for(server.stop(), 2)  # the client keeps its connection open meanwhile
        assert not path.exists()
    finally:
        writer.close()


async def test_a_socket_path_longer_than_af_unix_allows_still_serves(short_dir: Path):
    deep = short_dir / ("d" * 60) / ("e" * 60)
    path = deep / "keep.sock"
    assert len(str(path)) > MAX_SUN_PATH
    server = UnixServer(path, echo)
    await server.start()
    try:
        assert path.is_socket() and stat.S_IMODE(path.stat().st_mode) == 0o600
        with reachable(path) as address:
            assert address.startswith("/proc/self/fd/")
            reader, writer = await asyncio.open_unix_connection(address)
        writer.write(b"deep\n")
        assert await reader.readline() == b"echo: deep\n"
        writer.close()
        with pytest.raises(SocketInUse):  # the live check reaches long paths too
            await UnixServer(path, echo).start()
    finally:
        await server.stop()
    assert not path.exists()
