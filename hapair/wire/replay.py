"""Replay guard: per-sender high-water marks over (boot_epoch, seq), bounded, persistable."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

MAX_SENDERS: Final = 64
_U64_MAX: Final = 0xFFFF_FFFF_FFFF_FFFF

Mark = tuple[int, int]


def _valid_mark(mark: object) -> bool:
    # Lists are accepted too: a JSON round trip turns the persisted tuples into lists.
    return (
        isinstance(mark, tuple | list)
        and len(mark) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _U64_MAX for v in mark)
    )


class ReplayGuard:
    """Accepts a (boot_epoch, seq) pair from a sender only if it is above that sender's mark."""

    __slots__ = ("_capacity", "_marks")

    def __init__(self, capacity: int = MAX_SENDERS) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._marks: dict[str, Mark] = {}

    def accept(self, node: str, boot_epoch: int, seq: int) -> bool:
        """True, raising the mark, iff (boot_epoch, seq) > the sender's mark; False otherwise."""
        mark = self._marks.get(node)
        if mark is None:
            # Refuse rather than evict: evicting a known sender would let its old packets replay.
            if len(self._marks) >= self._capacity:
                return False
        elif (boot_epoch, seq) <= mark:
            return False
        self._marks[node] = (boot_epoch, seq)
        return True

    def mark(self, node: str) -> Mark | None:
        """Return the sender's current high-water mark, or None if it has never been accepted."""
        return self._marks.get(node)

    def __len__(self) -> int:
        return len(self._marks)

    def snapshot(self) -> dict[str, Mark]:
        """Return a copy of every mark, for persisting across this process's restarts."""
        return dict(self._marks)

    def restore(self, marks: Mapping[str, Mark]) -> None:
        """Merge persisted marks, never lowering one; ValueError (nothing applied) if any is bad."""
        merged = dict(self._marks)
        for node, mark in marks.items():
            if not isinstance(node, str) or not node:
                raise ValueError(f"bad sender name in replay marks: {node!r}")
            if not _valid_mark(mark):
                raise ValueError(f"bad replay mark for {node!r}: {mark!r}")
            epoch, seq = mark
            current = merged.get(node)
            merged[node] = (epoch, seq) if current is None else max(current, (epoch, seq))
        if len(merged) > self._capacity:
            raise ValueError(f"{len(merged)} senders exceed the cap of {self._capacity}")
        self._marks = merged
