"""Drills on the compose lab in Docker: the same scenarios, probe and report as the netns lab."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from hapair.lab.dockerbed import DockerBed, DockerPair
from hapair.lab.drill import SCENARIOS, DrillOptions, format_result, run_drill
from hapair.lab.nodes import PEER
from tests.drill_contract import assert_partition_healed, assert_survived

# Generous: these prove the failover happens and the client is answered again, not how fast.
OUTAGE_BOUND_MS = 6000.0


@pytest.fixture(scope="module")
def bed(compose_lab: Any, docker_client: Any) -> Iterator[tuple[DockerBed, DockerPair]]:
    pair = DockerPair(docker_client, compose_lab.project)
    yield DockerBed(docker_client, pair), pair


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "partition"])
def test_survivor_takes_over_and_the_client_is_answered(
    bed: tuple[DockerBed, DockerPair], scenario: str
) -> None:
    testbed, pair = bed
    result = run_drill(testbed, pair, scenario, DrillOptions())
    text = format_result(result)
    print(text)
    assert result.testbed == "docker", text
    assert_survived(result, OUTAGE_BOUND_MS)
    # The drill put the lab back: one stable master, both daemons running.
    assert all(pair.running(n) for n in PEER), text


def test_partition_makes_two_masters_then_heals_to_one(bed: tuple[DockerBed, DockerPair]) -> None:
    testbed, pair = bed
    result = run_drill(testbed, pair, "partition", DrillOptions())
    print(format_result(result))
    assert_partition_healed(result, OUTAGE_BOUND_MS)


def test_drill_command_prints_json(compose_lab: Any) -> None:
    argv = [sys.executable, "-m", "hapair", "drill", "--docker", "handover", "--json"]
    proc = subprocess.run(
        [*argv, "--project", compose_lab.project],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)
    assert [r["scenario"] for r in results] == ["handover"]
    assert results[0]["testbed"] == "docker"
    assert results[0]["recovered"] is True
    assert any("handover" in mark["label"] for mark in results[0]["timeline"])


def test_drill_command_names_a_missing_project() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hapair", "drill", "--docker", "crash", "--project", "hpcnone"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "no running compose lab 'hpcnone'" in proc.stderr
