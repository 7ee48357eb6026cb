"""`hapair run` with a `nat` balancer in the lab: spread, probes, recovery, failover, release."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from hapair.lab.addresses import LAN4, VIP4
from hapair.lab.events import Event
from hapair.lab.nodes import Timers
from hapair.lab.shell import wait_until
from hapair.lab.topology import Lab
from tests.netns.lab_http import checked_pool, fetch

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

FAST = Timers(interval=0.05, dead_after=4)
PROBE_INTERVAL = 0.2
FALL = 2

BALANCER = f"""
[balancer]
kind = "nat"
scheduler = "SCHED"
mode = "MODE"
listen = "{VIP4}:8080"
masquerade = true

""" + checked_pool(PROBE_INTERVAL, FALL)


def make(scheduler: str = "weighted", mode: str = "hot") -> Lab:
    lab = Lab(f"hb{os.getpid() % 10000}", timers=FAST)
    lab.up()
    try:
        for node in ("a", "b"):
            cfg = lab.hapair.config_path(node)
            text = BALANCER.replace("SCHED", scheduler).replace("MODE", mode)
            cfg.write_text(cfg.read_text() + text)
            lab.exec(node, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        lab.hapair.start("a")
        lab.hapair.start("b")
        assert wait_until(lambda: lab.vip_holders() == ["a"], timeout=10)
    except BaseException:
        lab.down()
        raise
    return lab


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = make()
    try:
        yield lab
    finally:
        lab.down()


def nft_table(lab: Lab, node: str) -> str:
    return lab.exec(node, ["nft", "list", "table", "inet", "hapair"], check=False).stdout


def test_weighted_spread_then_a_dead_backend_leaves_and_returns(lab: Lab) -> None:
    assert Counter(fetch(lab, 30)) == {"r1": 20, "r2": 10}
    t0 = time.time()
    lab.stop("service-r1", sig=signal.SIGKILL)

    def downs() -> list[Event]:
        return [e for e in lab.hapair.events() if e.name == "backend_down" and e.node == "a"]

    assert wait_until(lambda: bool(downs()), timeout=FALL * PROBE_INTERVAL + 2.0)
    assert downs()[0].ts - t0 <= FALL * PROBE_INTERVAL + 1.0
    assert downs()[0].fields["backend"] == f"{LAN4['r1']}:80"
    assert set(fetch(lab, 10)) == {"r2"}  # no client request fails once it is out
    status = lab.hapair.status("a")
    assert status is not None
    assert status["balancer"]["backends"][f"{LAN4['r1']}:80"]["up"] is False  # type: ignore[index]
    # The backend recovers: after `rise` good probes it is back in the pool.
    argv = [sys.executable, "-m", "hapair.lab.service", "--name", "r1", "--vip", LAN4["r1"]]
    lab.spawn("service-r1", "r1", argv, stdout=subprocess.DEVNULL)
    assert wait_until(
        lambda: any(e.name == "backend_up" and e.node == "a" for e in lab.hapair.events()),
        timeout=5,
    )
    assert Counter(fetch(lab, 30)) == {"r1": 20, "r2": 10}


def test_failover_keeps_the_service_answering(lab: Lab) -> None:
    assert "fib daddr type local" in nft_table(lab, "b")  # hot: b has the rules already
    lab.hapair.kill("a")
    lab.set_host_links("a", up=False)
    assert wait_until(lambda: lab.has_vip("b"), timeout=5)
    assert set(fetch(lab, 6)) == {"r1", "r2"}


def test_exit_and_release_remove_the_table(lab: Lab) -> None:
    lab.hapair.terminate("b")
    assert nft_table(lab, "b") == ""  # a clean exit removes it
    lab.hapair.kill("a")  # a SIGKILL leaves it; release (ExecStopPost) removes it
    assert "hapair" in nft_table(lab, "a")
    proc = lab.python("a", ["-m", "hapair", "release", "-c", str(lab.hapair.config_path("a"))])
    assert "the nat balancer's data plane" in proc.stdout
    assert nft_table(lab, "a") == ""


def test_cold_mode_loads_the_rules_on_the_master_only() -> None:
    lab = make(scheduler="rr", mode="cold")
    try:
        # The VIP comes first; the cold balancer starts off the loop just after it.
        assert wait_until(lambda: "hapair" in nft_table(lab, "a"), timeout=5)
        assert nft_table(lab, "b") == ""
        assert sorted(set(fetch(lab, 4))) == ["r1", "r2"]
        lab.hapair.terminate("a")  # graceful: b takes over and starts its balancer first
        assert wait_until(lambda: lab.has_vip("b") and "hapair" in nft_table(lab, "b"), timeout=5)
        assert sorted(set(fetch(lab, 4))) == ["r1", "r2"]
    finally:
        lab.down()
