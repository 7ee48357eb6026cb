"""The clock protocol: the driver is the only code that reads time; pure pieces get ``now``."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds."""

    def now(self) -> float:
        """Current monotonic time in seconds."""
        ...


class MonotonicClock:
    """The production clock."""

    def now(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()
