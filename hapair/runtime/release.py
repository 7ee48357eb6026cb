"""``hapair release``: clean up after a daemon that is gone (systemd ExecStopPost, a crash).

A daemon killed while MASTER leaves its VIP in the kernel, and the peer only takes over when
its dead timer fires. Release closes that gap make-before-break: it speaks for the dead daemon
as a new run of this node (protocol v2, docs/protocol.md). It prompts the peer (one FAULT it
cannot accept yet, which it answers at once) and listens for a peer heartbeat (bounded) to
learn the peer's current challenge, then sends authenticated FAULT heartbeats with
effective priority 0 echoing it, so the peer accepts the new run and takes over at once; it
removes the VIP when the peer is heard as MASTER (or after a short bound), so clients never
face a moment with nobody holding the address. Nothing is read from or written to a state file.
"""

from __future__ import annotations

import select
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from hapair.config import Config, load_config, read_secret
from hapair.core.advert import Advert, interval_ms
from hapair.core.events import PeerHeard
from hapair.core.roles import Role
from hapair.errors import BalancerError, ConfigError, HapairError, RuntimeSetupError
from hapair.net.transport import UdpTransport
from hapair.net.vip import VipManager
from hapair.ops.control_client import is_live
from hapair.runtime.heartbeats import Heartbeats
from hapair.runtime.wiring import vips_of
from hapair.wire.heartbeat import PACKET_SIZE, cluster_id, vip_digest

#: Longest release listens and waits for the peer to confirm MASTER, all told, before it
#: removes the VIP anyway (also bounded by the dead time: the peer takes over by then).
CONFIRM_WAIT_MAX: Final = 1.0
#: FAULT heartbeats sent at once (seq 1..n) when the peer's challenge is known: one may be lost.
FAULT_COPIES: Final = 3
#: Re-send FAULT at least this often while waiting for the peer to confirm.
RESEND_EVERY: Final = 0.05


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
        from hapair.runtime.balancing import build_plane

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
        _speak_fault(cfg, key, transport, report)
    finally:
        transport.close()


class _Quiet:
    """Release reports through ReleaseReport, not the daemon's log."""

    def info(self, event: str, **kw: object) -> None:
        """Dropped."""

    def warning(self, event: str, **kw: object) -> None:
        """Dropped."""


def _speak_fault(cfg: Config, key: bytes, transport: UdpTransport, report: ReleaseReport) -> None:
    """Learn the peer's challenge, send FAULT echoing it, and wait (bounded) for MASTER."""
    hb = Heartbeats(
        cfg.node.name, cluster_id(cfg.cluster.name), key,
        log=_Quiet(), interval_ms=interval_ms(cfg.cluster.interval),
    )  # fmt: skip
    fault = Advert(
        Role.FAULT, base_priority=cfg.node.priority, effective_priority=0, resigning=False,
        term=0, interval_ms=interval_ms(cfg.cluster.interval),
        vip_digest=vip_digest(str(v.address) for v in cfg.vip), maintenance=False,
    )  # fmt: skip
    bound = min(CONFIRM_WAIT_MAX, cfg.dead_time)
    start = time.monotonic()
    next_send: float | None = None  # None until the peer's challenge is known
    # A first packet (echo 0: unproven) makes the peer answer at once with its challenge
    # instead of at its next interval (see Heartbeats.reply_due).
    transport.send(hb.packet(fault))
    while (now := time.monotonic()) - start < bound:
        if next_send is None and hb.freshness.echo:
            for _ in range(FAULT_COPIES):
                transport.send(hb.packet(fault))
            next_send = now + RESEND_EVERY
        elif next_send is not None and now >= next_send:
            transport.send(hb.packet(fault))
            next_send = now + RESEND_EVERY
        wake = start + bound if next_send is None else min(next_send, start + bound)
        select.select(transport.filenos(), [], [], max(0.0, min(wake - now, 0.01)))
        datagrams = ((data, source) for data, source, _link in transport.receive())
        for event in hb.receive(datagrams, now):
            if isinstance(event, PeerHeard) and event.advert.role is Role.MASTER:
                report.peer_master = event.node
                report.waited = time.monotonic() - start
                return
    report.waited = time.monotonic() - start
    if next_send is None:
        report.notes.append(
            f"no heartbeat from the peer within {bound:.2f}s, so no challenge to answer: it"
            " takes over after its dead timer"
        )
    else:
        report.notes.append(f"the peer did not confirm MASTER within {bound:.2f}s")
