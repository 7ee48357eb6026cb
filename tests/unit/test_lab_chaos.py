"""The chaos drill's pure parts: the seeded schedule and the invariant checker on synthetic runs."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hapair.lab.chaos import DISRUPTIVE, KINDS, Fault, make_schedule, parse_kinds
from hapair.lab.chaoscheck import (
    Bounds,
    CrashObs,
    FaultWindow,
    RoleObs,
    Verdict,
    VipObs,
    check,
    on_time,
    roles_from_events,
    tracebacks,
)
from hapair.lab.chaosfaults import flood_argv, wipe_state
from hapair.lab.chaosreport import format_report, replay_command, to_json
from hapair.lab.chaosrun import FLOOD_RATE, ChaosResult, keep_logs, parse_monitor_line
from hapair.lab.events import Event
from hapair.lab.probe import Sample
from hapair.lab.topology import Lab

BOUNDS = Bounds(interval=0.05, dead_time=0.15, tolerance=0.05)
START, END = 0.0, 20.0
HEAL = 12.0


# ---------------------------------------------------------------- schedule -----------------


@given(seed=st.integers(0, 2**32), minutes=st.floats(0.1, 30.0))
def test_the_same_seed_gives_the_same_schedule(seed: int, minutes: float) -> None:
    first = make_schedule(seed, minutes, interval=0.05, dead_after=3)
    assert first == make_schedule(seed, minutes, interval=0.05, dead_after=3)


@given(seed=st.integers(0, 2**32), minutes=st.floats(0.5, 30.0))
def test_faults_fit_the_budget_never_overlap_and_cover_every_kind_per_round(
    seed: int, minutes: float
) -> None:
    faults = make_schedule(seed, minutes, interval=0.05, dead_after=3)
    assert [f.index for f in faults] == list(range(len(faults)))
    for prev, cur in itertools.pairwise(faults):
        assert cur.at >= prev.at + prev.duration + 1.0 - 1e-6
    assert all(f.at + f.duration <= minutes * 60 for f in faults)
    for i in range(0, len(faults) - len(KINDS) + 1, len(KINDS)):
        assert sorted(f.kind for f in faults[i : i + len(KINDS)]) == sorted(KINDS)


def test_other_seeds_give_other_schedules_and_targets_are_well_formed() -> None:
    schedules = {tuple(make_schedule(s, 5, interval=0.05, dead_after=3)) for s in range(5)}
    assert len(schedules) == 5
    for faults in schedules:
        for f in faults:
            if f.kind == "oneway":
                assert f.target in ("a>b", "b>a")
            elif f.kind == "partition":
                assert f.target == ""
            elif f.kind == "flap":
                assert f.target == "r1"
            else:
                assert f.target in ("a", "b")
            assert f.spoof is False or f.kind == "flood"


def test_a_subset_of_kinds_and_bad_input() -> None:
    faults = make_schedule(1, 2, interval=0.05, dead_after=3, kinds=["crash", "kill"])
    assert {f.kind for f in faults} == {"crash", "kill"}
    with pytest.raises(ValueError, match="unknown fault kinds"):
        make_schedule(1, 2, interval=0.05, dead_after=3, kinds=["meteor"])
    with pytest.raises(ValueError):
        make_schedule(1, 0, interval=0.05, dead_after=3)
    assert parse_kinds("all") == list(KINDS)
    assert parse_kinds("crash, pause") == ["crash", "pause"]
    with pytest.raises(ValueError, match="meteor"):
        parse_kinds("crash,meteor")
    assert DISRUPTIVE.isdisjoint({"flood", "flap", "kill", "wipe"})


# ---------------------------------------------------------------- checker ------------------


def probes(lost: Sequence[tuple[float, float]] = ()) -> list[Sample]:
    """A probe every 10 ms over the run, answered 1 ms later by a, except in `lost` spans."""
    out = []
    for seq in range(int((END - START) / 0.01)):
        sent = START + seq * 0.01
        if any(a <= sent < b for a, b in lost):
            out.append(Sample(seq, sent))
        else:
            out.append(Sample(seq, sent, sent + 0.001, "a"))
    return out


def run(
    *,
    roles: Sequence[RoleObs] = (),
    vips: Sequence[VipObs] = (),
    lost: Sequence[tuple[float, float]] = (),
    crashes: Sequence[CrashObs] = (),
    kind: str = "partition",
    out: tuple[tuple[str, float, float], ...] = (),
    healed: float | None = None,
) -> Verdict:
    """A pair (a MASTER with the VIP, b BACKUP) and one fault from 10 s to the heal at 12 s."""
    base_roles = [RoleObs(0.0, "a", "MASTER"), RoleObs(0.0, "b", "BACKUP")]
    base_vips = [VipObs(0.0, "a", True), VipObs(0.0, "b", False)]
    fault = FaultWindow(0, kind, 10.0, HEAL, kind in DISRUPTIVE, out, healed)
    return check(
        roles=[*base_roles, *roles],
        vips=[*base_vips, *vips],
        probes=[probes(lost)],
        crashes=crashes,
        faults=[fault],
        bounds=BOUNDS,
        start=START,
        end=END,
    )


def broken(verdict: Verdict) -> list[str]:
    return [v.invariant for v in verdict.violations]


def partition(b_backup_at: float, b_vip_gone_at: float) -> Verdict:
    """b becomes MASTER with the VIP during the partition, back to BACKUP after the heal."""
    return run(
        roles=[RoleObs(10.2, "b", "MASTER"), RoleObs(b_backup_at, "b", "BACKUP")],
        vips=[VipObs(10.2, "b", True), VipObs(b_vip_gone_at, "b", False)],
    )


def test_a_clean_partition_and_heal_breaks_nothing() -> None:
    verdict = partition(HEAL + 0.04, HEAL + 0.045)
    assert broken(verdict) == []
    [outcome] = verdict.outcomes
    assert outcome.to_one_master == pytest.approx(0.04)
    assert outcome.dual_master == pytest.approx(1.84)


def test_one_master_too_late_after_the_heal() -> None:
    verdict = partition(HEAL + 0.5, HEAL + 0.045)
    assert broken(verdict) == ["one_master"]
    assert verdict.violations[0].fault == 0


def test_two_masters_again_after_the_heal_settled() -> None:
    verdict = run(
        kind="kill",
        roles=[RoleObs(14.0, "b", "MASTER"), RoleObs(14.3, "b", "BACKUP")],
    )
    assert broken(verdict) == ["one_master"]
    assert "2 MASTERs" in verdict.violations[0].detail


def test_two_masters_while_the_pair_converges_after_the_heal_are_allowed() -> None:
    # a, frozen while MASTER, thaws at the heal still MASTER; b yields 90 ms later.
    roles = [RoleObs(10.2, "b", "MASTER"), RoleObs(HEAL + 0.09, "b", "BACKUP")]
    vips = [VipObs(10.2, "b", True), VipObs(HEAL + 0.095, "b", False)]
    out = (("a", 10.0, HEAL),)
    assert broken(run(kind="pause", roles=roles, vips=vips, out=out)) == []


def test_two_holders_longer_than_one_interval_after_the_heal() -> None:
    verdict = partition(HEAL + 0.04, HEAL + 0.3)
    # b, BACKUP again, kept the VIP: that is also a VIP on a non-master.
    assert sorted(broken(verdict)) == ["two_holders", "vip_non_master"]
    assert verdict.violations[0].at == pytest.approx(HEAL + 0.04)


def test_the_grace_for_two_holders_counts_from_the_end_of_the_heal() -> None:
    roles = [RoleObs(10.2, "b", "MASTER"), RoleObs(HEAL + 0.3, "b", "BACKUP")]
    vips = [VipObs(10.2, "b", True), VipObs(HEAL + 0.3, "b", False)]
    assert "two_holders" in broken(run(roles=roles, vips=vips))
    assert "two_holders" not in broken(run(roles=roles, vips=vips, healed=HEAL + 0.25))


def test_two_holders_during_a_flood_are_not_excused() -> None:
    vips = [VipObs(11.0, "b", True), VipObs(11.05, "b", False)]
    roles = [RoleObs(11.0, "b", "MASTER"), RoleObs(11.05, "b", "BACKUP")]
    assert broken(run(kind="flood", vips=vips, roles=roles)) == ["two_holders"]
    assert broken(run(kind="linkdown", vips=vips, roles=roles)) == []


def test_client_answered_again_in_time_after_the_heal() -> None:
    assert broken(run(lost=[(11.5, HEAL + 0.1)])) == []
    verdict = run(lost=[(11.5, HEAL + 0.5)])
    assert broken(verdict) == ["client"]
    assert verdict.outcomes[0].client_after_heal == pytest.approx(0.501, abs=0.011)


def test_an_outage_starting_after_the_heal_is_timed_from_its_start() -> None:
    assert broken(run(lost=[(15.0, 15.15)])) == []
    assert broken(run(lost=[(15.0, 15.4)])) == ["client"]


def test_an_outage_the_next_fault_causes_is_not_charged_to_the_one_before() -> None:
    # A crash of the master at 15 s: the probe sent 10 ms before it is lost, and the client is
    # answered again after the dead time. That outage is the crash's (judged after its heal).
    second = FaultWindow(1, "crash", 15.0, 15.5, True, (("a", 15.0, 15.5),))
    roles = [RoleObs(0.0, "a", "MASTER"), RoleObs(0.0, "b", "BACKUP")]
    roles += [RoleObs(15.18, "b", "MASTER"), RoleObs(15.5, "a", "BACKUP")]
    vips = [VipObs(0.0, "a", True), VipObs(15.18, "b", True), VipObs(15.5, "a", False)]
    args = {"roles": roles, "vips": vips, "crashes": [], "bounds": BOUNDS, "start": START}
    args["end"] = END
    first = FaultWindow(0, "flap", 10.0, HEAL, False)
    verdict = check(probes=[probes([(14.985, 15.19)])], faults=[first, second], **args)
    assert broken(verdict) == []
    assert verdict.outcomes[0].client_after_heal == pytest.approx(0.01, abs=0.001)
    # Still charged when the client was not answered for too long before the next fault.
    verdict = check(probes=[probes([(14.7, 15.19)])], faults=[first, second], **args)
    assert broken(verdict) == ["client"]
    assert "before the next fault" in verdict.violations[0].detail


def test_a_late_answer_counts_as_lost() -> None:
    samples = [Sample(0, 0.0, 0.001, "a"), Sample(1, 0.01, 0.9, "a"), Sample(2, 0.02, 0.021, "a")]
    assert on_time(samples, 0.2) == [samples[0], Sample(1, 0.01), samples[2]]


def test_a_crash_is_a_violation_and_tracebacks_are_found_in_logs() -> None:
    assert broken(run()) == []
    verdict = run(crashes=[CrashObs(13.0, "b", "daemon exited unasked (status 1)")])
    assert broken(verdict) == ["crash"]
    log = '{"event": "x", "ts": 5.5}\nTraceback (most recent call last):\n  boom\n'
    [found] = tracebacks("a", log)
    assert found.ts == 5.5 and found.node == "a" and "Traceback" in found.what
    assert tracebacks("a", '{"event": "x", "ts": 1}\n') == []


def test_vip_on_a_non_master() -> None:
    short = [VipObs(15.0, "b", True), VipObs(15.03, "b", False)]
    assert broken(run(vips=short)) == ["two_holders"]
    long = [VipObs(15.0, "b", True), VipObs(15.2, "b", False)]
    assert sorted(broken(run(vips=long))) == ["two_holders", "vip_non_master"]
    # b alone keeps the VIP after a resigned from it: no one MASTER holds it.
    stale = [VipObs(15.0, "a", False), VipObs(15.0, "b", True), VipObs(15.3, "b", False)]
    assert broken(run(vips=stale)) == ["vip_non_master"]


def test_a_node_that_is_out_does_not_count() -> None:
    # a is frozen 10..12 with its VIP; b takes over; neither counts as two holders.
    roles = [RoleObs(10.2, "b", "MASTER"), RoleObs(HEAL + 0.02, "b", "BACKUP")]
    vips = [VipObs(10.2, "b", True), VipObs(HEAL + 0.03, "b", False)]
    verdict = run(kind="pause", roles=roles, vips=vips, out=(("a", 10.0, HEAL),))
    assert broken(verdict) == []
    # Still shown: the frozen node's VIP and the new master's were both configured.
    assert verdict.outcomes[0].both_vip == pytest.approx(1.83)
    # Without the out window, a's VIP after a's own resign (logged, but no release) counts.
    roles_a = [RoleObs(10.0, "a", "BACKUP"), RoleObs(HEAL, "a", "MASTER")]
    assert broken(run(kind="pause", roles=roles_a)) == ["vip_non_master"]
    assert broken(run(kind="pause", roles=roles_a, out=(("a", 10.0, HEAL),))) == []


def test_roles_from_daemon_events() -> None:
    events = [
        Event("a", 1.0, "daemon_started"),
        Event("a", 1.1, "role_changed", {"to_role": "master"}),
        Event("a", 2.0, "vip_acquired", {"vip": "x"}),
        Event("a", 3.0, "daemon_stopped"),
    ]
    assert roles_from_events(events) == [
        RoleObs(1.0, "a", "INIT"),
        RoleObs(1.1, "a", "MASTER"),
        RoleObs(3.0, "a", None),
    ]


def test_wipe_deletes_the_state_file_and_the_state_dirs_contents(tmp_path: Path) -> None:
    lab = Lab("chw")
    lab.dir = tmp_path
    lab.hapair.write_configs()
    state_dir = tmp_path / "a"
    (state_dir / "lab-chw-a.state").write_text("{}")
    (state_dir / "junk").mkdir()
    gone = wipe_state(lab.hapair.config_path("a"))
    assert list(state_dir.iterdir()) == []
    assert str(state_dir / "lab-chw-a.state") in gone
    assert (tmp_path / "b").is_dir() and lab.hapair.config_path("a").exists()
    assert wipe_state(lab.hapair.config_path("a")) == ["nothing (no state there)"]


# ---------------------------------------------------------------- flood, report, logs -------


def _result(flood_rate: float | None) -> ChaosResult:
    schedule = make_schedule(1, 1.0, interval=0.05, dead_after=3)
    return ChaosResult(
        1, 1.0, 0.05, 3, 0.05, "nat", schedule, [], Verdict(), 100.0, 60.0, [], flood_rate
    )


def test_the_flood_runs_at_the_chosen_rate_or_flat_out() -> None:
    lan = {"a": "10.77.0.11", "b": "10.77.0.12"}
    spoofed = Fault(3, "flood", "b", 1.0, 2.0, 1.0, spoof=True)
    argv = flood_argv(spoofed, lan, "lab-hpc", FLOOD_RATE)
    assert argv[argv.index("--rate") + 1] == f"{FLOOD_RATE:.0f}"
    assert argv[argv.index("--dst") + 1] == "10.77.0.12"
    assert argv[argv.index("--spoof-src") + 1] == "10.77.0.11"
    assert "--rate" not in flood_argv(Fault(3, "flood", "a", 1.0, 2.0, 1.0), lan, "c", None)
    assert FLOOD_RATE >= 250_000  # at least the attack


def test_the_report_and_its_replay_name_the_flood_rate() -> None:
    default, flat = _result(FLOOD_RATE), _result(None)
    assert "--flood-rate" not in replay_command(default, "hpc", "all")
    assert "--flood-rate 0" in replay_command(flat, "hpc", "all")
    assert "flood 500,000/s" in format_report(default, "x").splitlines()[0]
    assert "flood flat out" in format_report(flat, "x").splitlines()[0]
    assert to_json(default, "x")["flood_rate"] == FLOOD_RATE


def test_keep_logs_copies_the_logs_and_writes_the_report(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    for name in ("daemon-a.log", "a.toml", "chaos-vips.jsonl", "secret.key"):
        (lab_dir / name).write_text(name, encoding="utf-8")
    (lab_dir / "a.lib").mkdir()
    kept = keep_logs(SimpleNamespace(dir=lab_dir), tmp_path / "out", {"ok": True})  # type: ignore[arg-type]
    names = sorted(p.name for p in kept)
    assert names == ["a.toml", "chaos-report.json", "chaos-vips.jsonl", "daemon-a.log"]
    assert json.loads((tmp_path / "out" / "chaos-report.json").read_text()) == {"ok": True}


def test_vip_changes_are_timed_by_the_monitors_stamp() -> None:
    vip = "10.77.0.50"
    added = "[2026-12-04T19:25:43.229586] 2: eth0    inet 10.77.0.50/24 scope global eth0\n"
    gone = "[2026-12-04T19:25:43.231011] Deleted 2: eth0    inet 10.77.0.50/24 scope global eth0"
    a = parse_monitor_line("a", added, vip, arrived=9e9)
    d = parse_monitor_line("a", gone, vip, arrived=9e9)
    assert a is not None and d is not None
    assert a.present and not d.present
    assert round((d.ts - a.ts) * 1e6) == 1425  # the stamps, not the arrival
    assert a.ts == datetime.fromisoformat("2026-12-04T19:25:43.229586").timestamp()
    assert parse_monitor_line("a", "2: eth0    inet 10.77.0.50/24", vip, 5.0) == VipObs(
        5.0, "a", True
    )
    assert parse_monitor_line("a", "[x] 2: eth0 inet 10.77.0.5/24", vip, 5.0) is None
    assert parse_monitor_line("a", "[garbage] 2: eth0 inet 10.77.0.50/24", vip, 5.0) == VipObs(
        5.0, "a", True
    )
