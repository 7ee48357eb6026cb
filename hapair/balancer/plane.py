"""What every balancer data plane offers the daemon: a pool goes in, traffic is served.

The daemon owns the detector (``hapair.balancer.health``) and decides which backends are in
the pool; a data plane only turns that pool into working traffic handling: an nftables table
(``nat``, ``dr``), a supervised nginx or HAProxy (``proxy``, ``redirect``) or a DNS responder
(``dns``). Each one keeps to the same contract, so the daemon, ``hapair release`` and the
tests drive all five kinds the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from hapair.iptypes import IpAddress
from hapair.schedulers import Scheduler

if TYPE_CHECKING:
    from hapair.config.balancer import Balancer


def uses_weights(scheduler: Scheduler) -> bool:
    """``weighted`` and ``source-hash`` honour weights; ``rr`` and ``random`` spread evenly."""
    return scheduler in ("weighted", "source-hash")


def endpoint_name(address: IpAddress, port: int) -> str:
    """``10.0.1.21:8080`` or ``[fd00::21]:8080``."""
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


@dataclass(frozen=True, slots=True)
class Member:
    """One backend in the pool the data plane should serve."""

    address: IpAddress
    port: int
    weight: int = 1

    @property
    def name(self) -> str:
        """``address:port`` as in the configuration and the logs."""
        return endpoint_name(self.address, self.port)


@dataclass(frozen=True, slots=True)
class Pool:
    """The members to serve now; never empty (the daemon keeps the last pool or a sorry server)."""

    members: tuple[Member, ...]
    sorry: bool = False  # the sorry server stands in for a pool that is all down

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("an empty pool would blackhole the VIP: keep the last pool instead")


class DataPlane(Protocol):
    """One balancer kind's data plane.

    Every method raises ``BalancerError`` with a message naming what failed; on failure the
    previously applied pool stays in service (nothing half-applied).
    """

    def preflight(self) -> None:
        """Check, before anything changes, that this host can run the data plane."""

    def reconfigure(self, cfg: Balancer) -> None:
        """Take new settings (same kind, mode and listen) for the next ``apply``."""

    def apply(self, pool: Pool) -> bool:
        """Start serving ``pool``, or switch to it gracefully; False if it was already served."""

    def remove(self) -> bool:
        """Stop serving and remove what hapair made; idempotent, and it works from a fresh
        instance (``hapair release`` after the daemon was killed). True if anything was removed.
        """

    def supervise(self, now: float) -> float | None:
        """Look after what runs (restart a dead process); return when to look again, or None."""

    def status(self) -> dict[str, Any]:
        """What ``hapair status`` shows about the data plane."""
