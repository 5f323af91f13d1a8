"""The operator tools behind `teebus status | bus sub | bus req | events`, and the CLI end to end.

Everything runs against a real nats-server: the session's (for the tool functions) or one that
`teebus up` starts itself (for the subprocess tests).
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import AsyncIterator, Iterator

import cbor2
import orjson
import pytest

from bus import headers
from bus.connection import connect
from bus.errors import NotFound
from bus.server import DEFAULT_CONF, EmbeddedServer, free_port, port_is_free
from components.mesatee.kms import KmsComponent
from teebus import tools
from teebus.settings import REPO_ROOT
from tests.conftest import eventually

KMS_SUBJECTS = ("mesatee.kms.internal.create", "mesatee.kms.internal.get", "mesatee.kms.internal.delete")


def _service_block(text: str, name: str) -> str:
    """The lines `status` printed for service `name` (its header line up to the next service)."""
    match = re.search(rf"^{re.escape(name)} .*?(?=^\S|\Z)", text, re.S | re.M)
    assert match, f"service {name} missing from status output:\n{text}"
    return match.group(0)


def _counts(block: str, column: str) -> dict[str, int]:
    """Sum of the `requests` or `errors` column per endpoint subject over the replicas in `block`."""
    totals: dict[str, int] = {}
    for subject, requests, errors in re.findall(r"^\s+(\S+)\s+requests\s+(\d+)\s+errors\s+(\d+)\s+avg ",
                                                block, re.M):
        totals[subject] = totals.get(subject, 0) + int(requests if column == "requests" else errors)
    return totals


# --- teebus status ------------------------------------------------------------------------------

async def test_status_lists_replicas_endpoints_and_counts_requests(start_component, connect_as):
    first = await start_component(KmsComponent)
    second = await start_component(KmsComponent)
    observer = await connect_as("observer")
    admin = await connect_as("admin")

    out = io.StringIO()
    stats = await tools.status(observer, out=out)
    text = out.getvalue()
    block = _service_block(text, "mesatee-kms")
    assert re.match(r"mesatee-kms 0\.1\.0\s+replicas: 2$", block.splitlines()[0]), block
    ids = {entry["id"] for entry in stats if entry["name"] == "mesatee-kms"}
    assert ids == {first.service_id, second.service_id}
    for replica_id in ids:
        assert replica_id in block
    before, errors_before = _counts(block, "requests"), _counts(block, "errors")
    assert set(before) == set(errors_before) == set(KMS_SUBJECTS)

    for _ in range(3):
        reply = await admin.request("mesatee.kms.internal.create", b'{"type":"Create"}', timeout=5,
                                    headers={headers.CONTENT_TYPE: headers.JSON})
        assert orjson.loads(reply.data)["type"] == "Create"
    error = await admin.request("mesatee.kms.internal.get", b'{"type":"Get","key_id":"nope"}', timeout=5)
    assert error.headers[headers.ERROR_CODE] == "400"

    out = io.StringIO()
    await tools.status(observer, out=out)
    block = _service_block(out.getvalue(), "mesatee-kms")
    after, errors_after = _counts(block, "requests"), _counts(block, "errors")
    assert after["mesatee.kms.internal.create"] == before["mesatee.kms.internal.create"] + 3
    assert after["mesatee.kms.internal.get"] == before["mesatee.kms.internal.get"] + 1
    assert after["mesatee.kms.internal.delete"] == before["mesatee.kms.internal.delete"]
    assert errors_after["mesatee.kms.internal.get"] == errors_before["mesatee.kms.internal.get"] + 1
    assert errors_after["mesatee.kms.internal.create"] == errors_before["mesatee.kms.internal.create"]


@pytest.fixture
async def bare_bus() -> AsyncIterator[EmbeddedServer]:
    """A fresh nats-server of its own: no services, no EVENTS stream."""
    data = Path(tempfile.mkdtemp(dir="/tmp", prefix="teebus-bare-"))
    server = EmbeddedServer(DEFAULT_CONF, data, port=free_port())
    await server.start()
    yield server
    await server.stop()
    shutil.rmtree(data, ignore_errors=True)


async def test_status_on_a_bus_without_services(bare_bus):
    observer = await connect(bare_bus.url, "observer", passwords=bare_bus.passwords)
    try:
        out = io.StringIO()
        assert await tools.status(observer, out=out) == []
    finally:
        await observer.close()
    text = out.getvalue()
    assert text.startswith("connected to ") and "servers: no monitoring URL" in text, text
    assert text.endswith("\nno services answer on this bus\n"), text


# --- teebus bus sub -----------------------------------------------------------------------------

async def _subscribed(client, subject: str, count: int) -> tuple[asyncio.Task, io.StringIO]:
    """Start tools.subscribe in a task and return once the server knows the subscription."""
    out = io.StringIO()
    task = asyncio.create_task(tools.subscribe(client, subject, count, out=out))
    # nats-py keeps its subscriptions in `_subs`; once ours is there, its SUB precedes the flush's PING
    await eventually(lambda: any(sub.subject == subject for sub in client._subs.values()))
    await client.flush()
    return task, out


async def test_sub_renders_json_cbor_and_octets(connect_as):
    observer = await connect_as("observer")
    admin = await connect_as("admin")
    task, out = await _subscribed(observer, "kerneltest.tooltest.>", 4)

    await admin.publish("kerneltest.tooltest.json", b'{"kept":  "as sent", "n": 1}',
                        headers={headers.CONTENT_TYPE: headers.JSON, headers.REQUEST_ID: "rid-1"})
    await admin.publish("kerneltest.tooltest.cbor", cbor2.dumps({"a": 1, "b": b"\x01\x02", "c": [True, None]}),
                        headers={headers.CONTENT_TYPE: headers.CBOR})
    await admin.publish("kerneltest.tooltest.raw", b"\x00\x01\xff", headers={headers.CONTENT_TYPE: headers.OCTETS})
    await admin.publish("kerneltest.tooltest.big", bytes(range(100)), headers={headers.CONTENT_TYPE: headers.OCTETS})
    await asyncio.wait_for(task, 5)  # returns by itself after `count` messages

    assert out.getvalue() == (
        '[kerneltest.tooltest.json] Teebus-Request-Id=rid-1\n{"kept":  "as sent", "n": 1}\n'
        '[kerneltest.tooltest.cbor]\n{"a": 1, "b": h\'0102\', "c": [true, null]}\n'
        "[kerneltest.tooltest.raw]\n<3 bytes: 0001ff>\n"
        f"[kerneltest.tooltest.big]\n<100 bytes: {bytes(range(64)).hex()}...>\n")


async def test_sub_shows_undecodable_payloads_as_bytes(connect_as):
    observer = await connect_as("observer")
    admin = await connect_as("admin")
    task, out = await _subscribed(observer, "kerneltest.tooltest.bad", 2)
    await admin.publish("kerneltest.tooltest.bad", b"\xa1", headers={headers.CONTENT_TYPE: headers.CBOR})
    await admin.publish("kerneltest.tooltest.bad", b"\xff\xfe")  # no header: JSON by default, not UTF-8
    await asyncio.wait_for(task, 5)
    assert out.getvalue() == ("[kerneltest.tooltest.bad]\n<1 bytes: a1>\n"
                              "[kerneltest.tooltest.bad]\n<2 bytes: fffe>\n")


async def test_sub_count_is_an_upper_bound_even_for_a_burst(connect_as):
    observer = await connect_as("observer")
    admin = await connect_as("admin")
    task, out = await _subscribed(observer, "kerneltest.tooltest.burst", 2)
    for i in range(5):  # all five are queued before the subscriber can unsubscribe
        await admin.publish("kerneltest.tooltest.burst", b"%d" % i)
    await admin.flush()
    await asyncio.wait_for(task, 5)
    await asyncio.sleep(0.1)
    assert out.getvalue() == "[kerneltest.tooltest.burst]\n0\n[kerneltest.tooltest.burst]\n1\n"


# --- teebus bus req -----------------------------------------------------------------------------

async def test_req_prints_the_reply(start_component, connect_as):
    await start_component(KmsComponent)
    admin = await connect_as("admin")
    out = io.StringIO()
    status = await tools.request(admin, "mesatee.kms.internal.create", '{"type":"Create"}', headers.JSON, 5.0,
                                 out=out)
    assert status == 0
    reply = orjson.loads(out.getvalue())
    assert reply["type"] == "Create"
    assert re.fullmatch(r"[0-9a-f-]{36}", reply["key_id"])
    assert set(reply["config"]) == {"key", "nonce", "ad"}

    out = io.StringIO()
    status = await tools.request(admin, "mesatee.kms.internal.get",
                                 orjson.dumps({"type": "Get", "key_id": reply["key_id"]}).decode(),
                                 headers.JSON, 5.0, out=out)
    assert status == 0
    assert orjson.loads(out.getvalue())["config"] == reply["config"]


async def test_req_in_cbor_prints_diagnostic_notation(start_component, connect_as):
    await start_component(KmsComponent)
    admin = await connect_as("admin")
    out = io.StringIO()
    status = await tools.request(admin, "mesatee.kms.internal.create", '{"type":"Create"}', headers.CBOR, 5.0,
                                 out=out)
    assert status == 0
    assert re.fullmatch(r'\{"type": "Create", "key_id": "[0-9a-f-]{36}", "config": \{.*\}\}\n', out.getvalue())


async def test_req_error_reply_goes_to_stderr_with_status_1(start_component, connect_as, capsys):
    await start_component(KmsComponent)
    admin = await connect_as("admin")
    out = io.StringIO()
    status = await tools.request(admin, "mesatee.kms.internal.create", '{"type":"Delete","key_id":"x"}',
                                 headers.JSON, 5.0, out=out)
    assert status == 1
    assert out.getvalue() == ""
    err = capsys.readouterr().err
    assert err.startswith("error 400: ")
    assert "serves Create requests, not Delete" in err


async def test_req_without_responders_is_503(connect_as, capsys):
    admin = await connect_as("admin")
    out = io.StringIO()
    started = time.monotonic()
    status = await tools.request(admin, "mesatee.nobody.internal.here", "{}", headers.JSON, 5.0, out=out)
    assert status == 1
    assert time.monotonic() - started < 2  # no responders is known at once, not after the timeout
    err = capsys.readouterr().err
    assert err.startswith("error 503: no component serves mesatee.nobody.internal.here")


async def test_req_rejects_data_that_is_not_json(connect_as, capsys):
    admin = await connect_as("admin")
    status = await tools.request(admin, "mesatee.kms.internal.create", "{type: Create", headers.JSON, 5.0,
                                 out=io.StringIO())
    assert status == 2
    assert "DATA must be JSON text" in capsys.readouterr().err


# --- teebus events ------------------------------------------------------------------------------

async def _create_key(admin) -> str:
    out = io.StringIO()
    assert await tools.request(admin, "mesatee.kms.internal.create", '{"type":"Create"}', headers.JSON, 5.0,
                               out=out) == 0
    return orjson.loads(out.getvalue())["key_id"]


async def test_events_export_the_created_key(start_component, connect_as):
    await start_component(KmsComponent)
    admin = await connect_as("admin")
    observer = await connect_as("observer")
    earlier_key = await _create_key(admin)
    await asyncio.sleep(0.05)
    between = datetime.now(timezone.utc)
    await asyncio.sleep(0.05)
    key_id = await _create_key(admin)

    out = io.StringIO()
    written = await tools.export_events(observer, None, False, "events.mesatee.>", out=out)
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert written == len(lines) >= 2
    assert all(set(line) == {"seq", "subject", "event"} for line in lines)
    assert all(line["subject"].startswith("events.mesatee.") for line in lines)
    seqs = [line["seq"] for line in lines]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    created = [line for line in lines if line["event"].get("key_id") == key_id]
    assert len(created) == 1
    assert created[0]["subject"] == "events.mesatee.key.created"
    assert created[0]["event"]["what"] == "created"
    assert created[0]["event"]["system"] == "mesatee"
    assert earlier_key in {line["event"].get("key_id") for line in lines}

    # --since exports what happened after it, and nothing from before
    out = io.StringIO()
    written = await tools.export_events(observer, between, False, "events.>", out=out)
    recent = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert written == len(recent)
    assert [(line["subject"], line["event"]["key_id"]) for line in recent] == \
        [("events.mesatee.key.created", key_id)]
    assert recent[0]["seq"] == created[0]["seq"]


async def test_events_since_the_future_exports_nothing(connect_as):
    observer = await connect_as("observer")
    out = io.StringIO()
    written = await tools.export_events(observer, datetime.now(timezone.utc) + timedelta(hours=1), False,
                                        out=out)
    assert written == 0
    assert out.getvalue() == ""


async def test_events_follow_prints_new_events_until_stopped(start_component, connect_as):
    await start_component(KmsComponent)
    admin = await connect_as("admin")
    observer = await connect_as("observer")
    out = io.StringIO()
    follow = asyncio.create_task(tools.export_events(observer, datetime.now(timezone.utc), True,
                                                     "events.mesatee.>", out=out))
    await asyncio.sleep(1.3)  # longer than the export's idle timeout: following does not stop
    assert not follow.done()
    key_id = await _create_key(admin)
    await eventually(lambda: key_id in out.getvalue())
    line = orjson.loads(out.getvalue().splitlines()[-1])
    assert (line["subject"], line["event"]["key_id"]) == ("events.mesatee.key.created", key_id)
    follow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follow


async def test_events_on_a_bus_without_the_stream_fail_clearly(bare_bus):
    observer = await connect(bare_bus.url, "observer", passwords=bare_bus.passwords)
    try:
        with pytest.raises(NotFound) as info:
            await tools.export_events(observer, None, False, out=io.StringIO())
    finally:
        await observer.close()
    assert "this bus has no EVENTS stream" in info.value.message
    result = await asyncio.to_thread(_cli, "events", "--data-dir", str(bare_bus.data_dir), "--nats", bare_bus.url)
    assert result.returncode == 1
    assert result.stderr.startswith("teebus: this bus has no EVENTS stream")
    assert "Traceback" not in result.stderr


def test_parse_since_durations_and_iso_times():
    now = datetime.now(timezone.utc)
    assert abs(tools.parse_since("15m") - (now - timedelta(minutes=15))) < timedelta(seconds=5)
    assert abs(tools.parse_since("2h") - (now - timedelta(hours=2))) < timedelta(seconds=5)
    assert abs(tools.parse_since("30s") - (now - timedelta(seconds=30))) < timedelta(seconds=5)
    assert abs(tools.parse_since("7d") - (now - timedelta(days=7))) < timedelta(seconds=5)
    assert tools.parse_since("2024-05-01T12:00:00+02:00") == datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)
    assert tools.parse_since("2024-05-01T12:00:00Z") == datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    naive = tools.parse_since("2024-05-01T12:00:00")  # no zone: taken as UTC
    assert naive == datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    assert tools.parse_since("2024-05-01").tzinfo is not None


@pytest.mark.parametrize("value", ["yesterday", "15x", "m", "-5m", "1.5h", "", "\u00b2m", "99999999999d",
                                   "2024-13-01"])
def test_parse_since_rejects_nonsense_clearly(value):
    with pytest.raises(ValueError) as info:
        tools.parse_since(value)
    message = str(info.value)
    assert message.startswith("--since takes an ISO time or a duration like 15m, 2h, 7d")
    assert repr(value) in message


# --- the CLI as a person runs it ----------------------------------------------------------------

def _cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return _cli_together(list(args), timeout=timeout)[0]


def _cli_together(*commands: list[str], timeout: float = 20) -> list[subprocess.CompletedProcess]:
    """Run several `teebus ...` commands at once (each is a fresh interpreter) and collect them all."""
    processes = [subprocess.Popen([sys.executable, "-m", "teebus.cli", *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=_env())
                 for args in commands]
    results = []
    for args, process in zip(commands, processes):
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
        results.append(subprocess.CompletedProcess(args, process.returncode, stdout, stderr))
    return results


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


class _Up:
    """`teebus up` as a subprocess: stdout read without blocking, stderr kept in a file."""

    def __init__(self, data_dir: Path, nats_port: int, kms_port: int, log: Path) -> None:
        self.log = log
        with open(log, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "teebus.cli", "up", "--data-dir", str(data_dir),
                 "--nats-port", str(nats_port), "--port", f"mesatee-kms={kms_port}",
                 "--port", f"enarx-keepmgr={free_port()}", "--port", f"enarx-wasmldr={free_port()}",
                 "--log-level", "warning"],
                stdout=subprocess.PIPE, stderr=stderr, cwd=REPO_ROOT, env=_env())
        self.output = ""

    def wait_until_up(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while time.monotonic() < deadline and "Ctrl-C stops everything." not in self.output:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:  # `up` closed stdout: it exited
                    break
                self.output += chunk.decode()
        if "Ctrl-C stops everything." not in self.output:
            raise AssertionError(f"teebus up did not come up: rc={self.process.poll()} out={self.output!r} "
                                 f"err={self.log.read_text()!r}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


def test_cli_up_status_req_events_and_clean_shutdown(tmp_path):
    data_dir = tmp_path / "data"
    nats_port, kms_port = free_port(), free_port()
    url = f"nats://127.0.0.1:{nats_port}"
    up = _Up(data_dir, nats_port, kms_port, tmp_path / "up.stderr")
    try:
        up.wait_until_up()
        assert "teebus is up" in up.output
        assert url in up.output
        assert f"http://127.0.0.1:{kms_port}" in up.output
        assert (data_dir / "nats.credentials").stat().st_mode & 0o777 == 0o600

        where = ["--data-dir", str(data_dir), "--nats", url]
        status, req, bad, bad_since = _cli_together(
            ["status", *where],
            ["bus", "req", "mesatee.kms.internal.create", '{"type":"Create"}', *where],
            ["bus", "req", "mesatee.kms.internal.get", '{"type":"Get"}', *where],
            ["events", "--since", "soon", *where])
        assert status.returncode == 0, status.stderr
        assert re.search(r"^mesatee-kms \S+\s+replicas: 1$", status.stdout, re.M), status.stdout
        for subject in KMS_SUBJECTS:
            assert subject in status.stdout

        assert req.returncode == 0, req.stderr
        key_id = orjson.loads(req.stdout)["key_id"]
        assert re.fullmatch(r"[0-9a-f-]{36}", key_id)

        assert bad.returncode == 1
        assert bad.stderr.startswith("error 400: a Get request needs a key_id")

        events = _cli("events", "--since", "5m", "--subject", "events.mesatee.>", *where)
        assert events.returncode == 0, events.stderr
        lines = [orjson.loads(line) for line in events.stdout.splitlines()]
        assert [(line["subject"], line["event"]["key_id"]) for line in lines] == \
            [("events.mesatee.key.created", key_id)]
        everything = [orjson.loads(line) for line in _cli("events", *where).stdout.splitlines()]
        assert everything[0]["seq"] == 1  # a fresh data directory: the first event ever stored
        assert {"events.mesatee.key.created", "events.enarx.contract.offered"} <= {e["subject"] for e in everything}

        assert bad_since.returncode == 1
        assert "--since takes an ISO time or a duration like 15m, 2h, 7d; got 'soon'" in bad_since.stderr

        nats_log = (data_dir / "nats-server.log").read_text()
        nats_pid = int(re.match(r"\[(\d+)\] .*Starting nats-server", nats_log).group(1))
        os.kill(nats_pid, 0)  # the child is alive while `up` runs
        assert not port_is_free("127.0.0.1", nats_port)

        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(timeout=5) == 0
        with pytest.raises(ProcessLookupError):  # stopped and reaped by `up`, not orphaned
            os.kill(nats_pid, 0)
        assert port_is_free("127.0.0.1", nats_port)
        assert port_is_free("127.0.0.1", kms_port)
        assert "Server Exiting" in (data_dir / "nats-server.log").read_text()  # a clean JetStream shutdown
        assert "Traceback" not in (tmp_path / "up.stderr").read_text()
    finally:
        up.stop()


@contextmanager
def _taken_port() -> Iterator[int]:
    """A loopback port something else listens on for the duration."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_cli_up_on_a_taken_nats_port_fails_clearly(tmp_path):
    with _taken_port() as port:
        result = _cli("up", "--data-dir", str(tmp_path / "data"), "--nats-port", str(port),
                      "--port", f"mesatee-kms={free_port()}")
    assert result.returncode == 1
    assert f"port 127.0.0.1:{port} is already in use" in result.stderr
    assert "--nats-port" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_up_on_a_taken_http_port_fails_clearly_and_stops_nats(tmp_path):
    nats_port = free_port()
    with _taken_port() as port:
        result = _cli("up", "--data-dir", str(tmp_path / "data"), "--nats-port", str(nats_port),
                      "--port", f"mesatee-kms={port}")
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} for mesatee-kms" in result.stderr
    assert "--port mesatee-kms=PORT" in result.stderr
    assert "Traceback" not in result.stderr
    assert port_is_free("127.0.0.1", nats_port)  # the embedded server was stopped, not orphaned


def test_cli_run_without_nats_says_so():
    result = _cli("run", "mesatee.kms")
    assert result.returncode == 1
    assert "teebus run joins an existing bus: pass --nats URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_run_unknown_name_lists_the_known_ones(tmp_path, catalog):
    result = _cli("run", "unknown.name", "--nats", f"nats://127.0.0.1:{free_port()}",
                  "--data-dir", str(tmp_path))
    assert result.returncode != 0
    assert "unknown component or adapter unknown.name" in result.stderr
    assert f"known: {', '.join(catalog.names())}" in result.stderr
    assert "mesatee.kms" in result.stderr and "http.enarx" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_status_without_a_bus_fails_clearly(tmp_path):
    result = _cli("status", "--data-dir", str(tmp_path / "never-up"), "--nats", f"nats://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "does not exist: start `teebus up --data-dir" in result.stderr
    assert "Traceback" not in result.stderr


async def test_status_shows_each_services_description(start_component, connect_as):
    await start_component(KmsComponent)
    out = io.StringIO()
    await tools.status(await connect_as("observer"), out=out)
    assert KmsComponent.description in _service_block(out.getvalue(), "mesatee-kms")



async def test_cli_status_into_a_closed_pipe_is_not_an_error(start_component, nats_server):
    await start_component(KmsComponent)
    reader, writer = os.pipe()
    os.close(reader)  # like `teebus status | head -1` once head has left
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "teebus.cli", "status", "--data-dir", str(nats_server.data_dir),
        "--nats", nats_server.url, stdout=writer, stderr=asyncio.subprocess.PIPE, cwd=REPO_ROOT, env=_env())
    os.close(writer)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr
    assert b"Broken pipe" not in stderr and b"Traceback" not in stderr


def test_a_killed_teebus_up_takes_its_nats_server_with_it(tmp_path):
    nats_port = free_port()
    up = _Up(tmp_path / "data", nats_port, free_port(), tmp_path / "up.stderr")
    try:
        up.wait_until_up()
        assert not port_is_free("127.0.0.1", nats_port)
        up.process.kill()  # no chance to stop anything cleanly
        up.process.wait()
        deadline = time.monotonic() + 10
        while not port_is_free("127.0.0.1", nats_port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert port_is_free("127.0.0.1", nats_port)
    finally:
        up.stop()
