"""The conftest's loop watch: a blocking call on an in-process loop is caught, a quick one not."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import LOOP_BLOCK_LIMIT, watch_loops


@pytest.mark.loop_may_block
def test_a_blocking_callback_is_reported() -> None:
    async def blocks() -> None:
        time.sleep(LOOP_BLOCK_LIMIT * 3)  # what the daemon must never do on its loop

    with watch_loops() as seen:
        asyncio.run(blocks())
    assert len(seen) == 1 and "blocked" in seen[0]


@pytest.mark.loop_may_block
def test_awaiting_is_not_blocking() -> None:
    async def waits() -> None:
        await asyncio.sleep(LOOP_BLOCK_LIMIT * 3)
        await asyncio.to_thread(time.sleep, LOOP_BLOCK_LIMIT * 3)

    with watch_loops() as seen:
        asyncio.run(waits())
    assert seen == []
