"""The ARP-conflict responder: grace period and rate limit, with an explicit clock."""

from __future__ import annotations

import pytest

from hapair.runtime.conflicts import ConflictResponder


def test_conflict_is_due_only_after_the_grace_period() -> None:
    r = ConflictResponder(grace=0.02, min_interval=1.0)
    r.seen("10.0.0.50", "02:00:00:00:00:01", 10.0)
    r.seen("10.0.0.50", "02:00:00:00:00:02", 10.01)  # first claimant is kept
    assert r.next_deadline() == 10.02
    assert r.due(10.019) == {}
    assert r.due(10.02) == {"10.0.0.50": "02:00:00:00:00:01"}
    assert r.due(10.03) == {} and r.next_deadline() is None


def test_answered_vip_is_not_answered_again_within_the_interval() -> None:
    r = ConflictResponder(grace=0.02, min_interval=1.0)
    r.seen("10.0.0.50", "m", 0.0)
    r.answered(list(r.due(0.02)), 0.02)
    r.seen("10.0.0.50", "m", 0.5)
    assert r.next_deadline() is None
    r.seen("10.0.0.50", "m", 1.1)
    assert r.due(1.12) == {"10.0.0.50": "m"}


def test_unanswered_conflicts_do_not_start_the_rate_limit() -> None:
    r = ConflictResponder(grace=0.02, min_interval=1.0)
    r.seen("10.0.0.50", "m", 0.0)
    assert r.due(0.02)  # the caller was no longer MASTER and did not answer
    r.seen("10.0.0.50", "m", 0.1)
    assert r.next_deadline() == pytest.approx(0.12)
