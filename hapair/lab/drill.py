"""Failure drills: inject a fault at T0, time the recovery as a client sees it.

Each drill waits for one stable master, starts the client probe, injects the fault, waits
(bounded) until the survivor is MASTER, holds the VIP and answers the client, then builds a
timeline relative to T0 and restores the testbed so the drill can run again. The same code
drills the namespace lab and the compose lab in Docker: each is a `Testbed`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Final

from hapair.lab import shell
from hapair.lab.addresses import NODES
from hapair.lab.client import ProbeRun
from hapair.lab.events import Event, dual_master_spans
from hapair.lab.nodes import PEER, Pair
from hapair.lab.probe import (
    Sample,
    client_outage,
    first_answer_from,
    lost_count,
    split_brain_time,
)
from hapair.lab.shell import LabError
from hapair.lab.testbed import Testbed

SCENARIOS: Final = ("crash", "kill", "pause", "linkdown", "handover", "sigterm", "partition")
DESCRIPTIONS: Final = {
    "crash": "the master's host dies: every process killed, links cut",
    "kill": "SIGKILL only the master's daemon (host alive, stale VIP), then ExecStopPost release",
    "pause": "the master's host hangs: every process frozen, its kernel still answers ARP",
    "linkdown": "the master's LAN link loses carrier",
    "handover": "planned switchover: hapair handover on the master",
    "sigterm": "SIGTERM the master's daemon: graceful resign",
    "partition": "blackhole A<->B on both links (both MASTER), hold, then heal",
}
# Which log events make it into the timeline (first per node and kind).
TIMELINE_EVENTS: Final = (
    "peer_lost",
    "role_changed",
    "vip_acquired",
    "vip_released",
    "garp_sent",
    "split_brain",
    "vip_conflict",
    "peer_found",
    "daemon_stopped",
)


@dataclass(frozen=True)
class DrillOptions:
    """Bounds and knobs of one drill run."""

    recover_timeout: float = 20.0
    stable_timeout: float = 30.0
    partition_hold: float | None = None
    release_delay: float = 0.0
    tail: float = 0.5
    restore: bool = True


@dataclass(frozen=True)
class Mark:
    """One timeline entry: milliseconds after T0, what happened, on which node."""

    at_ms: float
    label: str
    node: str = ""


@dataclass
class DrillResult:
    """Everything one drill run measured."""

    scenario: str
    implementation: str
    interval_ms: float
    dead_after: int
    old_master: str
    testbed: str = "netns"
    new_master: str | None = None
    recovered: bool = False
    skipped: bool = False
    outage_ms: float = 0.0
    lost: int = 0
    probes: int = 0
    split_brain_ms: float = 0.0
    dual_master_ms: float = 0.0
    stale_vip_ms: float | None = None
    heal_to_one_master_ms: float | None = None
    heal_to_answer_ms: float | None = None
    timeline: list[Mark] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return asdict(self)


def wait_stable_master(bed: Testbed, pair: Pair, *, timeout: float, settle: float) -> str:
    """Return the node that is sole MASTER, sole VIP holder, unchanged for `settle` seconds."""
    seen: dict[str, float] = {}

    def stable() -> str | None:
        roles = {n: pair.role(n) for n in NODES}
        masters = [n for n, r in roles.items() if r == "MASTER"]
        ok = len(masters) == 1 and bed.vip_holders() == masters
        ok = ok and all(roles[n] == "BACKUP" for n in NODES if n not in masters)
        if not ok:
            seen.clear()
            return None
        since = seen.setdefault(masters[0], time.monotonic())
        return masters[0] if time.monotonic() - since >= settle else None

    master = shell.wait_until(stable, timeout=timeout, step=0.05)
    if master is None:
        roles = {n: pair.role(n) for n in NODES}
        raise LabError(
            f"no stable master within {timeout:.0f}s: roles {roles}, VIP on {bed.vip_holders()}"
        )
    return master


class Drill:
    """One run of one scenario against one implementation."""

    def __init__(self, bed: Testbed, pair: Pair, scenario: str, options: DrillOptions) -> None:
        if scenario not in SCENARIOS:
            raise LabError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
        self.bed, self.pair, self.scenario, self.opt = bed, pair, scenario, options
        self.settle = max(3 * pair.timers.interval, 0.3)
        self.master = wait_stable_master(
            bed, pair, timeout=options.stable_timeout, settle=self.settle
        )
        # A frozen node has no say: whatever its log last said, it is no one's MASTER.
        self.frozen: set[str] = set()
        self.survivor = PEER[self.master]
        self.t0 = 0.0
        self.heal_at: float | None = None
        self.marks: list[Mark] = []
        # A SIGKILLed daemon logs nothing; its death still ends its claim to be MASTER.
        self.synthetic: list[Event] = []
        self.result = DrillResult(
            scenario,
            pair.label,
            pair.timers.interval * 1000,
            pair.timers.dead_after,
            self.master,
            testbed=bed.kind,
        )

    def ms(self, ts: float) -> float:
        """Return `ts` as milliseconds after T0."""
        return round((ts - self.t0) * 1000, 1)

    def mark(self, ts: float, label: str, node: str = "") -> None:
        """Add a timeline entry at wall-clock `ts`."""
        self.marks.append(Mark(self.ms(ts), label, node))

    def run(self) -> DrillResult:
        """Inject, wait for recovery, measure, restore; return the result."""
        probe = self.bed.start_probe()
        try:
            winner = self._inject_and_wait(probe)
        except BaseException:
            # Leave the lab usable for the next run even when this one blew up.
            with contextlib.suppress(Exception):
                probe.stop()
            if self.t0 and self.opt.restore:
                with contextlib.suppress(Exception):
                    self._restore()
            raise
        samples = probe.stop()
        if self.result.skipped:
            return self.result
        self._measure(samples, winner, time.time())
        if self.opt.restore:
            self._restore()
        return self.result

    def _inject_and_wait(self, probe: ProbeRun) -> str | None:
        # Let the client see the current master before the fault, so loss is the fault's.
        if not shell.wait_until(
            lambda: probe.answered_by(self.master, after=0.0), timeout=5.0, step=0.02
        ):
            raise LabError(f"client gets no answer from master {self.master} before the fault")
        time.sleep(0.2)
        self.t0 = time.time()
        self.mark(self.t0, f"fault: {DESCRIPTIONS[self.scenario]}", self.master)
        if not INJECT[self.scenario](self, probe):
            self.result.skipped = True
            return None
        winner = self._await_recovery(probe)
        time.sleep(self.opt.tail)
        return winner

    def _restore(self) -> None:
        RESTORE.get(self.scenario, _no_restore)(self)
        wait_stable_master(self.bed, self.pair, timeout=self.opt.stable_timeout, settle=self.settle)

    def role(self, node: str) -> str | None:
        """Return `node`'s role, None while it is frozen."""
        return None if node in self.frozen else self.pair.role(node)

    def _await_recovery(self, probe: ProbeRun) -> str | None:
        since = self.heal_at if self.heal_at is not None else self.t0
        expected = None if self.scenario == "partition" else self.survivor

        def recovered() -> str | None:
            roles = {n: self.role(n) for n in NODES}
            masters = [n for n, r in roles.items() if r == "MASTER"]
            if len(masters) != 1 or (expected is not None and masters != [expected]):
                return None
            node = masters[0]
            if self.bed.vip_holders() != [node] and not (
                # A dead, cut-off or frozen old master keeps its stale VIP; the survivor counts.
                self.scenario in ("crash", "linkdown", "pause") and self.bed.has_vip(node)
            ):
                return None
            return node if probe.answered_by(node, after=since) else None

        timeout = self.opt.recover_timeout + self.pair.timers.dead_time
        winner = shell.wait_until(recovered, timeout=timeout, step=0.02)
        self.result.recovered = winner is not None
        self.result.new_master = winner
        if winner is None:
            roles = {n: self.role(n) for n in NODES}
            self.result.notes.append(
                f"not recovered within {timeout:.1f}s: roles {roles}, "
                f"VIP on {self.bed.vip_holders()}"
            )
        return winner

    def _measure(self, samples: list[Sample], winner: str | None, t_end: float) -> None:
        r = self.result
        every = sorted([*self.pair.events(), *self.synthetic], key=lambda e: e.ts)
        events = [e for e in every if self.t0 - 0.01 <= e.ts <= t_end]
        self._timeline_events(events)
        outage = client_outage(samples, fault=self.t0)
        after = [s for s in samples if s.sent >= self.t0]
        r.probes = len(after)
        r.lost = lost_count(samples, after=self.t0)
        if outage is not None:
            r.outage_ms = round(outage.duration * 1000, 1)
            self.mark(outage.start, f"first probe lost ({outage.lost} lost in a row)")
            if not outage.recovered:
                r.notes.append("the client was still not answered when the probe stopped")
        r.split_brain_ms = round(split_brain_time(after) * 1000, 1)
        # Roles before T0 matter (the old master was MASTER already), so replay the whole log.
        spans = dual_master_spans(every, NODES)
        clipped = [(max(s, self.t0), min(e, t_end)) for s, e in spans]
        r.dual_master_ms = round(sum(max(0.0, e - s) for s, e in clipped) * 1000, 1)
        since = self.heal_at if self.heal_at is not None else self.t0
        if winner is not None:
            hit = first_answer_from(samples, winner, after=since)
            if hit is not None and hit.answered is not None:
                self.mark(hit.answered, "client answered by the new master", winner)
                if self.heal_at is not None:
                    r.heal_to_answer_ms = round((hit.answered - self.heal_at) * 1000, 1)
        if self.heal_at is not None:
            one = _one_master_at(every, self.heal_at)
            if one is not None:
                r.heal_to_one_master_ms = round((one - self.heal_at) * 1000, 1)
                self.mark(one, "one master again")
        r.timeline = sorted(self.marks, key=lambda m: m.at_ms)

    def _timeline_events(self, events: list[Event]) -> None:
        seen: set[tuple[str, str, str, bool]] = set()
        for ev in events:
            if ev.name not in TIMELINE_EVENTS:
                continue
            phase = self.heal_at is not None and ev.ts >= self.heal_at
            kind = ev.get("to_role") or ev.get("burst") or ev.get("vip")
            key = (ev.node, ev.name, kind, phase)
            if key in seen:
                continue
            seen.add(key)
            self.mark(ev.ts, _describe(ev), ev.node)


def _describe(ev: Event) -> str:
    if ev.name == "role_changed":
        text = f"role {ev.get('from_role') or '?'} -> {ev.get('to_role')}"
        return text + (f" ({ev.get('reason')})" if ev.get("reason") else "")
    if ev.name == "garp_sent":
        burst, frames, rounds = ev.get("burst"), ev.get("frames_per_round"), ev.get("rounds")
        return (
            "gratuitous ARP"
            + (f" {burst} burst" if burst else "")
            + (f", {rounds} x {frames} frames" if frames and rounds else "")
        )
    if ev.name == "daemon_stopped" and ev.get("reason"):
        return f"daemon stopped ({ev.get('reason')})"
    detail = ev.get("peer") or ev.get("vip")
    return ev.name + (f" {detail}" if detail else "")


def _one_master_at(events: list[Event], since: float) -> float | None:
    roles: dict[str, str] = {}
    for ev in events:
        if ev.name == "role_changed":
            roles[ev.node] = ev.get("to_role").upper()
        if ev.ts >= since and sorted(roles.values()) == ["BACKUP", "MASTER"]:
            return ev.ts
    return None


# ---------------------------------------------------------------- scenarios ----------------


def _killed(d: Drill) -> None:
    at = time.time()
    d.pair.kill(d.master)
    d.synthetic.append(Event(d.master, at, "daemon_stopped", {"reason": "SIGKILL"}))


def _crash(d: Drill, probe: ProbeRun) -> bool:
    at = d.bed.crash(d.master)
    d.synthetic.append(Event(d.master, at, "daemon_stopped", {"reason": "SIGKILL"}))
    return True


def _kill(d: Drill, probe: ProbeRun) -> bool:
    _killed(d)
    if d.opt.release_delay:
        time.sleep(d.opt.release_delay)
    done = d.pair.release(d.master)
    d.result.stale_vip_ms = d.ms(done)
    d.mark(done, "ExecStopPost release done: stale VIP gone", d.master)
    return True


def _pause(d: Drill, probe: ProbeRun) -> bool:
    at = time.time()
    if not d.bed.pause(d.master):
        d.result.notes.append(f"nothing to freeze on {d.master}")
        return False
    d.frozen.add(d.master)
    # Frozen, it claims nothing: its log's MASTER must not count as a dual master.
    d.synthetic.append(Event(d.master, at, "daemon_stopped", {"reason": "frozen"}))
    return True


def _linkdown(d: Drill, probe: ProbeRun) -> bool:
    d.bed.set_link(d.master, up=False)
    return True


def _handover(d: Drill, probe: ProbeRun) -> bool:
    ok = d.pair.handover(d.master)
    if ok is None:
        d.result.notes.append(f"{d.pair.label} has no planned handover")
        return False
    d.mark(time.time(), "handover command returned" + ("" if ok else " (FAILED)"), d.master)
    return True


def _sigterm(d: Drill, probe: ProbeRun) -> bool:
    d.pair.terminate(d.master)
    d.mark(time.time(), "daemon exited after SIGTERM", d.master)
    return True


def _partition(d: Drill, probe: ProbeRun) -> bool:
    d.bed.partition()
    timers = d.pair.timers
    both = shell.wait_until(
        lambda: all(d.pair.role(n) == "MASTER" for n in NODES),
        timeout=timers.dead_time * 3 + 10.0,
        step=0.02,
    )
    if not both:
        d.result.notes.append("partition did not make both nodes MASTER")
    hold = d.opt.partition_hold or max(5 * timers.interval, 0.5)
    time.sleep(hold)
    d.heal_at = time.time()
    d.bed.partition(heal=True)
    d.mark(d.heal_at, "partition healed")
    return True


def _no_restore(d: Drill) -> None:
    pass


def _restore_crash(d: Drill) -> None:
    d.bed.recover(d.master)


def _restore_pause(d: Drill) -> None:
    d.bed.pause(d.master, resume=True)
    d.frozen.discard(d.master)


def _restore_restart(d: Drill) -> None:
    d.pair.start(d.master)


def _restore_link(d: Drill) -> None:
    d.bed.set_link(d.master, up=True)


def _restore_partition(d: Drill) -> None:
    # Normally healed already; healing twice is a no-op.
    d.bed.partition(heal=True)


INJECT: Final[dict[str, Callable[[Drill, ProbeRun], bool]]] = {
    "crash": _crash,
    "kill": _kill,
    "pause": _pause,
    "linkdown": _linkdown,
    "handover": _handover,
    "sigterm": _sigterm,
    "partition": _partition,
}
RESTORE: Final[dict[str, Callable[[Drill], None]]] = {
    "crash": _restore_crash,
    "kill": _restore_restart,
    "pause": _restore_pause,
    "sigterm": _restore_restart,
    "linkdown": _restore_link,
    "partition": _restore_partition,
}


def run_drill(
    bed: Testbed, pair: Pair, scenario: str, options: DrillOptions | None = None
) -> DrillResult:
    """Run `scenario` once on `bed` with `pair` (both daemons running); return what it measured."""
    return Drill(bed, pair, scenario, options or DrillOptions()).run()


def format_result(r: DrillResult) -> str:
    """Return a readable timeline and figures for one drill run."""
    head = (
        f"drill {r.scenario} ({r.implementation} on {r.testbed}, interval {r.interval_ms:g}ms, "
        f"dead_after {r.dead_after}): master {r.old_master} -> {r.new_master or '?'}"
    )
    if r.skipped:
        return head + ": skipped; " + "; ".join(r.notes)
    lines = [head + ("" if r.recovered else "  NOT RECOVERED")]
    lines += [f"  {m.at_ms:9.1f} ms  {m.node or '-':2}  {m.label}" for m in r.timeline]
    figures = (
        f"  outage {r.outage_ms:.0f} ms, {r.lost} of {r.probes} probes lost, "
        f"split brain (client) {r.split_brain_ms:.0f} ms, dual master {r.dual_master_ms:.0f} ms"
    )
    lines.append(figures)
    if r.stale_vip_ms is not None:
        lines.append(f"  stale VIP on the killed node for {r.stale_vip_ms:.0f} ms")
    if r.heal_to_one_master_ms is not None or r.heal_to_answer_ms is not None:
        lines.append(
            f"  after heal: one master in {r.heal_to_one_master_ms} ms, "
            f"client answered by it in {r.heal_to_answer_ms} ms"
        )
    lines += [f"  note: {n}" for n in r.notes]
    return "\n".join(lines)
