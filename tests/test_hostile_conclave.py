"""Hostile clients against Conclave's two sites (adapters/http/conclave.py), in the manner of the
other tests/test_hostile_*.py, with the helpers they share (tests/hostile.py).

`conclave-host` (relay enclave, mailboxes): real mails with one byte flipped, truncated, replayed or
with a skipped number, mails authenticated by a stranger but malformed inside (no terminator, short
packets, a bad private-header length, low-order keys, odd topics and key-derivation headers), odd
Correlation-IDs (empty, 2000 characters, non-ASCII, CR/LF over the raw socket), odd Content-Types,
`Teebus-Poll-Wait` values, bodies over the host's limit, and random requests. Every answer: below
500 (503 only for a full mailbox or store, as docs/conclave.md says), `Cache-Control:
no-store,no-cache,must-revalidate`, and in its shape: Conclave's `{"error", "message"}` for its own
two errors, Spring's `{"timestamp", "status", "error", "message"}` for the rest, octet-stream for a
success (the EII bytes, unchanged, for /attestation). Afterwards the enclave is where it was: a
client that had sent mail 0..k sends k+1 and gets the right reply, and the mail queued before the
suite is still queued, exactly.

`conclave-kds`: bodies with wrong field types, unknown or missing fields, huge names, odd master key
types and policy constraints, bad Base64 EnclaveInstanceInfos, missing or odd `API-VERSION`. Every
answer: below 500, JSON, `{"reason": str}` for an error, a success's fields exactly and valid (the
signature checks, the released key opens with the requester's key, and only for a constraint the
requester's EII meets).

Neither site's log may hold a traceback or a secret (client and enclave keys, the KDS's master
secrets and the keys it derives, the plaintext of mail).

Each suite sends its focused cases once each first (hypothesis's explicit examples), then the
generated requests (at least hostile.MIN_REQUESTS); the figures are printed at the end, as the other
suites' are. Three tests pin
what the suites' neighbourhood found, and fail until it is fixed (each docstring says where): the
503 a connection over the host's cap gets has no Cache-Control; with a KDS, mail naming a KDS key
the enclave may not have is a 503 instead of the mail's fault; and such mail, unauthenticated, leaves
a cached KDS key per distinct key-derivation header in the enclave, without bound.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import os
import struct
import time
import uuid
from collections import Counter
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable

import aiohttp
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import load_der_public_key
from hypothesis import strategies as st

from adapters.http.conclave import HOST_SITE, host_routes, render_error
from adapters.http.runner import INTERNAL_TOKEN_FILE, HttpServer, Site
from bus.requester import Requester
from bus.server import free_port
from components.conclave import kds_keys
from tests import conclave_wire as wire
from tests.conclave_fixtures import NO_CACHE, Client, client_of
from tests.hostile import (MIN_REQUESTS, Answer, Hostile, assert_quiet_logs, captured_logs, choose, common_bodies,
                           hostile_requests, json_bytes, json_values, mostly, no_answers_are_rare, perturbed,
                           random_paths, rarely, read_response, request_bytes, run_in_thread, script_headers, scripted,
                           send, special_headers, target)

pytestmark = pytest.mark.timeout(300)
assert captured_logs            # a fixture: imported by name, so that pytest finds it in this module

HOST_REQUESTS = MIN_REQUESTS
KDS_REQUESTS = MIN_REQUESTS
HOST_MAIL_LIMIT = 32 * 1024      # the host site's body limit here (max_mail_bytes): cheap 413s
OCTETS = "application/octet-stream"
MD, EE, OK = "MAIL_DECRYPTION", "ENCLAVE_EXCEPTION", "ok"
SPRING_FIELDS = {"timestamp", "status", "error", "message"}
# docs/conclave.md: a 503 is "a failure that is not Conclave's: a full mailbox or store, the enclave
# not running, a KDS that does not answer"; this host has no KDS and its enclave runs
DOCUMENTED_503 = ("poll them with /poll-mail", "the host's mail storage is full")
HOST_PATHS = ["/attestation", "/deliver-mail", "/poll-mail"]
KDS_PATHS = ["/public", "/private"]


# -- what is sent, and what came back ----------------------------------------------------------------

@dataclasses.dataclass(repr=False)
class Case(Hostile):
    """A focused request and what Conclave may answer it with when it reaches the enclave (`expect`:
    OK, MD, EE); `opener` opens a 200's reply mail (the sender's private key)."""

    kind: str = "random"
    expect: frozenset = frozenset()
    opener: bytes | None = None
    hint: str | None = None             # the Correlation-ID sent (None: no header)
    wait: str | None = None             # the Teebus-Poll-Wait sent


def reachable(request: Hostile, limit: int) -> bool:
    """A request the runner passes to a handler untouched: aiohttp's client, a body within the limit,
    no Content-Encoding but identity, no Expect but 100-continue."""
    if request.raw is not None or len(request.body) > limit:
        return False
    lower = {name.lower(): value for name, value in request.headers.items()}
    if lower.get("content-encoding", "").strip().lower() not in ("", "identity"):
        return False
    return lower.get("expect", "100-continue").lower() == "100-continue"


def hint_accepted(hint: str | None) -> bool:
    """messages.check_hint, as the HTTP side sees the value (aiohttp strips spaces and tabs around it)."""
    if hint is None:
        return False
    value = hint.strip(" \t")
    return 0 < len(value) <= 1024 and all(" " <= c <= "~" for c in value)


# -- mail, written from conclave-wire.md with the knobs a hostile sender turns -------------------------

def prologue(*, protocol: int = 1, sequence: int = 0, topic: bytes = b"default", envelope: bytes = b"",
             key_derivation: bytes = b"\x00", extension: bytes = b"") -> bytes:
    """§2, with the topic as raw bytes (so it may be what modified UTF-8 refuses) and extension bytes."""
    return (bytes([protocol]) + struct.pack(">q", sequence) + struct.pack(">H", len(topic)) + topic
            + struct.pack(">H", len(envelope)) + envelope + struct.pack(">H", len(key_derivation))
            + key_derivation + extension)


def craft(recipient: bytes, *, head: bytes | None = None, sender: bytes | None = None, payload: bytes = b"\x00",
          plaintexts: list[bytes] | None = None, body: bytes = b"", sender_public: bytes | None = None,
          after: bytes = b"") -> tuple[bytes, bytes]:
    """(mail, sender private key): the Noise X handshake of §3 (`payload` its handshake payload,
    `sender_public` a static key to claim instead of the sender's own), then one packet per plaintext
    under the transport key (§5; default: the private-header length 0, `body`, the terminator), then
    `after`."""
    head = prologue() if head is None else head
    sender = os.urandom(32) if sender is None else sender
    if plaintexts is None:              # full packets as the writer sends them (§5), then the terminator
        user = struct.pack(">I", 0) + body
        plaintexts = [data_packet(user[at:at + MAX_PAYLOAD]) for at in range(0, len(user), MAX_PAYLOAD)]
        plaintexts.append(TERMINATOR)
    h = wire.NAME + b"\x00" * (32 - len(wire.NAME))
    ck = h
    h = hashlib.sha256(h + head).digest()
    h = hashlib.sha256(h + recipient).digest()
    ephemeral = os.urandom(32)
    e_pub = wire.x25519_public(ephemeral)
    h = hashlib.sha256(h + e_pub).digest()
    ck, k = wire._hkdf(ck, wire._dh(ephemeral, recipient))
    claimed = wire.x25519_public(sender) if sender_public is None else sender_public
    s_sealed = AESGCM(k).encrypt(wire._nonce(0), claimed, h)
    h = hashlib.sha256(h + s_sealed).digest()
    if sender_public is not None:            # the recipient's DH with the claimed key fails first
        return (struct.pack(">H", len(head)) + head + e_pub + s_sealed + os.urandom(len(payload) + 16)
                + os.urandom(40) + after), sender
    ck, k = wire._hkdf(ck, wire._dh(sender, recipient))
    sealed_payload = AESGCM(k).encrypt(wire._nonce(0), payload, h)
    transport, _ = wire._hkdf(ck, b"")
    packets = b"".join(_packet(AESGCM(transport).encrypt(wire._nonce(n), plain, None))
                       for n, plain in enumerate(plaintexts))
    return struct.pack(">H", len(head)) + head + e_pub + s_sealed + sealed_payload + packets + after, sender


TERMINATOR = b"\x00\x00"
MAX_PAYLOAD = 65517                     # user bytes and padding of one packet (§5)


def _packet(ciphertext: bytes) -> bytes:
    return struct.pack(">H", len(ciphertext)) + ciphertext


def data_packet(user: bytes, padding: int = 0) -> bytes:
    """A packet's plaintext: user bytes, zero padding, u16 number of user bytes."""
    return user + b"\x00" * padding + struct.pack(">H", len(user))


def kds_spec(name: bytes, kind: int, constraint: bytes) -> bytes:
    spec = (b"\x01" + struct.pack(">i", len(name)) + name + bytes([kind]) + struct.pack(">i", len(constraint))
            + constraint)
    return spec + b"\x00" if len(spec) == 18 else spec


HOSTILE_TOPICS = [b"default", b"room1", b"a-b", "\u00fc".encode(), "\u65e5\u672c".encode(), b"x" * 255]
# (the last: an emoji as Java's writeUTF writes it, each UTF-16 surrogate in 3 bytes)
ODD_TOPICS = [b"", b" ", b"a b", b"x" * 256, b"\x00", b"a/b", b"r.*>", b"\xed\xa0\xbd\xed\xb8\x80"]
# a lone surrogate, stray bytes, a cut sequence, a 4-byte UTF-8 sequence (not modified UTF-8)
BAD_TOPIC_BYTES = [b"\xed\xa0\x80", b"\xff", b"\xc0", b"\xe0\x80", "\U0001F600".encode()[:3], "\U0001F600".encode()]
LOW_ORDER_POINTS = [bytes(32), b"\x01" + bytes(31), b"\xff" * 32,
                    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")]
# mails a stranger authenticates (its own key, to the enclave's) that no reader may accept: (kind, craft options)
MALFORMED = [
    ("no terminator", dict(plaintexts=[data_packet(struct.pack(">I", 0) + b"x")])),
    ("nothing but the terminator", dict(plaintexts=[TERMINATOR])),
    ("an empty plaintext", dict(plaintexts=[b"", TERMINATOR])),
    ("a one-byte plaintext", dict(plaintexts=[b"\x00", TERMINATOR])),
    ("more user bytes than payload", dict(plaintexts=[b"abc" + struct.pack(">H", 9), TERMINATOR])),
    ("no private-header length", dict(plaintexts=[data_packet(b"ab"), TERMINATOR])),
    ("a negative private-header length", dict(plaintexts=[data_packet(b"\xff\xff\xff\xffbody"), TERMINATOR])),
    ("a private header longer than the mail", dict(plaintexts=[data_packet(b"\x00\x00\x10\x00ab"), TERMINATOR])),
    ("a private-header length of 2**31-1", dict(plaintexts=[data_packet(b"\x7f\xff\xff\xffab"), TERMINATOR])),
    ("the terminator twice, nothing before", dict(plaintexts=[TERMINATOR, TERMINATOR])),
    ("a packet after a missing terminator", dict(plaintexts=[data_packet(b"\x00\x00\x00\x00x")] * 3)),
    ("low-order static key", dict(sender_public=bytes(32))),
    ("a static key of all ones", dict(sender_public=b"\xff" * 32)),
    ("protocol 2", dict(head=prologue(protocol=2))),
    ("protocol 255", dict(head=prologue(protocol=255))),
    ("protocol 0 with a 97-byte handshake", dict(head=prologue(protocol=0))),
    ("a prologue of 3 bytes", dict(head=b"\x01\x00\x00")),
    ("an empty prologue", dict(head=b"")),
    ("unknown key derivation 02", dict(head=prologue(key_derivation=b"\x02"))),
    ("unknown key derivation ff", dict(head=prologue(key_derivation=b"\xff\x00"))),
    ("a KDS key derivation cut short", dict(head=prologue(key_derivation=b"\x01\x00\x00\x00\x09ab"))),
    ("a KDS spec with a negative length", dict(head=prologue(key_derivation=b"\x01\xff\xff\xff\xff" + b"x" * 20))),
    ("a KDS spec of master key type 9", dict(head=prologue(key_derivation=kds_spec(b"k", 9, b"C:x")))),
    ("a KDS spec that is not UTF-8", dict(head=prologue(key_derivation=kds_spec(b"\xff\xfe", 0, b"C:x")))),
] + [(f"topic bytes {raw!r}", dict(head=prologue(topic=raw))) for raw in BAD_TOPIC_BYTES]
# mails Conclave's reader accepts, odd as they are (conclave-wire.md §2-5, §12.6)
ODD_BUT_VALID = [
    ("bytes after the terminator", dict(after=b"trailing bytes")),
    ("a whole second mail after the terminator", dict(after=b"\x00\x17" + b"\x00" * 200)),
    ("a non-zero handshake payload", dict(payload=b"\x7f")),
    ("a private header from a client", dict(plaintexts=[data_packet(b"\x00\x00\x00\x03abcbody"), TERMINATOR])),
    ("the private-header length split over packets", dict(plaintexts=[
        data_packet(b"\x00\x00"), data_packet(b"\x00\x00body"), TERMINATOR])),
    ("padding-only packets", dict(plaintexts=[data_packet(b"", 1), data_packet(b"", 40),
                                              data_packet(b"\x00\x00\x00\x00pad", 10), data_packet(b"", 3),
                                              TERMINATOR])),
    ("prologue extension bytes", dict(head=prologue(extension=b"\x00future"))),
    ("a topic of NUL in modified UTF-8", dict(head=prologue(topic=b"\xc0\x80"))),
    ("an envelope", dict(head=prologue(envelope=os.urandom(500)))),
    ("no key derivation header", dict(head=prologue(key_derivation=b""))),
    ("Conclave 1.2's 18-byte key derivation", dict(head=prologue(key_derivation=bytes(range(18))))),
]
KDS_SPECS = [kds_spec(b"shared", 0, b"C:" + b"a" * 64 + b" SEC:INSECURE"), kds_spec(b"x" * 1000, 1, b"S:0 PROD:1"),
             kds_spec("\u00fc".encode(), 0, b"")]
FIRST_NUMBERS = [1, 2 ** 63 - 1, -1, -2 ** 63]
ACCEPTED = frozenset({OK, EE})         # EE: the relay refuses (room full, text too long, an odd topic)


@dataclasses.dataclass
class Watched:
    """Clients whose state the suite must not change: alice sent 0..k on `room`; bob's messages wait
    in her mailbox and hers in his; `next_mail` is alice's k+1, written before the suite, sent after it."""

    alice: Client
    bob: Client
    room: str
    sent: list[bytes]                   # alice's mails 0..k, as delivered
    others: list[bytes]                 # bob's, and strangers' mails already delivered
    next_mail: bytes
    queued_for_alice: list[bytes]       # the texts bob sent her (queued, in order)
    queued_for_bob: list[bytes]
    secrets: list[str]


class MailCases:
    """The bodies of focused /deliver-mail requests: (kind, body, expect, opener)."""

    def __init__(self, enclave_key: bytes, watched: Watched) -> None:
        self.key, self.watched = enclave_key, watched

    def fresh(self, kind: str, expect: frozenset, **options: Any) -> tuple[str, bytes, frozenset, bytes | None]:
        mail, sender = craft(self.key, **options)
        return kind, mail, expect, sender

    def protocol0(self, body: bytes) -> tuple[str, bytes, frozenset, bytes | None]:
        """Protocol 0 (SENDER_KEY_TRANSMITTED): a 96-byte handshake, an empty payload, no private header."""
        mail, sender = craft(self.key, head=prologue(protocol=0), payload=b"",
                             plaintexts=[data_packet(body), TERMINATOR])
        return "protocol 0", mail, ACCEPTED, sender

    def to_wrong_key(self, body: bytes) -> tuple[str, bytes, frozenset, bytes | None]:
        mail, sender = craft(wire.x25519_public(os.urandom(32)), body=body)
        return "to another key", mail, frozenset({MD}), sender

    def alice_gap(self, number: int, topic: str) -> tuple[str, bytes, frozenset, bytes | None]:
        w = self.watched
        if topic == w.room and number == len(w.sent):
            number = len(w.sent) + 2             # never alice's k+1 (only after the suite)
        if topic != w.room and number == 0:
            number = 1                           # never a first mail of alice's on another topic
        return "alice out of order", w.alice.mail(b"gap", topic=topic, sequence=number), frozenset({EE}), None

    def gaps(self) -> list[int]:
        k = len(self.watched.sent) - 1
        return [k + 2, k + 6, 2 ** 63 - 1, -1, -2 ** 63, 0, k]

    def strategy(self) -> st.SearchStrategy[tuple[str, bytes, frozenset, bytes | None]]:
        w = self.watched
        bodies = mostly([b""], [b"hi", b"\xff\xfe", b'{"x": 1}', b"t" * 16 * 1024, b"t" * (16 * 1024 + 1)], 1)
        topics = mostly(HOSTILE_TOPICS, ODD_TOPICS)
        heads = st.builds(lambda topic, kd, envelope, extension: prologue(topic=topic, key_derivation=kd,
                                                                          envelope=envelope, extension=extension),
                          topics, mostly([b"\x00"], [b"", b"\x00" * 18, b"\x07" * 18]),
                          mostly([b""], [b"env", os.urandom(300)]), mostly([b""], [b"\x00ext", b"\xff" * 40]))

        def splits(body: bytes, cuts: list[int], padding: int, pads: int) -> tuple:
            user = struct.pack(">I", 0) + body
            edges = sorted({0, len(user), *[min(c, len(user)) for c in cuts]})
            pieces = [user[a:b] for a, b in zip(edges, edges[1:]) if b > a]
            plain = [data_packet(piece, padding) for piece in pieces]
            plain += [data_packet(b"", 1 + n) for n in range(pads)]        # padding-only packets
            return self.fresh("split into packets", ACCEPTED, plaintexts=plain + [TERMINATOR])

        sources = st.sampled_from([w.next_mail, *w.sent, *w.others])
        fresh = st.builds(lambda head, body: self.fresh("fresh", ACCEPTED, head=head, body=body), heads, bodies)
        return choose(
            fresh, fresh,
            st.builds(splits, bodies, st.lists(st.integers(0, 40), max_size=4), st.integers(0, 30),
                      st.integers(0, 2)),
            st.builds(lambda case: self.fresh(case[0], ACCEPTED, **case[1]), st.sampled_from(ODD_BUT_VALID)),
            st.builds(self.protocol0, bodies),
            st.builds(flipped, sources, st.integers(0, 10 ** 6), st.integers(1, 255)),
            st.builds(flipped, sources, st.integers(0, 10 ** 6), st.integers(1, 255)),
            st.builds(truncated, sources, st.integers(0, 10 ** 6)),
            st.builds(low_order, sources, st.sampled_from(LOW_ORDER_POINTS)),
            st.builds(lambda mail: ("replayed", mail, frozenset({EE}), None), st.sampled_from([*w.sent, *w.others])),
            st.builds(self.alice_gap, st.sampled_from(self.gaps()),
                      st.sampled_from([w.room, w.room, "default", "other"])),
            st.builds(lambda case: self.fresh(case[0], frozenset({MD}), **case[1]), st.sampled_from(MALFORMED)),
            st.builds(lambda kd, body: self.fresh("a KDS key derivation (no KDS here)", frozenset({EE}),
                                                  head=prologue(key_derivation=kd), body=body),
                      st.sampled_from(KDS_SPECS), bodies),
            st.builds(lambda sequence, body: self.fresh("a first mail not numbered 0", frozenset({EE}),
                                                        head=prologue(sequence=sequence), body=body),
                      st.sampled_from(FIRST_NUMBERS), bodies),
            st.builds(self.to_wrong_key, bodies),
            st.builds(lambda body: ("not a mail", body, frozenset({MD}), None), common_bodies),
            st.builds(lambda body: self.fresh("over the body limit", frozenset(), body=body),
                      st.sampled_from([b"b" * HOST_MAIL_LIMIT, b"b" * 3 * HOST_MAIL_LIMIT])),
        )

    def explicit(self) -> list[tuple[str, bytes, frozenset, bytes | None]]:
        """Each named case once, whatever the draw: every malformed and odd-but-valid shape, each
        region of alice's next mail flipped and cut, every replay and gap."""
        w = self.watched
        made = [self.fresh(kind, frozenset({MD}), **options) for kind, options in MALFORMED]
        made += [self.fresh(kind, ACCEPTED, **options) for kind, options in ODD_BUT_VALID]
        made += [self.fresh(f"topic {topic!r}", ACCEPTED, head=prologue(topic=topic), body=b"x")
                 for topic in HOSTILE_TOPICS + ODD_TOPICS]
        made += [self.protocol0(b""), self.protocol0(b"hello"), self.to_wrong_key(b"x")]
        made += [self.fresh("a KDS key derivation (no KDS here)", frozenset({EE}), head=prologue(key_derivation=kd))
                 for kd in KDS_SPECS]
        made += [self.fresh("a first mail not numbered 0", frozenset({EE}), head=prologue(sequence=n))
                 for n in FIRST_NUMBERS]
        mail = w.next_mail
        for at in regions(mail):
            made += [flipped(mail, at, 0x01), flipped(mail, at, 0x80), truncated(mail, at)]
        made += [low_order(mail, point) for point in LOW_ORDER_POINTS]
        made += [("replayed", sent, frozenset({EE}), None) for sent in [*w.sent, *w.others]]
        made += [self.alice_gap(n, w.room) for n in self.gaps()] + [self.alice_gap(1, "default")]
        made += [("not a mail", body, frozenset({MD}), None) for body in (b"", b"\x00", b"\x00\x00", b"EII", b"{}")]
        return made


def flipped(source: bytes, at: int, mask: int) -> tuple[str, bytes, frozenset, None]:
    data = bytearray(source)
    data[at % len(data)] ^= mask
    return "one byte flipped", bytes(data), frozenset({MD}), None


def truncated(source: bytes, at: int) -> tuple[str, bytes, frozenset, None]:
    return "truncated", source[:at % len(source)], frozenset({MD}), None


def low_order(source: bytes, point: bytes) -> tuple[str, bytes, frozenset, None]:
    (length,) = struct.unpack_from(">H", source)
    at = 2 + length                      # the ephemeral key
    return "a low-order or non-canonical ephemeral key", source[:at] + point + source[at + 32:], frozenset({MD}), None


def regions(mail: bytes) -> list[int]:
    """A byte in each part of a one-packet mail: the prologue's length, protocol, sequence, topic,
    key derivation; the ephemeral key, sealed static key and payload; the packet's length, body and
    tag; the terminator's length and tag."""
    (length,) = struct.unpack_from(">H", mail)
    hs = 2 + length
    packet = hs + 97
    (packet_length,) = struct.unpack_from(">H", mail, packet)
    terminator = packet + 2 + packet_length
    return [0, 1, 2, 3, 10, 12, 2 + length - 1, hs, hs + 31, hs + 32, hs + 70, hs + 80, hs + 96, packet, packet + 1,
            packet + 2, packet + 2 + packet_length - 1, terminator, terminator + 1, terminator + 2, len(mail) - 1]


# -- the host's requests ----------------------------------------------------------------------------

HOSTILE_HINTS = [f"hostile-{n}" for n in range(4)]
# (control characters aiohttp's client will not send go over the raw socket: RAW_HINTS)
ODD_HINTS = ["", " ", "\t", "x" * 1025, "x" * 2000, "\u00e9t\u00e9", "\u65e5\u672c", "\U0001F600", "a\u0085b",
             "\u00a0"]
# decimal seconds, ASCII digits only (short: a poll of an empty mailbox sleeps that long)
GOOD_WAITS = ["0", "0.0", " 0.02 ", "0.001", "00.05"]
BAD_WAITS = ["-1", "-0.001", "-0", "+0.01", "0e0", "1e-3", "1_0", "NaN", "nan", "inf", "-inf", "1e999", "31",
             "30.0001", "9999", "1e2", "abc", "0x10", "1,5", "\u0661\u0660\u0660", "1 2", "--1", "0.5s", ".5", "5."]


def hints() -> st.SearchStrategy[str | None]:
    """Correlation-IDs, never a watched client's: mostly accepted ones (the hostile senders' few, so
    that their polls find mail; UUIDs; any printable ASCII; the longest), else odd ones."""
    valid = st.sampled_from(HOSTILE_HINTS) | st.uuids().map(str) | st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60) | st.just("x" * 1024)
    return st.sampled_from(range(4)).flatmap(lambda n: valid if n else st.sampled_from([None, *ODD_HINTS]))


def extra_headers() -> st.SearchStrategy[dict[str, str]]:
    """The special headers of tests/hostile.py without Authorization (no credential here), Content-Types
    a Conclave client might send, and now and then a few random headers."""
    special = st.builds(lambda h, odd: {k: v for k, v in h.items() if odd or k not in ("Content-Encoding", "Expect")},
                        special_headers(None, auth=False), rarely())   # (a 415 or 417 now and then, not every 4th time)
    types = st.sampled_from([OCTETS, "application/json", "text/plain; charset=utf-8", "multipart/form-data",
                             "application/x-www-form-urlencoded", "", "*/*", "application/octet-stream; x=\u00e9"])
    extra = scripted(lambda script: script_headers(script, 3) if script.chance(4) else {}, 64)
    return st.builds(lambda s, ct, extra: {**extra, **s, **({"Content-Type": ct} if ct is not None else {})},
                     special, st.none() | types, extra)


def deliveries(watched: Watched, mails: MailCases) -> st.SearchStrategy[Case]:
    def build(mail: tuple, hint: str | None, alice_hint: bool, extra: dict, chunked: bool) -> Case:
        kind, body, expect, opener = mail
        if alice_hint and OK not in expect:     # a mail no one can have accepted may go to any id
            hint = watched.alice.correlation_id
        headers = dict(extra)
        if hint is not None:
            headers["Correlation-ID"] = hint
        return Case("POST", "/deliver-mail", headers, body, chunked, kind=kind, expect=expect, opener=opener,
                    hint=hint)

    return st.builds(build, mails.strategy(), hints(), rarely(), extra_headers(), rarely())


def polls(watched: Watched) -> st.SearchStrategy[Case]:
    def build(hint: str | None, wait: str | None, alice: bool, bad_wait: str, extra: dict, body: bytes,
              method: str) -> Case:
        if alice:                              # alice's and bob's mailboxes: only polls refused before the take
            hint, wait = watched.alice.correlation_id if len(body) % 2 else watched.bob.correlation_id, bad_wait
        headers = dict(extra)
        if hint is not None:
            headers["Correlation-ID"] = hint
        if wait is not None:
            headers["Teebus-Poll-Wait"] = wait
        return Case(method, "/poll-mail", headers, body, kind="poll of a watched id" if alice else "poll",
                    expect=frozenset({OK}), hint=hint, wait=wait)

    waits = choose(st.none(), st.none(), st.sampled_from(GOOD_WAITS), st.sampled_from(BAD_WAITS))
    return st.builds(build, hints(), waits, rarely(), st.sampled_from(BAD_WAITS),
                     extra_headers(), mostly([b""], [b"ignored"]) | common_bodies,
                     mostly(["POST"], ["GET", "PUT", "HEAD", "DELETE"], 6))


def attestations() -> st.SearchStrategy[Case]:
    paths = mostly(["/attestation"], ["/attestation/", "/attestation?x=1", "/attest%61tion", "/ATTESTATION",
                                      "/attestation/x", "/attestation%00"])
    return st.builds(lambda method, path, extra, body: Case(method, path, extra, body, kind="attestation"),
                     mostly(["GET", "GET", "HEAD"], ["POST", "PUT", "DELETE", "OPTIONS"]), paths, extra_headers(),
                     mostly([b""], [b"x"]) | common_bodies)


RAW_HINTS = [b"a\r\nX-Injected: 1", b"a\rX-Injected: 1", b"a\nX-Injected: 1", b"a\r\n b", b"a\r\n\tb", b"",
             b" ", b"\xff\xfe", b"\xc3\xa9t\xc3\xa9", b"\xe9", b"a\x00b", b"a\x7fb", b"a\x1b[31mb", b"x" * 2000,
             b"x" * 1024, b"ok-raw", b"a\r\n\r\nGET /attestation HTTP/1.1\r\nHost: x"]


@st.composite
def raw_hint_requests(draw, watched: Watched, mails: MailCases) -> Case:
    """Over the raw socket: Correlation-IDs with CR, LF, NUL, DEL, non-UTF-8 bytes; twice; in a
    request whose body is a fresh mail (it may be accepted) or a tampered one."""
    path = draw(st.sampled_from([b"/deliver-mail", b"/deliver-mail", b"/poll-mail"]))
    value = draw(st.sampled_from(RAW_HINTS))
    kind, body, expect, opener = draw(mails.strategy())
    lines = [b"POST " + path + b" HTTP/1.1", b"Host: x", b"Correlation-ID: " + value]
    if draw(rarely()):
        lines.append(b"Correlation-ID: " + draw(st.sampled_from([b"second", b""])))
    if path == b"/poll-mail":
        lines.append(b"Teebus-Poll-Wait: " + draw(st.sampled_from([b"0", b"-1", b"1e999", b"\xff", b"0\r\n1"])))
    lines.append(b"Content-Type: " + draw(st.sampled_from([OCTETS.encode(), b"\xff/\xfe", b"a\rb"])))
    lines.append(b"Content-Length: %d" % len(body))
    data = b"\r\n".join(lines) + b"\r\n\r\n" + body
    return Case("RAW", "", {}, b"", raw=data, kind=f"raw Correlation-ID ({kind})", expect=expect, opener=opener,
                pieces=3 if draw(rarely()) else 1)


def with_hint(requests: st.SearchStrategy[Hostile]) -> st.SearchStrategy[Hostile]:
    """Random requests, half of those aiohttp sends given a (random, never a watched) Correlation-ID."""
    def add(request: Hostile, hint: str | None) -> Hostile:
        if request.raw is None and hint is not None:
            request.headers = {**request.headers, "Correlation-ID": hint}
        return request

    return st.builds(add, requests, st.none() | hints())


def raw_request(path: bytes, lines: list[bytes], body: bytes) -> bytes:
    head = [b"POST " + path + b" HTTP/1.1", b"Host: x", *lines, b"Content-Length: %d" % len(body)]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


CONTENT_TYPES = [OCTETS, "application/json", "text/plain; charset=utf-8", "multipart/form-data; boundary=x",
                 "application/x-www-form-urlencoded", "", "*/*", "application/octet-stream; charset=\u00e9",
                 "x" * 2000]


def host_explicit(watched: Watched, mails: MailCases) -> list[Hostile]:
    """The focused requests each run once before the generated ones (hypothesis's explicit examples)."""
    alice, bob = watched.alice.correlation_id, watched.bob.correlation_id
    cases: list[Hostile] = []

    def deliver(kind: str, body: bytes, expect: frozenset, opener: bytes | None, hint: str | None,
                **headers: str) -> None:
        sent = {"Content-Type": OCTETS, **headers}
        if hint is not None:
            sent["Correlation-ID"] = hint
        cases.append(Case("POST", "/deliver-mail", sent, body, kind=kind, expect=expect, opener=opener, hint=hint))

    for n, (kind, body, expect, opener) in enumerate(mails.explicit()):
        # a mail no one may accept goes to alice's or bob's Correlation-ID now and then: nothing may reach them
        hint = (alice, bob, None)[n % 3] if OK not in expect else None
        deliver(kind, body, expect, opener, hint or str(uuid.uuid4()))

    def fresh() -> tuple[str, bytes, frozenset, bytes | None]:
        return mails.fresh("fresh", ACCEPTED, body=b"")

    for hint in [*ODD_HINTS, None, "x" * 1024, "x" * 1025, "  padded  ", "a b", "*", ">", "a.b", "$JS.API.>"]:
        deliver(f"Correlation-ID {hint!r:.20}", *fresh()[1:], hint)
    for content_type in CONTENT_TYPES:
        deliver(f"Content-Type {content_type!r:.20}", *fresh()[1:], str(uuid.uuid4()),
                **{"Content-Type": content_type})
    for encoding in ("identity", "", "gzip", "br", "x"):
        deliver(f"Content-Encoding {encoding!r}", *fresh()[1:], str(uuid.uuid4()), **{"Content-Encoding": encoding})
    big, _ = craft(mails.key, body=b"b" * HOST_MAIL_LIMIT)
    deliver("over the body limit", big, frozenset(), None, str(uuid.uuid4()))
    cases.append(Case("POST", "/deliver-mail", {"Correlation-ID": "chunked"}, big, True,
                      kind="over the limit, chunked"))
    for expect_header in ([], [b"Expect: 100-continue"]):
        huge = raw_request(b"/deliver-mail", [b"Correlation-ID: big", *expect_header], b"")
        cases.append(Case("RAW", "", {}, b"", raw=huge.replace(b"Content-Length: 0", b"Content-Length: 1000000000"),
                          kind="a declared length of 1 GB", await_continue=bool(expect_header)))
    for value in RAW_HINTS:
        _, mail, expect, opener = fresh()
        cases.append(Case("RAW", "", {}, b"", raw=raw_request(b"/deliver-mail", [b"Correlation-ID: " + value], mail),
                          kind=f"raw Correlation-ID {value[:12]!r}", expect=expect, opener=opener))
        cases.append(Case("RAW", "", {}, b"", raw=raw_request(b"/poll-mail", [b"Correlation-ID: " + value], b""),
                          kind=f"raw poll Correlation-ID {value[:12]!r}"))
    for hint in (alice, bob):                 # polls of the watched ids, refused before the take
        for wait in BAD_WAITS:
            cases.append(Case("POST", "/poll-mail", {"Correlation-ID": hint, "Teebus-Poll-Wait": wait}, b"",
                              kind="poll of a watched id", hint=hint, wait=wait))
        for method in ("GET", "PUT", "DELETE", "HEAD"):
            cases.append(Case(method, "/poll-mail", {"Correlation-ID": hint}, b"", kind="poll of a watched id",
                              hint=hint))
    for wait in [*GOOD_WAITS, ""]:
        cases.append(Case("POST", "/poll-mail", {"Correlation-ID": HOSTILE_HINTS[0], "Teebus-Poll-Wait": wait}, b"",
                          kind="poll", hint=HOSTILE_HINTS[0], wait=wait))
    for method, path, body in [("GET", "/attestation", b""), ("HEAD", "/attestation", b""),
                               ("GET", "/attestation", b"x" * 100), ("GET", "/attestation/", b""),
                               ("POST", "/attestation", b""), ("GET", "/deliver-mail", b""), ("GET", "/", b"")]:
        cases.append(Case(method, path, {}, body, kind="attestation"))
    return cases


# -- the host's answers -----------------------------------------------------------------------------

def host_checker(eii: bytes, enclave_key: bytes, watched: Watched,
                 shapes: Counter) -> Callable[[Hostile, Answer], None]:
    protected = {watched.alice.correlation_id, watched.bob.correlation_id}

    def check(request: Hostile, answer: Answer) -> None:
        method, path = target(request)
        case = request if isinstance(request, Case) else None
        assert answer.status < 500 or answer.status == 503, (request, answer)
        assert answer.headers.get("cache-control") == NO_CACHE, ("no Cache-Control", request, answer)
        if method == "HEAD":
            shapes[f"{answer.status} (HEAD)"] += 1
            return
        if answer.status == 200:
            assert answer.content_type == OCTETS, (request, answer)
            if path == "/attestation" and method == "GET":
                assert answer.body == eii, ("the attestation changed", request, answer)
            elif answer.body != eii:                 # (only an attestation is the EII: a path routed there)
                assert not answer.body or _looks_like_mail(answer.body), (request, answer)
            if path == "/deliver-mail":
                assert answer.body, ("the relay answers every accepted mail", request, answer)
                if case is not None and case.opener is not None:
                    reply = wire.read_mail(answer.body, case.opener)
                    assert reply.sender == enclave_key and set(orjson.loads(reply.body)) == {"members"}, \
                        (request, reply)
            if path == "/poll-mail" and case is not None:
                assert case.hint not in protected, ("a watched mailbox was polled", request, answer)
            kind = "200 " + path + (" (empty)" if not answer.body else "")
        else:
            assert answer.content_type == "application/json", (request, answer)
            body = orjson.loads(answer.body)
            assert isinstance(body, dict), (request, answer)
            if body.get("error") in (MD, EE) and "timestamp" not in body:
                assert answer.status == 400 and set(body) == {"error", "message"}, (request, answer)
                if body["error"] == MD:
                    assert body["message"] is None, (request, answer)
                else:
                    assert isinstance(body["message"], str) and body["message"], (request, answer)
                kind = body["error"]
            else:
                assert set(body) == SPRING_FIELDS, (request, answer)
                assert body["status"] == answer.status and body["error"] == HTTPStatus(answer.status).phrase, \
                    (request, answer)
                assert isinstance(body["message"], str) and body["message"], (request, answer)
                assert isinstance(body["timestamp"], str) and body["timestamp"][:2] == "20", (request, answer)
                if answer.status == 503:
                    assert any(text in body["message"] for text in DOCUMENTED_503), ("an undocumented 503", request,
                                                                                    answer)
                kind = f"{answer.status} Spring"
        shapes[kind] += 1
        if case is None:
            return
        shapes[f"case: {case.kind}"] += 1
        if method == "POST" and path == "/deliver-mail" and reachable(case, HOST_MAIL_LIMIT):
            if hint_accepted(case.hint):
                outcome = OK if answer.status == 200 else kind
                assert outcome in case.expect, (f"{case.kind}: {outcome}, expected one of {sorted(case.expect)}",
                                                request, answer)
            else:
                assert kind == "400 Spring" and "Correlation-ID" in orjson.loads(answer.body)["message"], \
                    (request, answer)
        if method == "POST" and path == "/poll-mail" and reachable(case, HOST_MAIL_LIMIT):
            if not hint_accepted(case.hint):
                assert kind == "400 Spring", (request, answer)
            elif case.wait is not None and case.wait in BAD_WAITS:
                assert kind == "400 Spring" and "poll wait" in orjson.loads(answer.body)["message"], (request, answer)
            elif case.wait is None or case.wait in GOOD_WAITS:
                assert answer.status == 200, (request, answer)

    return check


def _looks_like_mail(data: bytes) -> bool:
    """An answer that is mail from the enclave: a readable prologue of protocol 1, then at least the
    handshake and a terminator."""
    if len(data) < 2:
        return False
    (length,) = struct.unpack_from(">H", data)
    return length >= 11 and data[2] == 1 and len(data) >= 2 + length + 97 + 20


async def watched_clients(host, session) -> Watched:
    alice, bob = await client_of(host, session), await client_of(host, session)
    room = f"watched{uuid.uuid4().hex[:12]}"
    marker = f"alice-plaintext-{uuid.uuid4().hex}"
    sent, others = [], []

    async def send(client: Client, text: bytes, into: list[bytes], topic: str = room) -> Any:
        mail = client.mail(text, topic=topic)
        status, body = await client.deliver(mail)
        assert status == 200, body
        into.append(mail)
        return client.open(body)

    await send(alice, b"", sent)                                     # alice's 0: she joins
    await send(bob, b"", others)                                     # bob joins
    to_bob = [f"{marker} {n}".encode() for n in range(2)]
    for text in to_bob:                                              # alice's 1, 2: queued for bob
        await send(alice, text, sent)
    to_alice = [f"bob to alice {n}".encode() for n in range(3)]
    for text in to_alice:                                            # queued for alice
        await send(bob, text, others)
    for _ in range(2):                                               # strangers' mails, for replays
        stranger = await client_of(host, session)
        await send(stranger, b"", others, topic="strangers")
    next_mail = alice.mail(b"after the suite", topic=room)          # alice's k+1, sent after the suite
    enclave = host.parts[0]
    secret = enclave.state.secret
    token = (host.data_dir / INTERNAL_TOKEN_FILE).read_text().strip()
    secrets = [marker, "after the suite", token]
    for raw in (alice.private, bob.private, secret):
        secrets += [raw.hex(), raw.hex().upper(), base64.b64encode(raw).decode()]
    return Watched(alice, bob, room, sent, others, next_mail, to_alice, to_bob, secrets)


async def assert_unchanged(watched: Watched) -> None:
    """The mail queued before the suite, exactly and in order; then alice's k+1 is accepted with the
    right reply (neither her watermark nor her reply counter moved)."""
    alice, bob, k = watched.alice, watched.bob, len(watched.sent) - 1
    known = alice.enclave_key
    assert (await alice.attest()).encryption_key == known
    got = []
    while (mail := await alice.poll()) is not None:
        got.append(mail)
    assert [orjson.loads(m.body)["text"].encode() for m in got] == watched.queued_for_alice
    assert [m.sequence for m in got] == [k + 1 + n for n in range(len(watched.queued_for_alice))]
    assert all(m.topic == watched.room for m in got)
    for_bob = []
    while (mail := await bob.poll()) is not None:
        for_bob.append(orjson.loads(mail.body)["text"].encode())
    assert for_bob == watched.queued_for_bob
    status, body = await alice.deliver(watched.next_mail)
    assert status == 200, body
    reply = alice.open(body)
    assert orjson.loads(reply.body) == {"members": 2}
    assert reply.sequence == k + 1 + len(watched.queued_for_alice) and reply.topic == watched.room


def assert_clean_logs(logs: str, caplog, secrets: list[str]) -> Counter:
    """No traceback, no failed handler, no secret (named, never printed); the levels, counted."""
    lines = [orjson.loads(line) for line in logs.splitlines() if line.startswith("{")]
    failed = [f"{line.get('event')} ({line.get('component', line.get('logger', '?'))})" for line in lines
              if line.get("event") in ("handler failed", "adapter failed", "http connection failed")
              or "exception" in line]
    assert not failed, f"failures logged: {failed[:5]}"
    assert_quiet_logs(logs, caplog)
    leaked = [n for n, secret in enumerate(secrets) if secret in logs]
    assert not leaked, f"secrets number {leaked} (of {len(secrets)}) are in the logs"
    return Counter(line.get("level", "?") for line in lines)


async def test_hostile_suite_against_the_conclave_host(conclave, session, captured_logs, caplog):
    host = await conclave("relay", max_mail_bytes=HOST_MAIL_LIMIT)
    watched = await watched_clients(host, session)
    async with session.get(host.url + "/attestation") as response:
        eii = await response.read()
    enclave_key = watched.alice.enclave_key
    mails = MailCases(enclave_key, watched)
    strategy = choose(
        deliveries(watched, mails), deliveries(watched, mails), deliveries(watched, mails),
        deliveries(watched, mails),
        polls(watched), polls(watched),
        attestations(),
        raw_hint_requests(watched, mails),
        with_hint(hostile_requests(random_paths(HOST_PATHS), None, common_bodies)),
        with_hint(hostile_requests(random_paths(HOST_PATHS), None, common_bodies)))
    shapes: Counter = Counter()
    port = int(host.url.rsplit(":", 1)[1])
    state = Path(host.config.sealed_state_file)
    state_before, started = state.stat().st_size, time.monotonic()
    explicit = tuple(host_explicit(watched, mails))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        tally = await run_in_thread("Conclave web host (8080)", HOST_REQUESTS, strategy,
                                    lambda request: send(http, host.url, port, request),
                                    host_checker(eii, enclave_key, watched, shapes), explicit)
    print_shapes(shapes, len(explicit))
    assert tally["requests"] >= HOST_REQUESTS and not [s for s in tally if isinstance(s, int) and s >= 500
                                                       and s != 503], tally
    no_answers_are_rare(tally)
    async with session.get(host.url + "/attestation") as response:
        assert await response.read() == eii
    await assert_unchanged(watched)
    await asyncio.sleep(0.2)
    levels = assert_clean_logs(captured_logs(), caplog, watched.secrets)
    print(f"log lines by level: {dict(levels)}; sealed state {state_before} -> {state.stat().st_size} bytes; "
          f"{time.monotonic() - started:.1f} s")


def print_shapes(shapes: Counter, explicit: int) -> None:
    """The answers by shape, and how many focused cases of how many kinds were sent."""
    kinds = {name: count for name, count in shapes.items() if name.startswith("case: ")}
    print(f"answers by shape: {dict(sorted((k, v) for k, v in shapes.items() if k not in kinds))}")
    print(f"focused requests: {sum(kinds.values())} of {len(kinds)} kinds ({explicit} of them explicit, each once)")


async def test_a_connection_over_the_host_sites_cap_is_refused_with_cache_control(conclave, connect_as, data_dir):
    """Every response of the web host carries `Cache-Control: no-store,no-cache,must-revalidate`,
    the 503 the runner writes by hand to a connection over a site's cap included (adapters/http/
    runner.py `_refusal` keeps the headers of the site's render_error)."""
    host = await conclave("relay")
    site = Site(HOST_SITE, free_port(), "adapter", host_routes(host.config), render_error, max_connections=2)
    server = HttpServer("127.0.0.1", data_dir)
    await server.start([site], {"adapter": Requester(await connect_as("adapter"))})
    held = []
    try:
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
            held.append(writer)
            writer.write(request_bytes("GET", "/attestation"))
            await writer.drain()
            answer = await read_response(reader)
            assert answer.status == 200 and answer.headers["cache-control"] == NO_CACHE
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        held.append(writer)
        refused = await read_response(reader)
        assert refused.status == 503 and set(orjson.loads(refused.body)) == SPRING_FIELDS
        assert refused.headers.get("cache-control") == NO_CACHE, refused.head
    finally:
        for writer in held:
            writer.close()
        await server.stop()


async def test_mail_to_a_kds_key_the_enclave_cannot_get_is_the_mails_fault(conclave, session, kds_url):
    """With --kds.url, a mail whose (unauthenticated) key-derivation header names a KDS key this
    enclave may not have — a policy it does not meet, a constraint that does not parse, a master key
    type the KDS lacks — is the mail's fault: 400 ENCLAVE_EXCEPTION, as without a KDS. A 503 would tell
    the client to try again, forever."""
    host = await conclave("relay", kds_url=kds_url, kds_connection_timeout_seconds=5)
    client = await client_of(host, session)
    answers = {}
    unmet = b"C:" + b"0" * 64 + b" SEC:INSECURE"
    for name, spec in [("a policy the enclave does not meet", kds_spec(b"n", 0, unmet)),
                       ("a constraint that does not parse", kds_spec(b"n", 0, b"junk")),
                       ("the cluster master key", kds_spec(b"n", 1, unmet))]:
        mail, _ = craft(client.enclave_key, head=prologue(key_derivation=spec), body=b"x")
        status, body = await client.deliver(mail)
        answers[name] = (status, orjson.loads(body).get("error"))
    assert all(answer == (400, "ENCLAVE_EXCEPTION") for answer in answers.values()), answers


async def test_hostile_kds_key_derivations_do_not_grow_the_enclave(conclave, session, kds_url):
    """The key-derivation header is read before the mail is authenticated: a stranger may name many
    keys its enclave may get (`C:<its code hash> SEC:INSECURE` under any name). The enclave fetches
    each to try it, but keeps only keys that opened a mail (at most KDS_KEYS_KEPT): N mails that do
    not open leave none."""
    host = await conclave("relay", kds_url=kds_url, kds_connection_timeout_seconds=5)
    client = await client_of(host, session)
    constraint = f"C:{(await client.attest()).code_hash.hex()} SEC:INSECURE".encode()
    sent, outcomes = 40, Counter()
    for n in range(sent):
        mail, _ = craft(client.enclave_key, head=prologue(key_derivation=kds_spec(b"stranger-%d" % n, 0, constraint)))
        status, body = await client.deliver(mail)
        outcomes[(status, orjson.loads(body).get("error") if status != 200 else None)] += 1
    assert outcomes == {(400, MD): sent}, outcomes          # none opens: they were encrypted to another key
    cached = len(host.parts[0].kds_keys)
    assert cached == 0, f"{sent} undecryptable mails left {cached} KDS keys cached in the enclave"


# -- the KDS --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Measured:
    """What an EII the suite made says about its enclave (read from how it was made, not parsed)."""

    code_hash: bytes
    signer: bytes
    product_id: int
    release: bool
    secret: bytes                       # its encryption key's private half: opens the released key


@dataclasses.dataclass
class KdsWorld:
    eiis: dict[bytes, Measured]         # every well-formed EII the suite sends, Mock, DCAP and EPID
    mock: list[bytes]                   # the Mock ones (mangled further by the strategies)
    broken: dict[str, bytes]            # hardware EIIs that must not parse (kind -> bytes)
    met: list[str]                      # constraints some of the EIIs meet
    odd: list[Any]                      # constraints (and non-strings) that are refused or met by none

    def measured(self, eii: bytes) -> Measured | None:
        """The facts of `eii`, or of the EII it is with bytes after it (which a reader ignores)."""
        for known, facts in self.eiis.items():
            if eii == known or (eii.startswith(known) and known[:3] == b"EII"):
                return facts
        return None


SPKI_ED25519 = bytes.fromhex("302a300506032b6570032100")


def report_body(code_hash: bytes, signer: bytes, product_id: int, flags: int, binding: bytes) -> bytes:
    """conclave-wire.md §11: the 384-byte SGX report body, little-endian fields."""
    body = bytearray(384)
    struct.pack_into("<Q", body, 48, flags)
    body[64:96], body[128:160] = code_hash, signer
    struct.pack_into("<HH", body, 256, product_id, 1)          # isvSvn 1: revocation level 0
    body[320:384] = binding
    return bytes(body)


def make_eii(secret: bytes, kind: int, code_hash: bytes, signer: bytes, product_id: int, *, flags: int = 0x2,
             epid_report: dict | bytes | None = None, simulation: bool = False) -> bytes:
    """An EnclaveInstanceInfo (§11) of type `kind` (0 EPID, 1 DCAP, 2 Mock) for the keys of `secret`,
    its report data binding them. `epid_report` replaces the IAS report of an EPID one."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    signing = SPKI_ED25519 + Ed25519PrivateKey.from_private_bytes(secret).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)
    encryption = wire.x25519_public(secret)
    body = report_body(code_hash, signer, product_id, flags, hashlib.sha512(signing + encryption).digest())
    quote = struct.pack("<HH", 3, 2) + bytes(44) + body
    prefixed = lambda data: struct.pack(">i", len(data)) + data      # noqa: E731
    if kind == 2:
        attestation = struct.pack(">qi", int(time.time()), 0) + body + bytes([simulation])
    elif kind == 1:
        attestation = (quote + struct.pack("<I", 64) + os.urandom(64) + prefixed(b"3")
                       + b"".join(prefixed(os.urandom(20)) for _ in range(7)))
    else:
        report = {"version": 4, "isvEnclaveQuoteBody": base64.b64encode(quote).decode(), "id": "1",
                  "timestamp": "2024-01-02T03:04:05.678901", "isvEnclaveQuoteStatus": "OK"}
        raw = epid_report if isinstance(epid_report, bytes) else json.dumps(
            report if epid_report is None else {**report, **epid_report}).encode()
        attestation = prefixed(raw) + prefixed(os.urandom(256)) + prefixed(b"certificates")
    return (b"EII" + prefixed(signing) + prefixed(encryption) + bytes([kind]) + prefixed(attestation))


def kds_world() -> KdsWorld:
    eiis: dict[bytes, Measured] = {}
    mock = []
    for n in range(2):
        secret, code_hash, signer = os.urandom(32), hashlib.sha256(b"hostile %d" % n).digest(), bytes([n + 1]) * 32
        eii = make_eii(secret, 2, code_hash, signer, 7 + n, simulation=bool(n))
        eiis[eii] = Measured(code_hash, signer, 7 + n, False, secret)
        mock.append(eii)
    secret, code_hash, signer = os.urandom(32), hashlib.sha256(b"hardware").digest(), b"\x09" * 32
    for kind in (0, 1):                  # DEBUG (INSECURE, unverified) and RELEASE (no development key)
        for flags, release in ((0x2 | 0x1, False), (0x1, True)):
            eiis[make_eii(secret, kind, code_hash, signer, 9, flags=flags)] = Measured(code_hash, signer, 9, release,
                                                                                       secret)
    odd_reports = [("version 3", {"version": 3}), ("version '4'", {"version": "4"}),
                   ("quote not Base64", {"isvEnclaveQuoteBody": "!!"}),
                   ("quote of 431 bytes", {"isvEnclaveQuoteBody": base64.b64encode(bytes(431)).decode()}),
                   ("quote a list", {"isvEnclaveQuoteBody": [1]}), ("timestamp 0", {"timestamp": 0}),
                   ("timestamp junk", {"timestamp": "yesterday"}), ("no timestamp", {"timestamp": None}),
                   ("timestamp year 0", {"timestamp": "0000-01-01T00:00:00.0"}), ("a JSON array", b"[4]"),
                   ("not UTF-8", b"\xff\xfe{}"), ("nested 30000 deep", b"[" * 30_000), ("empty", b"")]
    broken = {f"EPID report {name}": make_eii(secret, 0, code_hash, signer, 9, epid_report=report)
              for name, report in odd_reports}
    broken["DCAP cut in its collateral"] = make_eii(secret, 1, code_hash, signer, 9)[:-30]
    broken["attestation type 3"] = make_eii(secret, 2, code_hash, signer, 9)[:49] + b"\x03" + \
        make_eii(secret, 2, code_hash, signer, 9)[50:]
    facts = list(eiis.values())
    h = facts[0].code_hash.hex()
    met = ([f"C:{m.code_hash.hex()} SEC:INSECURE" for m in facts[:3]]
           + [f"S:{m.signer.hex()} PROD:{m.product_id} SEC:INSECURE" for m in facts[:3]]
           + [f"C:{h.upper()} C:{facts[1].code_hash.hex()} SEC:INSECURE", f"C:{h}  SEC:INSECURE",
              f"C:{h} SEC:INSECURE EXPIRE:P1D", f"C:{h} C:{h} SEC:INSECURE"])
    odd = [f"C:{h}", f"C:{h} SEC:STALE", f"C:{h} SEC:SECURE", f"C:{h} SEC:insecure", f"C:{'0' * 64} SEC:INSECURE",
           f"S:{facts[0].signer.hex()} SEC:INSECURE", f"C:{h} PROD:7 SEC:INSECURE", f"C:{h} SEC:INSECURE EXPIRE:PT1H",
           f"C:{h} SEC:INSECURE EXPIRE:P-1D", f"C:{h} SEC:INSECURE EXPIRE:P2147483647Y",
           f"C:{h} SEC:INSECURE EXPIRE:P99999999999D", f"C:{h} SEC:INSECURE EXPIRE:P0D",
           f"C:{h} SEC:INSECURE REVOKE:5",
           f"C:{h} SEC:INSECURE REVOKE:-1", f"C:{h} SEC:INSECURE REVOKE:" + "9" * 5000,
           f"S:{'0' * 64} PROD:" + "\u0661" * 3 + " SEC:INSECURE", f"S:{'0' * 64} PROD:65536 SEC:INSECURE",
           f"C:{h}:x SEC:INSECURE", f"C:{h[:63]} SEC:INSECURE", f"C:{'g' * 64} SEC:INSECURE",
           f"C:{h * 2} SEC:INSECURE",
           "SEC:INSECURE", "C:", ":", "X:1", "", " ", "C:" + "a" * 8190, "x" * 8193, f"C:{h}\x00 SEC:INSECURE",
           f"C:{h} SEC:INSECURE\n", f"C:{h}\u00a0SEC:INSECURE", 7, None, [], {}, True]
    return KdsWorld(eiis, mock, broken, met, odd)


NAMES = ["hostile-key", "shared", "MasterKeyForTesting"]
ODD_NAMES = ["", " ", "x" * 255, "x" * 256, "x" * 60_000, "a\x00b", "a\nb", "\ud800", "\u00fc" * 200, "\U0001F600",
             "\u202e", 7, -1, 1.5, True, None, [], {}, ["shared"], {"name": "shared"}]
TYPES = ["development", "DEVELOPMENT", 0, " Development "]
ODD_TYPES = ["cluster", 1, "azure_hsm", "AZURE_HSM", 2, 3, -1, 2 ** 64, "dev", "", "0", 0.0, True, None, [], {},
             "development\x00", "d\u0131velopment", "DEVELOPMENT_"]
API_VERSIONS = [None, "", "2", "01", "1.0", "+1", "\uff11", "0", "-1", "1, 1", "one", "9" * 30]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def mangled(source: bytes, how: str, at: int, mask: int) -> str:
    data = bytearray(source)
    if how == "flip":
        data[at % len(data)] ^= mask
    elif how == "cut":
        data = data[:at % len(data)]
    elif how == "tail":
        data += bytes([mask]) * (1 + at % 50)
    elif how == "length":
        struct.pack_into(">i", data, 3, [0, -1, 2 ** 31 - 1, 45, 43][at % 5])
    return b64(bytes(data))


ENCODINGS = {"no padding": lambda text: text.rstrip("="), "spaces": lambda text: f"  {text}\n",
             "newlines": lambda text: "\n".join(text[i:i + 76] for i in range(0, len(text), 76)),
             "padding inside": lambda text: text[:8] + "=" + text[8:], "extra padding": lambda text: text + "==",
             "non-ASCII": lambda text: text[:10] + "\u00e9" + text[10:],
             "url-safe": lambda text: text.replace("+", "-").replace("/", "_") + "-_",
             "a NUL": lambda text: text[:10] + "\x00" + text[10:]}
ODD_REPORTS = ["", "=", "====", "!!", "EII", b64(b"EII"), b64(b"EII" + bytes(40)), b64(b"EI"), b64(os.urandom(600)),
               "A" * (kds_keys.MAX_ATTESTATION_BYTES * 4 // 3 + 8), 7, None, [], {}, True]


def eii_reports(world: KdsWorld) -> st.SearchStrategy[Any]:
    valid = [b64(eii) for eii in world.eiis]
    mock = st.sampled_from(world.mock)
    odd = st.one_of(
        st.builds(mangled, mock, st.sampled_from(["flip", "flip", "cut", "tail", "length"]), st.integers(0, 10 ** 5),
                  st.integers(1, 255)),
        st.builds(lambda eii, how: ENCODINGS[how](b64(eii)), mock, st.sampled_from(sorted(ENCODINGS))),
        st.sampled_from(ODD_REPORTS + [b64(eii) for eii in world.broken.values()]),
        st.binary(max_size=80).map(b64))
    return st.sampled_from(range(4)).flatmap(lambda n: st.sampled_from(valid) if n < 2 else odd)


def kds_fields(world: KdsWorld, private: bool) -> st.SearchStrategy[dict[str, Any]]:
    fields = {"name": mostly(NAMES, ODD_NAMES), "masterKeyType": mostly(TYPES, ODD_TYPES),
              "policyConstraint": mostly(world.met, world.odd, 2)}
    if private:
        fields["appAttestationReport"] = eii_reports(world)
    return st.fixed_dictionaries(fields)


def kds_bodies(world: KdsWorld, private: bool) -> st.SearchStrategy[bytes]:
    valid = kds_fields(world, private)
    extra = st.builds(lambda body, name, value: {**body, name: value}, valid,
                      st.sampled_from(["apiVersion", "API-VERSION", "kdsAttestationReport", "__proto__", "name "]),
                      json_values)
    odd = perturbed(valid)
    objects = choose(valid, valid, valid, odd, odd, extra)
    return choose(*[json_bytes(objects, b', "name": "twice"}')] * 6,
                  st.sampled_from([b"", b"null", b"[]", b'"x"', b"{}"]), common_bodies)


def kds_requests(world: KdsWorld) -> st.SearchStrategy[Case]:
    def build(path: str, method: str, body: bytes, version: str | None, extra: dict, chunked: bool) -> Case:
        headers = dict(extra)
        if version is not None:
            headers["API-VERSION"] = version
        return Case(method, path, headers, body, chunked, kind=f"{method} {path}")

    public = st.builds(build, st.just("/public"), mostly(["POST", "PUT"], ["GET", "DELETE", "HEAD"]),
                       kds_bodies(world, False), mostly(["1", "1", " 1 "], API_VERSIONS), extra_headers(), rarely())
    private = st.builds(build, st.just("/private"), mostly(["POST"], ["PUT", "GET"]), kds_bodies(world, True),
                        mostly(["1", "1", " 1 "], API_VERSIONS), extra_headers(), rarely())
    return choose(public, private, private)


RAW_VERSIONS = [b"1", b"1\r\nX-Injected: 1", b"1\rX: 1", b"1\nX: 1", b"\xff", b"1\x00", b"\xef\xbc\x91", b"1\r\n 1",
                b"", b"\t1\t"]


def raw_kds(path: bytes, version: bytes | None, body: bytes, twice: bytes | None = None) -> Case:
    lines = [b"POST " + path + b" HTTP/1.1", b"Host: x"]
    if version is not None:
        lines.append(b"API-VERSION: " + version)
    if twice is not None:
        lines.append(b"API-VERSION: " + twice)
    lines += [b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
    return Case("RAW", "", {}, b"", raw=b"\r\n".join(lines) + b"\r\n\r\n" + body, kind="raw API-VERSION")


@st.composite
def raw_kds_requests(draw, world: KdsWorld) -> Case:
    """Over the raw socket: API-VERSION with CR/LF, NUL, non-UTF-8 bytes, twice, or folded."""
    path = draw(st.sampled_from([b"/public", b"/private"]))
    return raw_kds(path, draw(st.sampled_from(RAW_VERSIONS)), draw(kds_bodies(world, path == b"/private")),
                   draw(st.sampled_from([b"2", b"1"])) if draw(rarely()) else None)


def kds_explicit(world: KdsWorld) -> list[Hostile]:
    """Each named case once: every odd name, master key type, constraint, attestation and API version."""
    facts = next(iter(world.eiis.values()))
    good = {"name": "shared", "masterKeyType": "development",
            "policyConstraint": f"C:{facts.code_hash.hex()} SEC:INSECURE"}
    report = b64(next(iter(world.eiis)))
    cases: list[Hostile] = []

    def post(path: str, body: Any, kind: str, version: str | None = "1", method: str = "POST") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **({"API-VERSION": version} if version is not None else {})}
        cases.append(Case(method, path, headers, data, kind=kind))

    for path, body in (("/public", good), ("/private", {**good, "appAttestationReport": report})):
        post(path, body, "valid")
        for field, values in (("name", ODD_NAMES), ("masterKeyType", ODD_TYPES), ("policyConstraint", world.odd)):
            for value in values:
                post(path, {**body, field: value}, f"odd {field}")
        for field in body:
            post(path, {k: v for k, v in body.items() if k != field}, f"no {field}")
            post(path, {**body, field: None}, f"{field} null")
        for unknown in ("apiVersion", "kdsAttestationReport", "publicKey", "x" * 1000, ""):
            post(path, {**body, unknown: "1"}, "an unknown field")
        for version in API_VERSIONS:
            post(path, body, f"API-VERSION {version!r:.12}", version)
        for value in RAW_VERSIONS:
            cases.append(raw_kds(path.encode(), value, json.dumps(body).encode()))
        cases.append(raw_kds(path.encode(), None, json.dumps(body).encode()))
        cases.append(raw_kds(path.encode(), b"1", json.dumps(body).encode(), twice=b"2"))
        for data in (b"", b"null", b"[]", b"{}", b"[" * 2000, json.dumps(body).encode() + b"x",
                     json.dumps(body).encode()[:-1] + b', "name": "twice"}', json.dumps({"": body}).encode()):
            post(path, data, "not the object")
        post(path, json.dumps({**body, "name": "n" * 70_000}).encode(), "over the body limit")
        for method in ("GET", "HEAD", "DELETE", "PATCH"):
            post(path, body, "another method", method=method)
    post("/public", good, "PUT /public", method="PUT")
    private = {**good, "appAttestationReport": report}
    for constraint in world.met:
        post("/public", {**good, "policyConstraint": constraint}, "a met constraint")
        for eii in world.eiis:
            post("/private", {**private, "policyConstraint": constraint, "appAttestationReport": b64(eii)},
                 "each EII, each met constraint")
    for kind, eii in world.broken.items():
        post("/private", {**private, "appAttestationReport": b64(eii)}, kind)
    for odd in ODD_REPORTS:
        post("/private", {**private, "appAttestationReport": odd}, "an odd attestation")
    for how, encode in ENCODINGS.items():
        post("/private", {**private, "appAttestationReport": encode(report)}, f"Base64 with {how}")
    source = world.mock[0]
    for at in (0, 2, 3, 6, 7, 50, 51, 52, 87, 88, 90, 92, 96, 100, 150, 300, 400, len(source) - 1):
        for how in ("flip", "cut"):
            post("/private", {**private, "appAttestationReport": mangled(source, how, at, 0x01)}, f"EII {how}")
    for at in range(5):
        post("/private", {**private, "appAttestationReport": mangled(source, "length", at, 0)}, "EII length")
    post("/private", {**private, "appAttestationReport": mangled(source, "tail", 10, 0xAB)}, "EII with a tail")
    return cases


def _b64(text: Any) -> bytes:
    assert isinstance(text, str) and text, text
    return base64.b64decode(text, validate=True)


def _sent_body(request: Hostile) -> Any:
    data = request.body if request.raw is None else request.raw.split(b"\r\n\r\n", 1)[1]
    return json.loads(data)


def _key_type(value: Any) -> int:
    """The master key type a 200 may have been given for: the development key only."""
    assert value in (0, "development", "DEVELOPMENT") or (isinstance(value, str) and value.strip().upper()
                                                          == "DEVELOPMENT"), value
    return 0


def _meets(constraint: str, facts: Measured) -> bool:
    """Whether an EII's measurement is named by the constraint (C:, or S: with its PROD:) with
    SEC:INSECURE, read independently of the KDS's parser."""
    tokens = [t for t in constraint.split(" ") if t]
    if "SEC:INSECURE" not in tokens:
        return False
    named = {t[2:].lower() for t in tokens if t.startswith("C:")}
    signers = {t[2:].lower() for t in tokens if t.startswith("S:")}
    product = {t[5:] for t in tokens if t.startswith("PROD:")}
    return facts.code_hash.hex() in named or (facts.signer.hex() in signers and str(facts.product_id) in product)


def kds_checker(kds_eii: bytes, world: KdsWorld, shapes: Counter) -> Callable[[Hostile, Answer], None]:
    kds = wire.read_eii(kds_eii)
    signing = load_der_public_key(kds.signing_key)
    assert isinstance(signing, Ed25519PublicKey)

    def check(request: Hostile, answer: Answer) -> None:
        method, path = target(request)
        assert answer.status < 500, (request, answer)
        if method == "HEAD":
            shapes[f"{answer.status} (HEAD)"] += 1
            return
        assert answer.content_type == "application/json", (request, answer)
        body = orjson.loads(answer.body)
        assert isinstance(body, dict), (request, answer)
        if answer.status != 200:
            assert set(body) == {"reason"} and isinstance(body["reason"], str) and body["reason"], (request, answer)
            shapes[f"{answer.status} reason"] += 1
            return
        sent = _sent_body(request)
        if request.raw is None:
            assert request.headers.get("API-VERSION", "").strip() == "1", (request, answer)
        name, constraint = sent["name"], sent["policyConstraint"]
        spec = (b"\x01" + struct.pack(">i", len(name.encode())) + name.encode()
                + bytes([_key_type(sent["masterKeyType"])]) + struct.pack(">i", len(constraint.encode()))
                + constraint.encode())
        if path == "/public":
            assert set(body) == {"publicKey", "signature", "kdsAttestationReport"}, (request, answer)
            public = _b64(body["publicKey"])
            assert len(public) == 44 and public.startswith(kds_keys.X25519_SPKI_PREFIX), (request, answer)
            signing.verify(_b64(body["signature"]), spec + struct.pack(">H", len(public)) + public)
            assert _b64(body["kdsAttestationReport"]) == kds_eii, (request, answer)
        else:
            assert set(body) == {"kdsAttestationReport", "encryptedPrivateKey"}, (request, answer)
            assert _b64(body["kdsAttestationReport"]) == kds_eii, (request, answer)
            report = sent["appAttestationReport"].strip()
            eii = base64.b64decode(report + "=" * (-len(report) % 4))
            facts = world.measured(eii)
            if facts is None:                    # a Mock EII changed where nothing checks it (time, reserved)
                read = wire.read_eii(eii)
                facts = next(Measured(read.code_hash, read.code_signer, read.product_id, False, m.secret)
                             for m in world.eiis.values() if wire.x25519_public(m.secret) == read.encryption_key)
            assert not facts.release, ("a development key released to a release-mode enclave", request, answer)
            assert _meets(constraint, facts), ("a key released against its policy", request, answer)
            opened = wire.read_mail(_b64(body["encryptedPrivateKey"]), facts.secret)
            assert opened.sender == kds.encryption_key and len(opened.body) == 32, (request, answer)
        shapes[f"200 {path}"] += 1

    return check


async def test_hostile_suite_against_the_conclave_kds(kds, kds_url, captured_logs, caplog):
    world = kds_world()
    port = int(kds_url.rsplit(":", 1)[1])
    facts = next(iter(world.eiis.values()))
    spec = {"name": "shared", "masterKeyType": "development", "policyConstraint": f"C:{facts.code_hash.hex()} "
                                                                                  "SEC:INSECURE"}
    async with aiohttp.ClientSession() as http:
        async with http.post(kds_url + "/public", json=spec, headers={"API-VERSION": "1"}) as response:
            assert response.status == 200, await response.read()
            kds_eii = base64.b64decode((await response.json())["kdsAttestationReport"])
    secrets = []
    for raw in (kds._secrets.development, kds._secrets.identity):
        secrets += [raw.hex(), base64.b64encode(raw).decode()]
    for name in NAMES:
        for constraint in world.met:
            key = kds_keys.derive_private_key(kds._secrets.development, kds_keys.KeySpec(
                name, kds_keys.MasterKeyType.DEVELOPMENT, constraint))
            secrets += [key.hex(), base64.b64encode(key).decode()]
    secrets += sorted({m.secret.hex() for m in world.eiis.values()})
    strategy = choose(kds_requests(world), kds_requests(world), kds_requests(world), kds_requests(world),
                      raw_kds_requests(world),
                      hostile_requests(random_paths(KDS_PATHS), None, kds_bodies(world, True) | common_bodies))
    shapes: Counter = Counter()
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        tally = await run_in_thread("Conclave KDS (8090)", KDS_REQUESTS, strategy,
                                    lambda request: send(http, kds_url, port, request),
                                    kds_checker(kds_eii, world, shapes), tuple(kds_explicit(world)))
    print(f"answers by shape: {dict(sorted(shapes.items()))}")
    assert tally["requests"] >= KDS_REQUESTS and not [s for s in tally if isinstance(s, int) and s >= 500], tally
    assert shapes["200 /public"] and shapes["200 /private"], shapes      # the valid requests were served too
    no_answers_are_rare(tally)
    await asyncio.sleep(0.2)
    levels = assert_clean_logs(captured_logs(), caplog, secrets)
    print(f"log lines by level: {dict(levels)}; {time.monotonic() - started:.1f} s")
