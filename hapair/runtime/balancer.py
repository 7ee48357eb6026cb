"""Glue between the daemon and the `nat` balancer: detector results in, nftables pool out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hapair.balancer.health import HealthBoard, HealthChange, ProbeSpec
from hapair.balancer.nat import NatDataPlane
from hapair.balancer.nft import NatBackend, NatService
from hapair.config.model import Backend, Balancer
from hapair.errors import RuntimeSetupError


def backend_name(b: Backend) -> str:
    """``10.0.1.21:8080`` or ``[fd00::21]:8080``."""
    address, port = b.address
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def check_forwarding(cfg: Balancer, proc: Path = Path("/proc/sys/net")) -> None:
    """NAT forwards the clients' packets: the kernel must allow it (we do not flip it)."""
    key = "ipv4/ip_forward" if cfg.listen[0].version == 4 else "ipv6/conf/all/forwarding"
    try:
        on = (proc / key).read_text().strip() == "1"
    except OSError:
        on = False
    if not on:
        sysctl = key.replace("/", ".")
        raise RuntimeSetupError(
            f'balancer.kind: "nat" forwards packets, but net.{sysctl} is 0 on this host: '
            f"set net.{sysctl}=1 (sysctl -w, and in /etc/sysctl.d/ to keep it)"
        )


class NatBalancer:
    """The detector plus the nftables data plane for one ``[balancer]`` of kind ``nat``."""

    def __init__(self, cfg: Balancer, now: float, plane: NatDataPlane | None = None) -> None:
        self.cfg = cfg
        self.plane = plane if plane is not None else NatDataPlane()
        self.backends = {backend_name(b): b for b in cfg.backend}
        specs = {}
        for name, b in self.backends.items():
            check = b.check or cfg.check
            specs[name] = ProbeSpec(
                kind=check.kind, host=str(b.address[0]), port=b.address[1],
                interval=check.interval, timeout=check.timeout, rise=check.rise,
                fall=check.fall, path=check.path, expect_status=check.expect_status,
                body_contains=check.body,
            )  # fmt: skip
        self.specs = specs
        self.board = HealthBoard(specs, now)
        self.active = False

    def service(self) -> NatService:
        """The service over the healthy backends, never an empty pool.

        With every backend down: ``all_down = "keep"`` keeps the configured pool (clients'
        retries find a backend that recovers before the probes notice); ``"sorry"`` sends
        everyone to the sorry server. An empty map would blackhole the VIP silently.
        """
        healthy = self.board.healthy()
        if not healthy and self.cfg.all_down == "sorry" and self.cfg.sorry is not None:
            pool: tuple[NatBackend, ...] = (NatBackend(*self.cfg.sorry),)
        else:
            pool = tuple(
                NatBackend(self.backends[n].address[0], self.backends[n].address[1],
                           self.backends[n].weight)
                for n in healthy or list(self.backends)
            )  # fmt: skip
        return NatService(
            self.cfg.listen[0], self.cfg.listen[1], pool, self.cfg.scheduler,
            self.cfg.protocol, self.cfg.masquerade,
        )  # fmt: skip

    def start(self) -> None:
        """Load the ruleset (hot: at daemon start; cold: on becoming MASTER)."""
        self.plane.apply([self.service()])
        self.active = True

    def stop(self) -> None:
        """Remove hapair's table (cold: on leaving MASTER; always: at exit)."""
        self.active = False
        self.plane.remove()

    def record(self, name: str, ok: bool, reason: str, now: float) -> HealthChange | None:
        """Feed a probe result; on a pool change, push the new pool at once."""
        change = self.board.record(name, ok, reason, now)
        if change is not None and self.active:
            self.plane.apply([self.service()])
        return change

    def status(self) -> dict[str, Any]:
        """Kind, mode, whether the ruleset is loaded, and each backend's health."""
        return {
            "kind": self.cfg.kind,
            "mode": self.cfg.mode,
            "scheduler": self.cfg.scheduler,
            "active": self.active,
            "backends": self.board.snapshot(),
        }
