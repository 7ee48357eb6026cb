"""The driver: the only loop. It owns the clock, feeds the election, and performs its actions.

Every wake-up runs the same step in the same order: read every pending heartbeat and netlink
event first, then evaluate timers. So a process that was stalled (SIGSTOP, a CPU storm) sees
the heartbeats that arrived meanwhile *before* its late dead-timer fires, and never claims a
VIP that its peer still holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any, Final

from hapair.balancer.health import HealthChange
from hapair.clock import Clock
from hapair.config.model import Config
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
from hapair.core.advert import interval_ms
from hapair.core.election import Election
from hapair.core.events import (
    Event,
    FitnessChanged,
    HandoverRequested,
    MaintenanceChanged,
    ShutdownRequested,
    Tick,
)
from hapair.core.roles import Role
from hapair.errors import BalancerError
from hapair.log import get_logger
from hapair.net.tracking import Check, build_checks, run_probe
from hapair.net.vip import Vip
from hapair.net.watch import (
    AddressRemoved,
    CarrierChanged,
    EventsLost,
)
from hapair.ops.hooks import HookRunner
from hapair.runtime.balancing import BalancerDriver
from hapair.runtime.clock import CpuWait
from hapair.runtime.conflicts import ConflictResponder
from hapair.runtime.fitness import FitnessTracker
from hapair.runtime.heartbeats import Heartbeats, LinkCopy
from hapair.runtime.lateness import DEFAULT_THRESHOLD, LatenessMeter
from hapair.runtime.ops_notify import OpsNotifier
from hapair.runtime.ports import StateSink
from hapair.runtime.state import PersistentState, WriteResult
from hapair.runtime.status import build_status
from hapair.runtime.vipholder import VipHolder
from hapair.runtime.wiring import (
    Adapters,
    announce_timers,
    election_settings,
    hook_context,
    vips_of,
)
from hapair.wire.heartbeat import cluster_id

#: A lazy MASTER (see `Node._lazy`) reads its peer's heartbeats at its own ticks only while
#: a drain finds at most this many datagrams: a flood (forged sources before the filter
#: tokens are in) is read on arrival again, as fast as before.
LAZY_MAX_DATAGRAMS: Final = 8


#: Tick carries nothing: one instance serves every step.
_TICK: Final = Tick()


def late_threshold(cfg: Config) -> float:
    """A wake this late is logged (once) and counted: 10 ms, or half an interval if shorter."""
    return min(DEFAULT_THRESHOLD, cfg.cluster.interval / 2)


class Node:
    """One running node: election + adapters + the loop."""

    def __init__(
        self,
        cfg: Config,
        key: bytes,
        clock: Clock,
        io: Adapters,
        state: PersistentState,
        writer: StateSink,
        *,
        log: Any = None,
    ) -> None:
        self.cfg = cfg
        self.key = key
        self.clock = clock
        self.io = io
        self.state = state
        self.writer = writer
        self.log = get_logger() if log is None else log
        now = clock.now()
        self.election = Election(election_settings(cfg), now, maintenance=state.maintenance)
        self.vips = vips_of(cfg)
        self.holder = VipHolder(self.vips, io.vips, io.announcer, announce_timers(cfg), self.log)
        if io.metrics is not None:
            self.holder.on_sent = io.metrics.garp_sent
        self.checks: list[Check] = build_checks(cfg.track, now)
        self.fitness = FitnessTracker(cfg.node.priority, (v.interface for v in self.vips), [])
        self.started_wall = time.time()
        #: Called to have a whole step run soon (set by `LoopDriver`; the simulation steps
        #: on its own after each event it posts).
        self.waker: Callable[[], None] | None = None
        self._drained = 0  # datagrams read by the last step
        self._woke = self._deadline = self._waited = 0.0
        #: The loop thread's CPU wait (set by `LoopDriver`, on that thread): wakes that were
        #: late only because the CPU was busy are told apart from a blocked loop.
        self.cpu: CpuWait | None = None
        self._held_key: frozenset[Vip] = frozenset()
        self._held_names: tuple[str, ...] = ()
        # Discovery may have news from before this node existed: look at the first step.
        self._readable: set[str] = {"discovery"} if io.discovery is not None else set()
        self._pending: list[Event] = []
        self.conflicts = ConflictResponder()
        self.hooks = HookRunner(cfg.hook, hook_context(cfg), self.log)
        self._probe_tasks: set[asyncio.Future[None]] = set()
        self.balancing = (
            BalancerDriver(
                io.balancer,
                clock,
                self.log,
                on_change=self._backend_changed,
                on_failure=self._balancer_failed,
                wake=self.wake,
                tasks=self._probe_tasks,
                metrics=io.metrics,
                on_started=self._balancer_started,
            )
            if io.balancer is not None
            else None
        )
        self.ops = OpsNotifier(
            systemd=io.systemd, mdns=io.mdns, metrics=io.metrics, hooks=self.hooks,
            log=self.log, status=self.status, now=now,
        )  # fmt: skip
        self.heartbeats = Heartbeats(
            cfg.node.name, cluster_id(cfg.cluster.name), key,
            log=self.log, interval_ms=interval_ms(cfg.cluster.interval), observer=self.ops,
        )  # fmt: skip
        # The kernel filter follows our challenge: () = not yet strict, filter on address only.
        self.heartbeats.on_tokens = lambda tokens: io.transport.set_tokens(tokens or None)
        self._macs: dict[str, bytes] = {}
        #: A takeover's GARP burst held until the cold balancer serves (its start is off-loop).
        self._held_announce: Announce | None = None
        #: Set by the daemon's SIGCONT handler: the process was stopped, not blocking itself.
        self.continued = False
        self.lateness = LatenessMeter(cfg.cluster.interval, now, late_threshold(cfg))
        self.done = False

    # -- entry points from signals and the control socket ---------------------------------

    def post(self, event: Event) -> None:
        """Queue an event for the next step (signal handlers, control socket)."""
        self._pending.append(event)
        self.wake()

    def wake(self) -> None:
        """Run a whole step soon (a posted event, new deadlines); wakes coalesce into one."""
        if self.waker is not None:
            self.waker()

    def discovery_arrived(self) -> None:
        """Discovery has news (called on the loop, from zeroconf's thread via the daemon)."""
        self.source_ready("discovery")

    def source_ready(self, source: str) -> None:
        """``netlink``, ``arp`` or ``discovery`` has data (a reader callback, or the
        simulation): remember which, then wake the loop."""
        self._readable.add(source)
        self.wake()

    def reconfigure(self, cfg: Config) -> None:
        """Adopt a validated new configuration (same node, cluster, port and VIPs)."""
        now = self.clock.now()
        old = self.cfg
        self.cfg = cfg
        self.heartbeats.interval_ms = interval_ms(cfg.cluster.interval)
        if not cfg.cluster.peers_auto:  # with "auto", discovery keeps the peer up to date
            self.io.transport.set_peers(cfg.cluster.peer_addresses)
        self.holder.schedule.timers = announce_timers(cfg)
        self.lateness.interval = cfg.cluster.interval
        self.lateness.threshold = late_threshold(cfg)
        if cfg.track != old.track:
            self.checks = build_checks(cfg.track, now)
            self._initial_fitness(now)
        failed = self.holder.change(vips_of(cfg), self.election.role is Role.MASTER, now)
        self.vips = self.holder.vips
        if failed:
            self._handle(FitnessChanged(0, True, failed), now)
        self.hooks.reconfigure(cfg.hook, hook_context(cfg))
        self._perform(self.election.reconfigure(election_settings(cfg), now), now)
        self.fitness.base = cfg.node.priority
        self.fitness.vip_interfaces = frozenset(v.interface for v in self.vips)
        self._refresh_fitness(now)
        b = self.io.balancer
        pool = (b.specs, b.board.healthy()) if b is not None else None
        self.ops.reconfigured((str(v.address) for v in self.vips), pool)
        self.wake()  # a step now: the new timers' deadlines

    def set_maintenance(self, on: bool) -> tuple[str | None, asyncio.Future[WriteResult]]:
        """Turn maintenance on (hand over, then stay BACKUP) or off; kept across reboots.

        Returns a note when the VIP cannot move yet (no healthy peer: the node stays MASTER
        and hands over as soon as a peer can take it), and a future resolved once the state
        file holds the change (None) or could not be written (the error). The write runs on
        the state writer's thread, never on this loop.
        """
        self.state = PersistentState(maintenance=on)
        durable = self.writer.submit(self.state)
        now = self.clock.now()
        actions = self.election.handle(MaintenanceChanged(on), now)
        self.log.info("maintenance_changed", on=on, role=self.election.role.name)
        self._perform(actions, now)
        self.wake()  # a step now: deadlines moved, and a resigning MASTER reads on arrival
        refused = [a for a in actions if isinstance(a, HandoverRefused)]
        return (refused[0].reason if refused else None), durable

    def request_handover(self) -> str | None:
        """Run a handover request now; return the refusal reason, or None if it started."""
        now = self.clock.now()
        actions = self.election.handle(HandoverRequested(), now)
        self._perform(actions, now)
        self.wake()  # a step now: a resigning MASTER reads its peer's heartbeats on arrival
        refused = [a for a in actions if isinstance(a, HandoverRefused)]
        return refused[0].reason if refused else None

    # -- the loop ------------------------------------------------------------------------

    async def close(self) -> None:
        """After the last step: cancel probes, stop the balancer's loop side, give the last
        role change's hook a moment (the VIPs are released already)."""
        for task in self._probe_tasks:
            task.cancel()
        if self.balancing is not None:
            await self.balancing.close()  # the daemon then stops the balancer itself
        await self.hooks.close(wait=0.5)

    def begin(self, now: float) -> None:
        """Before the first wake-up: the fitness as the interfaces are now; a step due now.

        The CPU wait counts from here (`cpu` is set first by the loop driver), so the start-up's
        own waits are not charged to the first wake-up.
        """
        self._initial_fitness(now)
        self._woke = self._deadline = now
        self._waited = self.cpu.now() if self.cpu is not None else 0.0

    def wake_at(self, now: float, *, full: bool) -> bool:
        """One wake-up at `now`, from the loop or the simulation: measure its lateness when it
        was due, run one step (`full` False: only heartbeat sockets woke us, see `step`).

        Returns True when the step ran whole: `deadline` and `reads_on_arrival` are then
        current, and the caller re-arms its timer and readers from them.
        """
        # A deadline that passed while the last step ran was due when that step began:
        # a step (or a callback) that blocks shows up as lateness too.
        expected, self._woke = max(self._deadline, self._woke), now
        if now >= expected:  # due (an early I/O wake is not late)
            self._measure(expected, now)
        if not self.step(now, heartbeats_only=not full):
            return False
        self._deadline = self._next_deadline()
        return True

    @property
    def deadline(self) -> float:
        """When the next step is due (as of the last whole step)."""
        return self._deadline

    def reads_on_arrival(self) -> bool:
        """True when a heartbeat's arrival must wake this node (see `_lazy`)."""
        return not self._lazy()

    def _lazy(self) -> bool:
        """True when the peer's heartbeats can wait for this node's own next deadline.

        A MASTER that is staying (not resigning, handing over or stopping), has proven its
        peer's run and is not flooded reads them at its send tick instead of on arrival:
        one wake-up per interval instead of two or three. What it learns from them (a
        higher-priority peer preempting, a split brain healing) is then acted on at most
        one interval later; any earlier wake (an ARP conflict, a netlink event, a signal)
        reads them first, as every step does. A BACKUP (or any other role) reads them on
        arrival, so its dead timer runs from the arrival: failover is not delayed.

        A drain that found nothing (the peer is down, restarting, or its packets are lost)
        makes it read on arrival again: a restarted peer's first packet is answered at once,
        so the new run's handshake takes no longer than before.
        """
        e = self.election
        return (
            e.role is Role.MASTER
            and not e.resigning
            and not e.shutting_down
            and not e.maintenance
            and 1 <= self._drained <= LAZY_MAX_DATAGRAMS
            and self.heartbeats.steady()
        )

    def _measure(self, expected: float, actual: float) -> None:
        """Feed the lateness meter with a wake that was due, with the loop thread's time in
        the CPU run queue since the last due wake."""
        before = self._waited
        self._waited = self.cpu.now() if self.cpu is not None else 0.0
        stopped, self.continued = self.continued, False
        late = self.lateness.observe_at(expected, actual, self._waited - before, stopped=stopped)
        if self.io.metrics is not None:
            self.io.metrics.loop_lateness(actual - expected)
        if late is not None:
            self.log.warning(
                "loop_late", lateness=round(late.lateness, 4), blocked=round(late.blocked, 4),
                threshold=self.lateness.threshold,
                note="logged once; then counted (hapair status: loop.late_wakes)",
            )  # fmt: skip

    def _next_deadline(self) -> float:
        deadlines = [self.election.next_deadline()]
        board = self.balancing.next_deadline() if self.balancing is not None else None
        announce = self.holder.schedule.next_deadline()
        for nxt in (announce, self.conflicts.next_deadline(), board, self.ops.next_deadline()):
            if nxt is not None:
                deadlines.append(nxt)
        deadlines += [c.state.next_due for c in self.checks if c.argv and not c.state.in_flight]
        return min(deadlines)

    def step(self, now: float, *, heartbeats_only: bool = False) -> bool:
        """One pass: inputs first (heartbeats, netlink, ARP, queued events), then timers.

        ``now`` is read once per step (by `wake_at`'s caller); the step's parts all use it.
        ``heartbeats_only``: only the heartbeat sockets woke the loop, before any deadline.
        Then, when they brought no news for the election (only the other link's copy of a
        heartbeat already heard, or refused datagrams), nothing else can be due and the
        step ends after reading: returns False. Otherwise True (a full step ran).
        """
        news = self._read_heartbeats(now)
        if heartbeats_only and not news and now < self._deadline:
            return False
        readable, self._readable = self._readable, set()
        if "netlink" in readable:
            self._read_netlink(now)
        if "arp" in readable:
            self._read_arp(now)
        if "discovery" in readable:
            self._read_discovery(now)
        pending, self._pending = self._pending, []
        for event in pending:
            self._handle(event, now)
        self._handle(_TICK, now)
        self._answer_conflict(now)
        self.holder.run_announcements(now)
        self._start_due_probes(now)
        if self.balancing is not None:
            self.balancing.tick(now)
        self.ops.step_done(now, self._held_vips())
        return True

    def _held_vips(self) -> tuple[str, ...]:
        """The held VIPs' addresses as strings, made again only when the set changed."""
        held = self.holder.held
        if held != self._held_key:
            self._held_key = frozenset(held)
            self._held_names = tuple(str(v.address) for v in held)
        return self._held_names

    def _handle(self, event: Event, now: float) -> None:
        self._perform(self.election.handle(event, now), now)

    # -- inputs --------------------------------------------------------------------------

    def _read_heartbeats(self, now: float) -> bool:
        """Drain the heartbeat sockets; True if the election heard news (or we replied)."""
        received = self.io.transport.receive()
        self._drained = len(received)
        news = False
        if received:
            datagrams = [(data, source) for data, source, _link in received]
            for event in self.heartbeats.receive(datagrams, now):
                if isinstance(event, LinkCopy):
                    self.election.note_link(event.node, event.link, now)
                else:
                    news = True
                    self._handle(event, now)
        if self.heartbeats.reply_due(now):
            news = True
            self._send_heartbeat(False)
        return news

    def _read_discovery(self, now: float) -> None:
        """Feed discovery's news to the finder; point the transport at the chosen peer.

        Sticky: a peer that vanished keeps its addresses until another is chosen (its
        heartbeats, not its announcements, decide whether it is alive).
        """
        feed = self.io.discovery
        if feed is None:
            return
        peer = feed.poll(self.cfg.cluster.name, now)
        if peer is None or peer.addresses == self.io.transport.peers:
            return
        self.io.transport.set_peers(peer.addresses)
        self.log.info(
            "peer_discovered", peer=peer.record.node,
            addresses=[str(a) for a in peer.addresses], reason="mdns",
        )  # fmt: skip

    def _read_netlink(self, now: float) -> None:
        for ev in self.io.netlink.read_events():
            if isinstance(ev, AddressRemoved):
                self._on_address_removed(ev, now)
            elif isinstance(ev, EventsLost):
                self._macs.clear()
                if self.election.role is Role.MASTER:
                    for vip in self.holder.missing():
                        self.holder.restore(vip, now)
            elif isinstance(ev, CarrierChanged) and self.fitness.carrier_changed(
                ev.interface, ev.up
            ):
                self._macs.pop(ev.interface, None)
                log = self.log.info if ev.up else self.log.warning
                log("carrier_changed", interface=ev.interface, up=ev.up)
                self._refresh_fitness(now)

    def _on_address_removed(self, ev: AddressRemoved, now: float) -> None:
        for vip in self.vips:
            if (
                vip.interface == ev.interface
                and vip.address == ev.address
                and self.election.role is Role.MASTER
            ):
                self.holder.restore(vip, now)

    def _read_arp(self, now: float) -> None:
        if self.election.role is not Role.MASTER:
            for w in self.io.arp.values():
                w.read_conflicts((), b"")  # drain and discard
            return
        for ifname, watcher in self.io.arp.items():
            mine = [
                v.address.ip
                for v in self.vips
                if v.interface == ifname and isinstance(v.address.ip, IPv4Address)
            ]
            mac = self._mac(ifname)
            for conflict in watcher.read_conflicts(mine, mac):
                self.conflicts.seen(str(conflict.ip), conflict.mac.hex(":"), now)

    def _mac(self, ifname: str) -> bytes:
        """The interface's MAC, cached (a netlink round trip per wake-up would cost CPU)."""
        mac = self._macs.get(ifname)
        if mac is None:
            mac = self._macs[ifname] = self.io.vips.mac(ifname)
        return mac

    def _answer_conflict(self, now: float) -> None:
        """After the grace period, log and re-announce if this node is still a MASTER that stays.

        A peer taking over legitimately (preemption, handover) is heard as MASTER within the
        grace period and this node yields instead of fighting it.
        """
        conflicts = self.conflicts.due(now)
        if not conflicts or self.election.role is not Role.MASTER or self.election.resigning:
            return
        for vip, mac in conflicts.items():
            self.log.warning("vip_conflict", vip=vip, mac=mac, action="re-announce")
            self.ops.vip_conflict()
        self.conflicts.answered(list(conflicts), now)
        self.holder.announce("conflict", second_burst=False, now=now)

    # -- fitness -------------------------------------------------------------------------

    def _initial_fitness(self, now: float) -> None:
        """A new fitness tracker (start, or a reload of the checks or the priority) with the
        carrier of its interfaces as the kernel has it now."""
        self.fitness = FitnessTracker(
            self.cfg.node.priority, (v.interface for v in self.vips), self.checks
        )
        self.fitness.start({name: self.io.vips.carrier(name) for name in self.fitness.interfaces()})
        self._refresh_fitness(now)

    def _refresh_fitness(self, now: float) -> None:
        """Tell the election when the effective priority or fault changed."""
        fit = self.fitness.evaluate()
        if fit.effective_priority != self.election.effective_priority or (
            fit.fault != self.election.fault
        ):
            self.log.info(
                "fitness_changed",
                effective_priority=fit.effective_priority,
                fault=fit.fault,
                reason=fit.reason,
            )
            self._handle(FitnessChanged(fit.effective_priority, fit.fault, fit.reason), now)
            self.ops.priority_changed(fit.effective_priority)

    def _start_due_probes(self, now: float) -> None:
        for check in self.checks:
            if check.argv and check.state.start(now):
                task = asyncio.ensure_future(self._probe(check))
                self._probe_tasks.add(task)
                task.add_done_callback(self._probe_tasks.discard)

    def _backend_changed(self, name: str, change: HealthChange) -> None:
        """A backend entered or left the pool (already logged and pushed to the data plane)."""
        self.ops.backend_changed(name, change, self.election.role, self._peer_names())

    def _balancer_failed(self, exc: BalancerError) -> None:
        """The data plane refused a change: this node cannot serve, so the peer should."""
        self.log.error("balancer_failed", error=str(exc))
        self._handle(FitnessChanged(0, True, "balancer_failed"), self.clock.now())

    def _balancer_started(self, ok: bool) -> None:
        """The cold balancer's start finished: announce the VIP now (a failure already put
        the node in FAULT, which released it)."""
        held, self._held_announce = self._held_announce, None
        if ok and held is not None and self.election.role is Role.MASTER:
            self.holder.announce(
                held.reason, second_burst=held.reason == "takeover", now=self.clock.now()
            )

    async def _probe(self, check: Check) -> None:
        ok = await run_probe(check.argv, check.track.timeout)
        now = self.clock.now()
        if check.state.record(ok, now):
            self.log.info("track_changed", check=check.name, up=check.state.up)
            self._refresh_fitness(now)
        self.wake()

    # -- actions -------------------------------------------------------------------------

    def _perform(self, actions: list[Action], now: float) -> None:
        for action in actions:
            if not isinstance(action, SendHeartbeat | Announce):
                self.ops.changed()
            if isinstance(action, RoleChanged):
                self._on_role_changed(action, now)
            elif isinstance(action, AcquireVips):
                failed = self.holder.acquire(action.reason)
                if failed:
                    self._handle(FitnessChanged(0, True, failed), now)
                elif self.balancing is not None and self.election.role is Role.MASTER:
                    self.balancing.start_cold()
            elif isinstance(action, ReleaseVips):
                self.holder.release(action.reason)
            elif isinstance(action, Announce):
                if self.balancing is not None and self.balancing.starting:
                    self._held_announce = action  # announced once the balancer serves
                else:
                    second = action.reason == "takeover"
                    self.holder.announce(action.reason, second_burst=second, now=now)
            elif isinstance(action, SendHeartbeat):
                self._send_heartbeat(action.resigning)
            elif isinstance(action, PeerLost):
                self.log.warning("peer_lost", peer=action.node, reason=action.reason)
            elif isinstance(action, PeerFound):
                self.log.info("peer_found", peer=action.node, reason=action.reason)
            elif isinstance(action, SplitBrain):
                self.log.warning("split_brain", peer=action.node, reason=action.reason)
            elif isinstance(action, VipSetMismatch):
                self.log.error("vip_set_mismatch", peer=action.node, reason=action.reason)
            elif isinstance(action, HandoverRefused):
                self.log.warning("handover_refused", reason=action.reason)
            elif isinstance(action, Stopped):
                self.done = True

    def _peer_names(self) -> str:
        return " ".join(sorted(self.election.peers))

    def _on_role_changed(self, action: RoleChanged, now: float) -> None:
        e = self.election
        self.ops.role_changed(action, e.effective_priority, self._peer_names(), now)
        if action.to_role is not Role.MASTER:
            self.holder.schedule.stop()
            self._held_announce = None
        if self.balancing is not None and action.to_role is not Role.MASTER:
            self.balancing.stop_cold()

    def _send_heartbeat(self, resigning: bool) -> None:
        self.io.transport.send(self.heartbeats.packet(self.election.advert(resigning)))

    # -- state and status ----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot for ``hapair status``."""
        now = self.clock.now()
        status = build_status(
            self.cfg,
            self.election,
            held=self.holder.held,
            rejected=self.heartbeats.rejected(),
            now=now,
            transition_wall=self.ops.last_transition_wall,
            started_wall=self.started_wall,
            drops=self.io.transport.drops(),
        )
        if self.io.balancer is not None:
            status["balancer"] = self.io.balancer.status()
        status["transitions"] = self.ops.transitions_at(now)
        status["state_save_failures"] = self.writer.failures
        status["loop"] = self.lateness.snapshot_at(now)
        return status

    def shutdown(self) -> None:
        """SIGTERM: resign gracefully (the election bounds the wait)."""
        self.post(ShutdownRequested())
