"""Events fed into the election: plain data, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass

from hapair.core.advert import Advert


@dataclass(frozen=True, slots=True)
class PeerHeard:
    """An authenticated, fresh heartbeat from a peer (the driver has verified MAC and replay)."""

    node: str
    advert: Advert
    link: str = ""


@dataclass(frozen=True, slots=True)
class Tick:
    """Time has passed; the machine checks its own deadlines."""


@dataclass(frozen=True, slots=True)
class FitnessChanged:
    """This node's health changed: a new effective priority, or a forced FAULT."""

    effective_priority: int
    fault: bool
    reason: str


@dataclass(frozen=True, slots=True)
class MaintenanceChanged:
    """An operator turned maintenance on (hand over, then stay BACKUP) or off."""

    on: bool


@dataclass(frozen=True, slots=True)
class HandoverRequested:
    """An operator asked for a planned switchover to the peer."""


@dataclass(frozen=True, slots=True)
class ShutdownRequested:
    """The daemon is stopping (SIGTERM): resign gracefully, then release."""


Event = (
    PeerHeard | Tick | FitnessChanged | HandoverRequested | ShutdownRequested | MaintenanceChanged
)
