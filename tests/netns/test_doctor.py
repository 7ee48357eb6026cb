"""``hapair doctor`` on node a of a namespace lab, against a real daemon on node b.

One lab for the module (unique prefix, torn down even on failure); each test leaves b's daemon
and the links as it found them. Every wait is bounded: doctor listens at most ``--wait``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hapair.config.keygen import generate_key
from hapair.lab.addresses import HB4, LAN4
from hapair.lab.nodes import Timers
from hapair.lab.topology import Lab

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

DOCTOR_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    prefix = f"dr{os.getpid() % 100000}"
    with Lab(prefix, timers=Timers(interval=0.05, dead_after=4), services=False) as lab:
        yield lab


@pytest.fixture
def b_running(lab: Lab) -> Iterator[None]:
    if not lab.hapair.running("b"):
        lab.start_node("b")
    yield


@pytest.fixture
def b_stopped(lab: Lab) -> Iterator[None]:
    if lab.hapair.running("b"):
        lab.term_node("b")
    yield


def doctor(lab: Lab, config: Path | None = None, node: str = "a") -> tuple[int, dict[str, Any]]:
    """Run ``hapair doctor --json`` in ``node``'s namespace; its exit status and report."""
    path = config or lab.hapair.config_path(node)
    argv = ["ip", "netns", "exec", lab.ns(node), sys.executable, "-m", "hapair", "doctor"]
    proc = subprocess.run(
        [*argv, "-c", str(path), "--json", "--wait", "2"],
        capture_output=True, text=True, timeout=DOCTOR_TIMEOUT, env=lab.env(), check=False,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    assert report["ok"] == (proc.returncode == 0)
    return proc.returncode, report


def findings(report: dict[str, Any], check: str) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["check"] == check]


def variant(lab: Lab, name: str, old: str, new: str) -> Path:
    """A copy of a's config with ``old`` replaced by ``new``."""
    text = lab.hapair.config_path("a").read_text()
    assert old in text
    path = lab.dir / f"a-{name}.toml"
    path.write_text(text.replace(old, new))
    return path


def test_peer_running_is_authenticated_on_both_links(lab: Lab, b_running: None) -> None:
    status, report = doctor(lab)
    assert status == 0, report
    peers = findings(report, "peer")
    assert [f["level"] for f in peers] == ["ok", "ok"]
    assert f"b answers from {LAN4['b']}: authenticated heartbeat" in peers[0]["message"]
    assert f"b answers from {HB4['b']}" in peers[1]["message"]
    assert "listened on UDP 694" in peers[0]["message"]
    assert [f["level"] for f in findings(report, "vip-set")] == ["ok"]
    assert findings(report, "port")[0]["message"] == "UDP 694 is free"
    for check in ("capabilities", "secret", "interface", "route"):
        assert {f["level"] for f in findings(report, check)} == {"ok"}, check


def test_peer_stopped_is_a_warning(lab: Lab, b_stopped: None) -> None:
    status, report = doctor(lab)
    assert status == 0, report  # warnings only
    peers = findings(report, "peer")
    assert [f["level"] for f in peers] == ["warning", "warning"]
    assert "peer not answering (not started yet?)" in peers[0]["message"]


def test_another_key_is_an_error_naming_the_secret(lab: Lab, b_running: None) -> None:
    secret = lab.dir / "secret-a-wrong"
    secret.touch(mode=0o600)
    secret.write_text(generate_key() + "\n")
    config = variant(lab, "wrong-key", str(lab.dir / "secret"), str(secret))
    status, report = doctor(lab, config)
    assert status == 1
    assert [f["level"] for f in findings(report, "secret")] == ["ok"]  # the file itself is fine
    errors = [f for f in findings(report, "peer") if f["level"] == "error"]
    assert errors and str(secret) in errors[0]["message"]
    assert errors[0]["fix"].startswith(f"scp -p {secret}")


def test_a_different_vip_set_is_an_error(lab: Lab, b_running: None) -> None:
    config = variant(lab, "vips", 'address = "10.77.0.50/24"', 'address = "10.77.0.51/24"')
    status, report = doctor(lab, config)
    assert status == 1
    [vips] = findings(report, "vip-set")
    assert vips["level"] == "error" and "10.77.0.51/24" in vips["message"]


def test_interface_down_is_a_carrier_error(lab: Lab, b_running: None) -> None:
    lab.exec("a", ["ip", "link", "set", "eth0", "down"])
    try:
        status, report = doctor(lab)
    finally:
        lab.exec("a", ["ip", "link", "set", "eth0", "up"])
    assert status == 1
    [eth0] = findings(report, "interface")
    assert eth0["level"] == "error" and "eth0" in eth0["message"] and "carrier" in eth0["message"]
    assert eth0["fix"] == "ip link set dev eth0 up"
    # The direct heartbeat cable still carries b's heartbeats.
    assert [f["level"] for f in findings(report, "peer")][1] == "ok"


def test_switch_port_down_is_no_carrier(lab: Lab, b_running: None) -> None:
    lab.set_lan("a", False)
    try:
        status, report = doctor(lab)
    finally:
        lab.set_lan("a", True)
    assert status == 1
    [eth0] = findings(report, "interface")
    assert eth0["level"] == "error" and "eth0 has no carrier" in eth0["message"]
    peers = findings(report, "peer")
    assert [f["level"] for f in peers] == ["warning", "ok"]
    assert "this heartbeat link is broken" in peers[0]["message"]


def test_both_daemons_running_watches_without_disturbing(lab: Lab, b_running: None) -> None:
    lab.start_node("a")
    try:
        # a (priority 150) takes over from b first: the role change is not doctor's doing.
        deadline = time.monotonic() + 10.0
        while (before := lab.hapair.status("b")) is None or before["role"] != "BACKUP":
            assert time.monotonic() < deadline, f"b did not yield to a: {before}"
            time.sleep(0.05)
        status, report = doctor(lab)
        after = lab.hapair.status("b")
    finally:
        lab.term_node("a")
    assert status == 0, report
    assert "in use by hapair itself" in findings(report, "port")[0]["message"]
    peers = findings(report, "peer")
    assert [f["level"] for f in peers] == ["ok", "ok"]
    assert "raw socket" in peers[0]["message"]
    # Doctor sent nothing: b neither changed role nor rejected anything more (a's start cost
    # a few `unproven`, the v2 handshake, before).
    assert after is not None
    assert after["role"] == before["role"] and after["term"] == before["term"]
    assert after["rejected"] == before["rejected"]
