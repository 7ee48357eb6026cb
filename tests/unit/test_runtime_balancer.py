"""The daemon's balancer glue with a recording data plane: pool changes pushed at once."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hapair.balancer.nft import NatService
from hapair.config.load import validate_config
from hapair.errors import RuntimeSetupError
from hapair.runtime.balancer import NatBalancer, check_forwarding


class RecordingPlane:
    """Stands in for NatDataPlane: remembers what would have been loaded."""

    def __init__(self) -> None:
        self.loaded: list[list[str]] = []
        self.removed = 0

    def apply(self, services: Sequence[NatService]) -> bool:
        self.loaded.append([f"{b.address}:{b.port}" for b in services[0].backends])
        return True

    def remove(self) -> bool:
        self.removed += 1
        return True


def balancer(**extra: Any) -> tuple[NatBalancer, RecordingPlane]:
    cfg = validate_config(
        {
            "node": {"name": "a", "priority": 150},
            "cluster": {"name": "c", "peers": ["10.0.0.2"]},
            "vip": [{"address": "10.0.0.50/24", "interface": "eth0"}],
            "balancer": {
                "kind": "nat",
                "listen": "10.0.0.50:80",
                "backend": [{"address": "10.0.1.21:80"}, {"address": "10.0.1.22:80"}],
                "check": {"rise": 1, "fall": 1},
                **extra,
            },
        },
        check_secret=False,
    )
    assert cfg.balancer is not None
    plane = RecordingPlane()
    return NatBalancer(cfg.balancer, 0.0, plane), plane  # type: ignore[arg-type]


def test_pool_changes_are_pushed_only_while_active() -> None:
    nat, plane = balancer()
    nat.record("10.0.1.21:80", False, "refused", 1.0)
    assert plane.loaded == []  # not started (cold mode, not MASTER): nothing loaded
    nat.start()
    assert plane.loaded == [["10.0.1.22:80"]]
    nat.record("10.0.1.21:80", True, "http 200", 2.0)
    assert plane.loaded[-1] == ["10.0.1.21:80", "10.0.1.22:80"]
    nat.stop()
    assert plane.removed == 1 and not nat.active


def test_all_down_keeps_the_pool_or_uses_the_sorry_server() -> None:
    keep, keep_plane = balancer()
    sorry, sorry_plane = balancer(all_down="sorry", sorry="10.0.1.99:8080")
    for nat in (keep, sorry):
        nat.start()
        nat.record("10.0.1.21:80", False, "refused", 1.0)
        nat.record("10.0.1.22:80", False, "refused", 1.0)
    assert keep_plane.loaded[-1] == ["10.0.1.21:80", "10.0.1.22:80"]
    assert sorry_plane.loaded[-1] == ["10.0.1.99:8080"]


def test_sorry_needs_a_server() -> None:
    from hapair.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        balancer(all_down="sorry")
    assert ("balancer.sorry", 'required when all_down = "sorry" (e.g. "10.0.1.99:80")') in (
        info.value.problems
    )


def test_forwarding_off_is_refused_with_the_fix(tmp_path: Path) -> None:
    nat, _ = balancer()
    (tmp_path / "ipv4").mkdir()
    (tmp_path / "ipv4" / "ip_forward").write_text("0\n")
    with pytest.raises(RuntimeSetupError, match=r"net\.ipv4\.ip_forward=1"):
        check_forwarding(nat.cfg, tmp_path)
    (tmp_path / "ipv4" / "ip_forward").write_text("1\n")
    check_forwarding(nat.cfg, tmp_path)
