"""Probing, sans-IO: rise/fall hysteresis and the probe schedule of one probed target.

Shared by the ``[[track]]`` checks (``hapair.net.tracking``) and the backend health board
(``hapair.balancer.health``): the caller asks ``start(now)`` whether to probe, runs the probe,
and feeds its result back with ``record(ok, now)``; the next probe is due one interval after
that result, and probes of one target never overlap. Time is passed in; nothing here does I/O.
"""

from __future__ import annotations


class Hysteresis:
    """Debounces a stream of pass/fail results (HAProxy-style ``rise``/``fall``)."""

    def __init__(self, rise: int, fall: int, initially_up: bool = True) -> None:
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be >= 1")
        self.rise = rise
        self.fall = fall
        self.up = initially_up
        self._streak = 0

    def record(self, ok: bool) -> bool:
        """Feed one result; return True if the debounced state changed."""
        if ok == self.up:
            self._streak = 0
            return False
        self._streak += 1
        if self._streak >= (self.rise if ok else self.fall):
            self.up = ok
            self._streak = 0
            return True
        return False


class ProbeState:
    """One probed target: its debounced up/down and when its next probe is due."""

    __slots__ = ("hysteresis", "in_flight", "interval", "next_due")

    def __init__(self, rise: int, fall: int, interval: float, now: float) -> None:
        """A target that starts up (a fall is needed to fail), with its first probe due now."""
        self.hysteresis = Hysteresis(rise, fall, initially_up=True)
        self.interval = interval
        self.next_due = now
        self.in_flight = False

    @property
    def up(self) -> bool:
        """The debounced state."""
        return self.hysteresis.up

    @up.setter
    def up(self, value: bool) -> None:
        """Set the state outright, for a target known without probing (a link's carrier)."""
        self.hysteresis.up = value

    def start(self, now: float) -> bool:
        """True if a probe is due at ``now``; it is then in flight until ``record``."""
        if self.in_flight or now < self.next_due:
            return False
        self.in_flight = True
        return True

    def record(self, ok: bool, now: float) -> bool:
        """Feed the result that came in at ``now``; return True if the debounced state changed.

        The next probe is due one interval later.
        """
        self.in_flight = False
        self.next_due = now + self.interval
        return self.hysteresis.record(ok)

    def next_deadline(self) -> float | None:
        """When the next probe is due (None while one is in flight)."""
        return None if self.in_flight else self.next_due
