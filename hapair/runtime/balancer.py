"""Glue between the daemon and its balancer: detector results in, the data plane's pool out."""

from __future__ import annotations

from typing import Any

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
    from hapair.balancer.factory import make_plane

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


class LocalBalancer:
    """The detector plus one data plane, for the ``[balancer]`` of any kind."""

    def __init__(self, cfg: Balancer, now: float, plane: DataPlane) -> None:
        self.cfg = cfg
        self.plane = plane
        self.backends = {backend_name(b): b for b in cfg.backend}
        self.specs = {name: probe_spec(cfg, b) for name, b in self.backends.items()}
        self.board = HealthBoard(self.specs, now)
        self.active = False
        self._supervise_at: float | None = None

    def pool(self) -> Pool:
        """The healthy backends, never an empty pool.

        With every backend down: ``all_down = "keep"`` keeps the configured pool (clients'
        retries find a backend that recovers before the probes notice); ``"sorry"`` sends
        everyone to the sorry server. An empty pool would blackhole the VIP silently.
        """
        healthy = self.board.healthy()
        if not healthy and self.cfg.all_down == "sorry" and self.cfg.sorry is not None:
            return Pool((Member(*self.cfg.sorry),), sorry=True)
        weighted = uses_weights(self.cfg.scheduler)
        return Pool(
            tuple(
                Member(*self.backends[n].address, self.backends[n].weight if weighted else 1)
                for n in healthy or list(self.backends)
            )
        )

    def start(self) -> None:
        """Start serving (hot: at daemon start; cold: on becoming MASTER)."""
        self.plane.apply(self.pool())
        self.active = True
        self._supervise_at = None

    def stop(self) -> None:
        """Stop serving and remove what the data plane made (cold: on leaving MASTER; at exit)."""
        self.active = False
        self.plane.remove()

    def reload(self, cfg: Balancer, now: float) -> None:
        """Adopt a new ``[balancer]`` (same kind, mode, listen and engine); all or nothing.

        Backends whose probe is unchanged keep their health; while serving, the new pool is
        applied at once, and if the data plane refuses it (``nginx -t`` fails, say) the old
        settings and pool stay in service and BalancerError is raised.
        """
        blocker = reload_blocker(self.cfg, cfg)
        if blocker is not None:
            raise BalancerError(blocker)
        old_cfg, old_board, old_backends, old_specs = (
            self.cfg,
            self.board,
            self.backends,
            self.specs,
        )
        self.cfg = cfg
        self.backends = {backend_name(b): b for b in cfg.backend}
        self.specs = {name: probe_spec(cfg, b) for name, b in self.backends.items()}
        self.board = HealthBoard(self.specs, now)
        self.board.carry_over(old_board)
        self.plane.reconfigure(cfg)
        if not self.active:
            return
        try:
            self.plane.apply(self.pool())
        except BalancerError:
            self.cfg, self.board, self.backends, self.specs = (
                old_cfg, old_board, old_backends, old_specs,
            )  # fmt: skip
            self.plane.reconfigure(old_cfg)
            raise

    def record(self, name: str, ok: bool, reason: str, now: float) -> HealthChange | None:
        """Feed a probe result; on a pool change, push the new pool at once."""
        change = self.board.record(name, ok, reason, now)
        if change is not None and self.active:
            self.plane.apply(self.pool())
        return change

    def supervise(self, now: float) -> float | None:
        """Let the data plane look after its processes (only while serving)."""
        return self.plane.supervise(now) if self.active else None

    def next_deadline(self) -> float | None:
        """The earliest of the next probe and the next supervision check."""
        times = [t for t in (self.board.next_deadline(), self._supervise_at) if t is not None]
        return min(times) if times else None

    def tick(self, now: float) -> None:
        """Run supervision when due (raises BalancerError when the data plane gave up)."""
        if self._supervise_at is None or now >= self._supervise_at:
            self._supervise_at = self.supervise(now)

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
