"""Plain-language timing summary and warnings for `hapair check-config`.

The ``[balancer]`` lines come from ``hapair.balancer.explain``: each kind's label and needs
are its record in ``hapair.balancer.kinds``, which configuration does not import.
"""

from __future__ import annotations

from typing import Final

from hapair.config.duration import format_duration as fmt
from hapair.config.model import Config, GatewayTrack, InterfaceTrack, Track

# Common switch MAC-table ageing; a refresh should come well before it.
SWITCH_AGEING_S: Final = 300.0
# Below this, scheduler stalls or brief congestion start to look like a dead peer.
FAST_INTERVAL_S: Final = 0.05
# VIP prefixes shorter than this claim an implausibly large on-link network.
SHORT_PREFIX: Final = {4: 8, 6: 16}


def explain_timers(cfg: Config) -> list[str]:
    """Return human lines saying what the timers in `cfg` mean for detection and takeover."""
    cluster, garp = cfg.cluster, cfg.garp
    interval = fmt(cluster.interval)
    addresses = cluster.peer_addresses
    peers = (
        "found by discovery (mDNS)" if cluster.peers_auto else ", ".join(str(p) for p in addresses)
    )
    links = f" ({len(addresses)} links)" if len(addresses) > 1 else ""
    skew = cfg.skew_for(cfg.node.priority)
    detection = fmt(cfg.dead_time)
    lines = [
        f"heartbeat: every {interval} to each peer address: {peers}"
        f" (UDP port {cluster.port}){links}",
        f"peer declared dead after {cluster.dead_after} missed heartbeats:"
        f" {cluster.dead_after} x {interval} + skew {fmt(skew)}"
        f" (priority {cfg.node.priority}; a higher priority waits less)"
        f" = {detection} worst-case detection",
        f"takeover: ≈ detection + a few ms (add {len(cfg.vip)} VIP(s), send the first GARP)"
        f" ≈ {detection}",
    ]
    if not cluster.preempt:
        lines.append(
            "preempt: off; a running MASTER keeps the VIP even if this node has a higher priority"
        )
    elif cluster.preempt_delay == 0:
        lines.append("preempt: on; this node takes over at once from a lower-priority MASTER")
    else:
        lines.append(
            f"preempt: on; this node takes over from a lower-priority MASTER after"
            f" {fmt(cluster.preempt_delay)}"
        )
    garp_line = (
        f"GARP: on becoming MASTER, a burst of {garp.burst} spaced {fmt(garp.spacing)}"
        if garp.burst > 1
        else "GARP: on becoming MASTER, one announcement"
    )
    if garp.second_burst_delay:
        garp_line += f", again {fmt(garp.second_burst_delay)} later"
    if garp.refresh:
        garp_line += f"; re-announced every {fmt(garp.refresh)} while MASTER"
    else:
        garp_line += "; no periodic re-announcement"
    lines.append(garp_line)
    lines.extend(_explain_track(index, track) for index, track in enumerate(cfg.track))
    return lines


def _explain_track(index: int, track: Track) -> str:
    if isinstance(track, InterfaceTrack):
        what = f"interface {track.interface} up with carrier"
    elif isinstance(track, GatewayTrack):
        via = f" via {track.interface}" if track.interface else ""
        what = f"gateway {track.address} answers {track.method.upper()}{via}"
    else:
        what = f"command {' '.join(track.command)} exits 0"
    effect = "FAULT" if track.forces_fault else f"priority - {track.weight}"
    return (
        f"track[{index}]: {what}, checked every {fmt(track.interval)}"
        f" (timeout {fmt(track.timeout)}); {effect} after {track.fall} failure(s),"
        f" restored after {track.rise} success(es)"
    )


def config_warnings(cfg: Config) -> list[str]:
    """Return lines for settings that are valid but risky."""
    warnings: list[str] = []
    cluster, garp = cfg.cluster, cfg.garp
    if len(cluster.peer_addresses) == 1:
        warnings.append(
            "cluster.peers: one link: a cut of that link looks like a dead peer;"
            " add a second address in cluster.peers"
        )
    if cluster.interval < FAST_INTERVAL_S:
        warnings.append(
            f"cluster.interval = {fmt(cluster.interval)}: under {fmt(FAST_INTERVAL_S)},"
            " a scheduler stall or brief congestion can cause a false failover"
        )
    if garp.second_burst_delay == 0:
        warnings.append(
            "garp.second_burst_delay = 0: no second burst; a neighbour that missed the first"
            " keeps a stale ARP entry until the next refresh"
        )
    if garp.refresh == 0:
        warnings.append(
            "garp.refresh = 0: no periodic re-announcement; a switch or host whose cache ages"
            " out or missed the takeover keeps sending to the old node"
        )
    elif garp.refresh >= SWITCH_AGEING_S:
        warnings.append(
            f"garp.refresh = {fmt(garp.refresh)}: not well under common switch MAC ageing"
            f" ({fmt(SWITCH_AGEING_S)})"
        )
    for index, vip in enumerate(cfg.vip):
        where = f"vip[{index}]"
        if vip.interface == "lo":
            warnings.append(
                f'{where}.interface = "lo": a VIP on loopback is not reachable from the LAN'
                " and is not announced (GARP); use the interface of the VIP's subnet"
            )
        prefix = vip.address.network.prefixlen
        if prefix < SHORT_PREFIX[vip.address.version]:
            warnings.append(
                f"{where}.address = {str(vip.address)!r}: prefix /{prefix} makes the kernel add"
                f" an on-link route for {vip.address.network}; use the subnet's own prefix"
            )
    return warnings
