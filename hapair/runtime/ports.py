"""The driver's I/O edges as Protocols: what `Node` needs from each, and nothing more.

The daemon passes the real adapters (`hapair.net`: per-link UDP sockets, netlink, AF_PACKET;
`hapair.runtime.state`: the state file's writer thread); `hapair.testing.fakes` implements
the same Protocols in memory, so the two-node simulation (`hapair.testing.driversim`) runs
the real driver over a fake clock and a fake lossy wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Protocol

from hapair.iptypes import IpAddress
from hapair.net.vip import Vip
from hapair.net.watch import ArpConflict, NetEvent
from hapair.runtime.state import PersistentState, WriteResult


class HeartbeatLinks(Protocol):
    """One socket per heartbeat link (`hapair.net.transport.UdpTransport`)."""

    @property
    def peers(self) -> tuple[IpAddress, ...]:
        """The peer's addresses, one per link."""
        ...

    def filenos(self) -> list[int]:
        """Descriptors to watch for readability."""
        ...

    def send(self, data: bytes) -> int:
        """Send on every link; how many sends succeeded. Never raises."""
        ...

    def receive(self) -> list[tuple[bytes, str, str]]:
        """What is queued now, as (datagram, source address, link); never blocks."""
        ...

    def set_peers(self, peers: Iterable[IpAddress]) -> None:
        """Point the links at new peer addresses (a reload, discovery)."""
        ...

    def set_tokens(self, tokens: Sequence[bytes] | None) -> None:
        """Admit only datagrams carrying one of ``tokens`` (None: address filter only)."""
        ...

    def drops(self) -> dict[str, int]:
        """Datagrams dropped before they were read, per link."""
        ...


class VipKernel(Protocol):
    """Addresses and interfaces in the kernel (`hapair.net.vip.VipManager`)."""

    def add(self, vip: Vip) -> bool:
        """Add; True if added now, False if it was there. VipError on failure."""
        ...

    def remove(self, vip: Vip) -> bool:
        """Remove; True if removed now, False if it was gone. VipError on failure."""
        ...

    def present(self, vip: Vip) -> bool:
        """True if the address is on its interface."""
        ...

    def mac(self, name: str) -> bytes:
        """The interface's hardware address."""
        ...

    def carrier(self, name: str) -> bool:
        """True if the interface is up with carrier."""
        ...


class Announcements(Protocol):
    """Gratuitous ARP / unsolicited NA (`hapair.net.garp.Announcer`)."""

    def announce(self, vip: Vip) -> int:
        """Tell the segment that ``vip`` is here; the frames sent."""
        ...


class NetlinkEvents(Protocol):
    """Link and address changes (`hapair.net.watch.NetlinkWatcher`)."""

    def fileno(self) -> int:
        """The descriptor to watch."""
        ...

    def read_events(self) -> list[NetEvent]:
        """What is queued now; never blocks."""
        ...


class ArpConflicts(Protocol):
    """ARP frames of other hosts claiming our VIPs (`hapair.net.watch.ArpWatcher`)."""

    def fileno(self) -> int:
        """The descriptor to watch."""
        ...

    def read_conflicts(self, vips: Iterable[IPv4Address], own_mac: bytes) -> list[ArpConflict]:
        """Conflicts among the frames queued now; never blocks."""
        ...


class StateSink(Protocol):
    """Where the durable state goes (`hapair.runtime.state.StateWriter`), off the loop."""

    path: Path
    failures: int

    def submit(self, state: PersistentState) -> asyncio.Future[WriteResult]:
        """Queue ``state``; the future resolves once it is durable (None) or failed."""
        ...
