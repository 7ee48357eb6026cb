"""Effective priority, recomputed from the base and the current check states (never counted)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

MIN_PRIORITY: Final = 1
MAX_PRIORITY: Final = 254

Weight = int | Literal["fault"]


@dataclass(frozen=True, slots=True)
class Fitness:
    """The outcome of all checks: effective priority, fault flag and why."""

    effective_priority: int
    fault: bool
    reason: str


def compute_fitness(base: int, failing: Iterable[tuple[str, Weight]]) -> Fitness:
    """Subtract each failing check's weight from ``base``; a ``fault`` weight forces FAULT.

    The result is clamped to 1..254 so a degraded node can still serve when it is the only one.
    """
    total = 0
    names: list[str] = []
    faults: list[str] = []
    for name, weight in failing:
        if weight == "fault":
            faults.append(name)
        else:
            total += weight
            names.append(name)
    if faults:
        return Fitness(0, True, "fault: " + ", ".join(sorted(faults)))
    effective = max(MIN_PRIORITY, min(MAX_PRIORITY, base - total))
    reason = "healthy" if not names else "degraded: " + ", ".join(sorted(names))
    return Fitness(effective, False, reason)
