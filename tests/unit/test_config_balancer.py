"""The [balancer] section: what is accepted, and every problem with its dotted path."""

from __future__ import annotations

from typing import Any

import pytest

from hapair.config.load import validate_config
from hapair.errors import ConfigError

BASE: dict[str, Any] = {
    "node": {"name": "a", "priority": 150},
    "cluster": {"name": "c", "peers": ["10.0.0.2"]},
    "vip": [{"address": "10.0.0.50/24", "interface": "eth0"}],
}


def with_balancer(balancer: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, "balancer": balancer}


def problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        validate_config(data, check_secret=False)
    return info.value.problems


def test_a_nat_balancer_with_defaults() -> None:
    cfg = validate_config(
        with_balancer(
            {
                "kind": "nat",
                "listen": "10.0.0.50:80",
                "backend": [
                    {"address": "10.0.1.21:8080", "weight": 2},
                    {"address": "10.0.1.22:8080"},
                ],
            }
        ),
        check_secret=False,
    )
    b = cfg.balancer
    assert b is not None and b.scheduler == "rr" and b.mode == "hot" and not b.masquerade
    assert [x.weight for x in b.backend] == [2, 1]
    assert (b.check.kind, b.check.interval, b.check.rise, b.check.fall) == ("tcp", 1.0, 2, 3)


def test_every_balancer_problem_is_reported_with_its_path() -> None:
    found = problems(
        with_balancer(
            {
                "kind": "nat",
                "scheduler": "least-conn",
                "listen": "10.0.0.50",
                "backend": [{"address": "10.0.1.21:99999"}, {"address": "example:80"}],
            }
        )
    )
    paths = [p for p, _ in found]
    assert "balancer.scheduler" in paths and "balancer.listen" in paths
    assert "balancer.backend[0].address" in paths and "balancer.backend[1].address" in paths


@pytest.mark.parametrize("kind", ["dr", "proxy", "redirect", "dns"])
def test_kinds_not_yet_available_are_refused_by_name(kind: str) -> None:
    found = problems(with_balancer({"kind": kind, "listen": "10.0.0.50:80", "backend": [
        {"address": "10.0.1.21:80"}]}))  # fmt: skip
    assert found == [("balancer.kind", f"kind {kind!r} is not available in this version yet "
                      "(available: nat)")]  # fmt: skip


def test_listen_must_be_a_vip_and_backends_unique() -> None:
    found = problems(
        with_balancer(
            {
                "kind": "nat",
                "listen": "10.0.0.99:80",
                "backend": [{"address": "10.0.1.21:80"}, {"address": "10.0.1.21:80"}],
            }
        )
    )
    assert ("balancer.backend[1].address", "duplicates backend[0]") in found


def test_listen_address_must_be_one_of_the_vips() -> None:
    found = problems(
        with_balancer(
            {"kind": "nat", "listen": "10.0.0.99:80", "backend": [{"address": "10.0.1.21:80"}]}
        )
    )
    assert found == [("balancer.listen", "10.0.0.99 is not one of the VIPs")]
