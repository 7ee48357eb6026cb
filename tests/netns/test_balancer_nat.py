"""The `nat` data plane in the lab: the client reaches real backends through the VIP."""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Iterator

import pytest

from hapair.lab.addresses import LAN4, VIP4
from hapair.lab.topology import Lab
from tests.netns.lab_http import fetch

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

APPLY = """
import ipaddress, sys
from hapair.balancer.nat import NatBackend, NatDataPlane, NatService
sched, weights, vip, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
masquerade = sys.argv[5] == "masquerade"
backends = tuple(
    NatBackend(ipaddress.ip_address(a), 80, int(w))
    for a, w in zip(sys.argv[6:], weights.split(","))
)
plane = NatDataPlane()
if sched == "remove":
    print(plane.remove())
else:
    svc = NatService(ipaddress.ip_address(vip), port, backends, sched, masquerade=masquerade)
    plane.apply_services([svc])
"""


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(f"hn{os.getpid() % 10000}") as lab:
        # Node a is the dispatcher: it holds the VIP and forwards (NAT needs forwarding).
        lab.exec("a", ["ip", "addr", "add", f"{VIP4}/24", "dev", "eth0"])
        lab.exec("a", ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        yield lab


def apply(
    lab: Lab, node: str, scheduler: str, weights: str = "1,1", return_path: str = "masquerade"
) -> None:
    lab.python(
        node,
        ["-c", APPLY, scheduler, weights, VIP4, "8080", return_path, LAN4["r1"], LAN4["r2"]],
    )


def test_round_robin_alternates_over_the_backends(lab: Lab) -> None:
    apply(lab, "a", "rr")
    names = fetch(lab, 6)
    assert sorted(Counter(names).items()) == [("r1", 3), ("r2", 3)]
    assert all(x != y for x, y in itertools.pairwise(names))


def test_weighted_spreads_by_weight(lab: Lab) -> None:
    apply(lab, "a", "weighted", "2,1")
    counts = Counter(fetch(lab, 30))
    assert counts == {"r1": 20, "r2": 10}  # numgen inc is deterministic: exactly 2:1


def test_source_hash_keeps_a_client_on_one_backend(lab: Lab) -> None:
    apply(lab, "a", "source-hash")
    assert len(set(fetch(lab, 10))) == 1


def test_a_node_without_the_vip_does_not_translate(lab: Lab) -> None:
    apply(lab, "a", "rr")
    apply(lab, "b", "rr")  # hot mode: the same rules on the standby
    lab.exec("b", ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    rules = lab.exec("b", ["nft", "list", "table", "inet", "hapair"]).stdout
    assert "fib daddr type local" in rules
    assert sorted(set(fetch(lab, 4))) == ["r1", "r2"]  # served by a, the VIP holder


def test_remove_is_idempotent_and_stops_the_translation(lab: Lab) -> None:
    apply(lab, "a", "rr")
    assert (
        lab.python("a", ["-c", APPLY, "remove", "1,1", VIP4, "8080", "-"]).stdout.strip() == "True"
    )
    assert (
        lab.python("a", ["-c", APPLY, "remove", "1,1", VIP4, "8080", "-"]).stdout.strip() == "False"
    )
    assert fetch(lab, 1) == ["FAILED"]  # nothing listens on the VIP:8080 without the DNAT
    assert lab.has_vip("a")  # the VIP itself stays: releasing it is the daemon's job


def test_without_masquerade_the_backends_route_back_via_a_gateway_vip(lab: Lab) -> None:
    """Classic LVS-NAT: the client's address reaches the backends; their replies go back
    through a second VIP that moves with the first (the dispatcher un-NATs them)."""
    gateway = "10.77.0.51"
    lab.exec("a", ["ip", "addr", "add", f"{gateway}/24", "dev", "eth0"])
    # One-armed here (client and backends share the LAN): no ICMP redirects, or the backends
    # would learn to answer the client directly, from the wrong address.
    lab.exec("a", ["sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0",
                   "net.ipv4.conf.eth0.send_redirects=0"])  # fmt: skip
    for host in ("r1", "r2"):
        lab.exec(host, ["ip", "route", "add", f"{LAN4['c']}/32", "via", gateway])
    apply(lab, "a", "rr", return_path="route")
    assert sorted(Counter(fetch(lab, 4)).items()) == [("r1", 2), ("r2", 2)]
    rules = lab.exec("a", ["nft", "list", "table", "inet", "hapair"]).stdout
    assert "masquerade" not in rules
    # The backends saw the client's own address (no SNAT): their conntrack-free service
    # answered to 10.77.0.100 via the gateway VIP, which is why the fetch above worked.
    for host in ("r1", "r2"):
        route = lab.exec(host, ["ip", "route", "get", LAN4["c"]]).stdout
        assert f"via {gateway}" in route
