"""Probe command lines and check construction for [[track]] entries."""

from __future__ import annotations

from hapair.config.load import validate_config
from hapair.config.model import Config, GatewayTrack
from hapair.net.tracking import build_checks, describe, gateway_argv

BASE = {
    "node": {"name": "a", "priority": 150},
    "cluster": {"name": "c", "peers": ["10.0.0.2"]},
    "vip": [{"address": "10.0.0.50/24", "interface": "eth0"}],
}


def config_with(tracks: list[dict[str, object]]) -> Config:
    return validate_config({**BASE, "track": tracks}, check_secret=False)


def test_gateway_probes_use_ping_or_arping_with_a_whole_second_timeout() -> None:
    cfg = config_with(
        [
            {"kind": "gateway", "address": "10.0.0.1", "weight": 10, "timeout": "300ms",
             "interval": "1s"},
            {"kind": "gateway", "address": "10.0.0.1", "method": "arp", "interface": "eth0",
             "weight": "fault"},
        ]
    )  # fmt: skip
    icmp, arp = cfg.track
    assert isinstance(icmp, GatewayTrack) and isinstance(arp, GatewayTrack)
    assert gateway_argv(icmp) == ("ping", "-q", "-n", "-c", "1", "-W", "1", "10.0.0.1")
    assert gateway_argv(arp) == (
        "arping", "-q", "-c", "1", "-C", "1", "-w", "1", "-i", "eth0", "10.0.0.1",
    )  # fmt: skip


def test_checks_start_healthy_with_stable_names() -> None:
    cfg = config_with(
        [
            {"kind": "interface", "interface": "eth1", "weight": 20},
            {"kind": "command", "command": ["/bin/true"], "weight": "fault"},
        ]
    )
    checks = build_checks(cfg.track, now=5.0)
    assert [c.name for c in checks] == ["interface:eth1", "command[1]"]
    assert [describe(i, t) for i, t in enumerate(cfg.track)] == ["interface:eth1", "command[1]"]
    assert all(not c.failing and c.state.next_due == 5.0 for c in checks)
    assert checks[0].argv == () and checks[1].argv == ("/bin/true",)
