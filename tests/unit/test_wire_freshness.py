"""Freshness (protocol v2): each verdict, the echo rule, the cap, and a model of two nodes.

The model runs two real `Heartbeats` objects (codec + `Freshness`) exchanging real packets,
with an attacker who records everything and replays anything, restarts that lose all state,
dropped packets and clock steps; it checks safety after every step and liveness on demand.
"""

from __future__ import annotations

import ast
import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from hapair.core.advert import Advert
from hapair.core.events import PeerHeard
from hapair.core.roles import Role
from hapair.runtime.heartbeats import Heartbeats, LinkCopy, random64
from hapair.wire.freshness import MAX_PEERS, Freshness, Verdict
from hapair.wire.heartbeat import RejectReason, cluster_id, decode, filter_token

KEY = bytes(range(32))
CLUSTER = cluster_id("demo")


def counter(start: int = 100) -> itertools.count[int]:
    return itertools.count(start)


def fresh(start: int = 100) -> Freshness:
    """A Freshness whose challenges are start, start + 1, ... (C is `start`)."""
    return Freshness(counter(start).__next__)


# --- one verdict at a time --------------------------------------------------------------

# (run, seq, echo) packets from "beta" to a receiver whose challenges are 100, 101, ...
VERDICT_TABLE = [
    ("first run, echoing C", [(7, 1, 100)], [Verdict.NEW_RUN]),
    ("first run, echo 0", [(7, 1, 0)], [Verdict.UNPROVEN]),
    ("first run, wrong echo", [(7, 1, 55)], [Verdict.UNPROVEN]),
    ("in run, seq up", [(7, 1, 100), (7, 2, 0)], [Verdict.NEW_RUN, Verdict.FRESH]),
    ("in run, seq jump", [(7, 1, 100), (7, 90, 1)], [Verdict.NEW_RUN, Verdict.FRESH]),
    ("same packet again", [(7, 5, 100), (7, 5, 100)], [Verdict.NEW_RUN, Verdict.SAME]),
    ("older seq", [(7, 5, 100), (7, 4, 100)], [Verdict.NEW_RUN, Verdict.REPLAY]),
    ("new run, echoing the rotated C", [(7, 5, 100), (8, 1, 101)], [Verdict.NEW_RUN] * 2),
    ("new run, echoing the old C", [(7, 5, 100), (8, 1, 100)], [Verdict.NEW_RUN, Verdict.UNPROVEN]),
    (
        "old run back after a new one",
        [(7, 5, 100), (8, 1, 101), (7, 6, 0)],
        [Verdict.NEW_RUN, Verdict.NEW_RUN, Verdict.UNPROVEN],
    ),
    (
        "old run back, echoing the C it once saw",
        [(7, 5, 100), (8, 1, 101), (7, 9, 101)],
        [Verdict.NEW_RUN, Verdict.NEW_RUN, Verdict.UNPROVEN],
    ),
    (
        "unproven then proven",
        [(7, 1, 0), (7, 2, 100), (7, 2, 100)],
        [Verdict.UNPROVEN, Verdict.NEW_RUN, Verdict.SAME],
    ),
]


@pytest.mark.parametrize(
    ("packets", "expected"), [row[1:] for row in VERDICT_TABLE], ids=[r[0] for r in VERDICT_TABLE]
)
def test_verdicts(packets: list[tuple[int, int, int]], expected: list[Verdict]) -> None:
    f = fresh()
    got = [f.check("beta", run, seq, 999, echo) for run, seq, echo in packets]
    assert got == expected


def test_new_run_acceptance_rotates_the_challenge_and_keeps_the_previous() -> None:
    f = fresh()
    assert (f.challenge, f.previous_challenge, f.rotations) == (100, 0, 0)
    f.check("beta", 7, 1, 999, 100)
    assert (f.challenge, f.previous_challenge, f.rotations) == (101, 100, 1)
    assert f.mark("beta") == (7, 1) and f.accepted_run("beta") == 7
    f.check("beta", 7, 2, 999, 101)  # in-run packets rotate nothing
    assert (f.challenge, f.rotations) == (101, 1)


def test_refusals_move_nothing() -> None:
    f = fresh()
    f.check("beta", 7, 5, 999, 100)
    for run, seq, echo in [(7, 5, 0), (7, 3, 0), (8, 9, 100), (8, 9, 0)]:
        f.check("beta", run, seq, 1234, echo)
    assert f.mark("beta") == (7, 5) and f.challenge == 101 and f.echo == 999


def test_echo_follows_the_accepted_run_only() -> None:
    f = fresh()
    assert f.echo == 0
    f.check("beta", 7, 1, 11, 0)  # unproven, but nothing accepted yet: echo what it asks
    assert f.echo == 11
    f.check("beta", 7, 2, 12, 100)  # accepted
    assert f.echo == 12
    f.check("beta", 9, 1, 66, 0)  # another run, unproven: a recording must not steer the echo
    assert f.echo == 12
    f.check("beta", 7, 1, 67, 0)  # old seq of the accepted run
    assert f.echo == 12
    f.check("beta", 7, 3, 13, 0)
    assert f.echo == 13


def test_peers_are_capped_and_never_evicted() -> None:
    f = fresh()
    for i in range(MAX_PEERS):
        assert f.check(f"n{i}", 1000 + i, 1, 5, 0) is Verdict.UNPROVEN
    assert len(f) == MAX_PEERS
    assert f.check("late", 1, 1, 5, f.challenge) is Verdict.TOO_MANY_PEERS
    assert f.check("n0", 1000, 2, 5, f.challenge) is Verdict.NEW_RUN  # known ones still work
    assert len(f) == MAX_PEERS


def test_verdicts_map_to_reject_reasons() -> None:
    assert Verdict.REPLAY.reject_reason is RejectReason.REPLAY
    assert Verdict.UNPROVEN.reject_reason is RejectReason.UNPROVEN
    assert Verdict.TOO_MANY_PEERS.reject_reason is RejectReason.TOO_MANY_PEERS
    for v in (Verdict.FRESH, Verdict.NEW_RUN, Verdict.SAME):
        assert v.reject_reason is None
    assert {v for v in Verdict if v.accepted} == {Verdict.FRESH, Verdict.NEW_RUN}


@pytest.mark.parametrize("bad", [0, -1, 2**64, True])
def test_a_bad_random_source_is_refused(bad: int) -> None:
    with pytest.raises(ValueError):
        Freshness(lambda: bad)


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Freshness(random64, capacity=0)


def test_production_random_is_non_zero_64_bit() -> None:
    values = {random64() for _ in range(200)}
    assert all(1 <= v < 2**64 for v in values) and len(values) == 200


# --- no clock anywhere ------------------------------------------------------------------

CLOCKS = {"time", "datetime", "asyncio", "socket", "select"}
ROOT = Path(__file__).resolve().parents[2] / "hapair"


@pytest.mark.parametrize(
    "module", ["wire/freshness.py", "wire/heartbeat.py", "runtime/heartbeats.py"]
)
def test_no_code_path_can_read_a_clock(module: str) -> None:
    tree = ast.parse((ROOT / module).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & CLOCKS, f"{module} imports {imported & CLOCKS}"


# --- the Heartbeats class ---------------------------------------------------------------


class Log:
    """Collects log calls (a structlog stand-in)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, object]]] = []

    def info(self, event: str, **kw: object) -> None:
        self.lines.append(("info", event, kw))

    def warning(self, event: str, **kw: object) -> None:
        self.lines.append(("warning", event, kw))


OUT = Advert(Role.BACKUP, 100, 100, False, 0, 20, bytes(8), False)


def node(name: str, seed: int, log: Log | None = None) -> Heartbeats:
    rng = random.Random(seed)
    return Heartbeats(
        name, CLUSTER, KEY, log=log or Log(), interval_ms=20,
        random=lambda: rng.getrandbits(64) or 1,
    )  # fmt: skip


def deliver(to: Heartbeats, packet: bytes, link: str = "10.0.0.1") -> list[PeerHeard | LinkCopy]:
    return to.receive([(packet, link)], now=0.0)


def test_a_pair_accepts_each_other_in_two_rounds_from_cold() -> None:
    a, b = node("a", 1), node("b", 2)
    heard = []
    for _ in range(2):
        heard += deliver(b, a.packet(OUT))
        heard += deliver(a, b.packet(OUT))
    assert a.freshness.accepted_run("b") == b.run and b.freshness.accepted_run("a") == a.run
    # a's first packet is unproven (echo 0); every packet after it is accepted.
    assert [type(e) for e in heard] == [PeerHeard] * 3


def test_second_link_copy_is_a_link_note_and_a_same_link_copy_a_replay() -> None:
    log = Log()
    a, b = node("a", 1), node("b", 2, log)
    deliver(a, b.packet(OUT))
    packet = a.packet(OUT)
    assert isinstance(deliver(b, packet, "10.0.0.1")[0], PeerHeard)
    assert deliver(b, packet, "192.168.0.1") == [LinkCopy("a", "192.168.0.1")]
    assert deliver(b, packet, "10.0.0.1") == []
    assert deliver(b, packet, "10.0.0.1") == []
    assert b.rejected() == {"replay": 2}
    warnings = [kw["reason"] for level, _e, kw in log.lines if level == "warning"]
    assert warnings == ["replay"]  # logged once, then counted


def test_the_other_links_copy_is_known_without_a_second_decode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = node("a", 1), node("b", 2)
    deliver(a, b.packet(OUT))
    packet = a.packet(OUT)
    calls: list[bytes] = []
    real = decode

    def counting(data: bytes, key: bytes, cluster: bytes) -> object:
        calls.append(data)
        return real(data, key, cluster)

    monkeypatch.setattr("hapair.runtime.heartbeats.decode", counting)
    assert isinstance(deliver(b, packet, "10.0.0.1")[0], PeerHeard)
    assert deliver(b, packet, "192.168.0.1") == [LinkCopy("a", "192.168.0.1")]
    assert deliver(b, packet, "10.0.0.1") == []  # the same link again: a replay, as before
    assert len(calls) == 1
    assert b.rejected() == {"replay": 1}
    # A datagram that differs in one byte is decoded (and refused: its MAC fails).
    forged = packet[:-1] + bytes([packet[-1] ^ 1])
    assert deliver(b, forged, "192.168.0.1") == []
    assert len(calls) == 2 and b.rejected() == {"replay": 1, "bad_mac": 1}


def test_an_outgoing_state_that_cannot_be_sent_is_refused_after_a_good_one() -> None:
    a = node("a", 1)
    a.packet(OUT)
    with pytest.raises(ValueError, match="effective_priority"):
        a.packet(Advert(Role.MASTER, 100, 256, False, 0, 20, bytes(8), False))
    changed = Advert(Role.MASTER, 100, 90, True, 7, 20, bytes(8), True)
    hb = decode(a.packet(changed), KEY, CLUSTER)
    a2 = hb.advert
    assert (a2.role, a2.effective_priority, a2.resigning, a2.term, a2.maintenance) == (
        Role.MASTER, 90, True, 7, True,
    )  # fmt: skip


def test_own_packets_and_garbage_are_counted() -> None:
    a = node("a", 1)
    assert deliver(a, a.packet(OUT)) == []
    assert deliver(a, b"junkjunk") == []
    assert a.rejected() == {"self": 1, "bad_magic": 1}


def test_packets_carry_run_seq_challenge_and_echo() -> None:
    a, b = node("a", 1), node("b", 2)
    deliver(a, b.packet(OUT))
    hb1, hb2 = (decode(a.packet(OUT), KEY, CLUSTER) for _ in range(2))
    assert (hb1.run, hb1.seq, hb2.seq) == (a.run, 1, 2)
    assert hb1.challenge == a.freshness.challenge
    assert hb1.echo == b.freshness.challenge


def test_packets_say_what_the_outgoing_state_says_each_time() -> None:
    a = node("a", 1)
    first = decode(a.packet(OUT), KEY, CLUSTER)
    reloaded = Advert(Role.MASTER, 150, 140, True, 9, 50, b"\x01" * 8, True)
    second = decode(a.packet(reloaded), KEY, CLUSTER)
    assert first.advert == OUT
    assert second.advert == reloaded


def test_filter_tokens_appear_once_a_run_is_accepted_and_follow_rotation() -> None:
    a, b = node("a", 1), node("b", 2)
    changes: list[tuple[bytes, ...]] = []
    b.on_tokens = changes.append
    assert b.filter_tokens() == ()
    deliver(b, a.packet(OUT))  # unproven: still no tokens
    assert changes == [()]
    deliver(a, b.packet(OUT))
    deliver(b, a.packet(OUT))  # accepted: C rotated
    f = b.freshness
    expected = (filter_token(KEY, f.challenge), filter_token(KEY, f.previous_challenge))
    assert b.filter_tokens() == expected and changes == [(), expected]
    deliver(b, a.packet(OUT))  # in-run: no change
    assert len(changes) == 2


def test_a_new_run_of_the_peer_is_answered_at_once_but_rate_limited() -> None:
    a, b = node("a", 1), node("b", 2)
    assert not b.reply_due(0.0)
    b.receive([(a.packet(OUT), LINKS[0])], now=1.0)  # unproven: a does not know C_b
    assert b.reply_due(1.0) and not b.reply_due(1.0)  # once
    a.receive([(b.packet(OUT), LINKS[0])], now=1.0)  # accepted as a new run by a
    assert a.reply_due(1.001)  # a accepted b: b waits for a packet echoing its challenge
    b.receive([(a.packet(OUT), LINKS[0])], now=1.001)  # accepted by b: a waits for b's echo
    assert not b.reply_due(1.001)  # within PROMPT_GAP (5 ms at 20 ms) of the last reply
    b.receive([(a.packet(OUT), LINKS[0])], now=1.002)  # in-run: nothing to answer
    assert not b.reply_due(2.0)


def test_prompt_replies_survive_a_clock_step_back() -> None:
    a, b = node("a", 1), node("b", 2)
    b.receive([(a.packet(OUT), LINKS[0])], now=1000.0)
    assert b.reply_due(1000.0)
    c = node("a", 3)  # a restarted
    b.receive([(c.packet(OUT), LINKS[0])], now=-5.0)
    assert b.reply_due(-5.0)


# --- the model --------------------------------------------------------------------------

LINKS = ("10.0.0.1", "192.168.0.1")


@dataclass
class Recorded:
    """A packet the attacker saw, with what the model knows about its making."""

    sender: str
    packet: bytes
    run: int
    run_index: int
    seq: int
    made_at: int  # model step


@dataclass
class Proc:
    """One running process of a node, as the model sees it."""

    hb: Heartbeats
    run_index: int
    started: int
    rotated_at: int  # step of its last challenge rotation (or its start)
    accepted_index: dict[str, int] = field(default_factory=dict)


class PairModel(RuleBasedStateMachine):
    """Two nodes, an attacker, restarts and lost state; safety checked at every delivery."""

    def __init__(self) -> None:
        super().__init__()
        self.step = 0
        self.now = 0.0
        self.runs = {"a": 0, "b": 0}
        self.procs: dict[str, Proc] = {}
        self.recorded: list[Recorded] = []
        self.accepted: set[tuple[str, int, int]] = set()  # (receiver, sender run, seq), ever
        self.rng = random.Random(0)

    @initialize(seed=st.integers(0, 2**32))
    def start(self, seed: int) -> None:
        self.rng = random.Random(seed)
        for name in ("a", "b"):
            self._start(name)

    def _start(self, name: str) -> None:
        self.runs[name] += 1
        rng = self.rng
        hb = Heartbeats(
            name, CLUSTER, KEY, log=Log(), interval_ms=20, random=lambda: rng.getrandbits(64) or 1
        )  # fmt: skip
        self.procs[name] = Proc(hb, self.runs[name], self.step, self.step)

    @staticmethod
    def _other(name: str) -> str:
        return "b" if name == "a" else "a"

    def _make(self, sender: str) -> Recorded:
        self.step += 1
        p = self.procs[sender]
        packet = p.hb.packet(OUT)
        rec = Recorded(sender, packet, p.hb.run, p.run_index, p.hb.seq, self.step)
        self.recorded.append(rec)  # the attacker records everything on the wire
        return rec

    def _deliver(self, rec: Recorded, link: str, replayed: bool) -> bool:
        self.step += 1
        dst = self.procs[self._other(rec.sender)]
        before = (dst.hb.freshness.accepted_run(rec.sender), dst.hb.freshness.rotations)
        events = dst.hb.receive([(rec.packet, link)], self.now)
        accepted = any(isinstance(e, PeerHeard) for e in events)
        if accepted:
            key = (dst.hb.node, rec.run, rec.seq)
            assert key not in self.accepted, f"exact replay accepted: {key}"
            self.accepted.add(key)
            assert rec.run_index >= dst.accepted_index.get(rec.sender, 0), (
                "a run older than one already accepted was accepted"
            )
            if rec.run != before[0]:
                # A new run needs our current challenge, drawn after our last rotation: the
                # packet was made after it, so a run dead by then can never get in.
                assert rec.made_at > dst.rotated_at, "a packet older than our challenge got in"
                assert rec.made_at > dst.started
            dst.accepted_index[rec.sender] = rec.run_index
        if dst.hb.freshness.rotations != before[1]:
            dst.rotated_at = self.step
        if replayed and accepted:
            # The only replay that can get in is a packet that never arrived (dropped) of the
            # run we accept now, or of a run we have not seen superseded.
            assert not any(
                r.sender == rec.sender and r.run == rec.run and r.seq == rec.seq and r is not rec
                for r in self.recorded
            )
        return accepted

    @rule(sender=st.sampled_from("ab"), link=st.sampled_from(LINKS))
    def send(self, sender: str, link: str) -> None:
        self._deliver(self._make(sender), link, replayed=False)

    @rule(sender=st.sampled_from("ab"))
    def drop(self, sender: str) -> None:
        self._make(sender)  # sent, recorded, lost

    @precondition(lambda self: bool(self.recorded))
    @rule(data=st.data(), link=st.sampled_from(LINKS))
    def replay(self, data: st.DataObject, link: str) -> None:
        rec = data.draw(st.sampled_from(self.recorded), label="recording")
        self._deliver(rec, link, replayed=True)

    @rule(name=st.sampled_from("ab"))
    def restart(self, name: str) -> None:
        self.step += 1
        self._start(name)  # a new process: new run, nothing kept

    @rule(delta=st.floats(-1e9, 1e9, allow_nan=False))
    def clock_step(self, delta: float) -> None:
        # `now` reaches the code only as an argument; nothing in it reads a clock (see the
        # import test above), so stepping it either way must change no verdict.
        self.now += delta

    @rule(first=st.sampled_from("ab"))
    def two_honest_rounds(self, first: str) -> None:
        second = self._other(first)
        for _ in range(2):
            for sender in (first, second):
                self._deliver(self._make(sender), LINKS[0], replayed=False)
        a, b = self.procs["a"].hb, self.procs["b"].hb
        assert b.freshness.accepted_run("a") == a.run, "b does not accept a's current run"
        assert a.freshness.accepted_run("b") == b.run, "a does not accept b's current run"

    @invariant()
    def bounded(self) -> None:
        for p in self.procs.values():
            assert len(p.hb.freshness) <= 1


PairModel.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
test_pair_model = PairModel.TestCase
