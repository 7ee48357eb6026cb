"""The local balancer and its driver: detector results in, the data plane's pool out.

``LocalBalancer`` is the balancer's state: the configuration, the health board of the
backends (``hapair.balancer.health``), the data plane and whether it serves. Its synchronous
``start``, ``stop``, ``reload``, ``record`` and ``tick`` serve start-up (a hot balancer serves
before the loop runs), ``hapair release`` and tests.

``BalancerDriver`` drives that state from the node's loop: the loop calls ``tick()`` on every
step; probes run as tasks and come back through the board. Everything the data plane does
(``nginx -t`` and a reload, an ``nft`` load, ``ip -j neigh``, a process start or stop) can take
from milliseconds to seconds, so it runs on one worker thread, in order, and its outcome comes
back to the loop as a callback:

- pool changes are coalesced: while one pool is being applied, newer ones wait and only the
  newest is applied next (a superseded pool is never loaded);
- a data plane that refuses a change or gives up is told to the node (``on_failure``), which
  puts the node in FAULT so that the peer takes the VIP;
- a reload is all or nothing and awaited by its caller (the control socket), not by the loop.

The node imports this module whether or not a ``[balancer]`` is configured, so the data
plane's own modules are imported only where they are used (daemon RSS).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from hapair.balancer.health import HealthBoard, HealthChange, ProbeSpec
from hapair.clock import Clock
from hapair.config.balancer import Backend, Balancer
from hapair.config.model import Config
from hapair.errors import BalancerError
from hapair.runtime.worker import ThreadWorker, Worker

if TYPE_CHECKING:
    from hapair.balancer.plane import DataPlane, Pool
    from hapair.ops.metrics import Metrics


def backend_name(b: Backend) -> str:
    """``10.0.1.21:8080`` or ``[fd00::21]:8080``."""
    from hapair.balancer.plane import endpoint_name

    return endpoint_name(*b.address)


def probe_spec(cfg: Balancer, b: Backend) -> ProbeSpec:
    """How ``b`` is probed: its own ``check`` or the balancer's."""
    check = b.check or cfg.check
    return ProbeSpec(
        kind=check.kind, host=str(b.address[0]), port=b.address[1],
        interval=check.interval, timeout=check.timeout, rise=check.rise,
        fall=check.fall, path=check.path, expect_status=check.expect_status,
        body_contains=check.body,
    )  # fmt: skip


def build_plane(cfg: Config, log: Any = None) -> DataPlane:
    """The data plane for ``cfg.balancer`` with this instance's run directory and VIP link."""
    from hapair.balancer.kinds import make_plane

    balancer = cfg.balancer
    if balancer is None:
        raise ValueError("no [balancer] configured")
    interface = next(v.interface for v in cfg.vip if v.ip == balancer.listen[0])
    return make_plane(balancer, run_dir=cfg.balancer_run_dir, interface=interface, log=log)


def reload_blocker(old: Balancer, new: Balancer) -> str | None:
    """Why ``new`` cannot replace ``old`` without a restart, or None if it can, live."""
    fixed = [
        ("kind", old.kind, new.kind),
        ("mode", old.mode, new.mode),
        ("listen", old.listen, new.listen),
        ("protocol", old.protocol, new.protocol),
        ("proxy.engine", old.proxy_options.engine, new.proxy_options.engine),
    ]
    changed = [f"balancer.{key}" for key, a, b in fixed if a != b]
    if changed:
        return f"{', '.join(changed)} cannot change on reload: restart the daemon"
    return None


@dataclass
class Staged:
    """A reloaded ``[balancer]`` prepared on the loop, adopted once the data plane took it."""

    cfg: Balancer
    backends: dict[str, Backend]
    specs: dict[str, ProbeSpec]
    board: HealthBoard


#: ``_supervise_at`` value meaning "at the next tick" (after a start or a pool change).
NOW: Final = float("-inf")


class LocalBalancer:
    """The detector plus one data plane, for the ``[balancer]`` of any kind.

    The board and the settings belong to the loop; the data plane's own methods may block
    (``BalancerDriver`` runs them on a worker). The synchronous ``start``, ``stop``,
    ``reload``, ``record`` and ``tick`` serve start-up, ``hapair release`` and tests.
    """

    def __init__(self, cfg: Balancer, now: float, plane: DataPlane) -> None:
        self.cfg = cfg
        self.plane = plane
        self.backends = {backend_name(b): b for b in cfg.backend}
        self.specs = {name: probe_spec(cfg, b) for name, b in self.backends.items()}
        self.board = HealthBoard(self.specs, now)
        self.active = False
        #: When the data plane is next supervised; None: not until the next pool is applied.
        self._supervise_at: float | None = None

    def pool(self) -> Pool:
        """The healthy backends, never an empty pool.

        With every backend down: ``all_down = "keep"`` keeps the configured pool (clients'
        retries find a backend that recovers before the probes notice); ``"sorry"`` sends
        everyone to the sorry server. An empty pool would blackhole the VIP silently.
        """
        return self._pool_of(self.cfg, self.board, self.backends)

    @staticmethod
    def _pool_of(cfg: Balancer, board: HealthBoard, backends: dict[str, Backend]) -> Pool:
        from hapair.balancer.plane import Member, Pool, uses_weights

        healthy = board.healthy()
        if not healthy and cfg.all_down == "sorry" and cfg.sorry is not None:
            return Pool((Member(*cfg.sorry),), sorry=True)
        weighted = uses_weights(cfg.scheduler)
        return Pool(
            tuple(
                Member(*backends[n].address, backends[n].weight if weighted else 1)
                for n in healthy or list(backends)
            )
        )

    def start(self) -> None:
        """Start serving (hot: at daemon start; cold: on becoming MASTER)."""
        self.plane.apply(self.pool())
        self.active = True
        self.applied()

    def stop(self) -> None:
        """Stop serving and remove what the data plane made (cold: on leaving MASTER; at exit)."""
        self.active = False
        self._supervise_at = None
        self.plane.remove()

    def applied(self) -> None:
        """A pool was applied: supervise at the next tick (a process may have started)."""
        self._supervise_at = NOW

    def stage(self, cfg: Balancer, now: float) -> Staged:
        """Prepare ``cfg`` (same kind, mode, listen and engine): BalancerError if it needs a
        restart. Backends whose probe is unchanged keep their health (shared with the board
        in service, so probes that finish meanwhile count for both)."""
        blocker = reload_blocker(self.cfg, cfg)
        if blocker is not None:
            raise BalancerError(blocker)
        backends = {backend_name(b): b for b in cfg.backend}
        specs = {name: probe_spec(cfg, b) for name, b in backends.items()}
        board = HealthBoard(specs, now)
        board.carry_over(self.board)
        return Staged(cfg, backends, specs, board)

    def staged_pool(self, staged: Staged) -> Pool:
        """The pool ``staged`` would serve."""
        return self._pool_of(staged.cfg, staged.board, staged.backends)

    def adopt(self, staged: Staged) -> None:
        """Put ``staged`` in service (the data plane took it)."""
        self.cfg, self.backends, self.specs, self.board = (
            staged.cfg, staged.backends, staged.specs, staged.board,
        )  # fmt: skip

    def plane_reload(self, old: Balancer, new: Balancer, pool: Pool | None) -> None:
        """The data plane's half of a reload (may block): take ``new`` and, while serving,
        ``pool``; if the plane refuses, it keeps ``old`` and BalancerError is raised."""
        self.plane.reconfigure(new)
        if pool is None:
            return
        try:
            self.plane.apply(pool)
        except BalancerError:
            self.plane.reconfigure(old)
            raise

    def reload(self, cfg: Balancer, now: float) -> None:
        """Adopt a new ``[balancer]`` (same kind, mode, listen and engine); all or nothing.

        Backends whose probe is unchanged keep their health; while serving, the new pool is
        applied at once, and if the data plane refuses it (``nginx -t`` fails, say) the old
        settings and pool stay in service and BalancerError is raised.
        """
        staged = self.stage(cfg, now)
        self.plane_reload(self.cfg, cfg, self.staged_pool(staged) if self.active else None)
        self.adopt(staged)
        if self.active:
            self.applied()

    def note(self, name: str, ok: bool, reason: str, now: float) -> HealthChange | None:
        """Feed a probe result to the board only; None also for a backend a reload removed."""
        if name not in self.backends:
            return None
        return self.board.record(name, ok, reason, now)

    def record(self, name: str, ok: bool, reason: str, now: float) -> HealthChange | None:
        """Feed a probe result; on a pool change, push the new pool at once."""
        change = self.note(name, ok, reason, now)
        if change is not None and self.active:
            self.plane.apply(self.pool())
            self.applied()
        return change

    def supervise_due(self, now: float) -> bool:
        """Whether the data plane should be supervised now (only while serving)."""
        return self.active and self._supervise_at is not None and now >= self._supervise_at

    def take_supervision(self) -> None:
        """A supervision starts: not due again until ``supervised`` says when."""
        self._supervise_at = None

    def supervised(self, at: float | None) -> None:
        """The data plane wants to be looked at again at ``at`` (None: after the next pool)."""
        if self._supervise_at is None:  # a pool applied meanwhile asked for sooner
            self._supervise_at = at

    def next_deadline(self) -> float | None:
        """The earliest of the next probe and the next supervision check."""
        supervise = self._supervise_at if self.active else None
        times = [t for t in (self.board.next_deadline(), supervise) if t is not None]
        return min(times) if times else None

    def tick(self, now: float) -> None:
        """Run supervision when due (raises BalancerError when the data plane gave up)."""
        if self.supervise_due(now):
            self.take_supervision()
            self.supervised(self.plane.supervise(now))

    def status(self) -> dict[str, Any]:
        """Kind, mode, whether it serves, the data plane, and each backend's health."""
        return {
            "kind": self.cfg.kind,
            "mode": self.cfg.mode,
            "scheduler": self.cfg.scheduler,
            "active": self.active,
            "plane": self.plane.status(),
            "backends": self.board.snapshot(),
        }


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

    def tick(self, now: float) -> None:
        """Supervise the data plane when due, and start the probes that are due (the step's
        `now`)."""
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
        done = self.clock.now()
        if self.metrics is not None:
            self.metrics.probe_observed(name, done - started)
        change = self.balancer.note(name, ok, reason, done)
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
