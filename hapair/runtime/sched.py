"""Real-time scheduling for the heartbeat loop's thread, as keepalived offers for VRRP.

On a busy host (an engine reloading, ``nft`` loads, the probes) a normal-priority loop waits
for a CPU behind runnable processes: measured under HAProxy churn at 20 ms, 16 of its 27 ms
of lateness. ``SCHED_RR`` at a low priority (below the kernel's threaded interrupts at 50)
lets it run as soon as it wakes. Only the calling thread changes, and
``SCHED_RESET_ON_FORK`` keeps what it starts afterwards at normal priority: the worker
threads, nginx, HAProxy, probes and hooks.

Off by default (``runtime.realtime_priority = 0`` leaves the thread as it was started): the
loop shares the GIL with those normal-priority threads, and when one of them holds or must
take the GIL while other processes keep it off a CPU, the real-time loop waits for it (a
priority inversion). Measured in the full churn bench (with a 0.1 ms switch interval): dr
113.7 ms and nginx 101.3 ms gaps with role changes, nearly all of it blocked, not CPU wait;
dr at normal priority, same host, 24.6 ms. A runaway real-time loop gets at most
95 % of one CPU (RT throttling) and, stuck, stops pinging the systemd watchdog. No
``RLIMIT_RTTIME``: under a packet flood the loop may legitimately never sleep.
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

    event: str  # realtime_scheduling | realtime_inherited | realtime_refused
    realtime: bool
    detail: str


def enter_realtime(priority: int, calls: Syscalls | None = None) -> SchedResult | None:
    """Put the calling thread (the loop's) under ``SCHED_RR`` at ``priority`` with
    reset-on-fork; ``priority`` 0 leaves it as it was started (None).

    A thread already real time (a unit's ``CPUSchedulingPolicy=``, ``chrt``) keeps its
    priority. Never raises: a refusal is a result to log, the daemon runs on.
    """
    if priority == 0:
        return None
    c = calls or Syscalls()
    try:
        already = c.get_scheduler(0) & ~os.SCHED_RESET_ON_FORK
    except OSError:
        already = os.SCHED_OTHER
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
