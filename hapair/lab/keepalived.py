"""keepalived (Debian's, VRRPv3 unicast) on the same lab nodes, for side-by-side comparison."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from hapair.lab import shell
from hapair.lab.addresses import LAN4, VIP4, VIP6
from hapair.lab.nodes import PEER, PRIORITY, LogReadingPair, Pair, Timers, wait_started
from hapair.lab.shell import LabError

if TYPE_CHECKING:
    from hapair.lab.topology import Lab

KEEPALIVED: Final = "/usr/sbin/keepalived"
VRID: Final = 77


def keepalived_path() -> str | None:
    """Return the keepalived binary, or None when it is not installed."""
    found = shutil.which("keepalived") or (KEEPALIVED if os.path.exists(KEEPALIVED) else None)
    return found


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


class KeepalivedPair(LogReadingPair):
    """keepalived on nodes a and b: one VRRPv3 instance, unicast over the LAN, same VIP."""

    label = "keepalived"
    keepalived_logs = True

    def __init__(self, lab: Lab, timers: Timers, *, binary: str | None = None) -> None:
        self.lab = lab
        self.timers = timers
        super().__init__()
        binary = binary or keepalived_path()
        if binary is None:
            raise LabError("keepalived is not installed (apt-get install keepalived)")
        self.binary = binary

    def _file(self, node: str, suffix: str) -> Path:
        return self.lab.dir / f"keepalived-{node}.{suffix}"

    def config_text(self, node: str) -> str:
        """Return keepalived.conf for `node`: timers and GARP behaviour matched to hapair's."""
        t = self.timers
        # keepalived refuses mixed families in one block; the IPv6 VIP goes in the excluded one.
        excluded = (
            f"    virtual_ipaddress_excluded {{\n        {VIP6}/64 dev eth0\n    }}\n"
            if self.lab.ipv6
            else ""
        )
        # GARP: 5 frames 10 ms apart at takeover, again after 2 s, refresh every 10 s (as hapair).
        return f"""global_defs {{
    router_id lab-{self.lab.prefix}-{node}
    vrrp_version 3
    vrrp_garp_master_delay 2
    vrrp_garp_master_repeat 5
    vrrp_garp_master_refresh 10
    vrrp_garp_master_refresh_repeat 1
    vrrp_garp_interval 0.01
    vrrp_gna_interval 0.01
    vrrp_lower_prio_no_advert false
}}

vrrp_instance VI_1 {{
    state BACKUP
    interface eth0
    virtual_router_id {VRID}
    priority {PRIORITY[node]}
    advert_int {_seconds(t.interval)}
    preempt_delay {_seconds(t.preempt_delay)}
    unicast_src_ip {LAN4[node]}
    unicast_peer {{
        {LAN4[PEER[node]]}
    }}
    virtual_ipaddress {{
        {VIP4}/24 dev eth0
    }}
{excluded}}}
"""

    def write_configs(self) -> None:
        """Write both nodes' keepalived.conf into the lab directory."""
        for node in PEER:
            self._file(node, "conf").write_text(self.config_text(node), encoding="utf-8")

    def check_config(self, node: str) -> None:
        """Run ``keepalived --config-test`` on `node`'s file; raise LabError if it complains."""
        proc = shell.run([self.binary, "-t", "-f", str(self._file(node, "conf"))], check=False)
        if proc.returncode != 0:
            raise LabError(f"keepalived rejects {self._file(node, 'conf')}:\n{proc.stderr}")

    def start(self, node: str) -> None:
        """Start keepalived (VRRP only, foreground, console log) in `node`; wait until it runs."""
        since = time.time()
        # After a SIGKILL the pid files stay, and the killed VRRP child can linger as a zombie
        # (pid 1 here may reap late); keepalived would then refuse with "already running".
        for suffix in ("pid", "vrrp.pid", "checkers.pid"):
            self._file(node, suffix).unlink(missing_ok=True)
        argv = [
            self.binary,
            "-n",
            "-l",
            "-D",
            "-G",
            "-P",
            "-f",
            str(self._file(node, "conf")),
            "-p",
            str(self._file(node, "pid")),
            "-r",
            str(self._file(node, "vrrp.pid")),
            "-c",
            str(self._file(node, "checkers.pid")),
        ]
        self.lab.spawn(f"keepalived-{node}", node, argv, stamp_lines=True)

        wait_started(self, node, since, "role_changed", "entered no state")

    def log_path(self, node: str) -> Path:
        """Return `node`'s timestamped keepalived log."""
        return self.lab.dir / f"keepalived-{node}.log"

    def kill(self, node: str) -> None:
        """SIGKILL keepalived and its VRRP child (the whole process group)."""
        self.lab.stop(f"keepalived-{node}", sig=signal.SIGKILL)

    def terminate(self, node: str) -> None:
        """SIGTERM keepalived's parent (it stops its child, which sends priority 0)."""
        self.lab.stop(f"keepalived-{node}", sig=signal.SIGTERM, group=False, timeout=10.0)

    def release(self, node: str) -> float:
        """Delete the VIPs by hand, as an ExecStopPost for keepalived would; return when done."""
        self.lab.remove_vips(node)
        return time.time()

    def handover(self, node: str) -> bool | None:
        """keepalived has no planned handover command."""
        return None

    def running(self, node: str) -> bool:
        """Return whether keepalived on `node` is alive."""
        return self.lab.running(f"keepalived-{node}")

    def pids(self, node: str) -> list[int]:
        """Return the pids of keepalived's parent and children on `node`."""
        proc = self.lab.procs.get(f"keepalived-{node}")
        if proc is None or not self.running(node):
            return []
        return shell.group_pids(proc.pid)


def bench_pair(lab: Lab, keepalived: bool) -> Pair:
    """The pair a benchmark drives in `lab`: keepalived (configs written and checked) or
    hapair, at the lab's timers."""
    if not keepalived:
        pair: Pair = lab.hapair
        return pair
    kp = KeepalivedPair(lab, lab.hapair.timers)
    kp.write_configs()
    kp.check_config("a")
    return kp
