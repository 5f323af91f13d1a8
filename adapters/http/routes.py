"""A site's routes: method + path (with `{name}` segments) -> handler, resolved without a framework.

The runner serves each site with aiohttp's low-level server and resolves routes here: an exact
path is one dict lookup, a templated one a regex. Measured on this machine, aiohttp's Application
(router, match info, middleware chain) cost 11-12 µs of CPU per request on top of this. A path
matches with or without one trailing slash (`/keep/x/` is `/keep/x`), so routes are registered once.
A route may forward instead of handling: `forward("POST", "/keep/{kuuid}", subject_of)` sends the body
as it is to the subject built from the path and answers with the reply's bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Awaitable, Callable, Mapping

from bus import headers

from aiohttp import web

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
PATH_PARAMS = web.RequestKey("teebus_path_params", dict)  # where a request keeps its `{name}` segments
BODY_LIMIT = web.RequestKey("teebus_body_limit", int)     # its route's own body limit, when it has one
_SEGMENT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Forward:
    """Where a forwarding route sends the body: the subject from the path parameters, and how."""

    subject: Callable[[Mapping[str, str]], str]
    content_type: str = headers.OCTETS
    reply_type: str | None = None      # the reply's Content-Type over HTTP (default: as on the bus)
    timeout: float | None = None


@dataclass(frozen=True)
class Route:
    method: str
    path: str          # e.g. "/keep/{kuuid}": a {name} matches one non-empty path segment
    handler: Handler | None
    forward: Forward | None = None
    # This route's own bound on bodies, instead of its site's. `SiteContext.body` may read whole
    # bodies only up to the site's limit: a route allowing more streams `request.content` itself.
    body_limit: int | None = None
    # The handler answers `Expect: 100-continue` itself, after its checks (`SiteContext.proceed`),
    # instead of the runner inviting every body at once (an upload refused on its headers).
    answers_expect: bool = False
    internal: bool = False             # the internal credential on this route, on a site open to others


def get(path: str, handler: Handler, *, internal: bool = False) -> Route:
    return Route("GET", path, handler, internal=internal)


def post(path: str, handler: Handler, *, internal: bool = False, body_limit: int | None = None) -> Route:
    return Route("POST", path, handler, internal=internal, body_limit=body_limit)


def delete(path: str, handler: Handler) -> Route:
    return Route("DELETE", path, handler)


def put(path: str, handler: Handler, *, body_limit: int | None = None, answers_expect: bool = False) -> Route:
    return Route("PUT", path, handler, body_limit=body_limit, answers_expect=answers_expect)


def forward(method: str, path: str, subject: Callable[[Mapping[str, str]], str], *,
            content_type: str = headers.OCTETS, reply_type: str | None = None,
            timeout: float | None = None) -> Route:
    """A route that passes the body on to `subject(path parameters)` unread, as `content_type`."""
    return Route(method, path, None, Forward(subject, content_type, reply_type, timeout))


def _without_slash(path: str) -> str:
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


def path_param(request: web.BaseRequest, name: str) -> str | None:
    """The value of `{name}` in the matched route's path (None when the route has no such part)."""
    return request.get(PATH_PARAMS, {}).get(name)


class NoRoute(Exception):
    """No route serves this request: `status` is 404 (no such path) or 405 (not with this method)."""

    def __init__(self, status: int, allowed: tuple[str, ...] = ()) -> None:
        super().__init__(status)
        self.status = status
        self.allowed = allowed


class Router:
    def __init__(self, routes: list[Route]) -> None:
        self._exact: dict[str, dict[str, Route]] = {}
        self._templates: list[tuple[re.Pattern[str], dict[str, Route]]] = []
        templates: dict[str, dict[str, Route]] = {}
        for route in routes:
            if route.handler is None:
                raise ValueError(f"route {route.method} {route.path} has no handler (the runner binds "
                                 "forwarding routes)")
            path = _without_slash(route.path)
            methods = templates.setdefault(path, {}) if _SEGMENT.search(path) else self._exact.setdefault(path, {})
            methods[route.method] = route
            if route.method == "GET":
                methods.setdefault("HEAD", route)
        self._templates = [(_compile(path), methods) for path, methods in templates.items()]

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """The handler and path parameters for a request; NoRoute when there is none."""
        route, params = self.match(method, path)
        return route.handler, params

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route and path parameters for a request; NoRoute when there is none."""
        methods, params = self._exact.get(path), {}
        if methods is None and path.endswith("/"):
            path = _without_slash(path)
            methods = self._exact.get(path)
        if methods is None:
            for pattern, candidates in self._templates:
                match = pattern.fullmatch(path)
                if match:
                    methods, params = candidates, match.groupdict()
                    break
            else:
                raise NoRoute(404)
        route = methods.get(method)
        if route is None:
            raise NoRoute(405, tuple(methods))
        return route, params


def _compile(template: str) -> re.Pattern[str]:
    parts = _SEGMENT.split(template)  # literal, name, literal, name, ..., literal
    return re.compile("".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)"
                              for i, part in enumerate(parts)))
