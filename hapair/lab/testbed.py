"""Where a drill runs: the faults it injects and what it observes, behind one protocol.

The drills (`hapair.lab.drill`) are written once against `Testbed` and `Pair`. Two testbeds
implement it: the network-namespace lab on this machine (`NetnsBed`, here) and the compose lab
in Docker (`hapair.lab.dockerbed.DockerBed`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Protocol

from hapair.lab.addresses import VIP4
from hapair.lab.client import ProbeRun, lines_of, probe_argv

if TYPE_CHECKING:
    from hapair.lab.nodes import Pair
    from hapair.lab.topology import Lab


class Testbed(Protocol):
    """The network the pair runs on, seen and broken from outside the daemons."""

    #: "netns" or "docker": where the figures were measured.
    kind: str
    #: The IPv4 VIP the client probes.
    vip: str

    def start_probe(self) -> ProbeRun:
        """Start the client probe against the VIP; return it running."""

    def vip_holders(self) -> list[str]:
        """Return the nodes that have the VIP configured right now."""

    def has_vip(self, node: str) -> bool:
        """Return whether `node` has the VIP configured right now."""

    def crash(self, node: str) -> float:
        """Kill the whole host `node` at once and cut it off; return when the fault landed."""

    def recover(self, node: str) -> None:
        """Bring a crashed host back (without addresses of its old life) and start its daemon."""

    def set_link(self, node: str, up: bool) -> None:
        """Take `node`'s LAN link down (carrier loss) or back up."""

    def partition(self, heal: bool = False) -> None:
        """Cut every path between the two nodes (or restore them)."""

    def pause(self, node: str, resume: bool = False) -> bool:
        """Freeze every process of `node` (its kernel still answers ARP), or thaw; False if n/a."""


class NetnsBed:
    """The namespace lab (`hapair.lab.topology.Lab`) with its pair, as a drill testbed."""

    kind = "netns"

    def __init__(self, lab: Lab, pair: Pair) -> None:
        self.lab, self.pair, self.vip = lab, pair, VIP4
        self._probes = 0

    def start_probe(self) -> ProbeRun:
        """Run the probe in the client namespace, its stdout piped back here."""
        self._probes += 1
        key = f"probe-{self._probes}"
        argv = probe_argv(sys.executable, self.vip)
        proc = self.lab.spawn(key, "c", argv, stdout=subprocess.PIPE)
        stdout = proc.popen.stdout
        lines = lines_of(iter(stdout.readline, b"")) if stdout is not None else iter(())

        def stop() -> None:
            self.lab.stop(key, sig=signal.SIGTERM, timeout=10.0)

        return ProbeRun(lines, stop)

    def vip_holders(self) -> list[str]:
        """Return the nodes holding the IPv4 VIP on eth0."""
        return self.lab.vip_holders()

    def has_vip(self, node: str) -> bool:
        """Return whether `node` holds the IPv4 VIP on eth0."""
        return self.lab.has_vip(node)

    def crash(self, node: str) -> float:
        """SIGKILL the daemon, then take both of the node's links down."""
        # Signal first and reap later: reaping takes tens of ms, and a dead host is gone at
        # once; a daemon still alive when its links drop would react to the carrier loss instead.
        at = time.time()
        for pid in self.pair.pids(node):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.lab.set_host_links(node, up=False)
        self.pair.kill(node)
        return at

    def recover(self, node: str) -> None:
        """The host "reboots": its addresses are gone before its links come back."""
        self.lab.remove_vips(node)
        self.lab.set_host_links(node, up=True)
        self.pair.start(node)

    def set_link(self, node: str, up: bool) -> None:
        """The node's switch port goes down or up: its eth0 loses or regains carrier."""
        self.lab.set_lan(node, up)

    def partition(self, heal: bool = False) -> None:
        """Blackhole A<->B on both links."""
        self.lab.partition(heal=heal)

    def pause(self, node: str, resume: bool = False) -> bool:
        """SIGSTOP (or SIGCONT) the daemon and the node's service: a hung host."""
        sig = signal.SIGCONT if resume else signal.SIGSTOP
        pids = [*self.pair.pids(node)]
        service = self.lab.procs.get(f"service-{node}")
        if service is not None:
            pids.append(service.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                # The lab starts each program as a process-group leader: freeze its children too.
                if os.getpgid(pid) == pid:
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)
        return bool(pids)
