"""Real-time scheduling of the loop thread: the calls made, the guard, the refusals."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field

import pytest

from hapair.runtime.sched import RTTIME_HARD, RTTIME_SOFT, Syscalls, enter_realtime

INF = resource.RLIM_INFINITY


@dataclass
class FakeKernel:
    """The scheduler and RLIMIT_RTTIME of one thread, with the refusals a sandbox makes."""

    policy: int = os.SCHED_OTHER
    priority: int = 0
    rttime: tuple[int, int] = (INF, INF)
    refuse_rt: bool = False
    refuse_rlimit: bool = False
    calls: list[str] = field(default_factory=list)

    def syscalls(self) -> Syscalls:
        return Syscalls(
            get_scheduler=self.get_scheduler,
            set_scheduler=self.set_scheduler,
            priority_range=lambda policy: (1, 99),
            get_rttime=lambda: self.rttime,
            set_rttime=self.set_rttime,
        )

    def get_scheduler(self, pid: int) -> int:
        assert pid == 0  # the calling thread only
        return self.policy

    def set_scheduler(self, pid: int, policy: int, param: os.sched_param) -> None:
        assert pid == 0
        self.calls.append("sched")
        if self.refuse_rt:
            raise PermissionError(1, "Operation not permitted")
        self.policy, self.priority = policy, param.sched_priority

    def set_rttime(self, limits: tuple[int, int]) -> None:
        self.calls.append("rlimit")
        if self.refuse_rlimit:
            raise PermissionError(1, "Operation not permitted")
        self.rttime = limits


def test_priority_zero_leaves_the_thread_alone() -> None:
    kernel = FakeKernel()
    assert enter_realtime(0, kernel.syscalls()) is None
    assert kernel.calls == []


def test_priority_zero_takes_a_thread_started_real_time_back_to_normal() -> None:
    kernel = FakeKernel(policy=os.SCHED_RR | os.SCHED_RESET_ON_FORK, priority=10)
    result = enter_realtime(0, kernel.syscalls())
    assert result is not None and not result.realtime and result.event == "realtime_off"
    assert kernel.policy == os.SCHED_OTHER


def test_the_loop_thread_turns_round_robin_reset_on_fork_with_the_guard_first() -> None:
    kernel = FakeKernel()
    result = enter_realtime(10, kernel.syscalls())
    assert result is not None and result.realtime and result.event == "realtime_scheduling"
    assert kernel.policy == os.SCHED_RR | os.SCHED_RESET_ON_FORK  # children stay normal
    assert kernel.priority == 10
    assert kernel.rttime == (RTTIME_SOFT, RTTIME_HARD)
    assert kernel.calls == ["rlimit", "sched"]  # never real time without the guard


def test_a_lower_rttime_limit_already_set_is_kept() -> None:
    kernel = FakeKernel(rttime=(200_000, 300_000))
    enter_realtime(10, kernel.syscalls())
    assert kernel.rttime == (200_000, 300_000)


def test_without_the_guard_the_thread_stays_normal() -> None:
    kernel = FakeKernel(refuse_rlimit=True)
    result = enter_realtime(10, kernel.syscalls())
    assert result is not None and not result.realtime and result.event == "realtime_refused"
    assert "sched" not in kernel.calls and kernel.policy == os.SCHED_OTHER


def test_a_refusal_says_what_is_missing_and_does_not_raise() -> None:
    kernel = FakeKernel(refuse_rt=True)
    result = enter_realtime(10, kernel.syscalls())
    assert result is not None and not result.realtime and result.event == "realtime_refused"
    assert "CAP_SYS_NICE" in result.detail and "realtime_priority = 0" in result.detail
    assert kernel.policy == os.SCHED_OTHER


def test_a_thread_systemd_made_real_time_is_kept_and_guarded() -> None:
    kernel = FakeKernel(policy=os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, priority=20)
    result = enter_realtime(10, kernel.syscalls())
    assert result is not None and result.realtime and result.event == "realtime_inherited"
    assert kernel.calls == ["rlimit"] and kernel.priority == 20


@pytest.mark.parametrize("priority", [-1, 100])
def test_a_priority_out_of_the_kernels_range_is_refused(priority: int) -> None:
    kernel = FakeKernel()
    result = enter_realtime(priority, kernel.syscalls())
    assert result is not None and not result.realtime and "1..99" in result.detail
    assert kernel.calls == []
