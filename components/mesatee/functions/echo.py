"""echo: the task's result is the invoke request's payload (MesaTEE's hello world)."""

from __future__ import annotations

from typing import Sequence

from components.mesatee.functions import FunctionFailed, InputFile, Invocation, Outcome

NAME = "echo"
MULTIPARTY = False
INLINE = True   # returns a string it was given: a worker process would only add latency


def output_owners(inputs: Sequence[InputFile]) -> list[str]:
    """echo writes no files."""
    return []


def run(invocation: Invocation) -> Outcome:
    """The payload, unchanged; a null payload fails the task, as in MesaTEE."""
    if invocation.payload is None:
        raise FunctionFailed("echo needs a payload: the invoke request's payload was null; "
                             "send the text to echo as \"payload\"")
    return Outcome(invocation.payload)
