"""Two real drivers (`hapair.runtime.node.Node`) over a fake clock and a fake lossy wire.

Unlike `hapair.testing.pair.PairSim`, which wires two bare elections together, this runs the
whole driver: the real heartbeat codec with its HMAC, the freshness handshake, the kernel
filter's tokens, the lazy MASTER that reads its peer at its own tick, the VIP holder and the
fitness checks, with only the adapters faked (`hapair.testing.fakes`). The loop is the one the
asyncio loop runs too: a node wakes at its `deadline`, or on a datagram's arrival while it
`reads_on_arrival`; each wake is `Node.wake_at`. The invariants (`hapair.core.invariants`)
are checked after every wake, so a failing scenario stops at the exact step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from hapair.config.load import validate_config
from hapair.config.model import Config
from hapair.core.events import Event
from hapair.core.invariants import NodeView, check_invariants
from hapair.core.roles import Role
from hapair.runtime.node import Node
from hapair.runtime.state import PersistentState
from hapair.runtime.vipholder import remove_stale_vips
from hapair.runtime.wiring import Adapters, vips_of
from hapair.testing.clock import FakeClock
from hapair.testing.fakes import (
    FakeAnnouncer,
    FakeArp,
    FakeKernel,
    FakeNetlink,
    FakeStateWriter,
    FakeTransport,
    FakeWire,
)
from hapair.testing.pair import InvariantViolation

#: Each node's address on each link (the LAN and the direct heartbeat cable).
LINKS: Final = {
    "a": {"lan": "10.99.0.1", "hb": "192.168.99.1"},
    "b": {"lan": "10.99.0.2", "hb": "192.168.99.2"},
}
VIP: Final = "10.99.0.50/24"
KEY: Final = hashlib.sha256(b"hapair driver simulation").digest()
#: Bounds: a scenario that does not settle fails instead of running forever.
MAX_WAKES: Final = 2_000_000
MAX_WAKES_AT_ONE_INSTANT: Final = 1000


def sim_config(
    name: str,
    priority: int,
    *,
    interval: float = 0.02,
    dead_after: int = 3,
    preempt: bool = True,
) -> Config:
    """A validated configuration for node ``name`` of the simulated pair."""
    peer = "b" if name == "a" else "a"
    data: dict[str, Any] = {
        "node": {"name": name, "priority": priority},
        "cluster": {
            "name": "sim",
            "peers": [LINKS[peer]["lan"], LINKS[peer]["hb"]],
            "interval": f"{interval * 1000:g}ms",
            "dead_after": dead_after,
            "preempt": preempt,
        },
        "vip": [{"address": VIP, "interface": "eth0"}],
        "runtime": {"state_dir": "/nonexistent/hapair-sim", "lib_dir": "/nonexistent/hapair-sim"},
    }
    return validate_config(data, source=f"<sim {name}>", check_secret=False)


@dataclass
class SimHost:
    """One simulated host: its kernel survives the daemon; the daemon may be down."""

    name: str
    cfg: Config
    kernel: FakeKernel = field(default_factory=FakeKernel)
    netlink: FakeNetlink = field(default_factory=FakeNetlink)
    arp: FakeArp = field(default_factory=FakeArp)
    announcer: FakeAnnouncer = field(default_factory=FakeAnnouncer)
    writer: FakeStateWriter = field(default_factory=FakeStateWriter)
    node: Node | None = None
    transport: FakeTransport | None = None
    maintenance: bool = False  # what the state file holds
    starts: int = 0
    wakes: int = 0

    @property
    def running(self) -> bool:
        """True while its daemon runs."""
        return self.node is not None and not self.node.done

    @property
    def role(self) -> Role:
        """Its daemon's role (INIT when it is down)."""
        return self.node.election.role if self.node is not None else Role.INIT

    @property
    def holds_vip(self) -> bool:
        """True if its kernel has any VIP."""
        return bool(self.kernel.addresses)


class DriverSim:
    """Two hosts running the real driver, wired through a `FakeWire`, on a `FakeClock`."""

    def __init__(
        self,
        priorities: tuple[int, int] = (150, 100),
        *,
        interval: float = 0.02,
        dead_after: int = 3,
        preempt: bool = True,
        latency: float = 0.0005,
        seed: int = 0,
        check: bool = True,
    ) -> None:
        self.clock = FakeClock()
        self.wire = FakeWire(self.clock, latency=latency, seed=seed)
        self.interval = interval
        self.check = check
        self.hosts: dict[str, SimHost] = {}
        for name, priority in zip(("a", "b"), priorities, strict=True):
            cfg = sim_config(
                name, priority, interval=interval, dead_after=dead_after, preempt=preempt
            )
            self.hosts[name] = SimHost(name, cfg)
            self.wire.attach(name, LINKS[name])
        self._dual_since: float | None = None
        self._healthy_since = self.clock.now()
        self.wakes = 0
        #: (time, host, role) of every role change seen after a wake.
        self.roles: list[tuple[float, str, Role]] = []
        self._last_role: dict[str, Role] = {}

    # -- controls ------------------------------------------------------------------------

    @property
    def now(self) -> float:
        """Simulated time."""
        return self.clock.now()

    def host(self, name: str) -> SimHost:
        """The host called ``name``."""
        return self.hosts[name]

    def node(self, name: str) -> Node:
        """The running daemon of ``name`` (AssertionError if it is down)."""
        node = self.hosts[name].node
        assert node is not None, f"{name} is not running"
        return node

    def masters(self) -> list[str]:
        """Running MASTERs."""
        return [h.name for h in self.hosts.values() if h.running and h.role is Role.MASTER]

    def start(self, name: str) -> Node:
        """Start ``name``'s daemon (a new process: new run nonce, no memory of the last)."""
        host = self.hosts[name]
        assert not host.running, f"{name} runs already"
        remove_stale_vips(vips_of(host.cfg), host.kernel)  # as the daemon does first
        peers = host.cfg.cluster.peer_addresses
        host.transport = FakeTransport(self.wire, name, peers)
        io = Adapters(
            transport=host.transport,
            vips=host.kernel,
            announcer=host.announcer,
            netlink=host.netlink,
            arp={"eth0": host.arp},
        )
        log = structlog.get_logger("hapair").bind(node=name)
        node = Node(
            host.cfg, KEY, self.clock, io, PersistentState(host.maintenance), host.writer, log=log
        )
        host.node = node
        host.starts += 1
        node.begin(self.now)
        self._wake(host, full=True)
        return node

    def crash(self, name: str) -> None:
        """The host dies: daemon, sockets and kernel addresses are gone at once."""
        host = self.hosts[name]
        host.node = None
        host.transport = None
        host.kernel.addresses.clear()
        self.wire.drop_all(name)

    def kill(self, name: str) -> None:
        """SIGKILL: the daemon is gone, its VIP stays in the kernel (as on a real host)."""
        host = self.hosts[name]
        host.node = None
        host.transport = None
        self.wire.drop_all(name)

    def partition(self) -> None:
        """Cut every link both ways."""
        for link in self.wire.links():
            self.wire.cut_link(link)

    def cut(self, link: str) -> None:
        """Cut one link both ways."""
        self.wire.cut_link(link)

    def heal(self) -> None:
        """Every link carries again, without loss."""
        self.wire.heal()
        self.wire.loss = 0.0
        self._healthy_since = self.now

    def set_loss(self, loss: float) -> None:
        """Random loss per datagram and link (0 restores a clean wire)."""
        self.wire.loss = loss
        if loss == 0.0:
            self._healthy_since = self.now

    def post(self, name: str, event: Event) -> None:
        """Deliver an event (a signal, the control socket) and run the step it causes."""
        host = self.hosts[name]
        self.node(name).post(event)
        self._wake(host, full=True)

    def replay(self, name: str, datagrams: list[tuple[bytes, str, str]]) -> None:
        """Put recorded datagrams on the wire to ``name`` again (an attacker on the LAN)."""
        for data, source, link in datagrams:
            self.wire.inject(name, data, source, link)

    # -- running -------------------------------------------------------------------------

    def run_for(self, seconds: float) -> None:
        """Advance by ``seconds``, running every wake-up in time order."""
        self.run_until(self.now + seconds)

    def run_until(self, end: float) -> None:
        """Run every wake-up due up to ``end``."""
        self._run(end)
        self.clock.advance_to(max(end, self.now))

    def run_until_true(self, predicate: Callable[[], bool], limit: float) -> float:
        """Run until ``predicate()`` holds (checked after every wake); the time it took.

        Raises AssertionError if it does not hold within ``limit`` seconds.
        """
        start = self.now
        if self._run(start + limit, predicate):
            return self.now - start
        raise AssertionError(f"not within {limit:.3f}s (t={self.now:.4f})")

    def _run(self, end: float, stop: Callable[[], bool] | None = None) -> bool:
        """Run the wake-ups due up to ``end`` in time order; return early, True, once
        ``stop()`` holds (checked before every wake and at the end)."""
        same_instant = 0
        last = self.now
        for _ in range(MAX_WAKES):
            if stop is not None and stop():
                return True
            due = self._next_wake()
            if due is None or due[0] > end:
                return stop is not None and stop()
            at, name, full = due
            self.clock.advance_to(max(at, self.now))
            same_instant = same_instant + 1 if self.now == last else 0
            last = self.now
            if same_instant > MAX_WAKES_AT_ONE_INSTANT:
                raise RuntimeError(f"t={self.now:.4f}: {name} wakes without time passing")
            self._wake(self.hosts[name], full=full)
        raise RuntimeError("simulation did not settle: too many wake-ups")

    def _next_wake(self) -> tuple[float, str, bool] | None:
        """The earliest wake-up: (time, host, full step?)."""
        best: tuple[float, str, bool] | None = None
        for host in self.hosts.values():
            node = host.node
            if node is None or node.done:
                continue
            candidates = [(node.deadline, host.name, True)]
            if host.netlink.queued or host.arp.queued:
                candidates.append((self.now, host.name, True))  # a reader callback now
            if node.reads_on_arrival():
                arrival = self.wire.next_arrival(host.name)
                if arrival is not None:
                    candidates.append((arrival, host.name, False))
            for c in candidates:
                if best is None or c[0] < best[0]:
                    best = c
        return best

    def _wake(self, host: SimHost, *, full: bool) -> None:
        node = host.node
        assert node is not None
        self.wakes += 1
        host.wakes += 1
        if host.netlink.queued:
            node.source_ready("netlink")
        if host.arp.queued:
            node.source_ready("arp")
        node.wake_at(self.now, full=full)
        if node.done:
            host.maintenance = node.state.maintenance
        role = node.election.role
        if self._last_role.get(host.name) is not role:
            self._last_role[host.name] = role
            self.roles.append((self.now, host.name, role))
        self._check()

    # -- invariants ----------------------------------------------------------------------

    def _overlap(self) -> float:
        """How long two VIP-holding MASTERs have coexisted on a healthy wire."""
        if len(self.masters()) < 2:
            self._dual_since = None
            return 0.0
        if self._dual_since is None:
            self._dual_since = self.now
        if self.wire.cut or self.wire.loss:
            return 0.0
        return self.now - max(self._dual_since, self._healthy_since)

    def _check(self) -> None:
        if not self.check:
            return
        views = [
            NodeView(h.name, h.role, h.holds_vip, h.running)
            for h in self.hosts.values()
            if h.running
        ]
        settle = self.interval + 2 * self.wire.latency
        problems = check_invariants(views, self._overlap(), settle)
        if problems:
            raise InvariantViolation(f"t={self.now:.4f}: " + "; ".join(problems))

    def close(self) -> None:
        """Release the fakes' resources."""
        for host in self.hosts.values():
            host.writer.close()
