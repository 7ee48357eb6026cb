"""A short chaos drill against the real daemons: one round of six fault kinds, fixed seed.

It asserts the drill's own verdict structure (every fault ran, every invariant judged, per-fault
outcomes) and what main already guarantees (no daemon crash); the timed invariants are printed,
not asserted: figures, not timed tests (the 10-minute run is the benchmark).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from hapair.lab.addresses import NODES
from hapair.lab.chaos import make_schedule
from hapair.lab.chaoscheck import INVARIANTS, Bounds
from hapair.lab.chaosreport import format_report, to_json
from hapair.lab.chaosrun import ChaosResult, ChaosRunner
from hapair.lab.nodes import Timers
from hapair.lab.topology import Lab, lab_namespaces

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

PREFIX = f"ch{os.getpid() % 100000}"
TIMERS = Timers(interval=0.05, dead_after=3)
KINDS = ("crash", "kill", "pause", "partition", "linkdown", "wipe")
SEED = 34  # every node fault of this round hits a, the usual MASTER


@pytest.fixture(scope="module")
def result() -> Iterator[ChaosResult]:
    # One round: each kind once, about 30 s with the daemons' restarts.
    schedule = make_schedule(SEED, 1.0, interval=0.05, dead_after=3, kinds=KINDS)[: len(KINDS)]
    with Lab(PREFIX, timers=TIMERS) as lab:
        for node in NODES:
            lab.start_node(node)
        runner = ChaosRunner(
            lab,
            schedule,
            seed=SEED,
            minutes=5.0,
            bounds=Bounds(TIMERS.interval, TIMERS.dead_time),
            balancer="none",
        )
        yield runner.run()
    assert lab_namespaces(PREFIX) == []


def test_every_fault_ran_and_was_judged(result: ChaosResult) -> None:
    report = format_report(result, "replay")
    print(report)  # the timed invariants' figures, shown with -s or on failure
    assert sorted(ex.fault.kind for ex in result.executed) == sorted(KINDS), report
    assert not any(ex.skipped for ex in result.executed), report
    assert [o.index for o in result.verdict.outcomes] == [ex.fault.index for ex in result.executed]
    assert set(result.verdict.counts()) == set(INVARIANTS)
    for ex in result.executed:
        assert result.t0 < ex.start < ex.heal, report
    data = json.loads(json.dumps(to_json(result, "replay")))
    assert data["totals"]["faults"] == len(KINDS)
    assert data["ok"] == (data["totals"]["violations"] == 0)


def test_no_daemon_crashed(result: ChaosResult) -> None:
    crashes = [v for v in result.verdict.violations if v.invariant == "crash"]
    assert crashes == [], format_report(result, "replay")


def test_the_killed_node_released_its_stale_vip(result: ChaosResult) -> None:
    [kill] = [ex for ex in result.executed if ex.fault.kind == "kill"]
    assert any("stale VIP released" in n for n in kill.notes), kill.notes
    [(node, start, end)] = kill.out
    assert node == kill.fault.target and start < end <= kill.heal
