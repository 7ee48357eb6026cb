"""Actions the election asks the driver to perform. Every action carries a reason."""

from __future__ import annotations

from dataclasses import dataclass

from hapair.core.roles import Role


@dataclass(frozen=True, slots=True)
class RoleChanged:
    """The role changed; the driver logs it and updates status."""

    from_role: Role
    to_role: Role
    reason: str
    term: int


@dataclass(frozen=True, slots=True)
class AcquireVips:
    """Add every VIP to its interface (idempotent)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ReleaseVips:
    """Remove every VIP (idempotent)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Announce:
    """Start a gratuitous ARP / unsolicited NA burst for every VIP."""

    reason: str


@dataclass(frozen=True, slots=True)
class SendHeartbeat:
    """Send a heartbeat to every peer address now (besides the periodic ones)."""

    reason: str
    resigning: bool = False


@dataclass(frozen=True, slots=True)
class PeerLost:
    """A peer fell silent on every link for its dead interval."""

    node: str
    reason: str


@dataclass(frozen=True, slots=True)
class PeerFound:
    """A peer was heard for the first time, or again after being lost."""

    node: str
    reason: str


@dataclass(frozen=True, slots=True)
class SplitBrain:
    """Another MASTER appeared while this node was MASTER (e.g. a healed partition)."""

    node: str
    reason: str


@dataclass(frozen=True, slots=True)
class VipSetMismatch:
    """The peer announces a different VIP set: a configuration error on one side."""

    node: str
    reason: str


@dataclass(frozen=True, slots=True)
class HandoverRefused:
    """A handover request could not be honoured."""

    reason: str


@dataclass(frozen=True, slots=True)
class Stopped:
    """Shutdown finished: VIPs are released; the driver may exit."""

    reason: str


Action = (
    RoleChanged
    | AcquireVips
    | ReleaseVips
    | Announce
    | SendHeartbeat
    | PeerLost
    | PeerFound
    | SplitBrain
    | VipSetMismatch
    | HandoverRefused
    | Stopped
)
