"""Conclave's EnclaveInstanceInfo bytes and enclave constraints (components/conclave/eii.py, constraints.py).

EIIs are built here by hand from /work/shared/conclave-wire.md §11 (struct over the layout, report body
fields poked in at their offsets) and eii.py's own output is read back by an independent reader, so a
mistake in the module cannot hide behind the same mistake in its test. Real Ed25519/X25519/SHA, no mocks.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

from components.conclave.constraints import (
    ConstraintError,
    ConstraintParseError,
    EnclaveConstraint,
    Period,
)
from components.conclave.eii import (
    AttestationTime,
    AttestationType,
    EiiError,
    EnclaveInstanceInfo,
    EnclaveMode,
    ReportBody,
    SecuritySummary,
    keys_from_secret,
    mock_instance_info,
    report_data,
    signing_key_encoding,
)

SECRET = bytes(range(1, 33))
OTHER_SECRET = bytes(range(101, 133))
CODE_HASH = hashlib.sha256(b"com.example.MyEnclave").digest()
SIGNER = hashlib.sha256(b"signer").digest()
T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
MAGIC_PREFIX = bytes.fromhex("45 49 49 00 00 00 2c 30 2a 30 05 06 03 2b 65 70 03 21 00")


# --- an independent implementation of §11, for building and reading bytes --------------------------

def public_keys(secret: bytes) -> tuple[bytes, bytes]:
    """(44-byte SPKI of the Ed25519 key, raw X25519 key), straight from `cryptography`."""
    signing = Ed25519PrivateKey.from_private_bytes(secret).public_key()
    encryption = X25519PrivateKey.from_private_bytes(secret).public_key()
    return (signing.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
            encryption.public_bytes(Encoding.Raw, PublicFormat.Raw))


def hand_body(**fields: bytes | int) -> bytes:
    """A 384-byte report body with fields written at §11's offsets (little-endian integers)."""
    layout = {  # name: (offset, size or struct format)
        "cpu_svn": (0, 16), "misc_select": (16, "<I"), "isv_ext_prod_id": (32, 16), "flags": (48, "<Q"),
        "xfrm": (56, "<Q"), "mrenclave": (64, 32), "mrsigner": (128, 32), "config_id": (192, 64),
        "isv_prod_id": (256, "<H"), "isv_svn": (258, "<H"), "config_svn": (260, "<H"),
        "isv_family_id": (304, 16), "report_data": (320, 64),
    }
    body = bytearray(384)
    for name, value in fields.items():
        offset, kind = layout[name]
        raw = struct.pack(kind, value) if isinstance(kind, str) else value
        assert isinstance(raw, bytes) and (isinstance(kind, str) or len(raw) == kind)
        body[offset:offset + len(raw)] = raw
    return bytes(body)


def bound_body(secret: bytes = SECRET, **fields: bytes | int) -> bytes:
    signing, encryption = public_keys(secret)
    fields.setdefault("report_data", hashlib.sha512(signing + encryption).digest())
    fields.setdefault("isv_svn", 1)
    return hand_body(**fields)


def hand_mock(body: bytes, seconds: int = T0, nanos: int = 0, simulation: int = 0) -> bytes:
    return struct.pack(">qi", seconds, nanos) + body + bytes([simulation])


def hand_eii(attestation: bytes, kind: int = 2, secret: bytes = SECRET) -> bytes:
    signing, encryption = public_keys(secret)
    return (b"EII" + struct.pack(">i", len(signing)) + signing + struct.pack(">i", len(encryption)) + encryption
            + struct.pack(">Bi", kind, len(attestation)) + attestation)


def quote(body: bytes) -> bytes:
    """A 432-byte sgx_quote_t: version 3, sign type 2 (ECDSA-P256), zero ids, then the report body."""
    return struct.pack("<HH4sHHI32s", 3, 2, bytes(4), 5, 6, 0, bytes(32)) + body


def hand_dcap(body: bytes, signature: bytes = b"\x01" * 64) -> bytes:
    collateral = [b"3", b"pck crl chain", b"root crl", b"pck crl", b"tcb chain", b'{"tcbInfo":{}}',
                  b"qe chain", b'{"enclaveIdentity":{}}']
    return (quote(body) + struct.pack("<I", len(signature)) + signature
            + b"".join(struct.pack(">i", len(c)) + c for c in collateral))


def hand_epid(body: bytes, version: int = 4, stamp: str = "2021-05-25T14:09:07.123456") -> bytes:
    report = json.dumps({"id": "1", "isvEnclaveQuoteStatus": "OK", "version": version, "timestamp": stamp,
                         "isvEnclaveQuoteBody": base64.b64encode(quote(body)).decode()}).encode()
    return b"".join(struct.pack(">i", len(part)) + part for part in (report, b"sig", b"certpath"))


def read_eii(data: bytes) -> dict[str, object]:
    """Read an EII with struct.unpack_from only (no eii.py)."""
    assert data[:3] == b"EII"
    (l1,) = struct.unpack_from(">i", data, 3)
    signing = data[7:7 + l1]
    (l2,) = struct.unpack_from(">i", data, 7 + l1)
    encryption = data[11 + l1:11 + l1 + l2]
    kind, l3 = struct.unpack_from(">Bi", data, 11 + l1 + l2)
    attestation = data[16 + l1 + l2:16 + l1 + l2 + l3]
    assert len(attestation) == l3
    out: dict[str, object] = {"signing": signing, "encryption": encryption, "type": kind, "attestation": attestation}
    if kind == 2:
        seconds, nanos = struct.unpack_from(">qi", attestation)
        body = attestation[12:396]
        out.update(seconds=seconds, nanos=nanos, body=body, simulation=attestation[396])
    return out


# --- eii.py's own output, read independently ---------------------------------------------------------

def test_magic_prefix_and_mock_size() -> None:
    data = mock_instance_info(SECRET, code_hash=CODE_HASH, product_id=1, revocation_level=0).serialize()
    assert data[:19] == MAGIC_PREFIX
    assert len(data) == 3 + 4 + 44 + 4 + 32 + 1 + 4 + 397 == 489


def test_mock_serialization_read_independently() -> None:
    eii = mock_instance_info(SECRET, code_hash=CODE_HASH, code_signer=SIGNER, product_id=513, revocation_level=7,
                             timestamp=T0 + 0.25)
    fields = read_eii(eii.serialize())
    signing, encryption = public_keys(SECRET)
    assert fields["signing"] == signing and fields["encryption"] == encryption
    assert fields["type"] == 2 and len(fields["attestation"]) == 397
    assert (fields["seconds"], fields["nanos"], fields["simulation"]) == (T0, 250_000_000, 0)
    body = fields["body"]
    assert isinstance(body, bytes)
    assert body == hand_body(
        cpu_svn=hashlib.sha256(b"\x00\x01").digest()[:16],  # tcbLevel 1 as u16 BE
        flags=0x2, mrenclave=CODE_HASH, mrsigner=SIGNER, isv_prod_id=513, isv_svn=8,
        report_data=hashlib.sha512(signing + encryption).digest(),
    )


def test_mock_simulation_and_tcb_level_bytes() -> None:
    eii = mock_instance_info(SECRET, code_hash=CODE_HASH, product_id=1, revocation_level=0, simulation=True,
                             tcb_level=2)
    fields = read_eii(eii.serialize())
    assert fields["simulation"] == 1
    assert fields["body"][:16] == hashlib.sha256(b"\x00\x02").digest()[:16]
    assert fields["body"][128:160] == bytes(32)  # default code signer: 32 zero bytes
    assert eii.enclave_mode is EnclaveMode.SIMULATION


def test_mock_round_trip_and_properties() -> None:
    eii = mock_instance_info(SECRET, code_hash=CODE_HASH, code_signer=SIGNER, product_id=65535,
                             revocation_level=65534, timestamp=T0)
    again = EnclaveInstanceInfo.deserialize(eii.serialize())
    assert again == eii and again.serialize() == eii.serialize()
    assert again.attestation_type is AttestationType.MOCK
    assert (again.code_hash, again.code_signing_key_hash) == (CODE_HASH, SIGNER)
    assert (again.product_id, again.revocation_level) == (65535, 65534)
    assert again.enclave_mode is EnclaveMode.MOCK
    assert again.security_summary is SecuritySummary.INSECURE and not again.quote_verified
    assert again.timestamp == AttestationTime(T0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        again.encryption_key = b""  # type: ignore[misc]


# --- hand-built bytes, read by eii.py ----------------------------------------------------------------

def test_hand_built_mock_parses_to_the_right_fields() -> None:
    body = bound_body(cpu_svn=b"\xaa" * 16, misc_select=0x01020304, isv_ext_prod_id=b"\x05" * 16, flags=0x7,
                      xfrm=0x1F, mrenclave=CODE_HASH, mrsigner=SIGNER, config_id=b"\x06" * 64,
                      isv_prod_id=0x1234, isv_svn=4, config_svn=9, isv_family_id=b"\x08" * 16)
    data = hand_eii(hand_mock(body, seconds=T0, nanos=123_456_789))
    eii = EnclaveInstanceInfo.deserialize(data)
    r = eii.report
    assert (r.cpu_svn, r.misc_select, r.isv_ext_prod_id) == (b"\xaa" * 16, 0x01020304, b"\x05" * 16)
    assert (r.attributes_flags, r.attributes_xfrm, r.config_id) == (0x7, 0x1F, b"\x06" * 64)
    assert (r.isv_prod_id, r.isv_svn, r.config_svn, r.isv_family_id) == (0x1234, 4, 9, b"\x08" * 16)
    assert (eii.code_hash, eii.code_signing_key_hash, eii.product_id, eii.revocation_level) == (
        CODE_HASH, SIGNER, 0x1234, 3)
    assert eii.cpu_svn == b"\xaa" * 16
    assert eii.timestamp == AttestationTime(T0, 123_456_789)
    assert str(eii.timestamp) == "2023-11-14T22:13:20.123456789Z"
    assert eii.enclave_mode is EnclaveMode.MOCK  # the DEBUG flag does not matter for Mock
    assert r.to_bytes() == body and eii.serialize() == data


@pytest.mark.parametrize(("flag", "mode"), [(0, EnclaveMode.MOCK), (1, EnclaveMode.SIMULATION),
                                            (7, EnclaveMode.SIMULATION)])
def test_is_simulation_byte(flag: int, mode: EnclaveMode) -> None:
    eii = EnclaveInstanceInfo.deserialize(hand_eii(hand_mock(bound_body(), simulation=flag)))
    assert eii.enclave_mode is mode and eii.security_summary is SecuritySummary.INSECURE


def test_trailing_bytes_after_the_attestation_are_ignored() -> None:
    data = hand_eii(hand_mock(bound_body()))
    eii = EnclaveInstanceInfo.deserialize(data + b"future fields")
    assert eii.serialize() == data


def test_bytes_after_397_inside_the_mock_attestation_are_ignored() -> None:
    """Conclave reads the mock attestation from a slice of length L3, so extra bytes in it do no harm."""
    attestation = hand_mock(bound_body()) + b"extra"
    eii = EnclaveInstanceInfo.deserialize(hand_eii(attestation))
    assert eii.attestation == attestation


def test_timestamp_nanos_carry_like_java_instant() -> None:
    eii = EnclaveInstanceInfo.deserialize(hand_eii(hand_mock(bound_body(), seconds=10, nanos=-1)))
    assert eii.timestamp == AttestationTime(9, 999_999_999)
    with pytest.raises(EiiError, match="Instant"):
        EnclaveInstanceInfo.deserialize(hand_eii(hand_mock(bound_body(), seconds=2**62)))


def test_key_binding_mismatch_is_refused() -> None:
    good = bound_body()
    tampered = good[:320] + bytes([good[320] ^ 1]) + good[321:]
    with pytest.raises(EiiError, match="report data"):
        EnclaveInstanceInfo.deserialize(hand_eii(hand_mock(tampered)))
    # a report bound to other keys, served with ours
    with pytest.raises(EiiError, match="does not match the hash"):
        EnclaveInstanceInfo.deserialize(hand_eii(hand_mock(bound_body(OTHER_SECRET))))


def test_binding_covers_the_signing_key_encoding_as_sent() -> None:
    signing, encryption = public_keys(SECRET)
    raw_binding = hashlib.sha512(signing[12:] + encryption).digest()  # raw key instead of the 44 bytes
    with pytest.raises(EiiError):
        EnclaveInstanceInfo.deserialize(hand_eii(hand_mock(bound_body(report_data=raw_binding))))


def test_isv_svn_zero_is_refused() -> None:
    with pytest.raises(EiiError, match="revocation level -1"):
        EnclaveInstanceInfo.deserialize(hand_eii(hand_mock(bound_body(isv_svn=0))))


def test_every_truncation_is_refused_with_eii_error() -> None:
    for data in (hand_eii(hand_mock(bound_body())), hand_eii(hand_dcap(bound_body()), kind=1),
                 hand_eii(hand_epid(bound_body()), kind=0)):
        for n in range(len(data)):
            with pytest.raises(EiiError) as caught:
                EnclaveInstanceInfo.deserialize(data[:n])
            assert type(caught.value) is EiiError
            expected = "Not EnclaveInstanceInfo bytes" if n <= 3 else "Truncated EnclaveInstanceInfo bytes"
            assert str(caught.value).startswith(expected), (n, str(caught.value))
        EnclaveInstanceInfo.deserialize(data)


@pytest.mark.parametrize("data", [b"", b"E", b"EII", b"EIJ" + bytes(100), b"eii" + bytes(100), b"XEII" + bytes(9)])
def test_too_short_or_bad_magic(data: bytes) -> None:
    with pytest.raises(EiiError, match="Not EnclaveInstanceInfo bytes"):
        EnclaveInstanceInfo.deserialize(data)


def test_lengths_beyond_the_data_and_negative_lengths() -> None:
    data = bytearray(hand_eii(hand_mock(bound_body())))
    too_long = bytes(data[:3]) + struct.pack(">i", 10_000) + bytes(data[7:])
    with pytest.raises(EiiError, match="Truncated.*signing key needs 10000 bytes"):
        EnclaveInstanceInfo.deserialize(too_long)
    attestation_len_at = 3 + 4 + 44 + 4 + 32 + 1
    huge = bytes(data[:attestation_len_at]) + struct.pack(">i", 2**31 - 1) + bytes(data[attestation_len_at + 4:])
    with pytest.raises(EiiError, match="Truncated.*attestation needs"):
        EnclaveInstanceInfo.deserialize(huge)
    negative = bytes(data[:3]) + struct.pack(">i", -1) + bytes(data[7:])
    with pytest.raises(EiiError, match="Corrupted.*negative length -1"):
        EnclaveInstanceInfo.deserialize(negative)
    short_mock = hand_eii(hand_mock(bound_body())[:300])
    with pytest.raises(EiiError, match="Truncated.*mock attestation's report body"):
        EnclaveInstanceInfo.deserialize(short_mock)


@pytest.mark.parametrize(("kind", "shown"), [(3, "3"), (0x7F, "127"), (0xFF, "-1")])
def test_unknown_attestation_type(kind: int, shown: str) -> None:
    with pytest.raises(EiiError, match=f"Unknown attestation type {shown}$"):
        EnclaveInstanceInfo.deserialize(hand_eii(hand_mock(bound_body()), kind=kind))


def test_key_encodings_are_checked() -> None:
    signing, encryption = public_keys(SECRET)
    attestation = hand_mock(bound_body())
    legacy = b"\x30\x2c" + signing[2:] + b"\x00\x00"  # 46 bytes: i2p would take such forms, Conclave never sends them
    for bad_signing in (signing[12:], legacy, b"\x00" * 44):
        data = (b"EII" + struct.pack(">i", len(bad_signing)) + bad_signing + struct.pack(">i", 32) + encryption
                + struct.pack(">Bi", 2, len(attestation)) + attestation)
        with pytest.raises(EiiError, match="signing key is not a 44-byte X.509 Ed25519"):
            EnclaveInstanceInfo.deserialize(data)
    data = (b"EII" + struct.pack(">i", 44) + signing + struct.pack(">i", 31) + encryption[:31]
            + struct.pack(">Bi", 2, len(attestation)) + attestation)
    with pytest.raises(EiiError, match="encryption key is 31 bytes"):
        EnclaveInstanceInfo.deserialize(data)


def test_direct_construction_is_checked_too() -> None:
    signing, encryption = public_keys(SECRET)
    eii = EnclaveInstanceInfo(signing, encryption, AttestationType.MOCK, hand_mock(bound_body()))
    assert eii.revocation_level == 0
    with pytest.raises(EiiError, match="report data"):
        EnclaveInstanceInfo(signing, public_keys(OTHER_SECRET)[1], AttestationType.MOCK, hand_mock(bound_body()))
    with pytest.raises(EiiError, match="Unknown attestation type 9"):
        EnclaveInstanceInfo(signing, encryption, 9, hand_mock(bound_body()))  # type: ignore[arg-type]
    with pytest.raises(EiiError, match="must be bytes"):
        EnclaveInstanceInfo.deserialize("EII...")  # type: ignore[arg-type]


# --- DCAP and EPID: parsed, never verified ------------------------------------------------------------

@pytest.mark.parametrize(("flags", "mode"), [(0x5, EnclaveMode.RELEASE), (0x7, EnclaveMode.DEBUG)])
def test_dcap_is_parsed_for_its_report_body(flags: int, mode: EnclaveMode) -> None:
    body = bound_body(flags=flags, mrenclave=CODE_HASH, mrsigner=SIGNER, isv_prod_id=3, isv_svn=2)
    data = hand_eii(hand_dcap(body), kind=1)
    eii = EnclaveInstanceInfo.deserialize(data)
    assert eii.attestation_type is AttestationType.DCAP
    assert (eii.code_hash, eii.code_signing_key_hash, eii.product_id, eii.revocation_level) == (
        CODE_HASH, SIGNER, 3, 1)
    assert eii.report.to_bytes() == body
    assert eii.enclave_mode is mode
    assert eii.security_summary is SecuritySummary.INSECURE and not eii.quote_verified
    assert "does not verify DCAP" in eii.security_reason
    assert eii.timestamp is None
    assert eii.serialize() == data


def test_dcap_with_a_bad_binding_is_refused() -> None:
    with pytest.raises(EiiError, match="report data"):
        EnclaveInstanceInfo.deserialize(hand_eii(hand_dcap(bound_body(OTHER_SECRET)), kind=1))


def test_epid_is_parsed_for_its_report_body_and_time() -> None:
    body = bound_body(flags=0x5, mrenclave=CODE_HASH, isv_svn=6)
    eii = EnclaveInstanceInfo.deserialize(hand_eii(hand_epid(body), kind=0))
    assert eii.attestation_type is AttestationType.EPID and eii.enclave_mode is EnclaveMode.RELEASE
    assert (eii.code_hash, eii.revocation_level) == (CODE_HASH, 5)
    assert eii.security_summary is SecuritySummary.INSECURE and not eii.quote_verified
    expected = datetime(2021, 5, 25, 14, 9, 7, 123456, tzinfo=timezone.utc)
    assert eii.timestamp is not None and eii.timestamp.to_datetime() == expected


def test_epid_report_problems_are_refused() -> None:
    with pytest.raises(EiiError, match="Unknown version of EPID attestation report 3"):
        EnclaveInstanceInfo.deserialize(hand_eii(hand_epid(bound_body(), version=3), kind=0))
    bad_json = b"".join(struct.pack(">i", len(p)) + p for p in (b"{not json", b"", b""))
    with pytest.raises(EiiError, match="Corrupted.*EPID report"):
        EnclaveInstanceInfo.deserialize(hand_eii(bad_json, kind=0))


# --- keys -------------------------------------------------------------------------------------------

def test_keys_from_secret_use_one_secret_for_both_keys() -> None:
    signing, encryption = keys_from_secret(SECRET)
    assert signing.private_bytes_raw() == SECRET and encryption.private_bytes_raw() == SECRET
    assert (signing.public_key().public_bytes_raw()
            == Ed25519PrivateKey.from_private_bytes(SECRET).public_key().public_bytes_raw())
    assert (encryption.public_key().public_bytes_raw()
            == X25519PrivateKey.from_private_bytes(SECRET).public_key().public_bytes_raw())
    with pytest.raises(ValueError):
        keys_from_secret(SECRET[:31])


def test_eii_keys_work_for_signatures_and_key_agreement() -> None:
    eii = mock_instance_info(SECRET, code_hash=CODE_HASH, product_id=1, revocation_level=0)
    signing, encryption = keys_from_secret(SECRET)
    verifier = load_der_public_key(eii.signing_key)
    verifier.verify(signing.sign(b"hello"), b"hello")  # type: ignore[union-attr, call-arg]
    client = X25519PrivateKey.generate()
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    shared = client.exchange(X25519PublicKey.from_public_bytes(eii.encryption_key))
    assert shared == encryption.exchange(client.public_key())


def test_signing_key_encoding_and_report_data() -> None:
    public = Ed25519PrivateKey.from_private_bytes(SECRET).public_key()
    encoded = signing_key_encoding(public)
    assert encoded == bytes.fromhex("302a300506032b6570032100") + public.public_bytes_raw()
    assert encoded == public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert signing_key_encoding(public.public_bytes_raw()) == encoded and len(encoded) == 44
    assert report_data(encoded, b"\x09" * 32) == hashlib.sha512(encoded + b"\x09" * 32).digest()


@pytest.mark.parametrize("options", [
    {"product_id": -1}, {"product_id": 65536}, {"revocation_level": -1}, {"revocation_level": 65535},
    {"tcb_level": -1}, {"tcb_level": 65536}, {"code_hash": b"\x01" * 31}, {"code_signer": b"\x01" * 33},
])
def test_mock_instance_info_validates_ranges(options: dict[str, object]) -> None:
    arguments: dict[str, object] = {"code_hash": CODE_HASH, "product_id": 1, "revocation_level": 0, **options}
    with pytest.raises(ValueError):
        mock_instance_info(SECRET, **arguments)  # type: ignore[arg-type]


def test_mock_instance_info_range_edges() -> None:
    low = mock_instance_info(SECRET, code_hash=CODE_HASH, product_id=0, revocation_level=0, tcb_level=0)
    assert (low.product_id, low.revocation_level, low.report.isv_svn) == (0, 0, 1)
    assert low.cpu_svn == hashlib.sha256(b"\x00\x00").digest()[:16]


# --- report body and enums ---------------------------------------------------------------------------

def test_report_body_offsets_and_validation() -> None:
    body = ReportBody(mr_enclave=CODE_HASH, isv_prod_id=0xBEEF, isv_svn=0x0102, attributes_flags=2,
                      report_data=b"\x07" * 64)
    raw = body.to_bytes()
    assert raw == hand_body(mrenclave=CODE_HASH, isv_prod_id=0xBEEF, isv_svn=0x0102, flags=2,
                            report_data=b"\x07" * 64)
    assert raw[256:260] == b"\xef\xbe\x02\x01" and ReportBody.from_bytes(raw) == body
    with pytest.raises(ValueError):
        ReportBody.from_bytes(raw[:-1])
    with pytest.raises(ValueError):
        ReportBody(isv_svn=65536)
    with pytest.raises(ValueError):
        ReportBody(mr_enclave=b"short")


def test_enums() -> None:
    assert [m.header_code for m in (EnclaveMode.RELEASE, EnclaveMode.DEBUG, EnclaveMode.SIMULATION,
                                    EnclaveMode.MOCK)] == [0, 1, 2, 3]
    assert SecuritySummary.INSECURE < SecuritySummary.STALE < SecuritySummary.SECURE
    assert [t.value for t in AttestationType] == [0, 1, 2] and str(EnclaveMode.MOCK) == "MOCK"


# --- constraints: parsing ----------------------------------------------------------------------------

H1 = "da78b28564fe5a9b4f5912901f068f9f94483006bc53e10ab93dbb97675eba26"
H2 = "edd5c98fcb260633a6e6abd0aaa59c07aee6e2492fe22fb89413edd875edf27a"
H3 = "0f738309dee76fcd9ad1b50f1c208ad3b1d2c8a62059c410b4806a88451c66ee"


def test_parse_examples_and_canonical_text() -> None:
    one = EnclaveConstraint.parse(f"C:{H1}")
    assert one.code_hashes == (bytes.fromhex(H1),) and one.min_security is SecuritySummary.STALE
    assert str(one) == f"C:{H1.upper()} SEC:STALE"
    many = EnclaveConstraint.parse(f"C:{H1} S:{H2} C:{H3} S:{H1} PROD:3123 REVOKE:3 SEC:SECURE EXPIRE:P2M3W4D")
    assert str(many) == (f"C:{H3.upper()} C:{H1.upper()} S:{H1.upper()} S:{H2.upper()} PROD:3123 REVOKE:3 "
                         f"EXPIRE:P2M25D SEC:SECURE")
    assert EnclaveConstraint.parse(str(many)) == many
    assert many.max_age == Period(0, 2, 25)
    assert EnclaveConstraint.parse(f"C:{H3} C:{H1} C:{H3.upper()}") == EnclaveConstraint.parse(f"C:{H1} C:{H3}")


def test_parse_ignores_repeated_spaces_and_accepts_sha512() -> None:
    parsed = EnclaveConstraint.parse(f"  C:{H1}   SEC:SECURE ")
    assert parsed == EnclaveConstraint(code_hashes=(bytes.fromhex(H1),), min_security=SecuritySummary.SECURE)
    assert EnclaveConstraint.parse(f"C:{'ab' * 64}").code_hashes == (b"\xab" * 64,)


@pytest.mark.parametrize(("text", "message"), [
    ("", "Either a code hash or a code signer must be provided."),
    ("SEC:INSECURE", "Either a code hash or a code signer must be provided."),
    (f"S:{H1}", "A product ID must be provided with a code signer."),
    (f"C:{H1} PROD:9001", "A code signer must be provided with a product ID."),
    (f"C:{H1[:-2]}", "neither a SHA-256 or a SHA-512 string"),
    (f"C:{H1[:-1]}g", "contains illegal character for hexBinary"),
    (f"S:{H1[:-1]}+ PROD:1", "contains illegal character for hexBinary"),
    (f"C:{H1} SEC:secure", "SEC:secure is not a valid value"),
    (f"C:{H1} SEC:VERY", "SEC:VERY is not a valid value"),
    (f"C:{H1} EXPIRE:PT1H", "EXPIRE:PT1H is not a valid value"),
    (f"C:{H1} EXPIRE:P", "EXPIRE:P is not a valid value"),
    (f"C:{H1} EXPIRE:1D", "EXPIRE:1D is not a valid value"),
    (f"C:{H1} EXPIRE:P1.5D", "EXPIRE:P1.5D is not a valid value"),
    (f"C:{H1} EXPIRE:P9999999999D", "does not fit 32 bits"),
    (f"C:{H1} FOO:1 bar:2", r"Unknown keys \[FOO, bar\]"),
    (f"c:{H1}", r"Unknown keys \[c\]"),
    (f"C:{H1} PROD", "Invalid token: PROD"),
    (f"C:{H1}:00", "Invalid token: C:"),
    (f"S:{H1} PROD:1 PROD:1", "More than one PROD defined"),
    (f"C:{H1} SEC:STALE SEC:SECURE", "More than one SEC defined"),
    (f"S:{H1} PROD:-1", "Product ID is negative."),
    (f"S:{H1} PROD:65536", "Product ID is not a 16-bit number."),
    (f"S:{H1} PROD:ten", "PROD:ten is not a valid value"),
    (f"S:{H1} PROD:99999999999", "not a 32-bit integer"),
    (f"C:{H1} REVOKE:-1", "Min revocation level is negative."),
    (f"C:{H1} REVOKE:1_0", "REVOKE:1_0 is not a valid value"),
])
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ConstraintParseError, match=message):
        EnclaveConstraint.parse(text)


def test_parse_without_validity_check_defers_it_to_check() -> None:
    constraint = EnclaveConstraint.parse(f"S:{H1}", check_validity=False)
    eii = mock_instance_info(SECRET, code_hash=CODE_HASH, product_id=1, revocation_level=0)
    with pytest.raises(ConstraintParseError, match="A product ID must be provided with a code signer."):
        constraint.check(eii)


def test_periods_like_java_time_period() -> None:
    assert Period.parse("P2M3W4D") == Period(0, 2, 25) and str(Period.parse("P2M3W4D")) == "P2M25D"
    assert Period.parse("p1y") == Period(1, 0, 0) and str(Period.parse("P0D")) == "P0D"
    assert Period.parse("-P1Y-2D") == Period(-1, 0, 2) and str(Period.parse("-P1D")) == "P-1D"
    assert Period.parse("P+6M") == Period(0, 6, 0)
    assert Period(1, 1, 0).subtract_from(datetime(2024, 3, 31)) == datetime(2023, 2, 28)
    assert Period(1, 0, 0).subtract_from(datetime(2024, 2, 29)) == datetime(2023, 2, 28)
    assert Period(0, 1, 1).subtract_from(datetime(2024, 3, 31)) == datetime(2024, 2, 28)  # months, then days


# --- constraints: checking ---------------------------------------------------------------------------

def mock(**options: object) -> EnclaveInstanceInfo:
    arguments: dict[str, object] = {"code_hash": CODE_HASH, "code_signer": SIGNER, "product_id": 10,
                                    "revocation_level": 3, "timestamp": T0, **options}
    return mock_instance_info(SECRET, **arguments)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Attested:
    """A plain value with the fields a constraint reads: enclaves whose security teebus cannot produce
    itself (STALE, SECURE) still need their branch of the check tested."""

    security_summary: SecuritySummary
    code_hash: bytes = CODE_HASH
    code_signing_key_hash: bytes = SIGNER
    product_id: int = 10
    revocation_level: int = 3
    timestamp: AttestationTime | None = AttestationTime(T0, 0)


def check(text: str, enclave: object, now: datetime | None = None) -> None:
    EnclaveConstraint.parse(text).check(enclave, now=now)  # type: ignore[arg-type]


def refused(text: str, enclave: object, now: datetime | None = None) -> ConstraintError:
    with pytest.raises(ConstraintError) as caught:
        check(text, enclave, now)
    return caught.value


def test_insecure_mock_fails_the_default_sec_stale() -> None:
    error = refused(f"C:{CODE_HASH.hex()}", mock())
    assert error.term == "SEC"
    assert str(error) == "Enclave has a security level of INSECURE which is lower than the required level of STALE."
    check(f"C:{CODE_HASH.hex()} SEC:INSECURE", mock())
    check(f"C:{CODE_HASH.hex()} SEC:INSECURE", mock(simulation=True))
    assert refused(f"C:{CODE_HASH.hex()} SEC:SECURE", mock()).term == "SEC"


def test_code_hash_term() -> None:
    error = refused(f"C:{H1} SEC:INSECURE", mock())
    assert error.term == "C"
    assert str(error) == ("Enclave code hash does not match any of the acceptable code hashes. "
                          f"(measurement hash {CODE_HASH.hex().upper()} vs acceptable {H1.upper()})")
    check(f"C:{H1} C:{CODE_HASH.hex().upper()} SEC:INSECURE", mock())
    assert refused(f"C:{hashlib.sha512(b'x').hexdigest()} SEC:INSECURE", mock()).term == "C"


def test_signer_term() -> None:
    check(f"S:{SIGNER.hex()} PROD:10 SEC:INSECURE", mock())
    error = refused(f"S:{H1} PROD:10 SEC:INSECURE", mock())
    assert error.term == "S" and f"key hash {SIGNER.hex().upper()} vs acceptable {H1.upper()}" in str(error)


def test_code_hash_or_signer() -> None:
    check(f"C:{CODE_HASH.hex()} S:{H1} PROD:10 SEC:INSECURE", mock())
    check(f"C:{H1} S:{SIGNER.hex()} PROD:10 SEC:INSECURE", mock())
    error = refused(f"C:{H1} S:{H2} PROD:10 SEC:INSECURE", mock())
    assert error.term == "C/S"
    assert str(error).startswith("Enclave does not match any of the acceptable code hashes or code signers.")
    assert CODE_HASH.hex().upper() in str(error) and SIGNER.hex().upper() in str(error)


def test_product_id_term() -> None:
    check(f"S:{SIGNER.hex()} PROD:10 SEC:INSECURE", mock())
    error = refused(f"S:{SIGNER.hex()} PROD:1 SEC:INSECURE", mock())
    assert error.term == "PROD"
    assert str(error) == "Enclave has a product ID of 10 which does not match the criteria of 1."


def test_revoke_term_means_at_least() -> None:
    for level in (0, 2, 3):
        check(f"C:{CODE_HASH.hex()} REVOKE:{level} SEC:INSECURE", mock())
    error = refused(f"C:{CODE_HASH.hex()} REVOKE:4 SEC:INSECURE", mock())
    assert error.term == "REVOKE"
    assert str(error) == "Enclave has a revocation level of 3 which is lower than the required level of 4."


@pytest.mark.parametrize(("summary", "accepted", "rejected"), [
    (SecuritySummary.SECURE, ("STALE", "SECURE"), ("INSECURE",)),
    (SecuritySummary.STALE, ("STALE",), ("INSECURE", "SECURE")),
    (SecuritySummary.INSECURE, ("INSECURE",), ("STALE", "SECURE")),
])
def test_sec_term(summary: SecuritySummary, accepted: tuple[str, ...], rejected: tuple[str, ...]) -> None:
    enclave = Attested(summary)
    for level in accepted:
        check(f"C:{CODE_HASH.hex()} SEC:{level}", enclave)
    for level in rejected:
        error = refused(f"C:{CODE_HASH.hex()} SEC:{level}", enclave)
        assert error.term == "SEC" and f"security level of {summary.name}" in str(error)
    if summary is SecuritySummary.SECURE:  # CON-806: SEC:INSECURE wants an insecure enclave exactly
        assert "does not match the required level of INSECURE" in str(refused(f"C:{CODE_HASH.hex()} SEC:INSECURE",
                                                                                 enclave))


def test_expire_term_against_a_given_now() -> None:
    attested = datetime.fromtimestamp(T0, timezone.utc)
    text = f"C:{CODE_HASH.hex()} SEC:INSECURE EXPIRE:P1D"
    check(text, mock(), now=attested + timedelta(days=1) - timedelta(microseconds=1))
    error = refused(text, mock(), now=attested + timedelta(days=1))  # exactly one day old: too old
    assert error.term == "EXPIRE"
    assert str(error).startswith("Enclave attestation data is out of date with an age that exceeds P1D.")
    assert "2023-11-14T22:13:20Z" in str(error)
    check(text, mock(), now=(attested + timedelta(hours=23)).replace(tzinfo=None))  # naive means UTC
    check(f"C:{CODE_HASH.hex()} SEC:INSECURE EXPIRE:P6M", mock(), now=attested + timedelta(days=180))
    assert refused(f"C:{CODE_HASH.hex()} SEC:INSECURE EXPIRE:P6M", mock(),
                   now=datetime(2024, 5, 14, 22, 13, 20, tzinfo=timezone.utc)).term == "EXPIRE"
    check(f"C:{CODE_HASH.hex()} SEC:INSECURE", mock(), now=attested + timedelta(days=10_000))  # no EXPIRE


def test_expire_counts_months_on_the_calendar() -> None:
    stamp = datetime(2024, 2, 29, 12, 0, tzinfo=timezone.utc)  # 2024-03-31 minus P1M is clamped to Feb 29
    enclave = mock(timestamp=stamp.timestamp())
    text = f"C:{CODE_HASH.hex()} SEC:INSECURE EXPIRE:P1M"
    check(text, enclave, now=datetime(2024, 3, 31, 11, 59, tzinfo=timezone.utc))
    assert refused(text, enclave, now=datetime(2024, 3, 31, 12, 0, tzinfo=timezone.utc)).term == "EXPIRE"


def test_expire_without_a_known_attestation_time_fails() -> None:
    dcap = EnclaveInstanceInfo.deserialize(hand_eii(hand_dcap(bound_body(flags=0x7, mrenclave=CODE_HASH)), kind=1))
    check(f"C:{CODE_HASH.hex()} SEC:INSECURE", dcap)
    assert refused(f"C:{CODE_HASH.hex()} SEC:INSECURE EXPIRE:P1D", dcap).term == "EXPIRE"
