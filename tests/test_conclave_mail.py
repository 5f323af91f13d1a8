"""Conclave Mail (components/conclave/mail.py, noise.py) with real crypto and no mocks.

Three independent checks: the published Noise test vectors; the tests' writer and reader written
straight from conclave-wire.md (tests/conclave_wire.py: stdlib hashlib/hmac and `cryptography`'s X25519
and AES-GCM, sharing no code with the codec), which must agree with it byte for byte; and hostile input.
"""

from __future__ import annotations

import hashlib
import struct

import pytest

from components.conclave import mail, noise
from components.conclave.mail import (
    KdsKeySpec,
    MailDecryptionError,
    MailHeader,
    MasterKeyType,
    PostOffice,
    check_topic,
    decrypt_mail,
    encrypt_mail,
    key_derivation_kind,
    read_header,
)
from tests.conclave_wire import (
    MAX_PAYLOAD,
    TERMINATOR,
    open_mail,
    packet_plaintexts,
    plaintext,
    seal,
    user_stream,
)
from tests.conclave_wire import prologue as ref_prologue
from tests.conclave_wire import x25519_public as _pub


def _key(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


CLIENT = _key("client")
ENCLAVE = _key("enclave")
STRANGER = _key("stranger")
EPHEMERAL = _key("ephemeral")


# --- the independent reference (tests/conclave_wire.py), with this file's keys ------------------------


def hand_mail(plaintexts: list[bytes], *, prologue: bytes | None = None, sender: bytes = CLIENT,
              recipient_pub: bytes | None = None, payload: bytes = b"\x00", e: bytes = EPHEMERAL,
              trailing: bytes = b"") -> bytes:
    """A mail put together by hand: u16 P | prologue | handshake | u16 L + AES-GCM packets."""
    return seal(ref_prologue() if prologue is None else prologue, plaintexts, sender_private=sender,
                recipient_public=recipient_pub or _pub(ENCLAVE), ephemeral_private=e, payload=payload,
                trailing=trailing)


def encrypt(body: bytes = b"", **overrides) -> bytes:
    kwargs = dict(recipient_public=_pub(ENCLAVE), sender_private=CLIENT, topic="default", sequence_number=0,
                  key_derivation=b"\x00")
    kwargs.update(overrides)
    return encrypt_mail(body, **kwargs)


# --- Noise test vectors ------------------------------------------------------------------------------

# mcginty/snow, tests/vectors/snow.txt (commit d00b360cc61a7fe519ce7539974dca4f36c4654a),
# entry "Noise_X_25519_AESGCM_SHA256": one handshake message, then one transport message.
SNOW_X = {
    "prologue": "5468657265206973206e6f20726967687420616e642077726f6e672e20"
                "54686572652773206f6e6c792066756e20616e6420626f72696e672e",
    "init_static": "a6e81e173ee47492dc6a91289fcde56fea2bc854e608647fec8c655e583471a8",
    "init_ephemeral": "2af56dde45ec567eb91e1a417c1076f27ff9eecc521d1c0eab5637fd110c90ae",
    "init_remote_static": "87cf51739880ccdc5aae41d79893e5e8a7134a48aaf814c0d8ca84607d455b72",
    "resp_static": "752a1e4d12b0e33b199dffcadcf974fb4873b33fc0e73670c1e124e208fdeaac",
    "handshake_hash": None,
    "messages": [
        ("3cc687517a2c7b289c5299482d71eb4379f13995cd474c7a606580b7832a3263",
         "25b9df9853d8f0f1bbfdce15f4cc597dc08d432e6d70fa80849d740d24f44975782a31d1fdd7e73b2bb2ae62505ec0eb"
         "f1eee22f68fcc3f41b0cd2cfa564c630b3249863d05e50e212ce56a67d2c309e1991fe6ca9327afafae718452f01380c"
         "d333cb1665d0e4855cef778061fa6570cde98d74fc543f4d15ac51b079467191"),
        ("9dccc7cff2fdf6d9f01206da49b928c630599d8f1bdf55716b57c90b53493361",
         "6ba7e85d767515ae4cb39e70f7ac277c1608cf3e97aafce040be056d0ff6629e0d8c7f090fff7ee6b89b4622908ef6cb"),
    ],
}

# haskell-cryptography/cacophony's vectors as vendored in mcginty/snow, tests/vectors/cacophony.txt
# (commit 62fbfae2c84b644a0432ce497a4a47e4fa139a2d), entry "Noise_X_25519_AESGCM_SHA256": one
# handshake message, then five transport messages (nonces 0-4), all initiator to responder.
CACOPHONY_X = {
    "prologue": "4a6f686e2047616c74",
    "init_static": "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1",
    "init_ephemeral": "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a",
    "init_remote_static": "31e0303fd6418d2f8c0e78b91f22e8caed0fbe48656dcf4767e4834f701b8f62",
    "resp_static": "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893",
    # For one-way patterns cacophony records h right after the pre-message, not the final h.
    "handshake_hash": "ad56495440263212f6717dc213b7f7931b64a28aee4baa48ae7a8f79603370a5",
    "messages": [
        ("4c756477696720766f6e204d69736573",
         "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c794470bc7d4db4b390c2b19e03d60cf1ee86"
         "30c74c121706378730dcf60ef41a212c23c47ef2f4ab632abfc6258a30ca2149e2c2f8756c40d832fc206e31a5f64087"
         "b6fba7638c9a9fdd2eee96f9ea816629"),
        ("4d757272617920526f746862617264", "68356b58d8500a2edc2c10a5941b9aaa0cb9b9e47cc125424300a56693775d"),
        ("462e20412e20486179656b", "9d783c351fd707625359d5a1de888fa4be80ea48ad0a1fc3a42fe6"),
        ("4361726c204d656e676572", "d121d6dce3ce77ad12ea7542dc23f2e0fd24b62ca7035a85a00fc8"),
        ("4a65616e2d426170746973746520536179", "1a97fc0b1fe571b2e489dd6b8c682084a4d14f7c02b380afddf8ad0e031c362c20"),
        ("457567656e2042f6686d20766f6e2042617765726b",
         "7011c403c92a9069047e2f00203877ad80c565c118cea0d4d6813589e9a15701d62e2236fe"),
    ],
}


@pytest.mark.parametrize("vector", [SNOW_X, CACOPHONY_X], ids=["snow", "cacophony"])
def test_noise_x_vectors(vector: dict) -> None:
    v = {k: bytes.fromhex(x) for k, x in vector.items() if isinstance(x, str)}
    (payload, first), *transport = [(bytes.fromhex(p), bytes.fromhex(c)) for p, c in vector["messages"]]
    assert noise.public_key(v["resp_static"]) == v["init_remote_static"]

    message, sending = noise.initiator_handshake(
        v["prologue"], v["init_static"], v["init_remote_static"], payload, v["init_ephemeral"])
    assert message == first
    sender, received, receiving = noise.responder_handshake(v["prologue"], v["resp_static"], message)
    assert (sender, received) == (noise.public_key(v["init_static"]), payload)
    assert sending.handshake_hash == receiving.handshake_hash
    for payload, ciphertext in transport:
        assert sending.encrypt(payload) == ciphertext
        assert receiving.decrypt(ciphertext) == payload

    if vector["handshake_hash"]:
        state = noise.SymmetricState()
        state.mix_hash(v["prologue"])
        state.mix_hash(v["init_remote_static"])
        assert state.h.hex() == vector["handshake_hash"]


def test_noise_refuses_a_changed_prologue_and_a_low_order_ephemeral_key() -> None:
    v = {k: bytes.fromhex(x) for k, x in CACOPHONY_X.items() if isinstance(x, str)}
    message, _ = noise.initiator_handshake(v["prologue"], v["init_static"], v["init_remote_static"], b"x")
    with pytest.raises(noise.NoiseError):
        noise.responder_handshake(v["prologue"] + b"!", v["resp_static"], message)
    with pytest.raises(noise.NoiseError):
        noise.responder_handshake(v["prologue"], v["resp_static"], bytes(32) + message[32:])


# --- layout: §2 example prologue, §5 minimum mail and packets ----------------------------------------


def test_example_prologue_bytes_of_section_2() -> None:
    data = encrypt(b"")
    expected = bytes.fromhex("0017" "01" "0000000000000000" "0007") + b"default" + bytes.fromhex("0000" "000100")
    assert data[: len(expected)] == expected
    assert read_header(data) == MailHeader(0, "default", None, b"\x00", 1)


def test_minimum_mail_is_166_bytes() -> None:
    data = encrypt(b"")
    assert len(data) == 2 + 23 + 97 + 24 + 20 == 166
    opened = open_mail(data, ENCLAVE)
    assert opened.packets == [(4, 4), (0, 0)]
    assert opened.payload == b"\x00" and opened.rest == b""
    assert opened.sender == _pub(CLIENT)


@pytest.mark.parametrize("body_size", [0, 1, 65513, 65514, 65517, 2 * 65517 - 4, 2 * 65517 - 3, 200_000])
def test_packet_count_without_min_size(body_size: int) -> None:
    body = bytes(range(256)) * (body_size // 256) + bytes(body_size % 256)
    data = encrypt(body)
    opened = open_mail(data, ENCLAVE)
    assert len(opened.packets) == -(-(4 + body_size) // MAX_PAYLOAD) + 1  # §5, T-MST testWrite
    assert all(payload == user for payload, user in opened.packets)  # no padding at min size 0
    assert opened.body == body
    assert decrypt_mail(data, ENCLAVE).body == body


@pytest.mark.parametrize(
    ("body_size", "min_size", "packets"),
    [
        (10, 0, [(14, 14), (0, 0)]),
        (10, 5, [(19, 14), (0, 0)]),  # the last partial packet gets min_size - payload before it
        (10, 100, [(114, 14), (0, 0)]),
        (10, 200_000, [(65517, 14), (65517, 0), (65517, 0), (3449, 0), (0, 0)]),
        (65513, 70_000, [(65517, 65517), (4483, 0), (0, 0)]),
        (65520, 70_000, [(65517, 65517), (4490, 7), (0, 0)]),
    ],
)
def test_min_size_padding(body_size: int, min_size: int, packets: list) -> None:
    """MES writePacket: padding = clamp(min_size - payload of earlier packets, 0, room), so a last
    partial packet is padded by up to min_size on top of its own user bytes (§5)."""
    data = encrypt(bytes(body_size), min_size=min_size)
    assert open_mail(data, ENCLAVE).packets == packets
    assert decrypt_mail(data, ENCLAVE).body == bytes(body_size)


@pytest.mark.parametrize(
    ("body", "min_size", "envelope", "private_header", "kd", "seq"),
    [
        (b"", 0, None, None, b"\x00", 0),
        (b"hello", 0, b"env", None, None, 7),
        (b"x" * 70_000, 0, None, b"\x01" + bytes(17), b"\x00", 2**63 - 1),
        (b"y" * 10, 150_000, b"e" * 300, b"header", bytes(18), -5),
        (bytes(65513), 0, None, None, b"\x00", 1),
        (b"z", 0, None, b"h" * 70_000, None, 3),  # a private header longer than a packet
    ],
)
def test_encrypt_mail_is_byte_identical_to_the_hand_written_mail(body, min_size, envelope, private_header, kd,
                                                                  seq) -> None:
    data = encrypt(body, min_size=min_size, envelope=envelope, private_header=private_header, key_derivation=kd,
                   sequence_number=seq, ephemeral_private=EPHEMERAL)
    prologue = ref_prologue(seq, envelope=envelope or b"", key_derivation=kd or b"")
    assert data == hand_mail(packet_plaintexts(user_stream(body, private_header), min_size), prologue=prologue)

    opened = open_mail(data, ENCLAVE)
    assert (opened.body, opened.private_header) == (body, private_header or b"")
    got = decrypt_mail(data, ENCLAVE)
    assert got.header == MailHeader(seq, "default", envelope, kd or None, 1)
    assert (got.body, got.private_header, got.sender) == (body, private_header, _pub(CLIENT))


def test_hand_built_mail_with_any_packet_split_trailing_bytes_and_prologue_extension() -> None:
    stream = user_stream(b"the body", b"private")
    plaintexts = [plaintext(stream[:1]), plaintext(b"", 40), plaintext(stream[1:3], 5)]
    plaintexts += [plaintext(stream[i : i + 1]) for i in range(3, len(stream))] + [TERMINATOR]
    prologue = ref_prologue(42, b"Topic-1", envelope=b"\x00\x01", extension=b"future fields")
    data = hand_mail(plaintexts, prologue=prologue, payload=b"\x07", trailing=b"ignored garbage")
    got = decrypt_mail(data, ENCLAVE)
    assert got.header == MailHeader(42, "Topic-1", b"\x00\x01", b"\x00", 1)
    assert (got.body, got.private_header, got.sender) == (b"the body", b"private", _pub(CLIENT))


def test_protocol_0_mail_is_accepted() -> None:
    prologue = ref_prologue(protocol=0)
    data = hand_mail([plaintext(b"old client"), TERMINATOR], prologue=prologue, payload=b"")
    assert len(data) == 2 + len(prologue) + 96 + 2 + 16 + 12 + 2 + 16 + 2
    got = decrypt_mail(data, ENCLAVE)
    assert (got.header.protocol, got.body, got.private_header) == (0, b"old client", None)


def test_empty_envelope_key_derivation_and_private_header_read_back_as_none() -> None:
    got = decrypt_mail(encrypt(b"b", envelope=b"", key_derivation=b"", private_header=b""), ENCLAVE)
    assert (got.header.envelope, got.header.key_derivation, got.private_header) == (None, None, None)


# --- refusals ----------------------------------------------------------------------------------------


def test_every_single_byte_change_is_refused() -> None:
    data = encrypt(b"hi", envelope=b"e")
    assert decrypt_mail(data, ENCLAVE).body == b"hi"
    for position in range(len(data)):
        for mask in (0x01, 0x80):
            tampered = bytearray(data)
            tampered[position] ^= mask
            with pytest.raises(MailDecryptionError):
                decrypt_mail(bytes(tampered), ENCLAVE)


def test_every_truncation_is_refused() -> None:
    data = encrypt(b"hi")
    for length in range(len(data)):
        with pytest.raises(MailDecryptionError):
            decrypt_mail(data[:length], ENCLAVE)


def test_missing_terminator() -> None:
    with pytest.raises(MailDecryptionError, match="terminator"):
        decrypt_mail(hand_mail([plaintext(user_stream(b"body"))]), ENCLAVE)


def test_protocol_id_2_is_refused() -> None:
    data = hand_mail([plaintext(user_stream(b"")), TERMINATOR], prologue=ref_prologue(protocol=2))
    for read in (read_header, lambda d: decrypt_mail(d, ENCLAVE)):
        with pytest.raises(MailDecryptionError, match="Invalid protocol ID 2"):
            read(data)


def test_unparseable_prologue_is_refused_by_read_header() -> None:
    good = ref_prologue()
    for prologue in (good[:5], good[:-1], good[:9] + b"\x00\x09" + good[11:]):
        with pytest.raises(MailDecryptionError):
            read_header(struct.pack(">H", len(prologue)) + prologue)
    with pytest.raises(MailDecryptionError):
        read_header(b"\x00")
    with pytest.raises(MailDecryptionError):
        read_header(b"\x00\x30" + good)  # the prologue length runs past the end


def test_packet_length_below_the_tag_length_is_refused() -> None:
    data = hand_mail([])
    for length in (0, 15):
        with pytest.raises(MailDecryptionError, match="less than MAC length"):
            decrypt_mail(data + struct.pack(">H", length) + bytes(length) + bytes(40), ENCLAVE)


def test_packet_plaintext_must_hold_the_user_length_and_not_overstate_it() -> None:
    with pytest.raises(MailDecryptionError, match="Invalid plaintext length"):
        decrypt_mail(hand_mail([b"", TERMINATOR]), ENCLAVE)
    with pytest.raises(MailDecryptionError, match="Invalid user bytes length"):
        decrypt_mail(hand_mail([b"ab" + struct.pack(">H", 3), TERMINATOR]), ENCLAVE)


def test_bad_private_header_lengths_are_refused() -> None:
    for stream in (b"", b"\x00\x00", struct.pack(">i", -1) + b"body", struct.pack(">i", 99) + b"short"):
        plaintexts = ([plaintext(stream)] if stream else []) + [TERMINATOR]
        with pytest.raises(MailDecryptionError):
            decrypt_mail(hand_mail(plaintexts), ENCLAVE)


def test_wrong_recipient_key_is_refused() -> None:
    with pytest.raises(MailDecryptionError, match="key mismatch"):
        decrypt_mail(encrypt(b"secret"), STRANGER)


def test_low_order_ephemeral_key_is_a_decryption_error() -> None:
    data = bytearray(hand_mail([plaintext(user_stream(b"")), TERMINATOR]))
    data[2 + 0x17 : 2 + 0x17 + 32] = bytes(32)  # e.pub = 0: the shared secret would be all zeros
    with pytest.raises(MailDecryptionError):
        decrypt_mail(bytes(data), ENCLAVE)


def test_max_size() -> None:
    data = encrypt(b"x" * 100, private_header=b"h" * 50, min_size=1000)
    assert decrypt_mail(data, ENCLAVE, max_size=100).body == b"x" * 100
    with pytest.raises(MailDecryptionError, match="mail larger than 99"):
        decrypt_mail(data, ENCLAVE, max_size=99)
    big = encrypt(bytes(300_000))
    with pytest.raises(MailDecryptionError, match="mail larger than"):
        decrypt_mail(big, ENCLAVE, max_size=1000)
    old = hand_mail([plaintext(b"12345"), TERMINATOR], prologue=ref_prologue(protocol=0), payload=b"")
    assert decrypt_mail(old, ENCLAVE, max_size=5).body == b"12345"
    with pytest.raises(MailDecryptionError):
        decrypt_mail(old, ENCLAVE, max_size=4)


def test_writer_refuses_fields_its_lengths_cannot_hold() -> None:
    for overrides in ({"envelope": bytes(65536)}, {"key_derivation": bytes(65536)}, {"topic": "a" * 65536},
                      {"sequence_number": 2**63}, {"min_size": -1}, {"recipient_public": bytes(31)}):
        with pytest.raises(ValueError):
            encrypt(b"", **overrides)


# --- key derivation header (§2) ----------------------------------------------------------------------


def test_key_derivation_kinds() -> None:
    for kd in (None, b"", b"\x00", b"\x00extra", bytes(range(18))):
        assert key_derivation_kind(kd) == mail.RANDOM_SESSION_KEY
    kds = b"\x01" + struct.pack(">i", 4) + b"name" + b"\x01" + struct.pack(">i", 10) + b"S:abc PROD"
    assert key_derivation_kind(kds) == KdsKeySpec("name", MasterKeyType.CLUSTER, "S:abc PROD")
    with pytest.raises(MailDecryptionError, match="Unknown key derivation type 2"):
        key_derivation_kind(b"\x02")
    with pytest.raises(MailDecryptionError, match="Unknown key derivation type -1"):
        key_derivation_kind(b"\xff\x00")
    for bad in (kds[:-1], kds[:7], b"\x01" + struct.pack(">i", -1), kds[:9] + b"\x03" + kds[10:]):
        with pytest.raises(MailDecryptionError, match="Cannot deserialize"):
            key_derivation_kind(bad)


def test_kds_key_spec_serialise_avoids_the_abandoned_18_byte_size() -> None:
    spec = KdsKeySpec("abcd", MasterKeyType.DEVELOPMENT, "S:ab")  # 1 + 4+4 + 1 + 4+4 = 18 bytes
    assert spec.serialise() == b"\x01" + struct.pack(">i", 4) + b"abcd\x00" + struct.pack(">i", 4) + b"S:ab\x00"
    assert key_derivation_kind(spec.serialise()) == spec


# --- topics and modified UTF-8 -----------------------------------------------------------------------


def test_check_topic() -> None:
    for good in ("default", "a-b-C-9", "Grüße", "日本", "x" * 255, "٣"):
        check_topic(good)
    for bad, message in (("", "blank"), ("   ", "blank"), ("x" * 256, "less than 256"), ("a b", "Character 1"),
                         ("a_b", "Character 1"), ("a\U0001d400", "Character 1"), ("a.b", "Character 1")):
        with pytest.raises(ValueError, match=message):
            check_topic(bad)
    with pytest.raises(ValueError):
        PostOffice(CLIENT, _pub(ENCLAVE), "no spaces")


def test_topic_is_modified_utf8() -> None:
    for topic, wire in (("a\x00b", b"a\xc0\x80b"), ("\U0001f600", b"\xed\xa0\xbd\xed\xb8\x80"), ("é", b"\xc3\xa9")):
        data = encrypt(b"", topic=topic, ephemeral_private=EPHEMERAL)
        assert data == hand_mail(packet_plaintexts(user_stream(b""), 0), prologue=ref_prologue(topic=wire))
        assert decrypt_mail(data, ENCLAVE).header.topic == topic
    assert read_header(hand_mail([TERMINATOR], prologue=ref_prologue(topic=b"\xc1\x81"))).topic == "A"  # as Java
    for wire in (b"\xf0\x9f\x98\x80", b"\xed\xa0\x80", b"\x80", b"a\xc3", b"\xe0\x80"):
        with pytest.raises(MailDecryptionError):
            read_header(hand_mail([TERMINATOR], prologue=ref_prologue(topic=wire)))


# --- min-size policies (§6) --------------------------------------------------------------------------


def test_min_size_policies() -> None:
    assert [mail.fixed(7).min_size(n) for n in (0, 100)] == [7, 7]
    with pytest.raises(ValueError):
        mail.fixed(-1)
    largest = mail.largest_seen()
    assert [largest.min_size(n) for n in (5, 3, 9, 1)] == [5, 5, 9, 9]
    average = mail.moving_average()
    assert [average.min_size(n) for n in (10, 0, 5, 1)] == [10, 5, 5, 4]


def test_moving_average_post_office_pads_as_conclave_does() -> None:
    """§6 says the first mail of a post office is never padded; Conclave's writePacket says
    otherwise: min size = body size, and the one partial packet gets that many zero bytes on top of
    its 4 + body user bytes (padding = min_size - payload of *earlier* packets). We write what
    Conclave writes."""
    office = PostOffice(CLIENT, _pub(ENCLAVE))
    first = office.encrypt(bytes(1000))
    assert open_mail(first, ENCLAVE).packets == [(2004, 1004), (0, 0)]
    second = office.encrypt(bytes(10))
    assert open_mail(second, ENCLAVE).packets == [(519, 14), (0, 0)]  # min size: the mean of 1000 and 10
    unpadded = PostOffice(CLIENT, _pub(ENCLAVE), min_size_policy=mail.fixed(0)).encrypt(bytes(1000))
    assert open_mail(unpadded, ENCLAVE).packets == [(1004, 1004), (0, 0)]


# --- post office -------------------------------------------------------------------------------------


def test_post_office_numbers_its_mail_and_sends_kd_00_by_default() -> None:
    office = PostOffice(CLIENT, _pub(ENCLAVE), "orders")
    assert office.sender_public == _pub(CLIENT)
    headers = [decrypt_mail(office.encrypt(b"m", b"env"), ENCLAVE).header for _ in range(3)]
    assert headers == [MailHeader(n, "orders", b"env", b"\x00", 1) for n in range(3)]
    assert office.next_sequence_number == 3
    with pytest.raises(RuntimeError):
        office.next_sequence_number = 0

    restored = PostOffice(CLIENT, _pub(ENCLAVE), key_derivation=None)
    with pytest.raises(ValueError):
        restored.next_sequence_number = -1
    restored.next_sequence_number = 41
    assert read_header(restored.encrypt(b"")) == MailHeader(41, "default", None, None, 1)


def test_post_office_accepts_only_replies_from_its_recipient() -> None:
    office = PostOffice(CLIENT, _pub(ENCLAVE), "t")
    request = decrypt_mail(office.encrypt(b"ping"), ENCLAVE)
    reply = encrypt_mail(b"pong", recipient_public=request.sender, sender_private=ENCLAVE, topic="t",
                         sequence_number=0, private_header=b"\x01" + bytes(17))
    got = office.decrypt(reply)
    assert (got.body, got.private_header, got.sender, got.header.key_derivation) == (
        b"pong", b"\x01" + bytes(17), _pub(ENCLAVE), None)

    forged = encrypt_mail(b"pong", recipient_public=_pub(CLIENT), sender_private=STRANGER, topic="t",
                          sequence_number=0)
    with pytest.raises(ValueError, match="does not originate from expected sender"):
        office.decrypt(forged)
    with pytest.raises(MailDecryptionError):
        office.decrypt(encrypt(b"to the enclave"))  # not encrypted to the client's key


def test_keys() -> None:
    key = mail.new_private_key()
    assert len(key) == 32 and key != mail.new_private_key()
    assert mail.public_key(key) == _pub(key)
