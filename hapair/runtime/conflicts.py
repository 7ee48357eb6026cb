"""When to answer another host's ARP claim on our VIP (pure; time is passed in).

A peer taking over legitimately (preemption, handover) sends its GARP a moment before its
MASTER heartbeat. So a conflict is not answered at once: it waits a short grace period, and
the caller answers only if it is still a MASTER that stays. Each VIP is answered at most once
per ``min_interval`` so two nodes that both believe they are MASTER cannot flood the segment.
"""

from __future__ import annotations

from typing import Final

#: Wait this long before answering, so a legitimate takeover is not fought.
CONFLICT_GRACE: Final = 0.02
#: Answer a conflict on one VIP at most this often.
CONFLICT_ANSWER_INTERVAL: Final = 1.0


class ConflictResponder:
    """Collects conflicts (VIP -> claiming MAC) and says when the grace period is over."""

    def __init__(
        self, grace: float = CONFLICT_GRACE, min_interval: float = CONFLICT_ANSWER_INTERVAL
    ) -> None:
        self.grace = grace
        self.min_interval = min_interval
        self._pending: dict[str, str] = {}
        self._due: float | None = None
        self._answered: dict[str, float] = {}

    def seen(self, vip: str, mac: str, now: float) -> None:
        """Record a claim on ``vip`` by ``mac``; ignored if that VIP was answered recently."""
        last = self._answered.get(vip)
        if last is not None and now - last < self.min_interval:
            return
        self._pending.setdefault(vip, mac)
        if self._due is None:
            self._due = now + self.grace

    def next_deadline(self) -> float | None:
        """When the grace period of the pending conflicts ends, if any are pending."""
        return self._due

    def due(self, now: float) -> dict[str, str]:
        """Pending conflicts whose grace period is over (then forgotten); else empty."""
        if self._due is None or now < self._due:
            return {}
        pending, self._pending, self._due = self._pending, {}, None
        return pending

    def answered(self, vips: list[str], now: float) -> None:
        """The caller re-announced these VIPs at ``now``."""
        for vip in vips:
            self._answered[vip] = now
