"""The Function Node's one message, validated: InvokeTaskRequest (untagged, unlike every other)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bus.errors import BadRequest
from components.mesatee import fields
from components.mesatee.tms_messages import TASK_TOKEN_BYTES, parse_function_name, parse_task_id

MAX_PAYLOAD_CHARS = 1024 * 1024
MAX_DEADLINE_SECONDS = 3600.0      # the longest fns_deadline_seconds: an invoke's HTTP call lasts this long
# A Running task is given up for lost by the TMS this long after its deadline (a node that vanished).
LOST_AFTER_SECONDS = 60.0
SAMPLE = ('{"task_id": "...", "function_name": "echo", "task_token": "<32 hex digits>", '
          '"payload": "echo_payload"}')


@dataclass(frozen=True)
class InvokeRequest:
    task_id: str
    function_name: str
    task_token: str = field(repr=False)
    payload: str | None = None


def parse_invoke(body: Any) -> InvokeRequest:
    if not isinstance(body, dict):
        raise BadRequest(f"an invoke request is a JSON object: {SAMPLE}")
    token = fields.required(body, "task_token", "invoke")
    if not isinstance(token, str) or len(token) != 2 * TASK_TOKEN_BYTES:
        raise BadRequest(f"task_token must be the {2 * TASK_TOKEN_BYTES} hexadecimal digits TMS gave "
                         "when the task was created")
    payload = body.get("payload")
    if payload is not None and not isinstance(payload, str):
        raise BadRequest(f"payload must be a string or null, not {fields.json_type(payload)}")
    if payload is not None and len(payload) > MAX_PAYLOAD_CHARS:
        raise BadRequest(f"payload is longer than {MAX_PAYLOAD_CHARS} characters")
    return InvokeRequest(parse_task_id(fields.required(body, "task_id", "invoke")),
                         parse_function_name(fields.required(body, "function_name", "invoke")), token, payload)
