"""The kernel on a real nats-server: codecs, typed errors, large payloads, CAS records, events."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import cbor2
import nats.errors
import orjson
import pytest
from hypothesis import given, settings, strategies as st
from nats.js import errors as js_errors

from bus import codec, events, headers, outages, payloads
from bus.component import Component, Context, Endpoint, Incoming, Outgoing
from bus.errors import BadRequest, Conflict, NoResponders, NotFound, Timeout, Unavailable, Unprocessable
from bus.records import Records
from bus.requester import Requester
from tests.conftest import eventually

MB = 1024 * 1024


class EchoComponent(Component):
    """A test component under an external subject, so every role may call it."""

    system = "kerneltest"
    name = "testecho"

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("bytes", "kerneltest.testecho.bytes", self.echo_bytes),
                Endpoint("value", "kerneltest.testecho.value", self.echo_value),
                Endpoint("fail", "kerneltest.testecho.fail", self.fail),
                Endpoint("crash", "kerneltest.testecho.crash", self.crash),
                Endpoint("slow", "kerneltest.testecho.slow", self.slow),
                Endpoint("slow_inline", "kerneltest.testecho.slowinline", self.slow, inline=True),
                Endpoint("fail_inline", "kerneltest.testecho.failinline", self.fail, inline=True),
                Endpoint("refuse", "kerneltest.testecho.refuse", self.refuse),
                Endpoint("left", "kerneltest.testecho.left", self.seconds_left)]

    async def seconds_left(self, incoming: Incoming) -> float | None:
        await asyncio.sleep(incoming.payload)
        return incoming.seconds_left()

    async def refuse(self, incoming: Incoming) -> None:
        raise Unprocessable("the input was fine but is refused", details={"why": incoming.payload,
                                                                          "bytes": b"\x00\x01"})

    async def echo_bytes(self, incoming: Incoming) -> Outgoing:
        return Outgoing(incoming.payload, headers.OCTETS)

    async def echo_value(self, incoming: Incoming) -> object:
        return {"got": incoming.payload, "request_id": incoming.request_id}

    async def fail(self, incoming: Incoming) -> None:
        raise BadRequest("field x is missing:\nsend x")

    async def crash(self, incoming: Incoming) -> None:
        raise RuntimeError("secret internals")

    async def slow(self, incoming: Incoming) -> str:
        await asyncio.sleep(incoming.payload)
        return "done"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


@given(json_values)
@settings(max_examples=60, deadline=None)
def test_codecs_round_trip(value):
    for content_type in (headers.JSON, headers.CBOR):
        assert codec.decode(codec.encode(value, content_type), content_type) == value


def test_codec_rejects_garbage_with_bad_request():
    with pytest.raises(BadRequest, match="not valid JSON"):
        codec.decode(b"{nope", headers.JSON)
    with pytest.raises(BadRequest, match="not valid CBOR"):
        codec.decode(b"\xa1\x61", headers.CBOR)
    with pytest.raises(BadRequest, match="unsupported content type"):
        codec.decode(b"x", "text/plain")
    assert codec.decode(b"\x00\x01", headers.OCTETS) == b"\x00\x01"


async def test_request_reply_in_json_and_cbor(start_component, connect_as):
    await start_component(EchoComponent)
    requester = Requester(await connect_as("adapter"))
    reply = await requester.request("kerneltest.testecho.value", {"a": [1, 2]}, request_id="rid-1")
    assert reply.payload == {"got": {"a": [1, 2]}, "request_id": "rid-1"}
    assert reply.headers[headers.REQUEST_ID] == "rid-1"
    reply = await requester.request("kerneltest.testecho.value", {"b": b"\x00\xff"}, content_type=headers.CBOR)
    assert reply.content_type == headers.CBOR
    assert reply.payload["got"] == {"b": b"\x00\xff"}


async def test_a_request_waits_a_moment_for_a_component_that_is_resubscribing(connect_as):
    """No responders means nobody got the request: it is sent again for a moment (a component whose
    server was lost is back within it), then 503, well before the timeout."""
    requester = Requester(await connect_as("adapter"), timeout=5)
    listener = await connect_as("kerneltest")

    async def answer(msg) -> None:
        await msg.respond(b'"late but there"')

    async def subscribe_late() -> None:
        await asyncio.sleep(0.3)
        await listener.subscribe("kerneltest.testlate.echo", cb=answer)

    late = asyncio.create_task(subscribe_late())
    assert (await requester.request("kerneltest.testlate.echo", {})).payload == "late but there"
    await late
    began = asyncio.get_running_loop().time()
    with pytest.raises(NoResponders):
        await requester.request("kerneltest.nobody.here", {})
    assert 0.5 < asyncio.get_running_loop().time() - began < 3.0    # the 0.6 s grace, not the 5 s timeout


async def test_a_storage_call_that_found_no_leader_is_tried_again_for_a_moment():
    """outages.patiently: a write no server took (no leader during an election) is retried until
    it is taken or the patience runs out; a timeout, which may have been stored, never is."""
    answers = [js_errors.NoStreamResponseError(), nats.errors.NoRespondersError(), 7]

    async def election_then_answer() -> int:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert await outages.patiently(election_then_answer) == 7 and answers == []

    tries = []

    async def timing_out() -> None:
        tries.append(1)
        raise nats.errors.TimeoutError()

    with pytest.raises(nats.errors.TimeoutError):
        await outages.patiently(timing_out)
    assert len(tries) == 1

    async def no_leader_ever() -> None:
        tries.append(1)
        raise js_errors.NoStreamResponseError()

    started = asyncio.get_running_loop().time()
    with pytest.raises(js_errors.NoStreamResponseError):
        await outages.patiently(no_leader_ever, patience=0.5)
    waited = asyncio.get_running_loop().time() - started
    assert 0.3 <= waited < 0.5 + 1.0 and len(tries) > 3     # bounded (with room for a loaded machine)
    assert isinstance(outages.as_bus_error(js_errors.NoStreamResponseError()), Unavailable)


async def test_errors_come_back_typed(start_component, connect_as):
    await start_component(EchoComponent)
    requester = Requester(await connect_as("adapter"), timeout=0.5)
    with pytest.raises(BadRequest, match="field x is missing: send x"):
        await requester.request("kerneltest.testecho.fail", {})
    with pytest.raises(Exception) as crashed:
        await requester.request("kerneltest.testecho.crash", {})
    assert crashed.value.status == 500 and "secret internals" not in crashed.value.message
    with pytest.raises(Unavailable, match="no component serves kerneltest.nobody.here"):
        await requester.request("kerneltest.nobody.here", {})
    with pytest.raises(Timeout, match="did not answer within 0.2s"):
        await requester.request("kerneltest.testecho.slow", 1.0, timeout=0.2)


async def test_handlers_run_concurrently(start_component, connect_as):
    await start_component(EchoComponent)
    requester = Requester(await connect_as("adapter"))
    started = asyncio.get_running_loop().time()
    replies = await asyncio.gather(*(requester.request("kerneltest.testecho.slow", 0.3) for _ in range(20)))
    assert [r.payload for r in replies] == ["done"] * 20
    assert asyncio.get_running_loop().time() - started < 3.0  # 20 x 0.3 s in series would be 6 s


@pytest.mark.parametrize("role", ["adapter", "kerneltest"])
async def test_20mb_payload_travels_through_the_payload_stream(start_component, connect_as, role):
    await start_component(EchoComponent)
    client = await connect_as(role)
    assert client.max_payload == 8 * MB
    body = os.urandom(20 * MB)
    reply = await Requester(client, timeout=30).request("kerneltest.testecho.bytes", body,
                                                        content_type=headers.OCTETS)
    assert hashlib.sha256(reply.payload).digest() == hashlib.sha256(body).digest()
    ref = reply.headers[headers.PAYLOAD_REF]
    assert ref.startswith("kerneltest.") and reply.headers[headers.PAYLOAD_KEY]  # the reply went there too
    assert reply.headers[headers.PAYLOAD_CHUNKS] == "3"
    js = (await connect_as("admin")).jetstream()
    resting = [(await js.get_msg(payloads.STREAM, subject=f"{payloads.SUBJECT_PREFIX}.{ref}.{i}")).data
               for i in range(3)]
    assert sum(map(len, resting)) == len(body) + 12 + 16 and resting[0][12:12 + 64] != body[:64]  # sealed


async def _sent(connect_as, role: str, on_error=None) -> tuple[bytes, dict[str, str]]:
    sender = payloads.Payloads(await connect_as(role, error_cb=on_error))
    hdrs: dict[str, str] = {}
    body = os.urandom(9 * MB)
    assert await sender.pack(body, hdrs) == b""
    return body, hdrs


async def test_a_stored_payload_opens_only_with_its_key(connect_as):
    body, hdrs = await _sent(connect_as, "adapter")
    receiver = payloads.Payloads(await connect_as("kerneltest"))
    assert await receiver.unpack(b"", dict(hdrs)) == body
    with pytest.raises(Unavailable, match="does not open"):
        await receiver.unpack(b"", {**hdrs, headers.PAYLOAD_KEY: "AAAAAAAAAAAAAAAAAAAAAA=="})
    with pytest.raises(Unavailable, match="does not open"):
        await receiver.unpack(b"", {**hdrs, headers.PAYLOAD_KEY: ""})
    with pytest.raises(Unavailable, match="chunk count"):
        await receiver.unpack(b"", {**hdrs, headers.PAYLOAD_CHUNKS: "many"})


async def test_no_principal_but_the_sender_can_replace_or_delete_a_payload(connect_as):
    body, hdrs = await _sent(connect_as, "adapter")
    ref = hdrs[headers.PAYLOAD_REF]
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc).lower())

    intruder = await connect_as("kerneltest", error_cb=on_error)   # may write payloads of its own only
    await intruder.publish(f"{payloads.SUBJECT_PREFIX}.{ref}.0", b"forged")
    for api in (f"$JS.API.STREAM.MSG.DELETE.{payloads.STREAM}", f"$JS.API.STREAM.PURGE.{payloads.STREAM}",
                f"$JS.API.CONSUMER.CREATE.{payloads.STREAM}"):
        await intruder.publish(api, b"{}")
    await intruder.flush()
    await eventually(lambda: sum("permissions violation for publish" in v for v in violations) == 4)
    receiver = payloads.Payloads(await connect_as("gateway"))
    assert await receiver.unpack(b"", dict(hdrs)) == body          # untouched
    admin = (await connect_as("admin")).jetstream()
    with pytest.raises(Exception, match="(?i)delete"):    # the stream itself denies deletes, even to admin
        await admin.delete_msg(payloads.STREAM, 1)


async def test_records_compare_and_set(connect_as):
    records = await Records.open(await connect_as("kerneltest"), "test_records")
    key = f"k{os.getpid()}{id(records)}"
    first = await records.create(key, {"n": 1})
    with pytest.raises(Conflict, match="already exists"):
        await records.create(key, {"n": 99})
    await records.update(key, {"n": 2}, first.revision)
    with pytest.raises(Conflict, match="changed concurrently"):
        await records.update(key, {"n": 3}, first.revision)  # stale revision loses
    with pytest.raises(Conflict):
        await records.delete(key, first.revision)
    assert (await records.get(key)).value == {"n": 2}

    async def bump(value):
        return {"n": value["n"] + 1}

    await asyncio.gather(*(records.mutate(key, bump) for _ in range(10)))
    assert (await records.get(key)).value == {"n": 12}  # no increment lost
    await records.delete(key, (await records.get(key)).revision)
    with pytest.raises(NotFound):
        await records.get(key)
    assert key not in await records.keys()


async def test_events_are_kept_in_the_stream(connect_as):
    client = await connect_as("kerneltest")
    marker = os.urandom(4).hex()
    await events.Events(client, "kerneltest").publish("thing", "made", {"marker": marker})
    reader = (await connect_as("admin")).jetstream()   # a component publishes events; it may not read the stream
    info = await reader.stream_info(events.STREAM)
    last = await reader.get_msg(events.STREAM, seq=info.state.last_seq)
    assert last.subject == "events.kerneltest.thing.made"
    body = orjson.loads(last.data)
    assert body["marker"] == marker and body["system"] == "kerneltest" and "at" in body


def test_cbor_decode_bounds_are_bad_requests():
    with pytest.raises(BadRequest):
        codec.decode(cbor2.dumps({"a": 1})[:-1], headers.CBOR)


async def test_mirror_follows_other_writers_and_hides_local_deletes(connect_as):
    reader = await Records.open(await connect_as("kerneltest"), "test_mirror")
    writer = await Records.open(await connect_as("kerneltest"), "test_mirror")
    await reader.mirror()
    key = f"m{os.urandom(4).hex()}"
    with pytest.raises(NotFound):
        await reader.lookup(key)
    created = await writer.create(key, {"v": 1})

    async def sees(value) -> bool:
        found = reader.mirrored_record(key)
        return (found.value if found else None) == value

    await eventually(lambda: sees({"v": 1}))               # delivered by the watch, no read needed
    await writer.update(key, {"v": 2}, created.revision)
    await eventually(lambda: sees({"v": 2}))
    await writer.delete(key, (await writer.get(key)).revision)
    await eventually(lambda: sees(None))
    with pytest.raises(NotFound):
        await reader.lookup(key)

    again = await reader.create(key, {"v": 3})
    assert (await reader.lookup(key)).value == {"v": 3}
    await reader.delete(key, again.revision)
    with pytest.raises(NotFound):                          # a local delete is hidden at once
        await reader.lookup(key)
    await reader.close()


async def test_json_replies_travel_without_headers_and_others_name_their_type(start_component, connect_as):
    """JSON is the default type and the requester knows its request id: the reply needs no header."""
    await start_component(EchoComponent)
    client = await connect_as("adapter")
    plain = await client.request("kerneltest.testecho.value", b'{"a": 1}', timeout=5,
                                 headers={headers.REQUEST_ID: "rid-2"})
    assert plain.headers is None and orjson.loads(plain.data)["got"] == {"a": 1}
    typed = await client.request("kerneltest.testecho.value", cbor2.dumps({"a": 1}), timeout=5,
                                 headers={headers.REQUEST_ID: "rid-3", headers.CONTENT_TYPE: headers.CBOR})
    assert typed.headers[headers.CONTENT_TYPE] == headers.CBOR and typed.headers[headers.REQUEST_ID] == "rid-3"


async def test_inline_endpoints_answer_in_order_and_stall_only_themselves(start_component, connect_as):
    """An inline endpoint serves one request at a time in its subscription; other endpoints go on."""
    await start_component(EchoComponent)
    requester = Requester(await connect_as("adapter"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    inline = asyncio.gather(*(requester.request("kerneltest.testecho.slowinline", 0.2) for _ in range(3)))
    other = await requester.request("kerneltest.testecho.value", {"x": 1})
    answered_meanwhile = loop.time() - started
    assert [r.payload for r in await inline] == ["done"] * 3
    assert loop.time() - started >= 0.6           # 3 x 0.2 s, in series
    assert answered_meanwhile < 0.2 and other.payload["got"] == {"x": 1}
    with pytest.raises(BadRequest, match="field x is missing"):  # errors keep their type inline too
        await requester.request("kerneltest.testecho.failinline", {})


async def test_json_requests_carry_only_the_request_id_and_others_name_their_type(connect_as):
    listener = await connect_as("kerneltest")
    seen: list[dict[str, str] | None] = []

    async def answer(msg) -> None:
        seen.append(msg.headers)
        await msg.respond(b"{}")

    await listener.subscribe("kerneltest.testheaders.echo", cb=answer)
    await listener.flush()
    requester = Requester(await connect_as("adapter"))
    await requester.request("kerneltest.testheaders.echo", {"a": 1}, request_id="rid-json", timeout=2)
    await requester.request("kerneltest.testheaders.echo", {"a": 1}, content_type=headers.CBOR, request_id="rid-cbor")
    assert seen == [{headers.REQUEST_ID: "rid-json", headers.TIMEOUT: "2.000"},
                    {headers.REQUEST_ID: "rid-cbor", headers.TIMEOUT: "5.000", headers.CONTENT_TYPE: headers.CBOR}]


async def test_a_handler_knows_how_long_its_caller_still_waits(start_component, connect_as):
    await start_component(EchoComponent)
    requester = Requester(await connect_as("adapter"))
    left = (await requester.request("kerneltest.testecho.left", 0.3, timeout=3)).payload
    assert 2.0 < left < 2.71          # 3 s less the 0.3 s slept, and whatever a loaded machine adds
    raw = await connect_as("adapter")          # a caller that does not say (the NATS CLI, say)
    for hdrs in (None, {headers.TIMEOUT: "soon"}, {headers.TIMEOUT: "nan"}, {headers.TIMEOUT: "-1"}):
        reply = await raw.request("kerneltest.testecho.left", b"0", headers=hdrs, timeout=3)
        assert orjson.loads(reply.data) is None


async def test_replies_find_their_own_request_and_a_late_one_is_dropped(connect_as):
    """Concurrent requests on one requester get their own replies; a reply after the timeout harms nothing."""
    listener = await connect_as("kerneltest")
    held: list = []

    async def answer(msg) -> None:
        body = orjson.loads(msg.data)
        if body.get("hold"):
            held.append(msg)
            return
        await msg.respond(orjson.dumps({"echo": body["n"]}))

    await listener.subscribe("kerneltest.testreplies.echo", cb=answer)
    await listener.flush()
    requester = Requester(await connect_as("adapter"))
    replies = await asyncio.gather(*(requester.request("kerneltest.testreplies.echo", {"n": n}) for n in range(200)))
    assert [r.payload["echo"] for r in replies] == list(range(200))
    with pytest.raises(Timeout):
        await requester.request("kerneltest.testreplies.echo", {"hold": True}, timeout=0.1)
    await eventually(lambda: bool(held))
    await held[0].respond(b'{"echo": "late"}')  # to a request nobody waits for any more
    assert (await requester.request("kerneltest.testreplies.echo", {"n": 7})).payload == {"echo": 7}


async def test_error_details_travel_in_the_requests_encoding(start_component, connect_as):
    await start_component(EchoComponent)
    requester = Requester(await connect_as("adapter"))
    with pytest.raises(Unprocessable) as refused:
        await requester.request("kerneltest.testecho.refuse", "cbor", content_type=headers.CBOR)
    assert refused.value.status == 422 and refused.value.message == "the input was fine but is refused"
    assert refused.value.details == {"why": "cbor", "bytes": b"\x00\x01"}
    with pytest.raises(Unprocessable) as in_json:   # bytes cannot be JSON: the details are dropped, logged
        await requester.request("kerneltest.testecho.refuse", "json")
    assert in_json.value.status == 422 and in_json.value.details == {}


class Background(Component):
    system = "kerneltest"
    name = "background"

    def endpoints(self) -> list[Endpoint]:
        return []

    async def setup(self) -> None:
        self.ticks = 0
        self.finished: list[str] = []
        self.cancelled: list[str] = []

        async def tick() -> None:
            self.ticks += 1
            if self.ticks == 2:
                raise RuntimeError("one failing pass does not stop the next")

        self.every(0.02, tick)

    async def work(self, name: str, seconds: float) -> None:
        try:
            await asyncio.sleep(seconds)
            self.finished.append(name)
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise


async def test_background_work_is_owned_and_stragglers_are_cancelled_at_stop(start_component, connect_as):
    component = Background(Context(await connect_as("kerneltest"), Path("/tmp")))
    async with component:
        component.spawn(component.work("quick", 0.05))
        component.spawn(component.work("slow", 30))
        component.spawn(component.work("watcher", 30), wait=False)
        await eventually(lambda: component.ticks >= 4)
        await component.stop(grace=0.3)
        ticks = component.ticks
    await asyncio.sleep(0.1)
    assert component.finished == ["quick"] and sorted(component.cancelled) == ["slow", "watcher"]
    assert component.ticks == ticks                      # the periodic work stopped with it
    with pytest.raises(ValueError, match="positive interval"):
        component.every(0, component.work)


async def test_mutate_reports_before_and_after_and_writes_nothing_for_no_change(connect_as):
    records = await Records.open(await connect_as("kerneltest"), "test_records")
    key = "mutate-" + os.urandom(4).hex()
    await records.create(key, {"n": 1})
    change = await records.mutate(key, lambda value: {**value, "n": value["n"] + 1})
    assert (change.before.value, change.after.value) == ({"n": 1}, {"n": 2})
    assert change.after.revision > change.before.revision
    same = await records.mutate(key, lambda value: value)
    assert same.after is same.before and same.after.revision == change.after.revision


async def test_buckets_take_the_deployments_replica_count(connect_as):
    """One server cannot hold 3 copies: the count reaches JetStream (a cluster takes it, issue 14)."""
    component = Background(Context(await connect_as("kerneltest"), Path("/tmp"), replicas=3))
    with pytest.raises(Exception, match="(?i)replicas|resources"):
        await component.open_records("test_records_r3")


async def test_periodic_work_stops_even_when_a_library_swallowed_its_cancel(start_component):
    """asyncio.wait_for (Python 3.11, gh-86296; nats-py's requests use it) swallows a cancel that
    lands in the step its awaited result does: the periodic loop must stop all the same, or a
    component's stop would wait for it forever."""
    from bus import component as component_module

    echo = await start_component(EchoComponent)
    reply = asyncio.get_running_loop().create_future()
    inside = asyncio.Event()

    async def work() -> None:
        inside.set()
        await asyncio.wait_for(reply, 10)

    task = echo.every(0.01, work, "a request every 10 ms")
    await inside.wait()
    reply.set_result(None)                                   # the result and the cancel in one step
    await asyncio.wait_for(component_module._cancel({task}), 10)
    assert task.done()
