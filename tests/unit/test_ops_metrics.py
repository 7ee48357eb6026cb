"""Metrics: each call the daemon makes shows up as the right sample in the private registry."""

from __future__ import annotations

import pytest

from hapair.core.roles import Role
from hapair.ops.metrics import MAX_PEER_LABELS, PROBE_BUCKETS, Metrics, transition_reason
from hapair.testing.clock import FakeClock
from hapair.wire.heartbeat import RejectReason

VIP = "10.0.0.10/24"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def m(clock: FakeClock) -> Metrics:
    return Metrics(cluster="web", node="a", clock=clock, vips=[VIP, "fd00::10/64"])


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("no_master_heard", "no_master_heard"),
        ("peer_dead", "peer_dead"),
        ("preempt", "preempt"),
        ("handover", "handover"),
        ("fitness_restored", "fitness_restored"),
        ("yield_to_b", "yield_to_peer"),
        ("fault: carrier_lost:eth0, gw", "fault"),
        ("fault", "fault"),
        ("vip_add_failed:10.0.0.10/24", "vip_add_failed"),
        ("balancer_failed", "balancer_failed"),
        ("something new", "other"),
        ("", "other"),
    ],
)
def test_transition_reasons_are_folded_to_a_fixed_set(reason: str, label: str) -> None:
    assert transition_reason(reason) == label


def test_info_names_version_cluster_and_node(m: Metrics) -> None:
    from hapair import __version__

    assert value(m, "hapair_info", version=__version__, cluster="web", node="a") == 1.0


def test_role_is_one_for_the_current_role_only(m: Metrics) -> None:
    assert m.role is Role.INIT
    assert value(m, "hapair_role", role="INIT") == 1.0
    m.role_changed(Role.INIT, Role.BACKUP, "higher_priority_peer")
    m.role_changed(Role.BACKUP, Role.MASTER, "peer_dead")
    assert m.role is Role.MASTER
    assert {r.name: value(m, "hapair_role", role=r.name) for r in Role} == {
        "INIT": 0.0,
        "BACKUP": 0.0,
        "MASTER": 1.0,
        "FAULT": 0.0,
    }


def test_transitions_are_counted_by_from_to_and_folded_reason(m: Metrics) -> None:
    m.role_changed(Role.BACKUP, Role.MASTER, "peer_dead")
    m.role_changed(Role.MASTER, Role.BACKUP, "yield_to_b")
    m.role_changed(Role.BACKUP, Role.MASTER, "peer_dead")
    name = "hapair_transitions_total"
    assert value(m, name, **{"from": "BACKUP", "to": "MASTER", "reason": "peer_dead"}) == 2.0
    assert value(m, name, **{"from": "MASTER", "to": "BACKUP", "reason": "yield_to_peer"}) == 1.0


def test_heartbeats_sent_and_received_per_peer(m: Metrics, clock: FakeClock) -> None:
    for _ in range(3):
        m.heartbeat_sent()
    m.heartbeat_received("b", clock.now())
    m.heartbeat_received("b", clock.now())
    assert value(m, "hapair_heartbeats_sent_total") == 3.0
    assert value(m, "hapair_heartbeats_received_total", peer="b") == 2.0


def test_every_reject_reason_is_present_from_the_start(m: Metrics) -> None:
    for reason in RejectReason:
        assert value(m, "hapair_heartbeats_rejected_total", reason=reason.value) == 0.0
    m.heartbeat_rejected(RejectReason.BAD_MAC)
    m.heartbeat_rejected(RejectReason.BAD_MAC)
    m.heartbeat_rejected(RejectReason.REPLAY)
    assert value(m, "hapair_heartbeats_rejected_total", reason="bad_mac") == 2.0
    assert value(m, "hapair_heartbeats_rejected_total", reason="replay") == 1.0


def test_peer_last_seen_is_computed_at_each_scrape(m: Metrics, clock: FakeClock) -> None:
    assert value(m, "hapair_peer_last_seen_seconds", peer="b") is None  # never heard
    m.heartbeat_received("b", clock.now())
    clock.advance_to(1001.5)
    assert value(m, "hapair_peer_last_seen_seconds", peer="b") == 1.5
    clock.advance_to(1004.0)
    assert value(m, "hapair_peer_last_seen_seconds", peer="b") == 4.0
    m.heartbeat_received("b", clock.now())
    assert value(m, "hapair_peer_last_seen_seconds", peer="b") == 0.0


def test_peer_labels_are_capped(m: Metrics, clock: FakeClock) -> None:
    names = [f"n{i}" for i in range(MAX_PEER_LABELS + 3)]
    for name in names:
        m.heartbeat_received(name, clock.now())
    kept = names[:MAX_PEER_LABELS]
    for name in kept:
        assert value(m, "hapair_heartbeats_received_total", peer=name) == 1.0
    assert value(m, "hapair_heartbeats_received_total", peer="_other") == 3.0
    assert value(m, "hapair_peer_last_seen_seconds", peer=names[-1]) is None
    m.heartbeat_received(kept[0], clock.now())  # a known peer is still counted as itself
    assert value(m, "hapair_heartbeats_received_total", peer=kept[0]) == 2.0


def test_garps_and_conflicts(m: Metrics) -> None:
    m.garp_sent(2)
    m.garp_sent(0)
    m.garp_sent(3)
    m.vip_conflict()
    assert value(m, "hapair_garps_sent_total") == 5.0
    assert value(m, "hapair_vip_conflicts_total") == 1.0


def test_vips_held_are_bounded_by_the_configured_set(m: Metrics) -> None:
    assert value(m, "hapair_vip_held", vip=VIP) == 0.0
    m.vips_held([VIP, "192.0.2.99/32"])  # an unconfigured VIP never becomes a label
    assert value(m, "hapair_vip_held", vip=VIP) == 1.0
    assert value(m, "hapair_vip_held", vip="fd00::10/64") == 0.0
    assert value(m, "hapair_vip_held", vip="192.0.2.99/32") is None
    m.set_vips(["10.0.0.11/24"])  # reload: the old VIP's series goes away
    assert value(m, "hapair_vip_held", vip=VIP) is None
    assert value(m, "hapair_vip_held", vip="10.0.0.11/24") == 0.0
    m.vips_held([])
    assert value(m, "hapair_vip_held", vip="10.0.0.11/24") == 0.0


def test_backend_state_changes_are_counted_once(m: Metrics) -> None:
    m.set_backends(["web1", "web2"], up=["web1", "web2"])
    assert value(m, "hapair_backend_up", backend="web1") == 1.0
    m.backend_state("web1", False)
    m.backend_state("web1", False)  # repeated: no new transition
    m.backend_state("web1", True)
    assert value(m, "hapair_backend_up", backend="web1") == 1.0
    assert value(m, "hapair_backend_transitions_total", backend="web1", direction="down") == 1.0
    assert value(m, "hapair_backend_transitions_total", backend="web1", direction="up") == 1.0
    assert value(m, "hapair_backend_transitions_total", backend="web2", direction="up") is None


def test_unknown_backends_are_ignored_and_removed_ones_vanish(m: Metrics) -> None:
    m.set_backends(["web1", "web2"], up=["web1"])
    assert value(m, "hapair_backend_up", backend="web2") == 0.0
    m.backend_state("ghost", True)
    m.probe_observed("ghost", 0.01)
    assert value(m, "hapair_backend_up", backend="ghost") is None
    assert value(m, "hapair_probe_duration_seconds_count", backend="ghost") is None
    m.backend_state("web2", True)
    m.probe_observed("web2", 0.01)
    m.set_backends(["web1"], up=["web1"])  # reload dropped web2
    for name in ("hapair_backend_up", "hapair_probe_duration_seconds_count"):
        assert value(m, name, backend="web2") is None
    assert value(m, "hapair_backend_transitions_total", backend="web2", direction="up") is None
    assert value(m, "hapair_backend_up", backend="web1") == 1.0


def test_probe_durations_fall_into_buckets(m: Metrics) -> None:
    m.set_backends(["web1"], up=["web1"])
    for seconds in (0.0004, 0.003, 0.2, 30.0):
        m.probe_observed("web1", seconds)
    name = "hapair_probe_duration_seconds"
    assert value(m, f"{name}_count", backend="web1") == 4.0
    assert value(m, f"{name}_sum", backend="web1") == pytest.approx(30.2034)
    assert value(m, f"{name}_bucket", backend="web1", le="0.001") == 1.0
    assert value(m, f"{name}_bucket", backend="web1", le="0.005") == 2.0
    assert value(m, f"{name}_bucket", backend="web1", le="0.25") == 3.0
    assert value(m, f"{name}_bucket", backend="web1", le=str(PROBE_BUCKETS[-1])) == 3.0
    assert value(m, f"{name}_bucket", backend="web1", le="+Inf") == 4.0


def test_two_instances_do_not_share_a_registry(clock: FakeClock) -> None:
    a = Metrics(cluster="web", node="a", clock=clock)
    b = Metrics(cluster="web", node="b", clock=clock)
    a.heartbeat_sent()
    assert value(a, "hapair_heartbeats_sent_total") == 1.0
    assert value(b, "hapair_heartbeats_sent_total") == 0.0


def test_kernel_drops_per_link_are_read_at_each_scrape(m: Metrics) -> None:
    assert value(m, "hapair_heartbeat_dropped_total", link="10.0.0.12") is None
    drops = {"10.0.0.12": 7, "192.168.77.2": 0}
    m.watch_drops(lambda: drops)
    assert value(m, "hapair_heartbeat_dropped_total", link="10.0.0.12") == 7.0
    drops["10.0.0.12"] = 90
    assert value(m, "hapair_heartbeat_dropped_total", link="10.0.0.12") == 90.0
    assert value(m, "hapair_heartbeat_dropped_total", link="192.168.77.2") == 0.0


def test_a_failing_drop_source_does_not_fail_the_scrape(m: Metrics) -> None:
    def closed() -> dict[str, int]:
        raise OSError("socket closed meanwhile")

    m.watch_drops(closed)
    assert value(m, "hapair_role", role="INIT") == 1.0
    assert value(m, "hapair_heartbeat_dropped_total", link="10.0.0.12") is None


def test_link_errors_state_failures_and_control_refusals_are_read_at_each_scrape(
    m: Metrics,
) -> None:
    assert value(m, "hapair_state_save_failures_total") == 0.0  # present before any source
    errors: dict[str, str] = {}
    failures = [0]
    rejected = {"access": 1}
    m.watch_links(lambda: errors)
    m.watch_state(lambda: failures[0])
    m.watch_control(lambda: rejected)
    assert value(m, "hapair_heartbeat_link_error", link="192.168.77.2") is None
    errors["192.168.77.2"] = "no route to 192.168.77.2"
    failures[0] = 3
    rejected["malformed"] = 2
    assert value(m, "hapair_heartbeat_link_error", link="192.168.77.2") == 1.0
    assert value(m, "hapair_state_save_failures_total") == 3.0
    assert value(m, "hapair_control_rejected_total", kind="access") == 1.0
    assert value(m, "hapair_control_rejected_total", kind="malformed") == 2.0
    errors.clear()
    assert value(m, "hapair_heartbeat_link_error", link="192.168.77.2") is None


def test_a_source_that_races_the_loop_does_not_fail_the_scrape(m: Metrics) -> None:
    def mutated() -> dict[str, int]:
        raise RuntimeError("dictionary changed size during iteration")

    m.watch_control(mutated)
    assert value(m, "hapair_role", role="INIT") == 1.0
    assert value(m, "hapair_control_rejected_total", kind="access") is None


def test_loop_lateness_is_a_histogram(m: Metrics) -> None:
    m.loop_lateness(0.0002)
    m.loop_lateness(0.003)
    assert value(m, "hapair_loop_lateness_seconds_bucket", le="0.0005") == 1.0
    assert value(m, "hapair_loop_lateness_seconds_bucket", le="0.005") == 2.0
    assert value(m, "hapair_loop_lateness_seconds_count") == 2.0
