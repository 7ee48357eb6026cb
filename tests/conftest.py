"""Fixtures for every test: an in-process asyncio loop that is blocked fails the test.

python-zeroconf's conftest is the model (a fixture that fails a test which leaks a thread);
here the loops the tests create run in asyncio's debug mode with ``slow_callback_duration``
at ``LOOP_BLOCK_LIMIT``, and every "Executing ... took" report fails the test that caused it.
Unit and component tests get it automatically; a test that blocks on purpose is marked
``loop_may_block``. The netns tests, which run real daemons, have their own check (the
daemons measure their own lateness: tests/netns/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

#: A callback or step that holds the loop longer than this fails its test (seconds). The
#: calls moved off the loop took 30 to 300 ms; on a shared 2-core host at load 5, debug mode
#: reports even a trivial handle at 10 to 18 ms now and then (preemption, the GIL), so the
#: default leaves room for that. HAPAIR_LOOP_BLOCK_MS overrides it.
LOOP_BLOCK_LIMIT: Final = float(os.environ.get("HAPAIR_LOOP_BLOCK_MS", "20")) / 1000
WATCHED: Final = ("unit", "component")


class _SlowCallbacks(logging.Handler):
    """Collects asyncio's debug-mode reports of callbacks that ran too long."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith("Executing"):
            self.seen.append(record.getMessage()[:400])


class _WatchingPolicy(asyncio.DefaultEventLoopPolicy):
    """Every new loop runs in debug mode and reports callbacks over the limit."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        loop = super().new_event_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = LOOP_BLOCK_LIMIT
        return loop


@contextlib.contextmanager
def watch_loops() -> Iterator[list[str]]:
    """While open, loops created by ``asyncio.run`` report blocking into the yielded list."""
    handler = _SlowCallbacks()
    logger = logging.getLogger("asyncio")
    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(_WatchingPolicy())
    logger.addHandler(handler)
    try:
        yield handler.seen
    finally:
        logger.removeHandler(handler)
        asyncio.set_event_loop_policy(old)


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
