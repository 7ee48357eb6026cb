"""Properties of the pair that must hold for every sequence of faults (hypothesis)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hapair.core.election import ElectionSettings
from hapair.core.roles import Role
from hapair.testing.pair import PairSim

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("run"), st.floats(min_value=0.0, max_value=3.0)),
        st.tuples(st.just("partition"), st.just(0.0)),
        st.tuples(st.just("heal"), st.just(0.0)),
        st.tuples(
            st.sampled_from(["crash", "restart", "handover", "fault", "unfault"]),
            st.sampled_from([0.0, 1.0]),
        ),
        st.tuples(st.just("loss"), st.sampled_from([0.0, 0.3, 0.9])),
        st.tuples(st.just("priority"), st.integers(min_value=1, max_value=254)),
    ),
    max_size=25,
)


def make(prio_a: int, prio_b: int, preempt: bool, interval: float) -> PairSim:
    def s(name: str, prio: int) -> ElectionSettings:
        return ElectionSettings(name, prio, interval, 3, preempt, 0.0, b"d" * 8)

    return PairSim(s("a", prio_a), s("b", prio_b), latency=0.002)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prio_a=st.integers(1, 254),
    prio_b=st.integers(1, 254),
    preempt=st.booleans(),
    interval=st.sampled_from([0.02, 0.2, 1.0]),
    ops=OPS,
    seed=st.integers(0, 2**16),
)
def test_one_master_once_the_link_is_healthy(
    prio_a: int,
    prio_b: int,
    preempt: bool,
    interval: float,
    ops: list[tuple[str, float]],
    seed: int,
) -> None:
    """Invariants hold after every step; after healing everything, exactly one master."""
    sim = make(prio_a, prio_b, preempt, interval)
    sim.rng.seed(seed)
    for op, arg in ops:
        name = "a" if arg == 0.0 else "b"
        if op == "run":
            sim.run_for(arg)
        elif op == "partition":
            sim.partition()
        elif op == "heal":
            sim.heal()
        elif op == "loss":
            sim.set_loss(arg)
        elif op == "crash" and sim.node(name).running:
            sim.crash(name)
        elif op == "restart" and not sim.node(name).running:
            sim.restart(name)
        elif op == "handover" and sim.node(name).running:
            sim.handover(name)
        elif op == "fault" and sim.node(name).running:
            sim.fitness(name, 0, True)
        elif op == "unfault" and sim.node(name).running:
            sim.fitness(name, sim.node(name).settings.priority, False)
        elif op == "priority" and sim.node("a").running:
            sim.fitness("a", int(arg), False)
    # Heal everything, then give it one dead interval plus a settle interval.
    sim.heal()
    sim.set_loss(0.0)
    for n in ("a", "b"):
        if not sim.node(n).running:
            sim.restart(n)
        if sim.node(n).election.fault:
            sim.fitness(n, sim.node(n).settings.priority, False)
    sim.run_for(10 * interval + 2.0)
    assert len(sim.masters()) == 1
    master = sim.node(sim.masters()[0])
    assert master.holds_vips
    assert all(n.role is Role.BACKUP for n in sim.nodes.values() if n is not master)
