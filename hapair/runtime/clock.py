"""The driver's CPU-wait clock (the ``Clock`` protocol itself is ``hapair.clock``)."""

from __future__ import annotations

import os


class CpuWait:
    """Seconds the thread that made this has spent runnable but waiting for a CPU (schedstat's
    run_delay); always 0.0 where the kernel does not say."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = None

    def now(self) -> float:
        """The total so far (one pread, a few microseconds)."""
        if self._fd is None:
            return 0.0
        try:
            return int(os.pread(self._fd, 128, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
