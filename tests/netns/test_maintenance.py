"""`hapair maintenance on|off` with the real pair: hand over, stay BACKUP across a restart and
a dead peer, then come back to the election."""

from __future__ import annotations

import os
import time

import pytest

from hapair.lab.nodes import Timers
from hapair.lab.shell import wait_until
from hapair.lab.topology import Lab

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

FAST = Timers(interval=0.05, dead_after=4)


def maintenance(lab: Lab, node: str, state: str) -> str:
    cfg = str(lab.hapair.config_path(node))
    return lab.python(node, ["-m", "hapair", "maintenance", state, "-c", cfg]).stdout


def test_maintenance_hands_over_and_holds_across_restart_and_peer_death() -> None:
    with Lab(f"hm{os.getpid() % 10000}", timers=FAST) as lab:
        lab.hapair.start("a")
        lab.hapair.start("b")
        assert wait_until(lambda: lab.vip_holders() == ["a"], timeout=10)

        out = maintenance(lab, "a", "on")
        assert "stays so until `off`" in out
        assert lab.vip_holders() == ["b"]
        status = lab.hapair.status("a")
        assert status is not None and status["maintenance"] is True
        history = status["transitions"]
        assert isinstance(history, list)
        assert [(t["to"], t["reason"]) for t in history][-2:] == [
            ("MASTER", "no_master_heard"),
            ("BACKUP", "handover"),
        ]
        assert history[-1]["ago"] < history[-2]["ago"]
        peer_view = lab.hapair.status("b")
        assert peer_view is not None
        assert peer_view["peers"][0]["maintenance"] is True  # type: ignore[index]

        # A restart keeps it (state file), and so does the peer's death.
        lab.hapair.terminate("a")
        lab.hapair.start("a")
        assert wait_until(lambda: lab.hapair.role("a") == "BACKUP", timeout=5)
        lab.hapair.kill("b")
        lab.remove_vips("b")
        time.sleep(1.0)  # several dead intervals (0.2 s)
        assert lab.vip_holders() == []
        assert lab.hapair.role("a") == "BACKUP"

        # Off: back to the election; with the peer gone, a takes the VIP.
        assert "normal election" in maintenance(lab, "a", "off")
        assert wait_until(lambda: lab.vip_holders() == ["a"], timeout=5)
