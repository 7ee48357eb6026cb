"""In-memory adapters for the driver (the Protocols of `hapair.runtime.ports`).

`FakeWire` is the network between the nodes: every node has the same named links (a LAN, a
direct cable), each with its own address; a datagram takes ``latency`` to arrive, may be lost
(``loss``, from a seeded RNG) or cut per (source, destination, link). The kernel's part of
the transport is modelled where it matters for the protocol: the filter tokens (a datagram
without a current token is dropped and counted, as the BPF filter does).
"""

from __future__ import annotations

import asyncio
import heapq
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_address
from pathlib import Path

from hapair.errors import VipError
from hapair.iptypes import IpAddress
from hapair.net.vip import Vip
from hapair.net.watch import ArpConflict, NetEvent
from hapair.runtime.state import PersistentState, WriteResult
from hapair.testing.clock import FakeClock
from hapair.wire.heartbeat import FILTER_TOKEN_OFFSET, FILTER_TOKEN_SIZE


@dataclass(order=True)
class _InFlight:
    at: float
    seq: int
    dest: str = field(compare=False)
    data: bytes = field(compare=False)
    source: str = field(compare=False)
    link: str = field(compare=False)


class FakeWire:
    """The links between the nodes, with latency, seeded random loss and cuts."""

    def __init__(self, clock: FakeClock, *, latency: float = 0.0005, seed: int = 0) -> None:
        self.clock = clock
        self.latency = latency
        self.loss = 0.0
        self.rng = random.Random(seed)
        #: (source node, destination node, link) pairs that carry nothing.
        self.cut: set[tuple[str, str, str]] = set()
        self.addresses: dict[str, dict[str, str]] = {}  # node -> link -> address
        self._queue: list[_InFlight] = []
        self._seq = 0
        self.sent = 0
        self.lost = 0

    def attach(self, node: str, links: dict[str, str]) -> None:
        """``node`` has these links (name -> its address on that link)."""
        self.addresses[node] = dict(links)

    def links(self) -> list[str]:
        """Every link name (all nodes have the same ones)."""
        return sorted({name for links in self.addresses.values() for name in links})

    def cut_link(self, link: str, *, between: Iterable[str] | None = None) -> None:
        """Cut ``link`` both ways (between every pair of nodes, or those named)."""
        nodes = list(between) if between is not None else list(self.addresses)
        for a in nodes:
            for b in nodes:
                if a != b:
                    self.cut.add((a, b, link))

    def heal(self) -> None:
        """Every link carries again."""
        self.cut.clear()

    def transmit(self, source: str, data: bytes) -> int:
        """``source`` sends ``data`` on each of its links to every other node."""
        sent = 0
        for dest in self.addresses:
            if dest == source:
                continue
            for link, address in self.addresses[source].items():
                sent += 1
                self.sent += 1
                if (source, dest, link) in self.cut:
                    continue
                if self.loss and self.rng.random() < self.loss:
                    self.lost += 1
                    continue
                self._seq += 1
                heapq.heappush(
                    self._queue,
                    _InFlight(
                        self.clock.now() + self.latency, self._seq, dest, data, address, link
                    ),
                )
        return sent

    def inject(self, dest: str, data: bytes, source: str, link: str) -> None:
        """Deliver a datagram from anywhere (a replay, a forgery) after the usual latency."""
        self._seq += 1
        heapq.heappush(
            self._queue,
            _InFlight(self.clock.now() + self.latency, self._seq, dest, data, source, link),
        )

    def next_arrival(self, dest: str) -> float | None:
        """When the next datagram for ``dest`` arrives (None: nothing in flight)."""
        times = [d.at for d in self._queue if d.dest == dest]
        return min(times) if times else None

    def take(self, dest: str) -> list[tuple[bytes, str, str]]:
        """Everything that has arrived for ``dest`` by now, in arrival order."""
        now = self.clock.now()
        ready = sorted(d for d in self._queue if d.dest == dest and d.at <= now)
        if ready:
            self._queue = [d for d in self._queue if not (d.dest == dest and d.at <= now)]
            heapq.heapify(self._queue)
        return [(d.data, d.source, d.link) for d in ready]

    def drop_all(self, dest: str) -> None:
        """Forget what is in flight to ``dest`` (it crashed: its sockets are gone)."""
        self._queue = [d for d in self._queue if d.dest != dest]
        heapq.heapify(self._queue)


class FakeTransport:
    """One node's heartbeat links over a `FakeWire` (`hapair.runtime.ports.HeartbeatLinks`)."""

    def __init__(self, wire: FakeWire, node: str, peers: Sequence[IpAddress]) -> None:
        self.wire = wire
        self.node = node
        self.peers: tuple[IpAddress, ...] = tuple(peers)
        self.tokens: tuple[bytes, ...] | None = None
        self.dropped: dict[str, int] = {}
        self.sent = 0
        self.received: list[tuple[bytes, str, str]] = []  # every datagram read (for replays)

    def filenos(self) -> list[int]:
        return []

    def send(self, data: bytes) -> int:
        self.sent += 1
        return self.wire.transmit(self.node, data)

    def receive(self) -> list[tuple[bytes, str, str]]:
        out = []
        for data, source, link in self.wire.take(self.node):
            if ip_address(source) not in self.peers or not self._admitted(data):
                self.dropped[link] = self.dropped.get(link, 0) + 1
                continue
            out.append((data, source, link))
        self.received += out
        return out

    def _admitted(self, data: bytes) -> bool:
        """The kernel filter's token check (`hapair.net.sockfilter`)."""
        if self.tokens is None:
            return True
        token = data[FILTER_TOKEN_OFFSET : FILTER_TOKEN_OFFSET + FILTER_TOKEN_SIZE]
        return token in self.tokens

    def set_peers(self, peers: Iterable[IpAddress]) -> None:
        self.peers = tuple(peers)

    def set_tokens(self, tokens: Sequence[bytes] | None) -> None:
        self.tokens = None if tokens is None else tuple(tokens)

    def drops(self) -> dict[str, int]:
        return dict(self.dropped)


class FakeKernel:
    """One node's interfaces and addresses (`hapair.runtime.ports.VipKernel`)."""

    def __init__(self, interfaces: Iterable[str] = ("eth0",)) -> None:
        self.addresses: set[Vip] = set()
        self.up: dict[str, bool] = {name: True for name in interfaces}
        #: Make the next N adds fail (a netlink error), to drive the FAULT path.
        self.fail_adds = 0

    def add(self, vip: Vip) -> bool:
        self._require(vip.interface)
        if self.fail_adds:
            self.fail_adds -= 1
            raise VipError(f"cannot add {vip}: injected failure")
        if vip in self.addresses:
            return False
        self.addresses.add(vip)
        return True

    def remove(self, vip: Vip) -> bool:
        if vip not in self.addresses:
            return False
        self.addresses.discard(vip)
        return True

    def present(self, vip: Vip) -> bool:
        return vip in self.addresses

    def mac(self, name: str) -> bytes:
        self._require(name)
        return bytes([2, 0, 0, 0, 0, sorted(self.up).index(name) + 1])

    def carrier(self, name: str) -> bool:
        self._require(name)
        return self.up[name]

    def _require(self, name: str) -> None:
        if name not in self.up:
            raise VipError(f"no interface {name!r}")


class FakeAnnouncer:
    """Counts announcements (`hapair.runtime.ports.Announcements`)."""

    def __init__(self) -> None:
        self.announced: list[Vip] = []

    def announce(self, vip: Vip) -> int:
        self.announced.append(vip)
        return 1


class FakeNetlink:
    """Link and address events the test queues (`hapair.runtime.ports.NetlinkEvents`)."""

    def __init__(self) -> None:
        self.queued: list[NetEvent] = []

    def fileno(self) -> int:
        return -1

    def read_events(self) -> list[NetEvent]:
        out, self.queued = self.queued, []
        return out


class FakeArp:
    """ARP conflicts the test queues (`hapair.runtime.ports.ArpConflicts`)."""

    def __init__(self) -> None:
        self.queued: list[ArpConflict] = []

    def fileno(self) -> int:
        return -1

    def read_conflicts(self, vips: Iterable[IPv4Address], own_mac: bytes) -> list[ArpConflict]:
        mine = set(vips)
        out = [c for c in self.queued if c.ip in mine and c.mac != own_mac]
        self.queued = []
        return out


class FakeStateWriter:
    """Keeps every state submitted (`hapair.runtime.ports.StateSink`); durable at once."""

    def __init__(self, path: Path = Path("/nonexistent/hapair-sim/state.json")) -> None:
        self.path = path
        self.failures = 0
        self.states: list[PersistentState] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, state: PersistentState) -> asyncio.Future[WriteResult]:
        self.states.append(state)
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        done: asyncio.Future[WriteResult] = self._loop.create_future()
        done.set_result(None)
        return done

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None
