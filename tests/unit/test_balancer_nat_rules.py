"""nftables rendering for the `nat` balancer: golden text and scheduler maps."""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hapair.balancer.nat import NatBackend, NatService, render_rule, render_ruleset, slots

VIP = ipaddress.ip_address("10.77.0.50")
R1 = NatBackend(ipaddress.ip_address("10.77.0.21"), 8080, weight=2)
R2 = NatBackend(ipaddress.ip_address("10.77.0.22"), 8080, weight=1)


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [
        ("rr", "numgen inc mod 2 map { 0 : 10.77.0.21 . 8080, 1 : 10.77.0.22 . 8080 }"),
        ("random", "numgen random mod 2 map { 0 : 10.77.0.21 . 8080, 1 : 10.77.0.22 . 8080 }"),
        ("weighted", "numgen inc mod 3 map { 0-1 : 10.77.0.21 . 8080, 2 : 10.77.0.22 . 8080 }"),
        (
            "source-hash",
            "jhash ip saddr mod 3 seed 0x68617061 map "
            "{ 0-1 : 10.77.0.21 . 8080, 2 : 10.77.0.22 . 8080 }",
        ),
    ],
)
def test_each_scheduler_renders_its_map(scheduler: str, expected: str) -> None:
    rule = render_rule(NatService(VIP, 80, (R1, R2), scheduler))  # type: ignore[arg-type]
    assert rule == (f"ip daddr 10.77.0.50 fib daddr type local tcp dport 80 dnat ip to {expected}")


def test_ruleset_replaces_only_hapairs_table_atomically() -> None:
    text = render_ruleset([NatService(VIP, 80, (R1, R2), masquerade=True)])
    lines = text.splitlines()
    assert lines[:3] == ["table inet hapair", "delete table inet hapair", "table inet hapair {"]
    assert "ct status dnat ip daddr { 10.77.0.21, 10.77.0.22 } masquerade" in text
    assert text.count("table inet") == 3 and "table ip " not in text


def test_empty_pool_and_mixed_families_are_refused() -> None:
    with pytest.raises(ValueError, match="empty pool"):
        render_rule(NatService(VIP, 80, ()))
    v6 = NatBackend(ipaddress.ip_address("fd77::21"), 80)
    with pytest.raises(ValueError, match="IPv4"):
        render_rule(NatService(VIP, 80, (v6,)))


@given(
    st.lists(st.integers(1, 20), min_size=1, max_size=12),
    st.sampled_from(["rr", "random", "weighted", "source-hash"]),
)
def test_slots_cover_the_modulus_without_gaps_and_by_weight(
    weights: list[int], scheduler: str
) -> None:
    backends = [NatBackend(VIP, 80 + i, w) for i, w in enumerate(weights)]
    ranges = slots(backends, scheduler)  # type: ignore[arg-type]
    assert ranges[0][0] == 0
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges))
    widths = [hi - lo + 1 for lo, hi, _ in ranges]
    assert widths == (weights if scheduler in ("weighted", "source-hash") else [1] * len(weights))
