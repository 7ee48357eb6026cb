"""Real-time scheduling for the heartbeat loop's thread, as keepalived does for VRRP.

On a busy host (an engine reloading, ``nft`` loads, the probes) a normal-priority loop waits
for a CPU behind runnable processes: measured under balancer churn at 20 ms, 16 of its 27 ms
of lateness. ``SCHED_RR`` at a low priority (below the kernel's threaded interrupts at 50)
lets it run as soon as it wakes. Only the calling thread changes, and
``SCHED_RESET_ON_FORK`` keeps what it starts afterwards at normal priority: the worker
threads, nginx, HAProxy, probes and hooks.

A real-time loop that runs away takes at most 95 % of one CPU (the kernel's RT throttling,
``sched_rt_runtime_us``), and a loop stuck that way stops pinging the systemd watchdog, which
restarts it within ``WatchdogSec``. No ``RLIMIT_RTTIME`` (keepalived's ``vrrp_rlimit_rttime``):
under a packet flood the loop may legitimately never sleep, and SIGXCPU would then kill the
daemon the flood was aimed at.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

#: The policies that already are real time (a unit's CPUSchedulingPolicy=, chrt).
_REALTIME: Final = frozenset({os.SCHED_RR, os.SCHED_FIFO})


def _rr_range(policy: int) -> tuple[int, int]:
    return os.sched_get_priority_min(policy), os.sched_get_priority_max(policy)


@dataclass(frozen=True)
class Syscalls:
    """What ``enter_realtime`` calls; tests pass fakes (the real calls need privileges)."""

    get_scheduler: Callable[[int], int] = os.sched_getscheduler
    set_scheduler: Callable[[int, int, os.sched_param], None] = os.sched_setscheduler
    priority_range: Callable[[int], tuple[int, int]] = _rr_range


@dataclass(frozen=True)
class SchedResult:
    """What ``enter_realtime`` did: a log event name, whether RT is on, a sentence."""

    event: str  # realtime_scheduling | realtime_inherited | realtime_off | realtime_refused
    realtime: bool
    detail: str


def enter_realtime(priority: int, calls: Syscalls | None = None) -> SchedResult | None:
    """Put the calling thread (the loop's) under ``SCHED_RR`` at ``priority`` with
    reset-on-fork; ``priority`` 0: normal scheduling (None when nothing changed).

    A thread already real time (a unit's ``CPUSchedulingPolicy=``, ``chrt``) keeps its
    priority. Never raises: a refusal is a result to log, the daemon runs on.
    """
    c = calls or Syscalls()
    try:
        already = c.get_scheduler(0) & ~os.SCHED_RESET_ON_FORK
    except OSError:
        already = os.SCHED_OTHER
    if priority == 0:
        if already not in _REALTIME:
            return None
        try:  # lowering needs no privilege, and RestrictRealtime= allows it
            c.set_scheduler(0, os.SCHED_OTHER, os.sched_param(0))
        except OSError as exc:
            return SchedResult("realtime_refused", True, f"cannot leave real time: {exc}")
        return SchedResult("realtime_off", False, "real time from the start: back to normal")
    if already in _REALTIME:
        return SchedResult(
            "realtime_inherited",
            True,
            "real time from the start (CPUSchedulingPolicy=, chrt): kept",
        )
    low, high = c.priority_range(os.SCHED_RR)
    if not low <= priority <= high:
        return SchedResult(
            "realtime_refused", False, f"runtime.realtime_priority must be {low}..{high}"
        )
    try:
        c.set_scheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
    except PermissionError:
        return SchedResult(
            "realtime_refused",
            False,
            f"SCHED_RR priority {priority} needs CAP_SYS_NICE (and, under systemd, no"
            " RestrictRealtime=yes); the loop runs at normal priority. Set"
            " runtime.realtime_priority = 0 to run so without this warning",
        )
    except OSError as exc:
        return SchedResult("realtime_refused", False, f"SCHED_RR priority {priority}: {exc}")
    return SchedResult(
        "realtime_scheduling", True, f"loop thread SCHED_RR priority {priority}, reset on fork"
    )
