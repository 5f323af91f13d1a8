"""MesaTEE over HTTP: each service's JSON messages as `POST /` bodies on its documented port.

Errors (not specified by MesaTEE, whose TCP server just dropped the connection) are JSON:
`{"type": "Error", "status": <http status>, "message": "<what to do>"}`, plus any details the
component gave.
"""

from __future__ import annotations

from typing import Any, Mapping

import orjson
from aiohttp import web

from adapters.http import routes
from adapters.http.runner import Site, SiteContext
from components.mesatee import kms_messages, subjects

JSON_BODY_LIMIT = 64 * 1024
KMS_SITE = "mesatee-kms"
KMS_SAMPLE = 'one tagged request such as {"type": "Create"}'


def render_error(status: int, message: str, details: Mapping[str, Any]) -> web.Response:
    return json_response({**details, "type": "Error", "status": status, "message": message}, status=status)


def json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def kms_routes(context: SiteContext) -> list[routes.Route]:
    async def kms(request: web.BaseRequest) -> web.Response:
        body, parsed = await context.json(request, KMS_SAMPLE)
        operation = kms_messages.parse_request(parsed).operation
        # the body is valid: it travels on as received (the component parses the same bytes)
        reply = await context.requester.request(subjects.kms(operation), body, encoded=True)
        return web.Response(body=reply.data, content_type="application/json")

    return [routes.post("/", kms)]


def sites(ports: Mapping[str, int]) -> list[Site]:
    """The MesaTEE sites built so far, on the deployment's ports (components/mesatee/system.py)."""
    return [Site(KMS_SITE, ports[KMS_SITE], "gateway", kms_routes, render_error,
                 body_limit=JSON_BODY_LIMIT, internal=True)]
