"""Aurae's gRPC face (adapters/unix/aurae.py) through the real socket with mutual TLS, the generated
stubs, the Python client (components/aurae/client.py) and the CLI (components/aurae/cli.py), in
front of the real components on the real bus.

Each test runs a node of its own (`start_node`) for a host of its own, so subjects never cross."""

from __future__ import annotations

import asyncio
import grp
import os
import re
import stat
import sys
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from adapters.unix import aurae as adapter
from components.aurae.protos import (meta_pb2, observe_pb2, observe_pb2_grpc, runtime_pb2, runtime_pb2_grpc,
                                        schedule_pb2, schedule_pb2_grpc)
from bus import log, procfs
from components.aurae import pki
from components.aurae.client import AuraeClient, AuraeError
from components.aurae.config import AuraeConfig
from teebus.launcher import Node
from tests.conftest import eventually

RPC = 10.0                    # s: every call has a deadline, so a refusal can never hang a test
Code = grpc.StatusCode


# --- the node ---------------------------------------------------------------------------------------

class Aurae:
    """A running Aurae node: its socket, PKI, and channels made with the client's certificates."""

    def __init__(self, node: Node, socket: Path, pki_dir: Path, host: str) -> None:
        self.node, self.socket, self.pki_dir, self.host = node, socket, pki_dir, host
        self.paths = pki.Paths.of(pki_dir)
        self._channels: list[grpc.aio.Channel] = []

    def channel(self, *, root: bytes | None = None, key: bytes | None = None, chain: bytes | None = None,
                anonymous: bool = False) -> grpc.aio.Channel:
        if not anonymous:
            key = key or self.paths.client_key.read_bytes()
            chain = chain or self.paths.client_cert.read_bytes()
        creds = grpc.ssl_channel_credentials(root or self.paths.ca_cert.read_bytes(), key, chain)
        channel = grpc.aio.secure_channel(f"unix:{self.socket}", creds,
                                          options=[("grpc.ssl_target_name_override", pki.SERVER_NAME)])
        self._channels.append(channel)
        return channel

    def core(self) -> runtime_pb2_grpc.CoreStub:
        return runtime_pb2_grpc.CoreStub(self.channel())

    def observe(self) -> observe_pb2_grpc.ObserveStub:
        return observe_pb2_grpc.ObserveStub(self.channel())

    def client(self, **options: Any) -> AuraeClient:
        return AuraeClient(self.socket, self.pki_dir, **options)

    async def run(self, command: str, timeout: float = RPC) -> runtime_pb2.ExecutableStatus:
        return await self.core().RunExecutable(runtime_pb2.Executable(command=command), timeout=timeout)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


StartAurae = Callable[..., Awaitable[Aurae]]


@pytest.fixture
async def start_aurae(start_node, tmp_path: Path, data_dir: Path) -> AsyncIterator[StartAurae]:
    """Factory: a node of the Aurae components and the socket, for a fresh host, on a short path."""
    made: list[Aurae] = []

    async def factory(**aurae: Any) -> Aurae:
        host = f"grpc-{uuid.uuid4().hex[:10]}"
        socket = aurae.pop("socket", None) or tmp_path / f"{host}.sock"
        section = {"host": host, "socket": str(socket), "grace_seconds": 1.0, **aurae}
        node = await start_node(["aurae.runtime", "aurae.observe", "aurae.schedule", "unix.aurae"],
                                document={"aurae": section})
        running = Aurae(node, Path(socket), data_dir / "aurae" / "pki", host)
        made.append(running)
        return running

    yield factory
    for running in made:
        await running.close()


@pytest.fixture
async def aurae(start_aurae: StartAurae) -> Aurae:
    return await start_aurae()


async def failure(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call, RPC + 5)
    return caught.value


# --- translation (no socket) -----------------------------------------------------------------------

def test_requests_reach_components_complete_with_ints_and_enum_names() -> None:
    request = observe_pb2.GetSubProcessStreamRequest(channel_type=observe_pb2.CHANNEL_STDERR, process_id=2**40)
    assert adapter.to_payload(request) == {"channel_type": "CHANNEL_STDERR", "process_id": 2**40}
    assert adapter.to_payload(runtime_pb2.Executable(command="ls")) == {
        "meta": {"name": "", "message": ""}, "command": "ls", "comment": ""}


def test_replies_are_read_leniently() -> None:
    reply = adapter.from_payload({"meta": {"name": "x", "message": None}, "proc": {"pid": 7},
                                  "status": "STATUS_COMPLETE", "exit_code": 0, "stdout": "o", "later": [1]},
                                 runtime_pb2.ExecutableStatus)
    assert (reply.exit_code, reply.proc.pid, reply.status, reply.meta.name) == ("0", 7, meta_pb2.STATUS_COMPLETE, "x")
    with pytest.raises(adapter.BusError, match="does not fit runtime.ExecutableStatus"):
        adapter.from_payload({"status": "STATUS_NONSENSE"}, runtime_pb2.ExecutableStatus)


def test_error_mapping() -> None:
    mapped = {status: adapter.grpc_code(status) for status in (400, 404, 409, 412, 413, 422, 500, 503, 504, 418)}
    assert mapped == {400: Code.INVALID_ARGUMENT, 404: Code.NOT_FOUND, 409: Code.FAILED_PRECONDITION,
                      412: Code.FAILED_PRECONDITION, 413: Code.RESOURCE_EXHAUSTED, 422: Code.FAILED_PRECONDITION,
                      500: Code.INTERNAL, 503: Code.UNAVAILABLE, 504: Code.DEADLINE_EXCEEDED, 418: Code.INTERNAL}
    assert adapter.grpc_code(409, Code.ALREADY_EXISTS) == Code.ALREADY_EXISTS


# --- the socket ---------------------------------------------------------------------------------------

async def test_socket_is_private_and_removed_at_stop(aurae: Aurae) -> None:
    mode = aurae.socket.lstat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == adapter.SOCKET_MODE == 0o600
    await aurae.node.stop()
    assert not aurae.socket.exists()


async def test_a_socket_group_shares_the_socket_with_that_group(start_aurae: StartAurae) -> None:
    group = grp.getgrgid(os.getgid() if os.getuid() else 1)   # as root any group; else one we are in
    aurae = await start_aurae(socket_group=group.gr_name)
    info = aurae.socket.lstat()
    assert stat.S_IMODE(info.st_mode) == adapter.GROUP_SOCKET_MODE == 0o660 and info.st_gid == group.gr_gid
    assert (await aurae.run("true")).status == meta_pb2.STATUS_COMPLETE


def test_a_socket_group_this_machine_lacks_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="no group named 'no-such-group-x'"):
        AuraeConfig(socket_group="no-such-group-x")
    assert AuraeConfig(socket_group="4242").socket_gid() == 4242


async def test_stale_socket_is_replaced_and_a_live_one_refused(start_aurae: StartAurae, tmp_path: Path) -> None:
    import socket as sockets
    stale = tmp_path / "stale.sock"
    with sockets.socket(sockets.AF_UNIX) as leftover:
        leftover.bind(str(stale))                       # bound, never listening: a dead server's file
    running = await start_aurae(socket=stale)
    assert (await running.run("true")).status == meta_pb2.STATUS_COMPLETE
    with pytest.raises(Exception, match="served by a running process"):
        await start_aurae(socket=stale)


async def test_a_path_longer_than_a_socket_address_holds(start_aurae: StartAurae, tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    running = await start_aurae(socket=deep / "aurae.sock")
    assert len(os.fsencode(str(running.socket))) > 107
    async with running.client() as client:
        assert (await client.run("echo long")).stdout == "long\n"


# --- RunExecutable ------------------------------------------------------------------------------------

async def test_run_executable_honours_quotes(aurae: Aurae) -> None:
    reply = await aurae.run("""sh -c 'echo "a  b"; echo c >&2'""")
    assert reply.status == meta_pb2.STATUS_COMPLETE
    assert (reply.stdout, reply.stderr, reply.exit_code) == ("a  b\n", "c\n", "0")
    assert reply.proc.pid > 0


async def test_run_executable_non_zero_exit(aurae: Aurae) -> None:
    reply = await aurae.run("sh -c 'echo no >&2; exit 3'")
    assert (reply.status, reply.exit_code, reply.stderr) == (meta_pb2.STATUS_COMPLETE, "3", "no\n")


async def test_run_executable_missing_binary(aurae: Aurae) -> None:
    reply = await aurae.run("/no/such/binary --flag")
    assert reply.status == meta_pb2.STATUS_ERROR
    assert "/no/such/binary" in reply.meta.message
    assert reply.exit_code == ""


async def test_run_executable_killed_by_a_signal(aurae: Aurae) -> None:
    reply = await aurae.run("sh -c 'kill -TERM $$'")
    assert reply.status == meta_pb2.STATUS_ERROR
    assert "SIGTERM" in reply.meta.message and reply.exit_code == ""


async def test_run_executable_output_that_is_not_utf8(aurae: Aurae) -> None:
    reply = await aurae.run(r"printf 'a\377b\n'")
    assert reply.status == meta_pb2.STATUS_COMPLETE
    assert reply.stdout == "a\ufffdb\n"


async def test_run_executable_output_past_the_cap(start_aurae: StartAurae) -> None:
    running = await start_aurae(max_output_bytes=1024)
    reply = await running.run("sh -c 'head -c 5000 /dev/zero | tr \"\\0\" a'")
    assert reply.status == meta_pb2.STATUS_COMPLETE
    assert reply.stdout.startswith("a" * 1024) and "3976 more bytes cut" in reply.stdout


async def test_run_executable_timeout(start_aurae: StartAurae) -> None:
    running = await start_aurae(timeout_seconds=0.5)
    began = time.monotonic()
    reply = await running.run("sleep 30")
    assert reply.status == meta_pb2.STATUS_ERROR
    assert "timed out" in reply.meta.message and reply.exit_code == ""
    assert time.monotonic() - began < 5


async def test_the_client_deadline_stops_the_process(aurae: Aurae) -> None:
    """The deadline travels over the bus: the process is stopped in time for the caller to hear why."""
    began = time.monotonic()
    reply = await aurae.run("sleep 30", timeout=1.0)
    assert time.monotonic() - began < 1.0
    assert reply.status == meta_pb2.STATUS_ERROR and reply.exit_code == ""
    assert re.match(r"the caller's deadline came first: timed out after 0\.[45]\d*s", reply.meta.message), reply.meta.message
    assert "stopped with SIGTERM" in reply.meta.message
    with pytest.raises(ProcessLookupError):
        os.kill(reply.proc.pid, 0)


async def test_a_process_deaf_to_sigterm_dies_after_the_deadline_and_its_grace(aurae: Aurae, tmp_path: Path) -> None:
    pid_file = tmp_path / "deaf.pid"
    began = time.monotonic()
    error = await failure(aurae.run(f"sh -c 'trap \"\" TERM; echo $$ > {pid_file}; sleep 30'", timeout=0.6))
    assert error.code() == Code.DEADLINE_EXCEEDED and time.monotonic() - began < 2.0
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5.0                 # 0.1 s timeout + 1 s grace, then SIGKILL
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"the process {pid} still runs 5 s after its caller's deadline")


async def test_unbalanced_quote_is_invalid_argument(aurae: Aurae) -> None:
    error = await failure(aurae.run("echo 'unbalanced"))
    assert error.code() == Code.INVALID_ARGUMENT
    assert "closing quotation" in error.details()
    assert dict(error.trailing_metadata() or ()).get("x-request-id")


async def test_run_cell_reaches_the_runtime(aurae: Aurae) -> None:
    error = await failure(aurae.core().RunCell(runtime_pb2.Cell(meta=meta_pb2.AuraeMeta(name="empty")), timeout=RPC))
    assert error.code() == Code.INVALID_ARGUMENT and "containers" in error.details()


@pytest.mark.parametrize("method, request_message, needs", [
    ("RunPod", runtime_pb2.Pod(), "Spawn"),
    ("Spawn", runtime_pb2.SpawnRequest(), "hypervisor"),
    ("RunVirtualMachine", runtime_pb2.VirtualMachine(name="vm", image="x.qcow2"), "hypervisor"),
])
async def test_what_teebus_does_not_run_is_unimplemented(aurae: Aurae, method: str, request_message: Any,
                                                         needs: str) -> None:
    error = await failure(getattr(aurae.core(), method)(request_message, timeout=RPC))
    assert error.code() == Code.UNIMPLEMENTED
    assert error.details().startswith(f"{method} needs") and needs in error.details()


async def test_no_component_is_unavailable(start_node, tmp_path: Path, data_dir: Path) -> None:
    host = f"grpc-{uuid.uuid4().hex[:10]}"
    socket = tmp_path / "alone.sock"
    node = await start_node(["unix.aurae"], document={"aurae": {"host": host, "socket": str(socket)}})
    running = Aurae(node, socket, data_dir / "aurae" / "pki", host)
    try:
        error = await failure(running.run("true"))
        assert error.code() == Code.UNAVAILABLE and "no component serves" in error.details()
    finally:
        await running.close()


# --- mutual TLS ---------------------------------------------------------------------------------------

async def test_no_client_certificate_is_refused(aurae: Aurae) -> None:
    stub = runtime_pb2_grpc.CoreStub(aurae.channel(anonymous=True))
    error = await failure(stub.RunExecutable(runtime_pb2.Executable(command="true"), timeout=RPC))
    assert error.code() == Code.UNAVAILABLE


async def test_client_of_a_foreign_ca_is_refused(aurae: Aurae, tmp_path: Path) -> None:
    foreign = pki.ensure(tmp_path / "foreign")
    channel = aurae.channel(key=foreign.client_key.read_bytes(), chain=foreign.client_cert.read_bytes())
    error = await failure(runtime_pb2_grpc.CoreStub(channel).RunExecutable(
        runtime_pb2.Executable(command="true"), timeout=RPC))
    assert error.code() == Code.UNAVAILABLE


# --- health and reflection ------------------------------------------------------------------------------

async def test_health_serving_then_not_serving_at_stop(aurae: Aurae) -> None:
    stub = health_pb2_grpc.HealthStub(aurae.channel())
    for service in ("", *adapter.SERVICES):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=RPC)
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    stopping = asyncio.create_task(aurae.node.stop())
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    await stopping


async def test_reflection_lists_every_service(aurae: Aurae) -> None:
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="schedule.Schedule")]
    stub = reflection_pb2_grpc.ServerReflectionStub(aurae.channel())
    replies = [r async for r in stub.ServerReflectionInfo(iter(requests), timeout=RPC)]
    listed = {s.name for s in replies[0].list_services_response.service}
    assert listed == {"runtime.Core", "observe.Observe", "schedule.ScheduleExecutable", "schedule.Schedule",
                      "grpc.health.v1.Health", reflection.SERVICE_NAME}
    files = {f.name: f for f in (descriptor_pb2.FileDescriptorProto.FromString(raw)
                                 for raw in replies[1].file_descriptor_response.file_descriptor_proto)}
    assert {"schedule.proto", "runtime.proto", "meta.proto"} <= set(files)
    assert [s.name for s in files["schedule.proto"].service] == ["Schedule", "ScheduleExecutable"]


# --- observe -----------------------------------------------------------------------------------------

async def test_status(aurae: Aurae) -> None:
    reply = await aurae.observe().Status(observe_pb2.StatusRequest(), timeout=RPC)
    assert reply.meta.name


async def test_daemon_log_stream_seen_by_two_watchers(aurae: Aurae) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    calls = [aurae.observe().GetAuraeDaemonLogStream(observe_pb2.GetAuraeDaemonLogStreamRequest(), timeout=30)
             for _ in range(2)]

    async def first_with_marker(call: Any) -> observe_pb2.LogItem:
        async for item in call:
            if marker in item.line:
                return item
        raise AssertionError("the stream ended before the marker")

    watchers = [asyncio.create_task(first_with_marker(call)) for call in calls]
    logger = log.get_logger("tests.aurae_grpc")

    async def log_until_seen() -> None:
        while not all(w.done() for w in watchers):
            logger.warning("daemon log probe", probe=marker)
            await asyncio.sleep(0.1)

    prober = asyncio.create_task(log_until_seen())
    try:
        seen = await asyncio.wait_for(asyncio.gather(*watchers), 15)
    finally:
        prober.cancel()
        for call in calls:
            call.cancel()
    assert all(item.timestamp > 0 for item in seen)
    assert seen[0].line == seen[1].line


async def test_a_watcher_that_leaves_is_forgotten(aurae: Aurae) -> None:
    observe = next(c for c in aurae.node.components if c.name == "observe")
    call = aurae.observe().GetAuraeDaemonLogStream(observe_pb2.GetAuraeDaemonLogStreamRequest(), timeout=30)
    reading = asyncio.create_task(_drain(call))
    await eventually(lambda: len(observe.feeds) == 1)
    call.cancel()
    await asyncio.gather(reading, return_exceptions=True)
    await eventually(lambda: len(observe.feeds) == 0)     # the adapter cancelled its feed at once


async def test_subprocess_stream_joined_late(aurae: Aurae) -> None:
    token = uuid.uuid4().hex
    script = f"for i in 1 2 3 4 5 6; do echo {token}-$i; sleep 0.3; done; echo gone >&2"
    running = asyncio.create_task(aurae.run(f"sh -c '{script}'", timeout=30))
    pid = await _pid_running(token)
    await asyncio.sleep(0.8)                                 # a few lines are out before anyone watches
    call = aurae.observe().GetSubProcessStream(
        observe_pb2.GetSubProcessStreamRequest(channel_type=observe_pb2.CHANNEL_STDOUT, process_id=pid), timeout=30)
    lines = [item.line async for item in call]               # ends when the process does
    assert lines == [f"{token}-{i}" for i in range(1, 7)]
    reply = await running
    assert reply.proc.pid == pid and reply.status == meta_pb2.STATUS_COMPLETE
    stderr = [item async for item in aurae.observe().GetSubProcessStream(
        observe_pb2.GetSubProcessStreamRequest(channel_type=observe_pb2.CHANNEL_STDERR, process_id=pid), timeout=RPC)]
    assert [item.line for item in stderr] == ["gone"] and stderr[0].channel == "stderr"


async def test_subprocess_stream_bad_pid_is_invalid_argument(aurae: Aurae) -> None:
    call = aurae.observe().GetSubProcessStream(observe_pb2.GetSubProcessStreamRequest(process_id=0), timeout=RPC)
    error = await failure(_drain(call))
    assert error.code() == Code.INVALID_ARGUMENT and "process_id" in error.details()


async def test_streams_end_unavailable_when_the_socket_stops(aurae: Aurae) -> None:
    call = aurae.observe().GetAuraeDaemonLogStream(observe_pb2.GetAuraeDaemonLogStreamRequest(), timeout=30)
    reading = asyncio.create_task(_drain(call))
    await asyncio.sleep(0.5)
    began = time.monotonic()
    await aurae.node.stop()
    error = await failure(reading)
    assert error.code() == Code.UNAVAILABLE and "stopping" in error.details()
    assert time.monotonic() - began < adapter.STOP_GRACE


async def _drain(call: Any) -> list[Any]:
    return [item async for item in call]


async def _pid_running(token: str) -> int:
    """The pid of the `sh -c` whose script holds `token` (the runtime runs in this process)."""
    found: list[int] = []

    def look() -> bool:
        for entry in os.listdir("/proc"):
            if entry.isdigit() and any(token.encode() in arg for arg in procfs.argv(int(entry))):
                found.append(int(entry))
                return True
        return False

    await eventually(look, 10)
    return found[0]


# --- schedule ----------------------------------------------------------------------------------------

async def test_enable_running_disable_destroy(aurae: Aurae) -> None:
    scheduling = schedule_pb2_grpc.ScheduleExecutableStub(aurae.channel())
    schedule = schedule_pb2_grpc.ScheduleStub(aurae.channel())
    name = f"svc-{uuid.uuid4().hex[:6]}"
    executable = runtime_pb2.Executable(meta=meta_pb2.AuraeMeta(name=name), command="sleep 300", comment="c")

    enabled = await scheduling.Enable(executable, timeout=RPC)
    assert "running as pid" in enabled.meta.message
    shown = await schedule.ShowEnabled(schedule_pb2.ShowEnabledRequest(), timeout=RPC)
    assert [(e.meta.name, e.command, e.comment) for e in shown.Executables] == [(name, "sleep 300", "c")]
    pid = int(shown.Executables[0].meta.message.split("pid ")[1].split()[0])
    assert procfs.argv(pid) == [b"sleep", b"300"]

    other = runtime_pb2.Executable(meta=meta_pb2.AuraeMeta(name=name), command="sleep 301")
    assert (await failure(scheduling.Enable(other, timeout=RPC))).code() == Code.ALREADY_EXISTS

    await scheduling.Disable(runtime_pb2.Executable(meta=meta_pb2.AuraeMeta(name=name)), timeout=RPC)
    await eventually(lambda: not procfs.argv(pid), 5)
    disabled = await schedule.ShowDisabled(schedule_pb2.ShowDisabledRequest(), timeout=RPC)
    assert [e.meta.name for e in disabled.Executables] == [name]
    assert not (await schedule.ShowEnabled(schedule_pb2.ShowEnabledRequest(), timeout=RPC)).Executables

    await scheduling.Destroy(runtime_pb2.Executable(meta=meta_pb2.AuraeMeta(name=name)), timeout=RPC)
    assert not (await schedule.ShowDisabled(schedule_pb2.ShowDisabledRequest(), timeout=RPC)).Executables
    missing = await failure(scheduling.Destroy(runtime_pb2.Executable(meta=meta_pb2.AuraeMeta(name=name)),
                                               timeout=RPC))
    assert missing.code() == Code.NOT_FOUND and name in missing.details()


# --- the Python client ---------------------------------------------------------------------------------

async def test_client_round_trip(aurae: Aurae) -> None:
    async with aurae.client() as client:
        ran = await client.run("sh -c 'echo out; exit 2'")
        assert (ran.stdout, ran.exit_code, ran.status, ran.ok) == ("out\n", 2, "STATUS_COMPLETE", False)
        assert [line.line async for line in client.logs(ran.pid)] == ["out"]
        assert (await client.status()).name
        name = f"c-{uuid.uuid4().hex[:6]}"
        assert "running as pid" in await client.enable(name, "sleep 300")
        assert [s.name for s in await client.show()] == [name]
        await client.disable(name)
        assert [s.name for s in await client.show(disabled=True)] == [name]
        await client.destroy(name)
        with pytest.raises(AuraeError) as caught:
            await client.run("echo 'open")
        assert caught.value.code == Code.INVALID_ARGUMENT


async def test_client_without_a_daemon_fails_fast(tmp_path: Path, data_dir: Path) -> None:
    pki.ensure(data_dir / "aurae" / "pki")
    async with AuraeClient(tmp_path / "nobody.sock", data_dir / "aurae" / "pki") as client:
        began = time.monotonic()
        with pytest.raises(AuraeError) as caught:
            await client.status(timeout=RPC)
    assert caught.value.code == Code.UNAVAILABLE and time.monotonic() - began < RPC


# --- the CLI -----------------------------------------------------------------------------------------

async def cli(aurae: Aurae, *args: str, socket: bool = True) -> tuple[int, str, str]:
    """`teebus aurae ARGS` in a child process (never blocking this loop, which serves the socket)."""
    where = ["--data-dir", str(aurae.pki_dir.parent.parent)] + (["--socket", str(aurae.socket)] if socket else [])
    verb, rest = args[0], list(args[1:])
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "teebus.cli", "aurae", verb, *where, *rest,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=Path(__file__).parent.parent)
    out, err = await asyncio.wait_for(child.communicate(), 60)
    return child.returncode, out.decode(), err.decode()


async def test_cli_run(aurae: Aurae) -> None:
    (code, out, err), (bad, _, complaint) = await asyncio.gather(
        cli(aurae, "run", "sh -c 'echo hi; echo there >&2; exit 3'"), cli(aurae, "run", "echo 'open"))
    assert (code, out, err) == (3, "hi\n", "there\n")
    assert bad == 1 and complaint.startswith("teebus aurae: INVALID_ARGUMENT: ") and "closing quotation" in complaint


async def test_cli_show_and_logs(aurae: Aurae) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    async with aurae.client() as client:
        await client.enable(name, "sleep 300")
        ran = await client.run("sh -c 'echo one; echo two'")
        (code, out, _), (logged, lines, _) = await asyncio.gather(cli(aurae, "show"),
                                                                  cli(aurae, "logs", str(ran.pid)))
        await client.destroy(name)
    assert code == 0 and out.splitlines()[0].split() == ["NAME", "COMMAND", "STATE"]
    assert out.splitlines()[1].startswith(f"{name}  sleep 300  running as pid")
    assert (logged, lines) == (0, "one\ntwo\n")


async def test_cli_cert_issues_a_client_the_daemon_accepts(aurae: Aurae) -> None:
    name = f"ops-{uuid.uuid4().hex[:6]}"
    code, out, _ = await cli(aurae, "cert", name, socket=False)
    assert code == 0 and f"{name}.crt" in out and f"{name}.key" in out
    assert stat.S_IMODE((aurae.pki_dir / f"{name}.key").stat().st_mode) == 0o600
    (code, out, err), (again, _, refusal), (missing, _, complaint) = await asyncio.gather(
        cli(aurae, "status", "--client", name), cli(aurae, "cert", name, socket=False),
        cli(aurae, "disable", "never-enabled"))
    assert code == 0 and out.strip(), err
    assert again == 1 and "already exists" in refusal
    assert missing == 1 and complaint.startswith("teebus aurae: NOT_FOUND: ")
