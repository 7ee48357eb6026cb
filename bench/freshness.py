"""Freshness benchmark (protocol v2): how fast a restarted node is accepted, and whether any
replayed heartbeat ever is.

In the namespace lab, with the real daemons:

1. restarts each node N times with its state kept and N times with its state dir emptied, and
   prints the delay from the restarted daemon's ``daemon_started`` to its peer's
   ``peer_run_accepted`` (both from the daemons' logs), in intervals and ms;
2. records node a's heartbeats off the switch across several of its runs, kills a, and replays
   the recording from a's own namespace (its address and port) to both of b's addresses, in
   batches separated by restarts of b (state kept, state wiped), until at least --replays
   datagrams are sent; prints how many b accepted (a replay accepted would refresh b's
   ``last_heard`` of a, or log a ``peer_run_accepted`` for a) and how b counted the rest.

A state file edited to a far-future or far-past value is moot in version 2: no field of the
state file, and no clock, enters freshness. The bench says so rather than measure it.

    sudo .venv/bin/python bench/freshness.py [--restarts 5] [--replays 10000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hapair.lab.nodes import Timers
from hapair.lab.replay import (
    record_heartbeats,
    replay_heartbeats,
    restart_accept_delay,
    start_recording,
)
from hapair.lab.shell import LabError, wait_until
from hapair.lab.topology import Lab


def _role(lab: Lab, node: str) -> str | None:
    status = lab.hapair.status(node)
    return None if status is None else str(status["role"])


def _settled(lab: Lab) -> None:
    ok = wait_until(
        lambda: lab.vip_holders() == ["a"] and _role(lab, "b") == "BACKUP", timeout=15, step=0.02
    )
    if not ok:
        raise LabError("the pair did not settle (a MASTER, b BACKUP)")


def _rejected(lab: Lab, node: str) -> dict[str, int]:
    status = lab.hapair.status(node)
    if status is None:
        return {}
    return {str(k): int(v) for k, v in dict(status["rejected"]).items()}  # type: ignore[call-overload]


def _heard_a_since(lab: Lab, since: float) -> bool:
    """Did b accept anything from a after `since` (wall clock)?"""
    asked = time.time()  # before the snapshot: it is taken after this, never before
    status = lab.hapair.status("b")
    if status is not None:
        for peer in status["peers"]:  # type: ignore[attr-defined]
            # Nothing accepted since `since` means last heard at or before it, so at least
            # asked - since ago (less a margin: a's last packet may be handled a little late).
            if peer["node"] == "a" and peer["last_heard_ago"] < asked - since - 0.05:
                return True
    runs = [
        e for e in lab.hapair.events()
        if e.node == "b" and e.name == "peer_run_accepted" and e.get("peer") == "a"
        and e.ts > since
    ]  # fmt: skip
    return bool(runs)


def delays(lab: Lab, restarts: int, interval: float) -> dict[str, Any]:
    """Restart each node `restarts` times per mode; acceptance delays in intervals."""
    out: dict[str, Any] = {}
    for node in ("b", "a"):
        for wipe in (False, True):
            got = []
            for _ in range(restarts):
                got.append(restart_accept_delay(lab, node, wipe=wipe) / interval)
                _settled(lab)
            label = f"restart {node} ({'state wiped' if wipe else 'state kept'})"
            out[label] = {
                "median": round(statistics.median(got), 3),
                "max": round(max(got), 3),
                "runs": len(got),
            }
    return out


def replays(lab: Lab, runs: int, wanted: int, dead_time: float) -> dict[str, Any]:
    """Record a over `runs` runs, kill it, replay in batches across restarts of b."""
    recording = lab.dir / "a.hex"
    start_recording(lab, "a", recording)
    for _ in range(runs - 1):
        time.sleep(0.5)
        restart_accept_delay(lab, "a", wipe=True)
        _settled(lab)
    time.sleep(0.5)
    lab.stop("recorder-a")
    record_heartbeats(lab, "a", recording, 0.5)  # flush: the newest packets of the last run
    recorded = len(recording.read_text().split())
    lab.hapair.kill("a")
    dead = time.time()
    lab.remove_vips("a")
    sent = accepted = 0
    rejected: dict[str, int] = {}
    batch = 0
    while sent < wanted and batch < 20:
        if batch:  # b restarts between batches: kept state, then wiped, alternately
            restart_b(lab, wipe=batch % 2 == 0)
        since = time.time() if batch else dead
        before = _rejected(lab, "b")
        n = replay_heartbeats(lab, "a", recording, max(1.0, 4 * dead_time))
        after = _rejected(lab, "b")
        sent += n
        accepted += int(_heard_a_since(lab, since))
        for k, v in after.items():
            rejected[k] = rejected.get(k, 0) + v - before.get(k, 0)
        batch += 1
    master = wait_until(lambda: _role(lab, "b") == "MASTER", timeout=5, step=0.02)
    return {
        "recorded heartbeats (runs of a)": f"{recorded} ({runs})",
        "replayed datagrams": sent,
        "batches (b restarted between)": batch,
        "batches with any replay accepted": accepted,
        "b's rejections by reason": dict(sorted(rejected.items())),
        "b MASTER at the end": bool(master),
    }


def restart_b(lab: Lab, *, wipe: bool) -> None:
    """Restart b with a dead (no peer to accept it); wait until it is MASTER again."""
    lab.hapair.kill("b")
    if wipe:
        for path in (lab.dir / "b").iterdir():
            if path.is_file() or path.is_socket():
                path.unlink()
    lab.remove_vips("b")
    lab.hapair.start("b")
    if not wait_until(lambda: _role(lab, "b") == "MASTER", timeout=10, step=0.02):
        raise LabError("b did not become MASTER alone")


def main() -> int:
    """Run both parts and print the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--restarts", type=int, default=5, help="restarts per node and mode")
    p.add_argument("--replays", type=int, default=10_000, help="least replayed datagrams")
    p.add_argument("--runs", type=int, default=4, help="runs of a in the recording")
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--dead-after", type=int, default=4)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench/freshness.py needs root (network namespaces)", file=sys.stderr)
        return 2
    timers = Timers(interval=args.interval, dead_after=args.dead_after)
    try:
        with Lab(f"v2rb{os.getpid() % 1000}", timers=timers) as lab:
            lab.hapair.start("a")
            lab.hapair.start("b")
            _settled(lab)
            report = {
                "timers": f"{args.interval * 1000:.0f} ms x {args.dead_after}",
                "new-run acceptance delay, in intervals": delays(lab, args.restarts, args.interval),
                "state file edited to a far-future/past value": (
                    "moot: v2 freshness reads no clock and no state file"
                ),
                "replay": replays(lab, args.runs, args.replays, timers.dead_time),
            }
    except (LabError, OSError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"freshness bench, protocol v2, {report['timers']}")
    print("new-run acceptance delay (daemon_started -> peer_run_accepted), in intervals:")
    for label, fig in report["new-run acceptance delay, in intervals"].items():
        print(
            f"  {label:32} median {fig['median']:6.3f}  max {fig['max']:6.3f}  ({fig['runs']} runs)"
        )
    print(f"state file far-future/past: {report['state file edited to a far-future/past value']}")
    print("replay of recorded heartbeats after the sender died:")
    for label, value in report["replay"].items():
        print(f"  {label}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
