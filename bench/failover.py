"""Failover benchmark: hapair against keepalived, side by side in the same namespace lab.

Runs each drill N times per implementation in three profiles, then prints min/median/max
client-visible outage per scenario, the ratio hapair/keepalived of the medians, and each
daemon's RSS and CPU% while idle as MASTER (sampled from /proc):

- ``default``: each daemon at its own defaults (hapair 200 ms, dead after 5; keepalived
  advert_int 1, i.e. master down after 3 adverts);
- ``same200``: the same timers for both (200 ms, dead after 3 = keepalived's fixed 3 adverts);
- ``fast``: 20 ms, dead after 3 (keepalived advert_int 0.02).

    sudo .venv/bin/python bench/failover.py [--runs 5] [--scenarios crash,kill] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hapair.lab.addresses import NODES
from hapair.lab.drill import SCENARIOS, DrillOptions, run_drill, wait_stable_master
from hapair.lab.keepalived import bench_pair, keepalived_path
from hapair.lab.nodes import Timers
from hapair.lab.shell import LabError, cpu_ticks
from hapair.lab.testbed import NetnsBed
from hapair.lab.topology import Lab

#: profile -> (hapair timers, keepalived timers); keepalived always declares its master down
#: after 3 adverts plus skew (RFC 5798), so its dead_after is fixed at 3.
PROFILES: Final = {
    "default": (Timers(interval=0.2, dead_after=5), Timers(interval=1.0, dead_after=3)),
    "same200": (Timers(interval=0.2, dead_after=3), Timers(interval=0.2, dead_after=3)),
    "fast": (Timers(interval=0.02, dead_after=3), Timers(interval=0.02, dead_after=3)),
}
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
PAGE: Final = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Cell:
    """Outages (ms) of one scenario for one implementation and profile."""

    outages: list[float] = field(default_factory=list)
    failed: int = 0
    skipped: bool = False

    def stats(self) -> tuple[float, float, float] | None:
        """Return (min, median, max), or None without data."""
        if not self.outages:
            return None
        return min(self.outages), statistics.median(self.outages), max(self.outages)


@dataclass
class Idle:
    """Idle footprint of the MASTER's daemon."""

    rss_mb: float
    cpu_percent: float
    seconds: float


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * PAGE


def sample_idle(pids: Sequence[int], seconds: float) -> Idle:
    """Sample the summed CPU time and peak RSS of `pids` over `seconds`."""
    start_ticks = sum(cpu_ticks(p) for p in pids)
    start = time.monotonic()
    peak = 0
    deadline = start + seconds
    while time.monotonic() < deadline:
        peak = max(peak, sum(_rss_bytes(p) for p in pids))
        time.sleep(0.5)
    elapsed = time.monotonic() - start
    ticks = sum(cpu_ticks(p) for p in pids) - start_ticks
    return Idle(peak / 2**20, 100.0 * ticks / CLK_TCK / elapsed, elapsed)


def run_impl(
    impl: str,
    timers: Timers,
    scenarios: Sequence[str],
    runs: int,
    idle_seconds: float,
    prefix: str,
    log: bool,
) -> tuple[dict[str, Cell], Idle | None]:
    """Build a lab, run every scenario `runs` times with `impl`, sample idle use; tear down."""
    cells = {s: Cell() for s in scenarios}
    idle: Idle | None = None
    with Lab(prefix, timers=timers) as lab:
        pair = bench_pair(lab, keepalived=impl == "keepalived")
        for node in NODES:
            pair.start(node)
        bed = NetnsBed(lab, pair)
        master = wait_stable_master(bed, pair, timeout=30.0, settle=max(0.5, 3 * timers.interval))
        if idle_seconds > 0:
            idle = sample_idle(pair.pids(master), idle_seconds)
        for scenario in scenarios:
            for i in range(runs):
                try:
                    result = run_drill(bed, pair, scenario, DrillOptions())
                except LabError as exc:
                    cells[scenario].failed += 1
                    print(f"  {impl} {scenario} run {i + 1}: error: {exc}", file=sys.stderr)
                    continue
                if result.skipped:
                    cells[scenario].skipped = True
                    break
                if result.recovered:
                    cells[scenario].outages.append(result.outage_ms)
                else:
                    cells[scenario].failed += 1
                if log:
                    print(
                        f"  {impl:10} {scenario:9} run {i + 1}: outage {result.outage_ms:7.1f}"
                        f" ms{'' if result.recovered else '  NOT RECOVERED'}",
                        file=sys.stderr,
                        flush=True,
                    )
    return cells, idle


def _fmt(stats: tuple[float, float, float] | None) -> str:
    if stats is None:
        return f"{'n/a':>20}"
    return f"{stats[0]:6.0f} {stats[1]:6.0f} {stats[2]:6.0f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the comparison."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--profiles", default=",".join(PROFILES))
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--prefix", default="hpb")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-keepalived", action="store_true")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/failover.py needs root (network namespaces)", file=sys.stderr)
        return 2
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown or args.runs < 1:
        parser.error(f"unknown scenarios {sorted(unknown)} or --runs < 1")
    impls = ["hapair"]
    if not args.no_keepalived:
        if keepalived_path() is None:
            print("keepalived not installed: hapair only", file=sys.stderr)
        else:
            impls.append("keepalived")
    report: dict[str, dict[str, object]] = {}
    for profile in [p for p in args.profiles.split(",") if p]:
        report[profile] = {}
        for impl in impls:
            print(f"{profile}: {impl} ...", file=sys.stderr, flush=True)
            cells, idle = run_impl(
                impl,
                PROFILES[profile][0 if impl == "hapair" else 1],
                scenarios,
                args.runs,
                args.idle_seconds,
                args.prefix,
                log=not args.json,
            )
            report[profile][impl] = {"cells": cells, "idle": idle}
    if args.json:
        print(json.dumps(_jsonable(report), indent=2))
    else:
        _print_table(report, scenarios, impls, args.runs)
    return 0


def _jsonable(report: dict[str, dict[str, object]]) -> object:
    out: dict[str, object] = {}
    for profile, impls in report.items():
        h, k = PROFILES[profile]
        entry: dict[str, object] = {
            "hapair": {"interval_ms": h.interval * 1000, "dead_after": h.dead_after},
            "keepalived": {"advert_int_ms": k.interval * 1000},
        }
        for impl, data in impls.items():
            assert isinstance(data, dict)
            cells: dict[str, Cell] = data["cells"]
            idle: Idle | None = data["idle"]
            entry[f"{impl}_results"] = {
                "idle": None if idle is None else vars(idle),
                "scenarios": {
                    s: {
                        "outages_ms": c.outages,
                        "failed": c.failed,
                        "skipped": c.skipped,
                        "min_median_max": c.stats(),
                    }
                    for s, c in cells.items()
                },
            }
        out[profile] = entry
    return out


def _print_table(
    report: dict[str, dict[str, object]], scenarios: Sequence[str], impls: Sequence[str], runs: int
) -> None:
    for profile, data in report.items():
        h, k = PROFILES[profile]
        print(
            f"\n== {profile}: hapair interval {h.interval * 1000:g} ms, dead_after {h.dead_after}"
            f"; keepalived advert_int {k.interval:g}; {runs} runs; outage ms min/median/max"
        )
        header = f"{'scenario':10} " + " ".join(f"{i:>20}" for i in impls)
        print(header + ("   ratio h/k" if len(impls) == 2 else ""))
        for s in scenarios:
            stats = []
            row = f"{s:10} "
            for impl in impls:
                entry = data[impl]
                assert isinstance(entry, dict)
                cell: Cell = entry["cells"][s]
                stats.append(cell.stats())
                text = "skipped" if cell.skipped else _fmt(cell.stats())
                if cell.failed:
                    text += f" ({cell.failed} failed)"
                row += f"{text:>20} "
            if len(stats) == 2 and stats[0] and stats[1] and stats[1][1] > 0:
                row += f"  {stats[0][1] / stats[1][1]:9.2f}"
            print(row)
        for impl in impls:
            entry = data[impl]
            assert isinstance(entry, dict)
            idle: Idle | None = entry["idle"]
            if idle is not None:
                print(
                    f"idle MASTER {impl:10}: RSS {idle.rss_mb:6.1f} MiB, "
                    f"CPU {idle.cpu_percent:5.2f}% over {idle.seconds:.0f} s"
                )


if __name__ == "__main__":
    raise SystemExit(main())
