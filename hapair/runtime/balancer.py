"""Glue between the daemon and its balancer: detector results in, the data plane's pool out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from hapair.balancer.health import HealthBoard, HealthChange, ProbeSpec
from hapair.balancer.plane import DataPlane, Member, Pool, endpoint_name, uses_weights
from hapair.config.balancer import Backend, Balancer
from hapair.config.model import Config
from hapair.errors import BalancerError


def backend_name(b: Backend) -> str:
    """``10.0.1.21:8080`` or ``[fd00::21]:8080``."""
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
