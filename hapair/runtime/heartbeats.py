"""Heartbeat send and receive for one node: datagrams in, PeerHeard events out; state in, packets.

Owns this process's run nonce and sequence, the challenge/echo state (`Freshness`) and the
rejection counts. It never reads the clock: `now` comes from the driver.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from hapair.core.advert import Advert
from hapair.core.events import PeerHeard
from hapair.wire.freshness import Freshness, Verdict
from hapair.wire.heartbeat import (
    Rejected,
    RejectReason,
    StaticFields,
    check_advert,
    decode,
    encode_checked,
    filter_token,
    static_fields,
)
from hapair.wire.rejects import RejectCounter

#: Least gap between two prompt replies, in our intervals (a replayed recording could ask for
#: one per packet; this caps the extra heartbeats at four per interval).
PROMPT_GAP: Final = 0.25


def random64() -> int:
    """A random non-zero 64-bit value from the OS's CSPRNG (runs and challenges)."""
    return secrets.randbelow(2**64 - 1) + 1


class HeartbeatObserver(Protocol):
    """Where heartbeat counts go (metrics); `OpsNotifier` is one."""

    def heartbeat_sent(self) -> None:
        """One heartbeat went out."""

    def heartbeat_received(self, peer: str, now: float) -> None:
        """A heartbeat from `peer` was accepted at `now`."""

    def heartbeat_rejected(self, reason: RejectReason) -> None:
        """A datagram was refused."""


@dataclass(frozen=True, slots=True)
class LinkCopy:
    """The peer's newest heartbeat arrived again on another link: that link is alive."""

    node: str
    link: str


class Heartbeats:
    """This node's heartbeat protocol state (version 2); see docs/protocol.md."""

    def __init__(
        self,
        node: str,
        cluster: bytes,
        key: bytes,
        *,
        log: Any,
        interval_ms: int,
        observer: HeartbeatObserver | None = None,
        random: Callable[[], int] = random64,
    ) -> None:
        self.node = node
        self.cluster = cluster
        self.key = key
        #: Our interval, for the rate limit of prompt replies only.
        self.interval_ms = max(1, interval_ms)
        self.log = log
        self.observer = observer
        self.run = random()
        self.seq = 0
        self.freshness = Freshness(random)
        self.rejects = RejectCounter()
        self._accepted_on: dict[str, str] = {}
        self._tokens_seen = (-1, False)
        self._prompt = False
        self._last_prompt: float | None = None
        #: (datagram, node, key) of the newest accepted heartbeat: its copy from the other
        #: link is known without a second decode and HMAC.
        self._newest: tuple[bytes, str, bytes] | None = None
        #: The last advert validated and its packed form.
        self._checked: tuple[Advert, StaticFields] | None = None
        self._node_raw = node.encode("utf-8")
        #: Called with the new filter tokens whenever they change (the transport's filter).
        self.on_tokens: Callable[[tuple[bytes, ...]], None] | None = None

    # -- receiving -----------------------------------------------------------------------

    def receive(
        self, datagrams: Iterable[tuple[bytes, str]], now: float
    ) -> list[PeerHeard | LinkCopy]:
        """Judge each (datagram, source address); return the accepted ones as events, in order."""
        out: list[PeerHeard | LinkCopy] = []
        for data, source in datagrams:
            try:
                event = self._judge(data, source)
            except Rejected as exc:
                self._rejected(exc, source)
                continue
            if isinstance(event, PeerHeard) and self.observer is not None:
                self.observer.heartbeat_received(event.node, now)
            if event is not None:
                out.append(event)
        self._tokens_maybe_changed()
        return out

    def _judge(self, data: bytes, source: str) -> PeerHeard | LinkCopy | None:
        newest = self._newest
        if newest is not None and data == newest[0] and self.key is newest[2]:
            # Byte for byte the newest accepted heartbeat: decoding it again could only say
            # SAME (its run's mark is its seq until the next accepted one replaces `newest`).
            return self._again(newest[1], "newest heartbeat", source)
        hb = decode(data, self.key, self.cluster)
        if hb.node == self.node:
            raise Rejected(RejectReason.SELF, f"from {source}")
        verdict = self.freshness.check(hb.node, hb.run, hb.seq, hb.challenge, hb.echo)
        if verdict is Verdict.SAME:
            return self._again(hb.node, f"seq {hb.seq}", source)
        if verdict in (Verdict.UNPROVEN, Verdict.NEW_RUN):
            self._prompt = True
        reason = verdict.reject_reason
        if reason is not None:
            raise Rejected(reason, f"{hb.node} run {hb.run:016x} seq {hb.seq} from {source}")
        self._accepted_on[hb.node] = source
        self._newest = (data, hb.node, self.key)
        if verdict is Verdict.NEW_RUN:
            self.log.info("peer_run_accepted", peer=hb.node, run=f"{hb.run:016x}", link=source)
        return PeerHeard(hb.node, hb.advert, link=source)

    def _again(self, node: str, what: str, source: str) -> LinkCopy:
        """The newest accepted heartbeat of `node` once more: the same packet, sent on every
        link, arriving on another one (a LinkCopy), or again on its own link (a replay)."""
        if self._accepted_on.get(node) != source:
            return LinkCopy(node, source)
        raise Rejected(RejectReason.REPLAY, f"{node} {what} again from {source}")

    def _rejected(self, exc: Rejected, source: str) -> None:
        if self.observer is not None:
            self.observer.heartbeat_rejected(exc.reason)
        if self.rejects.record(exc.reason):
            self.log.warning(
                "heartbeat_rejected",
                reason=exc.reason.value,
                source=source,
                detail=exc.detail,
                note="logged once per reason; then only counted (see hapair status)",
            )

    # -- sending -------------------------------------------------------------------------

    def reply_due(self, now: float) -> bool:
        """True, once, when a new run of the peer was just heard: answer it now, not next interval.

        An unproven packet means a peer process that does not know our challenge yet; a new run
        just accepted waits for our echo of its challenge. A packet now instead of at the next
        tick halves the handshake. Rate-limited to one per PROMPT_GAP intervals.
        """
        if not self._prompt:
            return False
        self._prompt = False
        gap = PROMPT_GAP * self.interval_ms / 1000
        # abs(): `now` is trusted to be monotonic, but a step back must not silence replies.
        if self._last_prompt is not None and abs(now - self._last_prompt) < gap:
            return False
        self._last_prompt = now
        return True

    def packet(self, advert: Advert) -> bytes:
        """The next signed heartbeat (seq + 1) saying `advert`, with our challenge and echo."""
        self.seq += 1
        f = self.freshness
        checked = self._checked
        if checked is None or checked[0] != advert:
            # What the election says changed (or this is the first packet): check it once;
            # in between only seq, challenge and echo move.
            check_advert(advert)
            checked = self._checked = (advert, static_fields(advert))
        if self.observer is not None:
            self.observer.heartbeat_sent()
        return encode_checked(
            self.key, self.cluster, self._node_raw, checked[1], self.run, self.seq,
            f.challenge, f.echo,
        )  # fmt: skip

    def steady(self) -> bool:
        """True while nothing in the handshake waits: a peer run is accepted and no prompt
        reply is due (then the peer's packets can wait for our own next tick)."""
        return not self._prompt and self.freshness.any_accepted()

    # -- the kernel filter's tokens ------------------------------------------------------

    def filter_tokens(self) -> tuple[bytes, ...]:
        """(T(C), T(C_prev)) once a peer run is accepted; () before: filter on address only.

        Before any peer run is accepted, the peer cannot be echoing our challenge yet (it may
        be echoing 0 or a challenge of our previous process), and its packets must still get
        in: they carry the challenge we must echo for it to accept us.
        """
        f = self.freshness
        if not f.any_accepted():
            return ()
        tokens = [filter_token(self.key, f.challenge)]
        if f.previous_challenge:
            tokens.append(filter_token(self.key, f.previous_challenge))
        return tuple(tokens)

    def _tokens_maybe_changed(self) -> None:
        seen = (self.freshness.rotations, self.freshness.any_accepted())
        if seen != self._tokens_seen:
            self._tokens_seen = seen
            if self.on_tokens is not None:
                self.on_tokens(self.filter_tokens())

    def rejected(self) -> dict[str, int]:
        """{reason: count} for status and metrics."""
        return self.rejects.counts()
