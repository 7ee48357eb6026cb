"""What this node holds in the kernel and tells the network: its VIPs and their announcements.

The driver decides *when* (from the election's actions); this class does the I/O and keeps
the bookkeeping: which VIPs are held, the announcement schedule, one log line per burst.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hapair.clock import Clock
from hapair.core.announce import AnnounceSchedule, AnnounceTimers
from hapair.errors import VipError
from hapair.net.garp import Announcer
from hapair.net.vip import Vip, VipManager


class VipHolder:
    """Adds, removes, restores and announces this node's VIPs."""

    def __init__(
        self,
        vips: tuple[Vip, ...],
        manager: VipManager,
        announcer: Announcer,
        timers: AnnounceTimers,
        clock: Clock,
        log: Any,
    ) -> None:
        self.vips = vips
        self.manager = manager
        self.announcer = announcer
        self.schedule = AnnounceSchedule(timers)
        self.clock = clock
        self.log = log
        self.held: set[Vip] = set()
        self._logged: set[str] = set()
        #: Told how many frames each announcement round sent (the metrics' GARP counter).
        self.on_sent: Callable[[int], None] | None = None

    def acquire(self, reason: str) -> str | None:
        """Add every VIP not yet held; on failure stop and return what failed."""
        for vip in self.vips:
            if vip in self.held:
                continue
            try:
                added = self.manager.add(vip)
            except VipError as exc:
                self.log.error("vip_add_failed", vip=str(vip.address), error=str(exc))
                return f"vip_add_failed:{vip.address}"
            self.held.add(vip)
            self.log.info(
                "vip_acquired",
                vip=str(vip.address),
                interface=vip.interface,
                reason=reason,
                already_present=not added,
            )
        return None

    def release(self, reason: str, vips: tuple[Vip, ...] | None = None) -> None:
        """Remove ``vips`` (default: all); stop announcing when all are released."""
        if vips is None:
            self.schedule.stop()
        for vip in self.vips if vips is None else vips:
            try:
                removed = self.manager.remove(vip)
            except VipError as exc:
                self.log.error("vip_remove_failed", vip=str(vip.address), error=str(exc))
                continue
            self.held.discard(vip)
            if removed:
                self.log.info("vip_released", vip=str(vip.address), reason=reason)

    def restore(self, vip: Vip) -> None:
        """A held VIP vanished behind our back: put it back and announce it."""
        if vip not in self.held:
            return
        self.log.warning("vip_removed_externally", vip=str(vip.address), action="restore")
        try:
            self.manager.add(vip)
        except VipError as exc:
            self.log.error("vip_restore_failed", vip=str(vip.address), error=str(exc))
            return
        self.log.info("vip_restored", vip=str(vip.address), interface=vip.interface)
        self.announce("restored", second_burst=False)

    def missing(self) -> list[Vip]:
        """Held VIPs that are no longer on their interface (after netlink lost events)."""
        out = []
        for vip in list(self.held):
            try:
                present = self.manager.present(vip)
            except VipError:
                present = False
            if not present:
                out.append(vip)
        return out

    def change(self, new: tuple[Vip, ...], master: bool) -> str | None:
        """Apply a reloaded VIP set; VIPs in both sets are not touched."""
        dropped = tuple(v for v in self.vips if v not in new and v in self.held)
        added = [v for v in new if v not in self.vips]
        self.vips = new
        self.release("removed_by_reload", dropped)
        if added and master:
            failed = self.acquire("added_by_reload")
            if failed:
                return failed
            self.announce("reload", second_burst=True)
        return None

    def announce(self, reason: str, second_burst: bool) -> None:
        """Start a burst now (logged once), then send what is due."""
        self._logged -= {reason, "second", "refresh"}
        self.schedule.start(self.clock.now(), reason, second_burst=second_burst)
        self.run_announcements()

    def run_announcements(self) -> None:
        """Send every announcement round that is due."""
        for reason in self.schedule.due(self.clock.now()):
            frames = 0
            for vip in self.held:
                try:
                    frames += self.announcer.announce(vip)
                except VipError as exc:
                    self.log.error("garp_failed", vip=str(vip.address), error=str(exc))
            if self.on_sent is not None:
                self.on_sent(frames)
            if reason not in self._logged:
                # One line per burst, not per frame.
                self._logged.add(reason)
                self.log.info(
                    "garp_sent",
                    burst=reason,
                    vips=[str(v.address) for v in self.held],
                    frames_per_round=frames,
                    rounds=1 if reason == "refresh" else self.schedule.timers.burst,
                )
