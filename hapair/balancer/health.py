"""Backend health ("the detector"), sans-IO: which backends are in the pool, and when to probe.

The driver asks ``due(now)`` which probes to start, runs them (``hapair.balancer.probes``), and
feeds each result back with ``record``; a backend leaves the pool after ``fall`` consecutive
failures and returns after ``rise`` successes (HAProxy's semantics). Every change comes back as
a ``HealthChange`` with its reason, for the data plane and for the log
(``backend_down`` / ``backend_up``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from hapair.probing import ProbeState

ProbeKind = Literal["tcp", "http", "none"]

#: A cap on backends: the table is fed by configuration, but keep every structure bounded.
MAX_BACKENDS: Final = 1024


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """How to check one backend."""

    kind: ProbeKind
    host: str
    port: int
    interval: float = 1.0
    timeout: float = 0.5
    rise: int = 2
    fall: int = 3
    path: str = "/"
    expect_status: int = 200
    body_contains: str | None = None


@dataclass(frozen=True, slots=True)
class HealthChange:
    """A backend entered or left the pool."""

    backend: str
    up: bool
    reason: str


@dataclass(slots=True)
class _Backend:
    spec: ProbeSpec
    state: ProbeState
    last_reason: str = "not probed yet"
    probes: int = field(default=0)


class HealthBoard:
    """The health of every backend; pure (time is passed in)."""

    def __init__(self, specs: Mapping[str, ProbeSpec], now: float) -> None:
        if len(specs) > MAX_BACKENDS:
            raise ValueError(f"at most {MAX_BACKENDS} backends")
        # Backends start in the pool (as HAProxy's servers do): a fresh node must not start
        # with an empty pool; a dead one leaves after `fall` probes.
        self._backends = {
            name: _Backend(spec, ProbeState(spec.rise, spec.fall, spec.interval, now))
            for name, spec in specs.items()
        }

    def carry_over(self, old: HealthBoard) -> None:
        """Keep what ``old`` knew of backends whose probe did not change (a config reload)."""
        for name, b in self._backends.items():
            previous = old._backends.get(name)
            if previous is not None and previous.spec == b.spec:
                self._backends[name] = previous

    def due(self, now: float) -> list[str]:
        """Backends whose probe should start now; they are marked in flight."""
        out = []
        for name, b in self._backends.items():
            if b.spec.kind != "none" and b.state.start(now):
                out.append(name)
        return out

    def record(self, name: str, ok: bool, reason: str, now: float) -> HealthChange | None:
        """Feed one probe result; return the change of pool membership, if any."""
        b = self._backends[name]
        b.probes += 1
        b.last_reason = reason
        if b.state.record(ok, now):
            return HealthChange(name, b.state.up, reason)
        return None

    def next_deadline(self) -> float | None:
        """When the next probe is due (None if nothing is probed)."""
        times = [
            t
            for b in self._backends.values()
            if b.spec.kind != "none" and (t := b.state.next_deadline()) is not None
        ]
        return min(times) if times else None

    def healthy(self) -> list[str]:
        """Backends in the pool, in configuration order."""
        return [name for name, b in self._backends.items() if b.state.up]

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Per backend: up, last reason, probes run (for ``hapair status``)."""
        return {
            name: {"up": b.state.up, "reason": b.last_reason, "probes": b.probes}
            for name, b in self._backends.items()
        }
