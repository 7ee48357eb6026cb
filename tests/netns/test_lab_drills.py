"""End-to-end drills against real hapair daemons in the namespace lab (correctness, not speed)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest

from hapair.lab.addresses import NODES
from hapair.lab.drill import DrillOptions, run_drill
from hapair.lab.nodes import Timers
from hapair.lab.testbed import NetnsBed
from hapair.lab.topology import Lab
from tests.drill_contract import assert_partition_healed, assert_survived

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        importlib.util.find_spec("hapair.runtime.daemon") is None, reason="no hapair daemon yet"
    ),
]

PREFIX = f"hpd{os.getpid() % 100000}"
TIMERS = Timers(interval=0.1, dead_after=5)
# Generous: these prove the failover happens and the client gets answers again, not how fast.
OUTAGE_BOUND_MS = (TIMERS.dead_time + 3.0) * 1000


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(PREFIX, timers=TIMERS) as built:
        for node in NODES:
            built.start_node(node)
        yield built


@pytest.mark.parametrize("scenario", ["crash", "kill", "pause", "linkdown", "handover", "sigterm"])
def test_survivor_takes_over_and_the_client_is_answered(lab: Lab, scenario: str) -> None:
    result = run_drill(NetnsBed(lab, lab.hapair), lab.hapair, scenario, DrillOptions())
    assert_survived(result, OUTAGE_BOUND_MS)


def test_partition_makes_two_masters_then_heals_to_one(lab: Lab) -> None:
    result = run_drill(NetnsBed(lab, lab.hapair), lab.hapair, "partition", DrillOptions())
    assert_partition_healed(result, OUTAGE_BOUND_MS)
