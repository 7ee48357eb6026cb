"""Drive the local balancer from the node's loop: supervision, backend probes, cold starts.

The loop calls ``tick()`` on every step; probes run as tasks (never blocking the loop) and
come back through ``record``; a pool change is told to the node (``on_change``) for the log,
hooks and status, and a data plane that gives up is told to it as a failure (``on_failure``),
which puts the node in FAULT so that the peer takes the VIP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hapair.balancer.health import HealthChange
from hapair.errors import BalancerError
from hapair.runtime.clock import Clock

if TYPE_CHECKING:
    from hapair.ops.metrics import Metrics
    from hapair.runtime.balancer import LocalBalancer


class BalancerDriver:
    """The node's side of one ``LocalBalancer``."""

    def __init__(
        self,
        balancer: LocalBalancer,
        clock: Clock,
        log: Any,
        *,
        on_change: Callable[[str, HealthChange], None],
        on_failure: Callable[[BalancerError], None],
        wake: Callable[[], None],
        tasks: set[asyncio.Future[None]],
        metrics: Metrics | None = None,
    ) -> None:
        self.balancer = balancer
        self.clock = clock
        self.log = log
        self.on_change = on_change
        self.on_failure = on_failure
        self.wake = wake
        self.tasks = tasks
        self.metrics = metrics

    @property
    def cold(self) -> bool:
        return self.balancer.cfg.mode == "cold"

    def next_deadline(self) -> float | None:
        """The next probe or supervision check."""
        return self.balancer.next_deadline()

    def tick(self) -> None:
        """Supervise the data plane when due, and start the probes that are due."""
        now = self.clock.now()
        try:
            self.balancer.tick(now)
        except BalancerError as exc:
            self.on_failure(exc)
        for name in self.balancer.board.due(now):
            task = asyncio.ensure_future(self._probe(name))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _probe(self, name: str) -> None:
        from hapair.balancer.probes import probe

        started = self.clock.now()
        ok, reason = await probe(self.balancer.specs[name])
        if self.metrics is not None:
            self.metrics.probe_observed(name, self.clock.now() - started)
        try:
            change = self.balancer.record(name, ok, reason, self.clock.now())
        except BalancerError as exc:
            self.on_failure(exc)
            return
        finally:
            self.wake()
        if change is None:
            return
        if self.metrics is not None:
            self.metrics.backend_state(name, change.up)
        event = "backend_up" if change.up else "backend_down"
        log = self.log.info if change.up else self.log.warning
        log(event, backend=name, reason=change.reason, pool=self.balancer.board.healthy())
        self.on_change(name, change)

    def start_cold(self) -> None:
        """Cold mode, on becoming MASTER: once the VIP is on this node (an engine binds it) and
        before it is announced (the first client after the GARP is served)."""
        if not self.cold or self.balancer.active:
            return
        try:
            self.balancer.start()
            self.log.info("balancer_started", kind=self.balancer.cfg.kind, mode="cold")
        except BalancerError as exc:
            self.on_failure(exc)

    def stop_cold(self) -> None:
        """Cold mode, on leaving MASTER."""
        if not self.cold or not self.balancer.active:
            return
        try:
            self.balancer.stop()
            self.log.info("balancer_stopped", kind=self.balancer.cfg.kind, mode="cold")
        except BalancerError as exc:
            self.on_failure(exc)
