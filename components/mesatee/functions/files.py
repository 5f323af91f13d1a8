"""A function's files: AES-256-GCM `ciphertext || 16-byte tag` on disk, plaintext only in memory.

Reading an input checks the registered size against `MAX_INPUT_BYTES` and against the file's
length before reading a byte, reads the whole ciphertext into one buffer, decrypts it in place
with one `decrypt_into` (the plaintext is the buffer's first `size` bytes), then checks the
plaintext's sha256 against the registered one. An input so costs its size once, and no Python
work per chunk. In place, because a second buffer costs more than the decryption: making 30 MiB
of fresh memory took 17 ms here, decrypting it 10-13 ms. OpenSSL decrypts in place when input
and output start at the same address (EVP_DecryptUpdate: "in and out may point to the same
location"), and `cryptography` hands both buffers to it as they are; a partial overlap would be
wrong, an exact one is not (test_an_input_decrypts_in_place_to_its_plaintext guards it). A
tampered file leaves unauthenticated bytes in the buffer, which is dropped with the error.

Large buffers (`allocate`) are anonymous mappings of their own, populated when made: one system
call maps every page (rather than a page fault per 4 KiB while the data is written, which would
slow the decryption threefold), and dropping the buffer gives the memory back to the system at
once. A bytearray would come from malloc's heap once glibc's mmap threshold has adapted to these
sizes, and a freed ciphertext would then stay resident beside the plaintexts: a worker's peak
would grow by one input, and its idle size would stay at its largest task's.

`MAX_INPUT_BYTES` is 1 GiB: one-shot AES-GCM in `cryptography` takes at most 2**31 - 1 bytes,
TDFS sizes are u32, and psi holds about 3x its inputs in memory at its peak, so inputs larger
than this want another algorithm rather than a larger bound.

Writing an output (`write_sealed`, in the function node once TDFS has registered it) encrypts it,
writes `<path>.partial` in the same directory, fsyncs it, renames it onto `path` (os.replace)
and fsyncs the directory: a reader sees no file or the whole file, never a part of one.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import stat

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from components.mesatee.functions import FunctionFailed, InputFile, KeyConfig

TAG_BYTES = 16
MAX_INPUT_BYTES = 1 << 30
PARTIAL_SUFFIX = ".partial"
MAPPED_FROM = 1 << 20            # buffers of this size and more are mappings of their own
_MAP_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)

Buffer = bytearray | mmap.mmap   # writable, zero-filled when allocated
Plaintext = memoryview           # the decrypted part of an input's buffer


def describe(file: InputFile) -> str:
    """How reasons name an input: by file id and owner, which both parties of a task know."""
    return f"input file {file.file_id} of {file.owner}"


def allocate(size: int) -> Buffer:
    """A zero-filled writable buffer whose memory goes back to the system when it is dropped."""
    if size < MAPPED_FROM:
        return bytearray(size)
    return mmap.mmap(-1, size, flags=_MAP_FLAGS)


def read_input(file: InputFile) -> Plaintext:
    """The plaintext of `file`, decrypted and verified; FunctionFailed says what is wrong."""
    plaintext = decrypt(file, read_ciphertext(file))
    verify(file, plaintext)
    return plaintext


def read_ciphertext(file: InputFile) -> Buffer:
    """The stored `ciphertext || tag`, after checking the bound and the length it must have."""
    if file.size > MAX_INPUT_BYTES:
        raise FunctionFailed(f"{describe(file)} is {file.size} bytes; a function reads at most "
                             f"{MAX_INPUT_BYTES} bytes (1 GiB) from one input")
    expected = file.size + TAG_BYTES
    try:
        with open(file.path, "rb", buffering=0) as stream:
            status = os.fstat(stream.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise FunctionFailed(f"{describe(file)} is not a regular file at {file.path}")
            if status.st_size != expected:
                raise FunctionFailed(_length_mismatch(file, status.st_size))
            data = allocate(expected)
            length = _read_into(stream, data)
    except FileNotFoundError:
        raise FunctionFailed(f"{describe(file)} is missing: there is no file at {file.path}") from None
    except OSError as exc:
        raise FunctionFailed(f"{describe(file)} cannot be read ({exc.strerror or exc})") from None
    if length != expected:                     # it changed since the fstat
        raise FunctionFailed(_length_mismatch(file, length))
    return data


def _read_into(stream: io.RawIOBase, buffer: Buffer) -> int:
    """Fill `buffer` from an unbuffered file; the length read, plus one if the file has more."""
    filled = 0
    with memoryview(buffer) as view:
        while filled < len(view):
            count = stream.readinto(view[filled:])
            if not count:
                return filled
            filled += count
    return filled + len(stream.read(1))


def decrypt(file: InputFile, sealed: Buffer) -> Plaintext:
    """`ciphertext || tag` opened with the file's key config, in place: the plaintext is a view of
    `sealed`'s first bytes (whose content is undefined if this fails)."""
    whole = memoryview(sealed)
    plaintext = whole[:len(whole) - TAG_BYTES]
    try:
        AESGCM(file.key.key).decrypt_into(file.key.nonce, whole, file.key.ad, plaintext)
    except InvalidTag:
        raise FunctionFailed(f"{describe(file)} does not decrypt with its key: the stored "
                             f"ciphertext was altered or is not this file's") from None
    finally:
        whole.release()
    return plaintext


def verify(file: InputFile, plaintext: Plaintext) -> None:
    """The plaintext is what its owner registered (TDFS keeps its sha256 and size)."""
    if len(plaintext) != file.size:
        raise FunctionFailed(f"{describe(file)} decrypts to {len(plaintext)} bytes, not its "
                             f"registered {file.size}")
    if hashlib.sha256(plaintext).hexdigest() != file.sha256:
        raise FunctionFailed(f"sha256 of {describe(file)} does not match the registered one: the "
                             f"file decrypts, but its content is not what its owner registered; "
                             f"the owner should upload it again")


def _length_mismatch(file: InputFile, length: int) -> str:
    return (f"{describe(file)} is {length} bytes on disk, but its registered size of {file.size} "
            f"bytes encrypts to {file.size + TAG_BYTES} ({file.size} of ciphertext and a "
            f"{TAG_BYTES}-byte tag): the file was truncated or replaced, or registered with the "
            f"wrong size")


def write_sealed(path: str, key: KeyConfig, plaintext: bytes) -> None:
    """Encrypt `plaintext` under `key` and put it at `path` atomically (OSError if it cannot)."""
    sealed = AESGCM(key.key).encrypt(key.nonce, plaintext, key.ad)
    partial = path + PARTIAL_SUFFIX
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as stream:
            stream.write(sealed)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, path)
        _fsync_directory(os.path.dirname(os.path.abspath(path)))
    except OSError:
        _unlink(partial)
        raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_directory(directory: str) -> None:
    """Make the rename durable; file systems that cannot fsync a directory are left as they are."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
