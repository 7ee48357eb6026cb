"""The election state machine, alone and as a simulated pair (fake clock, fake link)."""

from __future__ import annotations

import pytest

from hapair.core.actions import (
    AcquireVips,
    Announce,
    HandoverRefused,
    PeerLost,
    ReleaseVips,
    RoleChanged,
    SendHeartbeat,
    SplitBrain,
    Stopped,
    VipSetMismatch,
)
from hapair.core.advert import Advert, interval_ms
from hapair.core.election import (
    TRANSITIONS,
    Election,
    ElectionSettings,
    IllegalTransition,
    rank,
)
from hapair.core.events import (
    FitnessChanged,
    HandoverRequested,
    MaintenanceChanged,
    PeerHeard,
    ShutdownRequested,
    Tick,
)
from hapair.core.roles import Role
from hapair.testing.pair import PairSim

INTERVAL = 0.2
DIGEST = b"\x01" * 8


def settings(name: str, priority: int, **kw: object) -> ElectionSettings:
    base: dict[str, object] = {
        "node": name,
        "priority": priority,
        "interval": INTERVAL,
        "dead_after": 5,
        "vip_digest": DIGEST,
    }
    base.update(kw)
    return ElectionSettings(**base)  # type: ignore[arg-type]


def heard(
    node: str = "b",
    role: Role = Role.MASTER,
    prio: int = 100,
    resigning: bool = False,
    term: int = 1,
    digest: bytes = DIGEST,
    maintenance: bool = False,
) -> PeerHeard:
    advert = Advert(role, prio, prio, resigning, term, interval_ms(INTERVAL), digest, maintenance)
    return PeerHeard(node, advert, "10.0.0.2")


def roles(sim: PairSim) -> dict[str, Role]:
    return {n.name: n.role for n in sim.nodes.values()}


# -- single machine ---------------------------------------------------------------------------


def test_transition_table_is_closed_and_has_no_self_loops() -> None:
    assert all(a is not b for a, b in TRANSITIONS)
    assert (Role.FAULT, Role.MASTER) not in TRANSITIONS  # a faulty node must pass BACKUP first
    assert (Role.MASTER, Role.INIT) not in TRANSITIONS


def test_illegal_transition_raises() -> None:
    e = Election(settings("a", 100), 0.0)
    e.role = Role.FAULT
    e.fault = True
    with pytest.raises(IllegalTransition):
        e._transition(Role.MASTER, "test", 0.0, [])


def test_init_holds_down_for_one_dead_interval_then_claims() -> None:
    s = settings("a", 100)
    e = Election(s, 0.0)
    hold = s.dead_time(INTERVAL, 100)
    e.handle(Tick(), hold - 0.001)
    assert e.role is Role.INIT
    actions = e.handle(Tick(), hold)
    assert e.role is Role.MASTER
    kinds = [type(a) for a in actions]
    assert kinds[:4] == [RoleChanged, AcquireVips, Announce, SendHeartbeat]
    assert actions[0] == RoleChanged(Role.INIT, Role.MASTER, "no_master_heard", 1)


def test_init_hearing_a_master_goes_backup_even_with_higher_priority_and_no_preempt() -> None:
    e = Election(settings("a", 200, preempt=False), 0.0)
    e.handle(heard(prio=100), 0.01)
    assert e.role is Role.BACKUP
    e.handle(Tick(), 0.5)
    assert e.role is Role.BACKUP
    # the master then went silent: after its dead time the backup takes over
    e.handle(Tick(), 2.0)
    assert e.role is Role.MASTER


def test_dead_time_has_skew_favouring_higher_priority() -> None:
    s = settings("a", 254)
    assert s.dead_time(INTERVAL, 254) < s.dead_time(INTERVAL, 1)
    assert s.dead_time(INTERVAL, 254) == pytest.approx(5 * INTERVAL + 2 / 256 * INTERVAL)


def test_tie_break_is_by_node_name() -> None:
    assert rank(100, "lb2") > rank(100, "lb1")
    assert rank(101, "a") > rank(100, "z")


def test_backup_takes_over_exactly_at_dead_time() -> None:
    e = Election(settings("a", 100), 0.0)
    e.handle(heard(prio=150), 0.0)
    assert e.role is Role.BACKUP
    dead = settings("a", 100).dead_time(INTERVAL, 100)
    e.handle(Tick(), dead - 1e-6)
    assert e.role is Role.BACKUP
    actions = e.handle(Tick(), dead)
    assert PeerLost("b", "silent on every link for the dead interval") in actions
    assert e.role is Role.MASTER
    assert e.last_transition is not None and e.last_transition.reason == "peer_dead"


def test_resigning_master_is_replaced_at_once() -> None:
    e = Election(settings("a", 100), 0.0)
    e.handle(heard(prio=150), 0.0)
    actions = e.handle(heard(prio=150, resigning=True), 0.05)
    assert e.role is Role.MASTER
    assert actions[0] == RoleChanged(Role.BACKUP, Role.MASTER, "peer_resigned", 2)


def test_peer_in_fault_is_replaced_at_once() -> None:
    e = Election(settings("a", 100), 0.0)
    e.handle(heard(prio=150), 0.0)
    e.handle(heard(role=Role.FAULT, prio=0), 0.05)
    assert e.role is Role.MASTER
    assert e.last_transition is not None and e.last_transition.reason == "peer_fault"


def test_vip_set_mismatch_is_reported_once() -> None:
    e = Election(settings("a", 100), 0.0)
    first = e.handle(heard(digest=b"\x02" * 8), 0.0)
    again = e.handle(heard(digest=b"\x02" * 8), 0.2)
    assert sum(isinstance(a, VipSetMismatch) for a in first) == 1
    assert not any(isinstance(a, VipSetMismatch) for a in again)


def test_own_heartbeat_reflected_back_is_ignored() -> None:
    e = Election(settings("a", 100), 0.0)
    e.handle(heard(node="a", prio=250), 0.0)
    assert e.peers == {}
    assert e.role is Role.INIT


def test_handover_refused_when_not_master_or_alone() -> None:
    e = Election(settings("a", 100), 0.0)
    from hapair.core.events import HandoverRequested

    assert isinstance(e.handle(HandoverRequested(), 0.0)[0], HandoverRefused)
    e.handle(Tick(), 5.0)
    assert e.role is Role.MASTER
    refused = [a for a in e.handle(HandoverRequested(), 5.0) if isinstance(a, HandoverRefused)]
    assert refused and "no healthy peer" in refused[0].reason


def test_shutdown_of_lone_master_releases_and_stops_at_once() -> None:
    e = Election(settings("a", 100), 0.0)
    e.handle(Tick(), 5.0)
    actions = e.handle(ShutdownRequested(), 5.0)
    assert [type(a) for a in actions] == [ReleaseVips, Stopped]
    assert e.stopped and e.handle(Tick(), 6.0) == []


def test_fault_from_master_releases_and_tells_the_peer() -> None:
    e = Election(settings("a", 100), 0.0)
    e.handle(Tick(), 5.0)
    actions = e.handle(FitnessChanged(0, True, "carrier_lost:eth0"), 5.1)
    assert actions[:3] == [
        RoleChanged(Role.MASTER, Role.FAULT, "carrier_lost:eth0", 1),
        ReleaseVips("carrier_lost:eth0"),
        SendHeartbeat("fault"),
    ]
    e.handle(FitnessChanged(100, False, "healthy"), 6.0)
    assert e.role is Role.MASTER  # no peer alive: back to BACKUP, then claims at once
    assert [t.reason for t in [e.last_transition] if t] == ["no_master_heard"]


def test_fault_since_start_still_honours_the_hold_down() -> None:
    s = settings("a", 100)
    e = Election(s, 0.0)
    e.handle(FitnessChanged(0, True, "carrier_lost:eth0"), 0.0)
    e.handle(FitnessChanged(100, False, "healthy"), 0.1)
    assert e.role is Role.BACKUP  # healthy again, but it has not listened long enough
    hold = s.dead_time(INTERVAL, 100)
    assert e.next_deadline() <= hold
    e.handle(Tick(), hold)
    assert e.role is Role.MASTER


# -- the pair ---------------------------------------------------------------------------------


def settled_pair(**kw: object) -> PairSim:
    sim = PairSim(settings("a", 150, **kw), settings("b", 100, **kw))
    sim.run_for(3.0)
    assert roles(sim) == {"a": Role.MASTER, "b": Role.BACKUP}
    return sim


def test_simultaneous_start_elects_the_higher_priority() -> None:
    sim = settled_pair()
    assert sim.node("a").holds_vips and not sim.node("b").holds_vips
    # b never claimed at all: it heard a higher peer during hold-down
    assert [a.to_role for _, a in sim.transitions("b")] == [Role.BACKUP]


def test_equal_priority_tie_break_picks_higher_name() -> None:
    sim = PairSim(settings("lb1", 100), settings("lb2", 100))
    sim.run_for(3.0)
    assert sim.masters() == ["lb2"]


def test_crash_fails_over_within_dead_time() -> None:
    sim = settled_pair()
    t0 = sim.now
    sim.crash("a")
    sim.run_for(3.0)
    assert sim.masters() == ["b"]
    took = sim.transitions("b")[-1][0] - t0
    assert took <= settings("b", 100).dead_time(INTERVAL, 100) + 1e-9


def test_restarted_higher_node_does_not_steal_without_preempt() -> None:
    sim = settled_pair(preempt=False)
    sim.crash("a")
    sim.run_for(3.0)
    sim.restart("a")
    sim.run_for(5.0)
    assert sim.masters() == ["b"]
    assert sim.node("a").role is Role.BACKUP
    assert not any(a.to_role is Role.MASTER for _, a in sim.transitions("a")[1:])


def test_restarted_higher_node_preempts_after_delay() -> None:
    sim = settled_pair(preempt_delay=1.0)
    sim.crash("a")
    sim.run_for(3.0)
    sim.restart("a")
    t0 = sim.now
    sim.run_for(5.0)
    assert sim.masters() == ["a"]
    t_master = next(t for t, a in sim.transitions("a") if a.to_role is Role.MASTER and t >= t0)
    assert t_master - t0 >= 1.0
    # the lower node yielded within one interval of hearing the new master
    t_yield = sim.transitions("b")[-1][0]
    assert 0 <= t_yield - t_master <= INTERVAL
    assert not any(isinstance(a, SplitBrain) for _, a in sim.node("a").actions)


def test_handover_is_make_before_break_and_does_not_bounce_back() -> None:
    sim = settled_pair()
    sim.handover("a")
    sim.run_for(0.05)
    assert sim.masters() == ["b"]
    b_master = next(t for t, a in sim.transitions("b") if a.to_role is Role.MASTER)
    a_backup = sim.transitions("a")[-1][0]
    assert a_backup >= b_master  # the new master holds the VIP before the old one drops it
    assert a_backup - b_master <= 2 * sim.link.latency + 1e-9
    sim.run_for(10.0)
    assert sim.masters() == ["b"]  # the higher node does not preempt straight back


def test_sigterm_on_master_hands_over_and_stops() -> None:
    sim = settled_pair()
    t0 = sim.now
    sim.shutdown("a")
    sim.run_for(0.1)
    assert sim.masters() == ["b"]
    stopped = [t for t, a in sim.node("a").actions if isinstance(a, Stopped)]
    assert stopped and stopped[0] - t0 < 0.01
    assert not sim.node("a").running


def test_sigterm_with_silent_peer_gives_up_within_bound() -> None:
    sim = settled_pair()
    sim.partition()
    t0 = sim.now
    sim.inject("a", ShutdownRequested())
    sim.run_for(1.0)
    stopped = [t for t, a in sim.node("a").actions if isinstance(a, Stopped)]
    assert stopped and stopped[0] - t0 <= 0.6 + 1e-9


def test_partition_then_heal_one_master_within_one_interval_and_reannounce() -> None:
    sim = settled_pair()
    sim.partition()
    sim.run_for(3.0)
    assert sorted(sim.masters()) == ["a", "b"]
    sim.heal()
    t_heal = sim.now
    sim.run_for(1.0)
    assert sim.masters() == ["a"]
    t_yield = sim.transitions("b")[-1][0]
    assert t_yield - t_heal <= INTERVAL + sim.link.latency + 1e-9
    announced = [
        t for t, a in sim.node("a").actions if isinstance(a, Announce) and a.reason == "split_brain"
    ]
    assert announced and announced[0] >= t_heal


def test_fault_on_master_moves_vip_at_once_and_recovery_preempts_back() -> None:
    sim = settled_pair()
    t0 = sim.now
    sim.fitness("a", 0, True, "carrier_lost:eth0")
    sim.run_for(0.01)
    assert sim.masters() == ["b"]
    assert sim.transitions("b")[-1][0] - t0 <= 2 * sim.link.latency
    sim.fitness("a", 150, False, "healthy")
    sim.run_for(1.0)
    assert sim.masters() == ["a"]


def test_priority_drop_below_peer_lets_peer_preempt() -> None:
    sim = settled_pair()
    sim.fitness("a", 90, False, "degraded: gw")
    sim.run_for(0.5)
    assert sim.masters() == ["b"]


def test_lossy_link_never_breaks_invariants_and_recovers() -> None:
    sim = PairSim(settings("a", 150), settings("b", 100), loss=0.5, seed=7)
    sim.run_for(20.0)
    sim.set_loss(0.0)
    sim.run_for(2.0)
    assert sim.masters() == ["a"]


def test_late_timer_after_heartbeat_does_not_claim() -> None:
    # A stalled backup wakes long after its dead deadline, but a heartbeat from the live
    # master is pending: the driver delivers it first, so the timer sees a live master.
    e = Election(settings("b", 100), 0.0)
    e.handle(heard(node="a", prio=150), 0.0)
    e.handle(heard(node="a", prio=150), 5.0)  # read before evaluating the late timer
    e.handle(Tick(), 5.0)
    assert e.role is Role.BACKUP


def test_heal_where_the_loser_yields_before_the_winner_hears_it_still_reannounces() -> None:
    sim = settled_pair()
    sim.partition()
    sim.run_for(3.0)
    assert sorted(sim.masters()) == ["a", "b"]
    b_term = sim.node("b").election.term  # b took over during the partition: a newer term
    sim.link.cut = {("b", "a")}  # b hears a again, a does not hear b yet
    sim.run_for(0.5)
    assert sim.masters() == ["a"]  # b yielded to the higher master
    t_heal = sim.now
    sim.heal()
    sim.run_for(1.0)
    announced = [
        t for t, a in sim.node("a").actions if isinstance(a, Announce) and a.reason == "split_brain"
    ]
    assert announced and t_heal <= announced[0] <= t_heal + INTERVAL + 2 * sim.link.latency
    assert sim.node("a").election.term > b_term  # the survivor re-asserts with a newer term
    assert sim.node("b").election.term == sim.node("a").election.term  # and b follows it


def test_a_newer_term_from_a_backup_triggers_one_announcement_only() -> None:
    e = Election(settings("a", 150), 0.0)
    e.handle(Tick(), 5.0)
    assert e.role is Role.MASTER
    first = e.handle(heard(role=Role.BACKUP, term=e.term + 3), 5.1)
    again = e.handle(heard(role=Role.BACKUP, term=e.term - 1), 5.3)
    assert sum(isinstance(a, Announce) for a in first) == 1
    assert not any(isinstance(a, Announce) for a in again)


def test_note_link_refreshes_only_link_liveness() -> None:
    e = Election(settings("a", 100), 0.0)
    e.handle(heard(prio=150), 0.0)
    e.note_link("b", "192.168.77.2", 0.1)
    e.note_link("nobody", "x", 0.1)  # unknown sender: ignored
    assert e.peers["b"].links == {"10.0.0.2": 0.0, "192.168.77.2": 0.1}
    assert e.peers["b"].last_heard == 0.0 and "nobody" not in e.peers


# -- the transition table, case by case ----------------------------------------------------------


def in_role(start: Role, priority: int = 100, **kw: object) -> Election:
    """An election of node "a" brought into ``start`` through legal moves only."""
    e = Election(settings("a", priority, **kw), 0.0)
    if start is Role.BACKUP:
        e.handle(heard(prio=priority + 50), 0.0)
    elif start is Role.MASTER:
        e.handle(Tick(), 5.0)
    elif start is Role.FAULT:
        e.handle(FitnessChanged(0, True, "test"), 0.0)
    assert e.role is start
    return e


TABLE = [
    # (start, event, expected role, expected reason of the last transition)
    (Role.INIT, heard(role=Role.MASTER, prio=50), Role.BACKUP, "peer_is_master"),
    (Role.INIT, heard(role=Role.BACKUP, prio=200), Role.BACKUP, "higher_priority_peer"),
    (Role.INIT, heard(role=Role.BACKUP, prio=50), Role.INIT, None),
    (Role.INIT, FitnessChanged(0, True, "carrier_lost:eth0"), Role.FAULT, "carrier_lost:eth0"),
    (Role.BACKUP, heard(prio=150, resigning=True), Role.MASTER, "peer_resigned"),
    (Role.BACKUP, heard(role=Role.FAULT, prio=0), Role.MASTER, "peer_fault"),
    (Role.BACKUP, heard(role=Role.MASTER, prio=60), Role.MASTER, "preempt"),
    (Role.BACKUP, heard(role=Role.MASTER, prio=150), Role.BACKUP, "peer_is_master"),
    (Role.BACKUP, FitnessChanged(0, True, "track:gw"), Role.FAULT, "track:gw"),
    (Role.MASTER, heard(role=Role.MASTER, prio=200), Role.BACKUP, "yield_to_b"),
    (Role.MASTER, heard(role=Role.MASTER, prio=50), Role.MASTER, "no_master_heard"),
    (Role.MASTER, heard(role=Role.BACKUP, prio=200), Role.MASTER, "no_master_heard"),
    (Role.MASTER, FitnessChanged(0, True, "carrier_lost:eth0"), Role.FAULT, "carrier_lost:eth0"),
    (Role.FAULT, FitnessChanged(100, False, "healthy"), Role.BACKUP, "fitness_restored"),
    (Role.FAULT, heard(role=Role.MASTER, prio=200), Role.FAULT, "test"),
]


@pytest.mark.parametrize(("start", "event", "role", "reason"), TABLE)
def test_transition_table(start: Role, event: object, role: Role, reason: str | None) -> None:
    e = in_role(start)
    e.handle(event, 5.01 if start is Role.MASTER else 0.05)  # type: ignore[arg-type]
    assert e.role is role
    if reason is None:
        assert e.last_transition is None
    else:
        assert e.last_transition is not None and e.last_transition.reason == reason
    assert (e.last_transition is None) or (
        (e.last_transition.from_role, e.last_transition.to_role) in TRANSITIONS
    )


def test_preempt_off_keeps_a_lower_master() -> None:
    e = in_role(Role.BACKUP, preempt=False)
    e.handle(heard(role=Role.MASTER, prio=60), 5.0)
    assert e.role is Role.BACKUP


def _kinds(actions: list[object]) -> list[type]:
    return [type(a) for a in actions if isinstance(a, ReleaseVips | RoleChanged)]


def test_a_resigning_master_drops_the_vip_before_it_reports_the_role_change() -> None:
    # The peer already holds the VIP when it is heard as MASTER: until ours is removed both
    # nodes hold it, so the removal does not wait behind the role change's log line and hooks.
    e = in_role(Role.MASTER)
    e.handle(heard(role=Role.BACKUP, prio=100), 5.0)
    e.handle(ShutdownRequested(), 5.0)
    actions = e.handle(heard(role=Role.MASTER, prio=100), 5.01)
    assert _kinds(actions) == [ReleaseVips, RoleChanged]
    assert isinstance(actions[-1], Stopped)


def test_a_yielding_master_drops_the_vip_before_it_reports_the_role_change() -> None:
    e = in_role(Role.MASTER)
    actions = e.handle(heard(role=Role.MASTER, prio=200), 5.01)
    assert _kinds(actions) == [ReleaseVips, RoleChanged]
    assert e.role is Role.BACKUP


def test_fault_during_a_handover_ends_the_resignation_and_its_deadline() -> None:
    e = in_role(Role.MASTER)
    e.handle(heard(role=Role.BACKUP, prio=100), 5.0)
    e.handle(HandoverRequested(), 5.0)
    assert e.resigning
    e.handle(FitnessChanged(0, True, "carrier_lost:eth0"), 5.1)
    assert e.role is Role.FAULT and not e.resigning
    e.handle(Tick(), 30.0)  # long after the handover deadline
    assert e.next_deadline() > 30.0  # no deadline left in the past to spin on


def test_fault_during_a_graceful_shutdown_stops_at_once() -> None:
    e = in_role(Role.MASTER)
    e.handle(heard(role=Role.BACKUP, prio=100), 5.0)
    e.handle(ShutdownRequested(), 5.0)
    actions = e.handle(FitnessChanged(0, True, "carrier_lost:eth0"), 5.1)
    assert e.stopped and isinstance(actions[-1], Stopped)


# -- maintenance -------------------------------------------------------------------------------


def test_maintenance_hands_over_and_stays_backup_even_when_the_peer_dies() -> None:
    sim = settled_pair()
    assert sim.masters() == ["a"]
    sim.inject("a", MaintenanceChanged(True))
    sim.run_for(0.05)
    assert sim.masters() == ["b"]  # handed over, make-before-break (invariants checked)
    a_backup = sim.transitions("a")[-1][1]
    assert a_backup.to_role is Role.BACKUP and a_backup.reason == "handover"
    sim.crash("b")
    sim.run_for(5.0)
    assert sim.node("a").role is Role.BACKUP and sim.masters() == []  # maintenance holds


def test_maintenance_survives_a_restart_and_off_returns_to_the_election() -> None:
    sim = settled_pair()
    sim.inject("a", MaintenanceChanged(True))
    sim.run_for(0.5)
    sim.crash("a")
    sim.run_for(0.5)
    sim.restart("a")
    sim.run_for(3.0)
    assert sim.masters() == ["b"] and sim.node("a").role is Role.BACKUP
    sim.inject("a", MaintenanceChanged(False))
    sim.run_for(1.0)
    assert sim.masters() == ["a"]  # preempt is on and a outranks b


def test_a_peer_in_maintenance_is_not_a_contender() -> None:
    e = Election(settings("a", 100), 0.0)
    # b outranks a but is in maintenance: a does not wait for it and takes the VIP.
    e.handle(heard(role=Role.BACKUP, prio=200, maintenance=True), 0.0)
    out = e.handle(Tick(), 1.2)
    assert e.role is Role.MASTER
    assert any(isinstance(a, AcquireVips) for a in out)
    # A handover request finds nobody to hand to.
    refused = e.handle(HandoverRequested(), 1.3)
    assert any(isinstance(a, HandoverRefused) for a in refused)


def test_maintenance_alone_stays_master_until_a_peer_can_take_over() -> None:
    e = Election(settings("a", 100), 0.0)
    e.handle(Tick(), 1.2)
    assert e.role is Role.MASTER
    out = e.handle(MaintenanceChanged(True), 1.3)
    assert any(isinstance(a, HandoverRefused) for a in out) and e.role is Role.MASTER
    # A healthy peer appears: a resigns to it at once.
    out = e.handle(heard(role=Role.BACKUP, prio=50), 1.4)
    assert any(isinstance(a, SendHeartbeat) and a.resigning for a in out)
    out = e.handle(heard(role=Role.MASTER, prio=50, term=e.term + 1), 1.5)
    assert e.role is Role.BACKUP
    assert any(isinstance(a, ReleaseVips) for a in out)


def test_a_node_starting_in_maintenance_never_claims() -> None:
    e = Election(settings("a", 100), 0.0, maintenance=True)
    e.handle(Tick(), 5.0)
    assert e.role is Role.BACKUP
    assert e.last_transition is not None and e.last_transition.reason == "maintenance"
