"""What the driver is wired to: its adapters, and the parts of the configuration each part of
the node needs (election settings, GARP timers, the VIPs, what hooks are told)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hapair.config.model import Config
from hapair.core.announce import AnnounceTimers
from hapair.core.election import ElectionSettings
from hapair.net.vip import Vip
from hapair.ops.hooks import HookContext
from hapair.ops.systemd import Notifier
from hapair.runtime.ports import (
    Announcements,
    ArpConflicts,
    HeartbeatLinks,
    NetlinkEvents,
    VipKernel,
)
from hapair.wire.heartbeat import vip_digest

if TYPE_CHECKING:  # the optional parts are imported only when configured (daemon RSS)
    from hapair.ops.discovery import PeerFinder, Seen
    from hapair.ops.mdns import Announcer as MdnsAnnouncer
    from hapair.ops.mdns import PeerWatch
    from hapair.ops.metrics import Metrics
    from hapair.runtime.balancing import LocalBalancer


def election_settings(cfg: Config) -> ElectionSettings:
    """The part of the configuration the election needs."""
    return ElectionSettings(
        node=cfg.node.name,
        priority=cfg.node.priority,
        interval=cfg.cluster.interval,
        dead_after=cfg.cluster.dead_after,
        preempt=cfg.cluster.preempt,
        preempt_delay=cfg.cluster.preempt_delay,
        vip_digest=vip_digest(str(v.address) for v in cfg.vip),
    )


def announce_timers(cfg: Config) -> AnnounceTimers:
    """GARP timing from ``[garp]``."""
    g = cfg.garp
    return AnnounceTimers(g.burst, g.spacing, g.second_burst_delay, g.refresh)


def hook_context(cfg: Config) -> HookContext:
    """What every hook is told about this node (HAPAIR_CLUSTER, HAPAIR_NODE, HAPAIR_VIPS)."""
    return HookContext(cfg.cluster.name, cfg.node.name, tuple(str(v.address) for v in cfg.vip))


def vips_of(cfg: Config) -> tuple[Vip, ...]:
    """The configured VIPs as the network layer's type."""
    return tuple(Vip(v.address, v.interface) for v in cfg.vip)


@dataclass
class PeerFeed:
    """``cluster.peers = "auto"``: what discovery saw (zeroconf's thread fills ``watch``) and
    the pure choice of the peer among it."""

    watch: PeerWatch
    finder: PeerFinder

    def poll(self, cluster: str, now: float) -> Seen | None:
        """Take in what discovery saw since the last call; the peer of ``cluster`` now."""
        self.finder.take_at(self.watch.drain(), now)
        return self.finder.peer_of_at(cluster, now)


@dataclass
class Adapters:
    """The I/O edges the driver uses: the daemon opens the real ones, the simulation passes
    `hapair.testing.fakes` (see `hapair.runtime.ports`)."""

    transport: HeartbeatLinks
    vips: VipKernel
    announcer: Announcements
    netlink: NetlinkEvents
    arp: Mapping[str, ArpConflicts] = field(default_factory=dict)
    balancer: LocalBalancer | None = None
    metrics: Metrics | None = None
    systemd: Notifier | None = None
    mdns: MdnsAnnouncer | None = None
    discovery: PeerFeed | None = None
