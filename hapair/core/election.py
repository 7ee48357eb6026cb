"""The priority election: a sans-IO state machine. Events and ``now`` in, actions out.

Semantics follow VRRP (RFC 5798 §6.4) and keepalived where they are sound:

* a peer is dead after ``dead_after`` of *its* intervals plus a skew of
  ``(256 - priority) / 256`` intervals, so the higher-priority backup detects first;
* a node starts in INIT and listens for one dead interval before claiming (RFC 5798 §6.4.1
  starts as backup; the hold-down keeps a rebooted node from stealing a healthy master's VIP);
* a master leaving on purpose says so (``resigning``) and the peer takes over at once;
* equal effective priority: the higher node name (byte-wise, UTF-8) wins. Names are unique
  in a cluster, so the order is total and both nodes compute the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from hapair.core.actions import (
    AcquireVips,
    Action,
    Announce,
    HandoverRefused,
    PeerFound,
    PeerLost,
    ReleaseVips,
    RoleChanged,
    SendHeartbeat,
    SplitBrain,
    Stopped,
    VipSetMismatch,
)
from hapair.core.advert import Advert, interval_ms
from hapair.core.events import (
    Event,
    FitnessChanged,
    HandoverRequested,
    MaintenanceChanged,
    PeerHeard,
    ShutdownRequested,
    Tick,
)
from hapair.core.roles import Role
from hapair.core.timing import dead_time

#: The only role changes the machine may make; anything else is a bug and raises.
TRANSITIONS: Final[frozenset[tuple[Role, Role]]] = frozenset(
    {
        (Role.INIT, Role.BACKUP),
        (Role.INIT, Role.MASTER),
        (Role.INIT, Role.FAULT),
        (Role.BACKUP, Role.MASTER),
        (Role.BACKUP, Role.FAULT),
        (Role.MASTER, Role.BACKUP),
        (Role.MASTER, Role.FAULT),
        (Role.FAULT, Role.BACKUP),
    }
)

#: A cap on tracked peers: the table is fed by the network (only authenticated packets, but
#: a misconfigured third node must not grow it without bound).
MAX_PEERS: Final = 16

#: Longest a graceful shutdown waits for the peer to confirm it is MASTER (the daemon must
#: exit within 1 s of SIGTERM).
SHUTDOWN_WAIT_MAX: Final = 0.6


class IllegalTransition(RuntimeError):
    """The machine tried a role change that is not in ``TRANSITIONS``."""


@dataclass(frozen=True, slots=True)
class ElectionSettings:
    """What the election needs from the configuration (durations in seconds)."""

    node: str
    priority: int
    interval: float
    dead_after: int
    preempt: bool = True
    preempt_delay: float = 0.0
    vip_digest: bytes = b""

    def dead_time(self, peer_interval: float, own_priority: int) -> float:
        """How long a peer may stay silent before it is declared dead."""
        return dead_time(peer_interval, self.dead_after, own_priority)


@dataclass(slots=True)
class PeerState:
    """What this node knows of one peer, from its last heartbeat."""

    node: str
    advert: Advert
    last_heard: float
    links: dict[str, float] = field(default_factory=dict)
    alive: bool = True
    split_reported: bool = False


@dataclass(frozen=True, slots=True)
class Transition:
    """The last role change, for status output."""

    from_role: Role
    to_role: Role
    reason: str
    at: float


def rank(priority: int, node: str) -> tuple[int, bytes]:
    """Total order used everywhere a winner is picked: priority, then node name."""
    return (priority, node.encode())


def _peer_rank(peer: PeerState) -> tuple[int, bytes]:
    return rank(peer.advert.effective_priority, peer.node)


class Election:
    """One node's view of the election."""

    def __init__(
        self, settings: ElectionSettings, now: float, *, maintenance: bool = False
    ) -> None:
        self.settings = settings
        #: Operator's maintenance: hand the VIP over and stay BACKUP until turned off. Kept
        #: by the driver across restarts; a node in maintenance never becomes MASTER unless
        #: it is already MASTER with no peer able to take over.
        self.maintenance = maintenance
        self.role = Role.INIT
        self.term = 0
        self.effective_priority = settings.priority
        self.fault = False
        self.fault_reason = ""
        self.peers: dict[str, PeerState] = {}
        self.last_transition: Transition | None = None
        self.stopped = False
        self._init_until = now + settings.dead_time(settings.interval, settings.priority)
        self._next_heartbeat = now
        self._preempt_since: float | None = None
        self._resign_until: float | None = None
        self._shutting_down = False
        self._suppress_preempt = False
        self._masters_at_takeover: frozenset[str] = frozenset()

    # -- queries -------------------------------------------------------------------------

    @property
    def resigning(self) -> bool:
        """True while a planned handover or shutdown waits for the peer to take over."""
        return self._resign_until is not None

    @property
    def shutting_down(self) -> bool:
        """True once a shutdown was requested (the node resigns, then stops)."""
        return self._shutting_down

    def advert(self, resigning: bool = False) -> Advert:
        """What this node's next heartbeat says (``resigning`` also when it is resigning)."""
        s = self.settings
        return Advert(
            role=self.role,
            base_priority=s.priority,
            effective_priority=self.effective_priority,
            resigning=resigning or self.resigning,
            term=self.term,
            interval_ms=interval_ms(s.interval),
            vip_digest=s.vip_digest,  # follows a reload
            maintenance=self.maintenance,
        )

    def next_deadline(self) -> float:
        """The next time at which ``handle(Tick(), now)`` has something to do."""
        deadlines = [self._next_heartbeat]
        if self.role in (Role.INIT, Role.BACKUP) and self._init_until > self._next_heartbeat:
            deadlines.append(self._init_until)
        for peer in self.peers.values():
            if peer.alive:
                deadlines.append(peer.last_heard + self._dead_time(peer))
        if self._preempt_since is not None:
            deadlines.append(self._preempt_since + self.settings.preempt_delay)
        if self._resign_until is not None:
            deadlines.append(self._resign_until)
        return min(deadlines)

    def note_link(self, node: str, link: str, now: float) -> None:
        """A copy of the peer's newest heartbeat arrived on another link: it is alive there.

        Link liveness is informational (status); it changes no role, so no event is needed.
        """
        peer = self.peers.get(node)
        if peer is not None:
            peer.links[link] = now

    # -- the one entry point ---------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply one event at time ``now`` and return what the driver must do, in order."""
        if self.stopped:
            return []
        out: list[Action] = []
        if isinstance(event, PeerHeard):
            self._on_heard(event, now, out)
        elif isinstance(event, FitnessChanged):
            self._on_fitness(event, now, out)
        elif isinstance(event, HandoverRequested):
            self._on_handover(now, out)
        elif isinstance(event, MaintenanceChanged):
            self._on_maintenance(event, now, out)
        elif isinstance(event, ShutdownRequested):
            self._on_shutdown(now, out)
        elif isinstance(event, Tick):
            pass
        self._expire_peers(now, out)
        self._evaluate(now, out)
        if now >= self._next_heartbeat:
            out.append(SendHeartbeat("periodic", resigning=self.resigning))
            self._next_heartbeat = now + self.settings.interval
        return out

    def reconfigure(self, settings: ElectionSettings, now: float) -> list[Action]:
        """Adopt new settings (a reload) without losing the role or the peers."""
        if settings.node != self.settings.node:
            raise ValueError("the node name cannot change on reload")
        old_base = self.settings.priority
        self.settings = settings
        if not self.fault and self.effective_priority == old_base:
            self.effective_priority = settings.priority
        self._preempt_since = None
        out: list[Action] = [SendHeartbeat("reconfigured")]
        self._evaluate(now, out)
        return out

    # -- event handlers ----------------------------------------------------------------------

    def _on_heard(self, hb: PeerHeard, now: float, out: list[Action]) -> None:
        if hb.node == self.settings.node:
            return
        peer = self.peers.get(hb.node)
        a = hb.advert
        if peer is None:
            if len(self.peers) >= MAX_PEERS:
                return
            peer = PeerState(hb.node, a, last_heard=now)
            self.peers[hb.node] = peer
            out.append(PeerFound(hb.node, "first_heartbeat"))
            if a.vip_digest != self.settings.vip_digest:
                out.append(VipSetMismatch(hb.node, "peer announces a different VIP set"))
        else:
            if not peer.alive:
                peer.alive = True
                out.append(PeerFound(hb.node, "heard_again"))
            if a.vip_digest != peer.advert.vip_digest and a.vip_digest != self.settings.vip_digest:
                out.append(VipSetMismatch(hb.node, "peer announces a different VIP set"))
            if a.role is not Role.MASTER:
                peer.split_reported = False
            peer.advert = a
            peer.last_heard = now
        peer.links[hb.link] = now
        if a.term > self.term:
            if self.role is Role.MASTER and a.role is not Role.MASTER and not a.resigning:
                # The peer took over after us while we could not hear each other, and has
                # already yielded: clients may still have its MAC, so announce ours now.
                out.append(SplitBrain(hb.node, "peer held the VIP with a newer term; it yielded"))
                out.append(Announce("split_brain"))
                out.append(SendHeartbeat("split_brain"))
                self.term = a.term + 1
            elif self.role is not Role.MASTER:
                self.term = a.term

    def _on_fitness(self, ev: FitnessChanged, now: float, out: list[Action]) -> None:
        changed = ev.effective_priority != self.effective_priority or ev.fault != self.fault
        self.effective_priority = ev.effective_priority
        self.fault = ev.fault
        self.fault_reason = ev.reason
        if ev.fault and self.role is not Role.FAULT:
            was_master = self.role is Role.MASTER
            self._transition(Role.FAULT, ev.reason, now, out)
            if was_master:
                out.append(ReleaseVips(ev.reason))
            out.append(SendHeartbeat("fault"))
        elif changed:
            # Tell the peer at once: it may now preempt us, or we it.
            out.append(SendHeartbeat("priority_changed"))

    def _on_handover(self, now: float, out: list[Action]) -> None:
        if self.role is not Role.MASTER:
            out.append(HandoverRefused(f"this node is {self.role.name}, not MASTER"))
            return
        if not self._contenders(now, include_lower=True):
            out.append(HandoverRefused("no healthy peer is alive to take over"))
            return
        self._resign_until = now + self._dead_time_max()
        out.append(SendHeartbeat("handover", resigning=True))

    def _on_maintenance(self, ev: MaintenanceChanged, now: float, out: list[Action]) -> None:
        if ev.on == self.maintenance:
            return
        self.maintenance = ev.on
        self._preempt_since = None
        if not ev.on:
            self._suppress_preempt = False  # back to the normal rules, preempt included
        elif self.role is Role.MASTER and not self._contenders(now, include_lower=True):
            out.append(
                HandoverRefused("maintenance: no healthy peer can take over yet; still MASTER")
            )
        out.append(SendHeartbeat("maintenance_on" if ev.on else "maintenance_off"))

    def _on_shutdown(self, now: float, out: list[Action]) -> None:
        self._shutting_down = True
        if self.role is Role.MASTER and self._contenders(now, include_lower=True):
            wait = min(SHUTDOWN_WAIT_MAX, self._dead_time_max())
            self._resign_until = now + wait
            out.append(SendHeartbeat("shutdown", resigning=True))
            return
        self._finish_shutdown("shutdown", out)

    def _finish_shutdown(self, reason: str, out: list[Action]) -> None:
        if self.role is Role.MASTER:
            out.append(ReleaseVips(reason))
        self._resign_until = None
        self.stopped = True
        out.append(Stopped(reason))

    # -- the rules ---------------------------------------------------------------------------

    def _dead_time(self, peer: PeerState) -> float:
        return self.settings.dead_time(peer.advert.interval, self.effective_priority or 1)

    def _dead_time_max(self) -> float:
        return self.settings.dead_time(self.settings.interval, 1)

    def _expire_peers(self, now: float, out: list[Action]) -> None:
        for peer in self.peers.values():
            if peer.alive and now >= peer.last_heard + self._dead_time(peer):
                peer.alive = False
                peer.split_reported = False
                out.append(PeerLost(peer.node, "silent on every link for the dead interval"))

    def _my_rank(self) -> tuple[int, bytes]:
        return rank(self.effective_priority, self.settings.node)

    def _live_masters(self) -> list[PeerState]:
        """Peers that are alive, MASTER and not leaving."""
        return [
            p
            for p in self.peers.values()
            if p.alive and p.advert.role is Role.MASTER and not p.advert.resigning
        ]

    def _contenders(self, now: float, include_lower: bool) -> list[PeerState]:
        """Alive peers able to be MASTER; by default only those that outrank this node."""
        mine = self._my_rank()
        return [
            p
            for p in self.peers.values()
            if p.alive
            and not p.advert.resigning
            and not p.advert.maintenance
            and p.advert.role is not Role.FAULT
            and (include_lower or _peer_rank(p) > mine)
        ]

    def _evaluate(self, now: float, out: list[Action]) -> None:
        if self.stopped:
            return
        if self._shutting_down and self.role is not Role.MASTER:
            # Nothing left to hand over (e.g. a fault ended the resignation): stop now.
            self._finish_shutdown("shutdown", out)
            return
        if self.role is Role.FAULT:
            if self.fault:
                return
            self._transition(Role.BACKUP, "fitness_restored", now, out)
        if self.role is Role.INIT:
            self._evaluate_init(now, out)
        elif self.role is Role.BACKUP:
            self._evaluate_backup(now, out)
        elif self.role is Role.MASTER:
            self._evaluate_master(now, out)

    def _evaluate_init(self, now: float, out: list[Action]) -> None:
        if self.fault:
            self._transition(Role.FAULT, self.fault_reason or "fault", now, out)
            return
        if self._shutting_down:
            return
        if self._live_masters():
            self._transition(Role.BACKUP, "peer_is_master", now, out)
        elif self._contenders(now, include_lower=False):
            self._transition(Role.BACKUP, "higher_priority_peer", now, out)
        elif now >= self._init_until:
            if self.maintenance:
                self._transition(Role.BACKUP, "maintenance", now, out)
            else:
                self._become_master("no_master_heard", now, out)

    def _evaluate_backup(self, now: float, out: list[Action]) -> None:
        if self._shutting_down or self.maintenance:
            return
        masters = self._live_masters()
        if masters:
            best = max(masters, key=_peer_rank)
            wins = self._my_rank() > _peer_rank(best)
            if self.settings.preempt and not self._suppress_preempt and wins:
                if self._preempt_since is None:
                    self._preempt_since = now
                if now >= self._preempt_since + self.settings.preempt_delay:
                    self._become_master("preempt", now, out)
            else:
                self._preempt_since = None
            return
        self._preempt_since = None
        # No master: the peer is dead, resigned or in FAULT. A higher backup takes it if alive.
        if self._contenders(now, include_lower=False):
            return
        resigned = any(p.alive and p.advert.resigning for p in self.peers.values())
        faulty = any(p.alive and p.advert.role is Role.FAULT for p in self.peers.values())
        if now < self._init_until and not (resigned or faulty):
            return  # still inside the start-up hold-down (e.g. FAULT since start, now healthy)
        self._suppress_preempt = False
        if resigned:
            reason = "peer_resigned"
        elif faulty:
            reason = "peer_fault"
        elif self.peers:
            reason = "peer_dead"
        else:
            reason = "no_master_heard"
        self._become_master(reason, now, out)

    def _evaluate_master(self, now: float, out: list[Action]) -> None:
        masters = self._live_masters()
        mine = self._my_rank()
        higher = [p for p in masters if _peer_rank(p) > mine]
        if self.resigning and masters:
            # Make-before-break: the peer has the VIP now, so it is safe to drop ours. Dropped
            # before the role change is reported (logged, hooks, metrics): until it is gone both
            # nodes hold the address, and that overlap is one heartbeat's delivery plus this.
            reason = "shutdown" if self._shutting_down else "handover"
            self._resign_until = None
            out.append(ReleaseVips(reason))
            self._transition(Role.BACKUP, reason, now, out)
            if self._shutting_down:
                self._finish_shutdown(reason, out)
            else:
                self._suppress_preempt = True
            return
        if self.maintenance and not self.resigning and self._contenders(now, include_lower=True):
            # Maintenance: hand over as a planned handover does (make-before-break).
            self._resign_until = now + self._dead_time_max()
            out.append(SendHeartbeat("maintenance", resigning=True))
            return
        if higher and not self.resigning:
            best = max(higher, key=_peer_rank)
            # The VIP first, as above: the higher master holds it already.
            out.append(ReleaseVips("another master outranks this node"))
            self._transition(Role.BACKUP, f"yield_to_{best.node}", now, out)
            out.append(SendHeartbeat("yielded"))
            return
        for peer in masters:
            if peer.split_reported:
                continue
            peer.split_reported = True
            if peer.node in self._masters_at_takeover:
                continue  # we preempted it; it will yield on our heartbeat
            # Two masters (a healed partition). We stay; re-announce so clients that learnt the
            # other MAC come back, and tell the peer now rather than at the next interval.
            out.append(SplitBrain(peer.node, "another master heard; it has lower rank and yields"))
            out.append(Announce("split_brain"))
            self.term = max(self.term, peer.advert.term) + 1
            out.append(SendHeartbeat("split_brain"))
        if self._resign_until is not None and now >= self._resign_until:
            self._resign_until = None
            if self._shutting_down:
                self._finish_shutdown("shutdown_peer_silent", out)
            else:
                out.append(HandoverRefused("the peer did not take over in time; still MASTER"))
                out.append(SendHeartbeat("handover_aborted"))

    def _become_master(self, reason: str, now: float, out: list[Action]) -> None:
        self.term = max([self.term, *(p.advert.term for p in self.peers.values())]) + 1
        self._masters_at_takeover = frozenset(p.node for p in self._live_masters())
        for peer in self.peers.values():
            peer.split_reported = False
        self._transition(Role.MASTER, reason, now, out)
        out.append(AcquireVips(reason))
        out.append(Announce("takeover"))
        out.append(SendHeartbeat("became_master"))
        self._next_heartbeat = now + self.settings.interval

    def _transition(self, to: Role, reason: str, now: float, out: list[Action]) -> None:
        if (self.role, to) not in TRANSITIONS:
            raise IllegalTransition(f"{self.role.name} -> {to.name} ({reason})")
        if self.role is Role.MASTER:
            self._resign_until = None  # a resignation ends with mastership, however it ends
        out.append(RoleChanged(self.role, to, reason, self.term))
        self.last_transition = Transition(self.role, to, reason, now)
        self.role = to
        self._preempt_since = None
