"""Enarx over HTTP: the keep manager on 3030 (plain HTTP) and each keep's wasmldr (HTTPS).

Bodies are raw CBOR in serde's form (FACTS.md); no Content-Type is needed. Every error is a CBOR
`LocalCborErr {"details": ...}` with a fitting status. Beyond the seed: `GET /keeps`,
`GET /keep/<kuuid>` and `DELETE /keep/<kuuid>`, and `POST /new_keep?host=NAME`, which asks that
host's keep manager for the keep instead of any keep manager on the bus (docs/enarx.md "Hosts").
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path
from typing import Any, Mapping

import cbor2
from aiohttp import web

from adapters.http import routes
from adapters.http.routes import path_param
from adapters.http.runner import HttpServer, Site, SiteContext
from bus.errors import BadRequest, NoResponders, NotFound, Unavailable
from bus.headers import CBOR
from bus.requester import Requester
from components.enarx import messages, subjects

KEEPMGR_SITE = "enarx-keepmgr"
KEEPMGR_BODY_LIMIT = 8 * 1024 * 1024        # opaque keep traffic (the bus's max_payload)
NEW_KEEP_TIMEOUT = 60.0
SHUTDOWN_TIMEOUT = 30.0
WORKLOAD_MARGIN = 2 * 1024 * 1024           # CBOR framing, args, env around the module


def render_error(status: int, message: str, details: Mapping[str, Any]) -> web.Response:
    """LocalCborErr `{"details": message}`, with the component's details beside it (a stopped
    workload's exit_code, stdout, stderr, stopped, ...)."""
    return cbor_response({**messages.error(message), **details}, status=status)


def cbor_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=cbor2.dumps(body), status=status, content_type=CBOR)


def path_kuuid(request: web.BaseRequest) -> str:
    return messages.parse_uuid(path_param(request, "kuuid"), "the keep id in the URL")


def query_host(request: web.BaseRequest) -> str | None:
    """The host named by `?host=NAME`, if any (given once, a host name)."""
    given = request.query.getall("host", [])
    if len(given) > 1:
        raise BadRequest(f"host is given {len(given)} times in the query; give it once")
    return messages.parse_host(given[0], "the host in ?host=") if given else None


def keepmgr_routes(context: SiteContext) -> list[routes.Route]:
    bus = context.requester

    async def contracts(request: web.BaseRequest) -> web.Response:
        reply = await bus.request(subjects.CONTRACTS, None, content_type=CBOR)
        return web.Response(body=reply.data, content_type=CBOR)

    async def new_keep(request: web.BaseRequest) -> web.Response:
        contract = await context.cbor(request, "a KeepContract")
        messages.parse_contract(contract)
        host = query_host(request)
        body = {"contract": contract, "client": request.remote, "path_uuid": path_param(request, "uuid")}
        if host is None:
            reply = await bus.request(subjects.NEW_KEEP, body, content_type=CBOR, timeout=NEW_KEEP_TIMEOUT)
        else:
            reply = await _new_keep_on(host, {**body, "host": host})
        return web.Response(body=reply.data, content_type=CBOR)

    async def _new_keep_on(host: str, body: dict[str, Any]) -> Any:
        try:
            return await bus.request(subjects.new_keep_on(host), body, content_type=CBOR, timeout=NEW_KEEP_TIMEOUT)
        except NoResponders:
            raise NotFound(f"no keep manager serves host {host!r}; leave out ?host= to let any keep "
                           "manager take the keep") from None

    async def converse(request: web.BaseRequest) -> web.Response:
        kuuid = path_kuuid(request)
        try:
            return await context.forward(request, subjects.keep(kuuid), reply_type=CBOR)
        except Unavailable:
            raise await _why_unreachable(kuuid) from None

    async def _why_unreachable(kuuid: str) -> Exception:
        keep = (await bus.request(subjects.KEEP_GET, {"kuuid": kuuid}, content_type=CBOR)).payload
        reason = f" ({keep['error']})" if keep.get("error") else ""
        return Unavailable(f"the loader of keep {kuuid} is gone: the keep is {keep['state']}{reason}")

    async def keeps(request: web.BaseRequest) -> web.Response:
        reply = await bus.request(subjects.KEEPS, None, content_type=CBOR)
        return web.Response(body=reply.data, content_type=CBOR)

    async def keep(request: web.BaseRequest) -> web.Response:
        reply = await bus.request(subjects.KEEP_GET, {"kuuid": path_kuuid(request)}, content_type=CBOR)
        return web.Response(body=reply.data, content_type=CBOR)

    async def shutdown(request: web.BaseRequest) -> web.Response:
        reply = await bus.request(subjects.KEEP_DELETE, {"kuuid": path_kuuid(request)}, content_type=CBOR,
                                  timeout=SHUTDOWN_TIMEOUT)
        return web.Response(body=reply.data, content_type=CBOR)

    return [routes.post("/contracts", contracts), routes.post("/new_keep", new_keep),
            routes.post("/new_keep/{uuid}", new_keep), routes.post("/keep/{kuuid}", converse),
            routes.get("/keeps", keeps), routes.get("/keep/{kuuid}", keep), routes.delete("/keep/{kuuid}", shutdown)]


def sites(ports: Mapping[str, int], config: Any = None) -> list[Site]:
    """The keep manager's site (the wasmldr sites live in each keep's process: `wasmldr_site`)."""
    return [Site(KEEPMGR_SITE, ports[KEEPMGR_SITE], "adapter", keepmgr_routes, render_error,
                 body_limit=KEEPMGR_BODY_LIMIT)]


def wasmldr_site(kuuid: str, port: int, key_pem: bytes, certificate_pem: bytes, max_module_bytes: int,
                 work_seconds: float) -> Site:
    """One keep's wasmldr: HTTPS with the keep's own certificate, `POST /workload`."""

    def workload_routes(context: SiteContext) -> list[routes.Route]:
        # passed on as received: the wasmldr decodes and validates it once (a 64 MB module should
        # not be decoded twice in one process); oversized bodies stop at the site limit
        return [routes.forward("POST", "/workload", lambda _: subjects.workload(kuuid), content_type=CBOR,
                               reply_type=CBOR, timeout=work_seconds + 60.0)]

    return Site(f"enarx-wasmldr-{kuuid}", port, "keepldr", workload_routes, render_error,
                body_limit=2 * max_module_bytes + WORKLOAD_MARGIN, tls=tls_context(key_pem, certificate_pem))


async def serve_wasmldr(kuuid: str, host: str, port: int, key_pem: bytes, certificate_pem: bytes,
                        max_module_bytes: int, work_seconds: float, requester: Requester,
                        data_dir: Path) -> HttpServer:
    """Start one keep's wasmldr site; the keep's process stops the returned server."""
    site = wasmldr_site(kuuid, port, key_pem, certificate_pem, max_module_bytes, work_seconds)
    server = HttpServer(host, data_dir)
    await server.start([site], {site.role: requester})
    return server


def tls_context(key_pem: bytes, certificate_pem: bytes) -> ssl.SSLContext:
    """A server context from PEM bytes; the key touches disk only in a private temporary file."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="teebus-keep-") as folder:
        key_file, cert_file = Path(folder) / "key.pem", Path(folder) / "cert.pem"
        key_file.touch(mode=0o600)
        key_file.write_bytes(key_pem)
        cert_file.write_bytes(certificate_pem)
        context.load_cert_chain(cert_file, key_file)
    return context

