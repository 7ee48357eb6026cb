"""Drill figures in Docker next to the namespace lab's, from one run, with the same timers.

Builds a namespace lab on this machine and drills it, alternating run by run with the same
drill on a running compose lab (compose/docker-compose.yml) through the Docker engine. The lab
gets the compose nodes' timers, so the two columns differ only in where the pair runs. Prints
min/median/max client-visible outage per scenario, plus the medians of the other figures.

    docker-compose -f compose/docker-compose.yml -p hapair up -d
    sudo .venv/bin/python bench/drills.py --project hapair [--runs 5] [--scenarios crash,kill]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hapair.lab.addresses import NODES
from hapair.lab.dockerbed import DockerBed, DockerPair, connect, find_project
from hapair.lab.drill import SCENARIOS, DrillOptions, DrillResult, run_drill
from hapair.lab.nodes import Pair
from hapair.lab.shell import LabError
from hapair.lab.testbed import NetnsBed, Testbed
from hapair.lab.topology import Lab

BEDS = ("netns", "docker")


def _spread(values: Sequence[float]) -> str:
    if not values:
        return f"{'n/a':>17}"
    return f"{min(values):5.0f} {statistics.median(values):5.0f} {max(values):5.0f}"


def _median(values: Sequence[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{statistics.median(known):6.0f}" if known else f"{'-':>6}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the drills on both testbeds and print them side by side."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--project", help="the running compose lab (default: the only one)")
    parser.add_argument("--prefix", default="hpbd")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/drills.py needs root (network namespaces)", file=sys.stderr)
        return 2
    scenarios = [s for s in args.scenarios.split(",") if s]
    if set(scenarios) - set(SCENARIOS) or args.runs < 1:
        parser.error(f"scenarios are {', '.join(SCENARIOS)}; --runs >= 1")
    client = connect()
    docker_pair = DockerPair(client, find_project(client, args.project))
    timers = docker_pair.timers
    results: dict[str, dict[str, list[DrillResult]]] = {s: {b: [] for b in BEDS} for s in scenarios}
    with Lab(args.prefix, timers=timers) as lab:
        for node in NODES:
            lab.hapair.start(node)
        beds: dict[str, tuple[Testbed, Pair]] = {
            "netns": (NetnsBed(lab, lab.hapair), lab.hapair),
            "docker": (DockerBed(client, docker_pair), docker_pair),
        }
        for scenario in scenarios:
            for i in range(args.runs):
                for name in BEDS:
                    bed, pair = beds[name]
                    try:
                        result = run_drill(bed, pair, scenario, DrillOptions())
                    except LabError as exc:
                        print(f"  {name} {scenario} run {i + 1}: error: {exc}", file=sys.stderr)
                        continue
                    results[scenario][name].append(result)
                    print(
                        f"  {name:6} {scenario:9} run {i + 1}: outage {result.outage_ms:7.1f} ms"
                        f"{'' if result.recovered else '  NOT RECOVERED'}",
                        file=sys.stderr,
                        flush=True,
                    )
    client.close()
    if args.json:
        print(
            json.dumps(
                {
                    s: {b: [r.to_dict() for r in rs] for b, rs in by.items()}
                    for s, by in results.items()
                },
                indent=2,
            )
        )
        return 0
    print(
        f"\nhapair, interval {timers.interval * 1000:g} ms, dead after {timers.dead_after}; "
        f"{args.runs} runs each, alternating; ms"
    )
    print(
        f"{'scenario':10} {'outage netns min/med/max':>25} {'outage docker':>17}"
        f" {'lost n/d':>13} {'stale VIP n/d':>13} {'heal->answer n/d':>17}"
    )
    for scenario in scenarios:
        by = results[scenario]

        def both(field: str, by: dict[str, list[DrillResult]] = by) -> str:
            return " ".join(_median([getattr(r, field) for r in by[b]]) for b in BEDS)

        outages = [_spread([r.outage_ms for r in by[b] if r.recovered]) for b in BEDS]
        failed = [
            f"{b}: {n} not recovered" for b in BEDS if (n := sum(not r.recovered for r in by[b]))
        ]
        print(
            f"{scenario:10} {outages[0]:>25} {outages[1]:>17} {both('lost')} "
            f"{both('stale_vip_ms')}   {both('heal_to_answer_ms')}"
            + (f"  ({'; '.join(failed)})" if failed else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
