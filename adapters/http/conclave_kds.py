"""Conclave's KDS over HTTP (docs/kds-rest-api.md), on its own site `conclave-kds` (port 8090):

- `PUT /public` (the docs' heading) and `POST /public` (their example and Conclave's client), body
  `{"name", "masterKeyType", "policyConstraint"}` -> `{"publicKey", "signature", "kdsAttestationReport"}`;
- `POST /private`, body `{"appAttestationReport", "name", "masterKeyType", "policyConstraint"}` ->
  `{"kdsAttestationReport", "encryptedPrivateKey"}`.

Every request needs the header `API-VERSION: 1`. Errors are Conclave's `{"reason": "..."}`: 400 for a
malformed request, an unsupported API version or an enclave that does not meet the key's policy, 404
when the master key type is not available here; the runner's own (413 body too large, 405, 503
overload) take the same shape. Bodies are JSON of at most 64 KiB, checked here
(components/conclave/kds_messages.py) before they travel to `conclave.kds.public|private`; the
reply's bytes are passed on unchanged.
"""

from __future__ import annotations

from typing import Any, Mapping

import orjson
from aiohttp import web

from adapters.http import bodies, routes
from adapters.http.runner import Site, SiteContext
from components.conclave import kds_messages as messages
from components.conclave import subjects

KDS_SITE = "conclave-kds"
BODY_LIMIT = 64 * 1024
API_VERSION_HEADER = "API-VERSION"


def render_kds_error(status: int, message: str, details: Mapping[str, Any]) -> web.Response:
    """Conclave's KDSErrorResponse: `{"reason": message}` (details have no place in it)."""
    return web.Response(body=orjson.dumps(messages.error_body(message)), status=status,
                        content_type="application/json")


def _reply(data: bytes) -> web.Response:
    return web.Response(body=data, content_type="application/json")


def kds_routes(context: SiteContext) -> list[routes.Route]:
    """The KDS's routes for a site whose requester travels as `adapter` (both subjects are external)."""
    bus = context.requester

    async def read(request: web.BaseRequest, sample: str) -> tuple[int, Any]:
        version = messages.api_version(request.headers.get(API_VERSION_HEADER))   # before the body is read
        return version, bodies.parse_json(await context.body(request), sample)

    async def public(request: web.BaseRequest) -> web.Response:
        version, body = await read(request, messages.PUBLIC_SAMPLE)
        messages.parse_public(body)
        return _reply((await bus.request(subjects.KDS_PUBLIC, messages.bus_request(version, body))).data)

    async def private(request: web.BaseRequest) -> web.Response:
        version, body = await read(request, messages.PRIVATE_SAMPLE)
        messages.parse_private(body)
        return _reply((await bus.request(subjects.KDS_PRIVATE, messages.bus_request(version, body))).data)

    return [routes.post("/public", public), routes.put("/public", public), routes.post("/private", private)]


def kds_site(port: int) -> Site:
    """The KDS's site; its requests travel as the `adapter` role."""
    return Site(KDS_SITE, port, "adapter", kds_routes, render_kds_error, body_limit=BODY_LIMIT)
