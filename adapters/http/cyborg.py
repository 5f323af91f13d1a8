"""Cyborg over HTTP: the seed's internal REST calls, JSON, on the host's agent and driver ports.

- `cyborg-agent` (6667): `POST /hello` (a driver registers; internal), `POST /discovery` (every
  driver rediscovers; internal), `GET /hardware` (every driver's devices on this host).
- one site per built-in driver of the host's configuration, `cyborg-pci` (6670), `cyborg-nvidia`
  (6671), `cyborg-inventory` (6672): `POST /discovery` (internal), `GET /hardware`.
- `cyborg-conductor` (6666): `POST /hello` (an agent registers; internal): the seed's body,
  `{"status": "READY", "endpoint": "compute-whatever:1337"}`, optionally with `host` (else the
  endpoint's host part). The seed prints it with a trailing comma (`..."compute-whatever:1337",}`);
  this route accepts trailing commas before `}` and `]`, and nothing else lax. Answer:
  `{"status": "REGISTERED", "host", "lease_seconds", "heartbeat_seconds", "revision"}`.
  `GET /hardware[?host=&device_type=&health=&since=]`: every host's hardware (the seed's entries,
  with `teebus.stale`, `teebus.revision`, `teebus.history`) and the inventory's `revision`; with
  `since` (a revision an earlier answer gave) only what changed after it, and `removed`. A `since`
  older than what the conductor remembers is a 410: re-read without `since`. `GET /agents`: every
  agent, READY or LOST, with its last report and its lease.

"Internal" routes demand the internal credential (`Authorization: Bearer <data-dir>/internal.token`);
their sites travel as the `gateway` role, the one that may reach internal subjects. Each site serves
the host of the configuration it is given (`cyborg.host`). Bodies are JSON objects of at most
64 KiB, validated here before they reach the bus. `POST /discovery` takes an empty body or `{}` and
answers `{"status": "IN-PROGRESS"}` at once.

Errors (the seed names none), on every Cyborg site (`render_error`):
`{"error": {"status": <http status>, "message": "<what to do>"}}`, plus `"details"` when the
component gave some.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import orjson
from aiohttp import web

from adapters.http import bodies, routes
from adapters.http.runner import Site, SiteContext
from bus.errors import BadRequest
from components.cyborg import conductor_messages, subjects
from components.cyborg.agent_messages import HELLO_SAMPLE, parse_hello
from components.cyborg.config import CyborgConfig

BODY_LIMIT = 64 * 1024
CONDUCTOR_SITE = "cyborg-conductor"
HELLO_BODY_LIMIT = 4 * 1024
HARDWARE_TIMEOUT = 30.0           # a whole inventory (100 000 devices) may take a moment to encode
AGENT_SITE = "cyborg-agent"
DISCOVERY_SAMPLE = "an empty body or {}"


def render_error(status: int, message: str, details: Mapping[str, Any]) -> web.Response:
    """Every Cyborg site's error: `{"error": {"status", "message"[, "details"]}}`."""
    error: dict[str, Any] = {"status": status, "message": message}
    if details:
        error["details"] = dict(details)
    return json_response({"error": error}, status=status)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def parse_lenient_json(raw: bytes, expected: str) -> Any:
    """JSON, also with the seed's trailing commas (`{"a": 1,}`); otherwise as strict as
    bodies.parse_json, whose 400 names `expected`."""
    try:
        return bodies.parse_json(raw, expected)
    except BadRequest as strict:
        relaxed = _without_trailing_commas(raw)
        if relaxed == raw:
            raise
        try:
            return bodies.parse_json(relaxed, expected)
        except BadRequest:
            raise strict from None


def _without_trailing_commas(raw: bytes) -> bytes:
    """`raw` with every comma that is followed (after whitespace) by `}` or `]` dropped, outside strings."""
    out = bytearray()
    in_string = escaped = False
    for index, byte in enumerate(raw):
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:                            # a backslash escapes the next byte
                escaped = True
            elif byte == 0x22:                            # the closing quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte == 0x2C:                                # a comma: dropped if only space precedes a closer
            rest = raw[index + 1:].lstrip()
            if rest[:1] in (b"}", b"]"):
                continue
        out.append(byte)
    return bytes(out)


def driver_site(driver: str) -> str:
    return f"cyborg-{driver}"


def _reply(data: bytes) -> web.Response:
    return web.Response(body=data, content_type="application/json")


async def _empty_body(context: SiteContext, request: web.BaseRequest) -> None:
    """`POST /discovery` carries nothing: an empty body or `{}`."""
    raw = await context.body(request)
    if raw.strip() and bodies.parse_json(raw, DISCOVERY_SAMPLE) != {}:
        raise BadRequest(f"discovery takes {DISCOVERY_SAMPLE}")


def _discovery(context: SiteContext, subject: str) -> routes.Handler:
    async def discovery(request: web.BaseRequest) -> web.Response:
        await _empty_body(context, request)
        return _reply((await context.requester.request(subject, {})).data)

    return discovery


def _hardware(context: SiteContext, subject: str) -> routes.Handler:
    async def hardware(request: web.BaseRequest) -> web.Response:
        return _reply((await context.requester.request(subject, None)).data)

    return hardware


def agent_routes(host: str) -> Callable[[SiteContext], list[routes.Route]]:
    def site_routes(context: SiteContext) -> list[routes.Route]:
        async def hello(request: web.BaseRequest) -> web.Response:
            body, parsed = await context.json(request, HELLO_SAMPLE)
            parse_hello(parsed)
            return _reply((await context.requester.request(subjects.agent_hello(host), body, encoded=True)).data)

        return [routes.post("/hello", hello, internal=True),
                routes.post("/discovery", _discovery(context, subjects.agent_discovery(host)), internal=True),
                routes.get("/hardware", _hardware(context, subjects.agent_hardware(host)))]

    return site_routes


def driver_routes(host: str, driver: str) -> Callable[[SiteContext], list[routes.Route]]:
    def site_routes(context: SiteContext) -> list[routes.Route]:
        return [routes.post("/discovery", _discovery(context, subjects.driver_discovery(host, driver)), internal=True),
                routes.get("/hardware", _hardware(context, subjects.driver_hardware(host, driver)))]

    return site_routes


def conductor_routes(context: SiteContext) -> list[routes.Route]:
    bus = context.requester

    async def hello(request: web.BaseRequest) -> web.Response:
        parsed = parse_lenient_json(await context.body(request), conductor_messages.HELLO_SAMPLE)
        registration = conductor_messages.parse_hello(parsed)
        reply = await bus.request(subjects.CONDUCTOR_HELLO, {
            "status": conductor_messages.READY, "endpoint": registration.endpoint, "host": registration.host})
        return web.Response(body=reply.data, content_type="application/json")

    async def hardware(request: web.BaseRequest) -> web.Response:
        query = conductor_messages.query_from_params(request.query)
        reply = await bus.request(subjects.CONDUCTOR_HARDWARE, query.to_dict(), timeout=HARDWARE_TIMEOUT)
        return web.Response(body=reply.data, content_type="application/json")

    async def agents(request: web.BaseRequest) -> web.Response:
        if request.query:
            raise BadRequest(f"GET /agents takes no query parameters, not {', '.join(sorted(request.query))[:100]}")
        reply = await bus.request(subjects.CONDUCTOR_AGENTS, {})
        return web.Response(body=reply.data, content_type="application/json")

    return [routes.Route("POST", "/hello", hello, internal=True, body_limit=HELLO_BODY_LIMIT),
            routes.get("/hardware", hardware),
            routes.get("/agents", agents)]


def sites(ports: Mapping[str, int], config: CyborgConfig | None = None) -> list[Site]:
    """The conductor's site, this host's agent's and one per built-in driver of `config`: every
    site travels as `gateway` (their internal routes ask internal subjects)."""
    config = config or CyborgConfig()
    host = config.host
    built = [Site(AGENT_SITE, ports[AGENT_SITE], "gateway", agent_routes(host), render_error, body_limit=BODY_LIMIT)]
    built += [Site(driver_site(driver), ports[driver_site(driver)], "gateway", driver_routes(host, driver),
                   render_error, body_limit=BODY_LIMIT) for driver in config.drivers]
    built.append(Site(CONDUCTOR_SITE, ports[CONDUCTOR_SITE], "gateway", conductor_routes, render_error))
    return built

