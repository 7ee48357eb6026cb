"""Idle benchmark: the MASTER's CPU and memory while nothing happens, hapair beside keepalived.

Runs the real pair in the namespace lab at the same timers for both (default 20 ms, dead after
3), waits until one node is the stable MASTER and the start-up has settled, then samples the
MASTER's daemon (and, for reference, the BACKUP's) from /proc for ``--seconds``:

- CPU: utime + stime of every thread (``/proc/PID/stat``) over the window, in % of one core;
- RSS: ``VmRSS`` (``/proc/PID/status``) at the end of the window;
- PSS: ``Pss`` from ``/proc/PID/smaps_rollup`` (shared library pages split between the
  processes that map them: the fairer figure for keepalived's two processes);
- wake-ups: voluntary context switches of the main thread per second (each one a sleep
  ended by a timer or a datagram: the idle cost scales with them).

keepalived's figures are the sums over its processes (the parent and the VRRP child). Each run
starts both daemons afresh; the table shows the median of ``--runs`` runs (min and max beside).

``--floor`` adds two columns: `bench/pyfloor.py` on the same two links, a CPython process doing
only the per-interval work that the protocol cannot skip (drain, verify one HMAC, sign one, send
on both links), paced by asyncio and by a bare sleep. Its "MASTER" is the one in node a. It is
the least a Python daemon of this design can cost here, measured in the same run.

    sudo .venv/bin/python bench/idle.py [--runs 3] [--seconds 20] [--interval 0.02] [--floor]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hapair.lab.addresses import HB4, LAN4, NODES
from hapair.lab.drill import wait_stable_master
from hapair.lab.keepalived import bench_pair, keepalived_path
from hapair.lab.nodes import PEER, Pair, Timers
from hapair.lab.shell import LabError, cpu_ticks
from hapair.lab.testbed import NetnsBed
from hapair.lab.topology import Lab

CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
#: Seconds to wait after the MASTER is stable before sampling: start-up work (state file, GARP
#: repeats, first status) must not count as idle.
SETTLE: Final = 3.0


@dataclass(frozen=True)
class Sample:
    """One daemon's idle footprint over one window (summed over its processes)."""

    cpu_percent: float
    wakes_per_s: float
    rss_mb: float
    pss_mb: float
    seconds: float


def _status_field(path: str, name: str) -> int:
    with open(path, encoding="ascii") as fh:
        for line in fh:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def wakes(pid: int) -> int:
    """Return how often `pid`'s main thread has slept and been woken (voluntary switches)."""
    return _status_field(f"/proc/{pid}/status", "voluntary_ctxt_switches")


def rss_kib(pid: int) -> int:
    """Return VmRSS of `pid` in KiB."""
    return _status_field(f"/proc/{pid}/status", "VmRSS")


def pss_kib(pid: int) -> int:
    """Return the proportional set size of `pid` in KiB."""
    return _status_field(f"/proc/{pid}/smaps_rollup", "Pss")


def _sample_pair(pair: Pair, master: str, seconds: float) -> tuple[Sample, Sample]:
    """Sample the MASTER and the BACKUP over the same window (one sleep, both read)."""
    backup = PEER[master]
    pm, pb = pair.pids(master), pair.pids(backup)
    if not pm or not pb:
        raise LabError(f"{pair.label}: a daemon is not running")
    return _sample_pids(pm, pb, seconds)


def _sample_pids(pm: list[int], pb: list[int], seconds: float) -> tuple[Sample, Sample]:
    """Sample two process sets (a MASTER's and a BACKUP's) over the same window."""
    ticks0 = {p: cpu_ticks(p) for p in pm + pb}
    wakes0 = {p: wakes(p) for p in pm + pb}
    start = time.monotonic()
    time.sleep(seconds)
    ticks1 = {p: cpu_ticks(p) for p in pm + pb}
    wakes1 = {p: wakes(p) for p in pm + pb}
    elapsed = time.monotonic() - start

    def one(pids: list[int]) -> Sample:
        ticks = sum(ticks1[p] - ticks0[p] for p in pids)
        return Sample(
            cpu_percent=100.0 * ticks / CLK_TCK / elapsed,
            wakes_per_s=sum(wakes1[p] - wakes0[p] for p in pids) / elapsed,
            rss_mb=sum(rss_kib(p) for p in pids) / 1024,
            pss_mb=sum(pss_kib(p) for p in pids) / 1024,
            seconds=elapsed,
        )

    return one(pm), one(pb)


def run_impl(
    impl: str, timers: Timers, runs: int, seconds: float, prefix: str
) -> list[dict[str, object]]:
    """Build one lab; per run start both daemons, sample the idle MASTER, stop them."""
    results: list[dict[str, object]] = []
    with Lab(prefix, timers=timers) as lab:
        pair = bench_pair(lab, keepalived=impl == "keepalived")
        bed = NetnsBed(lab, pair)
        for i in range(runs):
            for node in NODES:
                pair.start(node)
            master = wait_stable_master(bed, pair, timeout=30.0, settle=1.0)
            time.sleep(SETTLE)
            m, b = _sample_pair(pair, master, seconds)
            if pair.role(master) != "MASTER":
                print(f"  {impl} run {i + 1}: role changed while sampling", file=sys.stderr)
            results.append({"master": asdict(m), "backup": asdict(b)})
            _progress(f"{impl} run {i + 1}", f"MASTER {master}", m, "BACKUP", b)
            for node in NODES:
                pair.terminate(node)
            lab.remove_vips("a")
            lab.remove_vips("b")
    return results


FLOOR: Final = Path(__file__).resolve().parent / "pyfloor.py"


def run_floor(
    loop: str, timers: Timers, runs: int, seconds: float, prefix: str
) -> list[dict[str, object]]:
    """Like `run_impl` for `bench/pyfloor.py` (paced by `loop`) in both nodes."""
    results: list[dict[str, object]] = []
    impl = f"floor-{loop}"
    with Lab(prefix, timers=timers) as lab:
        for i in range(runs):
            pids: dict[str, int] = {}
            for node in NODES:
                peer = PEER[node]
                argv = [
                    sys.executable, str(FLOOR), "--loop", loop,
                    "--interval", str(timers.interval),
                    "--bind", LAN4[node], HB4[node], "--peer", LAN4[peer], HB4[peer],
                ]  # fmt: skip
                pids[node] = lab.spawn(f"{impl}-{node}", node, argv).pid
            time.sleep(SETTLE)
            m, b = _sample_pids([pids["a"]], [pids["b"]], seconds)
            for node in NODES:
                if not lab.running(f"{impl}-{node}"):
                    raise LabError(f"{impl} in {node} died: see {lab.dir}")
                lab.stop(f"{impl}-{node}")
            results.append({"master": asdict(m), "backup": asdict(b)})
            _progress(f"{impl} run {i + 1}", "node a", m, "node b", b)
    return results


def _progress(what: str, first: str, m: Sample, second: str, b: Sample) -> None:
    """One run's line on stderr, as it finishes."""
    print(
        f"  {what}: {first} CPU {m.cpu_percent:5.2f}% RSS {m.rss_mb:5.1f} MiB "
        f"PSS {m.pss_mb:5.1f} MiB | {second} CPU {b.cpu_percent:5.2f}% RSS {b.rss_mb:5.1f} MiB",
        file=sys.stderr,
        flush=True,
    )


def _stat(results: list[dict[str, object]], role: str, key: str) -> tuple[float, float, float]:
    values = [float(r[role][key]) for r in results]  # type: ignore[index]
    return min(values), statistics.median(values), max(values)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the comparison."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--dead-after", type=int, default=3)
    parser.add_argument("--prefix", default="pfidle")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-keepalived", action="store_true")
    parser.add_argument(
        "--floor", action="store_true", help="add bench/pyfloor.py's columns (CPython's floor)"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/idle.py needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.runs < 1 or args.seconds <= 0:
        parser.error("--runs must be >= 1 and --seconds > 0")
    timers = Timers(interval=args.interval, dead_after=args.dead_after)
    impls = ["hapair"]
    if not args.no_keepalived:
        if keepalived_path() is None:
            print("keepalived not installed: hapair only", file=sys.stderr)
        else:
            impls.append("keepalived")
    report = {impl: run_impl(impl, timers, args.runs, args.seconds, args.prefix) for impl in impls}
    if args.floor:
        for loop in ("asyncio", "sleep"):
            report[f"floor-{loop}"] = run_floor(loop, timers, args.runs, args.seconds, args.prefix)
        impls += ["floor-asyncio", "floor-sleep"]
    if args.json:
        print(json.dumps({"interval": args.interval, "dead_after": args.dead_after, **report}))
        return 0
    print(
        f"\n== idle: interval {args.interval * 1000:g} ms, dead_after {args.dead_after}; "
        f"{args.runs} runs of {args.seconds:g} s; median (min-max)"
    )
    print(f"{'':18}" + "".join(f"{impl:>24}" for impl in impls))
    for role in ("master", "backup"):
        for key, label, unit in (
            ("cpu_percent", "CPU", "%"),
            ("wakes_per_s", "wake", "/s"),
            ("rss_mb", "RSS", "MiB"),
            ("pss_mb", "PSS", "MiB"),
        ):
            row = f"{role.upper():7} {label} {unit:4}  "
            for impl in impls:
                lo, med, hi = _stat(report[impl], role, key)
                row += f"{f'{med:.2f} ({lo:.2f}-{hi:.2f})':>24}"
            print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
