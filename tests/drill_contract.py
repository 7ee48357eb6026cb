"""What every drill must show, on any testbed: the namespace lab and the compose lab are held
to one contract (only their outage bounds differ, with their timers)."""

from __future__ import annotations

from hapair.lab.drill import DrillResult, format_result
from hapair.lab.nodes import PEER

#: A planned switchover is make-before-break: it should cost the client (almost) nothing.
HANDOVER_BOUND_MS = 1000.0


def assert_survived(result: DrillResult, outage_bound_ms: float) -> None:
    """The survivor took over, the client was answered again, and never by two masters."""
    text = format_result(result)
    assert result.recovered, text
    assert result.new_master == PEER[result.old_master], text
    assert result.probes > 0, text
    assert result.outage_ms < outage_bound_ms, text
    assert result.split_brain_ms == 0.0, text
    if result.scenario == "kill":
        # Release (ExecStopPost, or the container's supervisor) removed the stale VIP.
        assert result.stale_vip_ms is not None, text
    if result.scenario == "handover":
        assert result.outage_ms < HANDOVER_BOUND_MS, text


def assert_partition_healed(result: DrillResult, outage_bound_ms: float) -> None:
    """Both sides were master during the partition; after the heal, one is, and it answers."""
    text = format_result(result)
    assert result.dual_master_ms > 0, text
    assert result.recovered, text
    assert result.new_master in PEER, text
    assert result.heal_to_one_master_ms is not None, text
    assert result.heal_to_answer_ms is not None, text
    assert result.heal_to_answer_ms < outage_bound_ms, text
    assert result.outage_ms < outage_bound_ms, text
