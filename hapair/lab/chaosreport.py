"""The chaos drill's report: the schedule as it ran, per-fault outcomes, totals (pure)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from hapair.config.duration import format_duration
from hapair.core.timing import dead_interval
from hapair.lab.chaoscheck import INVARIANTS, Outcome
from hapair.lab.chaosrun import FLOOD_RATE

if TYPE_CHECKING:
    from hapair.lab.chaosrun import ChaosResult


def replay_command(r: ChaosResult, prefix: str, kinds: str) -> str:
    """Return the command line that replays this run's schedule."""
    text = (
        f"sudo hapair lab chaos --minutes {r.minutes:g} --seed {r.seed} "
        f"--interval {format_duration(r.interval)} --dead-after {r.dead_after}"
    )
    if kinds != "all":
        text += f" --faults {kinds}"
    if r.balancer != "nat":
        text += f" --balancer {r.balancer}"
    if r.flood_rate != FLOOD_RATE:
        text += f" --flood-rate {r.flood_rate or 0:.0f}"
    return text + f" --prefix {prefix}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def totals(r: ChaosResult) -> dict[str, object]:
    """Return faults by kind, skipped faults, violations by invariant and crashes."""
    ran = Counter(ex.fault.kind for ex in r.executed if not ex.skipped)
    skipped = Counter(ex.fault.kind for ex in r.executed if ex.skipped)
    counts = r.verdict.counts()
    return {
        "faults": sum(ran.values()),
        "by_kind": dict(sorted(ran.items())),
        "skipped": dict(sorted(skipped.items())),
        "violations": sum(counts.values()),
        "by_invariant": counts,
        "crashes": counts.get("crash", 0),
    }


def to_json(r: ChaosResult, replay: str) -> dict[str, object]:
    """Return the whole report as a JSON-ready dict (times in seconds after T0)."""
    outcomes = {o.index: o for o in r.verdict.outcomes}
    faults = []
    for ex in r.executed:
        o = outcomes.get(ex.fault.index, Outcome(ex.fault.index))
        faults.append(
            {
                **ex.fault.to_dict(),
                "label": ex.fault.label,
                "start": round(ex.start - r.t0, 3),
                "end": round(ex.heal - r.t0, 3),
                "skipped": ex.skipped,
                "to_one_master_ms": None if o.to_one_master is None else _round(o.to_one_master),
                "client_outage_ms": _round(o.client_outage),
                "client_after_heal_ms": _round(o.client_after_heal),
                "healed": round(ex.healed - r.t0, 3),
                "dual_master_ms": _round(o.dual_master),
                "both_vip_ms": _round(o.both_vip),
                "notes": ex.notes,
            }
        )
    violations = [
        {
            "invariant": v.invariant,
            "at": round(v.at - r.t0, 3),
            "duration_ms": _round(v.duration),
            "fault": v.fault,
            "detail": v.detail,
        }
        for v in r.verdict.violations
    ]
    return {
        "ok": r.ok,
        "seed": r.seed,
        "t0": r.t0,
        "minutes": r.minutes,
        "interval_ms": r.interval * 1000,
        "dead_after": r.dead_after,
        "tolerance_ms": r.tolerance * 1000,
        "balancer": r.balancer,
        "flood_rate": r.flood_rate,
        "replay": replay,
        "seconds": round(r.duration, 1),
        "planned": len(r.schedule),
        "faults": faults,
        "violations": violations,
        "totals": totals(r),
        "notes": [*r.notes, *r.verdict.notes],
    }


def _round(seconds: float) -> float:
    return round(seconds * 1000, 1)


def format_report(r: ChaosResult, replay: str) -> str:
    """Return the report as a readable table."""
    dead = dead_interval(r.interval, r.dead_after)
    head = (
        f"chaos drill, seed {r.seed}: {r.duration:.0f} s at {format_duration(r.interval)} x "
        f"{r.dead_after} (dead time {dead * 1000:.0f} ms, tolerance {r.tolerance * 1000:.0f} ms), "
        f"balancer {r.balancer}, flood "
        + ("flat out" if r.flood_rate is None else f"{r.flood_rate:,.0f}/s")
    )
    lines = [head, f"replay: {replay}", ""]
    lines.append(
        f"{'#':>3}  {'fault':<28} {'start s':>8} {'end s':>8} {'1 master':>9} "
        f"{'outage':>7} {'after heal':>10} {'dual':>6} {'2 VIPs':>6}  violations"
    )
    outcomes = {o.index: o for o in r.verdict.outcomes}
    per_fault = Counter(v.fault for v in r.verdict.violations)
    for ex in r.executed:
        f = ex.fault
        o = outcomes.get(f.index, Outcome(f.index))
        if ex.skipped:
            row = f"{f.index:>3}  {f.label:<28} {ex.start - r.t0:8.2f} {'skipped':>8}"
        else:
            row = (
                f"{f.index:>3}  {f.label:<28} {ex.start - r.t0:8.2f} {ex.heal - r.t0:8.2f} "
                f"{_ms(o.to_one_master):>9} {_ms(o.client_outage):>7} "
                f"{_ms(o.client_after_heal):>10} {_ms(o.dual_master):>6} {_ms(o.both_vip):>6}  "
                f"{per_fault.get(f.index, 0) or '-'}"
            )
        lines.append(row)
        lines += [f"{'':5}note: {n}" for n in ex.notes]
    lines.append(
        "  (end: the heal began; ms from the fault to the next one: 1 master = from the heal to"
        " exactly one MASTER; outage = the client's longest loss; after heal = the same counted"
        " from the heal; dual = both MASTER; 2 VIPs = the VIP on both nodes, counted or not)"
    )
    ran = Counter(ex.fault.kind for ex in r.executed if not ex.skipped)
    skipped = Counter(ex.fault.kind for ex in r.executed if ex.skipped)
    by_kind = ", ".join(f"{k} {n}" for k, n in sorted(ran.items()))
    lines += ["", f"faults: {ran.total()} run of {len(r.schedule)} planned ({by_kind})"]
    if skipped:
        lines.append("skipped: " + ", ".join(f"{k} {n}" for k, n in sorted(skipped.items())))
    counts = r.verdict.counts()
    lines.append("violations: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in INVARIANTS))
    lines.append(f"crashes: {counts.get('crash', 0)}")
    for v in r.verdict.violations:
        where = "" if v.fault is None else f" (after fault {v.fault})"
        lines.append(f"  {v.at - r.t0:8.2f} s  {v.invariant}{where}: {v.detail}")
    lines += [f"note: {n}" for n in [*r.notes, *r.verdict.notes]]
    total = sum(counts.values())
    lines.append("verdict: " + ("PASS" if r.ok else f"FAIL ({total} violations)"))
    return "\n".join(lines)
