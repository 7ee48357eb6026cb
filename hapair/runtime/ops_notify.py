"""What the node tells the parties watching it: systemd, discovery (mDNS), metrics and hooks.

The node calls the same methods at the same points whether a party is configured or not; a
party that is absent is simply not told. Nothing here blocks: sd_notify is one non-blocking
datagram, an mDNS update is handed to zeroconf's thread, metrics are counters under a lock,
hooks are started on the loop and never awaited here.

READY=1, RELOADING=1 and STOPPING=1 are the daemon's (it owns start-up, reload and signals);
from the loop systemd hears WATCHDOG=1 and STATUS=.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol

from hapair.balancer.health import HealthChange
from hapair.core.actions import RoleChanged
from hapair.core.roles import Role
from hapair.ops.hooks import BackendEvent, HookEvent, RoleEvent
from hapair.ops.systemd import WatchdogTimer, status_line_from
from hapair.wire.heartbeat import RejectReason

#: Role changes kept for `hapair status`.
TRANSITION_HISTORY: Final = 10


class SystemdSink(Protocol):
    """The part of ``hapair.ops.systemd.Notifier`` the loop uses."""

    @property
    def watchdog_period(self) -> float | None:
        """Seconds between WATCHDOG=1 pings systemd asked for (None: no watchdog)."""

    def watchdog(self) -> bool:
        """Send WATCHDOG=1."""

    def status(self, text: str) -> bool:
        """Send STATUS=text if it changed."""


class DiscoverySink(Protocol):
    """The part of ``hapair.ops.mdns.Announcer`` the loop uses."""

    def update(self, *, role: str | None = None, priority: int | None = None) -> None:
        """Announce a new role and/or priority; returns at once."""


class MetricsSink(Protocol):
    """The part of ``hapair.ops.metrics.Metrics`` the loop uses."""

    def role_changed(self, from_: Role, to: Role, reason: str) -> None:
        """A transition happened."""

    def heartbeat_sent(self) -> None:
        """One heartbeat went out."""

    def heartbeat_received(self, peer: str, now: float) -> None:
        """A heartbeat from ``peer`` was accepted at ``now``."""

    def heartbeat_rejected(self, reason: RejectReason) -> None:
        """A datagram was refused."""

    def vip_conflict(self) -> None:
        """A conflict on a held VIP was answered."""

    def set_vips(self, vips: Iterable[str]) -> None:
        """The configured VIPs."""

    def vips_held(self, held: Iterable[str]) -> None:
        """The VIPs held now."""

    def set_backends(self, names: Iterable[str], up: Iterable[str]) -> None:
        """The configured backends and which are up."""


class HookSink(Protocol):
    """The part of ``hapair.ops.hooks.HookRunner`` the loop uses."""

    def submit(self, event: HookEvent) -> None:
        """Start ``event``'s hooks; never waits."""


class OpsNotifier:
    """Tells the parties watching the node what it does: systemd, mDNS, metrics, hooks, the log.

    A party that is None is skipped. ``status`` returns the node's ``hapair status`` snapshot;
    it is read only when a STATUS= line is due, at most once per step.
    """

    def __init__(
        self,
        *,
        systemd: SystemdSink | None,
        mdns: DiscoverySink | None,
        metrics: MetricsSink | None,
        hooks: HookSink,
        log: Any,
        status: Callable[[], Mapping[str, Any]],
        now: float,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.systemd = systemd
        self.mdns = mdns
        self.metrics = metrics
        self.hooks = hooks
        self.log = log
        self._status = status
        self._wall = wall
        period = systemd.watchdog_period if systemd is not None else None
        #: systemd's watchdog is pinged from the loop itself: a hung loop is restarted.
        self.watchdog = WatchdogTimer(period, now) if period else None
        self._status_due = True
        self.last_transition_wall: float | None = None
        #: The last role changes, newest last, for `hapair status` (bounded).
        self.transitions: deque[dict[str, Any]] = deque(maxlen=TRANSITION_HISTORY)

    # -- systemd ---------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When the loop must wake for the next watchdog ping (None: no watchdog)."""
        return self.watchdog.next_deadline() if self.watchdog is not None else None

    def changed(self) -> None:
        """Something STATUS= shows may have changed: send it at the end of this step."""
        self._status_due = True

    def step_done(self, now: float, held: Iterable[str]) -> None:
        """End of a loop step: the VIPs held to metrics, WATCHDOG=1 when due, STATUS= if due."""
        if self.metrics is not None:
            self.metrics.vips_held(held)
        notifier = self.systemd
        if notifier is None:
            return
        if self.watchdog is not None and self.watchdog.due_at(now):
            notifier.watchdog()  # proof the loop turns
            self._status_due = True  # also catches a peer's role change that caused no action
        if self._status_due:
            self._status_due = False
            notifier.status(status_line_from(self._status()))

    # -- role, priority, backends, reload --------------------------------------------------

    def role_changed(self, action: RoleChanged, priority: int, peer: str, now: float) -> None:
        """A transition: kept for ``hapair status``, counted, logged, hooks run, mDNS told."""
        self.last_transition_wall = self._wall()
        self.transitions.append(
            {
                "from": action.from_role.name, "to": action.to_role.name,
                "reason": action.reason, "term": action.term,
                "at": round(self.last_transition_wall, 3),
                "mono": now,
            }
        )  # fmt: skip
        if self.metrics is not None:
            self.metrics.role_changed(action.from_role, action.to_role, action.reason)
        self.log.info(
            "role_changed",
            from_role=action.from_role.name,
            to_role=action.to_role.name,
            reason=action.reason,
            term=action.term,
            priority=priority,
        )
        self.hooks.submit(RoleEvent(action.to_role, action.from_role, action.reason, peer=peer))
        if self.mdns is not None:  # never blocks: handed to zeroconf's thread
            self.mdns.update(role=action.to_role.name, priority=priority)

    def transitions_at(self, now: float) -> list[dict[str, Any]]:
        """The kept role changes, oldest first, each with how long ago (seconds) it was."""
        return [
            {k: v for k, v in t.items() if k != "mono"} | {"ago": round(now - t["mono"], 3)}
            for t in self.transitions
        ]

    def priority_changed(self, priority: int) -> None:
        """The effective priority changed: announce it over mDNS."""
        if self.mdns is not None:
            self.mdns.update(priority=priority)

    def backend_changed(self, name: str, change: HealthChange, role: Role, peer: str) -> None:
        """A backend entered or left the pool: STATUS= is due and the backend hooks run."""
        self._status_due = True
        self.hooks.submit(BackendEvent(name, change.up, change.reason, role, peer=peer))

    def reconfigured(
        self, vips: Iterable[str], backends: tuple[Iterable[str], Iterable[str]] | None
    ) -> None:
        """A reload was applied: metrics learn the VIPs and the (configured, healthy) backends."""
        if self.metrics is not None:
            self.metrics.set_vips(vips)
            if backends is not None:
                self.metrics.set_backends(*backends)

    # -- counters --------------------------------------------------------------------------

    def heartbeat_sent(self) -> None:
        """One heartbeat went out."""
        if self.metrics is not None:
            self.metrics.heartbeat_sent()

    def heartbeat_received(self, peer: str, now: float) -> None:
        """A heartbeat from ``peer`` was accepted at ``now``."""
        if self.metrics is not None:
            self.metrics.heartbeat_received(peer, now)

    def heartbeat_rejected(self, reason: RejectReason) -> None:
        """A datagram was refused for ``reason``."""
        if self.metrics is not None:
            self.metrics.heartbeat_rejected(reason)

    def vip_conflict(self) -> None:
        """A conflict on a held VIP was answered by re-announcing."""
        if self.metrics is not None:
            self.metrics.vip_conflict()
