"""The VIP add/remove path retries a transient netlink errno without sleeping on the loop."""

from __future__ import annotations

import asyncio
import errno

import pytest

from hapair.net.vip import RETRY_ATTEMPTS, _netlink_now


class Flaky:
    """A netlink call that fails with `code` the first `failures` times, then answers."""

    def __init__(self, failures: int, code: int = errno.EBUSY) -> None:
        self.failures, self.code, self.calls = failures, code, 0

    def __call__(self, *args: object) -> tuple[object, ...]:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError(self.code, "busy")
        return args


def test_transient_errnos_are_retried_on_the_loop_without_blocking_it() -> None:
    # Run as a loop callback: the conftest's loop watch fails this test if the retries sleep
    # (tenacity's fixed waits, 10 ms each, blocked the heartbeat loop for 20 ms here).
    call = Flaky(RETRY_ATTEMPTS - 1)

    async def main() -> tuple[object, ...]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[object, ...]] = loop.create_future()
        loop.call_soon(lambda: done.set_result(_netlink_now(call, 7, "10.0.0.50")))
        return await done

    assert asyncio.run(main()) == (7, "10.0.0.50")
    assert call.calls == RETRY_ATTEMPTS


def test_a_transient_errno_that_persists_is_raised_after_the_last_attempt() -> None:
    call = Flaky(RETRY_ATTEMPTS)
    with pytest.raises(OSError) as info:
        _netlink_now(call)
    assert info.value.errno == errno.EBUSY
    assert call.calls == RETRY_ATTEMPTS


def test_a_real_answer_is_not_retried() -> None:
    call = Flaky(1, errno.EPERM)
    with pytest.raises(OSError):
        _netlink_now(call)
    assert call.calls == 1
