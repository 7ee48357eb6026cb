"""The shared probing piece: rise/fall hysteresis and the probe schedule of one target."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hapair.probing import Hysteresis, ProbeState

# -- hysteresis ------------------------------------------------------------------------------


def test_hysteresis_needs_fall_failures_and_rise_successes() -> None:
    h = Hysteresis(rise=2, fall=3)
    assert [h.record(False) for _ in range(3)] == [False, False, True] and not h.up
    assert [h.record(True), h.record(False), h.record(True), h.record(True)] == [
        False, False, False, True,
    ]  # fmt: skip
    assert h.up


@pytest.mark.parametrize(("rise", "fall"), [(0, 1), (1, 0), (-1, 3)])
def test_hysteresis_rejects_zero(rise: int, fall: int) -> None:
    with pytest.raises(ValueError):
        Hysteresis(rise=rise, fall=fall)
    with pytest.raises(ValueError):
        ProbeState(rise, fall, interval=1.0, now=0.0)


@given(st.lists(st.booleans(), max_size=80), st.integers(1, 5), st.integers(1, 5), st.booleans())
def test_state_flips_exactly_after_rise_successes_or_fall_failures(
    results: list[bool], rise: int, fall: int, initially_up: bool
) -> None:
    """A model: count the results since the last one that agreed with the state (or flip)."""
    h = Hysteresis(rise, fall, initially_up=initially_up)
    up, against = initially_up, 0
    for ok in results:
        against = 0 if ok == up else against + 1
        flips = against == (rise if ok else fall) and ok != up
        assert h.record(ok) is flips
        if flips:
            up, against = ok, 0
        assert h.up is up


# -- the probe schedule ----------------------------------------------------------------------


def test_first_probe_is_due_at_once_and_never_overlaps() -> None:
    p = ProbeState(rise=1, fall=1, interval=2.0, now=10.0)
    assert p.up and p.next_deadline() == 10.0
    assert not p.start(9.9)
    assert p.start(10.0)
    assert p.in_flight and p.next_deadline() is None
    assert not p.start(50.0)  # still in flight, however late


def test_next_probe_is_one_interval_after_the_result() -> None:
    p = ProbeState(rise=2, fall=2, interval=2.0, now=0.0)
    assert p.start(0.0)
    assert p.record(False, 0.5) is False
    assert not p.in_flight and p.next_deadline() == 2.5
    assert not p.start(2.4) and p.start(2.5)
    assert p.record(False, 3.0) is True and not p.up
    assert p.next_deadline() == 5.0


def test_up_can_be_set_for_targets_known_without_probing() -> None:
    p = ProbeState(rise=3, fall=3, interval=1.0, now=0.0)
    p.up = False
    assert not p.up and not p.hysteresis.up
    assert p.record(True, 1.0) is False  # rise still needs three successes


@given(
    st.lists(st.tuples(st.booleans(), st.floats(0.0, 5.0)), max_size=40),
    st.integers(1, 4),
    st.integers(1, 4),
    st.floats(0.1, 3.0),
)
def test_schedule_and_state_agree_with_a_plain_hysteresis(
    steps: list[tuple[bool, float]], rise: int, fall: int, interval: float
) -> None:
    """Probing changes only *when* results come, never what they make of the state."""
    p = ProbeState(rise, fall, interval, now=0.0)
    h = Hysteresis(rise, fall)
    now = 0.0
    for ok, delay in steps:
        now = max(now, p.next_due)
        assert p.start(now) and not p.start(now)
        now += delay
        assert p.record(ok, now) is h.record(ok)
        assert p.up is h.up and p.next_deadline() == pytest.approx(now + interval)
