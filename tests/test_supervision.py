"""`teebus up` supervises its embedded nats-server: a crash is survived, a crash loop ends it clearly."""

from __future__ import annotations

import os
import signal

import aiohttp
import orjson
import pytest

from bus.server import free_port
from teebus import launcher
from teebus.launcher import Deployment, default_catalog
from teebus.settings import build
from teebus.testing import free_ports
from tests.conftest import eventually, internal_token

pytestmark = pytest.mark.timeout(120)


def _settings(tmp_path):
    catalog = default_catalog()
    return catalog, build(catalog, {"teebus": {"data_dir": tmp_path / "data", "nats_port": free_port()},
                                    "ports": {**free_ports(catalog)},
                                    "enarx": {"stop_keeps_on_exit": True}})


async def _kms(session: aiohttp.ClientSession, url: str, token: str, body: dict) -> tuple[int, dict]:
    async with session.post(url, data=orjson.dumps(body), headers={"Authorization": f"Bearer {token}"}) as response:
        return response.status, await response.json()


async def test_a_killed_server_is_restarted_and_nothing_accepted_is_lost(tmp_path):
    catalog, settings = _settings(tmp_path)
    async with Deployment(settings, catalog) as deployment:
        url, token = deployment.node.http.bound["mesatee-kms"] + "/", internal_token(settings.data_dir)
        async with aiohttp.ClientSession() as session:
            _, created = await _kms(session, url, token, {"type": "Create"})
            first_pid = deployment.server.pid
            os.kill(first_pid, signal.SIGKILL)

            async def answers_again() -> bool:
                status, body = await _kms(session, url, token, {"type": "Get", "key_id": created["key_id"]})
                return status == 200 and body["config"] == created["config"]

            await eventually(answers_again, timeout=30)
            assert deployment.server.pid != first_pid and not deployment.ended.is_set()
            status, again = await _kms(session, url, token, {"type": "Create"})     # writes work too
            assert status == 200 and again["key_id"] != created["key_id"]


async def test_a_server_that_keeps_dying_stops_everything_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(launcher, "RESTART_DELAYS", (0.1,))
    catalog, settings = _settings(tmp_path)
    deployment = Deployment(settings, catalog)
    await deployment.start()
    try:
        first = deployment.server.pid
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: deployment.server.running and deployment.server.pid != first, timeout=20)
        os.kill(deployment.server.pid, signal.SIGKILL)
        await eventually(deployment.ended.is_set, timeout=20)
        assert "exited 2 times" in deployment.failure and "nats-server.log" in deployment.failure
    finally:
        await deployment.stop()     # stops cleanly although the server is gone
    assert deployment.server is None and deployment.node is None
