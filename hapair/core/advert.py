"""What a node says about itself in every heartbeat: the one record of those fields.

The election fills it (`Election.advert`), the wire carries it (`Heartbeat.advert` in
`hapair.wire.heartbeat`), the receiver's election reads it (`PeerHeard.advert`) and keeps the
last one per peer (`PeerState.advert`). Nothing copies its fields one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

from hapair.core.roles import Role


@dataclass(frozen=True, slots=True)
class Advert:
    """A node's role and standing, as of its last heartbeat (validated only on the wire)."""

    role: Role
    base_priority: int
    effective_priority: int
    resigning: bool
    term: int
    interval_ms: int
    vip_digest: bytes
    maintenance: bool = False

    @property
    def interval(self) -> float:
        """The sender's heartbeat interval in seconds (its dead time is computed from it)."""
        return self.interval_ms / 1000


def interval_ms(interval: float) -> int:
    """An interval in seconds as the wire's whole milliseconds (at least 1)."""
    return max(1, round(interval * 1000))
