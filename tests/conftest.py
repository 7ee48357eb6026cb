"""Fixtures for every test: an in-process asyncio loop that is blocked fails the test.

python-zeroconf's conftest is the model (a fixture that fails a test which leaks a thread).
While a unit or component test runs, every asyncio callback (``Handle._run``: task steps,
reader callbacks, timers) is timed, and one that held its thread longer than
``LOOP_BLOCK_LIMIT`` fails the test. What counts is the time the callback *blocked*: its wall
time less what its thread spent runnable but waiting for a CPU (schedstat's run_delay) and less
garbage collection, so a loaded CI host does not fail a test that did nothing wrong, while a
sleep, a blocking syscall or a child process waited for on the loop still does. A test that
blocks on purpose is marked ``loop_may_block``. The netns tests, which run real daemons, have
their own check (the daemons measure their own lateness: tests/netns/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from hapair.runtime.clock import CpuWait

#: A callback that blocks its loop longer than this fails its test (seconds); the calls moved
#: off the loop took 30 to 300 ms. HAPAIR_LOOP_BLOCK_MS overrides it.
LOOP_BLOCK_LIMIT: Final = float(os.environ.get("HAPAIR_LOOP_BLOCK_MS", "10")) / 1000
WATCHED: Final = ("unit", "component")


class _GcTime:
    """Seconds spent in garbage collection so far (gc.callbacks)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        del info
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._start


@contextlib.contextmanager
def watch_loops() -> Iterator[list[str]]:
    """While open, every asyncio callback that blocks its thread too long is reported."""
    seen: list[str] = []
    original: Callable[[Any], None] = asyncio.events.Handle._run  # type: ignore[attr-defined]
    gc_time = _GcTime()
    waits: dict[int, CpuWait] = {}

    def timed_run(handle: Any) -> None:
        waits_here = waits.get(threading.get_ident())
        if waits_here is None:  # schedstat is per thread: one reader for each loop's thread
            waits_here = waits[threading.get_ident()] = CpuWait()
        wall, cpu_wait, gc0 = time.perf_counter(), waits_here.now(), gc_time.total
        try:
            original(handle)
        finally:
            elapsed = time.perf_counter() - wall
            if elapsed > LOOP_BLOCK_LIMIT:
                blocked = elapsed - (waits_here.now() - cpu_wait) - (gc_time.total - gc0)
                if blocked > LOOP_BLOCK_LIMIT:
                    seen.append(f"{handle!r}"[:300] + f" blocked {blocked * 1000:.1f} ms")

    asyncio.events.Handle._run = timed_run  # type: ignore[attr-defined]
    gc.callbacks.append(gc_time)
    try:
        yield seen
    finally:
        asyncio.events.Handle._run = original  # type: ignore[attr-defined]
        gc.callbacks.remove(gc_time)
        for wait in waits.values():
            wait.close()


@pytest.fixture(autouse=True)
def no_loop_blocking(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a unit or component test if an asyncio loop it ran was blocked longer than
    LOOP_BLOCK_LIMIT (tests marked ``loop_may_block`` and the other areas are not watched)."""
    try:
        area = request.node.path.relative_to(Path(__file__).parent).parts[0]
    except ValueError:
        area = ""
    if area not in WATCHED or request.node.get_closest_marker("loop_may_block") is not None:
        yield
        return
    with watch_loops() as seen:
        yield
    if seen:
        pytest.fail(
            f"the asyncio loop was blocked longer than {LOOP_BLOCK_LIMIT * 1000:g} ms "
            f"{len(seen)} time(s); first: {seen[0]}",
            pytrace=False,
        )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "loop_may_block: the test blocks its asyncio loop on purpose (not watched)"
    )
