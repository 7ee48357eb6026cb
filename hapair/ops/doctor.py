"""``hapair doctor``: the preflight an operator runs on each node before it goes live.

Every check returns Findings (ok, warning or error, each problem with the command that fixes
it): capabilities, VIP interfaces and carrier, the sysctls the balancer needs, ARP settings,
the balancer's programs and versions, the secret file, the clocks, the heartbeat port, routes
to the peer, and a probe that listens for the peer's authenticated heartbeats and compares its
VIP set. The host checks are in ``doctor_checks``, the peer probe in ``doctor_peer``; this
module runs them in order against a ``Probes`` (the real host, or fakes in tests) and renders
the report. Nothing here changes the host or disturbs a running pair.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from hapair.config import Config
from hapair.errors import HapairError
from hapair.iptypes import IpAddress
from hapair.ops.control_client import is_live
from hapair.ops.doctor_checks import (
    CAP_NET_RAW,
    Finding,
    Level,
    check_arp,
    check_balancer_sysctls,
    check_capabilities,
    check_clock,
    check_interfaces,
    check_port,
    check_routes,
    check_secret,
    check_tools,
    clock_synchronised,
    effective_caps,
    find_program,
    ipv4_addresses,
)
from hapair.ops.doctor_peer import Capture, CaptureFn, assess_peers, capture_heartbeats, probe_wait


def _has_route(address: IpAddress) -> bool:
    from hapair.net.routes import has_route

    return has_route(address)


def _daemon_live(cfg: Config) -> bool:
    sock = cfg.control_socket_path
    return sock.exists() and is_live(sock)


@dataclass(frozen=True)
class Probes:
    """What the checks look at: the real host by default; tests point each one at fakes."""

    proc: Path = Path("/proc")
    sys: Path = Path("/sys")
    which: Callable[[str], str | None] = find_program
    addresses: Callable[[], Mapping[str, Sequence[ipaddress.IPv4Interface]]] = ipv4_addresses
    has_route: Callable[[IpAddress], bool] = _has_route
    wall: Callable[[], float] = time.time
    synced: Callable[[], bool | None] = clock_synchronised
    daemon_live: Callable[[Config], bool] = _daemon_live
    capture: CaptureFn = capture_heartbeats
    wait: float | None = None  # how long the peer probe listens; None: probe_wait(cfg)


def run_doctor(cfg: Config, probes: Probes | None = None) -> list[Finding]:
    """Run every check, in the order an operator would fix things, and return the findings."""
    p = probes or Probes()
    out = check_capabilities(cfg, p.proc)
    secret, key = check_secret(cfg)
    out += secret
    out += check_interfaces(cfg, p.sys)
    out += check_balancer_sysctls(cfg, p.proc / "sys")
    try:
        addresses = p.addresses()
    except (OSError, HapairError) as exc:
        out.append(Finding("arp", "warning", f"cannot list this host's addresses: {exc}"))
        addresses = {}
    out += check_arp(cfg, addresses, p.proc / "sys")
    out += check_tools(cfg, p.which)
    out += check_clock(cfg, p.wall(), p.synced(), time.get_clock_info("monotonic").resolution)
    port, port_free = check_port(cfg, p.daemon_live(cfg))
    out += port
    out += check_routes(cfg, p.has_route)
    raw_ok = bool(effective_caps(p.proc) & (1 << CAP_NET_RAW))
    wait = p.wait if p.wait is not None else probe_wait(cfg)
    capture = p.capture(cfg, port_free=port_free, raw_ok=raw_ok, wait=wait)
    out += assess_peers(cfg, key, capture, p.wall())
    return out


_MARKS: Final[dict[Level, str]] = {"ok": "[ok]   ", "warning": "[warn] ", "error": "[ERROR]"}


def counts(findings: Iterable[Finding]) -> dict[str, int]:
    """How many findings there are of each level."""
    tally = {"ok": 0, "warning": 0, "error": 0}
    for f in findings:
        tally[f.level] += 1
    return tally


def format_findings(findings: Sequence[Finding]) -> str:
    """One line per finding, its fix indented below, then a summary line."""
    lines = []
    for f in findings:
        lines.append(f"{_MARKS[f.level]} {f.check}: {f.message}")
        if f.fix:
            lines.append(f"          fix: {f.fix}")
    n = counts(findings)
    lines.append(f"{n['ok']} ok, {n['warning']} warning(s), {n['error']} error(s)")
    return "\n".join(lines)


def findings_json(cfg: Config, findings: Sequence[Finding]) -> dict[str, Any]:
    """The ``--json`` report."""
    n = counts(findings)
    return {
        "config": cfg.source,
        "cluster": cfg.cluster.name,
        "node": cfg.node.name,
        "ok": n["error"] == 0,
        "counts": n,
        "findings": [asdict(f) for f in findings],
    }


__all__ = [
    "Capture",
    "Finding",
    "Probes",
    "counts",
    "findings_json",
    "format_findings",
    "run_doctor",
]
