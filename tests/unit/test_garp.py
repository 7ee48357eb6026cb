"""Golden frames for gratuitous ARP and unsolicited NA, and the pure ARP conflict parser."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address, ip_interface

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hapair.net.garp import announcement_frames, build_arp, build_unsolicited_na, format_mac
from hapair.net.vip import Vip
from hapair.net.watch import ArpConflict, parse_conflict

MAC = bytes.fromhex("02005e100001")
OTHER_MAC = bytes.fromhex("02005e1000ee")
VIP4 = IPv4Address("192.0.2.50")
VIP6 = IPv6Address("2001:db8::50")


def h(text: str) -> bytes:
    """Hex with spaces and newlines allowed."""
    return bytes.fromhex("".join(text.split()))


ARP_REQUEST = h(
    """
    ffffffffffff 02005e100001 0806
    0001 0800 06 04 0001
    02005e100001 c0000232
    000000000000 c0000232
    """
) + bytes(18)

ARP_REPLY = h(
    """
    ffffffffffff 02005e100001 0806
    0001 0800 06 04 0002
    02005e100001 c0000232
    02005e100001 c0000232
    """
) + bytes(18)

# The checksum 9a7c was worked out separately from the RFC 4443 §2.3 pseudo-header.
UNSOLICITED_NA = h(
    """
    333300000001 02005e100001 86dd
    60000000 0020 3a ff
    20010db8000000000000000000000050
    ff020000000000000000000000000001
    88 00 9a7c 20000000
    20010db8000000000000000000000050
    02 01 02005e100001
    """
)


def ones_complement_sum(data: bytes) -> int:
    """Independent 16-bit ones' complement sum (not the module's implementation)."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def icmpv6_checksum_ok(frame: bytes) -> bool:
    """Recompute the pseudo-header sum over a whole Ethernet+IPv6+ICMPv6 frame."""
    ipv6 = frame[14:54]
    payload_len = struct.unpack("!H", ipv6[4:6])[0]
    icmp = frame[54 : 54 + payload_len]
    pseudo = ipv6[8:24] + ipv6[24:40] + payload_len.to_bytes(4, "big") + b"\0\0\0" + bytes([58])
    return ones_complement_sum(pseudo + icmp) == 0xFFFF


def test_arp_request_golden() -> None:
    assert build_arp(MAC, VIP4, "request") == ARP_REQUEST


def test_arp_reply_golden_has_target_mac_equal_to_sender() -> None:
    frame = build_arp(MAC, VIP4, "reply")
    assert frame == ARP_REPLY
    assert frame[32:38] == frame[22:28] == MAC  # tha == sha: Linux's gratuitous-reply test


@pytest.mark.parametrize(("op", "code"), [("request", 1), ("reply", 2)])
def test_arp_op_codes_and_padding(op: str, code: int) -> None:
    frame = build_arp(MAC, VIP4, op)  # type: ignore[arg-type]
    assert len(frame) == 60
    assert frame[42:] == bytes(18)
    assert struct.unpack("!H", frame[20:22])[0] == code
    assert frame[28:32] == frame[38:42] == VIP4.packed  # sender IP == target IP
    assert frame[:6] == b"\xff" * 6 and frame[12:14] == b"\x08\x06"


def test_unsolicited_na_golden() -> None:
    assert build_unsolicited_na(MAC, VIP6) == UNSOLICITED_NA


def test_unsolicited_na_fields() -> None:
    frame = build_unsolicited_na(MAC, VIP6)
    assert len(frame) == 86  # above the 60-byte minimum, so no padding
    assert frame[:6] == bytes.fromhex("333300000001")
    assert frame[12:14] == b"\x86\xdd"
    assert frame[20] == 58 and frame[21] == 255  # next header ICMPv6, hop limit 255
    assert IPv6Address(frame[22:38]) == VIP6
    assert IPv6Address(frame[38:54]) == IPv6Address("ff02::1")
    assert frame[54] == 136 and frame[55] == 0
    flags = struct.unpack("!I", frame[58:62])[0]
    assert flags == 0x20000000  # Override only: Router=0, Solicited=0
    assert IPv6Address(frame[62:78]) == VIP6
    assert frame[78:80] == b"\x02\x01" and frame[80:86] == MAC
    assert icmpv6_checksum_ok(frame)


@given(mac=st.binary(min_size=6, max_size=6), ip=st.integers(min_value=0, max_value=2**128 - 1))
def test_unsolicited_na_checksum_verifies_for_any_input(mac: bytes, ip: int) -> None:
    assert icmpv6_checksum_ok(build_unsolicited_na(mac, IPv6Address(ip)))


def test_checksum_detects_corruption() -> None:
    frame = bytearray(build_unsolicited_na(MAC, VIP6))
    frame[85] ^= 0x01
    assert not icmpv6_checksum_ok(bytes(frame))


@pytest.mark.parametrize("mac", [b"", bytes(5), bytes(7)])
def test_builders_reject_non_ethernet_mac(mac: bytes) -> None:
    with pytest.raises(ValueError, match="6-byte"):
        build_arp(mac, VIP4, "request")
    with pytest.raises(ValueError, match="6-byte"):
        build_unsolicited_na(mac, VIP6)


def test_announcement_frames_per_family() -> None:
    v4 = Vip(ip_interface("192.0.2.50/24"), "eth0")
    v6 = Vip(ip_interface("2001:db8::50/64"), "eth0")
    assert announcement_frames(v4, MAC) == [ARP_REQUEST, ARP_REPLY]
    assert announcement_frames(v6, MAC) == [UNSOLICITED_NA]
    assert str(v4) == "192.0.2.50/24 on eth0"
    assert (v4.family, v6.family) == (4, 6)
    assert format_mac(MAC) == "02:00:5e:10:00:01"


@pytest.mark.parametrize("name", ["", "a" * 16, "eth 0", "eth/0", "eth0:1"])
def test_vip_rejects_invalid_interface_names(name: str) -> None:
    with pytest.raises(ValueError, match="interface name"):
        Vip(ip_interface("192.0.2.50/24"), name)


def arp(op: int, sender_mac: bytes, sender_ip: str, target_ip: str = "192.0.2.50") -> bytes:
    """A hand-assembled ARP frame, independent of build_arp."""
    body = struct.pack(
        "!HHBBH6s4s6s4s",
        1,
        0x0800,
        6,
        4,
        op,
        sender_mac,
        IPv4Address(sender_ip).packed,
        bytes(6),
        IPv4Address(target_ip).packed,
    )
    return b"\xff" * 6 + sender_mac + b"\x08\x06" + body


VIPS = frozenset({VIP4})


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (arp(1, OTHER_MAC, "192.0.2.50"), ArpConflict(VIP4, OTHER_MAC)),
        (arp(2, OTHER_MAC, "192.0.2.50"), ArpConflict(VIP4, OTHER_MAC)),
        (arp(1, MAC, "192.0.2.50"), None),  # our own announcement
        (arp(1, OTHER_MAC, "0.0.0.0"), None),  # RFC 5227 probe: asks, claims nothing
        (arp(1, OTHER_MAC, "192.0.2.7"), None),  # someone else's address
        (arp(1, OTHER_MAC, "192.0.2.7", target_ip="192.0.2.50"), None),  # asks for our VIP
        (arp(3, OTHER_MAC, "192.0.2.50"), None),  # RARP op, not ARP
        (arp(1, OTHER_MAC, "192.0.2.50")[:41], None),  # truncated
        (arp(1, OTHER_MAC, "192.0.2.50")[:12] + b"\x08\x00" + bytes(28), None),  # not ARP
        (build_arp(OTHER_MAC, VIP4, "reply"), ArpConflict(VIP4, OTHER_MAC)),
        (b"", None),
    ],
)
def test_parse_conflict(frame: bytes, expected: ArpConflict | None) -> None:
    assert parse_conflict(frame, VIPS, MAC) == expected
