"""The real driver, two of them, over a fake clock and a fake lossy wire (hapair.testing.driversim).

Every wake-up is followed by the pair's invariants (a MASTER holds its VIPs, nothing else
does, two MASTERs on a healthy wire for at most one interval), so each scenario also checks
that no step on the way broke them.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address, ip_interface

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hapair.core.events import MaintenanceChanged, ShutdownRequested
from hapair.core.roles import Role
from hapair.net.vip import Vip
from hapair.net.watch import AddressRemoved, ArpConflict, CarrierChanged
from hapair.runtime.loop import LoopDriver
from hapair.testing.driversim import VIP, DriverSim

INTERVAL = 0.02
DEAD = 3 * INTERVAL


@pytest.fixture
def sim() -> Iterator[DriverSim]:
    s = DriverSim(interval=INTERVAL)
    yield s
    s.close()


def started(sim: DriverSim) -> DriverSim:
    """Both up (b half an interval later, as real starts are never in phase), a MASTER."""
    sim.start("a")
    sim.run_for(INTERVAL / 2)
    sim.start("b")
    sim.run_until_true(lambda: sim.masters() == ["a"] and sim.host("b").role is Role.BACKUP, 1.0)
    sim.run_for(0.5)
    return sim


def test_the_higher_priority_node_becomes_the_only_master_and_holds_the_vip(
    sim: DriverSim,
) -> None:
    started(sim)
    assert sim.masters() == ["a"]
    assert sim.host("a").kernel.addresses == {Vip(ip_interface(VIP), "eth0")}
    assert not sim.host("b").holds_vip
    assert sim.host("a").announcer.announced  # the takeover was announced


def test_an_idle_master_wakes_once_per_interval_and_the_backup_on_arrival(
    sim: DriverSim,
) -> None:
    started(sim)
    a, b = sim.host("a"), sim.host("b")
    assert not sim.node("a").reads_on_arrival()  # lazy: reads its peer at its own tick
    assert sim.node("b").reads_on_arrival()  # the dead timer runs from the arrival
    before = a.wakes, b.wakes
    sim.run_for(1.0)
    assert a.wakes - before[0] == round(1.0 / INTERVAL)
    assert b.wakes - before[1] > round(1.0 / INTERVAL)


def test_the_backup_takes_over_within_the_dead_time_after_a_crash(sim: DriverSim) -> None:
    started(sim)
    sim.crash("a")
    took = sim.run_until_true(lambda: sim.masters() == ["b"], 1.0)
    assert took <= DEAD + INTERVAL
    assert sim.host("b").holds_vip


def test_a_restarted_node_is_accepted_at_once_and_preempts_back(sim: DriverSim) -> None:
    started(sim)
    sim.crash("a")
    sim.run_until_true(lambda: sim.masters() == ["b"], 1.0)
    sim.run_for(0.3)
    sim.start("a")  # a new process: a new run nonce, no memory of the old one
    took = sim.run_until_true(
        lambda: sim.masters() == ["a"] and sim.host("b").role is Role.BACKUP, 1.0
    )
    assert took <= 2 * INTERVAL  # the bound for accepting a new run


def test_a_recorded_stream_of_a_dead_run_never_holds_the_backup_down(sim: DriverSim) -> None:
    started(sim)
    b = sim.host("b")
    assert b.transport is not None
    recorded = list(b.transport.received)
    assert len(recorded) > 40  # a's heartbeats on both links
    sim.crash("a")
    for chunk in range(0, len(recorded), 2):  # two datagrams per interval, as a's were
        sim.replay("b", recorded[chunk : chunk + 2])
        sim.run_for(INTERVAL)
    assert sim.masters() == ["b"]
    # b went MASTER once, within the dead time, and never back.
    b_roles = [role for _t, name, role in sim.roles if name == "b"]
    assert b_roles[-2:] == [Role.BACKUP, Role.MASTER]


def test_a_partition_gives_two_masters_and_healing_leaves_one(sim: DriverSim) -> None:
    started(sim)
    sim.partition()
    sim.run_until_true(lambda: len(sim.masters()) == 2, 1.0)
    sim.run_for(0.5)
    sim.heal()
    took = sim.run_until_true(lambda: sim.masters() == ["a"], 1.0)
    assert took <= 2 * INTERVAL
    assert not sim.host("b").holds_vip


def test_one_cut_link_changes_nothing(sim: DriverSim) -> None:
    started(sim)
    sim.cut("lan")
    changes = len(sim.roles)
    sim.run_for(2.0)
    assert len(sim.roles) == changes
    assert sim.masters() == ["a"]


def test_ten_percent_loss_on_both_links_causes_no_failover(sim: DriverSim) -> None:
    started(sim)
    sim.set_loss(0.10)
    changes = len(sim.roles)
    sim.run_for(10.0)
    assert len(sim.roles) == changes
    assert sim.wire.lost > 0


def test_sigterm_hands_over_without_a_gap(sim: DriverSim) -> None:
    started(sim)
    sim.post("a", ShutdownRequested())
    took = sim.run_until_true(lambda: sim.masters() == ["b"] and sim.host("b").holds_vip, 1.0)
    assert took <= 2 * INTERVAL
    sim.run_for(0.5)
    assert not sim.host("a").running
    assert not sim.host("a").holds_vip


def test_maintenance_moves_the_vip_and_keeps_it_away(sim: DriverSim) -> None:
    started(sim)
    sim.post("a", MaintenanceChanged(True))
    sim.run_until_true(lambda: sim.masters() == ["b"], 1.0)
    sim.run_for(1.0)
    assert sim.masters() == ["b"]
    assert sim.host("a").role is Role.BACKUP


def quiet(sim: DriverSim) -> DriverSim:
    """Started, and past the takeover's second GARP burst (the next refresh is 10 s away)."""
    started(sim)
    sim.run_for(3.0)
    a = sim.host("a")
    before = len(a.announcer.announced)
    sim.run_for(1.0)
    assert len(a.announcer.announced) == before
    return sim


def test_a_vip_removed_behind_the_masters_back_is_restored(sim: DriverSim) -> None:
    quiet(sim)
    a = sim.host("a")
    vip = Vip(ip_interface(VIP), "eth0")
    announced = len(a.announcer.announced)
    sim.check = False  # the VIP is missing until the next wake-up restores it
    a.kernel.addresses.clear()
    a.netlink.queued.append(AddressRemoved("eth0", ip_interface(VIP)))
    sim.run_for(0.001)  # the netlink reader wakes the node at once
    assert vip in a.kernel.addresses
    sim.check = True
    sim.run_for(0.1)
    assert len(a.announcer.announced) > announced


def test_carrier_loss_on_the_vip_interface_faults_the_master(sim: DriverSim) -> None:
    started(sim)
    a = sim.host("a")
    a.kernel.up["eth0"] = False
    a.netlink.queued.append(CarrierChanged("eth0", up=False))
    took = sim.run_until_true(lambda: sim.masters() == ["b"], 1.0)
    assert took <= 2 * INTERVAL
    assert sim.host("a").role is Role.FAULT


def test_an_arp_conflict_is_answered_by_a_master_that_stays(sim: DriverSim) -> None:
    quiet(sim)
    a = sim.host("a")
    announced = len(a.announcer.announced)
    a.arp.queued.append(ArpConflict(IPv4Address(VIP.split("/")[0]), bytes(6)))
    sim.run_for(1.0)
    assert sim.masters() == ["a"]
    assert len(a.announcer.announced) > announced


def test_a_vip_that_cannot_be_added_faults_the_node_and_the_peer_serves(sim: DriverSim) -> None:
    sim.host("a").kernel.fail_adds = 100
    sim.start("a")
    sim.run_for(INTERVAL / 2)
    sim.start("b")
    sim.run_until_true(lambda: sim.masters() == ["b"], 1.0)
    sim.run_for(0.5)
    assert sim.masters() == ["b"]
    assert sim.host("a").role is Role.FAULT


FAULTS = st.sampled_from(["crash_a", "crash_b", "partition", "heal", "loss", "cut_lan", "wait"])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    schedule=st.lists(st.tuples(FAULTS, st.floats(0.0, 0.3)), min_size=1, max_size=8),
    seed=st.integers(0, 2**16),
)
def test_invariants_hold_through_any_schedule_of_faults(
    schedule: list[tuple[str, float]], seed: int
) -> None:
    """Crashes, restarts, partitions and loss in any order: after every wake the invariants
    hold (DriverSim raises at once otherwise), and once healed the pair has one master."""
    sim = DriverSim(interval=INTERVAL, seed=seed)
    try:
        started(sim)
        for fault, wait in schedule:
            if fault.startswith("crash_"):
                name = fault[-1]
                if sim.host(name).running:
                    sim.crash(name)
                else:
                    sim.start(name)
            elif fault == "partition":
                sim.partition()
            elif fault == "heal":
                sim.heal()
            elif fault == "loss":
                sim.set_loss(0.3)
            elif fault == "cut_lan":
                sim.cut("lan")
            sim.run_for(wait)
        sim.heal()
        for name in ("a", "b"):
            if not sim.host(name).running:
                sim.start(name)
        sim.run_until_true(lambda: len(sim.masters()) == 1, DEAD + 4 * INTERVAL)
        sim.run_for(0.5)
        assert sim.masters() == ["a"]  # preempt: the preferred node serves
    finally:
        sim.close()


def test_the_checker_catches_a_broken_invariant(sim: DriverSim) -> None:
    """The simulation's own check can fail: a VIP on the BACKUP is reported at the next wake."""
    started(sim)
    sim.host("b").kernel.addresses.add(Vip(ip_interface(VIP), "eth0"))
    with pytest.raises(AssertionError, match="b is BACKUP but holds VIPs"):
        sim.run_for(INTERVAL * 2)


def test_the_asyncio_loop_refuses_a_clock_that_is_not_its_own(sim: DriverSim) -> None:
    """Deadlines are armed as loop times; a fake clock is for `wake_at`, never for the loop."""
    node = sim.start("a")
    with pytest.raises(TypeError, match="MonotonicClock"):
        LoopDriver(node)


class FakeCpuWait:
    """The loop thread's CPU wait, as schedstat would say it: 5 s already at start-up."""

    def __init__(self) -> None:
        self.total = 5.0

    def now(self) -> float:
        return self.total

    def close(self) -> None:
        pass


def test_the_cpu_wait_of_the_start_up_is_not_charged_to_the_first_wake(sim: DriverSim) -> None:
    """A first wake 50 ms late with no CPU wait since `begin` was blocked for 50 ms, whatever
    the thread waited for a CPU before (a busy start-up)."""
    node = sim.start("a")
    node.cpu = FakeCpuWait()  # type: ignore[assignment]
    node.begin(sim.now)
    sim.clock.advance_to(node.deadline + 0.05)
    node.wake_at(sim.now, full=True)
    assert node.lateness.worst_blocked == pytest.approx(0.05)


def test_a_flood_of_forged_heartbeats_from_the_peers_address_changes_nothing(
    sim: DriverSim,
) -> None:
    """An attacker forging the peer's LAN address floods both nodes with datagrams of the
    right size, magic, version and cluster and a wrong MAC: 250 per interval with a guessed
    filter token (the filter drops them) and 250 with the token sniffed from a genuine packet
    (they reach the HMAC and are refused). Nothing changes role; a MASTER that finds more than
    a handful in one drain reads on arrival again, and at its tick once the flood is over."""
    started(sim)
    a, b = sim.host("a"), sim.host("b")
    assert a.transport is not None and b.transport is not None
    changes = len(sim.roles)
    wakes = a.wakes
    for _ in range(50):
        for host, source in ((a, "10.99.0.2"), (b, "10.99.0.1")):
            assert host.transport is not None
            genuine = host.transport.received[-1][0]  # what a sniffer saw last
            sniffed = genuine[:-32] + bytes(32)
            blind = sniffed[:20] + b"\x5a" * 4 + sniffed[24:]
            sim.replay(host.name, [(blind, source, "lan")] * 250 + [(sniffed, source, "lan")] * 250)
        sim.run_for(INTERVAL)
    assert a.wakes - wakes > 50  # a burst of > 8 datagrams: read on arrival, not at the tick
    assert len(sim.roles) == changes
    assert sim.masters() == ["a"]
    assert sum(a.transport.drops().values()) >= 50 * 250  # the filter's work
    assert sim.node("a").heartbeats.rejected()["bad_mac"] >= 50 * 250  # the HMAC's
    sim.run_for(0.2)
    assert not sim.node("a").reads_on_arrival()  # the flood is over: lazy again
