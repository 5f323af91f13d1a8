"""psi: private set intersection of two parties' files of 32-byte records.

Each party learns, for each of its own records and nothing else, whether the other party has it
too: its private output holds one byte per own record, 0x01 if the record is in the intersection,
else 0x00. Inputs come in task order (the creator's file first); neither needs to be sorted.

`intersect` does the work in C loops over lazy record iterators (`struct.iter_unpack` makes one
32-byte `bytes` per record, freed as soon as it is looked up): a set of the smaller side's
records, a pass over the larger side against it, then a set of only the common records (the larger
side's hits) and a pass over the smaller side against that. At any time it holds one set of at
most the smaller side's records, never a list of records, so its memory beyond the two plaintexts
is about 110 bytes per record of the smaller side.
"""

from __future__ import annotations

import operator
import struct
from itertools import compress
from typing import Iterator, Sequence

from components.mesatee.functions import FunctionFailed, InputFile, Invocation, Outcome, files

NAME = "psi"
MULTIPARTY = True
INLINE = False
RECORD_BYTES = 32
RESULT = "Finished"

_RECORD = struct.Struct(f"{RECORD_BYTES}s")
_first = operator.itemgetter(0)


def output_owners(inputs: Sequence[InputFile]) -> list[str]:
    """One private output per input file, for that file's owner, in input order."""
    return [file.owner for file in inputs]


def run(invocation: Invocation) -> Outcome:
    """Decrypt and verify both inputs, intersect: each party's bitmap, in input order."""
    inputs = invocation.inputs
    if len(inputs) != 2:
        raise FunctionFailed(f"psi takes exactly two input files (the creator's, then the "
                             f"collaborator's); this task has {len(inputs)}")
    first = read_records(inputs[0])
    second = read_records(inputs[1])
    bitmaps = intersect(first, second)
    del first, second
    return Outcome(RESULT, bitmaps)


def read_records(file: InputFile) -> files.Plaintext:
    """The verified plaintext of `file`, which must be a whole number of records."""
    plaintext = files.read_input(file)
    if len(plaintext) % RECORD_BYTES:
        raise FunctionFailed(f"{files.describe(file)} is {len(plaintext)} bytes, not a whole "
                             f"number of {RECORD_BYTES}-byte records")
    return plaintext


def intersect(first: files.Plaintext | bytes, second: files.Plaintext | bytes) -> tuple[bytes, bytes]:
    """The two bitmaps: byte i of each is 1 if record i of that side is also in the other side."""
    swapped = len(first) > len(second)
    small, large = (second, first) if swapped else (first, second)
    present = set(_records(small))
    in_large = bytes(map(present.__contains__, _records(large)))
    del present
    common = set(compress(_records(large), in_large))
    in_small = bytes(map(common.__contains__, _records(small)))
    return (in_large, in_small) if swapped else (in_small, in_large)


def _records(data: files.Plaintext | bytes) -> Iterator[bytes]:
    """Each 32-byte record of `data` as a new bytes object, one at a time."""
    return map(_first, _RECORD.iter_unpack(data))
