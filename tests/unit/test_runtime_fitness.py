"""The node's fitness from carrier and checks, without a kernel (hapair.runtime.fitness)."""

from __future__ import annotations

from hapair.config.model import CommandTrack, InterfaceTrack
from hapair.net.tracking import Check, build_checks
from hapair.runtime.fitness import FitnessTracker


def checks() -> list[Check]:
    return build_checks(
        (
            InterfaceTrack(kind="interface", interface="eth1", weight=50),
            CommandTrack(kind="command", command=["/bin/true"], weight=20),
        ),
        now=0.0,
    )


def tracker(carrier: dict[str, bool] | None = None) -> FitnessTracker:
    t = FitnessTracker(150, ["eth0"], checks())
    t.start(carrier or {"eth0": True, "eth1": True})
    return t


def test_all_up_is_the_base_priority() -> None:
    fit = tracker().evaluate()
    assert (fit.effective_priority, fit.fault, fit.reason) == (150, False, "healthy")


def test_it_watches_the_vip_and_the_tracked_interfaces() -> None:
    assert tracker().interfaces() == {"eth0", "eth1"}


def test_a_tracked_interface_down_at_start_fails_its_check_at_once() -> None:
    fit = tracker({"eth0": True, "eth1": False}).evaluate()
    assert (fit.effective_priority, fit.fault) == (100, False)
    assert fit.reason == "degraded: interface:eth1"


def test_carrier_loss_on_the_vip_interface_is_a_fault_and_its_return_heals() -> None:
    t = tracker()
    assert t.carrier_changed("eth0", False)
    fit = t.evaluate()
    assert (fit.fault, fit.reason) == (True, "fault: carrier_lost:eth0")
    assert t.carrier_changed("eth0", True)
    assert not t.evaluate().fault


def test_only_news_is_news() -> None:
    t = tracker()
    assert not t.carrier_changed("eth0", True)  # no change
    assert not t.carrier_changed("eth9", False)  # not an interface that matters


def test_weights_add_up_and_the_result_stays_in_range() -> None:
    t = tracker()
    t.carrier_changed("eth1", False)
    t.checks[1].state.up = False  # the command check fell
    assert t.evaluate().effective_priority == 80
    t.base = 60
    assert t.evaluate().effective_priority == 1  # clamped: a degraded node can still serve
