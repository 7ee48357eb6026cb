"""The chaos drill's invariants, checked over a whole run from timestamped observations (pure).

Inputs: each node's role as its log tells it, VIP presence as the namespaces show it, the client
probe's samples, daemon crashes, and the faults as executed (start, heal, and the windows in
which a node is *out*: dead, frozen, cut off, or killed with its stale VIP not yet released, so
that neither its role nor its VIP counts). The state is piecewise constant between
observations, so every span below is measured exactly between two observations.

Invariants (``tol`` is the stated tolerance, ``dead`` the dead time):
- one_master: after a fault heals, exactly one MASTER within dead + tol, and from the heal +
  dead + tol until the next fault no span without exactly one MASTER longer than tol;
- two_holders: never two VIP holders, except while a disruptive fault is active and for one
  interval + tol after it heals (spans under OVERLAP_SLACK are a make-before-break handover
  plus the monitors' skew: see there);
- client: after a fault heals, every client outage ends within dead + 50 ms of the later of the
  heal and the outage's own start (an answer slower than dead + 50 ms counts as lost);
- crash: no unexpected daemon exit and no traceback in a daemon log;
- vip_non_master: no node holds the VIP without being MASTER for longer than tol.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Final

from hapair.lab.events import Event, parse_json_line
from hapair.lab.probe import Outage, Sample, outages

INVARIANTS: Final = {
    "one_master": "after a fault heals: exactly one MASTER within dead time + tolerance, and after",
    "two_holders": "never two VIP holders once the link has been healthy for one interval",
    "client": "after a fault heals: the client is answered again within dead time + 50 ms",
    "crash": "no daemon crash (unexpected exit, or a traceback in its log)",
    "vip_non_master": "no VIP on a node that is not MASTER (beyond the tolerance)",
}
CLIENT_SLACK: Final = 0.050
# Two holders for less than this are not counted. It covers (1) the monitors: two namespaces
# are watched by two `ip monitor`s, whose lines arrive here a few ms apart (up to 2 ms seen),
# and (2) make-before-break, which is by design: in a planned handover (SIGTERM, `hapair
# handover`, maintenance, a preempt) the new master adds the VIP and sends a GARP before the old
# one hears it and removes its own, so clients lose nothing (keepalived removes first and leaves
# nobody holding the VIP until its peer's skew time runs out). That overlap is one heartbeat's
# delivery plus one loop step: 2-3 ms in the daemons' logs, 6 ms at most by the monitors in a
# 10-minute run. There is no other allowance for a planned handover: a longer overlap is a
# daemon that was slow to let go, and counts.
OVERLAP_SLACK: Final = 0.010


@dataclass(frozen=True)
class Bounds:
    """The timing the invariants are judged against, in seconds."""

    interval: float
    dead_time: float
    tolerance: float = 0.050


@dataclass(frozen=True)
class RoleObs:
    """`node`'s role from `ts` on (None: its daemon is not running)."""

    ts: float
    node: str
    role: str | None


@dataclass(frozen=True)
class VipObs:
    """Whether `node` holds the VIP from `ts` on."""

    ts: float
    node: str
    present: bool


@dataclass(frozen=True)
class CrashObs:
    """A daemon crash: an exit nobody asked for, or a traceback in its log."""

    ts: float
    node: str
    what: str


@dataclass(frozen=True)
class FaultWindow:
    """A fault as executed, wall-clock: `heal` is when its heal began, `healed` when it was done
    (a daemon start takes about a second); `out` are (node, from, to) windows."""

    index: int
    kind: str
    start: float
    heal: float
    disruptive: bool
    out: tuple[tuple[str, float, float], ...] = ()
    healed: float | None = None

    @property
    def done(self) -> float:
        """Return when the heal was complete."""
        return self.heal if self.healed is None else self.healed


@dataclass(frozen=True)
class Violation:
    """One broken invariant: when, for how long, after which fault, and what was seen."""

    invariant: str
    at: float
    duration: float
    fault: int | None
    detail: str


@dataclass
class Outcome:
    """What one fault cost, from its start to the next fault: time from the heal to one MASTER,
    the client's longest outage (and counted from the heal), time with two MASTERs, and time
    with the VIP on both nodes whether they counted or not (a killed node's stale VIP)."""

    index: int
    to_one_master: float | None = None
    client_outage: float = 0.0
    client_after_heal: float = 0.0
    dual_master: float = 0.0
    both_vip: float = 0.0


@dataclass
class Verdict:
    """Every violation and per-fault outcome of one run."""

    violations: list[Violation] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Return violations per invariant (every invariant listed, zero or not)."""
        counts = dict.fromkeys(INVARIANTS, 0)
        for v in self.violations:
            counts[v.invariant] = counts.get(v.invariant, 0) + 1
        return counts

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class Segment:
    """The state between two consecutive observations: [t0, t1)."""

    t0: float
    t1: float
    masters: frozenset[str]
    holders: frozenset[str]
    non_master_holders: frozenset[str]


def roles_from_events(events: Iterable[Event]) -> list[RoleObs]:
    """Return role observations from daemon log events (and synthetic stop events)."""
    out = []
    for ev in events:
        if ev.name == "daemon_started":
            out.append(RoleObs(ev.ts, ev.node, "INIT"))
        elif ev.name == "daemon_stopped":
            out.append(RoleObs(ev.ts, ev.node, None))
        elif ev.name == "role_changed" and ev.get("to_role"):
            out.append(RoleObs(ev.ts, ev.node, ev.get("to_role").upper()))
    return out


def tracebacks(node: str, text: str) -> list[CrashObs]:
    """Return one CrashObs per traceback in a daemon log (timed by the last JSON line's ts)."""
    found = []
    last_ts = 0.0
    for line in text.splitlines():
        ev = parse_json_line(node, line)
        if ev is not None:
            last_ts = ev.ts
        if "Traceback" in line:
            found.append(CrashObs(last_ts, node, "traceback: " + line.strip()[:200]))
    return found


def on_time(samples: Sequence[Sample], late: float) -> list[Sample]:
    """Return `samples` with every answer slower than `late` seconds counted as lost.

    The probe waits up to a second for an answer; a frozen master's service answers its queued
    probes when it thaws, which would hide the whole pause from the client's figures.
    """
    return [
        s if s.answered is None or s.answered - s.sent <= late else Sample(s.seq, s.sent)
        for s in samples
    ]


def segments(
    roles: Sequence[RoleObs],
    vips: Sequence[VipObs],
    faults: Sequence[FaultWindow],
    start: float,
    end: float,
    nodes: Sequence[str] = ("a", "b"),
) -> list[Segment]:
    """Return the piecewise-constant state of the pair over [start, end)."""
    points = {start, end}
    points.update(o.ts for o in roles if start < o.ts < end)
    points.update(o.ts for o in vips if start < o.ts < end)
    outs = [(n, t0, t1) for f in faults for n, t0, t1 in f.out]
    for _, t0, t1 in outs:
        points.update(t for t in (t0, t1) if start < t < end)
    times = sorted(points)
    role_seq = sorted(roles, key=lambda o: o.ts)
    vip_seq = sorted(vips, key=lambda o: o.ts)
    role: dict[str, str | None] = dict.fromkeys(nodes)
    vip: dict[str, bool] = dict.fromkeys(nodes, False)
    ri = vi = 0
    segs = []
    for t0, t1 in itertools.pairwise(times):
        while ri < len(role_seq) and role_seq[ri].ts <= t0:
            role[role_seq[ri].node] = role_seq[ri].role
            ri += 1
        while vi < len(vip_seq) and vip_seq[vi].ts <= t0:
            vip[vip_seq[vi].node] = vip_seq[vi].present
            vi += 1
        out = {n for n, a, b in outs if a <= t0 < b}
        live = [n for n in nodes if n not in out]
        masters = frozenset(n for n in live if role.get(n) == "MASTER")
        holders = frozenset(n for n in live if vip.get(n))
        segs.append(Segment(t0, t1, masters, holders, holders - masters))
    return segs


def _spans(segs: Iterable[Segment], bad: Callable[[Segment], bool]) -> list[tuple[float, float]]:
    """Merge consecutive segments for which `bad(seg)` holds into (start, end) spans."""
    spans: list[tuple[float, float]] = []
    for seg in segs:
        if not bad(seg):
            continue
        if spans and abs(spans[-1][1] - seg.t0) < 1e-9:
            spans[-1] = (spans[-1][0], seg.t1)
        else:
            spans.append((seg.t0, seg.t1))
    return spans


def _clip(segs: Sequence[Segment], t0: float, t1: float) -> list[Segment]:
    return [
        Segment(max(s.t0, t0), min(s.t1, t1), s.masters, s.holders, s.non_master_holders)
        for s in segs
        if s.t1 > t0 and s.t0 < t1
    ]


def _fault_at(faults: Sequence[FaultWindow], ts: float) -> int | None:
    """Return the index of the latest fault that started at/before `ts`."""
    best = None
    for f in faults:
        if f.start <= ts:
            best = f.index
    return best


def check(
    *,
    roles: Sequence[RoleObs],
    vips: Sequence[VipObs],
    probes: Sequence[Sequence[Sample]],
    crashes: Sequence[CrashObs],
    faults: Sequence[FaultWindow],
    bounds: Bounds,
    start: float,
    end: float,
) -> Verdict:
    """Check every invariant over [start, end); return violations and per-fault outcomes."""
    verdict = Verdict()
    ordered = sorted(faults, key=lambda f: f.start)
    segs = segments(roles, vips, ordered, start, end)
    raw = segments(roles, vips, (), start, end)
    windows = [
        (f, f.heal, ordered[i + 1].start if i + 1 < len(ordered) else end)
        for i, f in enumerate(ordered)
    ]
    late = bounds.dead_time + CLIENT_SLACK
    gone = [o for seg in probes for o in outages(on_time(seg, late))]
    for f, heal, until in windows:
        outcome = _outcome(f, heal, until, segs, gone, bounds, verdict)
        outcome.both_vip = sum(
            s.t1 - s.t0 for s in _clip(raw, f.start, until) if len(s.holders) > 1
        )
        verdict.outcomes.append(outcome)
    _two_holders(segs, ordered, bounds, verdict)
    _vip_non_master(segs, ordered, bounds, verdict)
    for c in sorted(crashes, key=lambda c: c.ts):
        verdict.violations.append(
            Violation("crash", c.ts, 0.0, _fault_at(ordered, c.ts), f"{c.node}: {c.what}")
        )
    verdict.violations.sort(key=lambda v: v.at)
    return verdict


def _outcome(
    f: FaultWindow,
    heal: float,
    until: float,
    segs: Sequence[Segment],
    gone: Sequence[Outage],
    bounds: Bounds,
    verdict: Verdict,
) -> Outcome:
    result = Outcome(f.index)
    during = _clip(segs, f.start, until)
    result.dual_master = sum(s.t1 - s.t0 for s in during if len(s.masters) > 1)
    after = _clip(segs, heal, until)
    limit = bounds.dead_time + bounds.tolerance
    one = next((s.t0 for s in after if len(s.masters) == 1), None)
    if one is not None:
        result.to_one_master = one - heal
    if one is None or one - heal > limit:
        if until - heal < limit and one is None:
            verdict.notes.append(f"fault {f.index}: the next fault came before one dead time")
        else:
            seen = "never" if one is None else f"after {(one - heal) * 1000:.0f} ms"
            verdict.violations.append(
                Violation("one_master", heal, (one or until) - heal, f.index, f"one MASTER {seen}")
            )
    if one is not None:
        # The pair has one dead time to converge (a thawed master still claims MASTER until it
        # hears its peer); from then on any span without exactly one MASTER counts.
        settled = max(one, heal + limit)
        for t0, t1 in _spans(_clip(after, settled, until), lambda s: len(s.masters) != 1):
            if t1 - t0 > bounds.tolerance:
                masters = next((s.masters for s in after if s.t0 <= t0 < s.t1), frozenset())
                who = ", ".join(sorted(masters)) or "none"
                detail = f"{len(masters)} MASTERs ({who}) for {(t1 - t0) * 1000:.0f} ms"
                verdict.violations.append(Violation("one_master", t0, t1 - t0, f.index, detail))
    client_limit = bounds.dead_time + CLIENT_SLACK
    for o in gone:
        if o.end > f.start and o.start < until:
            result.client_outage = max(result.client_outage, o.duration)
        if o.end <= heal or o.start >= until:
            continue
        # Charged up to the next fault only: a probe in flight when the next fault hits starts
        # that fault's outage a few ms before it, and is not this fault's to answer for.
        late = min(o.end, until) - max(heal, o.start)
        result.client_after_heal = max(result.client_after_heal, late)
        if late > client_limit:
            if o.end > until:
                what = "not answered before the next fault"
            elif o.recovered:
                what = "answered again"
            else:
                what = "still not answered when the probe ended"
            detail = f"{o.lost} probes lost; {what} {late * 1000:.0f} ms after the heal"
            verdict.violations.append(
                Violation("client", max(heal, o.start), late, f.index, detail)
            )
    return result


def _two_holders(
    segs: Sequence[Segment], faults: Sequence[FaultWindow], bounds: Bounds, verdict: Verdict
) -> None:
    grace = bounds.interval + bounds.tolerance
    exempt = [(f.start, f.done + grace) for f in faults if f.disruptive]

    def bad(s: Segment) -> bool:
        return len(s.holders) > 1 and not any(a <= s.t0 < b for a, b in exempt)

    cut = sorted({t for a, b in exempt for t in (a, b)})
    pieces = [p for s in segs for p in _split(s, cut)]
    for t0, t1 in _spans(pieces, bad):
        if t1 - t0 > OVERLAP_SLACK:
            detail = f"both nodes held the VIP for {(t1 - t0) * 1000:.0f} ms"
            verdict.violations.append(
                Violation("two_holders", t0, t1 - t0, _fault_at(faults, t0), detail)
            )


def _split(seg: Segment, cuts: Sequence[float]) -> list[Segment]:
    inner = [t for t in cuts if seg.t0 < t < seg.t1]
    if not inner:
        return [seg]
    bounds = [seg.t0, *inner, seg.t1]
    return [
        Segment(a, b, seg.masters, seg.holders, seg.non_master_holders)
        for a, b in itertools.pairwise(bounds)
    ]


def _vip_non_master(
    segs: Sequence[Segment], faults: Sequence[FaultWindow], bounds: Bounds, verdict: Verdict
) -> None:
    for node in ("a", "b"):

        def bad(s: Segment, node: str = node) -> bool:
            return node in s.non_master_holders

        for t0, t1 in _spans(segs, bad):
            if t1 - t0 > bounds.tolerance:
                detail = f"{node} held the VIP without being MASTER for {(t1 - t0) * 1000:.0f} ms"
                verdict.violations.append(
                    Violation("vip_non_master", t0, t1 - t0, _fault_at(faults, t0), detail)
                )
