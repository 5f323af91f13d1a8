"""The one strict CBOR decoder (bus/codec.py) and its users: the HTTP bodies, the keep sockets, the
keep loader and the bus. One item per payload, no tag but a UUID, bounded depth, text or byte keys."""

from __future__ import annotations

import time
import uuid

import cbor2
import pytest

from adapters.http import bodies
from adapters.unix.enarx import Incomplete, split_item
from bus import codec
from bus.errors import BadRequest
from bus.headers import CBOR
from components.enarx.keepldr import KeepLoader

CONTRACT = {"keepmgr": {"address": "127.0.0.1", "port": 3030}, "backend": "Nil", "uuid": uuid.uuid4().bytes}
_VALUES = (b"\x00" * 16, 0, [1, 2], "x", {}, 1.5)


def _native(tag: int) -> bool:
    """cbor2 (without our overrides) decodes `tag` itself rather than handing back a CBORTag."""
    for value in _VALUES:
        try:
            decoded = cbor2.loads(cbor2.dumps(cbor2.CBORTag(tag, value)))
        except Exception:
            return True
        if not isinstance(decoded, cbor2.CBORTag):
            return True
    return False


def test_the_list_of_tags_cbor2_decodes_itself_is_complete():
    """Guards a cbor2 upgrade: a tag it learns to decode must be refused by us too."""
    candidates = [*range(0, 70000), 2 ** 32 - 1, 2 ** 32, 2 ** 63, 2 ** 64 - 1, 1668546817, 1668546818]
    assert {tag for tag in candidates if _native(tag)} <= codec.CBOR_NATIVE_TAGS


@pytest.mark.parametrize("tag", sorted((codec.CBOR_NATIVE_TAGS - codec.CBOR_TAGS) | {6, 99, 4242, 2 ** 64 - 1}))
def test_every_tag_but_a_uuid_is_refused(tag: int):
    for value in _VALUES:
        with pytest.raises(BadRequest, match=f"tag {tag} is not accepted"):
            codec.loads_cbor(cbor2.dumps({"x": [cbor2.CBORTag(tag, value)]}))


def test_a_uuid_may_come_tagged():
    value = uuid.uuid4()
    assert codec.loads_cbor(cbor2.dumps({"uuid": value})) == {"uuid": value}
    with pytest.raises(BadRequest):
        codec.loads_cbor(cbor2.dumps(cbor2.CBORTag(37, b"short")))


def test_the_issues_bignum_is_refused_at_once():
    started = time.monotonic()
    with pytest.raises(BadRequest, match="tag 2 "):
        codec.loads_cbor(bytes.fromhex("c25a00100000") + b"\xff" * (1 << 20))
    assert time.monotonic() - started < 0.5


def test_shared_references_cannot_build_a_cycle():
    with pytest.raises(BadRequest, match="tag 2[89] "):
        codec.loads_cbor(bytes.fromhex("d81c81d81d00"))


def test_one_payload_is_one_item():
    assert codec.loads_cbor(cbor2.dumps(CONTRACT)) == CONTRACT
    for trailing in (cbor2.dumps(CONTRACT), b"\x00", b"\xff"):
        with pytest.raises(BadRequest, match="not one CBOR item"):
            codec.loads_cbor(cbor2.dumps(CONTRACT) + trailing)


def test_depth_keys_and_text_are_strict():
    codec.loads_cbor(b"\x81" * codec.CBOR_MAX_DEPTH + b"\x01")
    with pytest.raises(BadRequest, match="depth"):
        codec.loads_cbor(b"\x81" * (codec.CBOR_MAX_DEPTH + 1) + b"\x01")
    with pytest.raises(BadRequest, match="Duplicate"):
        codec.loads_cbor(bytes.fromhex("a2616101616102"))
    with pytest.raises(BadRequest, match="text string or byte string"):
        codec.loads_cbor(cbor2.dumps({1: 2}))
    with pytest.raises(BadRequest):
        codec.loads_cbor(b"\x62\xff\xfe")
    assert codec.loads_cbor(cbor2.dumps({b"k": "v"})) == {b"k": "v"}


def test_an_item_that_ends_early_is_incomplete():
    for data in (b"", b"\xa1\x63abc", bytes.fromhex("5b7fffffffffffffff") + b"x", bytes.fromhex("9b8000000000000000")):
        with pytest.raises(codec.Incomplete):
            codec.loads_cbor(data)


def test_a_stream_splits_into_strict_items():
    first, second = cbor2.dumps("request-evidence"), cbor2.dumps("launch")
    assert split_item(first + second) == (first, second)
    with pytest.raises(Incomplete):
        split_item(first[:3])
    with pytest.raises(BadRequest, match="tag 36"):
        split_item(cbor2.dumps(cbor2.CBORTag(36, "Subject: x\n\ny")) + second)


def test_the_bus_http_bodies_and_the_keep_loader_decode_strictly():
    tagged = cbor2.dumps({"x": cbor2.CBORTag(35, "(a+)+$")})
    two = cbor2.dumps("launch") * 2
    for data in (tagged, two):
        with pytest.raises(BadRequest, match="payload is not"):
            codec.decode(data, CBOR)
        with pytest.raises(BadRequest, match="the body must be one CBOR item"):
            bodies.parse_cbor(data, "a KeepContract")
        with pytest.raises(BadRequest, match="does not decode"):
            KeepLoader._decode(data)
    assert codec.decode(cbor2.dumps(CONTRACT), CBOR) == CONTRACT
    assert KeepLoader._decode(cbor2.dumps("launch")) == "launch"


def test_json_bodies_nest_at_most_the_limit():
    limit = bodies.MAX_DEPTH
    assert bodies.parse_json(b"[" * limit + b"]" * limit, "x") == eval("[" * limit + "]" * limit)
    for deep in (b"[" * (limit + 1) + b"]" * (limit + 1), b'{"type":' + b"[" * 1000 + b"]" * 1000 + b"}",
                 b'{"a":' * (limit + 1) + b"1" + b"}" * (limit + 1)):
        with pytest.raises(BadRequest, match="deeper than"):
            bodies.parse_json(deep, "x")
    # many brackets side by side are no nesting
    assert len(bodies.parse_json(b"[" + b",".join([b"[]"] * 1000) + b"]", "x")) == 1000
