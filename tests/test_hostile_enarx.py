"""Hostile clients against Enarx's sites (adapters/http/enarx.py; issue 9, items 6-8): aiohttp's
parser errors in the keep manager's CBOR shape, hostile CBOR and two items in one body (nothing
created), and the property-based suite against the keep manager (3030) and a Ready keep's wasmldr
(HTTPS with the keep's certificate). Every answer: below 500, CBOR, an error a LocalCborErr
`{"details"}`; no keep is created by a generated request. What the suites share is in tests/hostile.py.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import AsyncIterator

import aiohttp
import cbor2
import pytest
from hypothesis import strategies as st

from bus.server import free_port
from components.enarx.client import EnarxClient, kuuid_text
from teebus.launcher import Node
from teebus.testing import settings_for
from tests.hostile import (HOST, MIN_REQUESTS, Answer, Hostile, Raw, assert_quiet_logs, captured_logs, cbor_values,
                           choose,
                           common_bodies, focused_requests, hostile_requests, malformed_requests, methods,
                           no_answers_are_rare, random_paths, rarely, raw_exchange, request_bytes, request_headers,
                           run_in_thread, send)

pytestmark = pytest.mark.timeout(300)
assert captured_logs            # a fixture: imported by name, so that pytest finds it in this module

ENARX_SETTINGS = {"watch_interval": 0.2, "stop_keeps_on_exit": True,
                  "workload_limits": {"deadline_seconds": 2.0, "max_memory_bytes": 32 * 1024 * 1024}}


def assert_enarx_error(response: Raw, status: int | tuple[int, ...]) -> dict:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status in statuses, (response.status, response.body[:300])
    assert response.content_type == "application/cbor", response.head
    body = cbor2.loads(response.body)
    assert isinstance(body, dict) and isinstance(body["details"], str) and len(body["details"]) > 10
    return body


@dataclasses.dataclass
class Enarx:
    node: Node
    client: EnarxClient
    url: str
    port: int


@pytest.fixture
async def enarx(bus, catalog, connect_as) -> AsyncIterator[Enarx]:
    port = free_port()
    settings = settings_for(bus, catalog, {"enarx": ENARX_SETTINGS},
                            ports={"enarx-keepmgr": port, "enarx-wasmldr": free_port()})
    node = Node(settings, ["enarx.keepmgr", "http.enarx"], catalog)
    await node.start()
    url = f"http://{HOST}:{port}"
    try:
        async with EnarxClient(url) as client:
            yield Enarx(node, client, url, port)
    finally:
        await node.stop()
        await _withdraw_offers(await connect_as("admin"))


async def _withdraw_offers(admin) -> None:
    """The offers name this keep manager's port; the next test's keep manager makes its own."""
    from nats.js.errors import NoKeysError
    contracts = await admin.jetstream().key_value("enarx_contracts")
    try:
        keys = await contracts.keys()
    except NoKeysError:
        return
    for key in keys:
        if key.startswith("offer."):
            await contracts.purge(key)


async def nil_contract(enarx: Enarx) -> dict:
    return next(c for c in await enarx.client.contracts() if c["backend"] == "Nil")


async def keep_ids(enarx: Enarx) -> set[bytes]:
    return {keep["kuuid"] for keep in await enarx.client.keeps()}


# -- item 7: aiohttp's parser errors, in the keep manager's CBOR shape ----------------------------------

async def test_parser_errors_answer_in_the_keep_managers_cbor_shape(enarx: Enarx):
    """(One test for every case: a keep manager each took 0.4 s to start and stop, 10 s for the 24.)"""
    wrong = {}
    for name, (data, status) in malformed_requests("secret-token", "/new_keep/").items():
        if name == "a non-UTF-8 byte in Authorization":
            status = 400              # the keep manager asks for no token: the body `{}` is what is wrong
        if name == "JSON nested 1000 deep":
            status = 400              # not CBOR
        try:
            details = assert_enarx_error(await raw_exchange(enarx.port, data), status)["details"]
            assert "secret-token" not in details
        except AssertionError as exc:
            wrong[name] = str(exc)[:300]
    assert not wrong, wrong


# -- items 6 and 8: hostile CBOR is a 400 in the Enarx shape; one CBOR item per body --------------------

def hostile_cbor(contract: dict) -> dict[str, bytes]:
    """CBOR a client might send instead of a contract or a conversation item."""
    plain = cbor2.dumps(contract)
    body = plain[1:]                              # the map's entries without its header
    entries = len(contract)

    def map_with(extra_key: bytes, extra_value: bytes) -> bytes:
        return bytes([0xA0 + entries + 1]) + body + extra_key + extra_value

    def tagged(tag: int, value: object) -> bytes:
        return map_with(cbor2.dumps("x"), cbor2.dumps(cbor2.CBORTag(tag, value)))

    return {
        "a bignum of 1 MiB (the issue's example)": bytes.fromhex("c25a00100000") + b"\xff" * (1 << 20),
        "a contract with a bignum field": map_with(cbor2.dumps("x"), bytes.fromhex("c24101")),
        "a contract with a shared reference cycle (tags 28/29)":
            map_with(cbor2.dumps("x"), bytes.fromhex("d81c81d81d00")),
        "a contract whose keepmgr is shared (tag 28)":
            cbor2.dumps({**contract, "keepmgr": cbor2.CBORTag(28, contract["keepmgr"])}),
        "a contract with a MIME message (tag 36)": tagged(36, "Subject: hi\n\nbody"),
        "a contract with a regular expression (tag 35)": tagged(35, "(a+)+$"),
        "a contract with a date (tag 1)": tagged(1, 0),
        "a contract with an unknown tag": tagged(4242, 1),
        "a contract with a set (tag 258)": tagged(258, [1, 2]),
        "a contract nested 1000 deep": map_with(cbor2.dumps("x"), b"\x81" * 1000 + b"\x01"),
        "a contract with a duplicate key": map_with(cbor2.dumps("backend"), cbor2.dumps("Nil")),
        "a contract with an integer key": map_with(cbor2.dumps(7), cbor2.dumps(1)),
        "a byte string longer than the body": bytes.fromhex("5b7fffffffffffffff") + b"x",
        "an array claiming 2**63 items": bytes.fromhex("9b8000000000000000"),
        "a text string that is not UTF-8": b"\x62\xff\xfe",
    }


async def _post(enarx: Enarx, path: str, body: bytes) -> Raw:
    return await raw_exchange(enarx.port, request_bytes(path=path, body=body))


async def test_hostile_cbor_is_a_400_in_the_enarx_shape_and_creates_nothing(enarx: Enarx):
    keep = await enarx.client.new_keep(await nil_contract(enarx))      # a live keep to converse with
    fresh = await nil_contract(enarx)
    before = await keep_ids(enarx)
    paths = ["/new_keep/", f"/new_keep/{kuuid_text(fresh['uuid'])}", f"/keep/{kuuid_text(keep['kuuid'])}"]
    for name, body in hostile_cbor(fresh).items():
        for path in paths:
            details = assert_enarx_error(await _post(enarx, path, body), 400)["details"]
            assert "CBOR" in details or "does not decode" in details, (name, path, details)
    assert await keep_ids(enarx) == before
    assert (await enarx.client.new_keep(fresh))["kuuid"] == fresh["uuid"]   # the contract is still on offer
    for kuuid in (keep["kuuid"], fresh["uuid"]):
        await enarx.client.shutdown(kuuid)


async def test_one_body_is_one_cbor_item_two_contracts_create_nothing(enarx: Enarx):
    contract = await nil_contract(enarx)
    before = await keep_ids(enarx)
    for body in (cbor2.dumps(contract) * 2, cbor2.dumps(contract) + b"\x00", cbor2.dumps(contract) + b"\xff"):
        details = assert_enarx_error(await _post(enarx, "/new_keep/", body), 400)["details"]
        assert "one CBOR item" in details
    assert await keep_ids(enarx) == before
    keep = await enarx.client.new_keep(contract)                       # still on offer: nothing was redeemed
    kuuid = kuuid_text(keep["kuuid"])
    two_items = cbor2.dumps("request-evidence") + cbor2.dumps("launch")
    details = assert_enarx_error(await _post(enarx, f"/keep/{kuuid}", two_items), 400)["details"]
    assert "one CBOR item" in details and (await enarx.client.keep(keep["kuuid"]))["state"] == "Indeterminate"
    await enarx.client.shutdown(keep["kuuid"])


# -- the property-based suite: the keep manager and a keep's wasmldr -----------------------------------

KEEPMGR_REQUESTS = MIN_REQUESTS
WASMLDR_REQUESTS = MIN_REQUESTS


def check_enarx(request: Hostile, answer: Answer) -> None:
    assert answer.status < 500, (request, answer)
    assert answer.request_id, (request, answer)
    if request.method == "HEAD" or (request.raw or b"").startswith(b"HEAD "):
        return
    assert answer.content_type == "application/cbor", (request, answer)
    body = cbor2.loads(answer.body)
    if answer.status >= 400:
        assert isinstance(body, dict) and isinstance(body["details"], str) and body["details"], (request, answer)


async def test_hostile_suite_against_the_keep_manager_and_a_keeps_wasmldr(enarx: Enarx, captured_logs, caplog):
    before = await keep_ids(enarx)
    live = await enarx.client.new_keep(await nil_contract(enarx))          # Indeterminate: converses
    ready = await enarx.client.new_keep(await nil_contract(enarx))         # Ready: its wasmldr serves
    await enarx.client.converse(ready["kuuid"], "request-evidence")
    assert await enarx.client.converse(ready["kuuid"], "launch") == "Success"
    ready = await enarx.client.keep(ready["kuuid"])
    ours = {live["kuuid"], ready["kuuid"]}
    try:
        await _keepmgr_suite(enarx, live, ready)
        await _wasmldr_suite(ready)
    finally:
        stray = await keep_ids(enarx) - before - ours
        for kuuid in stray | ours:
            await enarx.client.shutdown(kuuid)
    assert not stray, f"the hostile requests created keeps: {stray}"
    assert_quiet_logs(captured_logs(), caplog)


async def _keepmgr_suite(enarx: Enarx, live: dict, ready: dict) -> None:
    fresh_uuid = str(uuid.uuid4())
    # the live keeps are conversed with (POST) and looked at (GET) only: a random DELETE would end
    # them, and the rest of the suite would talk to an ended keep
    ours = [f"/keep/{kuuid_text(live['kuuid'])}", f"/keep/{kuuid_text(ready['kuuid'])}"]
    # A keep that is not there: a POST to it is answered 404 only after the bus request's grace for
    # a component that has no subscriber (bus/requester.py NO_RESPONDERS_GRACE, 0.5 s), so it is
    # sent a few times (explicitly) and otherwise only looked at and deleted
    unknown = [f"/keep/{uuid.uuid4()}", f"/keep/{uuid.uuid4().hex}"]
    known = ["/contracts", "/new_keep", "/new_keep/", f"/new_keep/{fresh_uuid}", "/keeps", "/keep/not-a-uuid",
             "/keep/%00", "/new_keep/x", "/keep/", "/keeps/x"]
    contract_like = st.fixed_dictionaries(
        {"keepmgr": st.fixed_dictionaries({"address": st.text(max_size=20) | cbor_values,
                                           "port": st.integers(-1, 70000) | cbor_values}) | cbor_values,
         "backend": st.sampled_from(["Nil", "Sev", "Sgx", "Kvm", "nil"]) | st.just({"Nil": None}) | cbor_values,
         # never the uuid on offer: a generated body must not be able to create a keep
         "uuid": st.uuids().map(lambda u: u.bytes) | st.uuids() | st.uuids().map(str) | cbor_values},
        optional={"socket_path": st.text(max_size=20) | cbor_values, "extra": cbor_values}).map(cbor2.dumps)
    items = st.sampled_from(["request-evidence", "launch", "Success", ""]).map(cbor2.dumps) | \
        st.builds(lambda a, b: a + b, st.sampled_from(["request-evidence", "launch"]).map(cbor2.dumps),
                  st.binary(min_size=1, max_size=8))
    enarx_bodies = common_bodies | contract_like | items | st.sampled_from(list(hostile_cbor(
        {"keepmgr": {"address": HOST, "port": enarx.port}, "backend": "Nil", "uuid": uuid.uuid4().bytes}).values()))
    strategy = choose(focused_requests("POST", ["/new_keep/", f"/new_keep/{fresh_uuid}"], {}, contract_like),
                      focused_requests("POST", ours, {}, items | enarx_bodies),
                      focused_requests("GET", ours, {}, enarx_bodies),
                      st.sampled_from(["GET", "DELETE", "HEAD"]).flatmap(
                          lambda method: focused_requests(method, unknown, {}, enarx_bodies)),
                      hostile_requests(random_paths(known), None, enarx_bodies),
                      hostile_requests(random_paths(known), None, enarx_bodies))
    explicit = tuple(Hostile("POST", path, {}, body) for path in unknown
                     for body in (cbor2.dumps("request-evidence"), b"\xff"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        tally = await run_in_thread("Enarx keep manager (3030)", KEEPMGR_REQUESTS, strategy,
                                    lambda request: send(http, enarx.url, enarx.port, request), check_enarx, explicit)
    fives = sum(count for status, count in tally.items() if isinstance(status, int) and status >= 500)
    assert tally["requests"] >= KEEPMGR_REQUESTS and fives == tally["503: backend absent on this host (keepmgr)"]
    no_answers_are_rare(tally)


async def _wasmldr_suite(ready: dict) -> None:
    from components.enarx.client import pinned_context
    address = ready["wasmldr"]
    base = f"https://{address['wasmldr_ipaddr']}:{address['wasmldr_port']}"
    context = pinned_context(ready["certificate_as_pem"])
    workloads = st.fixed_dictionaries(
        {"wasm_binary": st.binary(max_size=200) | st.just(b"\x00asm\x01\x00\x00\x00") | st.lists(st.integers(-1, 300),
                                                                                             max_size=20)
         | cbor_values},
        optional={"args": st.lists(st.text(max_size=10)) | cbor_values, "env": cbor_values,
                  "stdin": st.binary(max_size=50) | cbor_values, "human_readable_info": cbor_values}).map(cbor2.dumps)
    bodies_ = common_bodies | workloads
    # only through aiohttp's client (TLS): the raw socket speaks plain TCP
    strategy = st.builds(Hostile, methods, random_paths(["/workload"]),
                         request_headers(None), bodies_, rarely())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        tally = await run_in_thread("Enarx wasmldr (keep's HTTPS)", WASMLDR_REQUESTS, strategy,
                                    lambda request: send(http, base, 0, request, context), check_enarx)
    assert tally["requests"] >= WASMLDR_REQUESTS and not [s for s in tally if isinstance(s, int) and s >= 500]
    no_answers_are_rare(tally)

