"""The peer half of ``hapair doctor``: listen for the peer's heartbeats and judge them.

The probe sends nothing. Every heartbeat a peer accepts feeds its election: a probe claiming
any role would make a running peer count this node alive (or, as FAULT, take over, which is
what ``hapair release`` wants and a preflight must not do); and a probe echoing the peer's
challenge would be accepted as a new run of this node (protocol v2), rotating the peer's
challenge under the real daemon. Nor is a reply needed: the peer sends a heartbeat every
interval to every address it has for this node, whatever its role. So the probe listens on the
cluster port for a few intervals, which shows that the peer runs and reaches this node on each
link, with the same key (HMAC: a MAC that verifies here verifies there), cluster name and
protocol version, and gives its VIP set digest to compare. Version 2 heartbeats carry no time
at all, so nothing about the peer's clock can be learnt from them. When the port is taken
(this node's daemon runs), a raw socket watches copies of the datagrams and takes none away.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from hapair.config import Config
from hapair.errors import HapairError
from hapair.net.transport import RECV_SIZE, PortListener
from hapair.ops.doctor_checks import Finding, ok, peer_family
from hapair.wire.heartbeat import Heartbeat, Rejected, RejectReason, cluster_id, decode, vip_digest

#: The least time the probe listens for the peer, and the most (a slow interval stretches it).
PROBE_WAIT: Final = 1.0
PROBE_WAIT_MAX: Final = 10.0
#: Datagrams kept from one probe: the network must not grow the report without bound.
MAX_DATAGRAMS: Final = 1024
_UDP: Final = struct.Struct("!HHHH")
_IPV4_MIN: Final = 20


@dataclass(frozen=True)
class Capture:
    """Datagrams for the cluster port heard during the probe, and how they were heard."""

    datagrams: tuple[tuple[bytes, str], ...] = ()
    method: str = ""
    waited: float = 0.0
    unavailable: str | None = None  # why nothing could be heard at all


class CaptureFn(Protocol):
    """How the probe hears the peer (``capture_heartbeats``, or canned datagrams in tests)."""

    def __call__(self, cfg: Config, *, port_free: bool, raw_ok: bool, wait: float) -> Capture:
        """Listen for at most ``wait`` seconds."""
        ...


class _Receiver(Protocol):
    def filenos(self) -> list[int]: ...
    def receive(self) -> list[tuple[bytes, str]]: ...
    def close(self) -> None: ...


def udp_payload(packet: bytes, family: int, port: int) -> bytes | None:
    """The payload of a UDP datagram to ``port`` as a raw socket delivers it, else None.

    IPv4 raw sockets deliver the IP header too; IPv6 ones start at the UDP header.
    """
    if family == socket.AF_INET:
        if len(packet) < _IPV4_MIN or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_UDP:
            return None
        packet = packet[(packet[0] & 0x0F) * 4 :]
    if len(packet) < _UDP.size:
        return None
    _sport, dport, length, _checksum = _UDP.unpack_from(packet)
    if dport != port or not _UDP.size <= length <= len(packet):
        return None
    return packet[_UDP.size : length]


class RawWatch:
    """Copies of the UDP datagrams arriving for one port (needs CAP_NET_RAW); takes none."""

    def __init__(self, port: int, families: Iterable[int]) -> None:
        self.port = port
        self._socks: dict[int, socket.socket] = {}
        try:
            for family in families:
                sock = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_UDP)
                sock.setblocking(False)
                self._socks[family] = sock
        except BaseException:
            self.close()
            raise

    def filenos(self) -> list[int]:
        """File descriptors to watch for readability."""
        return [s.fileno() for s in self._socks.values()]

    def receive(self) -> list[tuple[bytes, str]]:
        """Payloads for the port that are ready now, with their source addresses."""
        out: list[tuple[bytes, str]] = []
        for family, sock in self._socks.items():
            while len(out) < MAX_DATAGRAMS:
                try:
                    packet, addr = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                payload = udp_payload(packet, family, self.port)
                if payload is not None:
                    out.append((payload[:RECV_SIZE], str(addr[0])))
        return out

    def close(self) -> None:
        """Close every socket (idempotent)."""
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()


def probe_wait(cfg: Config) -> float:
    """How long to listen: three of our intervals, at least PROBE_WAIT, at most the maximum."""
    return min(max(PROBE_WAIT, 3 * cfg.cluster.interval), PROBE_WAIT_MAX)


def capture_heartbeats(cfg: Config, *, port_free: bool, raw_ok: bool, wait: float) -> Capture:
    """Listen on the cluster port (bound if free, else a raw watch) for at most ``wait``.

    Returns early once every configured peer address has sent something.
    """
    port = cfg.cluster.port
    receiver: _Receiver
    try:
        if port_free:
            peers = cfg.cluster.peer_addresses
            families = {peer_family(p) for p in peers}
            receiver, method = PortListener(port, families), f"listened on UDP {port}"
        elif raw_ok:
            receiver = RawWatch(port, sorted({peer_family(p) for p in cfg.cluster.peer_addresses}))
            method = f"watched UDP {port} with a raw socket (the port is taken)"
        else:
            why = f"UDP {port} is taken, and without CAP_NET_RAW it cannot be watched"
            return Capture(unavailable=why)
    except (HapairError, OSError) as exc:
        return Capture(unavailable=f"cannot listen on UDP {port}: {exc}")
    wanted = {_addr(str(p)) for p in cfg.cluster.peer_addresses}
    heard: list[tuple[bytes, str]] = []
    start = time.monotonic()
    try:
        while (left := start + wait - time.monotonic()) > 0 and len(heard) < MAX_DATAGRAMS:
            select.select(receiver.filenos(), [], [], left)
            heard.extend(receiver.receive()[: MAX_DATAGRAMS - len(heard)])
            if wanted <= {_addr(source) for _, source in heard}:
                break
    finally:
        receiver.close()
    return Capture(tuple(heard), method, time.monotonic() - start)


def _addr(text: str) -> str:
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(text))
    return text


#: Rejections that name a configuration mismatch, with what to say and the fix.
_MISMATCH: Final = {
    RejectReason.BAD_MAC: (
        "fail authentication with the key in {secret}: the peer has another key"
        " (cluster.secret_file)",
        "scp -p {secret} PEER:{secret}  # the same key on both nodes",
    ),
    RejectReason.WRONG_CLUSTER: (
        "carry another cluster id: the peer's cluster.name is not {cluster!r}",
        "set cluster.name = {cluster!r} on both nodes",
    ),
    RejectReason.BAD_VERSION: (
        "use another heartbeat protocol version (this node speaks version 2): the peer runs"
        " an incompatible hapair, and the two do not interoperate",
        "install the same hapair version on both nodes (docs/protocol.md, upgrading)",
    ),
    RejectReason.SELF: (
        "name the sender {node!r}, this node's own name: node.name must differ",
        "give each node its own node.name",
    ),
}


def _mismatch(cfg: Config, reason: RejectReason) -> tuple[str, str]:
    names = {"secret": cfg.cluster.secret_file, "cluster": cfg.cluster.name, "node": cfg.node.name}
    message, fix = _MISMATCH[reason]
    return message.format(**names), fix.format(**names)


def assess_peers(cfg: Config, key: bytes | None, capture: Capture, wall: float) -> list[Finding]:
    """Findings from what the probe heard: one per peer address, and the VIP set.

    ``wall`` is unused since protocol v2 (heartbeats carry no time to compare it with).
    """
    if capture.unavailable is not None:
        fix = "run hapair doctor as root, or see `hapair status`"
        return [Finding("peer", "warning", f"not probed: {capture.unavailable}", fix)]
    cid = cluster_id(cfg.cluster.name)
    good: dict[str, Heartbeat] = {}
    bad: dict[str, RejectReason] = {}
    other: set[str] = set()
    for data, source in capture.datagrams:
        src = _addr(source)
        if key is None:
            other.add(src)
            continue
        try:
            hb = decode(data, key, cid)
            if hb.node == cfg.node.name:
                raise Rejected(RejectReason.SELF)
        except Rejected as exc:
            if exc.reason in _MISMATCH:
                bad[src] = exc.reason
            else:
                other.add(src)
            continue
        good[src] = hb  # the newest one wins
    configured = [_addr(str(p)) for p in cfg.cluster.peer_addresses]
    out = [_assess_address(cfg, src, key, good, bad, other, capture) for src in configured]
    for src in sorted(set(good) - set(configured)):
        message = (
            f"{good[src].node} is also heard from {src}, which is not in cluster.peers"
            " (accepted: heartbeats are authenticated, not matched by address)"
        )
        out.append(ok("peer", message))
    for src in sorted(set(bad) - set(configured)):
        message, _fix = _mismatch(cfg, bad[src])
        text = f"datagrams from {src} (not a configured peer) {message}"
        out.append(Finding("peer", "warning", text, f"check what on {src} sends to this port"))
    return out + _assess_vips(cfg, good)


def _assess_address(
    cfg: Config,
    src: str,
    key: bytes | None,
    good: Mapping[str, Heartbeat],
    bad: Mapping[str, RejectReason],
    other: set[str],
    capture: Capture,
) -> Finding:
    port = cfg.cluster.port
    if src in good:
        hb = good[src]
        return ok(
            "peer",
            f"{hb.node} answers from {src}: authenticated heartbeat, {hb.advert.role.name},"
            f" priority {hb.advert.effective_priority} (base {hb.advert.base_priority});"
            f" {capture.method}",
        )
    if src in bad:
        message, fix = _mismatch(cfg, bad[src])
        return Finding("peer", "error", f"heartbeats from {src} {message}", fix)
    if src in other and key is None:
        message = f"{src} sends to UDP {port}, but without a usable key nothing can be checked"
        return Finding("peer", "warning", message, "fix cluster.secret_file first (see above)")
    if src in other:
        message = f"{src} sends datagrams to UDP {port} that are not hapair heartbeats"
        return Finding("peer", "warning", message, f"check what on {src} sends to UDP {port}")
    waited = f"{capture.waited:.1f} s"
    if good or bad:
        message = (
            f"nothing from {src} in {waited} while the peer is heard from"
            f" {', '.join(sorted({*good, *bad}))}: this heartbeat link is broken"
        )
        fix = f"ping -c 3 {src}; ip route get {src}  # and any firewall must pass UDP {port}"
        return Finding("peer", "warning", message, fix)
    message = f"no heartbeat from {src} in {waited}: peer not answering (not started yet?)"
    fix = "systemctl start hapair  # on the peer; then run hapair doctor there too"
    return Finding("peer", "warning", message, fix)


def _assess_vips(cfg: Config, good: Mapping[str, Heartbeat]) -> list[Finding]:
    if not good:
        message = "not compared: no authenticated heartbeat from the peer"
        return [Finding("vip-set", "warning", message)]
    ours = vip_digest(str(v.address) for v in cfg.vip)
    out: list[Finding] = []
    for node, hb in {hb.node: hb for hb in good.values()}.items():
        if hb.advert.vip_digest == ours:
            out.append(ok("vip-set", f"{node} announces the same VIP set ({len(cfg.vip)})"))
            continue
        listed = ", ".join(sorted(str(v.address) for v in cfg.vip))
        message = (
            f"{node} announces a different VIP set (here: {listed}; the prefix lengths"
            " count, the interface names do not)"
        )
        fix = "make the [[vip]] addresses identical on both nodes, then `hapair reload`"
        out.append(Finding("vip-set", "error", message, fix))
    return out
