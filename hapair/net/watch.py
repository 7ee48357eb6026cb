"""Non-blocking watchers for the daemon's loop: rtnetlink address/carrier events, ARP conflicts."""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Interface, ip_interface
from typing import Any, Final, TypeAlias

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_LINK,
)
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.iprsocket import IPRSocket

from hapair.errors import VipError
from hapair.net.garp import ARPHRD_ETHER, ETH_P_ARP, ETH_P_IP, MAC_LEN
from hapair.net.vip import IFF_LOWER_UP

# Per-call caps: a flood of netlink or ARP traffic costs one bounded slice of the loop per
# readiness callback; the rest stays queued in the kernel (or is dropped there).
MAX_DATAGRAMS_PER_READ: Final = 64
MAX_FRAMES_PER_READ: Final = 64
NETLINK_BUFSIZE: Final = 65536  # one RTM_NEWLINK with many SR-IOV VFs can pass 16 KiB
SNAPSHOT_TIMEOUT_S: Final = 1.0
WATCH_GROUPS: Final = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR

PACKET_OUTGOING: Final = 4  # <linux/if_packet.h> sll_pkttype of frames this host sent
_ARP_FRAME_LEN: Final = 14 + 28  # Ethernet header + RFC 826 body for Ethernet/IPv4
_ANY_IP: Final = IPv4Address("0.0.0.0")


@dataclass(frozen=True)
class AddressAdded:
    """An address appeared on an interface (also sent when an existing one changes flags)."""

    interface: str
    address: IPv4Interface | IPv6Interface


@dataclass(frozen=True)
class AddressRemoved:
    """An address left an interface: deleted, or flushed by the kernel (IPv6 on link down)."""

    interface: str
    address: IPv4Interface | IPv6Interface


@dataclass(frozen=True)
class CarrierChanged:
    """An interface's lower-up state flipped; a deleted interface counts as down."""

    interface: str
    up: bool


@dataclass(frozen=True)
class EventsLost:
    """The kernel dropped notifications (receive buffer overrun): re-check the VIPs."""


NetEvent: TypeAlias = AddressAdded | AddressRemoved | CarrierChanged | EventsLost


@dataclass(frozen=True)
class ArpConflict:
    """Another host claims one of our VIPs from `mac`."""

    ip: IPv4Address
    mac: bytes


def _strerror(exc: OSError) -> str:
    """Errno text plus symbolic name, e.g. 'No such device [ENODEV]'."""
    if not exc.errno:
        return str(exc)
    return f"{os.strerror(exc.errno)} [{errno.errorcode.get(exc.errno, exc.errno)}]"


def _link_snapshot() -> dict[int, tuple[str, bool]]:
    """ifindex -> (name, lower-up) for every interface, from one RTM_GETLINK dump."""
    sock: Any = IPRSocket()
    try:
        raw = sock.socket
        raw.settimeout(SNAPSHOT_TIMEOUT_S)
        sock.put(ifinfmsg(), RTM_GETLINK, msg_flags=NLM_F_REQUEST | NLM_F_DUMP)
        links: dict[int, tuple[str, bool]] = {}
        deadline = time.monotonic() + SNAPSHOT_TIMEOUT_S
        while time.monotonic() < deadline:
            for msg in sock.marshal.parse(raw.recv(NETLINK_BUFSIZE)):
                kind = msg["header"]["type"]
                if kind == NLMSG_DONE:
                    return links
                if kind == NLMSG_ERROR and msg.get("error"):
                    code = abs(int(msg["error"]))
                    raise OSError(code, os.strerror(code))
                if kind == RTM_NEWLINK and msg.get("family") == socket.AF_UNSPEC:
                    index = int(msg["index"])
                    name = msg.get("ifname") or f"if{index}"
                    links[index] = (name, bool(msg["flags"] & IFF_LOWER_UP))
        raise TimeoutError("link dump did not finish")
    finally:
        sock.close()


class NetlinkWatcher:
    """Turns rtnetlink link/address notifications into NetEvents without ever blocking."""

    def __init__(self) -> None:
        # IPRSocket, not IPRoute: pyroute2 0.9's IPRoute reads through a private asyncio
        # loop, while this socket is a plain one that the daemon's loop can add_reader().
        self._sock: Any = IPRSocket()
        self._closed = False
        self.malformed = 0  # messages that could not be decoded; counted, never raised
        try:
            self._sock.bind(groups=WATCH_GROUPS)
            self._raw: Any = self._sock.socket
            self._raw.setblocking(False)
            # Subscribe first, then take the baseline: a change racing the dump shows up
            # as a queued notification after it, never as a silently lost transition.
            self._links = _link_snapshot()
        except Exception as exc:
            self.close()
            raise VipError(f"cannot watch rtnetlink: {exc}") from exc

    def fileno(self) -> int:
        """The socket to register with loop.add_reader()."""
        return int(self._raw.fileno())

    def read_events(self) -> list[NetEvent]:
        """Decode what is queued now (bounded); never blocks, never raises on bad messages."""
        events: list[NetEvent] = []
        for _ in range(MAX_DATAGRAMS_PER_READ):
            try:
                data = self._raw.recv(NETLINK_BUFSIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise VipError(
                        f"rtnetlink watch failed: {os.strerror(exc.errno or 0)}"
                    ) from exc
                # Overrun: the kernel reports it once and the socket keeps working, but
                # some notifications are gone. Carrier can be re-derived here; addresses
                # are for the caller to re-check.
                events.append(EventsLost())
                events.extend(self._resync())
                continue
            events.extend(self._decode(data))
        return events

    def close(self) -> None:
        """Close the netlink socket; idempotent."""
        if not self._closed:
            self._closed = True
            self._sock.close()

    def _decode(self, data: bytes) -> list[NetEvent]:
        """Events from one datagram; undecodable parts are counted and skipped."""
        events: list[NetEvent] = []
        try:
            msgs = list(self._sock.marshal.parse(data))
        except Exception:
            self.malformed += 1
            return events
        for msg in msgs:
            try:
                event = self._event(msg)
            except Exception:
                self.malformed += 1
                continue
            if event is not None:
                events.append(event)
        return events

    def _event(self, msg: Any) -> NetEvent | None:
        """The event one message stands for, if any."""
        kind = msg["header"]["type"]
        if kind in (RTM_NEWLINK, RTM_DELLINK):
            # AF_BRIDGE copies of link messages describe bridge ports; an RTM_DELLINK of
            # that family means "left the bridge", not "interface deleted".
            if msg.get("family") != socket.AF_UNSPEC:
                return None
            return self._link_event(msg, deleted=kind == RTM_DELLINK)
        if kind in (RTM_NEWADDR, RTM_DELADDR):
            if msg.get("family") not in (socket.AF_INET, socket.AF_INET6):
                return None
            # IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on p2p links.
            text = msg.get("local") or msg.get("address")
            address = ip_interface(f"{text}/{int(msg['prefixlen'])}")
            name = self._name(int(msg["index"]), msg.get("label"))
            if kind == RTM_NEWADDR:
                return AddressAdded(name, address)
            return AddressRemoved(name, address)
        return None

    def _link_event(self, msg: Any, *, deleted: bool) -> CarrierChanged | None:
        """CarrierChanged if this link message flips the interface's lower-up state."""
        index = int(msg["index"])
        known_name, was_up = self._links.get(index, (None, False))
        name = msg.get("ifname") or known_name or self._name(index, None)
        up = not deleted and bool(msg["flags"] & IFF_LOWER_UP)
        if deleted:
            self._links.pop(index, None)
        else:
            self._links[index] = (name, up)
        return CarrierChanged(name, up) if up != was_up else None

    def _resync(self) -> list[NetEvent]:
        """CarrierChanged for every interface whose state moved while events were lost."""
        try:
            fresh = _link_snapshot()
        except Exception:
            return []  # keep the old baseline; later notifications still compare against it
        events: list[NetEvent] = []
        for index in self._links.keys() | fresh.keys():
            old_name, was_up = self._links.get(index, ("", False))
            new_name, is_up = fresh.get(index, (old_name, False))
            if was_up != is_up:
                events.append(CarrierChanged(new_name, is_up))
        self._links = fresh
        return events

    def _name(self, index: int, label: object) -> str:
        """Interface name for an ifindex, best effort."""
        known = self._links.get(index)
        if known is not None and known[0]:
            return known[0]
        try:
            return socket.if_indextoname(index)
        except OSError:
            # Gone already; an IPv4 label is the name unless it carries an alias suffix.
            return label.split(":", 1)[0] if isinstance(label, str) and label else f"if{index}"


class ArpWatcher:
    """Reports ARP frames from other hosts that claim one of our VIPs (RFC 5227 §2.4)."""

    def __init__(self, interface: str) -> None:
        self.interface = interface
        # Protocol 0 at creation, ETH_P_ARP at bind: the socket never sees frames from
        # other interfaces, not even in the moment between socket() and bind().
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self._sock.setblocking(False)
            self._sock.bind((interface, ETH_P_ARP))
        except OSError as exc:
            self._sock.close()
            raise VipError(f"cannot watch ARP on {interface!r}: {_strerror(exc)}") from exc

    def fileno(self) -> int:
        """The socket to register with loop.add_reader()."""
        return self._sock.fileno()

    def read_conflicts(self, vips: Iterable[IPv4Address], own_mac: bytes) -> list[ArpConflict]:
        """Conflicts among the frames queued now (at most MAX_FRAMES_PER_READ); never blocks."""
        mine = frozenset(vips)
        found: list[ArpConflict] = []
        for _ in range(MAX_FRAMES_PER_READ):
            try:
                frame, addr = self._sock.recvfrom(128)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENETDOWN:
                    break  # the link went down; the socket resumes when it comes back
                raise VipError(f"ARP watch on {self.interface!r} failed: {_strerror(exc)}") from exc
            if addr[2] == PACKET_OUTGOING:
                # Our own frames. A socket bound to ETH_P_ARP gets no copies of transmitted
                # frames today (only ETH_P_ALL taps do); this keeps it so regardless.
                continue
            conflict = parse_conflict(frame, mine, own_mac)
            if conflict is not None and conflict not in found:
                found.append(conflict)
        return found

    def close(self) -> None:
        """Close the socket; idempotent."""
        self._sock.close()


def parse_conflict(
    frame: bytes, vips: frozenset[IPv4Address], own_mac: bytes
) -> ArpConflict | None:
    """The conflict one Ethernet ARP frame reveals, if any (RFC 5227 §2.4)."""
    if len(frame) < _ARP_FRAME_LEN or int.from_bytes(frame[12:14], "big") != ETH_P_ARP:
        return None
    hrd = int.from_bytes(frame[14:16], "big")
    pro = int.from_bytes(frame[16:18], "big")
    op = int.from_bytes(frame[20:22], "big")
    if (hrd, pro, frame[18], frame[19]) != (ARPHRD_ETHER, ETH_P_IP, MAC_LEN, 4) or op not in (1, 2):
        return None
    sender_mac = frame[22:28]
    sender_ip = IPv4Address(frame[28:32])
    # A probe (sender IP 0.0.0.0, RFC 5227 §2.1.1) claims nothing; it only asks.
    if sender_ip == _ANY_IP or sender_ip not in vips or sender_mac == own_mac:
        return None
    return ArpConflict(sender_ip, sender_mac)
