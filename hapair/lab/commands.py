"""``hapair lab``: build the namespace lab, tear it down, run failure drills."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from hapair.config.duration import parse_duration
from hapair.lab.nodes import Pair, Timers

if TYPE_CHECKING:
    from hapair.lab.drill import DrillResult
    from hapair.lab.testbed import Testbed
    from hapair.lab.topology import Lab

_RAW: Final = argparse.RawDescriptionHelpFormatter
DEFAULT_PREFIX: Final = "hpl"
DRILL_PREFIX: Final = "hpd"
CHAOS_PREFIX: Final = "hpc"


def _need_root(what: str) -> int | None:
    if os.geteuid() != 0:
        print(
            f"hapair lab {what}: needs root (it creates network namespaces and veth links); "
            f"run it with sudo",
            file=sys.stderr,
        )
        return 2
    return None


def _timers(args: argparse.Namespace) -> Timers:
    try:
        interval = parse_duration(args.interval)
    except ValueError as exc:
        raise SystemExit(f"hapair lab: --interval: {exc}") from None
    if interval <= 0 or args.dead_after < 2:
        raise SystemExit("hapair lab: need --interval > 0 and --dead-after >= 2")
    return Timers(interval=interval, dead_after=args.dead_after)


def _pair(lab: Lab, args: argparse.Namespace) -> Pair:
    if getattr(args, "keepalived", False):
        from hapair.lab.keepalived import KeepalivedPair

        kp = KeepalivedPair(lab, lab.hapair.timers)
        kp.write_configs()
        return kp
    pair: Pair = lab.hapair
    return pair


def cmd_up(args: argparse.Namespace) -> int:
    """Build the lab, start both daemons and leave everything running."""
    if (status := _need_root("up")) is not None:
        return status
    from hapair.lab.topology import Lab

    lab = Lab(args.prefix, timers=_timers(args), ipv6=args.ipv6)
    lab.trap_signals()
    try:
        lab.up()
        if not args.no_daemons:
            pair = _pair(lab, args)
            for node in ("a", "b"):
                pair.start(node)
    except BaseException:
        lab.down()
        raise
    print(lab.describe())
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """Remove a lab by prefix, from any process."""
    if (status := _need_root("down")) is not None:
        return status
    from hapair.lab.topology import teardown

    removed = teardown(args.prefix)
    print(f"removed lab {args.prefix!r}: " + (", ".join(removed) or "nothing was there"))
    return 0


def _run_drills(
    bed: Testbed, pair: Pair, scenarios: list[str], args: argparse.Namespace, delay: float
) -> list[DrillResult]:
    """Run each scenario --runs times on `bed`; print each result unless --json."""
    from hapair.lab.drill import DrillOptions, format_result, run_drill

    results = []
    for scenario in scenarios:
        for _ in range(args.runs):
            result = run_drill(bed, pair, scenario, DrillOptions(release_delay=delay))
            results.append(result)
            if not args.json:
                print(format_result(result), flush=True)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    return results


def _drill_setup(args: argparse.Namespace, command: str) -> tuple[list[str], float]:
    from hapair.lab.drill import SCENARIOS

    if args.runs < 1:
        raise SystemExit(f"{command}: --runs must be >= 1")
    try:
        release_delay = parse_duration(args.release_delay)
    except ValueError as exc:
        raise SystemExit(f"{command}: --release-delay: {exc}") from None
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    return scenarios, release_delay


def _exit_status(results: list[DrillResult]) -> int:
    return 0 if all(r.recovered or r.skipped for r in results) else 1


def cmd_drill(args: argparse.Namespace) -> int:
    """Build a lab, run the drill N times, print timelines, tear the lab down."""
    if (status := _need_root("drill")) is not None:
        return status
    from hapair.lab.testbed import NetnsBed
    from hapair.lab.topology import Lab

    scenarios, release_delay = _drill_setup(args, "hapair lab drill")
    lab = Lab(args.prefix, timers=_timers(args))
    lab.trap_signals()
    try:
        lab.up()
        pair = _pair(lab, args)
        for node in ("a", "b"):
            pair.start(node)
        if not args.json:
            print(f"lab {args.prefix!r} up in {lab.dir}; {pair.label} running on a and b")
        results = _run_drills(NetnsBed(lab, pair), pair, scenarios, args, release_delay)
    except BaseException:
        lab.down()
        raise
    if args.keep:
        print(lab.describe(), file=sys.stderr if args.json else sys.stdout)
    else:
        lab.down()
    return _exit_status(results)


def cmd_docker_drill(args: argparse.Namespace) -> int:
    """Drill a running compose lab through the Docker engine; or the netns lab without --docker."""
    if not args.docker:
        args.prefix, args.keep, args.keepalived = DRILL_PREFIX, False, False
        args.interval, args.dead_after = "200ms", 5
        return cmd_drill(args)
    from hapair.lab.dockerbed import DockerBed, DockerPair, connect, find_project

    scenarios, release_delay = _drill_setup(args, "hapair drill")
    client = connect()
    try:
        project = find_project(client, args.project)
        pair = DockerPair(client, project)
        if not args.json:
            print(f"compose lab {project!r}: VIP {pair.setup['a'].vip}, nodes a and b")
        results = _run_drills(DockerBed(client, pair), pair, scenarios, args, release_delay)
    finally:
        client.close()
    return _exit_status(results)


def cmd_chaos(args: argparse.Namespace) -> int:
    """Build a lab, play a seeded fault schedule, check the invariants, print the report."""
    if (status := _need_root("chaos")) is not None:
        return status
    import random

    from hapair.lab.chaos import make_schedule, parse_kinds
    from hapair.lab.chaoscheck import Bounds
    from hapair.lab.chaosreport import format_report, replay_command, to_json
    from hapair.lab.chaosrun import ChaosRunner, add_balancer, keep_logs
    from hapair.lab.shell import LabError
    from hapair.lab.topology import Lab, check_prefix

    timers = _timers(args)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    try:
        check_prefix(args.prefix)
        kinds = parse_kinds(args.faults)
        tolerance = parse_duration(args.tolerance)
        schedule = make_schedule(
            seed, args.minutes, interval=timers.interval, dead_after=timers.dead_after, kinds=kinds
        )
    except (ValueError, LabError) as exc:
        print(f"hapair lab chaos: {exc}", file=sys.stderr)
        return 2
    if not schedule:
        print("hapair lab chaos: --minutes too short for even one fault", file=sys.stderr)
        return 2
    bounds = Bounds(timers.interval, timers.dead_time, tolerance)
    lab = Lab(args.prefix, timers=timers)
    lab.trap_signals()
    try:
        lab.up()
        if args.balancer != "none":
            add_balancer(lab, args.balancer)
        for node in ("a", "b"):
            lab.hapair.start(node)
        print(
            f"chaos: lab {args.prefix!r} up in {lab.dir}; seed {seed}, {len(schedule)} faults "
            f"planned over {args.minutes:g} min",
            file=sys.stderr,
            flush=True,
        )
        runner = ChaosRunner(
            lab,
            schedule,
            seed=seed,
            minutes=args.minutes,
            bounds=bounds,
            balancer=args.balancer,
            progress=args.verbose,
            flood_rate=args.flood_rate or None,
        )
        result = runner.run()
    except BaseException:
        lab.down()
        raise
    replay = replay_command(result, args.prefix, args.faults)
    if args.keep_logs is not None:
        kept = keep_logs(lab, args.keep_logs, to_json(result, replay))
        print(f"chaos: {len(kept)} files kept in {args.keep_logs}", file=sys.stderr)
    if args.json:
        print(json.dumps(to_json(result, replay), indent=2))
    else:
        print(format_report(result, replay))
    if args.keep:
        print(lab.describe(), file=sys.stderr)
    else:
        lab.down()
    return 0 if result.ok else 1


def chaos_args(p: argparse.ArgumentParser) -> None:
    """Add the options of ``hapair lab chaos``."""
    from hapair.lab.chaosrun import BALANCERS, FLOOD_RATE

    p.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    p.add_argument("--seed", type=int, help="schedule seed (default: a random one, printed)")
    p.add_argument("--interval", default="50ms", help="heartbeat interval (default 50ms)")
    p.add_argument(
        "--dead-after", type=int, default=3, metavar="N", help="missed heartbeats (default 3)"
    )
    p.add_argument(
        "--faults", default="all", metavar="KINDS", help="comma-separated fault kinds (all)"
    )
    p.add_argument(
        "--tolerance", default="50ms", help="slack on the timed invariants (default 50ms)"
    )
    p.add_argument(
        "--balancer",
        choices=BALANCERS,
        default="nat",
        help="balancer on both nodes: nat, proxy on nginx or on haproxy, or none (nat)",
    )
    p.add_argument(
        "--flood-rate",
        type=float,
        default=FLOOD_RATE,
        metavar="N",
        help=f"flood datagrams per second ({FLOOD_RATE:.0f}; 0: flat out)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    p.add_argument(
        "--keep-logs",
        type=Path,
        metavar="DIR",
        help="copy the daemon logs, configurations and the JSON report to DIR",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log each fault to stderr")
    p.add_argument("--prefix", default=CHAOS_PREFIX, help=f"name prefix ({CHAOS_PREFIX})")
    p.set_defaults(func=cmd_chaos)


def drill_args(p: argparse.ArgumentParser) -> None:
    """Add the options every drill command shares."""
    from hapair.lab.drill import SCENARIOS

    p.add_argument("scenario", choices=[*SCENARIOS, "all"], metavar="SCENARIO")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--runs", type=int, default=1, metavar="N", help="repeat N times (1)")
    p.add_argument(
        "--release-delay",
        default="0s",
        metavar="DURATION",
        help="kill: wait this long before the ExecStopPost release (default 0s, as systemd)",
    )


def register(subparsers: Any) -> None:
    """Add ``lab`` and ``drill`` with their sub-commands to the ``hapair`` command line."""
    from hapair.lab.drill import DESCRIPTIONS, SCENARIOS

    register_drill(subparsers)

    lab = subparsers.add_parser(
        "lab",
        help="a two-node lab in network namespaces, and failure drills",
        formatter_class=_RAW,
        description=(
            "Build a small network on this machine out of network namespaces: a switch,\n"
            "the two nodes a and b (LAN 10.77.0.11/.12 plus a direct heartbeat cable\n"
            "192.168.77.1/.2), a client (10.77.0.100) and two backends. The VIP is 10.77.0.50.\n"
            "Each node runs a tiny service on the VIP (UDP echo :7, HTTP :80) that answers\n"
            "with its name, so the client sees who holds the VIP. Needs root."
        ),
        epilog=(
            "examples:\n"
            "  sudo hapair lab up                  # build, start hapair on a and b\n"
            "  sudo ip netns exec hpl-c curl -s http://10.77.0.50/\n"
            "  sudo hapair lab down\n"
            "  sudo hapair lab drill crash         # one failover, timed as a client sees it\n"
            "  sudo hapair lab chaos --minutes 3 --seed 1   # random faults, invariants checked\n"
        ),
    )
    sub = lab.add_subparsers(dest="lab_command", metavar="SUBCOMMAND", required=True)

    def timer_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--interval", default="200ms", help="heartbeat interval (default 200ms)")
        p.add_argument(
            "--dead-after",
            type=int,
            default=5,
            metavar="N",
            help="missed heartbeats before the peer is dead (default 5)",
        )
        p.add_argument(
            "--keepalived",
            action="store_true",
            help="run Debian's keepalived (VRRPv3, unicast) instead of hapair, for comparison",
        )

    p = sub.add_parser(
        "up",
        help="build the lab, start both daemons, and leave it running",
        formatter_class=_RAW,
        description=(
            "Build the lab under PREFIX (namespaces PREFIX-sw, -a, -b, -c, -r1, -r2), write\n"
            "the node configs and a shared secret into a fresh directory (printed), start the\n"
            "services and hapair on a and b, print how to look around, and exit. The lab\n"
            "stays up until `hapair lab down`."
        ),
        epilog=(
            "examples:\n"
            "  sudo hapair lab up\n"
            "  sudo hapair lab up --interval 20ms --dead-after 3 --ipv6\n"
            "  sudo ip netns exec hpl-c ip neigh show 10.77.0.50   # who the client ARPs to\n"
            "  sudo ip -n hpl-a addr show dev eth0                  # does a hold the VIP?\n"
        ),
    )
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"name prefix ({DEFAULT_PREFIX})")
    p.add_argument("--ipv6", action="store_true", help="also float fd77::50/64")
    p.add_argument("--no-daemons", action="store_true", help="build the network only")
    timer_args(p)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser(
        "down",
        help="remove a lab: its processes, namespaces and directory",
        formatter_class=_RAW,
        description=(
            "Kill every process living in the lab's namespaces, delete the namespaces and\n"
            "the lab directory. Works from any shell: only the prefix is needed."
        ),
        epilog="examples:\n  sudo hapair lab down\n  sudo hapair lab down --prefix hpd",
    )
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"name prefix ({DEFAULT_PREFIX})")
    p.set_defaults(func=cmd_down)

    scenario_help = "\n".join(f"  {name:<10} {DESCRIPTIONS[name]}" for name in SCENARIOS)
    p = sub.add_parser(
        "drill",
        help="run a failure drill and print its timeline",
        formatter_class=_RAW,
        description=(
            "Build a lab, start both daemons, wait for a stable master, start the client\n"
            "probe (a UDP datagram to VIP:7 every 10 ms), inject the fault at T0, wait for\n"
            "the survivor to be MASTER and answer the client, print a timeline (ms after\n"
            "T0) and the figures: outage as the client saw it, probes lost, split-brain\n"
            "time. Then restore the lab (restart, link up...) and repeat --runs times.\n\n"
            f"scenarios:\n{scenario_help}\n  all        every scenario in turn"
        ),
        epilog=(
            "examples:\n"
            "  sudo hapair lab drill crash\n"
            "  sudo hapair lab drill partition --json\n"
            "  sudo hapair lab drill all --interval 20ms --dead-after 3 --runs 3\n"
            "  sudo hapair lab drill kill --keepalived     # the same drill against keepalived\n"
            "  sudo hapair lab drill linkdown --keep       # leave the lab up to look around\n"
            "exit status: 0 every run recovered, 1 some did not, 2 not root"
        ),
    )
    drill_args(p)
    p.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    p.add_argument("--prefix", default=DRILL_PREFIX, help=f"name prefix ({DRILL_PREFIX})")
    timer_args(p)
    p.set_defaults(func=cmd_drill)

    register_chaos(sub)


def register_chaos(sub: Any) -> None:
    """Add ``hapair lab chaos``."""
    from hapair.lab.chaos import DESCRIPTIONS as FAULTS
    from hapair.lab.chaos import KINDS
    from hapair.lab.chaoscheck import INVARIANTS

    fault_help = "\n".join(f"  {name:<10} {FAULTS[name]}" for name in KINDS)
    invariant_help = "\n".join(f"  {name:<15} {text}" for name, text in INVARIANTS.items())
    p = sub.add_parser(
        "chaos",
        help="random faults for N minutes; check the pair's invariants the whole time",
        formatter_class=_RAW,
        description=(
            "Build a lab (prefix hpc), start hapair on a and b with a --balancer in front of\n"
            "r1 and r2, wait for one stable master, start the client probe (a UDP datagram\n"
            "to VIP:7 every 10 ms) and a VIP monitor in each node, then play a schedule of\n"
            "faults drawn from --seed: a quiet gap, a fault held for a while, its heal, the\n"
            "next gap. Faults never overlap. The same seed with the same --minutes,\n"
            "--interval, --dead-after and --faults replays the same schedule (the report\n"
            "prints the replay command); the actions' own times (a daemon start takes about\n"
            "a second) vary from run to run, and faults stop when --minutes are over.\n\n"
            f"faults (target drawn from a and b):\n{fault_help}\n\n"
            "invariants, checked over the whole run (a node that is dead, frozen, cut off,\n"
            "or killed with its VIP not yet released is left out of the counts; the\n"
            "tolerance is --tolerance):\n"
            f"{invariant_help}\n\n"
            "The report lists each fault with its start and heal (seconds after T0), the\n"
            "time from its heal to exactly one MASTER, the client's longest outage, then\n"
            "totals: faults by kind, violations by invariant, crashes. The flood fault needs\n"
            "hapair.lab.flood; without it, it is skipped with a note."
        ),
        epilog=(
            "examples:\n"
            "  sudo hapair lab chaos --minutes 3 --seed 1\n"
            "  sudo hapair lab chaos --minutes 10 --seed 7 --json > chaos.json\n"
            "  sudo hapair lab chaos --minutes 1 --seed 7 --faults crash,partition -v\n"
            "exit status: 0 no invariant violated, 1 some were, 2 not root or bad options"
        ),
    )
    chaos_args(p)


def register_drill(subparsers: Any) -> None:
    """Add ``drill``: the drills against the compose lab in Docker (or the netns lab)."""
    from hapair.lab.drill import DESCRIPTIONS, SCENARIOS

    scenario_help = "\n".join(f"  {name:<10} {DESCRIPTIONS[name]}" for name in SCENARIOS)
    p = subparsers.add_parser(
        "drill",
        help="rehearse a failover: on the compose lab in Docker (--docker) or a netns lab",
        formatter_class=_RAW,
        description=(
            "Run a failure drill and print its timeline and figures, as `hapair lab drill`\n"
            "does, with the same client probe (a UDP datagram to VIP:7 every 10 ms from the\n"
            "client) and the same report.\n\n"
            "With --docker it drills the compose lab (compose/docker-compose.yml) that is\n"
            "running on this Docker engine, through the engine's API: crash is `docker kill`\n"
            "plus a network disconnect, pause is `docker pause`, linkdown is `ip link set\n"
            "eth0 down` inside the node, partition is an nftables drop table in each node,\n"
            "kill and sigterm signal the daemon inside its container (its supervisor then\n"
            "releases the VIP, as ExecStopPost does). Timers are read from the nodes' configs.\n"
            "Without --docker it builds a namespace lab on this machine (needs root).\n\n"
            f"scenarios:\n{scenario_help}\n  all        every scenario in turn"
        ),
        epilog=(
            "examples:\n"
            "  docker compose -f compose/docker-compose.yml up -d\n"
            "  hapair drill --docker crash\n"
            "  hapair drill --docker all --runs 3 --json > drills.json\n"
            "  hapair drill --docker pause --project mylab\n"
            "exit status: 0 every run recovered, 1 some did not"
        ),
    )
    drill_args(p)
    p.add_argument("--docker", action="store_true", help="drill the compose lab in Docker")
    p.add_argument(
        "--project",
        metavar="NAME",
        help="the compose project to drill (default: the only one running the lab)",
    )
    p.set_defaults(func=cmd_docker_drill)
