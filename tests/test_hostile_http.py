"""Hostile HTTP clients against the runner every site shares (adapters/http/runner.py; issue 9,
items 4-7): requests aiohttp's parser refuses, bodies that end early or stall, too many
connections, idle and slow clients, oversized and hostile bodies, on the MesaTEE KMS site (and a
probe site of the test's own). Each system's property-based suite is in tests/test_hostile_<system>.py,
with what they share in tests/hostile.py.

Raw requests go over plain sockets (aiohttp's client refuses to send most of them); every answer
must be a 4xx in the API's own error shape (MesaTEE's JSON `{"type": "Error", "status", "message"}`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import AsyncIterator, Callable

import aiohttp
import orjson
import pytest

from adapters.http import enarx as enarx_http
from adapters.http import mesatee as mesatee_http
from adapters.http import routes
from adapters.http.runner import HttpServer, Site, SiteContext
from bus.requester import Requester
from bus.server import free_port
from components.enarx import evidence
from components.mesatee.system import MANIFEST as mesatee_manifest
from tests.conftest import eventually, internal_token
from tests.hostile import (DEEP_JSON, HOST, Closed, Kms, Raw, assert_kms_error, assert_quiet_logs, captured_logs, kms,
                           malformed_requests, raw_exchange, read_response, request_bytes)

pytestmark = pytest.mark.timeout(300)
assert captured_logs and kms    # fixtures: imported by name, so that pytest finds them in this module


# -- items 4 and 7: aiohttp's parser errors, in the API's shape, logged in one line without secrets ------

def _cases(token: str) -> list[tuple[str, bytes, int]]:
    return [(name, data, status) for name, (data, status) in malformed_requests(token).items()]


async def test_malformed_requests_are_one_log_line_without_credentials_or_tracebacks(kms: Kms, captured_logs,
                                                                                     caplog, capfd):
    cases = _cases(kms.token)
    for name, data, status in cases:
        response = await raw_exchange(kms.port, data)
        body = assert_kms_error(response, status)
        assert kms.token not in response.body.decode("latin-1"), name
        assert "Traceback" not in body["message"], name
    await asyncio.sleep(0.2)   # let any late log line come
    structlog_lines = [orjson.loads(line) for line in captured_logs().splitlines()]
    std_lines = [record.getMessage() + (record.exc_text or "") for record in caplog.records]
    out, err = capfd.readouterr()
    everything = "\n".join([captured_logs(), *std_lines, out, err])
    assert kms.token not in everything
    assert "Traceback" not in everything
    assert not [record for record in caplog.records if record.name.startswith(("aiohttp", "asyncio"))]
    refusals = [line for line in structlog_lines if line["event"] in ("bad request refused", "request failed")]
    assert len(refusals) == len(cases), [line["event"] for line in structlog_lines]
    assert all(line["level"] == "info" for line in refusals)


async def test_a_body_that_ends_before_its_content_length_is_a_400_in_shape(kms: Kms, captured_logs, caplog):
    reader, writer = await asyncio.open_connection(HOST, kms.port)
    writer.write(request_bytes(body=b'{"type": "Cre', token=kms.token).replace(b"Content-Length: 13",
                                                                               b"Content-Length: 90"))
    await writer.drain()
    writer.write_eof()
    try:
        response = await read_response(reader, timeout=5)
    except Closed:
        response = None           # a half-closed client may also just be hung up on
    finally:
        writer.close()
    if response is not None:
        assert_kms_error(response, 400)
    await asyncio.sleep(0.2)
    assert_quiet_logs(captured_logs(), caplog, kms.token)
    assert "the client closed the connection" in captured_logs()


# -- item 5: connections bounded, idle and slow ones cut off, oversized bodies refused at once -----------

def probe_routes(context: SiteContext) -> list[routes.Route]:
    async def ping(request: aiohttp.web.BaseRequest) -> aiohttp.web.Response:
        return aiohttp.web.Response(body=b'{"pong": true}', content_type="application/json")

    return [routes.get("/ping", ping)]


@dataclasses.dataclass
class Limited:
    server: HttpServer
    kms_port: int
    probe_port: int
    token: str


@pytest.fixture
async def limited(start_node, connect_as, data_dir) -> AsyncIterator[Callable[..., Limited]]:
    """Factory: the KMS component with its HTTP site (internal) and an external probe site, served by
    an HttpServer of our own with the caps and timeouts given."""
    await start_node(["mesatee.kms"])
    requesters = {"gateway": Requester(await connect_as("gateway")), "adapter": Requester(await connect_as("adapter"))}
    servers: list[HttpServer] = []

    async def factory(kms: dict | None = None, probe: dict | None = None, total: int | None = None) -> Limited:
        kms_port, probe_port = free_port(), free_port()
        declared = mesatee_http.sites({**mesatee_manifest.ports, "mesatee-kms": kms_port})
        kms_site = dataclasses.replace(next(s for s in declared if s.name == "mesatee-kms"), **(kms or {}))
        probe_site = Site("probe", probe_port, "adapter", probe_routes, mesatee_http.render_error, **(probe or {}))
        server = HttpServer(HOST, data_dir, max_connections=total)
        await server.start([kms_site, probe_site], requesters)
        servers.append(server)
        return Limited(server, kms_port, probe_port, internal_token(data_dir))

    yield factory
    for server in servers:
        await server.stop()


PING = request_bytes("GET", "/ping")


async def admitted(port: int, data: bytes = PING) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that got an answer (so it holds its place), kept open."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(data)
    await writer.drain()
    response = await read_response(reader)
    assert response.status in (200, 401, 400), response
    return reader, writer


async def refused(port: int) -> Raw | None:
    """A connection over a cap: a 503 in the site's shape then the end, or (at worst) a reset."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        response = await read_response(reader, timeout=5)
        assert await asyncio.wait_for(reader.read(), 5) == b""     # and it is closed
        return response
    except Closed:
        return None
    finally:
        writer.close()


async def kms_create(port: int, token: str) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://{HOST}:{port}/", data=b'{"type": "Create"}',
                             headers={"Authorization": f"Bearer {token}"}) as response:
            await response.read()
            return response.status


async def test_connections_over_a_sites_cap_get_a_503_while_other_sites_serve(limited):
    served = await limited(probe={"max_connections": 4})
    held = [await admitted(served.probe_port) for _ in range(4)]
    for _ in range(6):
        response = await refused(served.probe_port)    # it sent nothing yet: it reads the 503, then the end
        assert response is not None
        assert_kms_error(response, 503)
        assert response.headers["connection"] == "close" and "too many connections" in response.body.decode()
    assert await kms_create(served.kms_port, served.token) == 200
    held.pop()[1].close()
    await eventually(lambda: _answers(served.probe_port), timeout=5)
    for _, writer in held:
        writer.close()


async def _answers(port: int) -> bool:
    try:
        return (await raw_exchange(port, PING, timeout=2)).status == 200
    except Closed:
        return False


async def test_the_servers_cap_keeps_a_reserve_that_only_internal_sites_use(limited):
    served = await limited(total=8)           # 2 of the 8 are reserved for internal sites
    assert served.server.budget.total == 8 and served.server.budget.reserve == 2
    held = [await admitted(served.probe_port) for _ in range(6)]
    assert (await refused(served.probe_port)).status == 503
    kms_request = request_bytes(body=b'{"type": "Create"}', token=served.token)
    held += [await admitted(served.kms_port, kms_request) for _ in range(2)]   # the internal site still serves
    assert (await refused(served.kms_port)).status == 503                       # until the total is reached
    for _, writer in held:
        writer.close()
    await eventually(lambda: _answers(served.probe_port), timeout=5)
    assert await kms_create(served.kms_port, served.token) == 200
    await eventually(lambda: served.server.budget.open == 0, timeout=5)   # every slot was given back


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    started = time.monotonic()
    try:
        assert await asyncio.wait_for(reader.read(), seconds) == b""
    except ConnectionResetError:
        pass
    return time.monotonic() - started


async def test_idle_connections_and_slow_headers_are_cut_off(limited):
    served = await limited(kms={"idle_timeout": 0.5})
    # a connection that never sends a byte
    reader, writer = await asyncio.open_connection(HOST, served.kms_port)
    assert await _closed_within(reader, 5) < 3
    writer.close()
    # a keep-alive connection, idle after its request
    reader, writer = await admitted(served.kms_port, request_bytes(body=b'{"type": "Create"}', token=served.token))
    assert await _closed_within(reader, 5) < 3
    writer.close()
    # a client that sends its headers a few bytes at a time
    reader, writer = await asyncio.open_connection(HOST, served.kms_port)
    started = time.monotonic()
    closed = asyncio.ensure_future(reader.read())
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\n")
    try:
        for i in range(100):
            if closed.done():
                break
            writer.write(f"X-Slow-{i}: a\r\n".encode())
            await writer.drain()
            await asyncio.sleep(0.05)
    except ConnectionError:
        pass
    assert await asyncio.wait_for(closed, 5) == b""
    assert time.monotonic() - started < 3       # cut off, not after the 5 s it would take
    writer.close()
    assert await kms_create(served.kms_port, served.token) == 200


async def test_a_declared_body_over_the_limit_is_a_413_before_the_body_is_read(kms: Kms):
    too_big = request_bytes(body=b"", token=kms.token).replace(b"Content-Length: 0", b"Content-Length: 1000000000")
    started = time.monotonic()
    response = await raw_exchange(kms.port, too_big, timeout=3)
    assert_kms_error(response, 413)
    assert time.monotonic() - started < 2 and response.headers["connection"] == "close"
    assert "1000000000" in orjson.loads(response.body)["message"]
    # with Expect: 100-continue the client is told at once, and never invited to send the body
    expecting = too_big.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")
    reader, writer = await asyncio.open_connection(HOST, kms.port)
    writer.write(expecting)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert head.startswith(b"HTTP/1.1 413 ")
    writer.close()


async def test_a_stalled_body_is_a_408_and_the_connection_closes(limited):
    served = await limited(kms={"body_timeout": 0.5})
    reader, writer = await asyncio.open_connection(HOST, served.kms_port)
    writer.write(request_bytes(body=b"x" * 100, token=served.token)[:-90])   # 10 of its 100 bytes
    await writer.drain()
    started = time.monotonic()
    response = await read_response(reader, timeout=5)
    assert_kms_error(response, 408)
    assert time.monotonic() - started < 3 and "stalled" in orjson.loads(response.body)["message"]
    assert await _closed_within(reader, 5) < 3
    writer.close()


async def test_a_tls_client_that_never_completes_the_handshake_is_cut_off(connect_as, data_dir):
    kuuid = str(uuid.uuid4())
    identity = evidence.new_identity(kuuid, HOST)
    site = dataclasses.replace(enarx_http.wasmldr_site(kuuid, free_port(), identity.key_pem, identity.certificate_pem,
                                                       1024, 1.0), idle_timeout=0.5)
    server = HttpServer(HOST, data_dir)
    await server.start([site], {"keepldr": Requester(await connect_as("adapter"))})
    try:
        reader, writer = await asyncio.open_connection(HOST, site.port)
        writer.write(b"\x16\x03\x01")             # the start of a ClientHello, and no more
        assert await _closed_within(reader, 5) < 3
        writer.close()
    finally:
        await server.stop()


def test_the_servers_cap_stays_below_half_the_file_descriptors():
    import resource

    from adapters.http.runner import total_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert total_connections(10 ** 9) <= soft // 2
    assert total_connections(8) == min(8, soft // 2)


# -- item 6: hostile bodies are 4xx in the API's shape ------------------------------------------------

async def test_hostile_kms_inputs_are_4xx_in_its_shape(kms: Kms):
    auth = {"Authorization": f"Bearer {kms.token}"}
    async with aiohttp.ClientSession() as http:
        for body, extra, status in [
            (DEEP_JSON, {}, 400),
            (b'{"type":' + b"[" * 1023 + b"]" * 1023 + b"}", {}, 400),
            (b'{"type":' + b"{\"a\":" * 900 + b"1" + b"}" * 900 + b"}", {}, 400),
            (b"[" * 60000, {}, 400),
            (b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}, 415),
            (b"garbage", {"Content-Encoding": "br"}, 415),
            (b"garbage", {"Content-Encoding": "zstd"}, 415),
            (b'{"type": "Create"}', {"Content-Encoding": "gzip, identity"}, 415),
            (b'{"type": {"Create": 1}}', {}, 400),
            (b'{"type": "Get", "key_id": ["x"]}', {}, 400),
        ]:
            async with http.post(kms.url + "/", data=body, headers={**auth, **extra}) as response:
                assert response.status == status, (body[:40], response.status, await response.read())
                error = orjson.loads(await response.read())
                assert error["type"] == "Error" and error["status"] == status
    non_utf8 = (b"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nContent-Length: 18\r\n\r\n"
                b'{"type": "Create"}')
    assert_kms_error(await raw_exchange(kms.port, non_utf8), 401)

