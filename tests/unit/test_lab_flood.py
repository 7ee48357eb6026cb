"""The flood sender's packets: they pass every cheap heartbeat check but the MAC."""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hapair.lab.flood import _plan, checksum, flood_packet, udp_ipv4
from hapair.wire.heartbeat import (
    MAGIC,
    PACKET_SIZE,
    VERSION,
    Rejected,
    RejectReason,
    cluster_id,
    decode,
)

KEY = bytes(range(32))


def test_flood_packet_is_rejected_only_for_its_mac() -> None:
    cid = cluster_id("lab-trf")
    pkt = flood_packet(cid, PACKET_SIZE, random.Random(1))
    assert len(pkt) == PACKET_SIZE
    assert pkt[:4] == MAGIC and pkt[4] == VERSION and pkt[12:20] == cid
    with pytest.raises(Rejected) as err:
        decode(pkt, KEY, cid)
    assert err.value.reason is RejectReason.BAD_MAC


def test_flood_packets_differ_and_follow_the_size() -> None:
    rng = random.Random(2)
    cid = cluster_id("x")
    packets = {flood_packet(cid, 140, rng) for _ in range(64)}
    assert len(packets) == 64 and {len(p) for p in packets} == {140}
    assert flood_packet(cid, 120, rng, version=1)[4] == 1
    with pytest.raises(ValueError, match="at least 20"):
        flood_packet(cid, 19, rng)


def test_checksum_matches_rfc_1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2; the checksum is ~ddf2.
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2
    assert checksum(b"\x01") == 0xFEFF  # odd length: padded with a zero byte


@given(payload=st.binary(min_size=0, max_size=200), sport=st.integers(1, 65535))
def test_ipv4_udp_packet_checksums_verify(payload: bytes, sport: int) -> None:
    pkt = udp_ipv4("10.77.0.11", "10.77.0.12", sport, 694, payload, ident=7)
    ip, udp = pkt[:20], pkt[20:]
    assert checksum(ip) == 0
    total, ident, proto = struct.unpack_from("!2xHH3xB", ip)
    assert (total, ident, proto) == (len(pkt), 7, 17)
    assert ip[12:16] == ipaddress.IPv4Address("10.77.0.11").packed
    src_port, dst_port, length, csum = struct.unpack_from("!HHHH", udp)
    assert (src_port, dst_port, length) == (sport, 694, 8 + len(payload))
    assert csum != 0
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, length)
    assert checksum(pseudo + udp) == 0


@pytest.mark.parametrize(
    ("rate", "plan"),
    [(None, (64, 64)), (500, (1, 1)), (3000, (3, 1)), (100_000, (64, 1)), (10_000_000, (64, 64))],
)
def test_paced_sends_are_about_a_millisecond_each(rate: float | None, plan: tuple) -> None:
    assert _plan(rate) == plan
