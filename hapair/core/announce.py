"""When to send gratuitous ARP / unsolicited NA: bursts, a second burst, periodic refresh.

keepalived sends a burst on takeover and another after ``garp_master_delay``; clients and
switches that missed the first (a port still learning, a lost frame) get the second. The
periodic refresh keeps switch MAC tables and ARP caches warm well inside their ageing time.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AnnounceTimers:
    """Burst size and spacing, second-burst delay and refresh period (0 disables)."""

    burst: int = 5
    spacing: float = 0.01
    second_burst_delay: float = 2.0
    refresh: float = 10.0


class AnnounceSchedule:
    """Pure schedule: ``start`` a burst, ask ``due(now)`` which rounds to send."""

    def __init__(self, timers: AnnounceTimers) -> None:
        self.timers = timers
        self._pending: list[tuple[float, str]] = []
        self._refresh_at: float | None = None

    def start(self, now: float, reason: str, second_burst: bool = True) -> None:
        """Queue a burst now (and a second one later), and (re)start the refresh clock."""
        t = self.timers
        self._pending = [(at, r) for at, r in self._pending if r != reason]
        self._pending.extend((now + i * t.spacing, reason) for i in range(t.burst))
        if second_burst and t.second_burst_delay > 0:
            base = now + t.second_burst_delay
            self._pending.extend((base + i * t.spacing, "second") for i in range(t.burst))
        self._pending.sort()
        self._refresh_at = now + t.refresh if t.refresh > 0 else None

    def stop(self) -> None:
        """Forget every pending round (the node left MASTER)."""
        self._pending.clear()
        self._refresh_at = None

    def next_deadline(self) -> float | None:
        """When the next round is due, or None when nothing is scheduled."""
        times = [at for at, _ in self._pending[:1]]
        if self._refresh_at is not None:
            times.append(self._refresh_at)
        return min(times) if times else None

    def due(self, now: float) -> list[str]:
        """Pop every round due at ``now``; return their reasons (one entry per round)."""
        out: list[str] = []
        while self._pending and self._pending[0][0] <= now:
            out.append(self._pending.pop(0)[1])
        if self._refresh_at is not None and now >= self._refresh_at:
            out.append("refresh")
            self._refresh_at = now + self.timers.refresh
        return out
