"""Real-time scheduling of the loop thread: the calls made and the refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from hapair.runtime.sched import Syscalls, enter_realtime


@dataclass
class FakeKernel:
    """The scheduling policy of one thread, with the refusal a sandbox makes."""

    policy: int = os.SCHED_OTHER
    priority: int = 0
    refuse_rt: bool = False
    calls: list[str] = field(default_factory=list)

    def syscalls(self) -> Syscalls:
        return Syscalls(
            get_scheduler=self.get_scheduler,
            set_scheduler=self.set_scheduler,
            priority_range=lambda policy: (1, 99),
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


def test_priority_zero_leaves_the_thread_alone() -> None:
    kernel = FakeKernel()
    assert enter_realtime(0, kernel.syscalls()) is None
    assert kernel.calls == []


def test_priority_zero_leaves_a_thread_started_real_time_alone() -> None:
    kernel = FakeKernel(policy=os.SCHED_RR | os.SCHED_RESET_ON_FORK, priority=10)
    assert enter_realtime(0, kernel.syscalls()) is None
    assert kernel.calls == [] and kernel.priority == 10


def test_the_loop_thread_turns_round_robin_reset_on_fork() -> None:
    kernel = FakeKernel()
    result = enter_realtime(10, kernel.syscalls())
    assert result is not None and result.realtime and result.event == "realtime_scheduling"
    assert kernel.policy == os.SCHED_RR | os.SCHED_RESET_ON_FORK  # children stay normal
    assert kernel.priority == 10


def test_a_refusal_says_what_is_missing_and_does_not_raise() -> None:
    kernel = FakeKernel(refuse_rt=True)
    result = enter_realtime(10, kernel.syscalls())
    assert result is not None and not result.realtime and result.event == "realtime_refused"
    assert "CAP_SYS_NICE" in result.detail and "realtime_priority = 0" in result.detail
    assert kernel.policy == os.SCHED_OTHER


def test_a_thread_started_real_time_keeps_its_priority() -> None:
    kernel = FakeKernel(policy=os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, priority=20)
    result = enter_realtime(10, kernel.syscalls())
    assert result is not None and result.realtime and result.event == "realtime_inherited"
    assert kernel.calls == [] and kernel.priority == 20


@pytest.mark.parametrize("priority", [-1, 100])
def test_a_priority_out_of_the_kernels_range_is_refused(priority: int) -> None:
    kernel = FakeKernel()
    result = enter_realtime(priority, kernel.syscalls())
    assert result is not None and not result.realtime and "1..99" in result.detail
    assert kernel.calls == []


REAL = """
import os, subprocess, sys, threading
from hapair.runtime.sched import enter_realtime
r = enter_realtime(int(sys.argv[1]))
seen = {}
t = threading.Thread(target=lambda: seen.update(thread=os.sched_getscheduler(0)))
t.start(); t.join()
child = subprocess.run([sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
                       capture_output=True, text=True, check=True).stdout.strip()
print(r.event if r else None, os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK,
      seen["thread"], child)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="real time needs root (CAP_SYS_NICE)")
def test_only_the_calling_thread_turns_real_time_not_its_later_threads_or_children() -> None:
    out = subprocess.run(
        [sys.executable, "-c", REAL, "10"], capture_output=True, text=True, check=True
    ).stdout.split()
    if out[0] == "realtime_refused":
        pytest.skip("the kernel refuses real time here (a container?)")
    assert out == [
        "realtime_scheduling",
        str(os.SCHED_RR),
        str(os.SCHED_OTHER),
        str(os.SCHED_OTHER),
    ]
