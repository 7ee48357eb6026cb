"""Balancer churn: does balancer work (engine tests and reloads, nft loads, MAC look-ups) ever
hold up the heartbeats?

For each ``[balancer]`` kind in turn, the real pair runs in a namespace lab at 20 ms x 3 with
backends r1 and r2 behind a fast HTTP check; for ``--seconds`` (default 60) backend r1 flaps
twice a second (an nftables reject on its port 80, in its own namespace: it leaves and re-enters
the pool) while both nodes get a ``reload`` every 0.5 s that changes r2's weight (a new pool, so
the data plane really reloads). Printed per kind:

- role changes in that time (both nodes; target 0),
- the MASTER's longest gap between heartbeats as the BACKUP's namespace receives them (kernel
  timestamps on a packet socket; target at most 2 intervals),
- the MASTER's worst loop lateness over the last minute, and the worst part of a lateness that
  was not spent waiting for a CPU since its start ("blocked": the daemon's own doing), from
  ``hapair status`` ("n/a" on a daemon that does not measure it).

Kind ``none`` (not in the default list) runs the same pair and churn without a balancer: the
host's noise floor, to tell a loaded machine from a loop that blocks. ``--rt`` runs the loops
under SCHED_RR (``runtime.realtime_priority = 10``; off by default).

    sudo .venv/bin/python bench/churn.py [--seconds 60] [--kinds nat,dr,none] [--rt] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hapair.config import load_config
from hapair.errors import HapairError
from hapair.lab.addresses import LAN4, VIP4
from hapair.lab.nodes import Timers
from hapair.lab.shell import LabError, wait_until
from hapair.lab.topology import Lab
from hapair.ops.control_client import request

TIMERS: Final = Timers(interval=0.02, dead_after=3)
PROBE_INTERVAL: Final = 0.2
FLAP_PERIOD: Final = 0.5  # down for half of it, up for the other half: twice a second
RELOAD_PERIOD: Final = 0.5
TABLE: Final = "lochurn"
#: --rt: the loop threads under SCHED_RR (runtime.realtime_priority; off by default).
RT: Final = "realtime_priority = 10"

KINDS: Final = {
    "nat": ("nat", "masquerade = true\n", 8080),
    "dr": ("dr", "", 80),
    "proxy-nginx": ("proxy", '[balancer.proxy]\nengine = "nginx"\n', 8080),
    "proxy-haproxy": ("proxy", '[balancer.proxy]\nengine = "haproxy"\n', 8080),
    "redirect": ("redirect", "", 8080),
    "dns": ("dns", '[balancer.dns]\nnames = ["www.example.com"]\nttl = "1s"\n', 53),
    # No balancer at all, the same reloads (of an unchanged file) and flaps: the host's noise
    # floor, what the same pair shows when nothing in it blocks.
    "none": ("none", "", 0),
}

# Runs in the BACKUP's namespace: kernel receive times of every UDP datagram to port 694 from
# the MASTER's addresses (any link), for SECONDS; prints the count and the longest gap.
SNIFF = r"""
import json, socket, struct, sys, time
seconds, sources = float(sys.argv[1]), {socket.inet_aton(a) for a in sys.argv[2:]}
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
s.settimeout(0.2)
end, stamps = time.monotonic() + seconds, []
while time.monotonic() < end:
    try:
        data, anc, _, _ = s.recvmsg(256, 64)
    except TimeoutError:
        continue
    if len(data) < 28 or data[9] != 17 or data[12:16] not in sources:
        continue
    ihl = (data[0] & 0x0F) * 4
    if struct.unpack_from("!H", data, ihl + 2)[0] != 694:
        continue
    for level, kind, value in anc:
        if kind == 35 and len(value) >= 16:
            sec, nsec = struct.unpack_from("qq", value)
            stamps.append(sec + nsec / 1e9)
stamps.sort()
gaps = [b - a for a, b in zip(stamps, stamps[1:])]
print(json.dumps({"packets": len(stamps), "max_gap": max(gaps) if gaps else None}))
"""


@dataclass
class Result:
    """One kind's figures."""

    kind: str
    role_changes: int
    max_gap_ms: float | None
    lateness_ms: float | None
    blocked_ms: float | None
    reloads: int
    refused: int
    flaps: int

    def row(self) -> str:
        gap = "n/a" if self.max_gap_ms is None else f"{self.max_gap_ms:.1f}"
        late = "n/a" if self.lateness_ms is None else f"{self.lateness_ms:.1f}"
        blocked = "n/a" if self.blocked_ms is None else f"{self.blocked_ms:.1f}"
        ok = self.role_changes == 0 and self.max_gap_ms is not None
        ok = ok and self.max_gap_ms <= 2 * TIMERS.interval * 1000  # type: ignore[operator]
        return (
            f"{self.kind:<14} {self.role_changes:>6} {gap:>12} {late:>12} {blocked:>10}"
            f" {self.reloads:>8}"
            f" {self.refused:>8} {self.flaps:>6}  {'ok' if ok else 'MISSED'}"
        )


def balancer_toml(kind: str, r2_weight: int) -> str:
    engine_kind, table, port = KINDS[kind]
    if engine_kind == "none":
        return ""
    return f"""
[balancer]
kind = "{engine_kind}"
scheduler = "weighted"
listen = "{VIP4}:{port}"
{table}
[balancer.check]
kind = "http"
path = "/"
interval = "{int(PROBE_INTERVAL * 1000)}ms"
timeout = "150ms"
rise = 1
fall = 1

[[balancer.backend]]
address = "{LAN4["r1"]}:80"
weight = 2

[[balancer.backend]]
address = "{LAN4["r2"]}:80"
weight = {r2_weight}
"""


def write_configs(lab: Lab, kind: str, r2_weight: int, rt: bool = False) -> None:
    for node in ("a", "b"):
        path = lab.hapair.config_path(node)
        base = path.read_text().split("\n[balancer]")[0]
        if rt and RT not in base:
            base = base.replace("\n\n[log]\n", f"\n{RT}\n\n[log]\n", 1)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(base + balancer_toml(kind, r2_weight))
        os.replace(tmp, path)


def control(lab: Lab, node: str, cmd: str, timeout: float = 10.0) -> dict[str, Any]:
    """One control-socket request (the socket is a path: no namespace needed)."""
    cfg = load_config(str(lab.hapair.config_path(node)))
    try:
        return request(cfg.control_socket_path, {"cmd": cmd}, timeout=timeout)
    except (HapairError, OSError, ValueError) as exc:
        return {"ok": False, "error": str(exc)}


def pool_ready(lab: Lab) -> bool:
    for node in ("a", "b"):
        b = control(lab, node, "status").get("status", {}).get("balancer")
        if not isinstance(b, dict):
            return False
        backends = b.get("backends", {})
        if len(backends) != 2 or not all(x.get("up") for x in backends.values()):
            return False
        if b.get("plane", {}).get("unresolved"):
            return False
    return True


def flap(lab: Lab, down: bool) -> None:
    """Reject (or admit again) r1's port 80 inside r1."""
    if down:
        lab.exec("r1", ["nft", "add", "rule", "inet", TABLE, "input", "tcp", "dport", "80",
                        "reject", "with", "tcp", "reset"])  # fmt: skip
    else:
        lab.exec("r1", ["nft", "flush", "chain", "inet", TABLE, "input"])


def worst_lateness(status: dict[str, Any], key: str) -> float | None:
    loop = status.get("status", {}).get("loop")
    if not isinstance(loop, dict):
        return None
    worst = loop.get(key)
    return None if worst is None else float(worst) * 1000


def run_kind(
    kind: str,
    seconds: float,
    index: int,
    keep: Path | None = None,
    rt: bool = False,
    prefix: str = "lo",
) -> Result:
    lab = Lab(f"{prefix}{index}", timers=TIMERS)
    lab.up()
    try:
        engine_kind = KINDS[kind][0]
        for node in ("a", "b"):
            lab.exec(node, ["sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1"])
            if engine_kind == "nat":
                lab.exec(node, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        if engine_kind == "dr":
            for host in ("r1", "r2"):
                lab.python(host, ["-m", "hapair", "realserver", "up", VIP4])
                argv = [sys.executable, "-m", "hapair.lab.service", "--name", host, "--vip", VIP4]
                lab.spawn(f"service-{host}-vip", host, argv, stdout=subprocess.DEVNULL)
        lab.exec("r1", ["nft", "add", "table", "inet", TABLE])
        lab.exec("r1", ["nft", "add", "chain", "inet", TABLE, "input",
                        "{ type filter hook input priority 0; }"])  # fmt: skip
        write_configs(lab, kind, 1, rt)
        lab.hapair.start("a")
        lab.hapair.start("b")
        if not wait_until(lambda: lab.vip_holders() == ["a"], timeout=15):
            raise LabError(f"{kind}: a never became the only VIP holder")
        if engine_kind != "none" and not wait_until(lambda: pool_ready(lab), timeout=15):
            raise LabError(f"{kind}: the pool never became ready on both nodes")
        time.sleep(1.0)  # the start-up's last reloads settle
        t0 = time.time()
        sniffer = lab.spawn(
            "sniff", "b", [sys.executable, "-c", SNIFF, str(seconds), *lab.peer_addresses("a")],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(0.3)  # the sniffer's socket is open
        counts = {"reloads": 0, "refused": 0, "flaps": 0}
        stop = threading.Event()

        def reloader() -> None:
            weight = 1
            nxt = time.monotonic()
            while not stop.is_set():
                weight = 3 - weight
                write_configs(lab, kind, weight, rt)
                for node in ("a", "b"):
                    reply = control(lab, node, "reload")
                    counts["reloads"] += 1
                    counts["refused"] += not reply.get("ok")
                nxt += RELOAD_PERIOD
                stop.wait(max(0.0, nxt - time.monotonic()))

        thread = threading.Thread(target=reloader, daemon=True)
        thread.start()
        end = time.monotonic() + seconds
        down = False
        nxt = time.monotonic()
        while time.monotonic() < end:
            down = not down
            flap(lab, down)
            counts["flaps"] += down
            nxt += FLAP_PERIOD / 2
            time.sleep(max(0.0, nxt - time.monotonic()))
        stop.set()
        thread.join(timeout=15)
        flap(lab, False)
        out, _ = sniffer.popen.communicate(timeout=seconds + 10)
        sniffed = json.loads(out.decode().strip().splitlines()[-1])
        changes = [e for e in lab.hapair.events() if e.name == "role_changed" and t0 <= e.ts]
        status = control(lab, "a", "status")
        late = worst_lateness(status, "worst_lateness_last_minute")
        blocked = worst_lateness(status, "worst_blocked_since_start")
        gap = sniffed.get("max_gap")
        return Result(
            kind, len(changes), None if gap is None else gap * 1000, late, blocked,
            counts["reloads"], counts["refused"], counts["flaps"],
        )  # fmt: skip
    finally:
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for node in ("a", "b"):
                log = lab.hapair.log_path(node)
                if log.exists():
                    shutil.copy(log, keep / f"{kind}-{node}.log")
        lab.down()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--kinds",
        default=",".join(k for k in KINDS if k != "none"),
        help="comma-separated; 'none' is the pair without a balancer (the host's noise floor)",
    )
    parser.add_argument("--prefix", default="lo", help="the labs' name prefix (+ the kind's index)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep-logs", type=Path, help="copy the daemons' logs here")
    parser.add_argument(
        "--rt",
        action="store_true",
        help="runtime.realtime_priority = 10: the loop threads under SCHED_RR",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/churn.py needs root (network namespaces)", file=sys.stderr)
        return 2
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        print(f"unknown kinds {unknown}; choose from {', '.join(KINDS)}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    results = []
    print(
        f"balancer churn: {args.seconds:g} s at {TIMERS.interval * 1000:g} ms x "
        f"{TIMERS.dead_after}; r1 flaps every {FLAP_PERIOD:g} s, reload every {RELOAD_PERIOD:g} s;"
        f" target 0 role changes, gap <= {2 * TIMERS.interval * 1000:g} ms"
        + ("; loop threads SCHED_RR" if args.rt else "")
    )
    print(
        f"{'kind':<14} {'roles':>6} {'max gap ms':>12} {'late ms':>12} {'blocked ms':>10}"
        f" {'reloads':>8}"
        f" {'refused':>8} {'flaps':>6}"
    )
    for i, kind in enumerate(kinds):
        try:
            result = run_kind(kind, args.seconds, i, args.keep_logs, args.rt, args.prefix)
        except LabError as exc:
            print(f"{kind:<14} lab failed: {exc}")
            continue
        results.append(result)
        print(result.row(), flush=True)
    if args.json:
        print(json.dumps([r.__dict__ for r in results]))
    return 0 if results else 1


if __name__ == "__main__":
    raise SystemExit(main())
