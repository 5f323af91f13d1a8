"""Aurae foundation: the protos match Aurae's October 2022 wire (FACTS.md), the PKI is sound and
never overwritten, and grpcio's asyncio server on a Unix socket enforces mutual TLS with it."""

from __future__ import annotations

import asyncio
import datetime as dt
import stat
from pathlib import Path
from typing import AsyncIterator

import grpc
import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store
from google.protobuf.descriptor import FieldDescriptor as FD
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from components.aurae.protos import meta_pb2, observe_pb2, observe_pb2_grpc, runtime_pb2, schedule_pb2
from components.aurae import pki

FILES = {"meta": meta_pb2, "observe": observe_pb2, "runtime": runtime_pb2, "schedule": schedule_pb2}

# FACTS.md, "Aurae (API of October 2022)", written out; messages the seed lists without fields are empty.
FIELDS: dict[str, dict[str, int]] = {
    "meta.AuraeMeta": {"name": 1, "message": 2},
    "meta.ProcessMeta": {"pid": 1},
    "runtime.Executable": {"meta": 1, "command": 3, "comment": 4},
    "runtime.ExecutableStatus": {"meta": 1, "proc": 2, "status": 3, "stdout": 4, "stderr": 5, "exit_code": 6},
    "runtime.Cell": {"meta": 1, "containers": 2},
    "runtime.CellStatus": {"meta": 1, "status": 2, "container_statuses": 3},
    "runtime.Container": {"meta": 1, "image": 2},
    "runtime.ContainerStatus": {"meta": 1, "proc": 2, "status": 3},
    "runtime.Pod": {"meta": 1, "cell": 2},
    "runtime.PodStatus": {"meta": 1, "status": 3, "spawn_response": 4, "instance": 5, "cell_status": 6},
    "runtime.VirtualMachine": {"meta": 1, "name": 2, "image": 3},
    "runtime.VirtualMachineStatus": {"meta": 1, "status": 2},
    "runtime.Instance": {"meta": 1, "is_root": 2, "nested_instances": 3},
    "runtime.SpawnRequest": {},
    "runtime.SpawnResponse": {},
    "observe.StatusRequest": {"meta": 1},
    "observe.StatusResponse": {"meta": 1},
    "observe.GetAuraeDaemonLogStreamRequest": {},
    "observe.GetSubProcessStreamRequest": {"channel_type": 1, "process_id": 2},
    "observe.LogItem": {"channel": 1, "line": 2, "timestamp": 3},
    "schedule.ShowEnabledRequest": {"meta": 1},
    "schedule.ShowDisabledRequest": {"meta": 1},
    "schedule.ShowEnabledResponse": {"meta": 1, "Executables": 2},
    "schedule.ShowDisabledResponse": {"meta": 1, "Executables": 2},
    "schedule.ExecutableEnableResponse": {"meta": 1},
    "schedule.ExecutableDisableResponse": {"meta": 1},
    "schedule.ExecutableDestroyResponse": {"meta": 1},
}

# Field types the seed and FACTS.md insist on (scalar type, or message/enum full name), and labels.
TYPES = {
    "meta.ProcessMeta.pid": FD.TYPE_INT32,
    "observe.GetSubProcessStreamRequest.process_id": FD.TYPE_INT64,
    "observe.GetSubProcessStreamRequest.channel_type": "observe.LogChannelType",
    "observe.LogItem.timestamp": FD.TYPE_INT64,
    "runtime.Executable.meta": "meta.AuraeMeta",
    "runtime.ExecutableStatus.proc": "meta.ProcessMeta",
    "runtime.ExecutableStatus.status": "meta.Status",
    "runtime.ExecutableStatus.exit_code": FD.TYPE_STRING,
    "runtime.CellStatus.container_statuses": "runtime.ContainerStatus",
    "runtime.PodStatus.cell_status": "runtime.CellStatus",
    "runtime.Instance.is_root": FD.TYPE_BOOL,
    "schedule.ShowEnabledResponse.Executables": "runtime.Executable",
    "schedule.ShowDisabledResponse.Executables": "runtime.Executable",
}
REPEATED = {"runtime.Cell.containers", "runtime.CellStatus.container_statuses", "runtime.Pod.cell",
            "runtime.Instance.nested_instances", "schedule.ShowEnabledResponse.Executables",
            "schedule.ShowDisabledResponse.Executables"}
ENUMS = {
    "meta.Status": {"STATUS_UNKNOWN": 0, "STATUS_STANDBY": 1, "STATUS_ACTIVE": 3, "STATUS_PASSIVE": 4,
                    "STATUS_ERROR": 5, "STATUS_COMPLETE": 6},
    "observe.LogChannelType": {"CHANNEL_STDOUT": 0, "CHANNEL_STDERR": 1},
}
# path -> (request, response, server streaming)
METHODS = {
    "/runtime.Core/RunExecutable": ("runtime.Executable", "runtime.ExecutableStatus", False),
    "/runtime.Core/RunPod": ("runtime.Pod", "runtime.PodStatus", False),
    "/runtime.Core/Spawn": ("runtime.SpawnRequest", "runtime.SpawnResponse", False),
    "/runtime.Core/RunVirtualMachine": ("runtime.VirtualMachine", "runtime.VirtualMachineStatus", False),
    "/runtime.Core/RunCell": ("runtime.Cell", "runtime.CellStatus", False),
    "/observe.Observe/Status": ("observe.StatusRequest", "observe.StatusResponse", False),
    "/observe.Observe/GetAuraeDaemonLogStream": ("observe.GetAuraeDaemonLogStreamRequest", "observe.LogItem", True),
    "/observe.Observe/GetSubProcessStream": ("observe.GetSubProcessStreamRequest", "observe.LogItem", True),
    "/schedule.ScheduleExecutable/Enable": ("runtime.Executable", "schedule.ExecutableEnableResponse", False),
    "/schedule.ScheduleExecutable/Disable": ("runtime.Executable", "schedule.ExecutableDisableResponse", False),
    "/schedule.ScheduleExecutable/Destroy": ("runtime.Executable", "schedule.ExecutableDestroyResponse", False),
    "/schedule.Schedule/ShowEnabled": ("schedule.ShowEnabledRequest", "schedule.ShowEnabledResponse", False),
    "/schedule.Schedule/ShowDisabled": ("schedule.ShowDisabledRequest", "schedule.ShowDisabledResponse", False),
}
RPC_TIMEOUT = 5.0


def _messages() -> dict:
    return {d.full_name: d for m in FILES.values() for d in m.DESCRIPTOR.message_types_by_name.values()}


# --- protos -----------------------------------------------------------------------------------

def test_packages_imports_and_syntax() -> None:
    assert {name: m.DESCRIPTOR.package for name, m in FILES.items()} == {n: n for n in FILES}
    assert [d.name for d in schedule_pb2.DESCRIPTOR.dependencies] == ["meta.proto", "runtime.proto"]
    assert [d.name for d in runtime_pb2.DESCRIPTOR.dependencies] == ["meta.proto"]
    assert [d.name for d in observe_pb2.DESCRIPTOR.dependencies] == ["meta.proto"]


def test_every_message_and_field_number_matches_facts() -> None:
    messages = _messages()
    assert set(messages) == set(FIELDS)
    for name, fields in FIELDS.items():
        got = {f.name: f.number for f in messages[name].fields}
        assert got == fields, name
    assert list(runtime_pb2.Executable.DESCRIPTOR.fields_by_number) == [1, 3, 4]   # no field 2


def test_field_types_and_labels() -> None:
    messages = _messages()
    for path, want in TYPES.items():
        message, field = path.rsplit(".", 1)
        f = messages[message].fields_by_name[field]
        got = f.type if isinstance(want, int) else (f.message_type or f.enum_type).full_name
        assert got == want, path
    for message in messages.values():
        for f in message.fields:
            path = f"{message.full_name}.{f.name}"
            assert f.is_repeated == (path in REPEATED), path


def test_enums() -> None:
    enums = {e.full_name: {v.name: v.number for v in e.values}
             for m in FILES.values() for e in m.DESCRIPTOR.enum_types_by_name.values()}
    assert enums == ENUMS


def test_full_method_paths_and_streaming() -> None:
    found = {}
    for m in FILES.values():
        for service in m.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                assert not method.client_streaming
                found[f"/{service.full_name}/{method.name}"] = (
                    method.input_type.full_name, method.output_type.full_name, method.server_streaming)
    assert found == METHODS


def test_stubs_round_trip_the_wire() -> None:
    item = observe_pb2.LogItem(channel="stdout", line="x", timestamp=2**40)
    assert observe_pb2.LogItem.FromString(item.SerializeToString()).timestamp == 2**40
    shown = schedule_pb2.ShowEnabledResponse(Executables=[runtime_pb2.Executable(command="ls", comment="c")])
    # field 2 of ShowEnabledResponse, then Executable's command (3) and comment (4)
    assert shown.SerializeToString() == b"\x12\x07\x1a\x02ls\x22\x01c"


def test_committed_stubs_are_fresh() -> None:
    """The regenerate script reproduces the committed stubs with the grpcio-tools the test extra pins."""
    from importlib.metadata import version
    from components.aurae.protos import regenerate
    generated_by = observe_pb2_grpc.GRPC_GENERATED_VERSION
    assert version("grpcio-tools") == generated_by, (
        f"the stubs were generated by grpcio-tools {generated_by}: pin that version in pyproject's test extra, "
        "or regenerate them with `python -m components.aurae.protos.regenerate`")
    assert regenerate.main(["--check"]) == 0


# --- PKI --------------------------------------------------------------------------------------

def _snapshot(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in sorted(directory.iterdir())}


def _verify_server(ca: Path, cert: Path) -> None:
    """The web-PKI profile of cryptography's verifier: chain to the CA, SAN, serverAuth, validity."""
    store = Store([x509.load_pem_x509_certificate(ca.read_bytes())])
    verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(pki.SERVER_NAME))
    verifier.verify(x509.load_pem_x509_certificate(cert.read_bytes()), [])


def _verify_client(ca: Path, cert: Path) -> None:
    """Signed by the CA, valid now, for clientAuth (cryptography's client verifier also wants a SAN,
    which TLS client certificates need not carry; the live handshake tests cover BoringSSL's view)."""
    issuer = x509.load_pem_x509_certificate(ca.read_bytes())
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    leaf.verify_directly_issued_by(issuer)
    assert leaf.not_valid_before_utc <= dt.datetime.now(dt.timezone.utc) < leaf.not_valid_after_utc
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_ensure_creates_everything_with_private_keys(tmp_path: Path) -> None:
    paths = pki.ensure(tmp_path / "aurae" / "pki")
    names = {p.name for p in paths.directory.iterdir()}
    assert names == {"ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key"}
    assert stat.S_IMODE(paths.directory.stat().st_mode) == 0o700
    for key in (paths.ca_key, paths.server_key, paths.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for cert in (paths.ca_cert, paths.server_cert, paths.client_cert):
        assert stat.S_IMODE(cert.stat().st_mode) & 0o022 == 0, cert
    _verify_server(paths.ca_cert, paths.server_cert)
    _verify_client(paths.ca_cert, paths.client_cert)


def test_certificates_have_the_documented_shape(tmp_path: Path) -> None:
    paths = pki.ensure(tmp_path)
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [pki.SERVER_NAME]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    now = dt.datetime.now(dt.timezone.utc)
    assert ca.not_valid_before_utc <= now and ca.not_valid_after_utc - now > dt.timedelta(days=9 * 365)
    assert server.not_valid_after_utc <= ca.not_valid_after_utc
    assert server.not_valid_after_utc - now > dt.timedelta(days=4 * 365)


def test_second_ensure_changes_nothing(tmp_path: Path) -> None:
    paths = pki.ensure(tmp_path)
    before = _snapshot(paths.directory)
    assert pki.ensure(tmp_path) == paths
    assert _snapshot(paths.directory) == before


def test_missing_server_pair_is_reissued_from_the_same_ca(tmp_path: Path) -> None:
    paths = pki.ensure(tmp_path)
    old = paths.server_cert.read_bytes()
    paths.server_cert.unlink()
    paths.server_key.unlink()
    kept = {k: v for k, v in _snapshot(tmp_path).items()}
    pki.ensure(tmp_path)
    assert paths.server_cert.read_bytes() != old
    _verify_server(paths.ca_cert, paths.server_cert)
    after = _snapshot(tmp_path)
    assert {k: after[k] for k in kept} == kept


def test_half_pairs_and_orphans_are_refused(tmp_path: Path) -> None:
    paths = pki.ensure(tmp_path)
    paths.server_key.unlink()
    with pytest.raises(pki.PkiError, match="server.crt exists but .*server.key"):
        pki.ensure(tmp_path)
    paths.server_cert.unlink()
    paths.ca_cert.unlink()
    before = _snapshot(tmp_path)
    with pytest.raises(pki.PkiError, match="ca.crt is missing"):
        pki.ensure(tmp_path)
    assert _snapshot(tmp_path) == before


def test_issue_client_later_verifies_and_never_overwrites(tmp_path: Path) -> None:
    paths = pki.ensure(tmp_path)
    cert, key = pki.issue_client(tmp_path, "ops-1.alice")
    assert (cert.name, key.name) == ("ops-1.alice.crt", "ops-1.alice.key")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    _verify_client(paths.ca_cert, cert)
    subject = x509.load_pem_x509_certificate(cert.read_bytes()).subject
    assert subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "ops-1.alice"
    before = _snapshot(tmp_path)
    for name in ("ops-1.alice", "client"):
        with pytest.raises(FileExistsError):
            pki.issue_client(tmp_path, name)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "-flag", "a b", "x" * 65, "nul\0",
                                  "ca", "server", "é"])
def test_issue_client_refuses_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="bad client name"):
        pki.issue_client(tmp_path, name)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


# --- mutual TLS on a Unix socket with grpcio's asyncio server -----------------------------------

class _Observe(observe_pb2_grpc.ObserveServicer):
    async def Status(self, request: observe_pb2.StatusRequest, context: grpc.aio.ServicerContext
                     ) -> observe_pb2.StatusResponse:
        return observe_pb2.StatusResponse(meta=meta_pb2.AuraeMeta(name="auraed", message=request.meta.name))


class _Served:
    def __init__(self, address: str, paths: pki.Paths) -> None:
        self.address, self.paths = address, paths

    def channel(self, root: bytes | None = None, key: bytes | None = None, chain: bytes | None = None
                ) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(root or self.paths.ca_cert.read_bytes(), key, chain)
        return grpc.aio.secure_channel(self.address, creds,
                                       options=[("grpc.ssl_target_name_override", pki.SERVER_NAME)])

    def client_channel(self, cert: Path, key: Path) -> grpc.aio.Channel:
        return self.channel(key=key.read_bytes(), chain=cert.read_bytes())


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[_Served]:
    paths = pki.ensure(tmp_path / "aurae" / "pki")
    socket = tmp_path / "aurae" / "aurae.sock"
    server = grpc.aio.server()
    observe_pb2_grpc.add_ObserveServicer_to_server(_Observe(), server)
    health = grpc_health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    await health.set("observe.Observe", health_pb2.HealthCheckResponse.SERVING)
    names = (observe_pb2.DESCRIPTOR.services_by_name["Observe"].full_name,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    credentials = grpc.ssl_server_credentials(
        [(paths.server_key.read_bytes(), paths.server_cert.read_bytes())],
        root_certificates=paths.ca_cert.read_bytes(), require_client_auth=True)
    address = f"unix:{socket}"
    assert server.add_secure_port(address, credentials) == 1
    await server.start()
    try:
        yield _Served(address, paths)
    finally:
        await server.stop(None)


async def _status(channel: grpc.aio.Channel) -> observe_pb2.StatusResponse:
    async with channel:
        stub = observe_pb2_grpc.ObserveStub(channel)
        call = stub.Status(observe_pb2.StatusRequest(meta=meta_pb2.AuraeMeta(name="ping")), timeout=RPC_TIMEOUT)
        return await asyncio.wait_for(call, RPC_TIMEOUT + 1)


async def test_client_from_the_ca_is_served(served: _Served) -> None:
    reply = await _status(served.client_channel(served.paths.client_cert, served.paths.client_key))
    assert (reply.meta.name, reply.meta.message) == ("auraed", "ping")


async def test_client_issued_later_is_served(served: _Served) -> None:
    cert, key = pki.issue_client(served.paths.directory, "nova")
    reply = await _status(served.client_channel(cert, key))
    assert reply.meta.message == "ping"


async def test_no_client_certificate_is_refused(served: _Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await _status(served.channel())
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_of_a_foreign_ca_is_refused(served: _Served, tmp_path: Path) -> None:
    foreign = pki.ensure(tmp_path / "foreign")
    channel = served.channel(key=foreign.client_key.read_bytes(), chain=foreign.client_cert.read_bytes())
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await _status(channel)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_server_of_a_foreign_ca_is_refused_by_the_client(served: _Served, tmp_path: Path) -> None:
    foreign = pki.ensure(tmp_path / "foreign")
    channel = served.channel(root=foreign.ca_cert.read_bytes(), key=served.paths.client_key.read_bytes(),
                             chain=served.paths.client_cert.read_bytes())
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await _status(channel)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_health_checking_answers(served: _Served) -> None:
    async with served.client_channel(served.paths.client_cert, served.paths.client_key) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "observe.Observe"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_server_reflection_answers(served: _Served) -> None:
    from google.protobuf import descriptor_pb2

    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="observe.Observe")]
    async with served.client_channel(served.paths.client_cert, served.paths.client_key) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = [r async for r in stub.ServerReflectionInfo(iter(requests), timeout=RPC_TIMEOUT)]
    listed = {s.name for s in replies[0].list_services_response.service}
    assert listed == {"observe.Observe", "grpc.health.v1.Health", reflection.SERVICE_NAME}
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in replies[1].file_descriptor_response.file_descriptor_proto]
    by_name = {f.name: f for f in files}
    assert {"observe.proto", "meta.proto"} <= set(by_name)
    assert [m.name for m in by_name["observe.proto"].service[0].method] == [
        "Status", "GetAuraeDaemonLogStream", "GetSubProcessStream"]

