"""[discovery] on the real pair: `hapair discover` on the client lists both daemons with
their current roles, and a handover shows in the announcements."""

from __future__ import annotations

import json
import os
import re

import pytest

from hapair.lab.addresses import LAN4
from hapair.lab.nodes import Timers
from hapair.lab.shell import wait_until
from hapair.lab.topology import Lab

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


def roles(lab: Lab) -> dict[str, tuple[str, str | None]]:
    cluster = f"lab-{lab.prefix}"
    proc = lab.python(
        "c", ["-m", "hapair", "discover", "--cluster", cluster, "--timeout", "1.5", "--json"]
    )
    return {n["node"]: (n["role"], n["address"]) for n in json.loads(proc.stdout)}


def test_discover_lists_the_running_pair_with_current_roles() -> None:
    with Lab(f"hq{os.getpid() % 10000}", timers=Timers(interval=0.05, dead_after=4)) as lab:
        for node in ("a", "b"):
            cfg = lab.hapair.config_path(node)
            cfg.write_text(cfg.read_text() + "\n[discovery]\nannounce = true\n")
        lab.hapair.start("a")
        lab.hapair.start("b")
        assert wait_until(lambda: lab.vip_holders() == ["a"], timeout=10)
        want = {"a": ("MASTER", LAN4["a"]), "b": ("BACKUP", LAN4["b"])}
        assert wait_until(lambda: roles(lab) == want, timeout=15), roles(lab)
        lab.python("a", ["-m", "hapair", "handover", "-c", str(lab.hapair.config_path("a"))])
        want = {"a": ("BACKUP", LAN4["a"]), "b": ("MASTER", LAN4["b"])}
        assert wait_until(lambda: roles(lab) == want, timeout=15), roles(lab)
        # A clean stop says goodbye: the node leaves the list.
        lab.hapair.terminate("a")
        assert wait_until(lambda: set(roles(lab)) == {"b"}, timeout=10), roles(lab)


def test_peers_auto_finds_the_peer_by_cluster_name() -> None:
    with Lab(f"hr{os.getpid() % 10000}", timers=Timers(interval=0.05, dead_after=4)) as lab:
        for node in ("a", "b"):
            cfg = lab.hapair.config_path(node)
            text = re.sub(r"(?m)^peers = .*$", 'peers = "auto"', cfg.read_text())
            cfg.write_text(text + "\n[discovery]\nannounce = true\n")
        lab.hapair.start("a")
        lab.hapair.start("b")

        def paired() -> bool:
            for node in ("a", "b"):
                status = lab.hapair.status(node)
                peers = status["peers"] if status is not None else []
                if not isinstance(peers, list) or not peers or not peers[0]["alive"]:
                    return False
            return True

        assert wait_until(paired, timeout=20)
        assert wait_until(lambda: lab.vip_holders() == ["a"], timeout=10)
        found = [e for e in lab.hapair.events() if e.name == "peer_discovered"]
        assert {(e.node, e.fields["peer"]) for e in found} == {("a", "b"), ("b", "a")}
        # Only the peer's own addresses on the VIP link (IPv4, and IPv6 where it has one).
        for e in found:
            assert LAN4[e.fields["peer"]] in e.fields["addresses"]
            assert LAN4[e.node] not in e.fields["addresses"]
        # The pair works as with configured peers: a handover moves the VIP.
        lab.python("a", ["-m", "hapair", "handover", "-c", str(lab.hapair.config_path("a"))])
        assert wait_until(lambda: lab.vip_holders() == ["b"], timeout=5)
