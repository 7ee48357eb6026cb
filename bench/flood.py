"""Flood benchmark: the real pair in the namespace lab at 20 ms x 3 while host x floods the
BACKUP's heartbeat port, with keepalived side by side on the same flood.

Cases (each counts role changes and dual-VIP time from the daemon logs, during the flood and
one second after it):

- ``nonpeer``: x floods b from its own address, flat out (or at ``--rate``);
- ``spoof-dual``: x forges a's LAN address (the direct cable stays clean), flat out (or at
  ``--rate``);
- ``spoof-single``: the same forgery on a pair with only the LAN link, at rising rates, to find
  the rate of the first false failover;
- ``keepalived``: the ``nonpeer`` flood against keepalived in the same lab.

Flat out, the sender and the kernel's softirq work take both cores of a 2-core VM, so the
daemons then starve for CPU whatever they filter; ``--rate`` paces the flood (the issue's
figure is at least 250,000/s) to measure the daemon rather than the VM.

The flood's datagrams follow ``hapair.wire.heartbeat`` (size, version), so the bench measures
whichever protocol this checkout speaks.

    sudo .venv/bin/python bench/flood.py [--seconds 60] [--cases nonpeer,spoof-dual,...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hapair.lab.addresses import LAN4, NODES
from hapair.lab.drill import wait_stable_master
from hapair.lab.events import dual_master_spans
from hapair.lab.keepalived import bench_pair, keepalived_path
from hapair.lab.nodes import Pair, Timers
from hapair.lab.shell import LabError, cpu_ticks
from hapair.lab.testbed import NetnsBed
from hapair.lab.topology import Lab
from hapair.wire.heartbeat import PACKET_SIZE, VERSION

FAST: Final = Timers(interval=0.02, dead_after=3)
CASES: Final = ("nonpeer", "spoof-dual", "spoof-single", "keepalived")
#: Rates (datagrams/s) of the rising single-link flood; 0 = flat out.
RATES: Final = (1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 0)
AFTER: Final = 1.0  # seconds after the flood still counted
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    """One flood against one pair."""

    case: str
    impl: str
    rate_asked: int | None
    sent: int = 0
    rate: float = 0.0
    seconds: float = 0.0
    role_changes: int = 0
    dual_vip_ms: float = 0.0
    backup_cpu: float = 0.0  # % of one core, the BACKUP's daemon during the flood
    drops: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    #: Worst loop lateness of either daemon since its start, and the part not spent waiting
    #: for a CPU (`status.loop`); None where the daemon does not say (keepalived).
    late_ms: float | None = None
    blocked_ms: float | None = None
    error: str | None = None


def _ticks(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            total += cpu_ticks(pid)
    return total


def flood_once(
    lab: Lab, pair: Pair, case: str, impl: str, seconds: float, rate: int | None, spoof: bool
) -> Result:
    """Flood b for ``seconds`` (at ``rate``, or flat out) and read what the logs say."""
    res = Result(case, impl, rate)
    argv = ["-m", "hapair.lab.flood", "--dst", LAN4["b"], "--seconds", f"{seconds:g}",
            "--cluster", f"lab-{lab.prefix}", "--size", str(PACKET_SIZE)]  # fmt: skip
    if spoof:
        argv += ["--spoof-src", LAN4["a"]]
    if rate:
        argv += ["--rate", str(rate)]
    pids = pair.pids("b")
    before = _ticks(pids)
    t0 = time.time()
    proc = lab.python("x", argv, timeout=seconds + 60, check=False)
    t1 = time.time()
    res.backup_cpu = 100.0 * (_ticks(pids) - before) / CLK_TCK / max(1e-9, t1 - t0)
    try:
        out = json.loads(proc.stdout)
        res.sent, res.rate, res.seconds = int(out["sent"]), float(out["rate"]), out["seconds"]
    except (ValueError, KeyError):
        res.error = f"flood failed: {proc.stderr.strip()[-300:]}"
        return res
    time.sleep(AFTER)
    end = t1 + AFTER
    events = [e for e in pair.events() if t0 <= e.ts <= end]
    res.role_changes = sum(1 for e in events if e.name == "role_changed")
    spans = dual_master_spans(pair.events(), NODES)
    res.dual_vip_ms = 1000 * sum(
        max(0.0, min(b, end) - max(a, t0)) for a, b in spans if b >= t0 and a <= end
    )
    status = getattr(pair, "status", None)
    if status is not None:
        for node in NODES:
            st = status(node)
            if not isinstance(st, dict):
                continue
            if node == "b":
                res.drops = dict(st.get("heartbeat_drops") or {})
                res.rejected = dict(st.get("rejected") or {})
            loop = st.get("loop") or {}
            for attr, key in (
                ("late_ms", "worst_lateness_since_start"),
                ("blocked_ms", "worst_blocked_since_start"),
            ):
                if key in loop:
                    worst = max(getattr(res, attr) or 0.0, 1000 * float(loop[key]))
                    setattr(res, attr, worst)
    return res


def run_case(
    case: str, prefix: str, seconds: float, step_seconds: float, rate: int | None = None
) -> list[Result]:
    """Build the lab for ``case``, start the pair, flood, tear down."""
    impl = "keepalived" if case == "keepalived" else "hapair"
    single = case == "spoof-single"
    out: list[Result] = []
    with Lab(prefix, timers=FAST, direct_cable=not single) as lab:
        pair = bench_pair(lab, keepalived=impl == "keepalived")
        for node in NODES:
            pair.start(node)
        bed = NetnsBed(lab, pair)
        settle = max(1.0, 10 * FAST.interval)
        wait_stable_master(bed, pair, timeout=30.0, settle=settle)
        if not single:
            out.append(flood_once(lab, pair, case, impl, seconds, rate, case == "spoof-dual"))
            return out
        for rate in RATES:
            res = flood_once(lab, pair, case, impl, step_seconds, rate or None, True)
            out.append(res)
            print(f"  {case} rate {rate or 'max'}: {_row(res)}", file=sys.stderr, flush=True)
            if res.role_changes:
                break
            wait_stable_master(bed, pair, timeout=30.0, settle=settle)
    return out


def _row(r: Result) -> str:
    asked = "max" if not r.rate_asked else f"{r.rate_asked:,}"
    if r.error:
        return f"{r.case:13} {r.impl:10} {asked:>9}  error: {r.error}"
    drops = sum(r.drops.values())
    late = "-" if r.late_ms is None else f"{r.late_ms:.1f}"
    blocked = "-" if r.blocked_ms is None else f"{r.blocked_ms:.1f}"
    return (
        f"{r.case:13} {r.impl:10} {asked:>9} {r.rate:>10,.0f} {r.seconds:>6.1f} "
        f"{r.role_changes:>6} {r.dual_vip_ms:>9.0f} {r.backup_cpu:>7.1f} {drops:>12,} "
        f"{late:>8} {blocked:>10}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cases and print one table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="flood length per case")
    parser.add_argument("--step-seconds", type=float, default=10.0, help="per rising-rate step")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument(
        "--rate",
        type=int,
        default=0,
        help="datagrams/s for nonpeer, spoof-dual and keepalived (default 0: flat out)",
    )
    parser.add_argument("--prefix", default="trb")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/flood.py needs root (network namespaces)", file=sys.stderr)
        return 2
    cases = [c for c in args.cases.split(",") if c]
    if set(cases) - set(CASES) or args.seconds <= 0 or args.step_seconds <= 0 or args.rate < 0:
        parser.error(f"cases are {', '.join(CASES)}; durations and --rate must be positive")
    if "keepalived" in cases and keepalived_path() is None:
        print("keepalived not installed: skipped", file=sys.stderr)
        cases.remove("keepalived")
    results: list[Result] = []
    for case in cases:
        print(f"{case} ...", file=sys.stderr, flush=True)
        try:
            results += run_case(
                case, args.prefix, args.seconds, args.step_seconds, args.rate or None
            )
        except LabError as exc:
            results.append(Result(case, "?", None, error=str(exc)))
    if args.json:
        print(json.dumps([vars(r) for r in results], indent=2))
        return 0
    print(
        f"\n== flood of b's UDP port at {FAST.interval * 1000:g} ms x {FAST.dead_after}; "
        f"protocol v{VERSION}, {PACKET_SIZE}-byte datagrams"
    )
    print(
        f"{'case':13} {'impl':10} {'asked/s':>9} {'sent/s':>10} {'secs':>6} {'roles':>6} "
        f"{'dual ms':>9} {'b CPU%':>7} {'b drops':>12} {'late ms':>8} {'blocked ms':>10}"
    )
    for r in results:
        print(_row(r))
    single = [r for r in results if r.case == "spoof-single" and not r.error]
    first = next((r for r in single if r.role_changes), None)
    if single:
        if first is None:
            print(f"spoof-single: no false failover up to {single[-1].rate:,.0f}/s")
        else:
            print(f"spoof-single: first false failover at {first.rate:,.0f}/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
