"""MesaTEE over HTTP: each service's JSON messages as `POST /` bodies on its documented port.

KMS 6016, TDFS 5066 and TMS 5555 are internal (the internal credential); TDFS 5065, TMS 5554 and
FNS 3444 are external, where each request names its user (user_id, user_token). A valid body travels
on to the subject of its operation as received (the component parses the same bytes again).
Errors (not specified by MesaTEE, whose TCP server just dropped the connection) are JSON:
`{"type": "Error", "status": <http status>, "message": "<what to do>"}`, plus any details the
component gave.

Beyond the original (whose clients wrote `access_path` on the TDFS machine), the external TDFS site
carries the encrypted bytes for remote clients:

- `PUT /files/<file_id>`: the body is the file's `ciphertext || tag`, exactly file_size + 16 bytes;
  the owner only. More is a 413 the moment it arrives, less a 400; either way nothing is stored.
  Answer: `{"type": "Upload", "file_id": ..., "size": <bytes stored>}`.
- `GET /files/<file_id>` (and HEAD): those bytes, `application/octet-stream`, to whoever may Get
  the file. 409 while the file has no complete content yet.

Both take the user from the headers `Teebus-User-Id` and `Teebus-User-Token` (the body is the file).
The adapter asks the TDFS component (`subjects.TDFS_ACCESS`) whether and where, then streams between
the socket and the file store (components/mesatee/file_store.py) in pieces: the bytes never sit
whole in memory and never cross the bus, so this adapter must run where the TDFS's data directory
is. An upload lands in a staged file that is renamed into place only once complete and on disk.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import IO, Any, Callable, Mapping

import orjson
from aiohttp import web

from adapters.http import aiohttp_internals, bodies, routes
from adapters.http.runner import REQUEST_ID_HEADER, Site, SiteContext
from bus import log
from bus.errors import BadRequest, Conflict, NotFound
from components.mesatee import fields, file_store, fns_messages, kms_messages, subjects, tms_messages
from components.mesatee import tdfs_messages
from components.mesatee.fns_messages import LOST_AFTER_SECONDS, MAX_DEADLINE_SECONDS

JSON_BODY_LIMIT = 64 * 1024
KMS_SITE = "mesatee-kms"
TMS_SITE, TMS_INTERNAL_SITE, FNS_SITE = "mesatee-tms", "mesatee-tms-internal", "mesatee-fns"
TDFS_SITE, TDFS_INTERNAL_SITE = "mesatee-tdfs", "mesatee-tdfs-internal"
USER_ID_HEADER = "Teebus-User-Id"
USER_TOKEN_HEADER = "Teebus-User-Token"
OCTETS = "application/octet-stream"
KMS_SAMPLE = 'one tagged request such as {"type": "Create"}'
TMS_SAMPLE = 'one tagged request such as {"type": "List", "user_id": "user1", "user_token": "token1"}'
TMS_INTERNAL_SAMPLE = 'one tagged request such as {"type": "Get", "task_id": "..."}'
TDFS_SAMPLE = 'one tagged request such as {"type": "List", "user_id": "user1", "user_token": "token1"}'
TDFS_INTERNAL_SAMPLE = 'one tagged request such as {"type": "Get", "file_id": "<uuid>"}'
FNS_BODY_LIMIT = 2 * 1024 * 1024          # an invoke's payload may be up to fns_messages.MAX_PAYLOAD_CHARS
INVOKE_TIMEOUT = MAX_DEADLINE_SECONDS + LOST_AFTER_SECONDS   # a task's longest life


def render_error(status: int, message: str, details: Mapping[str, Any]) -> web.Response:
    return json_response({**details, "type": "Error", "status": status, "message": message}, status=status)


def json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def tagged(operation_of: Callable[[Any], str], subject: Callable[[str], str], sample: str,
           body_limit: int | None = None) -> Callable[[SiteContext], list[routes.Route]]:
    """`POST /` taking one tagged request: refused here when invalid, else sent on to the subject of
    its operation as received (the component parses the same bytes again)."""
    def site_routes(context: SiteContext) -> list[routes.Route]:
        async def serve(request: web.BaseRequest) -> web.Response:
            body, parsed = await context.json(request, sample)
            reply = await context.requester.request(subject(operation_of(parsed)), body, encoded=True)
            return web.Response(body=reply.data, content_type="application/json")

        return [routes.Route("POST", "/", serve, body_limit=body_limit)]

    return site_routes


kms_routes = tagged(lambda body: kms_messages.parse_request(body).operation, subjects.kms, KMS_SAMPLE)
tms_routes = tagged(lambda body: tms_messages.parse_request(body).operation, subjects.tms, TMS_SAMPLE)
tms_internal_routes = tagged(tms_messages.internal_operation, subjects.tms_internal, TMS_INTERNAL_SAMPLE)
tdfs_internal_routes = tagged(lambda body: tdfs_messages.parse_internal_request(body).operation,
                              subjects.tdfs_internal, TDFS_INTERNAL_SAMPLE)
tdfs_json_routes = tagged(lambda body: tdfs_messages.parse_request(body).operation, subjects.tdfs, TDFS_SAMPLE,
                          body_limit=JSON_BODY_LIMIT)    # the site's own limit is the largest upload


def fns_routes(context: SiteContext) -> list[routes.Route]:
    async def invoke(request: web.BaseRequest) -> web.Response:
        body, parsed = await context.json(request, fns_messages.SAMPLE)
        fns_messages.parse_invoke(parsed)
        # the call lasts as long as the task: the function node's deadline bounds it
        reply = await context.requester.request(subjects.FNS_INVOKE, body, encoded=True, timeout=INVOKE_TIMEOUT)
        return web.Response(body=reply.data, content_type="application/json")

    return [routes.post("/", invoke)]


def tdfs_routes(context: SiteContext) -> list[routes.Route]:
    async def upload(request: web.BaseRequest) -> web.Response:
        file_id, user_id, user_token = _target(request)
        target, size = await _access(context, file_id, user_id, user_token, tdfs_messages.WRITE)
        declared = request.content_length
        if declared is not None and declared != size:
            raise _refused(request, *_wrong_size(file_id, declared, size))
        await context.proceed(request)          # only now is the body invited (Expect: 100-continue)
        vanished = None
        async with file_store.Staged(target, size) as staged:
            await _receive(request, staged, context.site.body_timeout, file_id)
            if staged.received != size:
                raise BadRequest(_wrong_size(file_id, staged.received, size)[1])
            try:
                await staged.commit()
            except file_store.Vanished as exc:
                vanished = exc
        try:   # a Delete that raced the upload must not leave its bytes behind
            await _access(context, file_id, user_id, user_token, tdfs_messages.WRITE)
        except NotFound:
            await asyncio.to_thread(file_store.remove, target)
            raise
        if vanished is not None:
            raise vanished
        return json_response({"type": "Upload", "file_id": file_id, "size": size})

    async def download(request: web.BaseRequest) -> web.StreamResponse:
        file_id, user_id, user_token = _target(request)
        path, size = await _access(context, file_id, user_id, user_token, tdfs_messages.READ)
        stored = await asyncio.to_thread(_open_complete, path, size, file_id)
        try:
            return await _send(request, stored, size)
        finally:
            await asyncio.to_thread(stored.close)

    return [*tdfs_json_routes(context), routes.put("/files/{file_id}", upload, answers_expect=True),
            routes.get("/files/{file_id}", download)]


def sites(ports: Mapping[str, int], config: Any = None) -> list[Site]:
    """The MesaTEE sites built so far, on the deployment's ports (components/mesatee/system.py)."""
    return [Site(KMS_SITE, ports[KMS_SITE], "gateway", kms_routes, render_error,
                 body_limit=JSON_BODY_LIMIT, internal=True),
            Site(TMS_SITE, ports[TMS_SITE], "adapter", tms_routes, render_error, body_limit=JSON_BODY_LIMIT),
            Site(TMS_INTERNAL_SITE, ports[TMS_INTERNAL_SITE], "gateway", tms_internal_routes, render_error,
                 body_limit=JSON_BODY_LIMIT, internal=True),
            Site(FNS_SITE, ports[FNS_SITE], "adapter", fns_routes, render_error, body_limit=FNS_BODY_LIMIT),
            Site(TDFS_SITE, ports[TDFS_SITE], "adapter", tdfs_routes, render_error,
                 body_limit=tdfs_messages.MAX_STORED_BYTES),
            Site(TDFS_INTERNAL_SITE, ports[TDFS_INTERNAL_SITE], "gateway", tdfs_internal_routes, render_error,
                 body_limit=JSON_BODY_LIMIT, internal=True)]


# -- the TDFS file bytes ---------------------------------------------------------------------------

def _target(request: web.BaseRequest) -> tuple[str, str, str]:
    """The file id from the path and the user from the headers, validated."""
    file_id = fields.uuid_id(routes.path_param(request, "file_id"), "the file id in the path")
    found = []
    for header, parse in ((USER_ID_HEADER, fields.user_id), (USER_TOKEN_HEADER, fields.user_token)):
        value = request.headers.get(header)
        if value is None:
            raise BadRequest(f"the header {header} is missing: send your user id in {USER_ID_HEADER} and "
                             f"your token in {USER_TOKEN_HEADER}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(f"the header {header} is not valid UTF-8") from None
        found.append(parse(value, header))
    return file_id, found[0], found[1]


async def _access(context: SiteContext, file_id: str, user_id: str, user_token: str, mode: str) -> tuple[Path, int]:
    """Ask the component: may this user `mode` the file, where are its bytes, how many are they."""
    reply = await context.requester.request(subjects.TDFS_ACCESS, {
        "file_id": file_id, "user_id": user_id, "user_token": user_token, "mode": mode})
    return Path(reply.payload["access_path"]), int(reply.payload["limit"])


def _wrong_size(file_id: str, got: int, size: int) -> tuple[int, str]:
    status = 413 if got > size else 400
    return status, (f"file {file_id} takes exactly {size} bytes (its file_size + the {tdfs_messages.TAG_BYTES}-byte "
                    f"tag); the body {'declares' if status == 413 else 'holds'} {got}")


def _refused(request: web.BaseRequest, status: int, message: str) -> bodies.Unread:
    """A body refused before (or while) it is read: the connection closes after the answer."""
    aiohttp_internals.skip_rest_of_body(request)
    return bodies.Unread(message, status=status)


async def _receive(request: web.BaseRequest, staged: file_store.Staged, timeout: float, file_id: str) -> None:
    """Stream the body into `staged`: a 413 as soon as it passes the size, 408 when it stalls."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout) as deadline:
            while chunk := await request.content.readany():
                await staged.write(chunk)
                if staged.overflows:
                    raise _refused(request, 413, f"file {file_id} takes exactly {staged.size} bytes (its "
                                   f"file_size + the {tdfs_messages.TAG_BYTES}-byte tag); the body sent more")
                deadline.reschedule(loop.time() + timeout)
    except aiohttp_internals.PAYLOAD_ERRORS as exc:
        raise _refused(request, 400, f"the body is malformed: {aiohttp_internals.describe(exc)}") from None
    except TimeoutError:
        raise _refused(request, 408, f"the body stalled: no byte of it arrived for {timeout:g} s") from None
    except ConnectionError:
        raise bodies.Unread("the client closed the connection before its body arrived", status=400) from None


def _open_complete(path: Path, size: int, file_id: str) -> IO[bytes]:
    """The stored bytes, opened (a Delete or a new upload after this no longer matters), if complete."""
    try:
        stored = open(path, "rb")
    except FileNotFoundError:
        raise Conflict(f"file {file_id} has no content yet: its owner uploads it with PUT /files/{file_id}") from None
    held = os.fstat(stored.fileno()).st_size
    if held != size:
        stored.close()
        raise Conflict(f"file {file_id} holds {held} of its {size} bytes: its content is incomplete")
    return stored


async def _send(request: web.BaseRequest, stored: IO[bytes], size: int) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": OCTETS})
    response.content_length = size
    request_id = log.current_request_id()
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id   # the runner's own setting comes too late
    try:
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        while chunk := await asyncio.to_thread(stored.read, file_store.READ_BYTES):
            await response.write(chunk)
        await response.write_eof()
    except ConnectionError:   # the client left before or during the download: nobody to answer
        log.get_logger("adapters.http").info("download abandoned by the client")
    return response
