"""Small pure pieces: announcement schedule, the dead time, fitness, invariants."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hapair.core.announce import AnnounceSchedule, AnnounceTimers
from hapair.core.invariants import NodeView, check_invariants
from hapair.core.priority import compute_fitness
from hapair.core.roles import Role
from hapair.core.timing import dead_interval, dead_time, skew

# -- announcements ---------------------------------------------------------------------------


def drain(s: AnnounceSchedule, until: float) -> list[tuple[float, str]]:
    out: list[tuple[float, str]] = []
    for _ in range(10_000):
        nxt = s.next_deadline()
        if nxt is None or nxt > until:
            break
        out += [(nxt, r) for r in s.due(nxt)]
    return out


def test_takeover_burst_second_burst_and_refresh() -> None:
    s = AnnounceSchedule(AnnounceTimers(burst=3, spacing=0.01, second_burst_delay=2.0, refresh=10))
    s.start(100.0, "takeover")
    sent = drain(s, 125.0)
    assert [r for _, r in sent] == ["takeover"] * 3 + ["second"] * 3 + ["refresh"] * 2
    assert [round(t, 3) for t, _ in sent] == [100.0, 100.01, 100.02, 102.0, 102.01, 102.02,
                                               110.0, 120.0]  # fmt: skip


def test_stop_forgets_everything_and_zero_disables() -> None:
    s = AnnounceSchedule(AnnounceTimers(burst=2, spacing=0.01, second_burst_delay=0, refresh=0))
    s.start(0.0, "takeover")
    assert [r for _, r in drain(s, 100.0)] == ["takeover", "takeover"]
    assert s.next_deadline() is None
    s.start(200.0, "conflict")
    s.stop()
    assert s.next_deadline() is None and s.due(1e9) == []


def test_restarting_a_burst_replaces_the_pending_one() -> None:
    s = AnnounceSchedule(AnnounceTimers(burst=5, spacing=0.01, second_burst_delay=0, refresh=0))
    s.start(0.0, "conflict", second_burst=False)
    s.start(0.005, "conflict", second_burst=False)
    assert len(drain(s, 1.0)) == 5


# -- the dead time ----------------------------------------------------------------------------


def test_dead_time_is_dead_after_intervals_plus_the_priority_skew() -> None:
    assert dead_interval(0.2, 5) == pytest.approx(1.0)
    assert skew(0.2, 128) == pytest.approx(0.1)
    assert skew(0.2, 255) == pytest.approx(0.2 / 256) and skew(0.2, 0) == pytest.approx(0.2)
    assert dead_time(0.2, 5, 128) == pytest.approx(1.1)


@given(st.floats(0.01, 10.0), st.integers(3, 100), st.integers(1, 254))
def test_a_higher_priority_declares_the_peer_dead_first(
    interval: float, dead_after: int, priority: int
) -> None:
    assert dead_interval(interval, dead_after) < dead_time(interval, dead_after, priority + 1)
    assert dead_time(interval, dead_after, priority + 1) < dead_time(interval, dead_after, priority)
    assert dead_time(interval, dead_after, priority) < dead_interval(interval, dead_after + 1)


# -- fitness ---------------------------------------------------------------------------------


def test_fitness_subtracts_weights_and_clamps() -> None:
    assert compute_fitness(150, []).effective_priority == 150
    assert compute_fitness(150, [("gw", 60)]).effective_priority == 90
    assert compute_fitness(50, [("gw", 60), ("app", 60)]).effective_priority == 1
    f = compute_fitness(150, [("gw", 10), ("link", "fault")])
    assert f.fault and f.effective_priority == 0 and "link" in f.reason


@given(
    st.integers(1, 254),
    st.lists(st.tuples(st.text(min_size=1, max_size=5), st.integers(1, 253)), max_size=6),
)
def test_fitness_is_recomputed_not_counted(base: int, failing: list[tuple[str, int]]) -> None:
    """The same set of failing checks always gives the same priority, in any order."""
    forward = compute_fitness(base, failing)
    backward = compute_fitness(base, list(reversed(failing)))
    assert forward == backward
    assert 1 <= forward.effective_priority <= base
    assert compute_fitness(base, []).effective_priority == base


# -- invariants ------------------------------------------------------------------------------


def test_invariants_catch_each_violation() -> None:
    ok = [NodeView("a", Role.MASTER, True), NodeView("b", Role.BACKUP, False)]
    assert check_invariants(ok, 10.0, 0.3) == []
    assert check_invariants([NodeView("a", Role.MASTER, False)], 0, 0.3)
    assert check_invariants([NodeView("a", Role.FAULT, True)], 0, 0.3)
    two = [NodeView("a", Role.MASTER, True), NodeView("b", Role.MASTER, True)]
    assert check_invariants(two, 0.2, 0.3) == []  # make-before-break window
    assert check_invariants(two, 0.4, 0.3)
    crashed = [NodeView("a", Role.MASTER, True, running=False), NodeView("b", Role.MASTER, True)]
    assert check_invariants(crashed, 5.0, 0.3) == []
