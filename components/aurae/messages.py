"""The JSON the runtime and observe read and answer (shapes: components/aurae/subjects.py).

Requests are checked here, each problem a BadRequest naming the field, so handlers work with
plain values. Replies are built here, so every field a proto message has is always present.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bus.errors import BadRequest
from components.aurae.cells import CellOutcome
from components.aurae.process import COMPLETE, Outcome

STATUS = {COMPLETE: "STATUS_COMPLETE"}        # anything else is STATUS_ERROR
CHANNEL_TYPES = {"CHANNEL_STDOUT": "stdout", "CHANNEL_STDERR": "stderr", 0: "stdout", 1: "stderr"}
MAX_CONTAINERS = 64
MAX_PID = 2**31 - 1


def status_name(status: str) -> str:
    return STATUS.get(status, "STATUS_ERROR")


def meta(name: str, message: str) -> dict[str, str]:
    return {"name": name, "message": message}


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be an object, not {type(value).__name__}")
    return value


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be text, not {type(value).__name__}")
    return value


def _meta(payload: dict[str, Any], what: str) -> tuple[str, str]:
    found = _object(payload.get("meta"), f"{what}.meta")
    return _text(found.get("name"), f"{what}.meta.name"), _text(found.get("message"), f"{what}.meta.message")


# --- RunExecutable -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExecutableRequest:
    name: str          # meta.name, else the command (what Aurae echoed)
    command: str


def executable_request(payload: Any) -> ExecutableRequest:
    payload = _object(payload, "the Executable")
    name, _ = _meta(payload, "the Executable")
    command = _text(payload.get("command"), "command")
    return ExecutableRequest(name or command, command)


def executable_status(name: str, outcome: Outcome) -> dict[str, Any]:
    """ExecutableStatus: exit_code is the decimal code ("" when the process did not exit by itself)."""
    return {"meta": meta(name, outcome.message), "proc": {"pid": outcome.pid or 0},
            "status": status_name(outcome.status), "stdout": outcome.stdout, "stderr": outcome.stderr,
            "exit_code": "" if outcome.exit_code is None else str(outcome.exit_code)}


# --- RunCell -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ContainerRequest:
    name: str
    image: str
    command: str       # meta.message (a teebus extension: Aurae's Container has no command), "" for the image's


@dataclass(frozen=True)
class CellRequest:
    name: str
    containers: tuple[ContainerRequest, ...]


def cell_request(payload: Any) -> CellRequest:
    payload = _object(payload, "the Cell")
    name, _ = _meta(payload, "the Cell")
    listed = payload.get("containers")
    if not isinstance(listed, list) or not listed:
        raise BadRequest("a Cell needs containers: a non-empty list")
    if len(listed) > MAX_CONTAINERS:
        raise BadRequest(f"a Cell holds at most {MAX_CONTAINERS} containers, not {len(listed)}")
    containers = []
    for index, item in enumerate(listed):
        what = f"containers[{index}]"
        item = _object(item, what)
        container_name, command = _meta(item, what)
        image = _text(item.get("image"), f"{what}.image")
        if not image:
            raise BadRequest(f"{what}.image is empty: name a root filesystem directory or an OCI image layout "
                             "on this host")
        containers.append(ContainerRequest(container_name, image, command))
    return CellRequest(name, tuple(containers))


def cell_status(outcome: CellOutcome) -> dict[str, Any]:
    return {"meta": meta(outcome.name, outcome.message), "status": status_name(outcome.status),
            "container_statuses": [{"meta": meta(c.name, c.outcome.message), "proc": {"pid": c.pid or 0},
                                    "status": status_name(c.outcome.status)} for c in outcome.containers]}


# --- observe -------------------------------------------------------------------------------------

def log_item(channel: str, line: str, timestamp_ns: int) -> dict[str, Any]:
    return {"channel": channel, "line": line, "timestamp": timestamp_ns}


@dataclass(frozen=True)
class SubProcessRequest:
    channel: str       # "stdout" or "stderr"
    pid: int


def subprocess_request(payload: Any) -> SubProcessRequest:
    payload = _object(payload, "the GetSubProcessStreamRequest")
    kind = payload.get("channel_type", 0)
    channel = CHANNEL_TYPES.get(kind) if isinstance(kind, (str, int)) and not isinstance(kind, bool) else None
    if channel is None:
        raise BadRequest(f"channel_type must be CHANNEL_STDOUT or CHANNEL_STDERR (0 or 1), not {kind!r}")
    pid = payload.get("process_id")
    if isinstance(pid, str) and pid.isdigit():
        pid = int(pid)                       # protobuf's JSON may quote an int64
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid <= MAX_PID:
        raise BadRequest(f"process_id must be a process id from 1 to {MAX_PID}, not {pid!r}")
    return SubProcessRequest(channel, pid)
