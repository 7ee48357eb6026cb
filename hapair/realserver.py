"""``hapair realserver``: prepare a backend host for direct routing, and undo it.

With ``balancer.kind = "dr"`` the dispatcher hands each client frame to a backend unchanged:
the IP destination is still the VIP. The backend accepts it only if it owns the VIP, so the VIP
goes on its loopback (``/32`` or ``/128``: no subnet route). But Linux answers ARP for any
local address on any interface, so the backend would answer "VIP is at my MAC" on the LAN and
steal the VIP from the pair. Two sysctls keep it quiet:

- ``arp_ignore = 1``: answer an ARP request only if the asked address is configured on the
  interface the request came in on (the VIP is on ``lo``, requests come in on the LAN);
- ``arp_announce = 2``: when asking ARP questions itself, always use the best address of the
  outgoing interface as the sender, never the VIP (which would poison the neighbours' caches).

The kernel uses the larger of ``conf.all`` and ``conf.<interface>`` for both, so setting them
on ``all`` covers every interface. IPv6 needs neither: the kernel answers Neighbour
Solicitations only for addresses on the interface they arrive on.

Changes are recorded in a small state file (what was set, and the previous values), so ``down``
restores exactly what ``up`` changed, and only when the last prepared IPv4 VIP goes. The
planning is pure (``plan_up``, ``plan_down``); the edges read and write ``/proc/sys``, call
``ip`` and keep the state file.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from hapair.errors import HapairError
from hapair.iptypes import IpAddress


def default_state_path() -> Path:
    """``/run/hapair/realserver-NETNS.json``: sysctls and addresses belong to a network
    namespace, and every namespace shares ``/run``, so the record is per namespace."""
    try:
        netns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return Path("/run/hapair/realserver.json")
    return Path(f"/run/hapair/realserver-{netns}.json")


DEFAULT_INTERFACE: Final = "lo"
#: What direct routing needs on an IPv4 backend: key -> minimum value (see the module doc).
ARP_SYSCTLS: Final[Mapping[str, int]] = {
    "net.ipv4.conf.all.arp_ignore": 1,
    "net.ipv4.conf.all.arp_announce": 2,
}
IP_TIMEOUT: Final = 10.0


class RealserverError(HapairError):
    """The backend could not be prepared (or restored) for direct routing."""


# ---------------------------------------------------------------- planning (pure) ------------


@dataclass(frozen=True)
class State:
    """What hapair did on this host: prepared VIPs (-> interface) and the sysctls it changed."""

    vips: dict[str, str] = field(default_factory=dict)
    saved: dict[str, int] = field(default_factory=dict)  # sysctl -> value before hapair

    def to_json(self) -> str:
        """The state file's content."""
        return json.dumps({"vips": self.vips, "saved": self.saved}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> State:
        """Read a state file; RealserverError if it is not one of ours."""
        try:
            data = json.loads(text)
            vips = {str(k): str(v) for k, v in data["vips"].items()}
            saved = {str(k): int(v) for k, v in data["saved"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RealserverError(f"unreadable state file: {exc}") from None
        return cls(vips, saved)


@dataclass(frozen=True)
class Plan:
    """The sysctls to write now, the state to keep afterwards, and what to tell the user."""

    state: State
    sysctls: dict[str, int]
    notes: list[str]


def parse_vip(text: str) -> IpAddress:
    """A VIP as given on the command line; RealserverError with a hint otherwise."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        raise RealserverError(
            f"{text!r} is not an IP address (give the bare VIP, e.g. 10.0.1.50 or fd00::50)"
        ) from None
    if address.is_loopback or address.is_unspecified or address.is_multicast:
        raise RealserverError(f"{address} cannot be a VIP (loopback, unspecified or multicast)")
    return address


def needed(vips: Mapping[str, str]) -> dict[str, int]:
    """The sysctls the prepared VIPs need: the ARP ones as long as any IPv4 VIP remains."""
    v4 = any(ipaddress.ip_address(v).version == 4 for v in vips)
    return dict(ARP_SYSCTLS) if v4 else {}


def plan_up(state: State, vip: IpAddress, interface: str, current: Mapping[str, int]) -> Plan:
    """Record ``vip`` and raise each sysctl it needs that is below its minimum.

    A value already at or above the minimum is the administrator's and is left alone (and not
    restored later); a value hapair set before is set again if someone lowered it.
    """
    vips = {**state.vips, str(vip): interface}
    saved = dict(state.saved)
    writes: dict[str, int] = {}
    notes: list[str] = []
    for key, want in needed(vips).items():
        have = current[key]
        if have >= want:
            continue
        if key in saved:
            notes.append(f"{key} was lowered to {have} since hapair set it: setting {want} again")
        else:
            saved[key] = have
        writes[key] = want
    return Plan(State(vips, saved), writes, notes)


def plan_down(state: State, vip: IpAddress, current: Mapping[str, int]) -> Plan:
    """Forget ``vip``; restore the sysctls hapair changed once no prepared VIP needs them.

    A sysctl changed by someone else since hapair set it is left as it is now.
    """
    vips = {k: v for k, v in state.vips.items() if k != str(vip)}
    notes: list[str] = []
    if str(vip) not in state.vips:
        notes.append(f"{vip} was not prepared by hapair realserver up (no record of it)")
    still = needed(vips)
    saved: dict[str, int] = {}
    writes: dict[str, int] = {}
    for key, old in state.saved.items():
        if key in still:
            saved[key] = old
            notes.append(f"{key} kept: still needed by {', '.join(sorted(vips))}")
        elif current.get(key) == ARP_SYSCTLS.get(key):
            writes[key] = old
        else:
            notes.append(f"{key} left at {current.get(key)}: changed since hapair set it")
    return Plan(State(vips, saved), writes, notes)


# ---------------------------------------------------------------- the host (I/O) -------------


def sysctl_path(key: str, root: Path = Path("/proc/sys")) -> Path:
    """``net.ipv4.conf.all.arp_ignore`` -> ``/proc/sys/net/ipv4/conf/all/arp_ignore``."""
    return root.joinpath(*key.split("."))


def read_sysctls(keys: list[str], root: Path = Path("/proc/sys")) -> dict[str, int]:
    """Current integer values of ``keys``."""
    out: dict[str, int] = {}
    for key in keys:
        try:
            out[key] = int(sysctl_path(key, root).read_text().split()[0])
        except (OSError, ValueError, IndexError) as exc:
            raise RealserverError(f"cannot read {key}: {exc}") from None
    return out


def write_sysctls(values: Mapping[str, int], root: Path = Path("/proc/sys")) -> None:
    """Write each value; RealserverError naming the first that fails."""
    for key, value in values.items():
        try:
            sysctl_path(key, root).write_text(f"{value}\n")
        except PermissionError:
            raise RealserverError(f"cannot set {key}: permission denied (run as root)") from None
        except OSError as exc:
            raise RealserverError(f"cannot set {key}={value}: {exc}") from None


def load_state(path: Path) -> State:
    """The state file, or an empty state if there is none."""
    try:
        return State.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return State()
    except OSError as exc:
        raise RealserverError(f"cannot read {path}: {exc}") from None


def save_state(path: Path, state: State) -> None:
    """Write the state atomically (rename); remove the file when nothing is recorded."""
    try:
        if not state.vips and not state.saved:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(state.to_json() + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise RealserverError(f"cannot write {path}: {exc}") from None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    ip = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin:/bin")
    if ip is None:
        raise RealserverError("the ip program is missing: install package iproute2")
    try:
        proc = subprocess.run(
            [ip, *args], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RealserverError(f"ip {' '.join(args)}: {exc}") from None
    if check and proc.returncode != 0:
        raise RealserverError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def has_address(vip: IpAddress, interface: str) -> bool:
    """Whether ``vip`` is configured on ``interface`` (RealserverError if there is no such)."""
    proc = _ip("-j", "addr", "show", "dev", interface, check=False)
    if proc.returncode != 0:
        raise RealserverError(f"interface {interface} does not exist: {proc.stderr.strip()}")
    for link in json.loads(proc.stdout or "[]"):
        for info in link.get("addr_info", []):
            with contextlib.suppress(ValueError, TypeError):
                if ipaddress.ip_address(info.get("local")) == vip:
                    return True
    return False


def _host_prefix(vip: IpAddress) -> str:
    return f"{vip}/{32 if vip.version == 4 else 128}"


def _sysctl_keys(state: State) -> list[str]:
    return sorted({*ARP_SYSCTLS, *state.saved})


def up(
    vip: IpAddress, interface: str = DEFAULT_INTERFACE, state_path: Path | None = None
) -> list[str]:
    """Quiet ARP first, then add the VIP (never a moment where this host answers ARP for it)."""
    state_path = state_path or default_state_path()
    has_address(vip, interface)  # the interface exists, before anything changes
    state = load_state(state_path)
    plan = plan_up(state, vip, interface, read_sysctls(_sysctl_keys(state)))
    save_state(state_path, plan.state)  # first: a crash in between still knows the old values
    write_sysctls(plan.sysctls)
    report = [*plan.notes, *(f"set {k}={v}" for k, v in plan.sysctls.items())]
    if has_address(vip, interface):
        report.append(f"{_host_prefix(vip)} already on {interface}")
    else:
        _ip("addr", "add", _host_prefix(vip), "dev", interface)
        report.append(f"added {_host_prefix(vip)} on {interface}")
    return report


def down(vip: IpAddress, interface: str | None = None, state_path: Path | None = None) -> list[str]:
    """Remove the VIP first (so it is never on a host that answers ARP for it), then restore."""
    state_path = state_path or default_state_path()
    state = load_state(state_path)
    dev = interface or state.vips.get(str(vip), DEFAULT_INTERFACE)
    report: list[str] = []
    if has_address(vip, dev):
        _ip("addr", "del", _host_prefix(vip), "dev", dev)
        report.append(f"removed {_host_prefix(vip)} from {dev}")
    else:
        report.append(f"{vip} was not on {dev}")
    plan = plan_down(state, vip, read_sysctls(_sysctl_keys(state)))
    write_sysctls(plan.sysctls)
    save_state(state_path, plan.state)
    report += [*plan.notes, *(f"restored {k}={v}" for k, v in plan.sysctls.items())]
    return report
