"""A deterministic two-node simulation: real elections, a fake clock and a fake lossy link.

Every step (one delivery or one timer) is followed by ``check_invariants``; a violation raises
at once with the step that caused it, so a failing scenario points at the exact moment.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Final

from hapair.core.actions import (
    AcquireVips,
    Action,
    ReleaseVips,
    RoleChanged,
    SendHeartbeat,
    Stopped,
)
from hapair.core.election import Election, ElectionSettings
from hapair.core.events import (
    Event,
    FitnessChanged,
    HandoverRequested,
    PeerHeard,
    ShutdownRequested,
    Tick,
)
from hapair.core.invariants import NodeView, check_invariants
from hapair.core.roles import Role
from hapair.testing.clock import FakeClock

MAX_STEPS_PER_RUN: Final = 1_000_000


class InvariantViolation(AssertionError):
    """A safety rule broke during a simulation."""


@dataclass
class SimNode:
    """One simulated node: its election, whether it runs, and what the kernel would hold."""

    settings: ElectionSettings
    election: Election
    running: bool = True
    holds_vips: bool = False
    actions: list[tuple[float, Action]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The node name."""
        return self.settings.node

    @property
    def role(self) -> Role:
        """The node's current role."""
        return self.election.role


@dataclass
class FakeLink:
    """A link between the two nodes: latency, random loss and a cut per direction."""

    latency: float = 0.001
    loss: float = 0.0
    cut: set[tuple[str, str]] = field(default_factory=set)
    healthy_since: float = 0.0


class PairSim:
    """Two elections wired through a ``FakeLink`` and driven by a ``FakeClock``."""

    def __init__(
        self,
        a: ElectionSettings,
        b: ElectionSettings,
        latency: float = 0.001,
        loss: float = 0.0,
        seed: int = 0,
        check: bool = True,
    ) -> None:
        self.clock = FakeClock()
        self.link = FakeLink(latency=latency, loss=loss, healthy_since=self.clock.now())
        self.rng = random.Random(seed)
        self.check = check
        self.nodes: dict[str, SimNode] = {
            s.node: SimNode(s, Election(s, self.clock.now())) for s in (a, b)
        }
        self._queue: list[tuple[float, int, str, PeerHeard]] = []
        self._seq = 0
        self._dual_since: float | None = None
        self.steps = 0

    # -- controls ------------------------------------------------------------------------

    @property
    def now(self) -> float:
        """Current simulated time."""
        return self.clock.now()

    def node(self, name: str) -> SimNode:
        """The node called ``name``."""
        return self.nodes[name]

    def other(self, name: str) -> SimNode:
        """The node that is not ``name``."""
        return next(n for n in self.nodes.values() if n.name != name)

    def masters(self) -> list[str]:
        """Names of running MASTER nodes."""
        return [n.name for n in self.nodes.values() if n.running and n.role is Role.MASTER]

    def partition(self) -> None:
        """Cut the link both ways."""
        names = list(self.nodes)
        self.link.cut = {(names[0], names[1]), (names[1], names[0])}

    def heal(self) -> None:
        """Restore the link both ways."""
        self.link.cut = set()
        self.link.healthy_since = self.now

    def set_loss(self, loss: float) -> None:
        """Random loss probability per packet (0 restores a clean link)."""
        self.link.loss = loss
        if loss == 0.0:
            self.link.healthy_since = self.now

    def crash(self, name: str) -> None:
        """Stop a node dead: no more packets, timers or actions (its VIPs are gone with it)."""
        node = self.nodes[name]
        node.running = False
        node.holds_vips = False
        self._queue = [q for q in self._queue if q[2] != name]
        heapq.heapify(self._queue)

    def restart(self, name: str) -> None:
        """Start a crashed node again from INIT (maintenance is kept, as the state file does)."""
        node = self.nodes[name]
        node.election = Election(node.settings, self.now, maintenance=node.election.maintenance)
        node.running = True
        node.holds_vips = False
        self.link.healthy_since = self.now

    def inject(self, name: str, event: Event) -> list[Action]:
        """Deliver an event to a node now and apply its actions."""
        node = self.nodes[name]
        actions = node.election.handle(event, self.now)
        self._apply(node, actions)
        self._check()
        return actions

    def handover(self, name: str) -> list[Action]:
        """Ask ``name`` for a planned handover."""
        return self.inject(name, HandoverRequested())

    def shutdown(self, name: str) -> list[Action]:
        """SIGTERM ``name``."""
        return self.inject(name, ShutdownRequested())

    def fitness(self, name: str, priority: int, fault: bool, reason: str = "test") -> None:
        """Change a node's fitness."""
        self.inject(name, FitnessChanged(priority, fault, reason))

    # -- running -------------------------------------------------------------------------

    def run_for(self, seconds: float) -> None:
        """Advance time by ``seconds``, processing every delivery and timer in order."""
        self.run_until(self.now + seconds)

    def run_until(self, end: float) -> None:
        """Process every delivery and timer up to ``end``."""
        for _ in range(MAX_STEPS_PER_RUN):
            candidates: list[tuple[float, str]] = []
            if self._queue:
                candidates.append((self._queue[0][0], ""))
            for node in self.nodes.values():
                if node.running and not node.election.stopped:
                    candidates.append((node.election.next_deadline(), node.name))
            if not candidates:
                break
            at, who = min(candidates)
            if at > end:
                break
            self.clock.advance_to(max(at, self.now))
            self.steps += 1
            if who == "":
                _, _, dest, hb = heapq.heappop(self._queue)
                node = self.nodes[dest]
                if node.running and not node.election.stopped:
                    self._apply(node, node.election.handle(hb, self.now))
            else:
                node = self.nodes[who]
                self._apply(node, node.election.handle(Tick(), self.now))
            self._check()
        else:
            raise RuntimeError("simulation did not settle: too many steps")
        self.clock.advance_to(max(end, self.now))

    # -- internals -----------------------------------------------------------------------

    def _apply(self, node: SimNode, actions: list[Action]) -> None:
        for action in actions:
            node.actions.append((self.now, action))
            if isinstance(action, AcquireVips):
                node.holds_vips = True
            elif isinstance(action, ReleaseVips):
                node.holds_vips = False
            elif isinstance(action, SendHeartbeat):
                self._send(node, action.resigning)
            elif isinstance(action, Stopped):
                node.running = False

    def _send(self, node: SimNode, resigning: bool) -> None:
        peer = self.other(node.name)
        if (node.name, peer.name) in self.link.cut:
            return
        if self.link.loss and self.rng.random() < self.link.loss:
            return
        hb = PeerHeard(node.name, node.election.advert(resigning), link="sim")
        self._seq += 1
        heapq.heappush(self._queue, (self.now + self.link.latency, self._seq, peer.name, hb))

    def _overlap_for(self) -> float:
        """How long two masters have coexisted on a healthy link."""
        if len(self.masters()) < 2:
            self._dual_since = None
            return 0.0
        if self._dual_since is None:
            self._dual_since = self.now
        if self.link.cut or self.link.loss:
            return 0.0
        return self.now - max(self._dual_since, self.link.healthy_since)

    def _check(self) -> None:
        if not self.check:
            return
        interval = max(n.settings.interval for n in self.nodes.values())
        views = [NodeView(n.name, n.role, n.holds_vips, n.running) for n in self.nodes.values()]
        problems = check_invariants(views, self._overlap_for(), interval + 2 * self.link.latency)
        if problems:
            raise InvariantViolation(f"t={self.now:.4f}: " + "; ".join(problems))

    def transitions(self, name: str) -> list[tuple[float, RoleChanged]]:
        """Every role change of ``name`` with its time."""
        return [(t, a) for t, a in self.nodes[name].actions if isinstance(a, RoleChanged)]
