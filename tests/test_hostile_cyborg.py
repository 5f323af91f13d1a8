"""Hostile clients against Cyborg's sites (adapters/http/cyborg.py, docs/cyborg.md), in the manner of
the other tests/test_hostile_*.py, with the helpers they share (tests/hostile.py).

One host runs whole, as `teebus run` starts it, on a nats-server of this module's own (the buckets
are then this module's alone, and what the suites store is all there is to look at): the conductor,
the agent, the three built-in drivers (pci on a sysfs tree laid out as the kernel lays it out,
nvidia without NVML, inventory from a file) and the HTTP adapter's five sites:

- `cyborg-conductor` (6666): `POST /hello` (internal): the seed's body, leniently (trailing commas),
  with hosts and endpoints right, odd and wrong; `GET /hardware` with every filter and `since`, odd,
  repeated and unknown parameters; `GET /agents`, with and without a query;
- `cyborg-agent` (6667): `POST /hello` (internal): built-in and external drivers' registrations,
  right and wrong; `POST /discovery` (internal) with the bodies it takes and others; `GET /hardware`;
- `cyborg-pci`, `cyborg-nvidia`, `cyborg-inventory` (6670-6672): `POST /discovery` (internal),
  `GET /hardware`;

each with the internal token, a wrong one (another case, one character short or more, another
scheme) and none, and random requests (any method, path, header and body, one in five over a raw
socket). Every answer: below 500 (the docs name no 5xx here), with a request id, JSON; an error is
`{"error": {"status", "message"[, "details"]}}` with the answer's status; a success has the fields
its route documents; an internal route asked without the right token is a 401, whatever else is
wrong; focused requests whose verdict is known get it (a valid registration 200, a malformed one 400).

Afterwards nothing a refused request sent is stored: every agent record (`cyborg_agents`,
`cyborg_leases`) and driver registration (`cyborg_drivers`) that appeared or changed, and every
`registered` event, belongs to a registration that was answered 200; each stored record still parses.
The host still works: its agent READY at the conductor, its devices there and Healthy. Each refusal
left one log line (per component it reached), no line is a warning but background work no request
caused (an external driver that never answers, a registered agent that never renews its lease), no
traceback, and no line holds the internal token. The parser's own refusals (aiohttp's) answer in
Cyborg's shape on every site.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from typing import Any, AsyncIterator, Callable
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from hypothesis import strategies as st
from nats.js.errors import NoKeysError

from bus.testing import TestBus, running_bus
from components.cyborg import agent_messages, conductor_messages
from components.cyborg.agent import BUCKET as DRIVERS_BUCKET
from components.cyborg.agent import key_token
from components.cyborg.conductor import AGENTS, LEASES, agent_key
from components.cyborg.hardware import HEALTHY, device_uuid
from teebus.catalog import Catalog
from teebus.launcher import Node
from teebus.testing import settings_for
from tests.conftest import eventually, internal_token
from tests.hostile import (MIN_REQUESTS, Answer, Hostile, Raw, assert_one_line_per_refusal, assert_quiet_logs,
                           captured_logs, choose, common_bodies, focused_requests, hostile_requests, json_bytes,
                           json_values, lines_with, malformed_requests, mostly, no_answers_are_rare, perturbed, rarely,
                           random_paths, raw_exchange, recording, run_in_thread, send, target)
from tests.test_cyborg_discovery import add_function

pytestmark = pytest.mark.timeout(300)
assert captured_logs            # a fixture: imported by name, so that pytest finds it in this module

HOST = "hostile-h1"
DRIVERS = ("pci", "nvidia", "inventory")
CONDUCTOR, AGENT = "cyborg-conductor", "cyborg-agent"
DRIVER_SITES = [f"cyborg-{driver}" for driver in DRIVERS]
NAMES = ["cyborg.conductor", "cyborg.agent", *(f"cyborg.{driver}" for driver in DRIVERS), "http.cyborg"]
SETTINGS = {"host": HOST, "drivers": list(DRIVERS), "driver_timeout_seconds": 0.5, "discovery_timeout_seconds": 2.0}
GPU, FPGA = "0000:3b:00.0", "0000:5e:00.0"
INVENTORY = '[[device]]\nkey = "smartnic"\ndevice_type = "NIC"\nvendor = "mellanox"\nproduct = "bf3"\n'
HELLO_LIMIT = 4 * 1024                 # adapters/http/cyborg.py HELLO_BODY_LIMIT: the conductor's POST /hello
BODY_LIMIT = 64 * 1024                 # the other Cyborg routes'
# The seed's conductor `POST /hello` body, as printed there (trailing comma included).
SEED_HELLO = b'{\n   "status":"READY",\n   "endpoint":"compute-whatever:1337",\n}'
# Warnings of work no request caused: an external driver registered here never answers (its
# endpoint is closed), an agent registered here never renews its lease.
BACKGROUND = ("driver is silent", "agent lost: its lease lapsed")
ERROR_KEYS = {"status", "message", "details"}
AGENT_KEYS = {"host", "endpoint", "status", "registered", "last_report", "last_heartbeat", "lease_expires", "lost_at",
              "devices"}
ENTRY_KEYS = {"uuid", "acc_specs", "acc_status", "teebus"}


# -- one host, whole -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Cyborg:
    bus: TestBus
    node: Node
    admin: Any
    token: str
    events: list[tuple[str, dict[str, Any]]]

    def url(self, site: str) -> str:
        return self.node.http.bound[site]

    def port(self, site: str) -> int:
        return int(self.url(site).rsplit(":", 1)[1])

    async def get(self, site: str, path: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            async with http.get(self.url(site) + path) as response:
                body = await response.json()
                assert response.status == 200, body
                return body

    async def settled(self) -> bool:
        """This host's agent READY at the conductor, with its three devices there and Healthy."""
        agents = {agent["host"]: agent for agent in (await self.get(CONDUCTOR, "/agents"))["agents"]}
        entries = {entry["uuid"]: entry for entry in (await self.get(CONDUCTOR, f"/hardware?host={HOST}"))["hardware"]}
        return (agents.get(HOST, {}).get("status") == "READY" and set(DEVICES) <= set(entries)
                and all(entries[uuid]["teebus"]["health"] == HEALTHY for uuid in DEVICES))


DEVICES = {device_uuid(HOST, GPU): "GPU", device_uuid(HOST, FPGA): "FPGA", device_uuid(HOST, "smartnic"): "NIC"}


@pytest.fixture(scope="module")
async def cyborg(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> AsyncIterator[Cyborg]:
    root = tmp_path_factory.mktemp("hostile-cyborg")
    sysfs = root / "sys"
    add_function(sysfs, GPU, pci_class="0x030200", vendor="0x10de", device="0x2330", driver="nvidia")
    add_function(sysfs, FPGA, pci_class="0x120000", vendor="0x10ee", device="0x5000", driver="xclmgmt")
    (root / "inventory.toml").write_text(INVENTORY)
    document = {"cyborg": {**SETTINGS, "sysfs_root": str(sysfs), "inventory_file": str(root / "inventory.toml")}}
    async with running_bus(root / "data", catalog.systems) as bus:
        async with bus.scope() as scope:
            admin = await scope.connect("admin")
            events: list[tuple[str, dict[str, Any]]] = []

            async def keep(msg) -> None:
                events.append((msg.subject, orjson.loads(msg.data)))

            await admin.subscribe("events.cyborg.>", cb=keep)
            await admin.flush()
            node = Node(settings_for(bus, catalog, document), NAMES, catalog)
            await node.start()
            try:
                deployment = Cyborg(bus, node, admin, internal_token(bus.data_dir), events)
                await eventually(deployment.settled, timeout=20)
                yield deployment
            finally:
                await asyncio.wait_for(node.stop(), 30)


# -- what is sent ----------------------------------------------------------------------------------------

@dataclasses.dataclass(repr=False)
class Case(Hostile):
    """A focused request, and the statuses it may get when it reaches its handler untouched (see
    `reachable`) with the right token (empty: whatever the handler says, in shape)."""

    expect: frozenset = frozenset()


def wrong_tokens(token: str) -> list[str]:
    """Authorization values that are not the internal credential."""
    return ["", "Bearer", "Bearer ", f"Bearer {token.upper()}", f"Bearer {token[:-1]}", f"Bearer {token}x",
            f"Basic {token}", f"Bearer  {token[1:]}", token, f"Bearer {token.encode().hex()}", "Bearer null"]


NO_QUERY = st.just(("", frozenset()))


def focused(method: str, paths: list[str], bodies: st.SearchStrategy[tuple[bytes, frozenset]],
            authorization: st.SearchStrategy[str | None],
            query: st.SearchStrategy[tuple[str, frozenset]] = NO_QUERY) -> st.SearchStrategy[Case]:
    """The route's method and path; `bodies` draw (bytes, expected statuses), `query` (a query string,
    expected statuses: they decide when there is one); the special headers of tests/hostile.py but
    Authorization, which `authorization` gives (None: none), and but a Content-Encoding or Expect the
    runner refuses before the handler but one time in ten."""
    def build(request: Hostile, body: tuple[bytes, frozenset], auth: str | None, params: tuple[str, frozenset],
              odd: bool) -> Case:
        headers = {name: value for name, value in request.headers.items()
                   if odd or name not in ("Content-Encoding", "Expect")}
        if auth is not None:
            headers["Authorization"] = auth
        expect = params[1] if params[0] else body[1]
        return Case(request.method, request.path + params[0], headers, body[0], request.chunked, expect=expect)

    return st.builds(build, focused_requests(method, paths, {}, st.just(b"")), bodies, authorization, query,
                     rarely())


def authorizations(token: str, right: bool) -> st.SearchStrategy[str | None]:
    """The internal credential (`right`), or a wrong one, or none."""
    if right:
        return st.sampled_from([f"Bearer {token}", f"bearer {token}", f"Bearer {token} ", f"BEARER {token}"])
    return mostly(wrong_tokens(token), [None], 2)


# conductor POST /hello -----------------------------------------------------------------------------------

HELLO_HOSTS = [f"hostile-{n}" for n in range(6)] + ["HOSTILE-0", "a.b.example", "x" * 253, "\u00e9-host", "h_1",
                                                    "[v6]", "a/b", "a*b", "a>b", "_INBOX.x", "$JS", HOST]
ODD_HOSTS = ["", " ", "a b", "x" * 254, "a\x00b", "a\tb", "a\nb", "\x7f", 7, None, [], {}, True, ["h"], "h\u2028"]
PORTS = ["1", "1337", "6667", "65535"]
ODD_ENDPOINTS = ["", " ", "h", "h:", ":1", "h:0", "h:65536", "h:-1", "h:1:2", "h: 1", "h:1 ", "h:\u0661", "h:0x10",
                 "[::1]", "[::1]:", "[::1", "::1:1", "http://h:1", "h" * 262 + ":1", "x" * 258 + ":1", "a b:1",
                 "h:99999999999999999999", 7, None, [], {"endpoint": "h:1"}]


def conductor_hello(host: Any, endpoint: Any, status: Any = "READY", with_host: bool = True) -> dict[str, Any]:
    body = {"status": status, "endpoint": endpoint}
    return {**body, "host": host} if with_host else body


def hello_valid(host: str, port: str, with_host: bool) -> bool:
    """Whether the conductor takes a hello for `host` with endpoint `<host>:<port>` (docs/cyborg.md)."""
    endpoint = f"{host}:{port}"
    try:
        conductor_messages.parse_hello(conductor_hello(host, endpoint, with_host=with_host))
    except Exception:
        return False
    return True


def lenient(body: dict[str, Any], how: str) -> bytes:
    """The body encoded as the seed prints it, or as a sloppy client does: trailing commas (taken),
    and what stays refused (two commas, a leading one, a comma in an array, bytes after)."""
    data = json.dumps(body, ensure_ascii=False).encode()
    if how == "strict" or not data.endswith(b"}") or len(data) < 3:
        return data
    inner = data[1:-1]
    return {"seed": b"{\n   " + inner.replace(b", ", b",\n   ") + b",\n}", "trailing": b"{" + inner + b",}",
            "spaced": b"{" + inner + b" , \t\n }", "two commas": b"{" + inner + b",,}", "leading": b"{," + inner + b"}",
            "tail": data + b" x"}[how]


TAKEN = ("strict", "strict", "seed", "trailing", "spaced")
REFUSED = ("two commas", "leading", "tail")


def conductor_hellos() -> st.SearchStrategy[tuple[bytes, frozenset]]:
    """(body, expected statuses): valid hellos (of a few hosts, so that few agents come to be)
    encoded leniently; hellos with one odd field; perturbed and random ones (no expectation)."""
    def valid(host: str, port: str, with_host: bool, how: str) -> tuple[bytes, frozenset]:
        body = lenient(conductor_hello(host, f"{host}:{port}", with_host=with_host), how)
        ok = hello_valid(host, port, with_host) and how in TAKEN
        return body, frozenset({200} if ok else {400})

    def odd(field: str, value: Any, how: str) -> tuple[bytes, frozenset]:
        body = conductor_hello("hostile-0", "hostile-0:1")
        body[field] = value
        try:
            conductor_messages.parse_hello(body)
            expected = frozenset({200}) if how in TAKEN else frozenset({400})
        except Exception:
            expected = frozenset({400})
        return lenient(body, how), expected

    hows = mostly(list(TAKEN), list(REFUSED))
    unknown = st.builds(lambda body: (json_dumps(body), frozenset()),
                        perturbed(st.builds(conductor_hello, st.sampled_from(HELLO_HOSTS),
                                            st.sampled_from(HELLO_HOSTS).map(lambda h: f"{h}:1"))))
    return choose(
        st.builds(valid, st.sampled_from(HELLO_HOSTS), st.sampled_from(PORTS), st.booleans(), hows),
        st.builds(valid, st.sampled_from(HELLO_HOSTS), st.sampled_from(PORTS), st.booleans(), hows),
        st.builds(odd, st.just("host"), st.sampled_from(ODD_HOSTS), hows),
        st.builds(odd, st.just("endpoint"), st.sampled_from(ODD_ENDPOINTS), hows),
        st.builds(odd, st.just("status"), st.sampled_from(["ready", "LOST", "REGISTERED", "", " READY", None, 1]),
                  hows),
        unknown,
        common_bodies.map(lambda body: (body, frozenset())))


def json_dumps(body: Any) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body).encode()


# conductor GET /hardware, GET /agents ---------------------------------------------------------------------

QUERY_VALUES = {
    "host": (mostly([HOST, HOST.upper(), "hostile-0", "nobody"], ["", "%00", "a%20b", "x" * 254, "%ff", "a%0Ab",
                                                                  "%E2%80%AE"]), True),
    "device_type": (mostly(["GPU", "gpu", "FPGA", "NIC", "QAT"], ["", "1GPU", "G-P-U", "x" * 33, "%ff", "GPU%00"]),
                    True),
    "health": (mostly(["Healthy", "healthy", "UNHEALTHY"], ["", "sick", "Healthy%20"]), True),
    "since": (mostly(["0", "1", "2", "5", "0000"], ["-1", "abc", "9" * 19, "9" * 20, "1.5", "%201", "%2B1",
                                                    "%EF%BC%90", "%D9%A1", "", "0x1"]), True),
}


def hardware_queries() -> st.SearchStrategy[tuple[str, frozenset]]:
    """(query string, expected statuses) of `GET /hardware`: each filter present or not, valid or
    odd; now and then a parameter twice or an unknown one."""
    def build(chosen: list[tuple[str, str]], twice: bool, unknown: str | None) -> tuple[str, frozenset]:
        params = list(chosen)
        if twice and params:
            params.append(params[0])
        if unknown is not None:
            params.append((unknown, "1"))
        query = "&".join(f"{name}={value}" for name, value in params)
        names = [name for name, _ in params]
        valid = unknown is None and len(names) == len(set(names)) and all(_valid_param(n, v) for n, v in params)
        if not valid:
            expected = frozenset({400}) if _surely_invalid(params, unknown) else frozenset()
        elif "since" in names:
            expected = frozenset({200, 410})      # a since ahead of the inventory is a 410
        else:
            expected = frozenset({200})
        return ("?" + query if query else ""), expected

    pairs = [st.tuples(st.just(name), values).map(lambda pair: [pair]) | st.just([])
             for name, (values, _) in QUERY_VALUES.items()]
    chosen = st.tuples(*pairs).map(lambda parts: [pair for part in parts for pair in part])
    unknown = mostly([None], ["x", "hosts", "Host", "since ", "%68ost", "revision", ""], 6)
    return st.builds(build, chosen, mostly([False], [True], 9), unknown)


def _valid_param(name: str, value: str) -> bool:
    """Only values whose fate is plain: ASCII without escapes, judged by the conductor's own parser."""
    if "%" in value or not value.isascii():
        return False
    try:
        conductor_messages.parse_hardware_query({name: value})
    except Exception:
        return False
    return True


def _surely_invalid(params: list[tuple[str, str]], unknown: str | None) -> bool:
    names = [name for name, _ in params]
    if unknown is not None and "%" not in unknown and unknown not in conductor_messages.QUERY_KEYS:
        return True
    if len(names) != len(set(names)):
        return True
    return any("%" not in name + value and value.isascii() and not _valid_param(name, value)
               for name, value in params)


def agents_queries() -> st.SearchStrategy[tuple[str, frozenset]]:
    return mostly([("", frozenset({200}))], [("?x=1", frozenset({400})), ("?host=" + HOST, frozenset({400})),
                                             ("?", frozenset({200})), ("?%ff=1", frozenset({400}))], 2)


# agent POST /hello, POST /discovery ---------------------------------------------------------------------

EXTERNAL = ["127.0.0.1:9", "localhost:1337", "http://127.0.0.1:9/driver", "https://127.0.0.1:9", "[::1]:9"]
ODD_DRIVER_ENDPOINTS = ["", "bus ", "BUS", "ftp://127.0.0.1:9", "http://u:p@127.0.0.1:9", "127.0.0.1",
                        "http://127.0.0.1:9/?q=1", "http://127.0.0.1:9/#f", "a" * 257, "127.0.0.1:9 x", "http://:9",
                        "unix:///tmp/x", "http://127.0.0.1:9\x00", 7, None, ["bus"]]
TYPES = ["CRYPTO", "GPU", "GPU,FPGA", "AICHIP"]
ODD_TYPES = ["", "a b", "x" * 33, "GPU,", ",", "GPU,,FPGA", "G\u00dcU", 7, None]
DRIVER_IDS = [None, "ext-a", "my-driver", "x" * 32]
ODD_DRIVER_IDS = ["PCI", "-x", "x" * 33, "", "a.b", "a b", 7, "pci", "nvidia", "inventory"]


def agent_hello(endpoint: Any, kind: Any, driver: Any) -> dict[str, Any]:
    body = {"status": "READY", "endpoint": endpoint, "type": kind}
    return body if driver is None else {**body, "driver": driver}


def agent_hello_verdict(body: dict[str, Any]) -> frozenset:
    """What the agent answers: 200 for a registration it takes (413 once it holds 64 drivers), 400
    for one it does not (a built-in driver's name with an external endpoint among them)."""
    try:
        agent_messages.parse_hello(body)
    except Exception:
        return frozenset({400})
    return frozenset({200, 413})


def agent_hellos() -> st.SearchStrategy[tuple[bytes, frozenset]]:
    def build(body: dict[str, Any], encoding: str) -> tuple[bytes, frozenset]:
        data = json_dumps(body)
        if encoding == "trailing comma":         # lenient only at the conductor
            return data[:-1] + b",}", frozenset({400})
        return data, agent_hello_verdict(body)

    builtin = st.builds(agent_hello, st.just("bus"), st.sampled_from([d.upper() for d in DRIVERS] + TYPES),
                        st.sampled_from(DRIVERS))
    external = st.builds(agent_hello, st.sampled_from(EXTERNAL), st.sampled_from(TYPES), st.sampled_from(DRIVER_IDS))
    odd = st.builds(agent_hello, mostly(EXTERNAL + ["bus"], ODD_DRIVER_ENDPOINTS, 1),
                    mostly(TYPES, ODD_TYPES, 1), mostly(DRIVER_IDS, ODD_DRIVER_IDS, 1))
    encoding = mostly(["json"], ["trailing comma"], 9)
    return choose(st.builds(build, builtin, encoding), st.builds(build, external, encoding),
                  st.builds(build, external, encoding), st.builds(build, odd, encoding),
                  st.builds(build, odd, encoding),
                  perturbed(external | builtin).map(lambda body: (json_dumps(body), frozenset())),
                  json_bytes(st.sampled_from([{"status": "READY"}, {}, {"status": "READY", "endpoint": "bus"}]),
                             b', "status": "LOST"}').map(lambda data: (data, frozenset())),
                  common_bodies.map(lambda body: (body, frozenset())))


DISCOVERY_TAKEN = [b"", b"{}", b" {} ", b"\n", b"{ }", b"\t\r\n"]
DISCOVERY_REFUSED = [b"[]", b"null", b'{"a": 1}', b"{},", b"{", b"0", b'""', b"{}{}", b"{} x", b"\xff", b"[{}]",
                     b'{"status": "IN-PROGRESS"}']


def discovery_bodies() -> st.SearchStrategy[tuple[bytes, frozenset]]:
    return choose(st.sampled_from(DISCOVERY_TAKEN).map(lambda body: (body, frozenset({200}))),
                  st.sampled_from(DISCOVERY_TAKEN).map(lambda body: (body, frozenset({200}))),
                  st.sampled_from(DISCOVERY_REFUSED).map(lambda body: (body, frozenset({400}))),
                  json_values.map(lambda value: (json_dumps(value), frozenset({200} if value == {} else {400}))),
                  common_bodies.map(lambda body: (body, frozenset())))


def reads() -> st.SearchStrategy[tuple[bytes, frozenset]]:
    """A GET's body: none, or one it ignores."""
    return mostly([(b"", frozenset({200}))], [(b"{}", frozenset({200})), (b"x" * 100, frozenset({200}))], 6)


# -- what comes back -------------------------------------------------------------------------------------

def authorized(request: Hostile, token: str) -> bool | None:
    """Whether the request carries the internal credential (None: cannot tell: sent raw, or twice)."""
    if request.raw is not None:
        return None
    given = [value for name, value in request.headers.items() if name.lower() == "authorization"]
    if len(given) > 1:
        return None
    scheme, _, presented = given[0].partition(" ") if given else ("", "", "")
    return scheme.lower() == "bearer" and presented.strip() == token


def plain(request: Hostile) -> bool:
    """Sent through aiohttp's client with nothing the runner refuses before the handler: no
    Content-Encoding but identity, no Expect but 100-continue."""
    if request.raw is not None:
        return False
    lower = {name.lower(): value for name, value in request.headers.items()}
    if lower.get("content-encoding", "").strip().lower() not in ("", "identity"):
        return False
    return lower.get("expect", "100-continue").lower() == "100-continue"


INTERNAL_ROUTES = {CONDUCTOR: {("POST", "/hello")}, AGENT: {("POST", "/hello"), ("POST", "/discovery")},
                   **{site: {("POST", "/discovery")} for site in DRIVER_SITES}}


@dataclasses.dataclass
class Outcome:
    """What a site's suite saw: statuses by shape, and what the 200s registered."""

    shapes: Counter = dataclasses.field(default_factory=Counter)
    hosts: set[str] = dataclasses.field(default_factory=set)          # conductor hellos answered 200
    drivers: set[str] = dataclasses.field(default_factory=set)        # agent hellos answered 200


def checker(site: str, token: str, seen: Outcome) -> Callable[[Hostile, Answer], None]:
    internal = INTERNAL_ROUTES[site]
    limit = HELLO_LIMIT if site == CONDUCTOR else BODY_LIMIT

    def check(request: Hostile, answer: Answer) -> None:
        method, path = target(request)
        assert answer.status < 500, ("a 5xx", request, answer)
        assert answer.request_id, (request, answer)
        if (method, path) in internal and authorized(request, token) is False:
            assert answer.status == 401, ("an internal route answered without the internal token", request, answer)
        if method == "HEAD" or answer.status == 204:
            seen.shapes[f"{answer.status} (HEAD)"] += 1
            return
        assert answer.content_type == "application/json", (request, answer)
        body = orjson.loads(answer.body)
        assert isinstance(body, dict), (request, answer)
        if answer.status >= 400:
            assert set(body) == {"error"} and isinstance(body["error"], dict), (request, answer)
            error = body["error"]
            assert {"status", "message"} <= set(error) <= ERROR_KEYS, (request, answer)
            assert error["status"] == answer.status, (request, answer)
            assert isinstance(error["message"], str) and error["message"].strip(), (request, answer)
            assert isinstance(error.get("details", {}), dict), (request, answer)
            seen.shapes[f"{answer.status} error"] += 1
        else:
            assert answer.status == 200, (request, answer)
            seen.shapes[f"200 {success(site, body, request, answer, seen)}"] += 1
        if isinstance(request, Case) and request.expect and plain(request) and len(request.body) <= limit and (
                (method, path) not in internal or authorized(request, token)):
            assert answer.status in request.expect, (f"expected {sorted(request.expect)}", request, answer)

    return check


def success(site: str, body: dict[str, Any], request: Hostile, answer: Answer, seen: Outcome) -> str:
    """A 200's body is one of the site's documented successes: which (registrations noted)."""
    if set(body) == {"status"}:
        assert body["status"] == "IN-PROGRESS" and site != CONDUCTOR, (request, answer)
        return "discovery"
    if "hardware" in body:
        assert isinstance(body["hardware"], list), (request, answer)
        for entry in body["hardware"]:
            assert set(entry) == ENTRY_KEYS and entry["teebus"]["host"] == HOST, ("a device of another host", request,
                                                                                 answer)
        if site == CONDUCTOR:
            assert {"hardware", "revision"} <= set(body) <= {"hardware", "revision", "removed"}, (request, answer)
        elif site == AGENT:
            assert set(body) == {"hardware", "drivers", "discovered_at", "in_progress"}, (request, answer)
        else:
            assert set(body) == {"hardware", "discovered_at", "in_progress", "problem"}, (request, answer)
        return "hardware"
    if "agents" in body:
        assert site == CONDUCTOR and set(body) == {"agents"}, (request, answer)
        assert all(set(agent) == AGENT_KEYS for agent in body["agents"]), (request, answer)
        return "agents"
    assert body.get("status") == "REGISTERED", (request, answer)
    if site == CONDUCTOR:
        assert set(body) == {"status", "host", "lease_seconds", "heartbeat_seconds", "revision"}, (request, answer)
        seen.hosts.add(body["host"])
    else:
        assert site == AGENT and set(body) == {"status", "driver"}, (request, answer)
        seen.drivers.add(body["driver"])
    return "registered"


# -- what is stored --------------------------------------------------------------------------------------

async def stored(cyborg: Cyborg, bucket: str) -> dict[str, Any]:
    kv = await cyborg.admin.jetstream().key_value(bucket)
    try:
        keys = await kv.keys()
    except NoKeysError:
        return {}
    values = {}
    for key in keys:
        entry = await kv.get(key)
        values[key] = orjson.loads(entry.value) if entry.value else None
    return values


async def snapshot(cyborg: Cyborg) -> dict[str, dict[str, Any]]:
    return {bucket: await stored(cyborg, bucket) for bucket in (AGENTS, LEASES, DRIVERS_BUCKET)}


def assert_nothing_refused_stored(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]],
                                  events: list[tuple[str, dict[str, Any]]], seen: Outcome, own: tuple[str, str]
                                  ) -> None:
    """Every agent record or lease that appeared, or whose endpoint changed (but this host's agent
    saying hello again with its own), is of a host a 200 hello named; every driver registration that
    appeared or changed, of a driver a 200 hello named; so is every `registered` event; and what is
    stored parses."""
    hosts = {agent_key(host) for host in seen.hosts}
    for bucket in (AGENTS, LEASES):
        new = set(after[bucket]) - set(before[bucket])
        assert new <= hosts, (f"{bucket}: records of hellos refused", sorted(new - hosts)[:5])
    changed = {key for key, record in after[AGENTS].items() if key in before[AGENTS]
               and record["endpoint"] != before[AGENTS][key]["endpoint"] and (key, record["endpoint"]) != own}
    assert changed <= hosts, ("agents whose endpoint a refused hello changed", sorted(changed - hosts)[:5])
    for record in after[AGENTS].values():
        assert record["status"] in ("READY", "LOST"), record
        conductor_messages.parse_hello({"status": "READY", "endpoint": record["endpoint"], "host": record["host"]})
    prefix = key_token(HOST) + "."
    drivers = {prefix + driver for driver in seen.drivers}
    touched = {key for key, value in after[DRIVERS_BUCKET].items() if before[DRIVERS_BUCKET].get(key) != value}
    assert touched <= drivers, ("driver registrations a refused hello stored", sorted(touched - drivers)[:5])
    for value in after[DRIVERS_BUCKET].values():
        agent_messages.Hello.from_dict(value)
    registered = {body["host"] for subject, body in events if subject == "events.cyborg.agent.registered"}
    assert {agent_key(host) for host in registered} <= hosts | set(before[AGENTS]), registered
    announced = {body["driver"] for subject, body in events if subject == "events.cyborg.driver.registered"}
    assert announced <= seen.drivers, announced - seen.drivers


# -- the suite --------------------------------------------------------------------------------------------

def error_message(body: bytes) -> str:
    return orjson.loads(body)["error"]["message"]


async def run_cyborg_suite(cyborg: Cyborg, site: str, strategy, explicit: list[Hostile], captured_logs,
                           caplog) -> Outcome:
    seen, answers = Outcome(), []
    before, events_before = await snapshot(cyborg), len(cyborg.events)
    url, port = cyborg.url(site), cyborg.port(site)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        tally = await run_in_thread(f"Cyborg {site} ({port})", MIN_REQUESTS, strategy,
                                    lambda request: send(http, url, port, request),
                                    recording(checker(site, cyborg.token, seen), answers), tuple(explicit))
    print(f"answers by shape: {dict(sorted(seen.shapes.items()))}; registered: {len(seen.hosts)} hosts, "
          f"{len(seen.drivers)} drivers")
    assert tally["requests"] >= MIN_REQUESTS and not [s for s in tally if isinstance(s, int) and s >= 500], tally
    no_answers_are_rare(tally)
    await asyncio.sleep(0.3)                  # late log lines and events come too
    assert_nothing_refused_stored(before, await snapshot(cyborg), cyborg.events[events_before:], seen,
                                  (agent_key(HOST), f"{HOST}:{cyborg.port(AGENT)}"))
    await eventually(cyborg.settled, timeout=10)          # and the host still works
    logs = captured_logs()
    assert_quiet_logs(logs, caplog)
    lines = assert_one_line_per_refusal(logs, answers, error_message, BACKGROUND)
    print(f"refusal lines per refused request (server-made ids): {dict(sorted(lines.items()))}")
    leaks = lines_with(logs, cyborg.token)
    assert not leaks, "the internal token in the logs (replaced here by <the credential>):\n" + "\n".join(leaks)
    return seen


def random_requests(cyborg: Cyborg, paths: list[str], bodies: st.SearchStrategy[bytes]) -> list:
    """Random requests to the site's paths, with the internal token now and then, and without."""
    return [hostile_requests(random_paths(paths), cyborg.token, bodies | common_bodies),
            hostile_requests(random_paths(paths), None, bodies | common_bodies)]


def as_case(method: str, path: str, body: bytes, expect: set[int], headers: dict[str, str] | None = None) -> Case:
    return Case(method, path, {"Content-Type": "application/json", **(headers or {})}, body, expect=frozenset(expect))


async def test_hostile_suite_against_the_cyborg_conductor(cyborg: Cyborg, captured_logs, caplog):
    token = cyborg.token
    right, wrong = authorizations(token, True), authorizations(token, False)
    hellos, hardware = conductor_hellos(), hardware_queries()
    strategy = choose(
        focused("POST", ["/hello"], hellos, right), focused("POST", ["/hello"], hellos, right),
        focused("POST", ["/hello"], hellos, wrong),
        focused("GET", ["/hardware"], reads(), right | wrong | st.none(), hardware),
        focused("GET", ["/hardware"], reads(), right | wrong | st.none(), hardware),
        focused("GET", ["/agents"], reads(), right | wrong | st.none(), agents_queries()),
        *random_requests(cyborg, ["/hello", "/hardware", "/agents", "/hardware?since=0"],
                         conductor_hellos().map(lambda pair: pair[0])))
    auth = {"Authorization": f"Bearer {token}"}
    explicit = [as_case("POST", "/hello", SEED_HELLO, {200}, auth), as_case("POST", "/hello", SEED_HELLO, {401}),
                as_case("POST", "/hello", SEED_HELLO, {401}, {"Authorization": f"Bearer {token.upper()}"}),
                as_case("POST", "/hello", SEED_HELLO.replace(b",\n}", b",,\n}"), {400}, auth),
                as_case("POST", "/hello", b"{" * 2000, {400}, auth),
                as_case("POST", "/hello", b'{"status": "READY", "endpoint": "h:1", "host": "' + b"x" * 4100 + b'"}',
                        {413}, auth),
                as_case("POST", "/hello", b'{"status": "READY", "endpoint": "h:1", "x": "' + b"," * 4000 + b'"}',
                        {400}, auth),
                as_case("POST", "/hello", b"[" + b"1," * 2000 + b"]", {400}, auth)]
    for field, values in (("host", ODD_HOSTS), ("endpoint", ODD_ENDPOINTS)):
        for value in values:
            body = conductor_hello("hostile-0", "hostile-0:1")
            body[field] = value
            explicit.append(as_case("POST", "/hello", json_dumps(body), set(), auth))
    for how in (*TAKEN, *REFUSED):
        explicit.append(as_case("POST", "/hello", lenient(conductor_hello("hostile-1", "hostile-1:1"), how),
                                {200} if how in TAKEN else {400}, auth))
    for name, (values, _) in QUERY_VALUES.items():
        for value in ["", "%ff", "x" * 300, "a&b", "%00"]:
            explicit.append(as_case("GET", f"/hardware?{name}={value}", b"", set()))
    explicit += [as_case("GET", "/hardware?since=0&since=0", b"", {400}), as_case("GET", "/agents?x", b"", {400}),
                 as_case("GET", "/hardware?" + "&".join(f"p{n}=1" for n in range(300)), b"", {400}),
                 as_case("GET", "/hardware?since=" + quote("\u0661"), b"", {400})]
    seen = await run_cyborg_suite(cyborg, CONDUCTOR, strategy, explicit, captured_logs, caplog)
    assert seen.shapes["200 registered"] and seen.shapes["200 hardware"] and seen.shapes["200 agents"], seen.shapes
    assert seen.shapes["401 error"] and seen.shapes["400 error"], seen.shapes


async def test_hostile_suite_against_the_cyborg_agent(cyborg: Cyborg, captured_logs, caplog):
    token = cyborg.token
    right, wrong = authorizations(token, True), authorizations(token, False)
    hellos, discoveries = agent_hellos(), discovery_bodies()
    strategy = choose(
        focused("POST", ["/hello"], hellos, right), focused("POST", ["/hello"], hellos, right),
        focused("POST", ["/hello"], hellos, wrong),
        focused("POST", ["/discovery"], discoveries, right), focused("POST", ["/discovery"], discoveries, wrong),
        focused("GET", ["/hardware"], reads(), right | wrong),
        *random_requests(cyborg, ["/hello", "/discovery", "/hardware"], hellos.map(lambda pair: pair[0])))
    auth = {"Authorization": f"Bearer {token}"}
    seed = b'{"status": "READY", "endpoint": "localhost:1337", "type": "CRYPTO"}'
    explicit = [as_case("POST", "/hello", seed, {200}, auth), as_case("POST", "/hello", seed, {401}),
                as_case("POST", "/hello", seed, {401}, {"Authorization": f"Basic {token}"}),
                as_case("POST", "/hello", json_dumps(agent_hello("bus", "GPU", "pci")), {200}, auth),
                as_case("POST", "/hello", json_dumps(agent_hello("127.0.0.1:9", "GPU", "pci")), {400}, auth),
                as_case("POST", "/hello", json_dumps(agent_hello("bus", "GPU", None)), {400}, auth),
                as_case("POST", "/hello", seed[:-1] + b",}", {400}, auth),
                as_case("POST", "/hello", b'{"status": "READY", "endpoint": "bus", "type": "' + b"G" * 70_000 + b'"}',
                        {413}, auth)]
    for endpoint in ODD_DRIVER_ENDPOINTS:
        explicit.append(as_case("POST", "/hello", json_dumps(agent_hello(endpoint, "GPU", None)), {400}, auth))
    for kind in ODD_TYPES:
        explicit.append(as_case("POST", "/hello", json_dumps(agent_hello("127.0.0.1:9", kind, None)), {400}, auth))
    for driver in ODD_DRIVER_IDS:
        body = agent_hello("127.0.0.1:9", "GPU", driver)
        explicit.append(as_case("POST", "/hello", json_dumps(body), set(agent_hello_verdict(body)), auth))
    for body in DISCOVERY_TAKEN + DISCOVERY_REFUSED:
        explicit.append(as_case("POST", "/discovery", body, {200} if body in DISCOVERY_TAKEN else {400}, auth))
        explicit.append(as_case("POST", "/discovery", body, {401}))
    seen = await run_cyborg_suite(cyborg, AGENT, strategy, explicit, captured_logs, caplog)
    assert seen.shapes["200 registered"] and seen.shapes["200 discovery"] and seen.shapes["200 hardware"], seen.shapes
    hardware = await cyborg.get(AGENT, "/hardware")
    assert {state["driver"] for state in hardware["drivers"]} <= set(DRIVERS) | seen.drivers, hardware["drivers"]


@pytest.mark.parametrize("driver", DRIVERS)
async def test_hostile_suite_against_a_cyborg_driver(cyborg: Cyborg, driver: str, captured_logs, caplog):
    token = cyborg.token
    right, wrong = authorizations(token, True), authorizations(token, False)
    discoveries = discovery_bodies()
    strategy = choose(
        focused("POST", ["/discovery"], discoveries, right), focused("POST", ["/discovery"], discoveries, right),
        focused("POST", ["/discovery"], discoveries, wrong),
        focused("GET", ["/hardware"], reads(), right | wrong), focused("GET", ["/hardware"], reads(), st.none()),
        *random_requests(cyborg, ["/discovery", "/hardware"], discoveries.map(lambda pair: pair[0])))
    auth = {"Authorization": f"Bearer {token}"}
    explicit = []
    for body in DISCOVERY_TAKEN + DISCOVERY_REFUSED:
        explicit.append(as_case("POST", "/discovery", body, {200} if body in DISCOVERY_TAKEN else {400}, auth))
        explicit.append(as_case("POST", "/discovery", body, {401}, {"Authorization": f"Bearer {token}x"}))
    explicit += [as_case("POST", "/discovery", b"{}" + b" " * (BODY_LIMIT + 1), {413}, auth),
                 as_case("POST", "/hello", b"{}", {404}, auth), as_case("GET", "/discovery", b"", {405}, auth),
                 as_case("GET", "/hardware?anything=1", b"", {200})]
    seen = await run_cyborg_suite(cyborg, f"cyborg-{driver}", strategy, explicit, captured_logs, caplog)
    assert seen.shapes["200 discovery"] and seen.shapes["200 hardware"], seen.shapes


# -- aiohttp's parser errors, in Cyborg's shape ---------------------------------------------------------

async def test_parser_errors_answer_in_cyborgs_shape_on_every_site(cyborg: Cyborg, captured_logs):
    wrong = {}
    for site in (CONDUCTOR, AGENT, *DRIVER_SITES):
        path = "/hello" if site in (CONDUCTOR, AGENT) else "/discovery"
        for name, (data, status) in malformed_requests(cyborg.token, path).items():
            response = await raw_exchange(cyborg.port(site), data)
            try:
                assert_cyborg_error(response, status)
                assert cyborg.token not in response.body.decode("latin-1")
            except AssertionError as exc:
                wrong[f"{site}: {name}"] = str(exc)[:300]
    assert not wrong, wrong
    await asyncio.sleep(0.2)
    assert cyborg.token not in captured_logs() and "Traceback" not in captured_logs()


def assert_cyborg_error(response: Raw, status: int) -> None:
    assert response.status == status, (response.status, response.body[:300])
    assert response.content_type == "application/json", response.head
    body = orjson.loads(response.body)
    assert set(body) == {"error"} and body["error"]["status"] == status, body
    assert isinstance(body["error"]["message"], str) and len(body["error"]["message"]) > 10, body


def test_the_strategies_expect_what_the_docs_say():
    """The oracles above, on the docs' own examples (a guard against an oracle that says yes to all)."""
    assert hello_valid("compute-whatever", "1337", False) and not hello_valid("a b", "1", True)
    assert not hello_valid("hostile-0", "0", True) and hello_valid("x" * 253, "1", True)
    assert lenient({"a": 1}, "seed") == b'{\n   "a": 1,\n}' and lenient({"a": 1}, "trailing") == b'{"a": 1,}'
    assert agent_hello_verdict({"status": "READY", "endpoint": "localhost:1337", "type": "CRYPTO"}) == {200, 413}
    assert agent_hello_verdict(agent_hello("bus", "GPU", None)) == {400}
    assert agent_hello_verdict(agent_hello("127.0.0.1:9", "GPU", "pci")) == {400}
    assert _valid_param("since", "0") and not _valid_param("since", "-1") and not _valid_param("host", "%00")
    assert _surely_invalid([("since", "-1")], None) and _surely_invalid([], "x")
    assert not _surely_invalid([("%68ost", "1")], "%68ost")        # ?%68ost=1 is ?host=1
