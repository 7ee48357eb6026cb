"""The dead-time formula, in one place: when a silent peer is declared dead.

RFC 5798 §6.1: Master_Down_Interval = 3 * Advertisement_Interval + Skew_Time, with
Skew_Time = ((256 - Priority) * Advertisement_Interval) / 256, so the higher-priority backup
detects first. hapair counts ``dead_after`` intervals where VRRP counts 3.
"""

from __future__ import annotations


def dead_interval(interval: float, dead_after: int) -> float:
    """Seconds of silence, before skew: ``dead_after`` heartbeat intervals."""
    return dead_after * interval


def skew(interval: float, priority: int) -> float:
    """Seconds a node of ``priority`` waits beyond the dead interval; a higher one waits less."""
    return (256 - priority) / 256 * interval


def dead_time(interval: float, dead_after: int, priority: int) -> float:
    """Seconds of silence of a peer sending every ``interval`` before a node of ``priority``
    declares it dead."""
    return dead_interval(interval, dead_after) + skew(interval, priority)
