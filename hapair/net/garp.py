"""Gratuitous ARP and unsolicited Neighbor Advertisement: pure frame builders and a sender."""

from __future__ import annotations

import errno
import os
import socket
import struct
from ipaddress import IPv4Address, IPv6Address
from typing import Final, Literal

from hapair.errors import VipError
from hapair.net.vip import Vip

ETH_P_ARP: Final = 0x0806
ETH_P_IP: Final = 0x0800
ETH_P_IPV6: Final = 0x86DD
ARPHRD_ETHER: Final = 1
MAC_LEN: Final = 6
BROADCAST_MAC: Final = b"\xff" * MAC_LEN
ZERO_MAC: Final = b"\x00" * MAC_LEN
# Ethernet minimum frame without the FCS; the NIC adds the FCS, we pad the rest (IEEE 802.3).
MIN_FRAME_LEN: Final = 60

ARP_OPS: Final[dict[str, int]] = {"request": 1, "reply": 2}  # RFC 826 ar$op

ALL_NODES: Final = IPv6Address("ff02::1")
# RFC 2464 §7: IPv6 multicast maps to 33:33 followed by the low 32 bits of the group.
ALL_NODES_MAC: Final = b"\x33\x33" + ALL_NODES.packed[-4:]
IPPROTO_ICMPV6: Final = 58
ND_HOP_LIMIT: Final = 255  # RFC 4861 §7.1.2: receivers drop NAs with any other hop limit
ICMPV6_NEIGHBOR_ADVERT: Final = 136
NA_FLAG_ROUTER: Final = 0x80000000
NA_FLAG_SOLICITED: Final = 0x40000000
NA_FLAG_OVERRIDE: Final = 0x20000000
ND_OPT_TARGET_LLADDR: Final = 2

_ETH: Final = struct.Struct("!6s6sH")
# RFC 826 packet: hrd, pro, hln, pln, op, sha, spa, tha, tpa.
_ARP: Final = struct.Struct("!HHBBH6s4s6s4s")
# RFC 8200 §3 fixed header: version/class/flow, payload length, next header, hop limit, src, dst.
_IPV6: Final = struct.Struct("!IHBB16s16s")
# RFC 4861 §4.4: type, code, checksum, R|S|O|reserved, target; then the TLLA option (§4.6.1).
_NA: Final = struct.Struct("!BBHI16s")
_ND_OPT_LLADDR: Final = struct.Struct("!BB6s")

# A cached socket stays tied to the ifindex it was bound to; these say the interface it
# named went away (or was recreated under the same name), so one fresh socket is worth a try.
_STALE_SOCKET_ERRNOS: Final = frozenset({errno.ENXIO, errno.ENODEV, errno.ENETDOWN})


def format_mac(mac: bytes) -> str:
    """b'\\x02\\x00...' -> '02:00:...'."""
    return mac.hex(":")


def _check_mac(mac: bytes) -> None:
    """Reject anything that is not a 6-byte Ethernet address."""
    if len(mac) != MAC_LEN:
        raise ValueError(f"expected a {MAC_LEN}-byte MAC address, got {len(mac)} bytes")


def _pad(frame: bytes) -> bytes:
    """Zero-pad a frame to the Ethernet minimum."""
    return frame.ljust(MIN_FRAME_LEN, b"\x00")


def build_arp(sender_mac: bytes, ip: IPv4Address, op: Literal["request", "reply"]) -> bytes:
    """A broadcast gratuitous ARP frame announcing that `ip` is at `sender_mac`."""
    _check_mac(sender_mac)
    # Request: the ARP Announcement of RFC 5227 §2.3 (sender IP = target IP = ours, target
    # MAC zero, "ignored" per §2.1.1); §3 explains why requests are the preferred form.
    # Reply: RFC 2002 §4.6 sets the target MAC to the announced address too, and Linux only
    # treats a reply as gratuitous (overriding a cached entry) when target MAC == sender MAC.
    target_mac = ZERO_MAC if op == "request" else sender_mac
    arp = _ARP.pack(
        ARPHRD_ETHER,
        ETH_P_IP,
        MAC_LEN,
        4,
        ARP_OPS[op],
        sender_mac,
        ip.packed,
        target_mac,
        ip.packed,
    )
    return _pad(_ETH.pack(BROADCAST_MAC, sender_mac, ETH_P_ARP) + arp)


def internet_checksum(data: bytes) -> int:
    """RFC 1071 ones' complement sum of 16-bit words, complemented."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_unsolicited_na(src_mac: bytes, ip: IPv6Address) -> bytes:
    """An all-nodes unsolicited Neighbor Advertisement that `ip` is at `src_mac`."""
    _check_mac(src_mac)
    # RFC 4861 §7.2.6: Solicited=0 (nobody asked), Override=1 (replace cached entries);
    # Router=0 because a VIP here is a host address (RFC 5798 §6.4.1 sets R only for routers).
    option = _ND_OPT_LLADDR.pack(ND_OPT_TARGET_LLADDR, 1, src_mac)  # length in 8-octet units
    body = _NA.pack(ICMPV6_NEIGHBOR_ADVERT, 0, 0, NA_FLAG_OVERRIDE, ip.packed) + option
    # Upper-layer checksum over the IPv6 pseudo-header (RFC 8200 §8.1, RFC 4443 §2.3).
    pseudo = ip.packed + ALL_NODES.packed + struct.pack("!I3xB", len(body), IPPROTO_ICMPV6)
    checksum = internet_checksum(pseudo + body)
    body = body[:2] + struct.pack("!H", checksum) + body[4:]
    # Source is the VIP itself (an address of the interface, RFC 4861 §7.2.6); this is why
    # VIPs are added without DAD: a tentative address must not be used as a source.
    ipv6 = _IPV6.pack(6 << 28, len(body), IPPROTO_ICMPV6, ND_HOP_LIMIT, ip.packed, ALL_NODES.packed)
    return _pad(_ETH.pack(ALL_NODES_MAC, src_mac, ETH_P_IPV6) + ipv6 + body)


def announcement_frames(vip: Vip, mac: bytes) -> list[bytes]:
    """The frames that announce `vip` at `mac`: ARP request + reply, or one unsolicited NA."""
    if isinstance(vip.ip, IPv4Address):
        # Both forms: some stacks only refresh their cache from one of them (RFC 5227 §3).
        return [build_arp(mac, vip.ip, "request"), build_arp(mac, vip.ip, "reply")]
    return [build_unsolicited_na(mac, vip.ip)]


class Announcer:
    """Sends VIP announcements over one cached AF_PACKET socket per interface."""

    def __init__(self) -> None:
        self._sockets: dict[str, socket.socket] = {}

    def announce(self, vip: Vip) -> int:
        """Send the announcement frames for `vip` now; returns how many were sent."""
        cached = vip.interface in self._sockets
        try:
            return self._send(vip)
        except OSError as exc:
            self._discard(vip.interface)
            if not (cached and exc.errno in _STALE_SOCKET_ERRNOS):
                raise _error(vip, exc) from exc
        try:
            return self._send(vip)  # once more, on a socket bound to the current ifindex
        except OSError as exc:
            self._discard(vip.interface)
            raise _error(vip, exc) from exc

    def close(self) -> None:
        """Close every socket; the Announcer may be used again afterwards."""
        for name in list(self._sockets):
            self._discard(name)

    def _send(self, vip: Vip) -> int:
        """Build and send the frames on the interface's socket."""
        sock = self._socket(vip.interface)
        # Read the MAC at send time: it is whatever the interface has now.
        _name, _proto, _pkttype, hatype, mac = sock.getsockname()
        if not mac:
            # No hardware address: the ifindex this socket was bound to no longer exists.
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        if hatype != ARPHRD_ETHER or len(mac) != MAC_LEN:
            raise VipError(f"cannot announce {vip}: {vip.interface} is not an Ethernet interface")
        frames = announcement_frames(vip, mac)
        for frame in frames:
            sock.send(frame)
        return len(frames)

    def _socket(self, interface: str) -> socket.socket:
        """The cached socket for `interface`, opened on first use."""
        sock = self._sockets.get(interface)
        if sock is None:
            # Protocol 0: a send-only socket, so no received frames ever queue up on it.
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            try:
                # Never block the daemon's loop; a full device queue is reported, not waited on.
                sock.setblocking(False)
                sock.bind((interface, 0))
            except OSError:
                sock.close()
                raise
            self._sockets[interface] = sock
        return sock

    def _discard(self, interface: str) -> None:
        """Forget and close the socket for `interface`."""
        sock = self._sockets.pop(interface, None)
        if sock is not None:
            sock.close()


def _error(vip: Vip, exc: OSError) -> VipError:
    """VipError naming the VIP and the errno."""
    code = exc.errno
    text = os.strerror(code) if code is not None else str(exc)
    name = errno.errorcode.get(code, "?") if code is not None else "?"
    return VipError(f"cannot announce {vip}: {text} [{name}]")
