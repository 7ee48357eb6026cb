"""How late the loop wakes for its own deadlines (pure: the driver passes both times in).

A wake is late by ``actual - expected`` when the loop meant to wake at ``expected`` (its next
deadline: a heartbeat to send, a peer to declare dead) and only ran at ``actual``: something
held the loop (a blocking call, a CPU storm, a stop). The meter keeps the worst lateness of
the heartbeat interval in progress and of the last one, the worst of the last minute (in
one-second slots, so memory stays fixed), and counts the wakes later than a threshold; the
first of those is reported once so that the driver logs it, later ones are only counted.

Part of a lateness may be the kernel's: the process was runnable, but other processes had
the CPUs (a loaded host). The driver passes that share in (``waited``: the time the loop's
thread spent waiting for a CPU since its previous wake, from ``/proc/thread-self/schedstat``);
what remains, ``blocked``, is the daemon's own doing (a blocking call, the GIL, a GC pause).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

#: The window of ``worst_last_minute``, in slots of ``SLOT`` seconds.
WINDOW: Final = 60.0
SLOT: Final = 1.0
#: A wake later than this is worth a log line (once) and a count: an eighth of the dead time
#: at the fastest timers, far below it at the defaults.
DEFAULT_THRESHOLD: Final = 0.010


@dataclass(frozen=True, slots=True)
class LateWake:
    """The first wake later than the threshold (for the one log line)."""

    lateness: float
    expected: float
    blocked: float  # the part not spent waiting for a CPU


class LatenessMeter:
    """Worst lateness per heartbeat interval and per minute, and the late wakes."""

    def __init__(self, interval: float, now: float, threshold: float = DEFAULT_THRESHOLD) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self.threshold = threshold
        self.late_wakes = 0
        self.worst_ever = 0.0
        self.worst_blocked = 0.0
        self._interval_start = now
        self._interval_worst = 0.0
        self.last_interval_worst = 0.0
        self._slots: deque[tuple[int, float]] = deque()  # (slot number, worst in it)
        self._logged = False

    def observe_at(
        self, expected: float, actual: float, waited: float = 0.0, stopped: bool = False
    ) -> LateWake | None:
        """The loop meant to wake at ``expected`` and woke at ``actual``, ``waited`` of it for
        a CPU; ``stopped``: the process was stopped meanwhile (SIGSTOP, then SIGCONT), which is
        lateness but none of the daemon's own blocking. Returns the wake to log when it is the
        first one later than the threshold."""
        self._roll(actual)
        lateness = max(0.0, actual - expected)
        blocked = 0.0 if stopped else max(0.0, lateness - max(0.0, waited))
        self.worst_blocked = max(self.worst_blocked, blocked)
        self._interval_worst = max(self._interval_worst, lateness)
        self.worst_ever = max(self.worst_ever, lateness)
        slot = int(actual // SLOT)
        if self._slots and self._slots[-1][0] == slot:
            if lateness > self._slots[-1][1]:
                self._slots[-1] = (slot, lateness)
        else:
            self._slots.append((slot, lateness))
        self._expire(actual)
        if lateness <= self.threshold:
            return None
        self.late_wakes += 1
        if self._logged:
            return None
        self._logged = True
        return LateWake(lateness, expected, blocked)

    def worst_last_minute_at(self, now: float) -> float:
        """The worst lateness of the last ``WINDOW`` seconds."""
        self._expire(now)
        return max((worst for _, worst in self._slots), default=0.0)

    def snapshot_at(self, now: float) -> dict[str, float | int]:
        """For ``hapair status``: worst of the last minute and of the last interval, late wakes."""
        self._roll(now)
        return {
            "worst_lateness_last_minute": round(self.worst_last_minute_at(now), 6),
            "worst_lateness_last_interval": round(self.last_interval_worst, 6),
            "worst_lateness_since_start": round(self.worst_ever, 6),
            "worst_blocked_since_start": round(self.worst_blocked, 6),
            "late_wakes": self.late_wakes,
            "late_threshold": self.threshold,
        }

    def _roll(self, now: float) -> None:
        """Close the heartbeat intervals that ended before ``now``."""
        if now - self._interval_start < self.interval:
            return
        elapsed = int((now - self._interval_start) // self.interval)
        self.last_interval_worst = self._interval_worst
        self._interval_worst = 0.0
        self._interval_start += elapsed * self.interval

    def _expire(self, now: float) -> None:
        oldest = int((now - WINDOW) // SLOT)
        while self._slots and self._slots[0][0] <= oldest:
            self._slots.popleft()
