"""Rise/fall hysteresis: a check flips state only after N consecutive opposite results."""

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
