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
"""

from __future__ import annotations

from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any, Mapping

import orjson
from aiohttp import web

from adapters.http import routes
from adapters.http.runner import Site, SiteContext
from bus import headers
from components.conclave import messages, subjects
from components.conclave.config import ConclaveConfig

HOST_SITE, KDS_SITE = "conclave-host", "conclave-kds"
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


def sites(ports: Mapping[str, int], config: ConclaveConfig | None = None) -> list[Site]:
    """The web host of the configured enclave, and the KDS."""
    config = config or ConclaveConfig()
    from adapters.http.conclave_kds import kds_site      # merged here once the KDS lands
    return [Site(HOST_SITE, ports[HOST_SITE], "adapter", host_routes(config), render_error,
                 body_limit=config.max_mail_bytes),
            kds_site(ports[KDS_SITE])]
