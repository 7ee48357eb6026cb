"""A clock the test moves by hand."""

from __future__ import annotations


class FakeClock:
    """Monotonic time that only moves when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start

    def now(self) -> float:
        """The current fake time in seconds."""
        return self._now

    def advance_to(self, t: float) -> None:
        """Move to ``t``; time never goes backwards."""
        if t < self._now:
            raise ValueError("time cannot go backwards")
        self._now = t
