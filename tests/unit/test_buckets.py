"""Flow buckets for direct routing: weighted rendezvous hashing keeps flows where they are."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hapair.balancer.buckets import BUCKETS, assign, moved, score, shares

NAMES = [f"10.77.0.{i}:8080" for i in range(21, 41)]

pools = st.lists(
    st.tuples(st.sampled_from(NAMES), st.integers(1, 50)),
    min_size=1,
    max_size=10,
    unique_by=lambda b: b[0],
)


def test_golden_table_for_the_lab_pool() -> None:
    # Pinned: a change of hash would reshuffle every flow when the pair runs mixed versions.
    table = assign([("10.77.0.21:8080", 2), ("10.77.0.22:8080", 1)])
    assert len(table) == BUCKETS
    assert shares(table) == {"10.77.0.21:8080": 165, "10.77.0.22:8080": 91}
    assert "".join(owner[9] for owner in table[:32]) == "11121221211221211221111221112212"


@given(pools, st.randoms(use_true_random=False))
def test_deterministic_and_independent_of_order(pool: list[tuple[str, int]], rnd: object) -> None:
    shuffled = list(pool)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert assign(pool) == assign(shuffled) == assign(list(pool))


@given(pools.filter(lambda p: len(p) >= 2), st.data())
def test_removing_a_backend_moves_only_its_own_buckets(
    pool: list[tuple[str, int]], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(pool))
    before = assign(pool)
    after = assign([b for b in pool if b != gone])
    assert set(moved(before, after)) == {k for k, owner in enumerate(before) if owner == gone[0]}
    assert gone[0] not in after


@given(pools.filter(lambda p: len(p) >= 2), st.data())
def test_adding_a_backend_takes_only_what_it_wins(
    pool: list[tuple[str, int]], data: st.DataObject
) -> None:
    new = data.draw(st.sampled_from(pool))
    before = assign([b for b in pool if b != new])
    after = assign(pool)
    assert all(after[k] == new[0] for k in moved(before, after))


@settings(derandomize=True, max_examples=200)
@given(pools)
def test_shares_follow_the_weights(pool: list[tuple[str, int]]) -> None:
    # Binomial counts: allow five standard deviations (and a little for tiny expectations).
    total = sum(w for _, w in pool)
    counts = shares(assign(pool))
    for name, weight in pool:
        p = weight / total
        bound = 5 * math.sqrt(BUCKETS * p * (1 - p)) + 2
        assert abs(counts[name] - BUCKETS * p) <= bound, (name, weight, counts)


def test_shares_converge_on_a_large_table() -> None:
    counts = shares(assign([("a", 1), ("b", 2), ("c", 3), ("d", 4)], buckets=20_000))
    for name, weight in (("a", 1), ("b", 2), ("c", 3), ("d", 4)):
        assert counts[name] / 20_000 == pytest.approx(weight / 10, abs=0.01)


@given(st.integers(0, BUCKETS - 1), st.sampled_from(NAMES), st.integers(1, 1000))
def test_scores_are_positive_and_finite(bucket: int, name: str, weight: int) -> None:
    s = score(bucket, name, weight)
    assert 0 < s < math.inf
    assert score(bucket, name, weight * 2) == pytest.approx(2 * s)


@pytest.mark.parametrize(
    ("pool", "buckets", "message"),
    [
        ([], BUCKETS, "empty pool"),
        ([("a", 1), ("a", 2)], BUCKETS, "unique"),
        ([("a", 0)], BUCKETS, "weight must be >= 1"),
        ([("a", 1)], 0, "at least one bucket"),
    ],
)
def test_bad_pools_are_refused(pool: list[tuple[str, int]], buckets: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        assign(pool, buckets)


def test_moved_needs_tables_of_one_size() -> None:
    with pytest.raises(ValueError, match="different sizes"):
        moved(("a",), ("a", "b"))
