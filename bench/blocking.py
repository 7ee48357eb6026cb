"""How long each call the heartbeat loop used to make takes: the list behind "never block".

Runs inside a throw-away network namespace (a veth pair with an address, a fake
neighbour), each call ``--runs`` times; prints the median and the worst in milliseconds.

    sudo .venv/bin/python bench/blocking.py [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NS: Final = "loblock"
VIP: Final = "10.99.0.50"


def timed(runs: int, fn: Callable[[], object]) -> tuple[float, float]:
    spent = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        spent.append((time.perf_counter() - t) * 1000)
    return statistics.median(spent), max(spent)


def engine_rows(engine: str, runs: int) -> list[tuple[str, tuple[float, float]]]:
    """Start, reload (new pool), test alone and stop of one engine on the veth's address."""
    from hapair.balancer.engine import EngineDataPlane
    from hapair.balancer.plane import Member, Pool
    from hapair.config.load import validate_config

    rows: list[tuple[str, tuple[float, float]]] = []
    cfg = validate_config(
        {
            "node": {"name": "a", "priority": 150},
            "cluster": {"name": "c", "peers": ["10.99.0.2"]},
            "vip": [{"address": f"{VIP}/24", "interface": "d0"}],
            "balancer": {
                "kind": "proxy", "listen": f"{VIP}:8080", "proxy": {"engine": engine},
                "backend": [{"address": "10.99.0.21:80"}, {"address": "10.99.0.22:80"}],
            },
        },
        check_secret=False,
    )  # fmt: skip
    assert cfg.balancer is not None
    with tempfile.TemporaryDirectory() as run:
        plane = EngineDataPlane(cfg.balancer, run_dir=Path(run))
        a = Pool((Member(ipaddress.ip_address("10.99.0.21"), 80),))
        b = Pool((Member(ipaddress.ip_address("10.99.0.22"), 80),))
        t = time.perf_counter()
        plane.apply(a)
        start_ms = (time.perf_counter() - t) * 1000
        rows.append((f"{engine}: start (test + start + ready)", (start_ms, start_ms)))
        flip = [a, b]
        rows.append((f"{engine}: apply new pool (test + reload + wait)",
                     timed(runs, lambda: plane.apply(flip.reverse() or flip[0]))))  # fmt: skip
        binary = plane.process.argv[0]

        def test_only() -> None:
            argv = plane.spec.test_argv(binary, plane.conf, Path(run))
            subprocess.run(argv, capture_output=True, check=False)

        rows.append((f"{engine}: config test alone", timed(runs, test_only)))
        t = time.perf_counter()
        plane.remove()
        stop_ms = (time.perf_counter() - t) * 1000
        rows.append((f"{engine}: stop (remove)", (stop_ms, stop_ms)))
    return rows


def dns_rows(runs: int) -> list[tuple[str, tuple[float, float]]]:
    """The DNS responder: start, a new pool (SIGHUP + wait until it serves it), stop."""
    from hapair.balancer.dns import DnsDataPlane
    from hapair.balancer.plane import Member, Pool
    from hapair.config.load import validate_config

    cfg = validate_config(
        {
            "node": {"name": "a", "priority": 150},
            "cluster": {"name": "c", "peers": ["10.99.0.2"]},
            "vip": [{"address": f"{VIP}/24", "interface": "d0"}],
            "balancer": {
                "kind": "dns", "listen": f"{VIP}:53", "dns": {"names": ["www.example.com"]},
                "backend": [{"address": "10.99.0.21:80"}, {"address": "10.99.0.22:80"}],
            },
        },
        check_secret=False,
    )  # fmt: skip
    assert cfg.balancer is not None
    rows: list[tuple[str, tuple[float, float]]] = []
    with tempfile.TemporaryDirectory() as run:
        plane = DnsDataPlane(cfg.balancer, run_dir=Path(run))
        a = Pool((Member(ipaddress.ip_address("10.99.0.21"), 80),))
        b = Pool((Member(ipaddress.ip_address("10.99.0.22"), 80),))
        t = time.perf_counter()
        plane.apply(a)
        start_ms = (time.perf_counter() - t) * 1000
        rows.append(("dns responder: start", (start_ms, start_ms)))
        flip = [a, b]

        def swap() -> None:
            flip.reverse()
            plane.apply(flip[0])

        rows.append(("dns responder: apply new pool (HUP + wait)", timed(runs, swap)))
        t = time.perf_counter()
        plane.remove()
        stop_ms = (time.perf_counter() - t) * 1000
        rows.append(("dns responder: stop (remove)", (stop_ms, stop_ms)))
    return rows


def inner(runs: int) -> None:
    from hapair.balancer.dr import IpLinks
    from hapair.balancer.nat import NatBackend, NatService, render_ruleset
    from hapair.balancer.nft import nft_binary, nft_load
    from hapair.net.vip import Vip, VipManager

    rows: list[tuple[str, tuple[float, float]]] = []
    nft = nft_binary()
    svc = NatService(
        ipaddress.ip_address(VIP), 80,
        (NatBackend(ipaddress.ip_address("10.99.0.21"), 80),), "rr",
    )  # fmt: skip
    text = render_ruleset([svc])
    rows.append(("nft -c -f + nft -f (nat table)", timed(runs, lambda: nft_load(nft, text))))
    links = IpLinks()
    rows.append(("ip -j neigh show (dr MACs)", timed(runs, lambda: links.neighbours("d0"))))
    rows.append(("ip -j link show (dr own MAC)", timed(runs, lambda: links.own_mac("d0"))))
    vips = VipManager()
    vip = Vip(ipaddress.ip_interface(f"{VIP}/24"), "d0")
    extra = Vip(ipaddress.ip_interface("10.99.0.51/24"), "d0")

    def add_remove() -> None:
        vips.add(extra)
        vips.remove(extra)

    rows.append(("netlink VIP add + remove", timed(runs, add_remove)))
    rows.append(("netlink VIP add (present)", timed(runs, lambda: vips.add(vip))))
    rows.append(("netlink carrier()", timed(runs, lambda: vips.carrier("d0"))))
    rows.append(("netlink mac()", timed(runs, lambda: vips.mac("d0"))))
    rows.append(("netlink present()", timed(runs, lambda: vips.present(vip))))
    vips.close()

    def spawn() -> None:
        async def go() -> None:
            t = time.perf_counter()
            proc = await asyncio.create_subprocess_exec("/bin/true")
            spawn_ms.append((time.perf_counter() - t) * 1000)
            await proc.wait()

        asyncio.run(go())

    spawn_ms: list[float] = []
    timed(runs, spawn)
    rows.append(("create_subprocess_exec (hook/track start)",
                 (statistics.median(spawn_ms), max(spawn_ms))))  # fmt: skip
    for engine in ("nginx", "haproxy"):
        rows += engine_rows(engine, runs)
    rows += dns_rows(runs)
    print(f"{'call':<48} {'median ms':>10} {'worst ms':>10}")
    for name, (median, worst) in rows:
        print(f"{name:<48} {median:>10.2f} {worst:>10.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        inner(args.runs)
        return 0
    if os.geteuid() != 0:
        print("bench/blocking.py needs root (a network namespace)", file=sys.stderr)
        return 2
    subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        ns = ["ip", "netns", "exec", NS]
        for cmd in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"],
            ["ip", "link", "set", "d1", "up"],
            ["ip", "link", "set", "d0", "up"],
            ["ip", "addr", "add", f"{VIP}/24", "dev", "d0"],
            ["ip", "neigh", "add", "10.99.0.21", "lladdr", "02:00:00:00:00:21", "dev", "d0"],
            ["sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1"],
        ):
            subprocess.run([*ns, *cmd], check=True)
        return subprocess.run(
            [*ns, sys.executable, __file__, "--inner", "--runs", str(args.runs)], check=False
        ).returncode
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)


if __name__ == "__main__":
    raise SystemExit(main())
