"""Run a chaos schedule on the namespace lab and collect what the invariants are checked on.

The runner waits for one stable master, starts the client probe (`hapair.lab.client`, a UDP
datagram to VIP:7 every 10 ms) and one ``ip monitor address`` per node (VIP changes, stamped on
arrival), then plays the schedule: a quiet gap, inject, hold, heal, next. Between actions it
watches the daemons; one that exits unasked is a crash, and it is started again (as systemd's
Restart= would) so the drill goes on. At the end the daemon logs, the synthetic events (a
SIGKILLed daemon logs nothing) and the samples go to the pure checker (`hapair.lab.chaoscheck`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from hapair.lab import shell
from hapair.lab.addresses import VIP4
from hapair.lab.chaos import DISRUPTIVE, Fault
from hapair.lab.chaoscheck import (
    Bounds,
    CrashObs,
    FaultWindow,
    Verdict,
    VipObs,
    check,
    roles_from_events,
    tracebacks,
)
from hapair.lab.chaosfaults import INJECT
from hapair.lab.client import ProbeRun
from hapair.lab.drill import wait_stable_master
from hapair.lab.events import Event
from hapair.lab.nodes import PEER, checked_pool
from hapair.lab.probe import Sample
from hapair.lab.shell import LabError
from hapair.lab.testbed import NetnsBed

if TYPE_CHECKING:
    from hapair.lab.topology import Lab

WATCH_STEP: Final = 0.02
#: The chaos flood's rate: twice the issue's attack (about 250,000/s reproduced the false
#: failovers; the flood bench's figure is at least that). Flat out (2.2 million/s here) the
#: flood's softirq work and its sender take both of the VM's cores, which then measures the
#: VM: the probe, the VIP monitors and both daemons wait for a CPU (bench/flood.py measures
#: flat out on its own). None: flat out.
FLOOD_RATE: Final = 500_000.0
KEPT_SUFFIXES: Final = frozenset({".log", ".out", ".toml", ".json", ".jsonl"})
PROBE_ROTATE: Final = 100.0
# --balancer NAME: (kind, kind-specific [balancer] lines).
BALANCER_TABLES: Final = {
    "nat": ("nat", "masquerade = true\n"),
    "nginx": ("proxy", '[balancer.proxy]\nengine = "nginx"\n'),
    "haproxy": ("proxy", '[balancer.proxy]\nengine = "haproxy"\n'),
}
BALANCERS: Final = (*BALANCER_TABLES, "none")


@dataclass
class Executed:
    """A fault as it ran: seconds after the drill's T0, and what happened on the way."""

    fault: Fault
    start: float = 0.0
    heal: float = 0.0
    healed: float = 0.0
    skipped: bool = False
    notes: list[str] = field(default_factory=list)
    out: list[tuple[str, float, float]] = field(default_factory=list)


@dataclass
class ChaosResult:
    """One chaos run: settings, schedule, what ran, and the checker's verdict."""

    seed: int
    minutes: float
    interval: float
    dead_after: int
    tolerance: float
    balancer: str
    schedule: list[Fault]
    executed: list[Executed]
    verdict: Verdict
    t0: float
    duration: float
    notes: list[str] = field(default_factory=list)
    flood_rate: float | None = FLOOD_RATE

    @property
    def ok(self) -> bool:
        """Return whether no invariant was violated."""
        return not self.verdict.violations


def balancer_toml(kind: str) -> str:
    """The balancer both nodes run in a chaos drill: VIP:8080 to r1:80 and r2:80."""
    table = BALANCER_TABLES[kind]
    head = f'\n[balancer]\nkind = "{table[0]}"\nscheduler = "rr"\nlisten = "{VIP4}:8080"\n'
    return head + table[1] + checked_pool(0.2, 2)


def add_balancer(lab: Lab, kind: str) -> None:
    """Give both nodes the balancer `kind` (nat: forwarding on; engines: non-local binds)."""
    for node in PEER:
        if kind == "nat":
            lab.exec(node, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        else:
            # Hot engines bind the VIP before this node holds it.
            lab.exec(node, ["sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1"])
        cfg = lab.hapair.config_path(node)
        cfg.write_text(cfg.read_text(encoding="utf-8") + balancer_toml(kind), encoding="utf-8")


def parse_monitor_line(node: str, line: str, vip: str, arrived: float) -> VipObs | None:
    """Return the VIP change an ``ip -ts monitor address`` line reports (None: another one).

    The time is the one `ip` stamped when it read the kernel's message (local time, in µs),
    not when this process got round to the line: the two monitors' lines are read by two
    threads of a Python process that shares the cores with the pair, which skewed the spans
    of two holders by up to 2 ms each way. A line without a stamp is timed on arrival.
    """
    ts, text = arrived, line
    if line.startswith("[") and "]" in line:
        stamp, _, text = line[1:].partition("]")
        with contextlib.suppress(ValueError):
            ts = datetime.fromisoformat(stamp).timestamp()
        text = text.lstrip()
    if f" inet {vip}/" not in text or "eth0" not in text:
        return None
    return VipObs(ts, node, not text.startswith("Deleted"))


class VipMonitor:
    """``ip monitor address`` in each node: VIP appearances and removals, stamped on arrival."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.obs: list[VipObs] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the monitors, then take a snapshot (a change in between is seen twice)."""
        for node in PEER:
            proc = self.lab.spawn(
                f"chaos-vipmon-{node}", node, ["ip", "-ts", "monitor", "address"],
                stdout=subprocess.PIPE,
            )  # fmt: skip
            thread = threading.Thread(target=self._read, args=(node, proc.popen, VIP4))
            thread.daemon = True
            thread.start()
            self._threads.append(thread)
        time.sleep(0.2)
        for node in PEER:
            self.add(VipObs(time.time(), node, self.lab.has_vip(node)))

    def add(self, obs: VipObs) -> None:
        """Record one observation."""
        with self._lock:
            self.obs.append(obs)

    def _read(self, node: str, popen: subprocess.Popen[bytes], vip: str) -> None:
        stream = popen.stdout
        if stream is None:
            return
        for raw in iter(stream.readline, b""):
            obs = parse_monitor_line(node, raw.decode(errors="replace"), vip, time.time())
            if obs is not None:
                self.add(obs)

    def stop(self) -> list[VipObs]:
        """Stop the monitors; return every observation, in time order."""
        for node in PEER:
            self.lab.stop(f"chaos-vipmon-{node}", sig=signal.SIGTERM)
        for thread in self._threads:
            thread.join(timeout=2.0)
        with self._lock:
            return sorted(self.obs, key=lambda o: o.ts)


class ChaosRunner:
    """Play one schedule against the lab's hapair pair (both daemons already running)."""

    def __init__(
        self,
        lab: Lab,
        schedule: list[Fault],
        *,
        seed: int,
        minutes: float,
        bounds: Bounds,
        balancer: str,
        progress: bool = False,
        flood_rate: float | None = FLOOD_RATE,
    ) -> None:
        self.lab, self.pair = lab, lab.hapair
        self.bed = NetnsBed(lab, lab.hapair)
        self.schedule, self.seed, self.minutes = schedule, seed, minutes
        self.bounds, self.balancer, self.progress = bounds, balancer, progress
        self.flood_rate = flood_rate
        self.expected: set[str] = set(PEER)
        self.synthetic: list[Event] = []
        self.crashes: list[CrashObs] = []
        self.segments: list[list[Sample]] = []
        self.notes: list[str] = []
        self.t0 = 0.0
        self._probe: ProbeRun | None = None
        self._probe_since = 0.0
        self._reloads = 0

    # ---------------------------------------------------------------- the run -----------------

    def run(self) -> ChaosResult:
        """Play every fault that fits in the time budget; return the checked result."""
        timers = self.pair.timers
        settle = max(3 * timers.interval, 0.3)
        wait_stable_master(self.bed, self.pair, timeout=30.0, settle=settle)
        monitor = VipMonitor(self.lab)
        monitor.start()
        executed: list[Executed] = []
        try:
            self._rotate_probe()
            self.t0 = time.time()
            budget = self.t0 + self.minutes * 60.0
            for fault in self.schedule:
                self._watch(time.time() + fault.gap)
                if time.time() + fault.duration > budget:
                    skipped = len(self.schedule) - len(executed)
                    self.notes.append(f"time budget reached: {skipped} planned faults not run")
                    break
                executed.append(self._play(fault))
                if time.time() - self._probe_since > PROBE_ROTATE:
                    self._rotate_probe()
            self._watch(time.time() + max(2.0, 6 * timers.dead_time))
        finally:
            vips = monitor.stop()
            self._stop_probe()
        end = time.time()
        return self._judge(executed, vips, end)

    def _say(self, text: str) -> None:
        if self.progress:
            print(f"  {time.time() - self.t0:8.2f} s  {text}", file=sys.stderr, flush=True)

    def _play(self, fault: Fault) -> Executed:
        ex = Executed(fault)
        ex.start = time.time()
        self._say(f"fault {fault.index}: {fault.label} for {fault.duration:.2f} s")
        try:
            heal = INJECT[fault.kind](self, fault, ex)
        except (LabError, OSError) as exc:
            ex.notes.append(f"inject failed: {exc}")
            heal = None
        if heal is None:
            ex.skipped = True
            ex.heal = ex.healed = time.time()
            return ex
        self._watch(ex.start + fault.duration)
        ex.heal = time.time()
        try:
            heal()
        except (LabError, OSError) as exc:
            ex.notes.append(f"heal failed: {exc}")
        ex.healed = time.time()
        ex.out = [(n, a, ex.healed if b == 0.0 else b) for n, a, b in ex.out]
        return ex

    def _watch(self, until: float) -> None:
        """Sleep until `until`, noting (and restarting) any daemon that died unasked."""
        for _ in range(shell.MAX_POLLS):
            for node in sorted(self.expected):
                if not self.pair.running(node):
                    self._crashed(node)
            left = until - time.time()
            if left <= 0:
                return
            time.sleep(min(WATCH_STEP, left))

    def _crashed(self, node: str) -> None:
        now = time.time()
        proc = self.lab.procs.get(f"daemon-{node}")
        rc = proc.popen.returncode if proc is not None else None
        self.crashes.append(CrashObs(now, node, f"daemon exited unasked (status {rc})"))
        self.synthetic.append(Event(node, now, "daemon_stopped", {"reason": "crash"}))
        self._say(f"{node}: daemon exited unasked (status {rc}); starting it again")
        self.start_daemon(node)

    def start_daemon(self, node: str) -> None:
        """Start `node`'s daemon; a failed start is a crash (and the node stays down)."""
        try:
            self.pair.start(node)
            self.expected.add(node)
        except LabError as exc:
            self.crashes.append(CrashObs(time.time(), node, f"start failed: {exc}"[:300]))
            self.synthetic.append(Event(node, time.time(), "daemon_stopped", {"reason": "crash"}))
            self.expected.discard(node)

    def _rotate_probe(self) -> None:
        new = self.bed.start_probe()
        shell.wait_until(lambda: new.last_answer() is not None, timeout=5.0, step=0.02)
        self._stop_probe()
        self._probe, self._probe_since = new, time.time()

    def _stop_probe(self) -> None:
        if self._probe is not None:
            try:
                self.segments.append(self._probe.stop())
            except LabError as exc:
                self.notes.append(f"probe: {exc}")
            self._probe = None

    def _judge(self, executed: list[Executed], vips: list[VipObs], end: float) -> ChaosResult:
        # Kept with the logs (--keep-logs): the checker's VIP input, to replay a verdict.
        with (self.lab.dir / "chaos-vips.jsonl").open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(dataclasses.asdict(o)) + "\n" for o in vips)
        for node in PEER:
            text = self.pair.log_path(node).read_text(encoding="utf-8", errors="replace")
            self.crashes.extend(tracebacks(node, text))
        events = sorted([*self.pair.events(), *self.synthetic], key=lambda e: e.ts)
        windows = [
            FaultWindow(
                ex.fault.index,
                ex.fault.kind,
                ex.start,
                ex.heal,
                ex.fault.kind in DISRUPTIVE,
                tuple(ex.out),
                ex.healed,
            )
            for ex in executed
            if not ex.skipped
        ]
        verdict = check(
            roles=roles_from_events(events),
            vips=vips,
            probes=self.segments,
            crashes=self.crashes,
            faults=windows,
            bounds=self.bounds,
            start=self.t0,
            end=end,
        )
        timers = self.pair.timers
        return ChaosResult(
            self.seed,
            self.minutes,
            timers.interval,
            timers.dead_after,
            self.bounds.tolerance,
            self.balancer,
            self.schedule,
            executed,
            verdict,
            self.t0,
            end - self.t0,
            self.notes,
            self.flood_rate,
        )


def keep_logs(lab: Lab, dest: Path, report: dict[str, object]) -> list[Path]:
    """Copy the lab's logs, configurations and VIP observations to `dest`, with the JSON report.

    The lab's own directory goes with ``lab.down()``; a violation is explained by the daemon logs.
    """
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in sorted(lab.dir.iterdir()):
        if path.is_file() and path.suffix in KEPT_SUFFIXES:
            copied.append(Path(shutil.copy2(path, dest / path.name)))
    out = dest / "chaos-report.json"
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return [*copied, out]
