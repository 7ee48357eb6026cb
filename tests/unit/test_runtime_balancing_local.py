"""The daemon's balancer glue with a recording data plane: pool changes pushed at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hapair.balancer.nat import check_forwarding
from hapair.balancer.plane import Pool
from hapair.config.load import validate_config
from hapair.errors import BalancerError
from hapair.runtime.balancing import LocalBalancer


class RecordingPlane:
    """Stands in for a data plane: remembers what would have been served."""

    def __init__(self, fail_supervision_at: float | None = None) -> None:
        self.loaded: list[list[str]] = []
        self.weights: list[list[int]] = []
        self.removed = 0
        self.supervised: list[float] = []
        self.fail_supervision_at = fail_supervision_at

    def preflight(self) -> None:
        pass

    def reconfigure(self, cfg: Any) -> None:
        self.cfg = cfg

    def apply(self, pool: Pool) -> bool:
        self.loaded.append([m.name for m in pool.members])
        self.weights.append([m.weight for m in pool.members])
        return True

    def remove(self) -> bool:
        self.removed += 1
        return True

    def supervise(self, now: float) -> float | None:
        self.supervised.append(now)
        if self.fail_supervision_at is not None and now >= self.fail_supervision_at:
            raise BalancerError("engine died 6 times within 60 s")
        return now + 0.25

    def status(self) -> dict[str, Any]:
        return {}


def balancer(**extra: Any) -> tuple[LocalBalancer, RecordingPlane]:
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
    return LocalBalancer(cfg.balancer, 0.0, plane), plane


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
    with pytest.raises(BalancerError, match=r"net\.ipv4\.ip_forward=1"):
        check_forwarding(nat.cfg, tmp_path)
    (tmp_path / "ipv4" / "ip_forward").write_text("1\n")
    check_forwarding(nat.cfg, tmp_path)


def test_weights_reach_the_plane_only_for_weighted_schedulers() -> None:
    weighted_backends = [{"address": "10.0.1.21:80", "weight": 3}, {"address": "10.0.1.22:80"}]
    for scheduler, expected in (("rr", [1, 1]), ("random", [1, 1]),
                                ("weighted", [3, 1]), ("source-hash", [3, 1])):  # fmt: skip
        lb, plane = balancer(scheduler=scheduler, backend=weighted_backends)
        lb.start()
        assert plane.weights[-1] == expected, scheduler


def test_supervision_runs_only_while_serving_and_its_failure_surfaces() -> None:
    lb, plane = balancer()
    plane.fail_supervision_at = 5.0
    lb.tick(1.0)
    assert plane.supervised == []  # not serving: nothing to look after
    lb.start()
    lb.tick(1.0)
    lb.tick(1.1)  # not due yet
    assert plane.supervised == [1.0]
    lb.tick(1.3)
    assert plane.supervised == [1.0, 1.3]
    with pytest.raises(BalancerError, match="6 times"):
        lb.tick(5.0)


def reloaded(lb: LocalBalancer, **changes: Any) -> Any:
    """A new [balancer] like the fixture's, with ``changes``."""
    return balancer(**changes)[0].cfg


def test_a_reload_applies_the_new_pool_and_keeps_known_health() -> None:
    lb, plane = balancer()
    lb.start()
    lb.record("10.0.1.21:80", False, "refused", 1.0)
    assert plane.loaded[-1] == ["10.0.1.22:80"]
    new = reloaded(
        lb,
        backend=[
            {"address": "10.0.1.21:80"},
            {"address": "10.0.1.22:80", "weight": 5},
            {"address": "10.0.1.23:80"},
        ],
        scheduler="weighted",
    )
    lb.reload(new, 2.0)
    assert lb.board.snapshot()["10.0.1.21:80"]["reason"] == "refused"
    # .21 is still down (same probe), .23 is new and starts in the pool, weights now count.
    assert plane.loaded[-1] == ["10.0.1.22:80", "10.0.1.23:80"]
    assert plane.weights[-1] == [5, 1]


def test_a_refused_reload_keeps_the_running_balancer() -> None:
    lb, plane = balancer()
    lb.start()

    def refuse(pool: Pool) -> bool:
        raise BalancerError("nginx -t: unexpected end of file")

    plane.apply = refuse  # type: ignore[method-assign]
    old_cfg = lb.cfg
    with pytest.raises(BalancerError, match="nginx -t"):
        lb.reload(reloaded(lb, backend=[{"address": "10.0.1.29:80"}]), 2.0)
    assert lb.cfg is old_cfg and list(lb.backends) == ["10.0.1.21:80", "10.0.1.22:80"]


def test_kind_mode_and_listen_need_a_restart() -> None:
    lb, _ = balancer()
    with pytest.raises(BalancerError, match=r"balancer\.mode cannot change on reload"):
        lb.reload(reloaded(lb, mode="cold"), 1.0)
