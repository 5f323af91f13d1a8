"""A Python client for MesaTEE's external services (TDFS 5065, TMS 5554, FNS 3444) over HTTP.

    async with MesateeClient("user1", "token1") as mesatee:
        mine = await mesatee.upload("a.bin", progress=None)       # hash, register, encrypt, PUT
        task = await mesatee.create_task("psi", ["user2"], [mine])
        ...                                                       # user2: approve(task_id, [theirs])
        await mesatee.invoke(task["task_id"], "psi", task["task_token"])
        await mesatee.download_results(task["task_id"], "results/")   # decrypted and verified

A file is sealed here, on the client, as MesaTEE clients seal it: AES-256-GCM under the key config
the TDFS's Create hands out, `ciphertext || 16-byte tag`, streamed from disk and to disk in pieces
(files reach 4 GiB: never whole in memory). A download lands in a temporary file next to its
destination and takes the destination's name only once the tag, the sha256 and the size all match.

Every failure is a `MesateeError(status, message)`: `status` is the HTTP status of the API's error
reply (`{"type": "Error", "status", "message"}`), or `LOCAL` (0) when no site answered (unreachable,
timed out) or a check made here failed (a file too large, a download that does not verify).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO, Any, AsyncIterator, Callable, Iterable

import aiohttp
import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from components.mesatee.fns_messages import LOST_AFTER_SECONDS, MAX_DEADLINE_SECONDS
from components.mesatee.tdfs_messages import MAX_FILE_SIZE, TAG_BYTES

LOCAL = 0                                   # MesateeError.status when no HTTP status applies
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORTS = {"tdfs": 5065, "tms": 5554, "fns": 3444}
SITE_NAMES = {"tdfs": "Trusted DFS (TDFS)", "tms": "task management service (TMS)",
              "fns": "function node (FNS)"}
USER_ID_HEADER, USER_TOKEN_HEADER = "Teebus-User-Id", "Teebus-User-Token"   # adapters/http/mesatee.py
CHUNK_BYTES = 1024 * 1024
FINISHED, FAILED = "Finished", "Failed"
ENDED = (FINISHED, FAILED)
# A request waits this long for its answer; an invoke as long as the task may live (the FNS's bound).
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
INVOKE_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10,
                                       sock_read=MAX_DEADLINE_SECONDS + LOST_AFTER_SECONDS + 30)

Progress = Callable[[str, int, int], None]
"""`progress(phase, done, total)`: phase "hash", "upload" or "download"; bytes done of total."""


class MesateeError(Exception):
    """A refusal or failure, with a message a person can act on; `body` is the error reply, if any."""

    def __init__(self, status: int, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.body = body


def site_url(host: str, port: int) -> str:
    """`http://host:port`, with an IPv6 address in brackets and an all-addresses host as loopback."""
    if host in ("", "0.0.0.0", "::"):
        host = DEFAULT_HOST
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def key_material(config: dict[str, str]) -> tuple[bytes, bytes, bytes]:
    """(key, nonce, ad) from a TDFS `key_config` (standard base64)."""
    return tuple(base64.b64decode(config[name]) for name in ("key", "nonce", "ad"))  # type: ignore[return-value]


class MesateeClient:
    """One user's client of one deployment. `tdfs`, `tms` and `fns` are base URLs; without `fns`, a
    task is invoked at the ip and port the TMS gave for it (or 127.0.0.1:3444)."""

    def __init__(self, user_id: str, user_token: str, *, tdfs: str | None = None, tms: str | None = None,
                 fns: str | None = None, session: aiohttp.ClientSession | None = None) -> None:
        self.user_id, self.user_token = user_id, user_token
        self.urls = {"tdfs": (tdfs or site_url(DEFAULT_HOST, DEFAULT_PORTS["tdfs"])).rstrip("/"),
                     "tms": (tms or site_url(DEFAULT_HOST, DEFAULT_PORTS["tms"])).rstrip("/")}
        self.fns = fns.rstrip("/") if fns else None
        self._task_nodes: dict[str, str] = {}      # task_id -> the FNS URL the TMS named for it
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> "MesateeClient":
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=DEFAULT_TIMEOUT)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- files (TDFS) -----------------------------------------------------------------------------------

    async def upload(self, path: str | os.PathLike[str], progress: Progress | None = None,
                     file_name: str | None = None) -> str:
        """Register the file with the TDFS and upload it sealed; returns its file_id.

        Two passes over the file: sha256 and size (Create needs them first), then encryption
        straight into the upload. A failed upload deletes the registration again, so no file id
        without content is left behind."""
        path = Path(path)
        size = await asyncio.to_thread(_regular_size, path)
        _check_size(path, size)
        sha256, size = await _digest(path, size, progress)
        _check_size(path, size)
        created = await self._dfs({"type": "Create", "file_name": path.name if file_name is None else file_name,
                                   "sha256": sha256, "file_size": size})
        file_id = created["file_id"]
        try:
            await self._put(file_id, path, size, sha256, key_material(created["key_config"]), progress)
        except BaseException:
            with contextlib.suppress(MesateeError, asyncio.CancelledError):
                await self.delete_file(file_id)
            raise
        return file_id

    async def get_file(self, file_id: str) -> dict[str, Any]:
        """The TDFS's FileInfo of a file this user may read (with its key_config)."""
        return (await self._dfs({"type": "Get", "file_id": file_id}))["file_info"]

    async def list_files(self) -> list[str]:
        return (await self._dfs({"type": "List"}))["list"]

    async def delete_file(self, file_id: str) -> dict[str, Any]:
        """Delete one's own file: its record, key and stored bytes. Returns its last FileInfo."""
        return (await self._dfs({"type": "Delete", "file_id": file_id}))["file_info"]

    async def download(self, file_id: str, dest: str | os.PathLike[str],
                       progress: Progress | None = None) -> dict[str, Any]:
        """Fetch, decrypt and verify a file into `dest` (a directory: into `dest/<file_id>`); returns
        {file_id, path, file_size, sha256}.

        `dest` appears only complete and verified (tag, sha256, size): the plaintext goes to a
        temporary file beside it (mode 0600), removed on any failure, renamed onto `dest` at the end."""
        info = await self.get_file(file_id)
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / file_id
        fd, temporary = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                await self._receive(file_id, info, out, progress)
                await asyncio.to_thread(_sync, out)
            os.replace(temporary, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        return {"file_id": file_id, "path": str(dest), "file_size": info["file_size"], "sha256": info["sha256"]}

    async def download_results(self, task_id: str, dest_dir: str | os.PathLike[str],
                               progress: Progress | None = None) -> list[dict[str, Any]]:
        """Download this user's private outputs of a Finished task into `dest_dir`, each named by its
        file_id; returns what `download` returns, for each."""
        info = await self.get_task(task_id)
        files = info["user_private_result_file_id"]
        if info["status"] != FINISHED:
            why = f": {info['failure_reason']}" if info.get("failure_reason") else ""
            raise MesateeError(LOCAL, f"task {task_id} is {info['status']}{why}; results exist once it is "
                               f"Finished (follow it with `teebus mesatee task watch {task_id}`)")
        if not files:
            raise MesateeError(LOCAL, f"task {task_id} ({info['function_name']}) left no private result for "
                               f"user {self.user_id}; a function such as echo answers in the invoke reply")
        directory = Path(dest_dir)
        directory.mkdir(parents=True, exist_ok=True)
        return [await self.download(file_id, directory / file_id, progress) for file_id in files]

    # -- tasks (TMS, FNS) ---------------------------------------------------------------------------------

    async def create_task(self, function: str, collaborators: Iterable[str] = (),
                          files: Iterable[str] = ()) -> dict[str, Any]:
        """TMS Create; returns the seed's reply: task_id, task_token, ip and port of the function node."""
        reply = await self._tms({"type": "Create", "function_name": function,
                                 "collaborator_list": list(collaborators), "files": list(files)})
        self._remember_node(reply["task_id"], reply)
        return reply

    async def approve(self, task_id: str, files: Iterable[str]) -> dict[str, Any]:
        """TMS Update: a collaborator approves the task with its input files; returns the seed's reply."""
        reply = await self._tms({"type": "Update", "task_id": task_id, "files": list(files)})
        self._remember_node(task_id, reply)
        return reply

    async def get_task(self, task_id: str) -> dict[str, Any]:
        """The task's TaskInfo (the seed's Get reply without its envelope)."""
        info = (await self._tms({"type": "Get", "task_id": task_id}))["task_info"]
        self._remember_node(task_id, info)
        return info

    async def list_tasks(self) -> list[str]:
        """The ids of the tasks this user created or collaborates on, oldest first."""
        return (await self._tms({"type": "List"}))["list"]

    async def invoke(self, task_id: str, function: str, task_token: str,
                     payload: str | None = None) -> dict[str, Any]:
        """Run a Ready task on the function node; the answer ({"result": ...}) comes when it ends."""
        url = self.fns or self._task_nodes.get(task_id) or site_url(DEFAULT_HOST, DEFAULT_PORTS["fns"])
        body = {"task_id": task_id, "function_name": function, "task_token": task_token, "payload": payload}
        return await self._post("fns", url, body, timeout=INVOKE_TIMEOUT)

    # -- HTTP -------------------------------------------------------------------------------------------

    def _remember_node(self, task_id: str, reply: dict[str, Any]) -> None:
        if reply.get("ip") and reply.get("port"):
            self._task_nodes[task_id] = site_url(str(reply["ip"]), int(reply["port"]))

    def _credentials(self) -> dict[str, str]:
        return {"user_id": self.user_id, "user_token": self.user_token}

    async def _dfs(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._post("tdfs", self.urls["tdfs"], {**body, **self._credentials()})

    async def _tms(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._post("tms", self.urls["tms"], {**body, **self._credentials()})

    def _user_headers(self) -> dict[str, str]:
        return {USER_ID_HEADER: self.user_id, USER_TOKEN_HEADER: self.user_token}

    async def _post(self, site: str, url: str, body: dict[str, Any],
                    timeout: aiohttp.ClientTimeout | None = None) -> dict[str, Any]:
        with _reaching(site, url):
            async with self._open().post(url + "/", data=orjson.dumps(body), timeout=timeout or DEFAULT_TIMEOUT,
                                         headers={"Content-Type": "application/json"}) as response:
                return _decode(site, url, response.status, await response.read())

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use the client as `async with MesateeClient(...) as client:`")
        return self._session

    async def _put(self, file_id: str, path: Path, size: int, sha256: str, material: tuple[bytes, bytes, bytes],
                   progress: Progress | None) -> None:
        url = f"{self.urls['tdfs']}/files/{file_id}"
        failures: list[MesateeError] = []      # what the body found wrong, whatever aiohttp makes of it
        body = _sealed(path, size, sha256, material, progress, failures)
        headers = {**self._user_headers(), "Content-Type": "application/octet-stream",
                   "Content-Length": str(size + TAG_BYTES)}
        try:
            with _reaching("tdfs", url):
                async with self._open().put(url, data=body, headers=headers) as response:
                    _decode("tdfs", url, response.status, await response.read())
        except MesateeError:
            if failures:
                raise failures[0] from None
            raise
        if failures:
            raise failures[0]

    async def _receive(self, file_id: str, info: dict[str, Any], out: IO[bytes], progress: Progress | None) -> None:
        """Stream GET /files/<id> through AES-GCM into `out`; raise unless everything verifies."""
        key, nonce, ad = key_material(info["key_config"])
        decryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).decryptor()
        decryptor.authenticate_additional_data(ad)
        hasher = hashlib.sha256()
        expected = info["file_size"] + TAG_BYTES
        url = f"{self.urls['tdfs']}/files/{file_id}"
        received, tail = 0, b""
        with _reaching("tdfs", url):
            async with self._open().get(url, headers=self._user_headers()) as response:
                if response.status != 200:
                    _decode("tdfs", url, response.status, await response.read())
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    received += len(chunk)
                    if received > expected:
                        raise MesateeError(LOCAL, f"file {file_id} sent more than its {expected} bytes "
                                           "(file_size + tag): its stored content is not what was registered")
                    data = tail + chunk
                    sealed, tail = data[:-TAG_BYTES], data[-TAG_BYTES:]
                    await asyncio.to_thread(_open_piece, decryptor, hasher, sealed, out)
                    if progress:
                        progress("download", received, expected)
        if received != expected:
            raise MesateeError(LOCAL, f"file {file_id} arrived with {received} of its {expected} bytes "
                               "(file_size + tag): the download was cut short; try again")
        try:
            decryptor.finalize_with_tag(tail)
        except InvalidTag:
            raise MesateeError(LOCAL, f"file {file_id} does not open: its AES-GCM tag does not match, so its "
                               "stored bytes were altered or damaged; nothing was written") from None
        if hasher.hexdigest() != info["sha256"]:
            raise MesateeError(LOCAL, f"file {file_id} decrypts to content whose sha256 is not the registered "
                               f"{info['sha256']}; nothing was written")


# -- helpers ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _reaching(site: str, url: str):
    """Turn transport failures into a MesateeError naming the site and its URL."""
    name = SITE_NAMES[site]
    try:
        yield
    except aiohttp.ClientConnectorError as exc:
        error = exc.os_error
        if isinstance(error, ConnectionRefusedError):
            reason = "connection refused"
        else:
            reason = getattr(error, "strerror", None) or str(error or exc)
        raise MesateeError(LOCAL, f"cannot reach the {name} at {url}: {reason}; is teebus running there, "
                           "and is this its address?") from None
    except (asyncio.TimeoutError, TimeoutError):
        raise MesateeError(LOCAL, f"the {name} at {url} did not answer in time") from None
    except aiohttp.ClientError as exc:
        raise MesateeError(LOCAL, f"the {name} at {url} broke off the exchange: "
                           f"{exc or type(exc).__name__}") from None


def _decode(site: str, url: str, status: int, raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if status >= 400:
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            raise MesateeError(int(body.get("status") or status), body["message"], body)
        raise MesateeError(status, f"the {SITE_NAMES[site]} at {url} answered {status}: {raw[:200]!r}")
    if not isinstance(body, dict):
        raise MesateeError(LOCAL, f"the {SITE_NAMES[site]} at {url} answered something other than a JSON "
                           f"object: {raw[:200]!r}; is this address really the {site.upper()}?")
    return body


def _regular_size(path: Path) -> int:
    if not path.is_file():
        raise MesateeError(LOCAL, f"{path} is not a regular file" if path.exists() else f"{path} does not exist")
    return path.stat().st_size


def _check_size(path: Path, size: int) -> None:
    if size > MAX_FILE_SIZE:
        raise MesateeError(LOCAL, f"{path} holds {size} bytes; MesaTEE files hold at most {MAX_FILE_SIZE} "
                           "(file_size is a u32): split it")


async def _digest(path: Path, size: int, progress: Progress | None) -> tuple[str, int]:
    """The plaintext's sha256 (lowercase hex) and size, in one streaming pass."""
    hasher = hashlib.sha256()
    done = 0
    with open(path, "rb") as source:
        while piece := await asyncio.to_thread(_hash_piece, source, hasher):
            done += piece
            if progress:
                progress("hash", done, max(size, done))
    return hasher.hexdigest(), done


def _hash_piece(source: IO[bytes], hasher: Any) -> int:
    data = source.read(CHUNK_BYTES)
    hasher.update(data)
    return len(data)


async def _sealed(path: Path, size: int, sha256: str, material: tuple[bytes, bytes, bytes],
                  progress: Progress | None, failures: list[MesateeError]) -> AsyncIterator[bytes]:
    """`ciphertext || tag` of the file, piece by piece; the tag goes only if the file is still the
    one registered (same size and sha256), else the body stops short and the TDFS stores nothing."""
    key, nonce, ad = material
    encryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(ad)
    hasher = hashlib.sha256()
    sent = 0
    with open(path, "rb") as source:
        while sealed := await asyncio.to_thread(_seal_piece, source, encryptor, hasher):
            sent += len(sealed)
            if sent > size:
                break
            yield sealed
            if progress:
                progress("upload", sent, size)
    if sent != size or hasher.hexdigest() != sha256:
        failures.append(MesateeError(LOCAL, f"{path} changed while it was uploaded (it no longer matches the "
                                     "sha256 and size registered); the upload was abandoned: upload it again"))
        raise failures[-1]
    yield encryptor.finalize() + encryptor.tag


def _seal_piece(source: IO[bytes], encryptor: Any, hasher: Any) -> bytes:
    data = source.read(CHUNK_BYTES)
    hasher.update(data)
    return encryptor.update(data)


def _open_piece(decryptor: Any, hasher: Any, sealed: bytes, out: IO[bytes]) -> None:
    plaintext = decryptor.update(sealed)
    hasher.update(plaintext)
    out.write(plaintext)


def _sync(out: IO[bytes]) -> None:
    out.flush()
    os.fsync(out.fileno())
