"""The namespace lab itself: build, reach, forwarding off, VIP-bound service, clean teardown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hapair.lab import shell
from hapair.lab.addresses import HOSTS, LAN4, NODES, SWITCH, VIP4, VIP6
from hapair.lab.topology import Lab, lab_namespaces

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

PREFIX = f"hpt{os.getpid() % 100000}"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(PREFIX, ipv6=True) as built:
        yield built
    assert lab_namespaces(PREFIX) == []


def probe(lab: Lab, target: str, duration: float = 0.2) -> list[dict[str, object]]:
    """Run the client probe briefly and return its samples."""
    proc = lab.exec(
        "c",
        [sys.executable, "-m", "hapair.lab.probe", "--target", target, "--duration", str(duration)],
        timeout=15,
    )
    samples: list[dict[str, object]] = json.loads(proc.stdout)["samples"]
    return samples


def test_all_namespaces_exist(lab: Lab) -> None:
    assert sorted(lab_namespaces(PREFIX)) == sorted(lab.ns(h) for h in (*HOSTS, SWITCH))


def test_nothing_created_in_the_root_namespace(lab: Lab) -> None:
    root_links = {str(link.get("ifname")) for link in shell.ip_json("link", "show")}
    assert not root_links & {f"v-{h}" for h in HOSTS}


@pytest.mark.parametrize("host", HOSTS)
def test_forwarding_is_off(lab: Lab, host: str) -> None:
    assert lab.sysctl(host, "net.ipv4.ip_forward") == "0"
    assert lab.sysctl(host, "net.ipv6.conf.all.forwarding") == "0"


@pytest.mark.parametrize("target", [h for h in HOSTS if h != "c"])
def test_client_reaches_every_host_on_the_lan(lab: Lab, target: str) -> None:
    out = lab.exec("c", ["arping", "-c", "1", "-w", "3", "-I", "eth0", LAN4[target]])
    assert "1 packets received" in out.stdout


def test_heartbeat_cable_connects_a_and_b(lab: Lab) -> None:
    out = lab.exec("a", ["arping", "-c", "1", "-w", "3", "-I", "eth1", "192.168.77.2"])
    assert "1 packets received" in out.stdout


def test_backend_service_answers(lab: Lab) -> None:
    got = probe(lab, LAN4["r1"])
    assert any(s["node"] == "r1" for s in got)


def test_service_answers_from_the_vip_once_the_vip_is_added(lab: Lab) -> None:
    # Before any node holds the VIP nothing answers, although both services are running.
    assert lab.vip_holders() == []
    assert all(s["answered"] is None for s in probe(lab, VIP4, 0.1))
    for node in NODES:
        other = "b" if node == "a" else "a"
        lab.exec(node, ["ip", "addr", "add", f"{VIP4}/24", "dev", "eth0"])
        lab.exec(node, ["ip", "addr", "add", f"{VIP6}/64", "dev", "eth0", "nodad"])
        # The client may still have the other node's MAC cached for the VIP.
        lab.exec("c", ["ip", "neigh", "flush", "dev", "eth0"])
        try:
            assert lab.vip_holders() == [node]
            for vip in (VIP4, VIP6):
                got = [s for s in probe(lab, vip) if s["answered"] is not None]
                assert got, f"no answer from {node} on {vip}"
                assert {s["node"] for s in got} == {node}
                # IP_FREEBIND + bind to the VIP: replies come from the VIP, not eth0's address.
                assert {s["source"] for s in got} == {vip}
            http = lab.exec("c", ["curl", "-s", "-m", "3", f"http://{VIP4}/"])
            assert http.stdout.strip() == node
            assert other not in lab.vip_holders()
        finally:
            lab.remove_vips(node)


def test_partition_blackholes_both_links(lab: Lab) -> None:
    lab.partition()
    try:
        failed = lab.exec("a", ["ip", "route", "get", LAN4["b"]], check=False)
        assert failed.returncode != 0
        failed = lab.exec("b", ["ip", "route", "get", "192.168.77.1"], check=False)
        assert failed.returncode != 0
    finally:
        lab.partition(heal=True)
    assert lab.exec("a", ["ip", "route", "get", LAN4["b"]]).returncode == 0


def test_link_faults_toggle_carrier(lab: Lab) -> None:
    def carrier(node: str) -> bool:
        (link,) = shell.ip_json("link", "show", "dev", "eth0", netns=lab.ns(node))
        return "NO-CARRIER" not in list(link.get("flags", []))  # type: ignore[call-overload]

    lab.set_lan("a", up=False)
    try:
        assert not carrier("a")
    finally:
        lab.set_lan("a", up=True)
    assert shell.wait_until(lambda: carrier("a"), timeout=5)


def test_down_removes_everything_and_is_idempotent() -> None:
    prefix = f"{PREFIX}x"
    built = Lab(prefix, services=False).up()
    lab_dir = built.dir
    assert len(lab_namespaces(prefix)) == len(HOSTS) + 1
    built.down()
    built.down()
    assert lab_namespaces(prefix) == []
    assert not lab_dir.exists()


def test_cli_down_from_a_fresh_process_finds_the_lab_by_prefix() -> None:
    prefix = f"{PREFIX}y"
    built = Lab(prefix).up()
    lab_dir = built.dir
    # Forget the Lab object: only the prefix is known to the new process.
    service_pids = [p.pid for p in built.procs.values()]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, "-m", "hapair", "lab", "down", "--prefix", prefix],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert lab_namespaces(prefix) == []
    assert not lab_dir.exists()
    assert not any(shell.pid_alive(pid) for pid in service_pids)
    for p in built.procs.values():
        p.popen.wait(timeout=5)


def test_refuses_a_second_lab_with_the_same_prefix(lab: Lab) -> None:
    with pytest.raises(shell.LabError, match="already exists"):
        Lab(PREFIX).up()
    assert len(lab_namespaces(PREFIX)) == len(HOSTS) + 1


def test_a_failed_second_lab_leaves_the_first_alone(lab: Lab) -> None:
    with pytest.raises(shell.LabError), Lab(PREFIX):
        pass
    Lab(PREFIX).down()
    assert len(lab_namespaces(PREFIX)) == len(HOSTS) + 1
