"""The loop's lateness meter: times passed in, nothing read from a clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hapair.runtime.lateness import LatenessMeter, LateWake


def test_on_time_and_early_wakes_are_not_late() -> None:
    m = LatenessMeter(0.02, now=0.0)
    assert m.observe_at(1.0, 1.0) is None
    assert m.observe_at(1.0, 0.99) is None  # an I/O wake before the deadline
    assert m.snapshot_at(1.0)["worst_lateness_last_minute"] == 0.0


def test_the_first_late_wake_is_reported_once_then_counted() -> None:
    m = LatenessMeter(0.02, now=0.0, threshold=0.010)
    assert m.observe_at(1.000, 1.005) is None  # late, under the threshold
    first = m.observe_at(2.000, 2.150)
    assert isinstance(first, LateWake) and first.expected == 2.0
    assert abs(first.lateness - 0.150) < 1e-9
    assert m.observe_at(3.000, 3.050) is None  # counted, not reported again
    snap = m.snapshot_at(3.05)
    assert snap["late_wakes"] == 2
    assert abs(float(snap["worst_lateness_last_minute"]) - 0.150) < 1e-6


def test_worst_per_interval_is_the_last_finished_interval() -> None:
    m = LatenessMeter(0.1, now=0.0)
    m.observe_at(0.01, 0.013)
    m.observe_at(0.05, 0.051)
    assert m.snapshot_at(0.09)["worst_lateness_last_interval"] == 0.0  # still in progress
    m.observe_at(0.12, 0.12)
    assert m.snapshot_at(0.12)["worst_lateness_last_interval"] == 0.003
    assert m.snapshot_at(0.25)["worst_lateness_last_interval"] == 0.0


def test_the_minute_forgets_what_is_older() -> None:
    m = LatenessMeter(0.02, now=0.0)
    m.observe_at(10.0, 10.2)
    assert abs(m.worst_last_minute_at(69.0) - 0.2) < 1e-9
    assert m.worst_last_minute_at(71.5) == 0.0
    assert m.worst_ever > 0.19


@given(
    st.lists(st.tuples(st.floats(0.0, 0.5), st.floats(0.0, 0.3)), min_size=1, max_size=60),
    st.floats(0.0, 200.0),
)
def test_worst_of_the_minute_covers_the_window(
    gaps: list[tuple[float, float]], probe: float
) -> None:
    """Whatever the wakes: the reported worst is at least the worst of the last 59 s and at
    most the worst of the last 61 s (one-second slots), and never negative."""
    m = LatenessMeter(0.02, now=0.0)
    t = 0.0
    seen: list[tuple[float, float]] = []
    for step, late in gaps:
        t += step * 10
        m.observe_at(t, t + late)
        seen.append((t + late, late))
    now = max(t + 0.3, probe)
    worst = m.worst_last_minute_at(now)
    inner = [late for at, late in seen if at > now - 59]
    outer = [late for at, late in seen if at > now - 61]
    assert worst >= max(inner, default=0.0) - 1e-12
    assert worst <= max(outer, default=0.0) + 1e-12
    assert worst >= 0.0


def test_time_spent_waiting_for_a_cpu_is_not_the_daemons_blocking() -> None:
    m = LatenessMeter(0.02, now=0.0, threshold=0.010)
    late = m.observe_at(1.0, 1.050, waited=0.045)  # a loaded host: runnable, not running
    assert late is not None and abs(late.blocked - 0.005) < 1e-9
    m.observe_at(2.0, 2.030, waited=0.0)  # a blocking call: all of it counts
    snap = m.snapshot_at(2.03)
    assert snap["worst_lateness_since_start"] == 0.05
    assert snap["worst_blocked_since_start"] == 0.03


def test_a_stopped_process_is_late_but_did_not_block() -> None:
    m = LatenessMeter(0.02, now=0.0, threshold=0.010)
    late = m.observe_at(1.0, 1.8, waited=0.0, stopped=True)  # SIGSTOP for 0.8 s, then SIGCONT
    assert late is not None and late.blocked == 0.0
    snap = m.snapshot_at(1.8)
    assert snap["worst_lateness_since_start"] == 0.8
    assert snap["worst_blocked_since_start"] == 0.0
