"""MesaTEE over HTTP: each service's JSON messages as `POST /` bodies on its documented port.

Errors (not specified by MesaTEE, whose TCP server just dropped the connection) are JSON:
`{"type": "Error", "status": <http status>, "message": "<what to do>"}`.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from adapters.http import routes
from adapters.http.runner import Site, SiteContext
from bus.errors import BadRequest
from components.mesatee import kms_messages, subjects

DEFAULT_PORTS = {"mesatee-kms": 6016}
JSON_BODY_LIMIT = 64 * 1024


def render_error(status: int, message: str) -> web.Response:
    return json_response({"type": "Error", "status": status, "message": message}, status=status)


def json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def parse_json(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON ({exc}); send one tagged request such as "
                         "{\"type\": \"Create\"}") from None


def kms_routes(context: SiteContext) -> list[routes.Route]:
    async def kms(request: web.BaseRequest) -> web.Response:
        context.authorize(request)
        body = await context.body(request)
        parsed = kms_messages.parse_request(parse_json(body))
        # the body is valid: it travels on as received (the component parses the same bytes)
        reply = await context.requester.request(subjects.kms(parsed.operation), body, encoded=True)
        return web.Response(body=reply.data, content_type="application/json")

    return [routes.post("/", kms)]


def sites(ports: dict[str, int]) -> list[Site]:
    """The MesaTEE sites built so far; `ports` overrides DEFAULT_PORTS by site name."""
    port = {**DEFAULT_PORTS, **ports}
    return [Site("mesatee-kms", port["mesatee-kms"], "gateway", kms_routes, render_error,
                 body_limit=JSON_BODY_LIMIT, internal=True)]
