"""This node's fitness, pure: carrier per interface and the ``[[track]]`` checks' debounced
states give its effective priority and whether it is in FAULT (`hapair.core.priority`).

The driver feeds it what netlink and the probes report and asks `evaluate` after each
change; it never reads the kernel itself (the first carrier states are passed to `start`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from hapair.config.model import InterfaceTrack
from hapair.core.priority import Fitness, Weight, compute_fitness
from hapair.net.tracking import Check


class FitnessTracker:
    """Carrier of the VIPs' and the tracked interfaces, and the checks, for one node."""

    def __init__(self, base: int, vip_interfaces: Iterable[str], checks: list[Check]) -> None:
        self.base = base
        self.vip_interfaces = frozenset(vip_interfaces)
        self.checks = checks
        self.carrier: dict[str, bool] = {}

    def interfaces(self) -> set[str]:
        """Every interface whose carrier matters: the VIPs' and those tracked."""
        tracked = {c.track.interface for c in self.checks if isinstance(c.track, InterfaceTrack)}
        return set(self.vip_interfaces) | tracked

    def start(self, carrier: Mapping[str, bool]) -> None:
        """The carrier of each of `interfaces` as it is now; a tracked interface that is down
        fails its check at once (no `fall` to wait for: the kernel said so)."""
        self.carrier = {name: carrier[name] for name in self.interfaces()}
        for c in self.checks:
            if isinstance(c.track, InterfaceTrack) and not self.carrier[c.track.interface]:
                c.state.up = False

    def carrier_changed(self, interface: str, up: bool) -> bool:
        """Netlink says `interface`'s carrier is `up`; True if that is news for the fitness."""
        if interface not in self.carrier or self.carrier[interface] == up:
            return False
        self.carrier[interface] = up
        return True

    def evaluate(self) -> Fitness:
        """The fitness from the current carrier and check states (never counted up or down)."""
        failing: list[tuple[str, Weight]] = [
            (f"carrier_lost:{name}", "fault")
            for name in sorted(self.vip_interfaces)
            if not self.carrier.get(name, True)
        ]
        for c in self.checks:
            if isinstance(c.track, InterfaceTrack):
                down = not self.carrier.get(c.track.interface, True)
                if down != c.failing:
                    c.state.up = not down
            if c.failing:
                failing.append((c.name, c.weight))
        return compute_fitness(self.base, failing)
