"""Drive the local balancer from the node's loop: supervision, backend probes, cold starts.

The loop calls ``tick()`` on every step; probes run as tasks and come back through the
board. Everything the data plane does (``nginx -t`` and a reload, an ``nft`` load, ``ip -j
neigh``, a process start or stop) can take from milliseconds to seconds, so it runs on one
worker thread, in order, and its outcome comes back to the loop as a callback:

- pool changes are coalesced: while one pool is being applied, newer ones wait and only the
  newest is applied next (a superseded pool is never loaded);
- a data plane that refuses a change or gives up is told to the node (``on_failure``), which
  puts the node in FAULT so that the peer takes the VIP;
- a reload is all or nothing and awaited by its caller (the control socket), not by the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hapair.balancer.health import HealthChange
from hapair.clock import Clock
from hapair.errors import BalancerError
from hapair.runtime.worker import ThreadWorker, Worker

if TYPE_CHECKING:
    from hapair.config.balancer import Balancer
    from hapair.ops.metrics import Metrics
    from hapair.runtime.balancer import LocalBalancer


def _failure(error: BaseException) -> BalancerError:
    if isinstance(error, BalancerError):
        return error
    return BalancerError(f"data plane failed: {type(error).__name__}: {error}")


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
        worker: Worker | None = None,
        on_started: Callable[[bool], None] | None = None,
    ) -> None:
        self.balancer = balancer
        self.clock = clock
        self.log = log
        self.on_change = on_change
        self.on_failure = on_failure
        self.wake = wake
        self.tasks = tasks
        self.metrics = metrics
        self.worker: Worker = worker or ThreadWorker("hapair-balancer")
        #: Told whether a cold start succeeded (the node holds the VIP's announcement until).
        self.on_started = on_started
        self._applying = False  # a pool is on the worker
        self._dirty = False  # a newer pool waits for it
        self._reloading = False
        self._starting = False
        self._reload_lock = asyncio.Lock()

    @property
    def cold(self) -> bool:
        return self.balancer.cfg.mode == "cold"

    @property
    def starting(self) -> bool:
        """A cold start is on the worker (the VIP is not announced before it serves)."""
        return self._starting

    @property
    def busy(self) -> bool:
        """Something is on the worker or waits for it."""
        return self._applying or self._dirty or self._reloading

    def next_deadline(self) -> float | None:
        """The next probe or supervision check."""
        return self.balancer.next_deadline()

    # -- the loop's side ------------------------------------------------------------------

    def tick(self) -> None:
        """Supervise the data plane when due, and start the probes that are due."""
        now = self.clock.now()
        b = self.balancer
        if not self._reloading and b.supervise_due(now):
            b.take_supervision()
            plane = b.plane
            self.worker.submit(lambda: plane.supervise(now), self._supervised)
        for name in b.board.due(now):
            task = asyncio.ensure_future(self._probe(name))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _probe(self, name: str) -> None:
        from hapair.balancer.probes import probe

        spec = self.balancer.specs.get(name)
        if spec is None:
            return
        started = self.clock.now()
        ok, reason = await probe(spec)
        if self.metrics is not None:
            self.metrics.probe_observed(name, self.clock.now() - started)
        change = self.balancer.note(name, ok, reason, self.clock.now())
        self.wake()
        if change is None:
            return
        self.push()
        if self.metrics is not None:
            self.metrics.backend_state(name, change.up)
        event = "backend_up" if change.up else "backend_down"
        log = self.log.info if change.up else self.log.warning
        log(event, backend=name, reason=change.reason, pool=self.balancer.board.healthy())
        self.on_change(name, change)

    def push(self) -> None:
        """Serve the current pool (if serving): now, or after the pool on the worker."""
        if not self.balancer.active:
            return
        if self._applying or self._reloading:
            self._dirty = True  # the newest pool is taken when the worker is free
            return
        self._dirty = False
        self._applying = True
        pool = self.balancer.pool()
        plane = self.balancer.plane
        self.worker.submit(lambda: plane.apply(pool), self._applied)

    def _applied(self, _: object, error: BaseException | None) -> None:
        self._applying = False
        starting, self._starting = self._starting, False
        if error is not None:
            self.on_failure(_failure(error))
        elif self.balancer.active:
            self.balancer.applied()
            if starting:
                self.log.info("balancer_started", kind=self.balancer.cfg.kind, mode="cold")
        if starting and self.on_started is not None:
            self.on_started(error is None)
        if self._dirty:
            self.push()
        self.wake()

    def _supervised(self, at: float | None, error: BaseException | None) -> None:
        if error is not None:
            self.on_failure(_failure(error))
        else:
            self.balancer.supervised(at)
        self.wake()

    # -- cold mode ----------------------------------------------------------------------------

    def start_cold(self) -> None:
        """Cold mode, on becoming MASTER: once the VIP is on this node (an engine binds it).
        The node holds the VIP's announcement until ``on_started`` (the first client after
        the GARP is served)."""
        if not self.cold or self.balancer.active:
            return
        self.balancer.active = True
        self._starting = True
        self.push()

    def stop_cold(self) -> None:
        """Cold mode, on leaving MASTER: the pools still queued are dropped."""
        if not self.cold or not self.balancer.active:
            return
        b = self.balancer
        b.active = False
        b.take_supervision()
        self._dirty = False
        plane = b.plane
        self.worker.submit(plane.remove, self._stopped)

    def _stopped(self, _: object, error: BaseException | None) -> None:
        if error is not None:
            self.on_failure(_failure(error))
        else:
            self.log.info("balancer_stopped", kind=self.balancer.cfg.kind, mode="cold")
        self.wake()

    # -- reload and exit ------------------------------------------------------------------------

    async def reload(self, cfg: Balancer) -> None:
        """Adopt a new ``[balancer]``; all or nothing (BalancerError keeps the old one).

        The loop runs on meanwhile; pools that change during the reload are applied after it.
        """
        async with self._reload_lock:
            b = self.balancer
            staged = b.stage(cfg, self.clock.now())
            old = b.cfg
            pool = b.staged_pool(staged) if b.active else None
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def finished(_: object, error: BaseException | None) -> None:
                if done.done():
                    return
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(_failure(error))

            self._reloading = True
            try:
                self.worker.submit(lambda: b.plane_reload(old, cfg, pool), finished)
                await done
                b.adopt(staged)
                if b.active:
                    b.applied()
            finally:
                self._reloading = False
                # Probes that finished during the reload may have changed the pool.
                self.push()
                self.wake()

    async def close(self) -> None:
        """Finish the job in hand (bounded) and stop the worker; the caller then stops the
        balancer itself (at exit, nothing else runs)."""
        await self.worker.close()
