"""Heartbeat codec: golden packet, round trip, every rejection reason, and fuzzing."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hapair.core.advert import Advert
from hapair.core.roles import Role
from hapair.errors import WireError
from hapair.wire.heartbeat import (
    BODY_SIZE,
    FILTER_TOKEN_OFFSET,
    PACKET_SIZE,
    Heartbeat,
    Rejected,
    RejectReason,
    cluster_id,
    decode,
    encode,
    filter_token,
    vip_digest,
)
from hapair.wire.rejects import RejectCounter

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CLUSTER = bytes.fromhex("cc1eefc7ef2151c8")  # cluster_id("demo")
DIGEST = bytes.fromhex("0c504d5e40124c63")  # vip_digest(["192.0.2.10/24", "2001:db8::10/64"])

GOLDEN_HB = Heartbeat(
    cluster_id=CLUSTER,
    node="alpha",
    run=0x0123_4567_89AB_CDEF,
    seq=42,
    challenge=0xFEDC_BA98_7654_3210,
    echo=0x1122_3344_5566_7788,
    advert=Advert(
        role=Role.MASTER,
        base_priority=150,
        effective_priority=140,
        resigning=True,
        term=7,
        interval_ms=1000,
        vip_digest=DIGEST,
    ),
)

# One segment per field, in layout order; checked by hand against docs/protocol.md.
GOLDEN_HEX = "".join(
    [
        "48415052",  # 0   magic "HAPR"
        "02",  # 4   version 2
        "01",  # 5   flags: bit0 resigning
        "02",  # 6   role MASTER
        "96",  # 7   base priority 150
        "8c",  # 8   effective priority 140
        "000000",  # 9   reserved
        "cc1eefc7ef2151c8",  # 12  cluster id
        "9bb9bace",  # 20  filter token: HMAC(KEY, "hapair-filter-v2:" + echo)[:4]
        "616c706861" + "00" * 27,  # 24  node "alpha", NUL-padded to 32
        "0000000000000007",  # 56  term 7
        "0123456789abcdef",  # 64  run
        "000000000000002a",  # 72  seq 42
        "fedcba9876543210",  # 80  challenge
        "1122334455667788",  # 88  echo
        "000003e8",  # 96  interval 1000 ms
        "0c504d5e40124c63",  # 100 vip digest
        # 108 HMAC-SHA256(KEY, bytes 0..107)
        "bc9511926a3c965643b6c1110ab5bda607b344bc1d4338dc03fed0cc673d44df",
    ]
)


def resign(body: bytes, key: bytes = KEY) -> bytes:
    """Return body (first BODY_SIZE bytes of a packet) followed by a valid MAC."""
    body = body[:BODY_SIZE]
    return body + hmac.new(key, body, hashlib.sha256).digest()


def patch(packet: bytes, offset: int, value: bytes) -> bytes:
    """Return packet with `value` written at `offset`, re-signed so it reaches field decoding."""
    body = packet[:offset] + value + packet[offset + len(value) : BODY_SIZE]
    return resign(body)


def reason_of(data: bytes, key: bytes = KEY, cluster: bytes = CLUSTER) -> RejectReason:
    with pytest.raises(Rejected) as info:
        decode(data, key, cluster)
    return info.value.reason


# --- layout and golden packet ---------------------------------------------------------


def test_packet_size_is_fixed() -> None:
    assert BODY_SIZE == 108
    assert PACKET_SIZE == 140
    assert FILTER_TOKEN_OFFSET == 20


def test_filter_token_is_truncated_hmac_of_the_echo_with_domain_prefix() -> None:
    echo = GOLDEN_HB.echo
    expected = hmac.new(KEY, b"hapair-filter-v2:" + echo.to_bytes(8, "big"), hashlib.sha256)
    assert filter_token(KEY, echo) == expected.digest()[:4] == bytes.fromhex("9bb9bace")
    assert GOLDEN[FILTER_TOKEN_OFFSET : FILTER_TOKEN_OFFSET + 4] == filter_token(KEY, echo)
    assert filter_token(KEY, 0) == bytes(4)
    assert filter_token(KEY, 1) != filter_token(OTHER_KEY, 1)


@pytest.mark.parametrize("challenge", [-1, 2**64, True])
def test_filter_token_refuses_values_off_the_wire(challenge: int) -> None:
    with pytest.raises(ValueError):
        filter_token(KEY, challenge)


def test_golden_packet_encodes_exactly() -> None:
    assert encode(GOLDEN_HB, KEY).hex() == GOLDEN_HEX


def test_golden_packet_decodes() -> None:
    assert decode(bytes.fromhex(GOLDEN_HEX), KEY, CLUSTER) == GOLDEN_HB


def test_golden_mac_is_hmac_sha256_over_everything_before_it() -> None:
    packet = bytes.fromhex(GOLDEN_HEX)
    assert packet[BODY_SIZE:] == hmac.new(KEY, packet[:BODY_SIZE], hashlib.sha256).digest()


def test_cluster_id_is_truncated_sha256_with_domain_prefix() -> None:
    assert cluster_id("demo") == CLUSTER
    assert cluster_id("demo") == hashlib.sha256(b"hapair-cluster:demo").digest()[:8]
    assert cluster_id("demo") != cluster_id("demo2")


def test_cluster_id_rejects_empty_name() -> None:
    with pytest.raises(ValueError):
        cluster_id("")


def test_vip_digest_golden_value() -> None:
    assert vip_digest(["192.0.2.10/24", "2001:db8::10/64"]) == DIGEST


def test_vip_digest_ignores_order_duplicates_and_spelling() -> None:
    assert vip_digest(["2001:DB8:0::10/64", "192.0.2.10/24", "192.0.2.10/24"]) == DIGEST


def test_vip_digest_bare_address_means_host_prefix() -> None:
    assert vip_digest(["192.0.2.10"]) == vip_digest(["192.0.2.10/32"])
    assert vip_digest(["192.0.2.10/24"]) != vip_digest(["192.0.2.10/32"])


def test_vip_digest_refuses_a_single_string_and_bad_addresses() -> None:
    with pytest.raises(TypeError):
        vip_digest("192.0.2.10/24")
    with pytest.raises(ValueError):
        vip_digest(["192.0.2.10 dev eth0"])


def test_rejected_is_a_wire_error() -> None:
    assert issubclass(Rejected, WireError)


def test_reject_reason_values_are_snake_case() -> None:
    assert {r.value for r in RejectReason} == {
        "truncated",
        "oversized",
        "bad_magic",
        "bad_version",
        "wrong_cluster",
        "bad_mac",
        "malformed",
        "replay",
        "unproven",
        "too_many_peers",
        "self",
    }


# --- encode-side validation (programmer errors) ---------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"cluster_id": b"short"},
        {"node": ""},
        {"node": "x" * 33},
        {"node": "é" * 17},  # 34 bytes of UTF-8
        {"node": "a\x00b"},
        {"role": 2},
        {"base_priority": 256},
        {"base_priority": -1},
        {"effective_priority": 256},
        {"base_priority": True},
        {"resigning": 1},
        {"term": 2**64},
        {"seq": -1},
        {"seq": 0},
        {"run": 0},
        {"run": 2**64},
        {"challenge": 0},
        {"challenge": 2**64},
        {"echo": -1},
        {"echo": 2**64},
        {"interval_ms": 0},
        {"interval_ms": 2**32},
        {"vip_digest": bytes(9)},
    ],
)
def test_invalid_fields_raise_value_error(changes: dict[str, object]) -> None:
    advert_fields = {f.name for f in dataclasses.fields(Advert)}
    in_advert = {k: v for k, v in changes.items() if k in advert_fields}
    rest = {k: v for k, v in changes.items() if k not in advert_fields}
    with pytest.raises(ValueError):
        advert = dataclasses.replace(GOLDEN_HB.advert, **in_advert)  # type: ignore[arg-type]
        dataclasses.replace(GOLDEN_HB, advert=advert, **rest)  # type: ignore[arg-type]


def test_an_advert_is_checked_when_a_heartbeat_carries_it() -> None:
    with pytest.raises(ValueError, match="advert must be an Advert"):
        dataclasses.replace(GOLDEN_HB, advert=None)  # type: ignore[arg-type]


def test_node_name_of_exactly_32_bytes_round_trips() -> None:
    hb = dataclasses.replace(GOLDEN_HB, node="é" * 16)
    assert decode(encode(hb, KEY), KEY, CLUSTER) == hb


def test_short_key_is_refused_both_ways() -> None:
    with pytest.raises(ValueError):
        encode(GOLDEN_HB, bytes(31))
    with pytest.raises(ValueError):
        decode(bytes.fromhex(GOLDEN_HEX), bytes(31), CLUSTER)


# --- one crafted input per rejection reason -------------------------------------------

GOLDEN = bytes.fromhex(GOLDEN_HEX)


def test_truncated_by_one_byte() -> None:
    assert reason_of(GOLDEN[:-1]) is RejectReason.TRUNCATED
    assert reason_of(b"") is RejectReason.TRUNCATED


def test_one_byte_extra() -> None:
    assert reason_of(GOLDEN + b"\x00") is RejectReason.OVERSIZED


def test_bad_magic() -> None:
    assert reason_of(b"HAPX" + GOLDEN[4:]) is RejectReason.BAD_MAGIC


def test_bad_version() -> None:
    assert reason_of(patch(GOLDEN, 4, b"\x03")) is RejectReason.BAD_VERSION


def test_a_version_1_packet_is_bad_version_not_truncated() -> None:
    # The v1 golden packet (120 bytes): a mixed-version pair must say what is wrong.
    v1 = bytes.fromhex(
        "48415052010102968c000000cc1eefc7ef2151c8616c706861" + "00" * 27
        + "0000000000000007000000000000002a17979cfe362a0000000003e80c504d5e40124c63"
        + "f2264592ff8e8ad5f97a87c4627f88d61cfa32d2139f9f827debb984a0250791"
    )  # fmt: skip
    assert len(v1) == 120
    assert reason_of(v1) is RejectReason.BAD_VERSION


def test_wrong_cluster() -> None:
    assert reason_of(GOLDEN, cluster=cluster_id("other")) is RejectReason.WRONG_CLUSTER


def test_flipped_mac_byte() -> None:
    tampered = GOLDEN[:-1] + bytes([GOLDEN[-1] ^ 0x01])
    assert reason_of(tampered) is RejectReason.BAD_MAC


def test_flipped_body_byte_without_resigning() -> None:
    tampered = GOLDEN[:60] + bytes([GOLDEN[60] ^ 0x80]) + GOLDEN[61:]
    assert reason_of(tampered) is RejectReason.BAD_MAC


def test_wrong_key() -> None:
    assert reason_of(GOLDEN, key=OTHER_KEY) is RejectReason.BAD_MAC


@pytest.mark.parametrize(
    ("offset", "value", "what"),
    [
        (6, b"\x04", "role code 4"),
        (6, b"\xff", "role code 255"),
        (5, b"\x04", "flag bit 2 set"),
        (5, b"\x80", "flag bit 7 set"),
        (9, b"\x00\x01\x00", "reserved byte set"),
        (11, b"\x80", "reserved bit set"),
        (24, bytes(32), "empty node name"),
        (24, b"ab\x00c", "NUL inside node name"),
        (24, b"\xff\xfe", "node name not UTF-8"),
        (96, bytes(4), "interval 0"),
        (64, bytes(8), "run 0"),
        (72, bytes(8), "seq 0"),
        (80, bytes(8), "challenge 0"),
        (20, b"\x00\x00\x00\x00", "filter token not that of the echo"),
        (88, bytes(8), "echo 0 with a token"),
    ],
)
def test_malformed_fields_with_valid_mac(offset: int, value: bytes, what: str) -> None:
    assert reason_of(patch(GOLDEN, offset, value)) is RejectReason.MALFORMED, what


def test_check_order_magic_and_version_before_size() -> None:
    assert reason_of(b"XXXX" + GOLDEN[4:-1]) is RejectReason.BAD_MAGIC
    assert reason_of(GOLDEN[:4] + b"\x01" + GOLDEN[5:-1]) is RejectReason.BAD_VERSION
    assert reason_of(b"HAPR") is RejectReason.TRUNCATED
    assert reason_of(b"HA") is RejectReason.TRUNCATED


def test_check_order_size_before_cluster() -> None:
    assert reason_of(GOLDEN[:-1], cluster=cluster_id("other")) is RejectReason.TRUNCATED


def test_check_order_cluster_before_mac() -> None:
    tampered = GOLDEN[:-1] + bytes([GOLDEN[-1] ^ 0x01])
    assert reason_of(tampered, cluster=cluster_id("other")) is RejectReason.WRONG_CLUSTER


def test_check_order_mac_before_fields() -> None:
    unsigned = GOLDEN[:6] + b"\x09" + GOLDEN[7:]
    assert reason_of(unsigned) is RejectReason.BAD_MAC


# --- reject counter -------------------------------------------------------------------


def test_reject_counter_logs_once_then_counts() -> None:
    counter = RejectCounter()
    assert counter.record(RejectReason.BAD_MAC) is True
    assert counter.record(RejectReason.BAD_MAC) is False
    assert counter.record(RejectReason.TRUNCATED) is True
    assert counter.record(RejectReason.BAD_MAC) is False
    assert counter.counts() == {"bad_mac": 3, "truncated": 1}
    assert counter.total == 4


def test_reject_counter_starts_empty() -> None:
    counter = RejectCounter()
    assert counter.counts() == {}
    assert counter.total == 0


# --- properties -----------------------------------------------------------------------

U64 = st.integers(min_value=0, max_value=2**64 - 1)
U64_NONZERO = st.integers(min_value=1, max_value=2**64 - 1)
U8 = st.integers(min_value=0, max_value=255)
NODE_NAMES = st.text(
    alphabet=st.characters(blacklist_characters="\x00", codec="utf-8"), min_size=1
).filter(lambda s: len(s.encode("utf-8")) <= 32)

ADVERTS = st.builds(
    Advert,
    role=st.sampled_from(Role),
    base_priority=U8,
    effective_priority=U8,
    resigning=st.booleans(),
    term=U64,
    interval_ms=st.integers(min_value=1, max_value=2**32 - 1),
    vip_digest=st.binary(min_size=8, max_size=8),
    maintenance=st.booleans(),
)
HEARTBEATS = st.builds(
    Heartbeat,
    cluster_id=st.just(CLUSTER),
    node=NODE_NAMES,
    run=U64_NONZERO,
    seq=U64_NONZERO,
    challenge=U64_NONZERO,
    echo=U64,
    advert=ADVERTS,
)


@given(HEARTBEATS)
def test_round_trip(hb: Heartbeat) -> None:
    packet = encode(hb, KEY)
    assert len(packet) == PACKET_SIZE
    assert decode(packet, KEY, CLUSTER) == hb


@given(st.binary(max_size=2 * PACKET_SIZE))
def test_arbitrary_bytes_only_ever_raise_rejected(data: bytes) -> None:
    with pytest.raises(Rejected):
        decode(data, KEY, CLUSTER)


@given(st.binary(min_size=PACKET_SIZE, max_size=PACKET_SIZE))
def test_unsigned_packets_with_right_header_fail_the_mac(raw: bytes) -> None:
    data = b"HAPR\x02" + raw[5:12] + CLUSTER + raw[20:]
    assert reason_of(data) is RejectReason.BAD_MAC


@given(st.binary(min_size=BODY_SIZE, max_size=BODY_SIZE))
def test_signed_garbage_decodes_or_is_malformed(garbage: bytes) -> None:
    body = b"HAPR\x02" + garbage[5:12] + CLUSTER + garbage[20:]
    try:
        hb = decode(resign(body), KEY, CLUSTER)
    except Rejected as exc:
        assert exc.reason is RejectReason.MALFORMED
    else:
        # Anything accepted is canonical: re-encoding gives back the very same bytes.
        assert encode(hb, KEY) == resign(body)


@given(HEARTBEATS, st.data())
def test_single_byte_mutation_is_always_rejected(hb: Heartbeat, data: st.DataObject) -> None:
    packet = encode(hb, KEY)
    offset = data.draw(st.integers(min_value=0, max_value=PACKET_SIZE - 1), label="offset")
    xor = data.draw(st.integers(min_value=1, max_value=255), label="xor")
    mutated = packet[:offset] + bytes([packet[offset] ^ xor]) + packet[offset + 1 :]
    try:
        decoded = decode(mutated, KEY, CLUSTER)
    except Rejected:
        return
    pytest.fail(f"mutated packet accepted as {decoded!r} (original {hb!r})")


@given(st.binary(max_size=2 * PACKET_SIZE))
def test_bytes_behind_a_right_header_only_ever_raise_rejected(tail: bytes) -> None:
    with pytest.raises(Rejected):
        decode(b"HAPR\x02" + tail, KEY, CLUSTER)


@given(HEARTBEATS, st.sampled_from([PACKET_SIZE - 1, PACKET_SIZE + 1, 0, BODY_SIZE]))
def test_resized_packets_are_rejected_by_size(hb: Heartbeat, size: int) -> None:
    packet = (encode(hb, KEY) + bytes(PACKET_SIZE))[:size]
    expected = RejectReason.TRUNCATED if size < PACKET_SIZE else RejectReason.OVERSIZED
    assert reason_of(packet) is expected
