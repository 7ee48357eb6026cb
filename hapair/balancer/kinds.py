"""The balancer kinds: one record each, the one place that says what a kind is made of.

The factory (``make_plane``), ``hapair doctor`` and ``hapair check-config`` look a kind up
here instead of switching on its name. A record holds what can be said without the kind's
code (its label, the programs and kernel settings it needs) and functions that import the
kind's home module (``nat``, ``dr``, ``engine`` for proxy and redirect, ``dns``) only when
called: a daemon loads its own kind's code and no other's (RSS), and a new kind is one record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from hapair.config.balancer import Balancer, Kind

if TYPE_CHECKING:
    from hapair.balancer.plane import DataPlane


@dataclass(frozen=True, slots=True)
class Program:
    """An external program a kind runs; ``configured`` is its path if ``setting`` names one."""

    name: str
    configured: str | None = None
    setting: str | None = None  # the configuration key that can name its path


@dataclass(frozen=True, slots=True)
class HostNeed:
    """Something a kind needs of this node's kernel: a sysctl its own code checks, or a note.

    ``check`` reads the setting under a ``/proc/sys/net`` root and raises BalancerError that
    says what to set; ``message`` is said when it is met. Without ``check`` it is a note
    (nothing to check here, or only on the backends).
    """

    message: str
    sysctl: str | None = None
    check: Callable[[Balancer, Path], None] | None = None


@dataclass(frozen=True, slots=True)
class PlaneSite:
    """Where a data plane runs: this instance's run directory, the VIP's interface, a logger."""

    run_dir: Path
    interface: str
    log: Any = None


@dataclass(frozen=True, slots=True)
class KindSpec:
    """One ``balancer.kind``."""

    name: Kind
    label: Callable[[Balancer], str]  # check-config: what this kind does
    needs: Callable[[Balancer], str | None]  # check-config: what to set up around it
    programs: Callable[[Balancer], tuple[Program, ...]]  # doctor: what must be installed
    host: Callable[[Balancer], tuple[HostNeed, ...]]  # doctor: this node's kernel settings
    build: Callable[[Balancer, PlaneSite], DataPlane]  # imports the kind's module


_NGINX_BINDS: Final = (
    "net.ipv4.ip_nonlocal_bind=1 on both nodes: nginx binds the VIP before holding it"
)


# ---------------------------------------------------------------- nat ------------------------


def _nat_host(b: Balancer) -> tuple[HostNeed, ...]:
    key = "net.ipv4.ip_forward" if b.listen[0].version == 4 else "net.ipv6.conf.all.forwarding"
    forwarding = HostNeed(f"{key} = 1 (nat forwards the clients' packets)", key, _forwarding)
    if b.masquerade:
        return (forwarding,)
    routing = HostNeed(
        "nat without masquerade: each backend must route its replies through the MASTER"
        " (a VIP as its gateway); doctor cannot check that from here"
    )
    return forwarding, routing


def _forwarding(b: Balancer, net: Path) -> None:
    from hapair.balancer.nat import check_forwarding

    check_forwarding(b, net)


def _build_nat(b: Balancer, site: PlaneSite) -> DataPlane:
    from hapair.balancer.nat import NatDataPlane

    return NatDataPlane(b)


NAT: Final = KindSpec(
    name="nat",
    label=lambda b: "L4 NAT (nftables DNAT)",
    needs=lambda b: "net.ipv4.ip_forward=1 on both nodes (hapair run checks)",
    programs=lambda b: (Program("nft"),),
    host=_nat_host,
    build=_build_nat,
)


# ---------------------------------------------------------------- dr -------------------------


def _dr_host(b: Balancer) -> tuple[HostNeed, ...]:
    return (
        HostNeed(
            "dr needs no sysctl on this node (no forwarding); each backend needs"
            f" `hapair realserver up {b.listen[0]}` (arp_ignore=1, arp_announce=2, the VIP on"
            " lo), which doctor cannot check from here"
        ),
    )


def _build_dr(b: Balancer, site: PlaneSite) -> DataPlane:
    from hapair.balancer.dr import DrDataPlane

    return DrDataPlane(b, interface=site.interface)


DR: Final = KindSpec(
    name="dr",
    label=lambda b: "direct routing (nftables MAC rewrite)",
    needs=lambda b: "`hapair realserver up VIP` on every backend",
    programs=lambda b: (Program("nft"), Program("ip")),
    host=_dr_host,
    build=_build_dr,
)


# ---------------------------------------------------------------- proxy and redirect --------


def _engine_host(b: Balancer, engine: str) -> tuple[HostNeed, ...]:
    key = f"net.ipv{b.listen[0].version}.ip_nonlocal_bind"
    if b.mode == "cold":
        return (HostNeed(f"cold mode: {engine} starts once the VIP is here; no {key}"),)
    if engine == "haproxy":
        return (HostNeed(f"hot haproxy binds the VIP `transparent`: no {key} needed"),)
    return (HostNeed(f"{key} = 1 (hot nginx listens on the VIP while BACKUP)", key, _nonlocal),)


def _nonlocal(b: Balancer, net: Path) -> None:
    from hapair.balancer.engine import check_nonlocal_bind

    check_nonlocal_bind(b, net)


def _engine_needs(b: Balancer, engine: str) -> str | None:
    return _NGINX_BINDS if b.mode == "hot" and engine == "nginx" else None


def _build_engine(b: Balancer, site: PlaneSite) -> DataPlane:
    from hapair.balancer.engine import EngineDataPlane

    return EngineDataPlane(b, run_dir=site.run_dir, log=site.log)


PROXY: Final = KindSpec(
    name="proxy",
    label=lambda b: f"reverse proxy ({b.proxy_options.engine})",
    needs=lambda b: _engine_needs(b, b.proxy_options.engine),
    programs=lambda b: (
        Program(b.proxy_options.engine, b.proxy_options.binary, "balancer.proxy.binary"),
    ),
    host=lambda b: _engine_host(b, b.proxy_options.engine),
    build=_build_engine,
)

REDIRECT: Final = KindSpec(
    name="redirect",
    label=lambda b: "HTTP 302 redirect (nginx)",
    needs=lambda b: _engine_needs(b, "nginx"),
    programs=lambda b: (Program("nginx"),),
    host=lambda b: _engine_host(b, "nginx"),
    build=_build_engine,
)


# ---------------------------------------------------------------- dns ------------------------


def _build_dns(b: Balancer, site: PlaneSite) -> DataPlane:
    from hapair.balancer.dns import DnsDataPlane

    return DnsDataPlane(b, run_dir=site.run_dir, log=site.log)


DNS: Final = KindSpec(
    name="dns",
    label=lambda b: "DNS round robin (hapair's responder)",
    needs=lambda b: None,
    programs=lambda b: (),
    host=lambda b: (HostNeed("dns: the responder binds with IP_FREEBIND; no sysctl needed"),),
    build=_build_dns,
)


# ---------------------------------------------------------------- the registry ---------------

#: Every kind once, in ``hapair.config.balancer.KINDS`` order.
REGISTRY: Final[tuple[KindSpec, ...]] = (NAT, DR, PROXY, REDIRECT, DNS)


def spec_for(kind: Kind) -> KindSpec:
    """The record of ``kind`` (every valid kind has one: a test holds the two lists equal)."""
    for spec in REGISTRY:
        if spec.name == kind:
            return spec
    raise KeyError(f"no balancer kind {kind!r}")


def make_plane(cfg: Balancer, *, run_dir: Path, interface: str, log: Any = None) -> DataPlane:
    """The data plane for ``cfg.kind``.

    ``run_dir`` is this instance's own directory for generated configuration and pid files
    (``{state_dir}/{cluster}-{node}.balancer``); ``interface`` is the VIP's interface
    (direct routing forwards frames out of it); ``log`` is a structlog logger for supervision
    events.
    """
    return spec_for(cfg.kind).build(cfg, PlaneSite(run_dir, interface, log))
