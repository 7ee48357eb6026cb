"""``hapair release``: clean up after a daemon that is gone (systemd ExecStopPost, a crash).

A daemon killed while MASTER leaves its VIP in the kernel, and the peer only takes over when
its dead timer fires. Release closes that gap make-before-break: it first tells the peer, with
an authenticated FAULT heartbeat under a new boot epoch, that this node is out of service, so
the peer takes over at once; it removes the VIP when the peer is heard as MASTER (or after a
short bound), so clients never face a moment with nobody holding the address.
"""

from __future__ import annotations

import select
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from hapair.config import Config, load_config, read_secret
from hapair.core.roles import Role
from hapair.errors import BalancerError, ConfigError, HapairError, RuntimeSetupError
from hapair.net.transport import UdpTransport
from hapair.net.vip import VipManager
from hapair.runtime.control import is_live
from hapair.runtime.state import load_state, next_boot_epoch, save_state
from hapair.runtime.wiring import vips_of
from hapair.wire.heartbeat import (
    PACKET_SIZE,
    Heartbeat,
    Rejected,
    cluster_id,
    decode,
    encode,
    vip_digest,
)

#: Longest release waits for the peer to confirm it is MASTER before removing the VIP anyway.
CONFIRM_WAIT_MAX: Final = 1.0


@dataclass
class ReleaseReport:
    """What release did, for the command's output."""

    removed: list[str] = field(default_factory=list)
    peer_master: str | None = None
    waited: float = 0.0
    notes: list[str] = field(default_factory=list)


def release(config_path: str, force: bool = False) -> ReleaseReport:
    """Remove this node's VIPs and stale runtime files. Idempotent.

    Refuses while this node's daemon is running (it would restore the VIP at once, and a
    running MASTER should hand over instead), unless ``force``.
    """
    cfg = load_config(config_path, check_secret=False)
    sock = Path(cfg.control_socket_path)
    live = sock.exists() and is_live(sock)
    if live and not force:
        raise RuntimeSetupError(
            f"the daemon for {cfg.instance_name} is running ({sock}): stop it first, or use "
            "`hapair handover` to move the VIP (--force to release anyway)"
        )
    report = ReleaseReport()
    vips = VipManager()
    try:
        held = [vip for vip in vips_of(cfg) if vips.present(vip)]
        if held and not live:
            _hand_to_peer(cfg, report)
        for vip in vips_of(cfg):
            if vips.remove(vip):  # a missing interface counts as nothing to remove
                report.removed.append(str(vip))
    finally:
        vips.close()
    if cfg.balancer is not None and not live:
        from hapair.runtime.balancer import build_plane

        try:
            if build_plane(cfg).remove():
                report.removed.append(f"the {cfg.balancer.kind} balancer's data plane")
        except (BalancerError, OSError, subprocess.SubprocessError) as exc:
            report.notes.append(f"could not remove the {cfg.balancer.kind} data plane: {exc}")
    if sock.exists() and not live:
        sock.unlink()
        report.removed.append(f"stale control socket {sock}")
    return report


def _hand_to_peer(cfg: Config, report: ReleaseReport) -> None:
    """Announce FAULT to the peer and wait (bounded) until it is heard as MASTER."""
    if cfg.cluster.peers_auto:
        report.notes.append(
            'cluster.peers = "auto": no address to tell the peer; it takes over after its'
            " dead timer"
        )
        return
    try:
        key = read_secret(cfg.cluster.secret_file)
        transport = UdpTransport(
            cfg.cluster.port, cfg.cluster.peer_addresses, packet_size=PACKET_SIZE
        )
    except (ConfigError, HapairError) as exc:
        report.notes.append(
            f"could not tell the peer to take over ({exc}); it will after its dead timer"
        )
        return
    try:
        state_path = cfg.state_file_path
        state = load_state(state_path)
        state.boot_epoch = next_boot_epoch(state.boot_epoch)  # above the dead daemon's epoch
        save_state(state_path, state)
        cid = cluster_id(cfg.cluster.name)
        digest = vip_digest(str(v.address) for v in cfg.vip)
        bound = min(CONFIRM_WAIT_MAX, cfg.dead_time)
        start = time.monotonic()
        seq = 0
        next_send = start
        while time.monotonic() - start < bound:
            now = time.monotonic()
            if now >= next_send:
                seq += 1
                hb = Heartbeat(
                    cluster_id=cid,
                    node=cfg.node.name,
                    role=Role.FAULT,
                    base_priority=cfg.node.priority,
                    effective_priority=0,
                    resigning=False,
                    term=0,
                    seq=seq,
                    boot_epoch=state.boot_epoch,
                    interval_ms=max(1, round(cfg.cluster.interval * 1000)),
                    vip_digest=digest,
                )
                transport.send(encode(hb, key))
                next_send = now + min(cfg.cluster.interval, 0.05)
            select.select(transport.filenos(), [], [], max(0.0, min(next_send - now, 0.01)))
            for data, _source, _link in transport.receive():
                try:
                    peer = decode(data, key, cid)
                except Rejected:
                    continue
                if peer.node != cfg.node.name and peer.role is Role.MASTER:
                    report.peer_master = peer.node
                    report.waited = time.monotonic() - start
                    return
        report.waited = time.monotonic() - start
        report.notes.append(f"the peer did not confirm MASTER within {bound:.2f}s")
    finally:
        transport.close()
