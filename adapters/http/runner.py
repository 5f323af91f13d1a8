"""The shared aiohttp runner: one site per documented port, request ids, bounded bodies, error shapes.

A system's adapter module describes its `Site`s; the runner serves them all. Each site names the
NATS role its requests travel as (`adapter` for external ports, `gateway` for internal ports, which
also demand the internal credential) and how its API renders an error. Sites run on aiohttp's
low-level server with the routes of adapters/http/routes.py (see there for why).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from aiohttp import HttpVersion11, StreamReader, web
from aiohttp.hdrs import EXPECT
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.web_protocol import RequestHandler

from adapters.http.routes import PATH_PARAMS, Handler, NoRoute, Route, Router
from bus import log
from bus.credentials import ensure_secret_file
from bus.errors import BusError, TooLarge, Unauthorized
from bus.requester import Requester

ErrorRenderer = Callable[[int, str], web.Response]
REQUEST_ID_HEADER = "X-Request-Id"
INTERNAL_TOKEN_FILE = "internal.token"
DEFAULT_BODY_LIMIT = 1024 * 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_log = log.get_logger("adapters.http")


@dataclass
class Site:
    """One listening port of one system."""

    name: str
    port: int
    role: str
    routes: Callable[["SiteContext"], list[Route]]
    render_error: ErrorRenderer
    body_limit: int = DEFAULT_BODY_LIMIT
    internal: bool = False
    tls: ssl.SSLContext | None = None   # HTTPS with this context (the wasmldr's keep certificate)


@dataclass
class SiteContext:
    """What a site's handlers use: the bus, and the internal credential check when it is internal."""

    requester: Requester
    site: Site
    token_digest: bytes | None = None

    def authorize(self, request: web.BaseRequest) -> None:
        """Demand `Authorization: Bearer <data-dir>/internal.token`, compared in constant time."""
        if self.token_digest is None:
            return
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        digest = hashlib.sha256(presented.strip().encode()).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(digest, self.token_digest):
            raise Unauthorized("this is an internal endpoint: send `Authorization: Bearer <token>` "
                               "with the token from <data-dir>/internal.token")

    async def body(self, request: web.BaseRequest) -> bytes:
        """The request body, refused with 413 beyond the site's limit."""
        try:
            return await request.read()  # stops reading once past the site's limit (client_max_size)
        except web.HTTPRequestEntityTooLarge:
            size = f" of {request.content_length} bytes" if request.content_length else ""
            raise TooLarge(f"request body{size} exceeds the limit of {self.site.body_limit} bytes") from None


def internal_token_digest(data_dir: Path) -> bytes:
    """SHA-256 of the internal credential (created on first start); only the digest stays in memory."""
    token = ensure_secret_file(data_dir / INTERNAL_TOKEN_FILE)
    return hashlib.sha256(token.encode()).digest()


def site_handler(site: Site, context: SiteContext) -> Handler:
    """The one handler of a site: request id and logging context, routing, errors in the API's shape."""
    router = Router(site.routes(context))

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        offered = request.headers.get(REQUEST_ID_HEADER)
        request_id = offered if offered and _REQUEST_ID.match(offered) else log.new_request_id()
        log.bind_request(request_id, site=site.name, method=request.method, path=request.path)
        try:
            handler, params = router.resolve(request.method, request.path)
            if params:
                request[PATH_PARAMS] = params
            if EXPECT in request.headers:
                await _answer_expect(request)
            response = await handler(request)
        except NoRoute as exc:
            response = _no_route(site, request, exc)
        except BusError as exc:
            level = _log.warning if exc.status >= 500 else _log.info
            level("request failed", status=exc.status, error=exc.message)
            response = site.render_error(exc.status, exc.message)
        except web.HTTPException as exc:
            response = site.render_error(exc.status, f"{exc.reason}: {request.method} {request.path}")
        except Exception:
            _log.exception("adapter failed")
            response = site.render_error(500, f"internal error (request id {request_id})")
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

    return handle


async def _answer_expect(request: web.BaseRequest) -> None:
    """`Expect: 100-continue` (curl sends it with bodies over 1 MB): invite the body at once, or the
    client waits a second before sending it anyway."""
    expect = request.headers[EXPECT]
    if request.version != HttpVersion11 or expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"unsupported Expect: {expect}")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the interim response is not part of the reply's size


def _no_route(site: Site, request: web.BaseRequest, exc: NoRoute) -> web.StreamResponse:
    if exc.status == 404:
        return site.render_error(404, f"Not Found: {request.method} {request.path}")
    response = site.render_error(405, f"Method Not Allowed: {request.method} {request.path} "
                                      f"(allowed: {', '.join(exc.allowed)})")
    response.headers["Allow"] = ", ".join(exc.allowed)
    return response


def build_server(site: Site, requester: Requester, data_dir: Path) -> web.Server:
    """aiohttp's low-level server for one site, its bodies bounded by the site's limit."""
    context = SiteContext(requester, site, internal_token_digest(data_dir) if site.internal else None)
    loop = asyncio.get_running_loop()

    def make_request(message: RawRequestMessage, payload: StreamReader, protocol: RequestHandler,
                     writer: AbstractStreamWriter, task: asyncio.Task[None]) -> web.BaseRequest:
        return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=site.body_limit)

    return web.Server(site_handler(site, context), request_factory=make_request, access_log=None)


@dataclass
class HttpServer:
    """Serves a set of sites on `host`; `start` fails clearly when a port is taken."""

    host: str
    data_dir: Path
    _runners: list[web.ServerRunner] = field(default_factory=list)
    bound: dict[str, str] = field(default_factory=dict)

    async def start(self, sites: list[Site], requesters: dict[str, Requester]) -> None:
        for site in sites:
            runner = web.ServerRunner(build_server(site, requesters[site.role], self.data_dir),
                                      handle_signals=False)
            await runner.setup()
            try:
                await web.TCPSite(runner, self.host, site.port, backlog=1024, ssl_context=site.tls).start()
            except OSError as exc:
                await runner.cleanup()
                await self.stop()
                raise OSError(f"cannot listen on {self.host}:{site.port} for {site.name}: {exc.strerror}; "
                              f"free the port or move the site with --port {site.name}=PORT") from None
            self._runners.append(runner)
            self.bound[site.name] = f"{'https' if site.tls else 'http'}://{self.host}:{site.port}"

    async def stop(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
