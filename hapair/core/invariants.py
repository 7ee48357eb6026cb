"""Safety rules of the pair, checked after every step of a simulation (Patroni-style)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hapair.core.roles import Role


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node as an outside observer sees it."""

    name: str
    role: Role
    holds_vips: bool
    running: bool = True


def check_invariants(
    nodes: Sequence[NodeView], overlap_for: float, settle_time: float
) -> list[str]:
    """Return every violated rule (empty when all hold).

    ``overlap_for`` is how long two or more MASTERs have coexisted while every node could hear
    every other. A short overlap is make-before-break (handover, preemption) or a healed
    partition resolving; past ``settle_time`` (one heartbeat interval plus link latency) it
    is a split brain that the election failed to end.
    """
    problems: list[str] = []
    running = [n for n in nodes if n.running]
    for n in running:
        if n.role is Role.MASTER and not n.holds_vips:
            problems.append(f"{n.name} is MASTER but does not hold its VIPs")
        if n.role is not Role.MASTER and n.holds_vips:
            problems.append(f"{n.name} is {n.role.name} but holds VIPs")
    masters = [n.name for n in running if n.role is Role.MASTER]
    if len(masters) > 1 and overlap_for > settle_time:
        problems.append(
            f"{len(masters)} masters ({', '.join(masters)}) for {overlap_for:.3f}s "
            f"on a healthy link (> {settle_time:.3f}s)"
        )
    return problems
