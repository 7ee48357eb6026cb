"""One background thread per concern, so that slow I/O never runs on the heartbeat loop.

A job is a plain callable; it runs on the worker's thread, in submission order (a data plane's
changes must not overtake each other), and its outcome comes back *on the loop* through
``loop.call_soon_threadsafe``: ``done(result, None)`` or ``done(None, exc)``. The loop thread
never waits for a job; the caller's ``done`` wakes the node when it has news.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any, Final, Protocol, TypeVar

T = TypeVar("T")
Done = Callable[[Any, BaseException | None], None]

#: How long ``close()`` waits for the job in hand (an engine reload waits up to 5 s).
CLOSE_WAIT: Final = 20.0
#: The GIL switch interval while a worker runs (CPython's default is 5 ms). A worker busy in
#: Python code holds the GIL for a whole interval, and the loop waits that long to get it
#: back after *each* system call it makes (a send, a receive): a step of a few calls would
#: be late by tens of milliseconds. Half a millisecond keeps that under the loop's budget.
SWITCH_INTERVAL: Final = 0.0005


class Worker(Protocol):
    """Runs jobs in order, off the caller's thread, and reports each outcome on the loop."""

    def submit(self, job: Callable[[], Any], done: Done) -> None:
        """Queue ``job``; ``done`` is called on the loop with its result or its exception."""

    async def close(self) -> None:
        """Finish the job in hand (bounded), drop the rest, stop the thread."""


class ThreadWorker:
    """A :class:`Worker` on one daemon thread, started on the first job."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Done] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def submit(self, job: Callable[[], Any], done: Done) -> None:
        if self._closed:
            done(None, RuntimeError(f"{self.name} is closed"))
            return
        if self._thread is None:
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()
        self._jobs.put((job, done))

    def _serve(self) -> None:
        loop = self._loop
        assert loop is not None
        while (item := self._jobs.get()) is not None:
            job, done = item
            result: Any = None
            error: BaseException | None = None
            try:
                result = job()
            except Exception as exc:  # the loop decides what a failure means
                error = exc
            if self._closed:
                continue  # nobody waits for it any more
            with contextlib.suppress(RuntimeError):  # the loop closed under us: at exit
                loop.call_soon_threadsafe(done, result, error)

    async def close(self) -> None:
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        # Drop what is still queued: the caller undoes everything itself after this.
        with contextlib.suppress(queue.Empty):
            while True:
                self._jobs.get_nowait()
        self._jobs.put(None)
        await asyncio.get_running_loop().run_in_executor(None, thread.join, CLOSE_WAIT)
