"""The Task Management messages of the seed, validated, and the task record they read and write.

Requests and responses are the seed's tagged JSON, unchanged on the bus. The adapter parses a body
to refuse it early and pick the subject; the component parses the same bytes again. Unknown fields
are ignored, as serde does. Beyond the seed, a task carries `failure_reason` (why it Failed), which
Get shows: serde clients ignore a field they do not know.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable, Mapping

from bus.errors import BadRequest, Conflict
from components.mesatee.subjects import TMS_INTERNAL_OPERATIONS, TMS_OPERATIONS
from components.mesatee import fields

CREATED, READY, RUNNING, FINISHED, FAILED = "Created", "Ready", "Running", "Finished", "Failed"
STATUSES = (CREATED, READY, RUNNING, FINISHED, FAILED)
SINGLE, MULTIPARTY = "Single", "Multiparty"
MAX_FUNCTION_NAME_CHARS = 64
MAX_FILES = 16                 # files one user names for one task
MAX_OUTPUT_FILES = 64
MAX_REASON_CHARS = 1024
TASK_TOKEN_BYTES = 16
# What a status may become through the internal Update (the FNS): a task runs once, and ends once.
# Running -> Ready is the FNS giving a task back that never started (its worker queue was full).
NEXT_STATUSES = {READY: (RUNNING,), RUNNING: (FINISHED, FAILED, READY), CREATED: (), FINISHED: (), FAILED: ()}


@dataclass(frozen=True)
class TaskFile:
    user_id: str
    file_id: str

    def to_dict(self) -> dict[str, str]:
        return {"user_id": self.user_id, "file_id": self.file_id}


@dataclass(frozen=True)
class Collaborator:
    user_id: str
    approved: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "approved": self.approved}


@dataclass(frozen=True)
class Task:
    """A task as the bucket holds it (one record per task_id)."""

    task_id: str
    user_id: str
    function_name: str
    function_type: str
    status: str
    task_token: str = field(repr=False)
    collaborator_list: tuple[Collaborator, ...] = ()
    input_files: tuple[TaskFile, ...] = ()
    output_files: tuple[TaskFile, ...] = ()
    task_result_file_id: str | None = None
    failure_reason: str | None = None
    created: float = field(default_factory=time.time)
    running_deadline: float | None = None      # when a Running task is given up for lost (sweeper)

    @classmethod
    def new(cls, task_id: str, user_id: str, function_name: str, multiparty: bool,
            collaborators: Iterable[str], files: Iterable[str]) -> "Task":
        collaborator_list = tuple(Collaborator(user) for user in collaborators)
        # Multiparty tasks wait for every collaborator's approval; with none to wait for, they are Ready
        status = CREATED if multiparty and collaborator_list else READY
        return cls(task_id, user_id, function_name, MULTIPARTY if multiparty else SINGLE, status,
                   secrets.token_hex(TASK_TOKEN_BYTES), collaborator_list,
                   tuple(TaskFile(user_id, file_id) for file_id in files))

    @property
    def approved_user_number(self) -> int:
        return sum(c.approved for c in self.collaborator_list)

    def involves(self, user_id: str) -> bool:
        """The creator and the collaborators may see a task."""
        return user_id == self.user_id or any(c.user_id == user_id for c in self.collaborator_list)

    def approve(self, user_id: str, files: Iterable[str]) -> "Task":
        """This collaborator approves with their files; the last approval makes the task Ready."""
        if self.status != CREATED:
            raise Conflict(f"task {self.task_id} is {self.status}: approvals are taken only while it is Created")
        if not any(c.user_id == user_id for c in self.collaborator_list):
            raise Conflict(f"user {user_id} is not a collaborator of task {self.task_id}")
        if any(c.user_id == user_id and c.approved for c in self.collaborator_list):
            raise Conflict(f"user {user_id} has already approved task {self.task_id}")
        collaborators = tuple(Collaborator(c.user_id, c.approved or c.user_id == user_id)
                              for c in self.collaborator_list)
        inputs = self.input_files + tuple(TaskFile(user_id, file_id) for file_id in files)
        status = READY if all(c.approved for c in collaborators) else CREATED
        return replace(self, collaborator_list=collaborators, input_files=inputs, status=status)

    def advance(self, update: "InternalUpdate") -> "Task":
        """The internal Update: outputs appended, result set, status moved along NEXT_STATUSES."""
        task = self
        if update.status is not None and update.status != self.status:
            if update.status not in NEXT_STATUSES[self.status]:
                raise Conflict(f"task {self.task_id} is {self.status} and cannot become {update.status}"
                               + (" (a task runs once)" if update.status == RUNNING else ""))
            task = replace(task, status=update.status, running_deadline=update.running_deadline,
                           failure_reason=update.failure_reason if update.status == FAILED else None)
        elif update.status is not None and update.status == RUNNING:
            raise Conflict(f"task {self.task_id} is already Running (a task runs once)")
        if len(task.output_files) + len(update.output_files) > MAX_OUTPUT_FILES:
            raise BadRequest(f"a task has at most {MAX_OUTPUT_FILES} output files")
        return replace(task, output_files=task.output_files + update.output_files,
                       task_result_file_id=update.task_result_file_id or task.task_result_file_id)

    def to_dict(self) -> dict[str, Any]:
        value = asdict(self)
        value["collaborator_list"] = [c.to_dict() for c in self.collaborator_list]
        value["input_files"] = [f.to_dict() for f in self.input_files]
        value["output_files"] = [f.to_dict() for f in self.output_files]
        return value

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> "Task":
        return cls(**{**value,
                      "collaborator_list": tuple(Collaborator(**c) for c in value["collaborator_list"]),
                      "input_files": tuple(TaskFile(**f) for f in value["input_files"]),
                      "output_files": tuple(TaskFile(**f) for f in value["output_files"])})


# -- requests -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskRequest:
    """One validated external TaskRequest; fields an operation does not take stay at their defaults."""

    operation: str
    user_id: str
    user_token: str = field(repr=False)
    task_id: str = ""
    function_name: str = ""
    collaborator_list: tuple[str, ...] = ()
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class InternalUpdate:
    task_id: str
    task_result_file_id: str | None = None
    output_files: tuple[TaskFile, ...] = ()
    status: str | None = None
    failure_reason: str | None = None       # ours: why a task Failed
    running_deadline: float | None = None   # ours: set by the FNS with status Running


def parse_files(value: Any, name: str = "files") -> tuple[str, ...]:
    if not isinstance(value, list):
        raise BadRequest(f"{name} must be a list of file ids, not {fields.json_type(value)}")
    if len(value) > MAX_FILES:
        raise BadRequest(f"{name} names {len(value)} files; at most {MAX_FILES} are allowed per user")
    files = tuple(fields.uuid_id(item, f"each {name} entry") for item in value)
    if len(set(files)) != len(files):
        raise BadRequest(f"{name} names a file twice")
    return files


def parse_function_name(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_FUNCTION_NAME_CHARS:
        raise BadRequest(f"function_name must be a function's name (1-{MAX_FUNCTION_NAME_CHARS} characters), "
                         "such as \"echo\" or \"psi\"")
    return value


def parse_task_id(value: Any) -> str:
    return fields.uuid_id(value, "task_id")


def parse_request(body: Any, expected: str | None = None) -> TaskRequest:
    """Validate an external TaskRequest (port 5554)."""
    operation = fields.operation(body, TMS_OPERATIONS, expected, "external TMS")
    credentials = fields.credentials(body, operation)
    if operation == "Create":
        function_name = parse_function_name(fields.required(body, "function_name", operation))
        collaborators = fields.collaborators(fields.required(body, "collaborator_list", operation))
        if credentials["user_id"] in collaborators:
            raise BadRequest("collaborator_list names the task's creator; list only the other users")
        return TaskRequest(operation, **credentials, function_name=function_name, collaborator_list=collaborators,
                           files=parse_files(fields.required(body, "files", operation)))
    if operation == "List":
        return TaskRequest(operation, **credentials)
    task_id = parse_task_id(fields.required(body, "task_id", operation))
    if operation == "Update":
        files = parse_files(fields.required(body, "files", operation))
        if not files:
            raise BadRequest("an Update approves the task with your input files: files may not be empty")
        return TaskRequest(operation, **credentials, task_id=task_id, files=files)
    return TaskRequest(operation, **credentials, task_id=task_id)


def parse_internal_request(body: Any, expected: str | None = None) -> InternalUpdate | str:
    """Validate an internal TaskRequest (port 5555): a Get gives the task id, an Update the update."""
    operation = fields.operation(body, TMS_INTERNAL_OPERATIONS, expected, "internal TMS")
    task_id = parse_task_id(fields.required(body, "task_id", operation))
    if operation == "Get":
        return task_id
    status = body.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)} or null")
    result_file = body.get("task_result_file_id")
    outputs = fields.required(body, "output_files", operation)
    if not isinstance(outputs, list) or len(outputs) > MAX_OUTPUT_FILES:
        raise BadRequest(f"output_files must be a list of at most {MAX_OUTPUT_FILES} "
                         '{"user_id", "file_id"} objects')
    reason = body.get("failure_reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS):
        raise BadRequest(f"failure_reason must be a string of at most {MAX_REASON_CHARS} characters")
    deadline = body.get("running_deadline")
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float))):
        raise BadRequest("running_deadline must be a time in seconds since the epoch")
    return InternalUpdate(task_id, fields.uuid_id(result_file, "task_result_file_id") if result_file else None,
                          tuple(_task_file(item) for item in outputs), status, reason, deadline)


def internal_operation(body: Any) -> str:
    """The operation of a valid internal TaskRequest (the adapter's check before it sends it on)."""
    parse_internal_request(body)
    return body["type"]


def _task_file(value: Any) -> TaskFile:
    if not isinstance(value, dict):
        raise BadRequest('each output_files entry is an object {"user_id", "file_id"}')
    return TaskFile(fields.user_id(fields.required(value, "user_id", "output file")),
                    fields.uuid_id(fields.required(value, "file_id", "output file"), "file_id"))


# -- responses ------------------------------------------------------------------------------------------

def task_info(task: Task, fns: Mapping[str, Any], caller: str) -> dict[str, Any]:
    """The external Get's TaskInfo: the caller's own outputs only."""
    return {"user_id": task.user_id, "function_name": task.function_name,
            "function_type": task.function_type, "status": task.status, **fns,
            "task_token": task.task_token,
            "collaborator_list": [c.to_dict() for c in task.collaborator_list],
            "task_result_file_id": task.task_result_file_id,
            "user_private_result_file_id": [f.file_id for f in task.output_files if f.user_id == caller],
            "failure_reason": task.failure_reason}


def internal_task_info(task: Task, fns: Mapping[str, Any]) -> dict[str, Any]:
    """The internal Get's TaskInfo: every file of the task."""
    return {"user_id": task.user_id, "collaborator_list": [c.to_dict() for c in task.collaborator_list],
            "approved_user_number": task.approved_user_number, "function_name": task.function_name,
            "function_type": task.function_type, "status": task.status, **fns,
            "task_token": task.task_token, "input_files": [f.to_dict() for f in task.input_files],
            "output_files": [f.to_dict() for f in task.output_files],
            "task_result_file_id": task.task_result_file_id, "failure_reason": task.failure_reason}
