"""Aurae's gRPC face (the API of October 2022) on a Unix socket with mutual TLS.

Each unary call becomes one bus request on the subject components/aurae/subjects.py names, each
server stream a bus feed (`bus.feeds.watch`). This module only validates, translates (proto <->
the JSON of subjects.py) and maps errors; what a call means is the components' business.

Served: runtime.Core (RunExecutable, RunCell; RunPod, Spawn and RunVirtualMachine answer
UNIMPLEMENTED naming what they would need), observe.Observe, schedule.ScheduleExecutable and
schedule.Schedule (never served by Aurae itself), grpc.health.v1 and server reflection.

Socket: `config.socket`, else `<data-dir>/aurae/aurae.sock`. It is created 0600 (Aurae made it
0766): the client certificate proves who calls, the file mode keeps other local users from even
starting a handshake, as for every teebus socket (adapters/unix/server.py). `socket_group` (the
`--aurae.socket-group` option) gives it to a group, mode 0660, for clients running as other users. A path longer than an
AF_UNIX address holds is bound through /proc/self/fd (`reachable`); a stale socket is removed, a
live one refused. The PKI (`<data-dir>/aurae/pki`, components/aurae/pki.py) is created on first
start; every client must present a certificate of its CA.

Translation: protobuf's JSON mapping with proto field names, enums by name and int64 as ints, every
field present (`to_payload`); replies are read leniently (`from_payload`: unknown keys ignored, an
int for a string field, e.g. exit_code, as its decimal text). Bus errors map onto gRPC codes
(`CODES`); 409 is ALREADY_EXISTS for Enable (the name is taken) and FAILED_PRECONDITION elsewhere
(the thing is not in the state the call needs). A deadline the client set bounds the bus request.

Bounds: requests up to MAX_REQUEST_BYTES, replies up to both output caps; MAX_CONCURRENT_CALLS
calls and MAX_STREAMS log streams at once (RESOURCE_EXHAUSTED beyond). Stop: health turns
NOT_SERVING, no new calls, log streams end with UNAVAILABLE, unary calls get STOP_GRACE seconds,
then whatever is left (health watches, stragglers) is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, TypeVar

# The runtime spawns processes from this same process, and under uvloop a spawn is a fork(): gRPC's
# fork handlers then run in the child and sometimes abort it before it execs (SIGABRT/SIGSEGV in 1-3%
# of spawns, bench/aurae_run.py). This server never forks itself, so it needs no fork support. The
# setting is read when grpc is first imported, hence before the import.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402  (after the setting above)
from google.protobuf import json_format
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from components.aurae.protos import (observe_pb2, observe_pb2_grpc, runtime_pb2, runtime_pb2_grpc, schedule_pb2,
                                        schedule_pb2_grpc)
from adapters.unix.server import clear_stale, reachable
from bus import feeds, log
from bus.errors import BusError
from bus.requester import Requester
from components.aurae import pki, subjects
from components.aurae.config import AuraeConfig

M = TypeVar("M", bound=Message)
Code = grpc.StatusCode

ROLE = "adapter"
SOCKET_MODE = 0o600
GROUP_SOCKET_MODE = 0o660            # with --aurae.socket-group
STOP_GRACE = 5.0                  # s unary calls may take to finish once a stop begins
CALL_TIMEOUT = 30.0               # s for a bus request that runs no process
RUN_MARGIN = 15.0                 # s beyond a process's own timeout and grace, for the reply to travel
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_CONCURRENT_CALLS = 1024       # RPCs at once, streams included; more are RESOURCE_EXHAUSTED
MAX_STREAMS = 256                 # open log streams at once (each holds a bus subscription)
MAX_STREAMS_PER_CONNECTION = 1024 # HTTP/2 streams one client connection may open
MAX_PID = 2**31 - 1
REQUEST_ID_KEY = "x-request-id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_JSON = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True,
         "unquote_int64_if_possible": True}
_log = log.get_logger("adapters.unix.aurae")

CODES: dict[int, Code] = {
    400: Code.INVALID_ARGUMENT, 401: Code.UNAUTHENTICATED, 403: Code.PERMISSION_DENIED, 404: Code.NOT_FOUND,
    408: Code.DEADLINE_EXCEEDED, 409: Code.FAILED_PRECONDITION, 412: Code.FAILED_PRECONDITION,
    413: Code.RESOURCE_EXHAUSTED, 422: Code.FAILED_PRECONDITION, 429: Code.RESOURCE_EXHAUSTED,
    501: Code.UNIMPLEMENTED, 503: Code.UNAVAILABLE, 504: Code.DEADLINE_EXCEEDED,
}   # anything else: INTERNAL, with the component's message

NOT_SERVED = {
    "RunPod": "RunPod needs Spawn (a nested Aurae instance in its own virtual machine) and an OCI image "
              "puller; teebus runs neither: use RunCell for containers on this kernel",
    "Spawn": "Spawn needs a hypervisor (KVM with Firecracker or QEMU), a guest kernel and an auraed image "
             "to boot; teebus drives no virtual machines: use RunExecutable or RunCell",
    "RunVirtualMachine": "RunVirtualMachine needs a hypervisor (KVM with QEMU) and a qcow image puller; "
                         "teebus drives no virtual machines: use RunExecutable or RunCell",
}

SERVICES = tuple(d.services_by_name[n].full_name for d, n in (
    (runtime_pb2.DESCRIPTOR, "Core"), (observe_pb2.DESCRIPTOR, "Observe"),
    (schedule_pb2.DESCRIPTOR, "ScheduleExecutable"), (schedule_pb2.DESCRIPTOR, "Schedule")))


def listeners(data_dir: Path, config: AuraeConfig | None) -> list["AuraeSocket"]:
    """The `unix` adapter's target (bus/manifest.py): one gRPC socket."""
    config = config or AuraeConfig()
    path = Path(config.socket) if config.socket else Path(data_dir) / "aurae" / "aurae.sock"
    return [AuraeSocket("aurae", path.expanduser().absolute(), ROLE, Path(data_dir) / "aurae" / "pki", config)]


# --- translation ----------------------------------------------------------------------------------

def to_payload(message: Message) -> dict[str, Any]:
    """A request as components read it: proto field names, enums by name, int64 as ints, and every
    field present (a nested message too, with its defaults), so a component never meets a gap."""
    data = json_format.MessageToDict(message, **_JSON)
    _fill(message, data, depth=0)
    return data


def _fill(message: Message, data: dict[str, Any], depth: int) -> None:
    if depth > 16:
        return
    for f in message.DESCRIPTOR.fields:
        if f.message_type is None:
            continue
        if f.is_repeated:
            for item, item_data in zip(getattr(message, f.name), data.get(f.name, ())):
                _fill(item, item_data, depth + 1)
        else:
            sub = getattr(message, f.name)
            _fill(sub, data.setdefault(f.name, json_format.MessageToDict(sub, **_JSON)), depth + 1)


def from_payload(data: Any, cls: type[M]) -> M:
    """A component's reply as the proto `cls`. Keys the proto lacks are ignored (components may
    say more), nulls are absent values, and an int for a string field (ExecutableStatus.exit_code:
    components send the code, Aurae's wire carries text) becomes its decimal text."""
    if not isinstance(data, dict):
        raise BusError(f"the component answered {type(data).__name__}, not a {cls.DESCRIPTOR.full_name}")
    try:
        # _coerce dropped the unknown keys; an unknown enum name still fails (a component's bug, not news)
        return json_format.ParseDict(_coerce(cls.DESCRIPTOR, data), cls())
    except json_format.ParseError as exc:
        raise BusError(f"the component's answer does not fit {cls.DESCRIPTOR.full_name}: {exc}") from None


def _coerce(descriptor: Any, data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        f = descriptor.fields_by_name.get(key)
        if value is None or f is None:
            continue
        if f.message_type is not None:
            if f.is_repeated and isinstance(value, list):
                value = [_coerce(f.message_type, v) if isinstance(v, dict) else v for v in value]
            elif isinstance(value, dict):
                value = _coerce(f.message_type, value)
        elif f.type == f.TYPE_STRING and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        out[key] = value
    return out


def grpc_code(status: int, conflict: Code = Code.FAILED_PRECONDITION) -> Code:
    """The gRPC code of a bus error's HTTP-style status (409 as the call says)."""
    return conflict if status == 409 else CODES.get(status, Code.INTERNAL)


# --- the calls -------------------------------------------------------------------------------------

class _Stopping(Exception):
    """The socket is stopping: a stream ends with UNAVAILABLE."""


@dataclass
class _Calls:
    """What every servicer shares: the requester, this node's subjects, bounds, the stop signal."""

    requester: Requester
    config: AuraeConfig
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    streams: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_STREAMS))
    in_flight: set[asyncio.Task] = field(default_factory=set)   # calls and log streams, for the stop

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def run_timeout(self) -> float:
        return self.config.timeout_seconds + self.config.grace_seconds + RUN_MARGIN

    @property
    def schedule_timeout(self) -> float:
        """Disable and Destroy wait for the process to stop: up to its grace, then SIGKILL."""
        return CALL_TIMEOUT + self.config.grace_seconds

    async def unary(self, context: grpc.aio.ServicerContext, method: str, subject: str, request: Message,
                    reply: type[M], *, timeout: float = CALL_TIMEOUT, conflict: Code = Code.FAILED_PRECONDITION
                    ) -> M:
        """One bus request within the client's deadline; a bus error becomes the call's status."""
        _begin(context, method)
        remaining = context.time_remaining()
        if remaining is not None:
            if remaining <= 0.01:
                await _abort(context, Code.DEADLINE_EXCEEDED, f"{method}: the deadline passed before it began")
            timeout = min(timeout, remaining)
        task = asyncio.current_task()
        if task is not None:
            self.in_flight.add(task)
        try:
            answer = await self.requester.request(subject, to_payload(request), timeout=timeout)
            return from_payload(answer.payload, reply)
        except BusError as exc:
            await _abort(context, grpc_code(exc.status, conflict), exc.message, exc.status)
        finally:
            self.in_flight.discard(task)  # type: ignore[arg-type]
        raise AssertionError("unreachable: abort raises")

    async def stream(self, context: grpc.aio.ServicerContext, method: str, subject: str,
                     payload: dict[str, Any]) -> AsyncIterator[observe_pb2.LogItem]:
        """The items of a bus feed as LogItems, until the feed ends, the client leaves or we stop."""
        _begin(context, method)
        if self.stopping.is_set():
            await _abort(context, Code.UNAVAILABLE, "auraed is stopping; reconnect to its next start")
        if self.streams.locked():
            await _abort(context, Code.RESOURCE_EXHAUSTED,
                         f"{MAX_STREAMS} log streams are open already; close one, or retry later")
        task = asyncio.current_task()
        async with self.streams:
            if task is not None:
                self.in_flight.add(task)
            try:
                watching = self._until_stopped(feeds.watch(self.requester.client, subject, payload))
                async with contextlib.aclosing(watching) as items:   # a client that left: the feed is cancelled
                    async for item in items:
                        yield from_payload(item, observe_pb2.LogItem)
            except BusError as exc:
                await _abort(context, grpc_code(exc.status), exc.message, exc.status)
            except _Stopping:
                await _abort(context, Code.UNAVAILABLE, "auraed is stopping; reconnect to its next start")
            finally:
                self.in_flight.discard(task)  # type: ignore[arg-type]

    async def _until_stopped(self, items: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        """`items`, raising _Stopping as soon as a stop begins (even while waiting for the next)."""
        stop = asyncio.ensure_future(self.stopping.wait())
        step: asyncio.Future | None = None
        try:
            while True:
                step = asyncio.ensure_future(anext(items))
                await asyncio.wait((step, stop), return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    raise _Stopping
                try:
                    item = step.result()
                except StopAsyncIteration:
                    return
                step = None
                yield item
        finally:
            stop.cancel()
            if step is not None and not step.done():
                step.cancel()
                await asyncio.gather(step, return_exceptions=True)
            await items.aclose()  # type: ignore[attr-defined]


def _begin(context: grpc.aio.ServicerContext, method: str) -> None:
    """The call's request id (the client's, if well formed) in every log line and its trailers."""
    offered = dict(context.invocation_metadata() or ()).get(REQUEST_ID_KEY)
    request_id = offered if isinstance(offered, str) and _REQUEST_ID.fullmatch(offered) else log.new_request_id()
    names = context.auth_context().get("x509_common_name") or [b"?"]
    log.bind_request(request_id, method=method, client=names[0].decode(errors="replace"))
    context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))


async def _abort(context: grpc.aio.ServicerContext, code: Code, message: str, status: int | None = None) -> None:
    level = _log.warning if code in (Code.INTERNAL, Code.UNAVAILABLE) else _log.info
    level("call failed", code=code.name, error=message, **({"status": status} if status else {}))
    await context.abort(code, message)


def _positive_pid(value: int, what: str) -> str | None:
    return None if 0 < value <= MAX_PID else f"{what} must be a process id from 1 to {MAX_PID}, not {value}"


# --- the services -----------------------------------------------------------------------------------

class Core(runtime_pb2_grpc.CoreServicer):
    def __init__(self, calls: _Calls) -> None:
        self._calls = calls

    async def RunExecutable(self, request: runtime_pb2.Executable, context: grpc.aio.ServicerContext
                            ) -> runtime_pb2.ExecutableStatus:
        return await self._calls.unary(context, "RunExecutable", subjects.run_executable(self._calls.host), request,
                                       runtime_pb2.ExecutableStatus, timeout=self._calls.run_timeout)

    async def RunCell(self, request: runtime_pb2.Cell, context: grpc.aio.ServicerContext) -> runtime_pb2.CellStatus:
        return await self._calls.unary(context, "RunCell", subjects.run_cell(self._calls.host), request,
                                       runtime_pb2.CellStatus, timeout=self._calls.run_timeout)

    async def RunPod(self, request: runtime_pb2.Pod, context: grpc.aio.ServicerContext) -> runtime_pb2.PodStatus:
        await _not_served(context, "RunPod")
        return runtime_pb2.PodStatus()

    async def Spawn(self, request: runtime_pb2.SpawnRequest, context: grpc.aio.ServicerContext
                    ) -> runtime_pb2.SpawnResponse:
        await _not_served(context, "Spawn")
        return runtime_pb2.SpawnResponse()

    async def RunVirtualMachine(self, request: runtime_pb2.VirtualMachine, context: grpc.aio.ServicerContext
                                ) -> runtime_pb2.VirtualMachineStatus:
        await _not_served(context, "RunVirtualMachine")
        return runtime_pb2.VirtualMachineStatus()


async def _not_served(context: grpc.aio.ServicerContext, method: str) -> None:
    _begin(context, method)
    await _abort(context, Code.UNIMPLEMENTED, NOT_SERVED[method])


class Observe(observe_pb2_grpc.ObserveServicer):
    def __init__(self, calls: _Calls) -> None:
        self._calls = calls

    async def Status(self, request: observe_pb2.StatusRequest, context: grpc.aio.ServicerContext
                     ) -> observe_pb2.StatusResponse:
        return await self._calls.unary(context, "Status", subjects.status(self._calls.host), request,
                                       observe_pb2.StatusResponse)

    async def GetAuraeDaemonLogStream(self, request: observe_pb2.GetAuraeDaemonLogStreamRequest,
                                      context: grpc.aio.ServicerContext) -> AsyncIterator[observe_pb2.LogItem]:
        async for item in self._calls.stream(context, "GetAuraeDaemonLogStream",
                                             subjects.daemon_log(self._calls.host), to_payload(request)):
            yield item

    async def GetSubProcessStream(self, request: observe_pb2.GetSubProcessStreamRequest,
                                  context: grpc.aio.ServicerContext) -> AsyncIterator[observe_pb2.LogItem]:
        problem = _positive_pid(request.process_id, "process_id")
        if problem:
            _begin(context, "GetSubProcessStream")
            await _abort(context, Code.INVALID_ARGUMENT, problem)
        async for item in self._calls.stream(context, "GetSubProcessStream",
                                             subjects.subprocess_stream(self._calls.host), to_payload(request)):
            yield item


class ScheduleExecutable(schedule_pb2_grpc.ScheduleExecutableServicer):
    def __init__(self, calls: _Calls) -> None:
        self._calls = calls

    async def Enable(self, request: runtime_pb2.Executable, context: grpc.aio.ServicerContext
                     ) -> schedule_pb2.ExecutableEnableResponse:
        return await self._calls.unary(context, "Enable", subjects.schedule("enable", self._calls.host), request,
                                       schedule_pb2.ExecutableEnableResponse, timeout=self._calls.schedule_timeout,
                                       conflict=Code.ALREADY_EXISTS)

    async def Disable(self, request: runtime_pb2.Executable, context: grpc.aio.ServicerContext
                      ) -> schedule_pb2.ExecutableDisableResponse:
        return await self._calls.unary(context, "Disable", subjects.schedule("disable", self._calls.host), request,
                                       schedule_pb2.ExecutableDisableResponse, timeout=self._calls.schedule_timeout)

    async def Destroy(self, request: runtime_pb2.Executable, context: grpc.aio.ServicerContext
                      ) -> schedule_pb2.ExecutableDestroyResponse:
        return await self._calls.unary(context, "Destroy", subjects.schedule("destroy", self._calls.host), request,
                                       schedule_pb2.ExecutableDestroyResponse, timeout=self._calls.schedule_timeout)


class Schedule(schedule_pb2_grpc.ScheduleServicer):
    def __init__(self, calls: _Calls) -> None:
        self._calls = calls

    async def ShowEnabled(self, request: schedule_pb2.ShowEnabledRequest, context: grpc.aio.ServicerContext
                          ) -> schedule_pb2.ShowEnabledResponse:
        return await self._calls.unary(context, "ShowEnabled", subjects.schedule("show_enabled", self._calls.host),
                                       request, schedule_pb2.ShowEnabledResponse)

    async def ShowDisabled(self, request: schedule_pb2.ShowDisabledRequest, context: grpc.aio.ServicerContext
                           ) -> schedule_pb2.ShowDisabledResponse:
        return await self._calls.unary(context, "ShowDisabled", subjects.schedule("show_disabled", self._calls.host),
                                       request, schedule_pb2.ShowDisabledResponse)


# --- the socket ------------------------------------------------------------------------------------

@dataclass
class AuraeSocket:
    """The gRPC server on the Aurae socket (a `Listener`, adapters/unix/server.py)."""

    name: str
    path: Path
    role: str
    pki_dir: Path
    config: AuraeConfig
    _server: grpc.aio.Server | None = field(default=None, repr=False)
    _health: health.aio.HealthServicer | None = field(default=None, repr=False)
    _calls: _Calls | None = field(default=None, repr=False)
    _inode: int | None = field(default=None, repr=False)

    async def start(self, requester: Requester) -> None:
        paths = await asyncio.to_thread(pki.ensure, self.pki_dir)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        await asyncio.to_thread(clear_stale, self.path)
        self._calls = calls = _Calls(requester, self.config)
        server = grpc.aio.server(options=_server_options(self.config), maximum_concurrent_rpcs=MAX_CONCURRENT_CALLS)
        runtime_pb2_grpc.add_CoreServicer_to_server(Core(calls), server)
        observe_pb2_grpc.add_ObserveServicer_to_server(Observe(calls), server)
        schedule_pb2_grpc.add_ScheduleExecutableServicer_to_server(ScheduleExecutable(calls), server)
        schedule_pb2_grpc.add_ScheduleServicer_to_server(Schedule(calls), server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection((*SERVICES, health_name, reflection.SERVICE_NAME), server)
        for service in ("", *SERVICES):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        credentials = grpc.ssl_server_credentials(
            [(paths.server_key.read_bytes(), paths.server_cert.read_bytes())],
            root_certificates=paths.ca_cert.read_bytes(), require_client_auth=True)
        self._bind(server, credentials)
        try:
            await server.start()
        except BaseException:
            await server.stop(None)
            self._remove_socket()
            raise
        self._server = server
        _log.info("aurae socket listening", path=str(self.path), pki=str(self.pki_dir), host=self.config.host)

    def _bind(self, server: grpc.aio.Server, credentials: grpc.ServerCredentials) -> None:
        """Bind born private (umask), even through /proc/self/fd for a long path; fail clearly."""
        old_umask = os.umask(0o177)
        try:
            with reachable(self.path) as address:
                try:
                    bound = server.add_secure_port(f"unix:{address}", credentials)
                except RuntimeError as exc:
                    bound, reason = 0, str(exc)
                else:
                    reason = "gRPC could not bind it"
        finally:
            os.umask(old_umask)
        if not bound or not self.path.exists():
            raise OSError(f"cannot serve the Aurae socket {self.path}: {reason}")
        self._inode = self.path.stat().st_ino
        self._share_with_group()

    def _share_with_group(self) -> None:
        """0600, or 0660 owned by `socket_group`; the socket is not served if that cannot be done."""
        gid = self.config.socket_gid()
        if gid is None:
            os.chmod(self.path, SOCKET_MODE)
            return
        try:
            os.chown(self.path, -1, gid)
        except PermissionError:
            self._remove_socket()
            raise OSError(f"cannot give the Aurae socket {self.path} to group {self.config.socket_group!r}: "
                          "this user is not a member of it (add it with `usermod -aG`, or run as root)") from None
        os.chmod(self.path, GROUP_SOCKET_MODE)

    async def stop(self) -> None:
        """NOT_SERVING first, then no new calls, log streams ended (UNAVAILABLE), unary calls given
        STOP_GRACE to finish, whatever is left (health watches, stragglers) cancelled, socket removed."""
        server, self._server = self._server, None
        if server is None:
            return
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        refusing = asyncio.create_task(server.stop(STOP_GRACE))   # no new calls from here on
        await asyncio.sleep(0)
        if self._calls is not None:
            self._calls.stopping.set()
            if self._calls.in_flight:
                await asyncio.wait(set(self._calls.in_flight), timeout=STOP_GRACE)
        await server.stop(None)    # what is left never ends by itself (health watches): cancelled now
        await refusing
        self._remove_socket()
        _log.info("aurae socket stopped", path=str(self.path))

    def _remove_socket(self) -> None:
        try:
            if self.path.stat().st_ino == self._inode:   # never remove a successor's socket
                self.path.unlink()
        except FileNotFoundError:
            pass


def _server_options(config: AuraeConfig) -> list[tuple[str, int]]:
    # a RunExecutable reply carries both streams, each up to max_output_bytes, plus a marker each
    reply_bytes = min(2 * config.max_output_bytes + 1024 * 1024, 2**31 - 1)
    return [("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.max_send_message_length", reply_bytes),
            ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION)]
