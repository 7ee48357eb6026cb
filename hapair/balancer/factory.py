"""Pick the data plane for a ``[balancer]`` kind (each kind's code is imported only when used)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hapair.balancer.plane import DataPlane
from hapair.config.balancer import Balancer


def make_plane(cfg: Balancer, *, run_dir: Path, interface: str, log: Any = None) -> DataPlane:
    """The data plane for ``cfg.kind``.

    ``run_dir`` is this instance's own directory for generated configuration and pid files
    (``{state_dir}/{cluster}-{node}.balancer``); ``interface`` is the VIP's interface
    (direct routing forwards frames out of it); ``log`` is a structlog logger for supervision
    events.
    """
    if cfg.kind == "nat":
        from hapair.balancer.nat import NatDataPlane

        return NatDataPlane(cfg)
    if cfg.kind == "dr":
        from hapair.balancer.dr import DrDataPlane

        return DrDataPlane(cfg, interface=interface)
    if cfg.kind in ("proxy", "redirect"):
        from hapair.balancer.engine import EngineDataPlane

        return EngineDataPlane(cfg, run_dir=run_dir, log=log)
    from hapair.balancer.dns import DnsDataPlane

    return DnsDataPlane(cfg, run_dir=run_dir, log=log)
