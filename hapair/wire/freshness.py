"""Heartbeat freshness without a clock or a state file: run nonces, sequence marks, challenges.

Pure: no I/O, no clock. The rule (docs/protocol.md, "Freshness"): per peer the receiver holds
the accepted ``run`` and the highest accepted ``seq`` of that run. A packet of the accepted run
is fresh iff its seq is above the mark. A packet of any other run is accepted, replacing the
old run, only if it echoes the receiver's current challenge C; every such acceptance rotates
C, so a recording, which can only echo challenges that were current while it was made, is
never accepted once any later run has been.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from hapair.wire.heartbeat import U64_MAX, RejectReason

#: Most peers tracked at once; an authentic sender beyond that is refused, never evicted
#: (evicting a peer would forget its accepted run, and so reopen it to its own replays).
MAX_PEERS: Final = 64


class Verdict(enum.Enum):
    """What `Freshness.check()` made of one authentic packet."""

    FRESH = "fresh"  # the accepted run, seq above the mark
    NEW_RUN = "new_run"  # another run, echoing our current challenge: accepted, C rotated
    SAME = "same"  # the accepted run, seq equal to the mark: the newest packet again
    REPLAY = "replay"  # the accepted run, seq below the mark: old, replayed or reordered
    UNPROVEN = "unproven"  # another run that does not echo our current challenge
    TOO_MANY_PEERS = "too_many_peers"  # an unknown sender while MAX_PEERS are tracked

    @property
    def accepted(self) -> bool:
        """True iff the packet is news from the peer (feed it to the election)."""
        return self in (Verdict.FRESH, Verdict.NEW_RUN)

    @property
    def reject_reason(self) -> RejectReason | None:
        """The reason to count for a refused packet; None for FRESH, NEW_RUN and SAME."""
        return _REASONS.get(self)


_REASONS: Final = {
    Verdict.REPLAY: RejectReason.REPLAY,
    Verdict.UNPROVEN: RejectReason.UNPROVEN,
    Verdict.TOO_MANY_PEERS: RejectReason.TOO_MANY_PEERS,
}


@dataclass(slots=True)
class _Peer:
    run: int = 0  # 0: no run of this peer accepted yet
    seq: int = 0
    challenge: int = 0  # the peer's challenge to echo back (see Freshness.echo)


class Freshness:
    """The receiver's side of the freshness rule, and the echo its own packets carry."""

    __slots__ = ("_capacity", "_challenge", "_echo_from", "_peers", "_previous", "_random",
                 "rotations")  # fmt: skip

    def __init__(self, random64: Callable[[], int], capacity: int = MAX_PEERS) -> None:
        """`random64` returns a random non-zero 64-bit value (production: `secrets`)."""
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._random = random64
        self._capacity = capacity
        self._peers: dict[str, _Peer] = {}
        self._challenge = self._draw()
        self._previous = 0
        self._echo_from: str | None = None
        #: Bumped at every rotation of the challenge (the kernel filter's tokens change then).
        self.rotations = 0

    def _draw(self) -> int:
        value = self._random()
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= U64_MAX:
            raise ValueError(f"random64() must return an int in 1..2**64-1, got {value!r}")
        return value

    @property
    def challenge(self) -> int:
        """Our current challenge C: the challenge field of our next packet."""
        return self._challenge

    @property
    def previous_challenge(self) -> int:
        """The challenge before the last rotation (0 if C never rotated)."""
        return self._previous

    @property
    def echo(self) -> int:
        """The echo field of our next packet: the peer's challenge to prove we are live (0: none).

        It is the challenge of the newest packet of the peer's accepted run; while no run of
        that peer is accepted, of its newest authentic packet. A pair has one peer; with more,
        the echo follows the peer heard from last.
        """
        peer = self._peers.get(self._echo_from) if self._echo_from is not None else None
        return 0 if peer is None else peer.challenge

    def accepted_run(self, node: str) -> int | None:
        """The run of `node` accepted now, or None."""
        peer = self._peers.get(node)
        return peer.run if peer is not None and peer.run else None

    def mark(self, node: str) -> tuple[int, int] | None:
        """(run, highest accepted seq) of `node`, or None if no run of it was accepted."""
        peer = self._peers.get(node)
        return (peer.run, peer.seq) if peer is not None and peer.run else None

    def any_accepted(self) -> bool:
        """True once some peer's run has been accepted (then peers echo our challenges)."""
        return any(p.run for p in self._peers.values())

    def __len__(self) -> int:
        return len(self._peers)

    def check(self, node: str, run: int, seq: int, challenge: int, echo: int) -> Verdict:
        """Judge one authentic packet of `node`, updating marks, echo and C as the rule says."""
        peer = self._peers.get(node)
        if peer is None:
            if len(self._peers) >= self._capacity:
                return Verdict.TOO_MANY_PEERS
            peer = self._peers[node] = _Peer()
        if peer.run and run == peer.run:
            if seq > peer.seq:
                peer.seq = seq
                self._heard(node, peer, challenge)
                return Verdict.FRESH
            return Verdict.SAME if seq == peer.seq else Verdict.REPLAY
        if echo != self._challenge:
            if not peer.run:
                # Nothing accepted from this peer yet: echo what it asks, so it can accept us.
                self._heard(node, peer, challenge)
            return Verdict.UNPROVEN
        peer.run, peer.seq = run, seq
        self._heard(node, peer, challenge)
        self._previous, self._challenge = self._challenge, self._draw()
        self.rotations += 1
        return Verdict.NEW_RUN

    def _heard(self, node: str, peer: _Peer, challenge: int) -> None:
        peer.challenge = challenge
        self._echo_from = node
