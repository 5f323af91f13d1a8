"""The shared aiohttp runner: one site per documented port, request ids, bounded bodies, error shapes.

A system's adapter module describes its `Site`s; the runner serves them all. Each site names the
NATS role its requests travel as (`adapter` for external ports, `gateway` for internal ports) and
how its API renders an error. The runner does what every site needs: it demands the internal
credential on an internal site's routes, reads bodies within the site's limit (adapters/http/
bodies.py), forwards a body to a subject as it is (`SiteContext.forward`, `routes.forward`), and
renders every failure, details included, in the site's error shape. Sites run on aiohttp's
low-level server with the routes of adapters/http/routes.py (see there for why).

Hostile clients: errors of aiohttp's own HTTP parser (missing Host, oversized headers, bad chunking)
answer in the site's error shape too, as one log line that quotes nothing of the request
(adapters/http/aiohttp_internals.py). Connections are capped per site (`Site.max_connections`) and
per server (`HttpServer.max_connections`, by default at most half of the process's file
descriptors, the last quarter of it kept for internal sites); a connection over a cap gets a 503
and is closed at once. A connection idle for `Site.idle_timeout` (between requests, or before its
request's headers are complete) is closed, a body that stalls for `Site.body_timeout` is a 408, a
declared `Content-Length` over the site's limit a 413 before any of the body is read, and a
`Content-Encoding` other than identity a 415.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import resource
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from aiohttp import HttpVersion11, web
from aiohttp.hdrs import CONTENT_ENCODING, EXPECT

from adapters.http import aiohttp_internals, bodies
from adapters.http.routes import BODY_LIMIT, PATH_PARAMS, Handler, NoRoute, Route, Router
from bus import headers, log
from bus.credentials import ensure_secret_file
from bus.errors import BusError, Unauthorized
from bus.requester import Requester

ErrorRenderer = Callable[[int, str, Mapping[str, Any]], web.Response]   # status, message, details
REQUEST_ID_HEADER = "X-Request-Id"
INTERNAL_TOKEN_FILE = "internal.token"
DEFAULT_BODY_LIMIT = 1024 * 1024
DEFAULT_SITE_CONNECTIONS = 1024       # open connections per site
DEFAULT_TOTAL_CONNECTIONS = 4096      # per server (all its sites), at most half of RLIMIT_NOFILE
INTERNAL_RESERVE_SHARE = 0.25         # of the server's connections, only internal sites may use
DEFAULT_IDLE_TIMEOUT = 30.0           # s: keep-alive idle, and the deadline for a request's headers
DEFAULT_BODY_TIMEOUT = bodies.DEFAULT_BODY_TIMEOUT   # s without a byte of a body still arriving
TLS_HANDSHAKE_TIMEOUT = 10.0          # s
LINGERING_TIME = 2.0                  # s spent reading and discarding a refused body's rest
MAX_MESSAGE_CHARS = 300               # of a request's path or method quoted in an error
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
    max_connections: int = DEFAULT_SITE_CONNECTIONS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT


@dataclass
class SiteContext:
    """What a site's handlers use: the bus, and the site's bounded body readers."""

    requester: Requester
    site: Site
    token_digest: bytes | None = None

    def authorize(self, request: web.BaseRequest) -> None:
        """Demand `Authorization: Bearer <data-dir>/internal.token`, compared in constant time
        (the runner calls this before any route of an internal site, and before internal routes)."""
        if self.token_digest is None:
            raise Unauthorized("this internal endpoint has no internal credential to check")
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        # aiohttp keeps a header's non-UTF-8 bytes as surrogates: they encode back, and mismatch
        digest = hashlib.sha256(presented.strip().encode("utf-8", "surrogateescape")).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(digest, self.token_digest):
            raise Unauthorized("this is an internal endpoint: send `Authorization: Bearer <token>` "
                               "with the token from <data-dir>/internal.token")

    async def body(self, request: web.BaseRequest) -> bytes:
        """The request body, refused with 413 beyond its route's limit and 408 when it stalls."""
        return await bodies.read(request, request.get(BODY_LIMIT, self.site.body_limit), self.site.body_timeout)

    async def json(self, request: web.BaseRequest, expected: str) -> tuple[bytes, Any]:
        """The body as received and parsed as JSON (400 naming `expected` when it is not)."""
        raw = await self.body(request)
        return raw, bodies.parse_json(raw, expected)

    async def cbor(self, request: web.BaseRequest, expected: str) -> Any:
        """The body parsed as one CBOR item (400 naming `expected` when it is not)."""
        return bodies.parse_cbor(await self.body(request), expected)

    async def proceed(self, request: web.BaseRequest) -> None:
        """Invite the body of a route that answers `Expect: 100-continue` itself (`answers_expect`),
        once its checks have passed: a client learns of a refusal before it sends the body."""
        if EXPECT in request.headers:
            await _answer_expect(request)

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
            route, params = router.match(request.method, request.path)
            if site.internal or route.internal:
                context.authorize(request)
            if params:
                request[PATH_PARAMS] = params
            body_limit = site.body_limit
            if route.body_limit is not None:
                body_limit = request[BODY_LIMIT] = route.body_limit
            length = request.content_length
            if length is not None and length > body_limit:
                raise bodies.too_large(request, body_limit)     # before a byte of the body is read
            if CONTENT_ENCODING in request.headers:
                _identity_only(request)
            if EXPECT in request.headers and not route.answers_expect:
                await _answer_expect(request)
            response = await route.handler(request)
        except NoRoute as exc:
            _log.info("request failed", status=exc.status, error="no such route")
            response = _no_route(site, request, exc)
        except BusError as exc:
            level = _log.warning if exc.status >= 500 else _log.info
            level("request failed", status=exc.status, error=exc.message)
            response = _render(site, exc.status, exc.message, exc.details)
            if isinstance(exc, bodies.Unread):
                response.force_close()
        except web.HTTPException as exc:
            _log.info("request failed", status=exc.status, error=exc.reason)
            response = _render(site, exc.status, f"{exc.reason}: {request.method} {request.path}", {})
        except Exception:
            _log.exception("adapter failed")
            response = _render(site, 500, f"internal error (request id {request_id})", {})
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

    return handle


def _identity_only(request: web.BaseRequest) -> None:
    """Bodies travel uncompressed: any other Content-Encoding is a 415 (nothing is decompressed)."""
    encoding = request.headers[CONTENT_ENCODING].strip().lower()
    if encoding not in ("", "identity"):
        raise bodies.Unread(f"Content-Encoding {_printable(encoding, 40)!r} is not supported; send the body "
                            "uncompressed", status=415)


def _printable(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Request text fit to quote in an error: valid UTF-8 (aiohttp keeps stray bytes as surrogates,
    which JSON and CBOR encoders refuse), and short."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _render(site: Site, status: int, message: str, details: Mapping[str, Any]) -> web.StreamResponse:
    """The site's error shape; a message that quotes the request is made printable first."""
    try:
        return site.render_error(status, message, details)
    except (TypeError, ValueError):   # a stray surrogate the encoder refused (JSON, CBOR)
        return site.render_error(status, _printable(message), {})


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
    asked = _printable(f"{request.method} {request.path}")
    if exc.status == 404:
        return site.render_error(404, f"Not Found: {asked}", {})
    response = site.render_error(405, f"Method Not Allowed: {asked} (allowed: {', '.join(exc.allowed)})", {})
    response.headers["Allow"] = ", ".join(exc.allowed)
    return response


def total_connections(requested: int | None = None) -> int:
    """The connections one server may hold: `requested` (default 4096), and never more than half
    of the process's file descriptors, so that NATS, files and keeps always find one."""
    wanted = requested if requested is not None else DEFAULT_TOTAL_CONNECTIONS
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        wanted = min(wanted, soft // 2)
    return max(1, wanted)


def build_server(site: Site, requester: Requester, data_dir: Path,
                 budget: aiohttp_internals.ConnectionBudget | None = None) -> web.Server:
    """aiohttp's low-level server for one site: bodies bounded by the site's limit, connections by
    the site's cap and the server's `budget`, parser errors in the site's error shape."""
    context = SiteContext(requester, site, internal_token_digest(data_dir))
    if budget is None:
        budget = aiohttp_internals.ConnectionBudget(total_connections())
    caps = aiohttp_internals.ConnectionCaps(
        max_connections=site.max_connections, budget=budget, internal=site.internal,
        refusal=_refusal(site), idle_timeout=site.idle_timeout)

    def on_error(status: int, message: str, peer: Any) -> web.StreamResponse:
        request_id = log.new_request_id()
        level = _log.warning if status >= 500 else _log.info
        level("bad request refused" if status < 500 else "request failed", site=site.name, status=status,
              error=message, peer=peer, request_id=request_id)
        response = site.render_error(status, message, {})
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

    def on_fault(what: str, exc: BaseException | None) -> None:
        # one line, no traceback: aiohttp's exceptions quote request bytes
        _log.warning("http connection failed", site=site.name, what=what,
                     error=type(exc).__name__ if exc is not None else None)

    return aiohttp_internals.SiteServer(
        site_handler(site, context), request_factory=aiohttp_internals.request_factory(site.body_limit),
        caps=caps, on_error=on_error, on_fault=on_fault, access_log=None, auto_decompress=False,
        lingering_time=LINGERING_TIME)


def _refusal(site: Site) -> bytes:
    """The whole HTTP reply written to a connection over a cap: 503 in the site's shape, then close."""
    response = site.render_error(503, f"too many connections to {site.name}; retry shortly", {})
    body = response.body if isinstance(response.body, bytes) else b""
    own = "".join(f"{name}: {value}\r\n" for name, value in response.headers.items()   # the site's own, e.g.
                  if name.lower() not in ("content-type", "content-length", "connection"))   # Cache-Control
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {response.content_type}\r\n{own}"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + body


@dataclass
class HttpServer:
    """Serves a set of sites on `host`, internal ones on `internal_host` (loopback unless the operator
    says otherwise: they answer only to the internal credential, and need not face a network);
    `start` fails clearly when a port is taken. `max_connections` bounds the connections of all its
    sites together (see `total_connections`)."""

    host: str
    data_dir: Path
    max_connections: int | None = None
    internal_host: str = "127.0.0.1"
    _runners: list[web.ServerRunner] = field(default_factory=list)
    bound: dict[str, str] = field(default_factory=dict)
    budget: aiohttp_internals.ConnectionBudget | None = None

    async def start(self, sites: list[Site], requesters: dict[str, Requester]) -> None:
        if self.budget is None:
            total = total_connections(self.max_connections)
            self.budget = aiohttp_internals.ConnectionBudget(total, int(total * INTERNAL_RESERVE_SHARE))
        for site in sites:
            runner = web.ServerRunner(build_server(site, requesters[site.role], self.data_dir, self.budget),
                                      handle_signals=False)
            await runner.setup()
            host = self.internal_host if site.internal else self.host
            try:
                await aiohttp_internals.TCPSite(
                    runner, host, site.port, backlog=1024, ssl_context=site.tls,
                    ssl_handshake_timeout=min(TLS_HANDSHAKE_TIMEOUT, site.idle_timeout)).start()
            except OSError as exc:
                await runner.cleanup()
                await self.stop()
                raise OSError(f"cannot listen on {host}:{site.port} for {site.name}: {exc.strerror}; "
                              f"free the port or move the site with --port {site.name}=PORT") from None
            self._runners.append(runner)
            self.bound[site.name] = f"{'https' if site.tls else 'http'}://{host}:{site.port}"

    async def stop(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
