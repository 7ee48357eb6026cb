"""The host half of ``hapair doctor``: findings about this node, one small check per concern.

Each check takes the configuration and what it is to look at (a ``/proc`` or ``/sys`` root, a
program finder, the address list) and returns Findings; none changes the host. Unit tests give
them fake trees in a temporary directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import errno
import ipaddress
import os
import re
import shutil
import socket
import stat
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from hapair.balancer.engine import SBIN
from hapair.balancer.kinds import Program, spec_for
from hapair.config import Config, ConfigError, read_secret
from hapair.errors import BalancerError
from hapair.iptypes import IpAddress

Level = Literal["ok", "warning", "error"]

CAP_NET_BIND_SERVICE: Final = 10
CAP_NET_ADMIN: Final = 12
CAP_NET_RAW: Final = 13
#: No hapair build is older than this: a wall clock before it has never been set.
CLOCK_FLOOR: Final = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC).timestamp()
TIME_ERROR: Final = 5  # adjtimex(2): the clock is not synchronised
VERSION_TIMEOUT: Final = 5.0
SYSCTL_FILE: Final = "/etc/sysctl.d/90-hapair.conf"
IFF_UP: Final = 0x1
_PACKAGES: Final = {"nft": "nftables", "nginx": "nginx", "haproxy": "haproxy", "ip": "iproute2"}
_VERSION_FLAG: Final = {"nft": "--version", "nginx": "-v", "haproxy": "-v", "ip": "-V"}
_NO_CARRIER: Final = ("down", "lowerlayerdown", "notpresent")


@dataclass(frozen=True)
class Finding:
    """One result: which check, how bad, what was seen, and the command that fixes it."""

    check: str
    level: Level
    message: str
    fix: str | None = None


def ok(check: str, message: str) -> Finding:
    """A passed check (nothing to fix)."""
    return Finding(check, "ok", message)


def sysctl_fix(key: str, value: int) -> str:
    """Set ``key`` now and at every boot."""
    return f"sysctl -w {key}={value} && echo '{key} = {value}' >> {SYSCTL_FILE}"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:  # missing, or EINVAL: `carrier` of a link that is administratively down
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return None if text is None else int(text, 0)
    except ValueError:
        return None


def effective_caps(proc: Path = Path("/proc")) -> int:
    """This process's effective capability mask (``CapEff`` in /proc/self/status; 0 if unread)."""
    for line in (_read(proc / "self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            with contextlib.suppress(IndexError, ValueError):
                return int(line.split()[1], 16)
    return 0


def check_capabilities(cfg: Config, proc: Path = Path("/proc")) -> list[Finding]:
    """CAP_NET_ADMIN and CAP_NET_RAW, and CAP_NET_BIND_SERVICE for a privileged port."""
    caps = effective_caps(proc)
    unprivileged = _read_int(proc / "sys/net/ipv4/ip_unprivileged_port_start")
    wanted = [(CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_NET_RAW, "CAP_NET_RAW")]
    if cfg.cluster.port < (1024 if unprivileged is None else unprivileged):
        wanted.append((CAP_NET_BIND_SERVICE, "CAP_NET_BIND_SERVICE"))
    missing = [name for bit, name in wanted if not caps & (1 << bit)]
    if not missing:
        return [ok("capabilities", f"{', '.join(name for _, name in wanted)} effective")]
    message = (
        f"missing {', '.join(missing)}: the daemon could not manage VIPs, send gratuitous ARP"
        f" or bind UDP {cfg.cluster.port}"
    )
    fix = "run as root, or in the unit: AmbientCapabilities=" + " ".join(n for _, n in wanted)
    return [Finding("capabilities", "error", message, fix)]


def check_interfaces(cfg: Config, sys_root: Path = Path("/sys")) -> list[Finding]:
    """Every VIP interface exists, is administratively up and has carrier."""
    net = sys_root / "class/net"
    out: list[Finding] = []
    seen: set[str] = set()
    for i, vip in enumerate(cfg.vip):
        name = vip.interface
        if name in seen:
            continue
        seen.add(name)
        base = net / name
        if not base.is_dir():
            known = ", ".join(sorted(p.name for p in net.glob("*") if p.is_dir())) or "none"
            message = f"vip[{i}].interface: no interface {name!r} on this host (have: {known})"
            fix = f"set vip[{i}].interface in {cfg.source or 'the file'} to one of: {known}"
            out.append(Finding("interface", "error", message, fix))
            continue
        flags = _read_int(base / "flags") or 0
        oper = _read(base / "operstate") or "unknown"
        if not flags & IFF_UP:
            message = f"{name} is administratively down, so no carrier: {vip.address} unusable"
            out.append(Finding("interface", "error", message, f"ip link set dev {name} up"))
        elif _read(base / "carrier") == "0" or oper in _NO_CARRIER:
            message = f"{name} has no carrier (operstate {oper}): cable, switch port or far end"
            fix = f"reconnect {name}'s link until `ip link show dev {name}` shows LOWER_UP"
            out.append(Finding("interface", "error", message, fix))
        else:
            out.append(ok("interface", f"{name} is up with carrier (operstate {oper})"))
    return out


def check_balancer_sysctls(cfg: Config, proc_sys: Path = Path("/proc/sys")) -> list[Finding]:
    """The kernel settings the balancer's kind and mode need on this node (the kind's record).

    The first unmet setting ends the list: its fix comes before any note that follows it.
    """
    b = cfg.balancer
    if b is None:
        return [ok("sysctl", "no [balancer]: no forwarding or non-local bind needed")]
    out: list[Finding] = []
    for need in spec_for(b.kind).host(b):
        if need.check is not None and need.sysctl is not None:
            try:
                need.check(b, proc_sys / "net")
            except BalancerError as exc:
                return [Finding("sysctl", "error", str(exc), sysctl_fix(need.sysctl, 1))]
        out.append(ok("sysctl", need.message))
    return out


def check_arp(
    cfg: Config,
    addresses: Mapping[str, Sequence[ipaddress.IPv4Interface]],
    proc_sys: Path = Path("/proc/sys"),
) -> list[Finding]:
    """ARP flux (arp_ignore, arp_announce) where it can happen here; what arp_accept means."""
    conf = proc_sys / "net/ipv4/conf"

    def value(ifname: str, key: str) -> int:
        # The kernel applies the larger of conf/all and conf/<interface>.
        return max(_read_int(conf / "all" / key) or 0, _read_int(conf / ifname / key) or 0)

    out: list[Finding] = []
    for vip in cfg.vip:
        if not isinstance(vip.address, ipaddress.IPv4Interface):
            continue  # IPv6 answers Neighbour Solicitations only on the receiving interface
        subnet = vip.address.network
        others = sorted(
            name
            for name, addrs in addresses.items()
            if name not in (vip.interface, "lo") and any(a.ip in subnet for a in addrs)
        )
        # Linux answers ARP for any local address on any interface: another interface on the
        # VIP's subnet would answer for the VIP with its own MAC (ARP flux).
        flux = [n for n in others if value(n, "arp_ignore") < 1 or value(n, "arp_announce") < 2]
        if flux:
            message = (
                f"{', '.join(flux)} also on {subnet} with arp_ignore < 1 or arp_announce < 2:"
                f" it may answer ARP for {vip.address.ip} with its own MAC (ARP flux)"
            )
            fix = (
                f"{sysctl_fix('net.ipv4.conf.all.arp_ignore', 1)} && "
                f"{sysctl_fix('net.ipv4.conf.all.arp_announce', 2)}"
            )
            out.append(Finding("arp", "warning", message, fix))
        else:
            message = (
                f"no other interface on {subnet}: arp_ignore/arp_announce need no change on"
                " this node (a dr balancer's backends do need them)"
            )
            out.append(ok("arp", message))
    for ifname in sorted({v.interface for v in cfg.vip if v.address.version == 4}):
        accept = _read_int(conf / ifname / "arp_accept")
        message = (
            f"arp_accept on {ifname} is {'?' if accept is None else accept}: not relevant on"
            " the pair; the neighbours' setting is what counts, and a gratuitous ARP updates"
            " the entries they have whatever it is (arp_accept only lets them create new ones)"
        )
        out.append(ok("arp", message))
    return out


def tools_needed(cfg: Config) -> list[str]:
    """Programs the configured balancer runs (the daemon itself needs none)."""
    return [p.name for p in _programs(cfg)]


def _programs(cfg: Config) -> tuple[Program, ...]:
    b = cfg.balancer
    return () if b is None else spec_for(b.kind).programs(b)


def find_program(name: str) -> str | None:
    """``name`` on PATH or in the sbin directories (root's tools live there)."""
    return shutil.which(name) or shutil.which(name, path=SBIN)


def check_tools(cfg: Config, which: Callable[[str], str | None] = find_program) -> list[Finding]:
    """The balancer's programs are installed; report the version each one gives."""
    b = cfg.balancer
    programs = _programs(cfg)
    if b is None or not programs:
        return [ok("tools", "no external program needed for this configuration")]
    out: list[Finding] = []
    for program in programs:
        name, configured = program.name, program.configured
        path = configured or which(name)
        if configured and not (Path(configured).is_file() and os.access(configured, os.X_OK)):
            message = f"{program.setting}: {configured} is not an executable file"
            fix = f"set {program.setting} to {name}'s path, or remove it to use PATH"
            out.append(Finding("tools", "error", message, fix))
        elif path is None:
            message = f"{name} is not installed; the {b.kind} balancer needs it"
            out.append(Finding("tools", "error", message, f"apt-get install {_PACKAGES[name]}"))
        else:
            out.append(_version(name, path))
    return out


def _version(name: str, path: str) -> Finding:
    flag = _VERSION_FLAG[name]
    try:
        proc = subprocess.run(
            [path, flag], capture_output=True, text=True, timeout=VERSION_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return Finding("tools", "warning", f"`{path} {flag}` did not run: {exc}")
    # nginx prints its version on stderr.
    lines = [ln.strip() for ln in (proc.stdout + "\n" + proc.stderr).splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        why = lines[0] if lines else f"exit {proc.returncode}"
        return Finding("tools", "warning", f"`{path} {flag}` failed: {why}")
    return ok("tools", f"{name} ({path}): {lines[0]}")


def check_secret(cfg: Config) -> tuple[list[Finding], bytes | None]:
    """The key file passes read_secret's checks (mode, size, base64); returns the key too."""
    path = cfg.cluster.secret_file
    try:
        key = read_secret(path)
    except ConfigError as exc:
        findings = []
        for _, message in exc.problems:
            command = re.search(r"`([^`]+)`", message)  # read_secret's hints quote the fix
            if "permission denied" in message:
                fix = "run hapair doctor as the daemon's user (root)"
            else:
                fix = command.group(1) if command else f"(umask 077; hapair keygen > {path})"
            findings.append(Finding("secret", "error", message, fix))
        return findings, None
    mode = stat.S_IMODE(os.stat(path).st_mode)
    return [ok("secret", f"{path}: mode {mode:04o}, a {len(key) * 8}-bit key")], key


def check_clock(cfg: Config, wall: float, synced: bool | None, resolution: float) -> list[Finding]:
    """The wall clock was set and is kept in sync; the monotonic clock is fine enough.

    Failover timing uses only the monotonic clock; the wall clock matters for the logs.
    """
    out: list[Finding] = []
    if wall < CLOCK_FLOOR:
        shown = datetime.datetime.fromtimestamp(wall, datetime.UTC).isoformat(timespec="seconds")
        message = f"the wall clock says {shown}, before any hapair build: it was never set"
        out.append(Finding("clock", "warning", message, "timedatectl set-ntp true"))
    if synced is False:
        message = (
            "the kernel says the clock is not synchronised (adjtimex: TIME_ERROR): the two"
            " nodes' logs may disagree on when a failover happened"
        )
        fix = "timedatectl set-ntp true  # or install chrony"
        out.append(Finding("clock", "warning", message, fix))
    if resolution > cfg.cluster.interval / 10:
        message = (
            f"the monotonic clock ticks every {resolution * 1000:.1f} ms, too coarse for"
            f" cluster.interval = {cfg.cluster.interval * 1000:.0f} ms"
        )
        out.append(Finding("clock", "warning", message, "raise cluster.interval"))
    if not out:
        state = "synchronised" if synced else "sync state unknown"
        out.append(ok("clock", f"wall clock set and {state}; monotonic clock fine-grained"))
    return out


def check_port(cfg: Config, daemon_live: bool) -> tuple[list[Finding], bool]:
    """The heartbeat port is free, or held by this node's own daemon; True if bindable now."""
    port = cfg.cluster.port
    if daemon_live:
        return [ok("port", f"UDP {port} is in use by hapair itself (daemon running)")], False
    families = {peer_family(p) for p in cfg.cluster.peer_addresses} or {socket.AF_INET}
    for family in sorted(families):
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
            except OSError as exc:
                find = f"ss -ulpn 'sport = :{port}'"
                if exc.errno == errno.EADDRINUSE:
                    why = "is in use by another program (another hapair or a VRRP daemon?)"
                    fix = f"{find}  # stop it, or set another cluster.port on both nodes"
                elif exc.errno == errno.EACCES:
                    why, fix = "needs CAP_NET_BIND_SERVICE", "run as root"
                else:
                    why, fix = f"cannot be bound: {exc.strerror}", find
                return [Finding("port", "error", f"UDP {port} {why}", fix)], False
    return [ok("port", f"UDP {port} is free")], True


def peer_family(peer: IpAddress) -> int:
    """The socket family that reaches ``peer``."""
    return socket.AF_INET6 if peer.version == 6 else socket.AF_INET


def check_routes(cfg: Config, has_route: Callable[[IpAddress], bool]) -> list[Finding]:
    """Every peer address is routable (the daemon refuses to start when none is)."""
    peers = cfg.cluster.peer_addresses
    if cfg.cluster.peers_auto:
        return [ok("route", 'cluster.peers = "auto": the peer is found by discovery')]
    bad = [p for p in peers if not has_route(p)]
    if not bad:
        return [ok("route", f"a route to every peer address ({len(peers)})")]
    level: Level = "error" if len(bad) == len(peers) else "warning"
    return [
        Finding(
            "route",
            level,
            f"no route to peer {p} from this host",
            f"ip route get {p}  # add an address on its subnet, or: ip route add {p} via GATEWAY",
        )
        for p in bad
    ]


def ipv4_addresses() -> dict[str, list[ipaddress.IPv4Interface]]:
    """This host's IPv4 addresses by interface name (netlink)."""
    from pyroute2 import IPRoute

    ipr: Any = IPRoute()
    try:
        names = {link["index"]: link.get("ifname") for link in ipr.get_links()}
        out: dict[str, list[ipaddress.IPv4Interface]] = {}
        for msg in ipr.get_addr(family=socket.AF_INET):
            name, text = names.get(msg.get("index")), msg.get("local") or msg.get("address")
            if name and text:
                iface = ipaddress.IPv4Interface(f"{text}/{msg.get('prefixlen')}")
                out.setdefault(str(name), []).append(iface)
        return out
    finally:
        ipr.close()


def clock_synchronised() -> bool | None:
    """Whether the kernel deems the clock synchronised (adjtimex, read only); None: unknown."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # struct timex is 208 bytes on 64-bit Linux; all zero (modes = 0) only reads.
        state = int(libc.adjtimex(ctypes.create_string_buffer(512)))
    except (OSError, AttributeError):
        return None
    return None if state < 0 else state != TIME_ERROR
