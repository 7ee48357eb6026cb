"""Counts rejected datagrams per reason so each reason is logged once, then only counted."""

from __future__ import annotations

from hapair.wire.heartbeat import RejectReason


class RejectCounter:
    """Per-reason rejection counts; bounded by the number of RejectReason members."""

    __slots__ = ("_counts", "_total")

    def __init__(self) -> None:
        self._counts: dict[RejectReason, int] = {}
        self._total = 0

    def record(self, reason: RejectReason) -> bool:
        """Count one rejection; True only the first time this reason is seen (log it then)."""
        seen = self._counts.get(reason, 0)
        self._counts[reason] = seen + 1
        self._total += 1
        return seen == 0

    def counts(self) -> dict[str, int]:
        """Return {reason value: count} for every reason seen at least once."""
        return {reason.value: n for reason, n in self._counts.items()}

    @property
    def total(self) -> int:
        """Number of rejections recorded, all reasons together."""
        return self._total
