"""Conclave over HTTP: the web host's three endpoints (8080) and the key derivation service (8090).

Web host (`conclave-host`), as Conclave's Spring controller answers (conclave-wire.md §9-10):
- `GET /attestation` -> the enclave's EnclaveInstanceInfo bytes (`application/octet-stream`).
- `POST /deliver-mail`, header `Correlation-ID` (the routing hint), body = one mail -> the enclave's
  synchronous reply mail, or an empty body when it posted none to this Correlation-ID.
- `POST /poll-mail`, header `Correlation-ID`, body ignored -> the oldest mail queued for it, or an
  empty body. Beyond Conclave: `Teebus-Poll-Wait: <seconds>` waits up to that long for mail to arrive
  (at most `long_poll_max_seconds`); without it a poll answers at once, as Conclave's host does.
Every response carries `Cache-Control: no-store,no-cache,must-revalidate`. Conclave's errors are 400
`{"error": "MAIL_DECRYPTION", "message": null}` and `{"error": "ENCLAVE_EXCEPTION", "message": ...}`
(message null in release mode); anything else is answered in Spring Boot's error shape,
`{"timestamp", "status", "error", "message"}` (a missing Correlation-ID is a 400 there, as Spring's
`@RequestHeader` makes it; failures that are not Conclave's are 503 as the seed says).

Key derivation service (`conclave-kds`, 8090), as Conclave's KDS REST API (its kds-rest-api.md):
- `PUT /public` (the docs' heading) and `POST /public` (their example and Conclave's client), body
  `{"name", "masterKeyType", "policyConstraint"}` -> `{"publicKey", "signature", "kdsAttestationReport"}`;
- `POST /private`, body `{"appAttestationReport", "name", "masterKeyType", "policyConstraint"}` ->
  `{"kdsAttestationReport", "encryptedPrivateKey"}`.
Every KDS request needs the header `API-VERSION: 1`. Its errors are Conclave's `{"reason": "..."}`: 400
for a malformed request, an unsupported API version or an enclave that does not meet the key's
policy, 404 when the master key type is not available here; the runner's own (413, 405, 503) take the
same shape. Bodies are JSON of at most 64 KiB, checked (components/conclave/kds_messages.py) before
they travel to `conclave.kds.public|private`; the reply's bytes are passed on unchanged.
"""

from __future__ import annotations

from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any, Mapping

import orjson
from aiohttp import web

from adapters.http import bodies, routes
from adapters.http.runner import Site, SiteContext
from bus import headers
from components.conclave import kds_messages, messages, subjects
from components.conclave.config import ConclaveConfig

HOST_SITE, KDS_SITE = "conclave-host", "conclave-kds"
KDS_BODY_LIMIT = 64 * 1024
API_VERSION_HEADER = "API-VERSION"
CACHE_CONTROL = {"Cache-Control": "no-store,no-cache,must-revalidate"}
CORRELATION_ID = "Correlation-ID"
POLL_WAIT = "Teebus-Poll-Wait"
DELIVER_TIMEOUT = 60.0      # an application's handling of one mail, with its queueing and sealing


def render_error(status: int, message: str, details: Mapping[str, Any]) -> web.Response:
    """Conclave's `{"error", "message"}` for its own two errors, Spring Boot's shape for the rest."""
    if details.get("conclave") == messages.MAIL_DECRYPTION:
        body: dict[str, Any] = {"error": messages.MAIL_DECRYPTION, "message": None}
    elif details.get("conclave") == messages.ENCLAVE_EXCEPTION:
        body = {"error": messages.ENCLAVE_EXCEPTION, "message": details.get("message")}
    else:
        if status >= 500 and status != 503:
            status = 503       # the seed: a failure that is not Conclave's is a 503
        body = {"timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "status": status, "error": _reason(status), "message": message}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json",
                        headers=CACHE_CONTROL)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def octets(body: bytes) -> web.Response:
    return web.Response(body=body, content_type=headers.OCTETS, headers=CACHE_CONTROL)


def host_routes(config: ConclaveConfig):
    enclave = config.enclave_name

    def site_routes(context: SiteContext) -> list[routes.Route]:
        bus = context.requester

        async def attestation(request: web.BaseRequest) -> web.Response:
            return octets((await bus.request(subjects.attestation(enclave), None)).data)

        async def deliver_mail(request: web.BaseRequest) -> web.Response:
            hint = messages.check_hint(request.headers.get(CORRELATION_ID))
            mail = await context.body(request)
            reply = await bus.request(subjects.deliver(enclave), mail, content_type=headers.OCTETS, encoded=True,
                                      extra_headers={messages.ROUTING_HINT: hint}, timeout=DELIVER_TIMEOUT)
            return octets(reply.data)

        async def poll_mail(request: web.BaseRequest) -> web.Response:
            hint = messages.check_hint(request.headers.get(CORRELATION_ID))
            wait = messages.check_wait(request.headers.get(POLL_WAIT), config.long_poll_max_seconds)
            extra = {messages.ROUTING_HINT: hint, **({messages.POLL_WAIT: repr(wait)} if wait else {})}
            reply = await bus.request(subjects.poll(enclave), b"", content_type=headers.OCTETS, encoded=True,
                                      extra_headers=extra, timeout=wait + 10.0)
            return octets(reply.data)

        return [routes.get("/attestation", attestation), routes.post("/deliver-mail", deliver_mail),
                routes.post("/poll-mail", poll_mail)]

    return site_routes


def render_kds_error(status: int, message: str, details: Mapping[str, Any]) -> web.Response:
    """Conclave's KDSErrorResponse: `{"reason": message}` (details have no place in it)."""
    return web.Response(body=orjson.dumps(kds_messages.error_body(message)), status=status,
                        content_type="application/json")


def _json_reply(data: bytes) -> web.Response:
    return web.Response(body=data, content_type="application/json")


def kds_routes(context: SiteContext) -> list[routes.Route]:
    """The KDS's routes for a site whose requester travels as `adapter` (both subjects are external)."""
    bus = context.requester

    async def read(request: web.BaseRequest, sample: str) -> tuple[int, Any]:
        version = kds_messages.api_version(request.headers.get(API_VERSION_HEADER))   # before the body is read
        return version, bodies.parse_json(await context.body(request), sample)

    async def public(request: web.BaseRequest) -> web.Response:
        version, body = await read(request, kds_messages.PUBLIC_SAMPLE)
        kds_messages.parse_public(body)
        return _json_reply((await bus.request(subjects.KDS_PUBLIC, kds_messages.bus_request(version, body))).data)

    async def private(request: web.BaseRequest) -> web.Response:
        version, body = await read(request, kds_messages.PRIVATE_SAMPLE)
        kds_messages.parse_private(body)
        return _json_reply((await bus.request(subjects.KDS_PRIVATE, kds_messages.bus_request(version, body))).data)

    return [routes.post("/public", public), routes.put("/public", public), routes.post("/private", private)]


def sites(ports: Mapping[str, int], config: ConclaveConfig | None = None) -> list[Site]:
    """The web host of the configured enclave, and the KDS."""
    config = config or ConclaveConfig()
    return [Site(HOST_SITE, ports[HOST_SITE], "adapter", host_routes(config), render_error,
                 body_limit=config.max_mail_bytes),
            kds_site(ports[KDS_SITE])]


def kds_site(port: int) -> Site:
    """The KDS's site; its requests travel as the `adapter` role (both subjects are external)."""
    return Site(KDS_SITE, port, "adapter", kds_routes, render_kds_error, body_limit=KDS_BODY_LIMIT)
