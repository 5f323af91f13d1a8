"""Structured logs: one request id across every hop, secrets never rendered."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from bus import log
from tests.conftest import internal_token


@pytest.fixture
def log_lines():
    stream = io.StringIO()
    log.configure("info", json=True, stream=stream)
    yield lambda: [orjson.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    log.configure("warning", json=True)


async def test_request_id_reaches_every_line_the_request_causes(start_node, data_dir, log_lines):
    node = await start_node(["mesatee.kms", "http.mesatee"])
    async with aiohttp.ClientSession() as session:
        async with session.post(node.http.bound["mesatee-kms"] + "/",
                                data=b'{"type":"Get","key_id":"c26ada76-8557-11e9-8002-020203040506"}',
                                headers={"Authorization": f"Bearer {internal_token(data_dir)}",
                                         "X-Request-Id": "req-abc-123"}) as resp:
            assert resp.status == 404
    mine = [line for line in log_lines() if line.get("request_id") == "req-abc-123"]
    components = {line["component"] for line in mine}
    assert {"adapters.http", "mesatee-kms"} <= components  # the adapter hop and the component hop
    assert all(line["level"] in ("info", "warning") for line in mine)


def test_secrets_are_redacted_by_name(log_lines):
    log.get_logger("test").info("handling", key="c2VjcmV0", token="t0k", password="pw", user_token="u",
                                authorization="Bearer x", config={"key": "k"}, key_id="id-1", request_id="r")
    (line,) = [entry for entry in log_lines() if entry["event"] == "handling"]
    for name in ("key", "token", "password", "user_token", "authorization", "config"):
        assert line[name] == log.REDACTED, name
    assert line["key_id"] == "id-1" and line["request_id"] == "r"


def test_terminal_rendering_is_key_value():
    stream = io.StringIO()
    log.configure("info", json=False, stream=stream)
    try:
        log.get_logger("test").info("hello", answer=42, token="zzz")
    finally:
        log.configure("warning", json=True)
    text = stream.getvalue()
    assert "hello" in text and "answer=42" in text and "zzz" not in text


def test_request_ids_are_unique_within_and_across_processes():
    here = {log.new_request_id() for _ in range(10_000)}
    assert len(here) == 10_000 and all(len(i) == 32 and int(i, 16) >= 0 for i in here)
    code = "from bus import log; print(log.new_request_id())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).resolve().parent.parent).stdout.strip()
    assert len(other) == 32 and other[:16] != next(iter(here))[:16]  # each process its own prefix
