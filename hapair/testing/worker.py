"""A worker that runs its jobs only when the test says so (``hapair.runtime.worker``'s fake)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hapair.runtime.worker import Done


class ManualWorker:
    """A :class:`Worker` for tests: jobs wait until ``run_next()`` / ``run_all()``."""

    def __init__(self) -> None:
        self.queued: list[tuple[Callable[[], Any], Done]] = []
        self.closed = False

    def submit(self, job: Callable[[], Any], done: Done) -> None:
        self.queued.append((job, done))

    def run_next(self) -> None:
        """Run the oldest job and deliver its outcome (as the loop would, right after)."""
        job, done = self.queued.pop(0)
        try:
            result = job()
        except Exception as exc:
            done(None, exc)
        else:
            done(result, None)

    def run_all(self) -> int:
        """Run jobs (and the jobs their outcomes queue) until none is left; how many ran."""
        ran = 0
        while self.queued:
            self.run_next()
            ran += 1
        return ran

    async def close(self) -> None:
        self.closed = True
        self.queued.clear()
