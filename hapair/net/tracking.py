"""Fitness checks (``[[track]]``): interface carrier, gateway reachability, a command.

Each check keeps its own rise/fall hysteresis and probe schedule (``hapair.probing``); the
daemon recomputes the effective priority from the set of currently failing checks
(``hapair.core.priority``), never by counting.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from typing import Final

from hapair.config.model import CommandTrack, GatewayTrack, InterfaceTrack, Track
from hapair.core.priority import Weight
from hapair.probing import ProbeState
from hapair.spawn import spawn

#: How long a probe killed at its timeout gets to be reaped before the check moves on.
KILL_REAP: Final = 1.0


@dataclass
class Check:
    """One configured check: its debounced state and its probe schedule (``state``)."""

    name: str
    weight: Weight
    track: Track
    state: ProbeState
    argv: tuple[str, ...] = field(default_factory=tuple)

    @property
    def failing(self) -> bool:
        """True while the debounced state is down."""
        return not self.state.up


def describe(index: int, track: Track) -> str:
    """A short, stable name for logs: ``interface:eth1``, ``gateway:10.0.0.1``, ``command[2]``."""
    if isinstance(track, InterfaceTrack):
        return f"interface:{track.interface}"
    if isinstance(track, GatewayTrack):
        return f"gateway:{track.address}"
    return f"command[{index}]"


def gateway_argv(track: GatewayTrack) -> tuple[str, ...]:
    """The probe command for a gateway check: iputils ``ping`` (ICMP) or ``arping`` (ARP)."""
    wait = str(max(1, math.ceil(track.timeout)))
    if track.method == "arp":
        if track.interface is None:
            raise ValueError("an ARP gateway check needs track.interface")
        # Debian's arping (Habets): -i names the interface, -C 1 returns on the first reply
        # (without it, arping sits out a whole 1 s interval); exit status 0 only on a reply.
        return (
            "arping", "-q", "-c", "1", "-C", "1", "-w", wait, "-i", track.interface,
            str(track.address),
        )  # fmt: skip
    argv = ["ping", "-q", "-n", "-c", "1", "-W", wait]
    if track.interface:
        argv += ["-I", track.interface]
    return (*argv, str(track.address))


def build_checks(tracks: tuple[Track, ...], now: float) -> list[Check]:
    """Checks for every ``[[track]]`` entry; all start healthy (a fall is needed to fail)."""
    checks: list[Check] = []
    for index, track in enumerate(tracks):
        argv: tuple[str, ...] = ()
        if isinstance(track, CommandTrack):
            argv = tuple(track.command)
        elif isinstance(track, GatewayTrack):
            argv = gateway_argv(track)
        checks.append(
            Check(
                name=describe(index, track),
                weight=track.weight,
                track=track,
                state=ProbeState(track.rise, track.fall, track.interval, now),
                argv=argv,
            )
        )
    return checks


def missing_programs(checks: list[Check]) -> list[str]:
    """Programs named by checks that are not on PATH (reported at start-up, not at failure)."""
    return sorted({c.argv[0] for c in checks if c.argv and shutil.which(c.argv[0]) is None})


async def run_probe(argv: tuple[str, ...], timeout: float) -> bool:
    """Run ``argv`` (no shell; started off the loop) with a timeout; True on exit status 0."""
    try:
        child = await spawn(argv)
    except (OSError, ValueError, subprocess.SubprocessError):
        return False
    done, _ = await asyncio.wait({child.exited}, timeout=timeout)
    if done:
        return child.returncode == 0
    child.signal_group(signal.SIGKILL)
    await asyncio.wait({child.exited}, timeout=KILL_REAP)
    return False
