"""Replay guard: strict per-sender high-water marks, size cap, persistence."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hapair.wire.replay import MAX_SENDERS, ReplayGuard


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # (epoch, seq) sequence for one sender -> accepted?
        ([(1, 1)], [True]),
        ([(1, 1), (1, 2), (1, 3)], [True, True, True]),
        ([(1, 5), (1, 5)], [True, False]),  # exact replay
        ([(1, 5), (1, 4)], [True, False]),  # reordered / old
        ([(1, 5), (1, 7), (1, 6)], [True, True, False]),  # late packet after a gap
        ([(1, 5), (2, 0)], [True, True]),  # restart: new epoch resets seq
        ([(2, 0), (1, 99)], [True, False]),  # packet from the previous boot
        ([(0, 0)], [True]),  # first packet from a sender is always accepted
    ],
)
def test_accept_table(steps: list[tuple[int, int]], expected: list[bool]) -> None:
    guard = ReplayGuard()
    assert [guard.accept("beta", epoch, seq) for epoch, seq in steps] == expected


def test_senders_are_tracked_independently() -> None:
    guard = ReplayGuard()
    assert guard.accept("a", 1, 10)
    assert guard.accept("b", 1, 1)
    assert not guard.accept("a", 1, 10)
    assert guard.mark("a") == (1, 10)
    assert guard.mark("b") == (1, 1)
    assert guard.mark("c") is None


def test_refused_packet_does_not_move_the_mark() -> None:
    guard = ReplayGuard()
    guard.accept("a", 3, 3)
    guard.accept("a", 2, 100)
    assert guard.mark("a") == (3, 3)


def test_cap_refuses_new_senders_without_evicting_known_ones() -> None:
    guard = ReplayGuard()
    for i in range(MAX_SENDERS):
        assert guard.accept(f"n{i}", 1, 1)
    assert not guard.accept("newcomer", 1, 1)
    assert len(guard) == MAX_SENDERS
    assert guard.mark("n0") == (1, 1)
    assert guard.accept("n0", 1, 2)
    assert not guard.accept("n0", 1, 1)


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ReplayGuard(capacity=0)


def test_snapshot_is_a_copy() -> None:
    guard = ReplayGuard()
    guard.accept("a", 1, 1)
    snap = guard.snapshot()
    snap["a"] = (0, 0)
    assert guard.mark("a") == (1, 1)


def test_restore_closes_replay_after_restart() -> None:
    before = ReplayGuard()
    before.accept("peer", 5, 40)
    persisted = json.dumps(before.snapshot())

    after = ReplayGuard()
    after.restore(json.loads(persisted))  # tuples come back as lists
    assert not after.accept("peer", 5, 40)
    assert not after.accept("peer", 5, 39)
    assert after.accept("peer", 5, 41)


def test_restore_never_lowers_a_mark() -> None:
    guard = ReplayGuard()
    guard.accept("peer", 5, 40)
    guard.restore({"peer": (5, 10), "other": (1, 1)})
    assert guard.snapshot() == {"peer": (5, 40), "other": (1, 1)}


@pytest.mark.parametrize(
    "marks",
    [
        {"": (1, 1)},
        {"a": (1,)},
        {"a": (1, -1)},
        {"a": (2**64, 0)},
        {"a": ("1", 1)},
        {"a": (True, 1)},
        {f"n{i}": (1, 1) for i in range(MAX_SENDERS + 1)},
    ],
)
def test_restore_rejects_bad_marks_and_applies_nothing(marks: dict[str, object]) -> None:
    guard = ReplayGuard()
    guard.accept("keep", 1, 1)
    with pytest.raises(ValueError):
        guard.restore(marks)  # type: ignore[arg-type]
    assert guard.snapshot() == {"keep": (1, 1)}


PAIRS = st.lists(
    st.tuples(st.integers(min_value=0, max_value=4), st.integers(min_value=0, max_value=6)),
    max_size=60,
)


@given(PAIRS)
def test_accepted_subsequence_is_strictly_increasing(pairs: list[tuple[int, int]]) -> None:
    guard = ReplayGuard()
    accepted: list[tuple[int, int]] = []
    for epoch, seq in pairs:
        if guard.accept("peer", epoch, seq):
            # Larger than everything accepted so far, not merely the previous one.
            assert all((epoch, seq) > earlier for earlier in accepted)
            accepted.append((epoch, seq))
        else:
            assert accepted and (epoch, seq) <= max(accepted)
    assert accepted == sorted(set(accepted))
    if accepted:
        assert guard.mark("peer") == accepted[-1]


@given(st.lists(st.tuples(st.sampled_from("abc"), PAIRS.map(tuple)), max_size=5), PAIRS)
def test_senders_never_influence_each_other(
    noise: list[tuple[str, tuple[tuple[int, int], ...]]], pairs: list[tuple[int, int]]
) -> None:
    alone = ReplayGuard()
    mixed = ReplayGuard()
    for sender, seq_pairs in noise:
        for epoch, seq in seq_pairs:
            mixed.accept(sender, epoch, seq)
    for epoch, seq in pairs:
        assert alone.accept("peer", epoch, seq) == mixed.accept("peer", epoch, seq)


@given(PAIRS, PAIRS)
def test_restored_guard_behaves_like_the_original(
    first: list[tuple[int, int]], then: list[tuple[int, int]]
) -> None:
    original = ReplayGuard()
    for epoch, seq in first:
        original.accept("peer", epoch, seq)
    restored = ReplayGuard()
    restored.restore(original.snapshot())
    for epoch, seq in then:
        assert original.accept("peer", epoch, seq) == restored.accept("peer", epoch, seq)
