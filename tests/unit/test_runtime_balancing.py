"""The balancer driver keeps the data plane off the loop: ordered jobs on a worker, newest pool
wins, failures and reload refusals come back as before (a worker the test runs by hand)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hapair.balancer.health import HealthChange
from hapair.balancer.plane import Pool
from hapair.config.load import validate_config
from hapair.errors import BalancerError
from hapair.runtime.balancing import BalancerDriver, LocalBalancer
from hapair.testing.clock import FakeClock
from hapair.testing.worker import ManualWorker

R1, R2, R3 = "10.0.1.21:80", "10.0.1.22:80", "10.0.1.23:80"


class Plane:
    """A data plane that records calls (run on the worker) and may refuse pools."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.refuse = False

    def preflight(self) -> None:
        pass

    def reconfigure(self, cfg: Any) -> None:
        self.calls.append(f"reconfigure {cfg.scheduler}")

    def apply(self, pool: Pool) -> bool:
        if self.refuse:
            raise BalancerError("nginx -t: unexpected end of file")
        self.calls.append("apply " + ",".join(m.name for m in pool.members))
        return True

    def remove(self) -> bool:
        self.calls.append("remove")
        return True

    def supervise(self, now: float) -> float | None:
        self.calls.append("supervise")
        return now + 0.25

    def status(self) -> dict[str, Any]:
        return {}


class Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def _add(self, event: str, **_: Any) -> None:
        self.events.append(event)

    info = warning = error = _add


def config(
    mode: str = "hot",
    scheduler: str = "rr",
    backends: tuple[str, ...] = (R1, R2),
    probe: str = "tcp",
) -> Any:
    cfg = validate_config(
        {
            "node": {"name": "a", "priority": 150},
            "cluster": {"name": "c", "peers": ["10.0.0.2"]},
            "vip": [{"address": "10.0.0.50/24", "interface": "eth0"}],
            "balancer": {
                "kind": "nat", "listen": "10.0.0.50:80", "mode": mode, "scheduler": scheduler,
                "backend": [{"address": b} for b in backends],
                "check": {"kind": probe, "rise": 1, "fall": 1},
            },
        },
        check_secret=False,
    )  # fmt: skip
    return cfg.balancer


class Rig:
    def __init__(self, mode: str = "hot", probe: str = "tcp") -> None:
        self.clock = FakeClock(0.0)
        self.plane = Plane()
        self.lb = LocalBalancer(config(mode, probe=probe), 0.0, self.plane)
        self.worker = ManualWorker()
        self.failures: list[str] = []
        self.started: list[bool] = []
        self.log = Log()
        self.driver = BalancerDriver(
            self.lb, self.clock, self.log,
            on_change=lambda name, change: None,
            on_failure=lambda exc: self.failures.append(str(exc)),
            wake=lambda: None, tasks=set(), worker=self.worker,
            on_started=self.started.append,
        )  # fmt: skip

    def flip(self, name: str, up: bool) -> HealthChange | None:
        change = self.lb.note(name, up, "probe", self.clock.now())
        if change is not None:
            self.driver.push()
        return change


def test_pool_changes_wait_for_the_worker_and_only_the_newest_is_applied() -> None:
    rig = Rig()
    rig.lb.active = True
    rig.flip(R1, False)  # on the worker now
    rig.flip(R1, True)  # superseded by the next one before the worker is free
    rig.flip(R2, False)
    assert rig.plane.calls == [] and len(rig.worker.queued) == 1  # nothing ran on the loop
    rig.worker.run_all()
    assert rig.plane.calls == [f"apply {R2}", f"apply {R1}"]
    assert not rig.driver.busy


def test_a_refused_pool_is_a_failure_of_the_node() -> None:
    rig = Rig()
    rig.lb.active = True
    rig.plane.refuse = True
    rig.flip(R1, False)
    rig.worker.run_all()
    assert rig.failures == ["nginx -t: unexpected end of file"]


def test_cold_start_reports_when_it_serves_and_a_stop_drops_queued_pools() -> None:
    rig = Rig(mode="cold")
    rig.driver.start_cold()
    assert rig.driver.starting and rig.plane.calls == []
    rig.flip(R1, False)  # waits behind the start
    rig.driver.stop_cold()  # leaves MASTER before the worker got to it
    rig.worker.run_all()
    assert rig.plane.calls == [f"apply {R1},{R2}", "remove"]
    assert rig.started == [True] and not rig.driver.starting
    assert rig.log.events == ["balancer_stopped"]  # stopped before its start was confirmed


def test_a_failed_cold_start_is_reported_to_both_callbacks() -> None:
    rig = Rig(mode="cold")
    rig.plane.refuse = True
    rig.driver.start_cold()
    rig.worker.run_all()
    assert rig.started == [False] and len(rig.failures) == 1


def test_supervision_is_one_job_at_a_time_and_not_a_deadline_while_on_the_worker() -> None:
    rig = Rig(probe="none")  # no probes: only supervision sets deadlines here
    rig.lb.active = True
    rig.lb.applied()
    assert rig.driver.next_deadline() == float("-inf")  # due at once after a pool
    rig.driver.tick(rig.clock.now())
    rig.driver.tick(rig.clock.now())
    assert len(rig.worker.queued) == 1
    assert rig.driver.next_deadline() is None  # a running job is no deadline (no busy loop)
    rig.worker.run_all()
    assert rig.plane.calls == ["supervise"] and rig.driver.next_deadline() == 0.25
    rig.clock.advance_to(0.3)
    rig.driver.tick(rig.clock.now())
    rig.worker.run_all()
    assert rig.plane.calls == ["supervise", "supervise"]


def test_a_reload_is_awaited_all_or_nothing_while_the_loop_runs_on() -> None:
    async def scenario() -> None:
        rig = Rig()
        rig.lb.active = True
        old = rig.lb.cfg
        rig.plane.refuse = True
        task = asyncio.ensure_future(rig.driver.reload(config(scheduler="weighted")))
        await asyncio.sleep(0)  # the reload is on the worker; the loop is free
        assert not task.done() and rig.driver.busy
        rig.flip(R1, False)  # a probe result meanwhile: applied after the reload
        rig.worker.run_next()
        with pytest.raises(BalancerError, match="nginx -t"):
            await task
        assert rig.lb.cfg is old
        assert rig.plane.calls == ["reconfigure weighted", "reconfigure rr"]
        rig.plane.refuse = False
        task = asyncio.ensure_future(
            rig.driver.reload(config(scheduler="weighted", backends=(R1, R2, R3)))
        )
        await asyncio.sleep(0)
        rig.worker.run_all()
        await task
        rig.worker.run_all()  # the pool the probe changed during the reload
        assert rig.plane.calls[-1] == f"apply {R2},{R3}"
        assert rig.lb.cfg.scheduler == "weighted" and list(rig.lb.backends) == [R1, R2, R3]
        assert rig.lb.board.snapshot()[R1]["up"] is False  # known health kept

    asyncio.run(scenario())


def test_a_reload_that_needs_a_restart_is_refused_before_the_worker() -> None:
    async def scenario() -> None:
        rig = Rig()
        with pytest.raises(BalancerError, match=r"balancer\.mode cannot change"):
            await rig.driver.reload(config(mode="cold"))
        assert rig.worker.queued == []

    asyncio.run(scenario())
