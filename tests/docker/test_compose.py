"""The compose lab for real: election, the site through the VIP, and failovers under docker."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hapair.lab.shell import wait_until
from tests.docker.composelab import COMPOSE_FILE, ComposeLab, compose_command

SETTLE: float = 20.0
FAILOVER: float = 10.0
WEBS = {"web1", "web2", "web3"}


def settled(lab: ComposeLab) -> None:
    """Wait until node-a (priority 150) holds the VIP alone and the site answers."""
    assert wait_until(lambda: lab.vip_holder() == "node-a" and lab.http_ok(), timeout=SETTLE), (
        f"the lab did not settle on node-a: VIP on {lab.vip_holders()}"
    )


def role(lab: ComposeLab, service: str) -> str:
    return str(lab.status(service)["role"])


def events_since(lab: ComposeLab, service: str, name: str, since: float) -> list[dict[str, Any]]:
    return [e for e in lab.events(service, name) if float(e.get("ts", 0)) >= since]


@pytest.fixture
def lab(compose_lab: ComposeLab) -> Iterator[ComposeLab]:
    """The session's lab, settled on node-a; node-a is started again if a test left it down."""
    settled(compose_lab)
    try:
        yield compose_lab
    finally:
        container = compose_lab.container("node-a")
        container.reload()
        if container.status != "running":
            container.start()


def test_compose_file_validates() -> None:
    env = {**os.environ, "HAPAIR_IMAGE": "hapair:latest"}
    base = [*compose_command(), "-f", str(COMPOSE_FILE), "config"]
    check = subprocess.run([*base, "-q"], capture_output=True, text=True, env=env, timeout=60)
    assert check.returncode == 0, check.stderr
    services = subprocess.run(
        [*base, "--services"], capture_output=True, text=True, env=env, timeout=60, check=True
    )
    assert set(services.stdout.split()) == {"keygen", "node-a", "node-b", "client", *WEBS}


def test_site_answers_through_the_vip_from_several_backends(lab: ComposeLab) -> None:
    answers = lab.http_gets(30)
    assert {status for status, _ in answers} == {200}, answers
    bodies = {body for _, body in answers}
    assert bodies <= WEBS
    assert len(bodies) > 1, f"the weighted balancer used one backend only: {answers}"


def test_sysctls(lab: ComposeLab) -> None:
    for node in ("node-a", "node-b"):
        assert lab.exec(node, ["cat", "/proc/sys/net/ipv4/ip_forward"]) == (0, "0\n")
    assert lab.exec("client", ["cat", "/proc/sys/net/ipv4/conf/all/arp_accept"]) == (0, "1\n")


def test_the_pair_elects_with_one_shared_key(lab: ComposeLab) -> None:
    assert lab.vip_holders() == ["node-a"]
    assert role(lab, "node-a") == "MASTER"
    assert role(lab, "node-b") == "BACKUP"
    keys = set()
    for node in ("node-a", "node-b"):
        rc, out = lab.exec(node, ["cat", "/var/lib/hapair-secret/key"])
        assert rc == 0 and out.strip(), out
        keys.add(hashlib.sha256(out.encode()).hexdigest())
    assert len(keys) == 1
    keygen = lab.container("keygen")
    keygen.reload()
    assert keygen.attrs["State"]["ExitCode"] == 0
    # Heartbeats authenticate with that key: b hearing a proves both hold the same one.
    assert lab.events("node-b", "peer_found")


def test_graceful_stop_moves_the_vip_and_start_preempts_back(lab: ComposeLab) -> None:
    node_a = lab.container("node-a")
    began = time.time()
    node_a.stop(timeout=20)
    assert wait_until(lambda: lab.vip_holders() == ["node-b"], timeout=FAILOVER), (
        f"VIP on {lab.vip_holders()} after node-a stopped"
    )
    assert wait_until(lab.http_ok, timeout=FAILOVER), "the site did not answer through node-b"
    took_over = events_since(lab, "node-b", "role_changed", began)
    assert any(e["to_role"] == "MASTER" for e in took_over), took_over
    # The supervisor passed SIGTERM on: the daemon stopped cleanly and release ran.
    exited = events_since(lab, "node-a", "daemon_exited", began)
    assert [(e["status"], e["signal"]) for e in exited] == [(0, None)], exited
    assert events_since(lab, "node-a", "release_finished", began)
    assert events_since(lab, "node-a", "supervisor_exiting", began)[-1]["status"] == 0

    node_a.start()
    assert wait_until(lambda: lab.vip_holders() == ["node-a"], timeout=SETTLE), (
        f"node-a did not preempt: VIP on {lab.vip_holders()}"
    )
    assert wait_until(lambda: role(lab, "node-b") == "BACKUP", timeout=FAILOVER)
    assert wait_until(lab.http_ok, timeout=FAILOVER)


def test_killed_daemon_is_released_and_restarted(lab: ComposeLab) -> None:
    rc, pid = lab.exec("node-a", ["cat", "/run/hapair/daemon.pid"])
    assert rc == 0 and pid.strip().isdigit(), pid
    began = time.time()
    rc, out = lab.exec("node-a", ["sh", "-c", "kill -KILL $(cat /run/hapair/daemon.pid)"])
    assert rc == 0, out
    # Release removes the VIP once node-b is heard as MASTER (at most 1 s after the kill).
    assert wait_until(lambda: not lab.holds_vip("node-a"), timeout=5.0), "VIP left on node-a"
    assert wait_until(
        lambda: any(
            e["to_role"] == "MASTER" for e in events_since(lab, "node-b", "role_changed", began)
        ),
        timeout=FAILOVER,
    ), "node-b did not take over"
    exited = events_since(lab, "node-a", "daemon_exited", began)
    assert [(e["pid"], e["signal"]) for e in exited][:1] == [(int(pid), "SIGKILL")], exited
    assert wait_until(lambda: events_since(lab, "node-a", "daemon_restarting", began), timeout=5)
    assert events_since(lab, "node-a", "release_finished", began)
    # Restarted after the delay, node-a preempts back.
    assert wait_until(lambda: lab.vip_holders() == ["node-a"], timeout=SETTLE)
    rc, again = lab.exec("node-a", ["cat", "/run/hapair/daemon.pid"])
    assert rc == 0 and again.strip() != pid.strip()
    assert wait_until(lab.http_ok, timeout=FAILOVER)
