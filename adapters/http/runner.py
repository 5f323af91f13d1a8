"""The shared aiohttp runner: one site per documented port, request ids, bounded bodies, error shapes.

A system's adapter module describes its `Site`s; the runner serves them all. Each site names the
NATS role its requests travel as (`adapter` for external ports, `gateway` for internal ports) and
how its API renders an error. The runner does what every site needs: it demands the internal
credential on an internal site's routes, reads bodies within the site's limit (adapters/http/
bodies.py), forwards a body to a subject as it is (`SiteContext.forward`, `routes.forward`), and
renders every failure, details included, in the site's error shape. Sites run on aiohttp's
low-level server with the routes of adapters/http/routes.py (see there for why).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from aiohttp import HttpVersion11, web
from aiohttp.hdrs import EXPECT

from adapters.http import aiohttp_internals, bodies
from adapters.http.routes import PATH_PARAMS, Handler, NoRoute, Route, Router
from bus import headers, log
from bus.credentials import ensure_secret_file
from bus.errors import BusError, Unauthorized
from bus.requester import Requester

ErrorRenderer = Callable[[int, str, Mapping[str, Any]], web.Response]   # status, message, details
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
    """What a site's handlers use: the bus, and the site's bounded body readers."""

    requester: Requester
    site: Site
    token_digest: bytes | None = None

    def authorize(self, request: web.BaseRequest) -> None:
        """Demand `Authorization: Bearer <data-dir>/internal.token`, compared in constant time
        (the runner calls this before any route of an internal site)."""
        if self.token_digest is None:
            return
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        digest = hashlib.sha256(presented.strip().encode()).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(digest, self.token_digest):
            raise Unauthorized("this is an internal endpoint: send `Authorization: Bearer <token>` "
                               "with the token from <data-dir>/internal.token")

    async def body(self, request: web.BaseRequest) -> bytes:
        """The request body, refused with 413 beyond the site's limit."""
        return await bodies.read(request, self.site.body_limit)

    async def json(self, request: web.BaseRequest, expected: str) -> tuple[bytes, Any]:
        """The body as received and parsed as JSON (400 naming `expected` when it is not)."""
        raw = await self.body(request)
        return raw, bodies.parse_json(raw, expected)

    async def cbor(self, request: web.BaseRequest, expected: str) -> Any:
        """The body parsed as one CBOR item (400 naming `expected` when it is not)."""
        return bodies.parse_cbor(await self.body(request), expected)

    async def forward(self, request: web.BaseRequest, subject: str, *, content_type: str = headers.OCTETS,
                      reply_type: str | None = None, timeout: float | None = None) -> web.Response:
        """Send the body to `subject` as it is (typed `content_type`) and answer with the reply's bytes."""
        reply = await self.requester.request(subject, await self.body(request), content_type=content_type,
                                             encoded=True, timeout=timeout)
        return web.Response(body=reply.data, content_type=reply_type or reply.content_type)


def internal_token_digest(data_dir: Path) -> bytes:
    """SHA-256 of the internal credential (created on first start); only the digest stays in memory."""
    token = ensure_secret_file(data_dir / INTERNAL_TOKEN_FILE)
    return hashlib.sha256(token.encode()).digest()


def site_handler(site: Site, context: SiteContext) -> Handler:
    """The one handler of a site: request id and logging context, routing, errors in the API's shape."""
    router = Router([_bound(route, context) for route in site.routes(context)])

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        offered = request.headers.get(REQUEST_ID_HEADER)
        request_id = offered if offered and _REQUEST_ID.match(offered) else log.new_request_id()
        log.bind_request(request_id, site=site.name, method=request.method, path=request.path)
        try:
            handler, params = router.resolve(request.method, request.path)
            context.authorize(request)
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
            response = site.render_error(exc.status, exc.message, exc.details)
        except web.HTTPException as exc:
            response = site.render_error(exc.status, f"{exc.reason}: {request.method} {request.path}", {})
        except Exception:
            _log.exception("adapter failed")
            response = site.render_error(500, f"internal error (request id {request_id})", {})
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

    return handle


def _bound(route: Route, context: SiteContext) -> Route:
    """A forwarding route gets its handler here, from the site's context."""
    forward = route.forward
    if forward is None:
        return route

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return await context.forward(request, forward.subject(request.get(PATH_PARAMS, {})),
                                     content_type=forward.content_type, reply_type=forward.reply_type,
                                     timeout=forward.timeout)

    return Route(route.method, route.path, handler)


async def _answer_expect(request: web.BaseRequest) -> None:
    """`Expect: 100-continue` (curl sends it with bodies over 1 MB): invite the body at once, or the
    client waits a second before sending it anyway."""
    expect = request.headers[EXPECT]
    if request.version != HttpVersion11 or expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"unsupported Expect: {expect}")
    await aiohttp_internals.send_continue(request)


def _no_route(site: Site, request: web.BaseRequest, exc: NoRoute) -> web.StreamResponse:
    if exc.status == 404:
        return site.render_error(404, f"Not Found: {request.method} {request.path}", {})
    response = site.render_error(405, f"Method Not Allowed: {request.method} {request.path} "
                                      f"(allowed: {', '.join(exc.allowed)})", {})
    response.headers["Allow"] = ", ".join(exc.allowed)
    return response


def build_server(site: Site, requester: Requester, data_dir: Path) -> web.Server:
    """aiohttp's low-level server for one site, its bodies bounded by the site's limit."""
    context = SiteContext(requester, site, internal_token_digest(data_dir) if site.internal else None)
    return web.Server(site_handler(site, context), request_factory=aiohttp_internals.request_factory(site.body_limit),
                      access_log=None)


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
