"""The chaos drill's schedule: a seeded, pure list of faults, each with a gap before it.

`make_schedule(seed, ...)` draws from ``random.Random(seed)`` only, so the same seed with the
same options gives the same faults in the same order with the same targets and timings: a
failing run is replayed with its seed. Kinds are drawn in shuffled rounds (every kind once per
round), so any run of at least one round covers every kind. Faults never overlap: each one is
healed before the next gap starts, so every invariant is judged against one fault at a time.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Final

from hapair.core.timing import dead_interval
from hapair.lab.addresses import NODES

KINDS: Final = (
    "crash",
    "kill",
    "pause",
    "linkdown",
    "oneway",
    "partition",
    "flood",
    "flap",
    "wipe",
)
DESCRIPTIONS: Final = {
    "crash": "the node's host dies: daemon SIGKILLed, both links down; heal: reboot, start",
    "kill": "SIGKILL the node's daemon, then ExecStopPost's `hapair release`; heal: start",
    "pause": "SIGSTOP the node's daemon and service (a hung host); heal: SIGCONT",
    "linkdown": "the node's LAN switch port loses carrier; heal: carrier back",
    "oneway": "drop only A->B (or only B->A) on every link, in the receiver's nftables",
    "partition": "blackhole A<->B on every link (both sides become MASTER); heal: remove",
    "flood": "flood the node's heartbeat port from the attacker host x (wrong MAC)",
    "flap": "backend r1 flaps every 0.5 s while both nodes run `hapair reload`",
    "wipe": "stop the node's daemon, delete its state directory's files, start it again",
}
#: Faults that cut the heartbeat path between the nodes: while one is active, and for one interval
#: after it heals, both nodes may hold the VIP. The others leave the path healthy (a killed node
#: is left out of the counts until its stale VIP is released; a stopped one releases its own).
DISRUPTIVE: Final = frozenset({"crash", "pause", "linkdown", "oneway", "partition"})
MAX_FAULTS: Final = 10_000
MAX_MINUTES: Final = 24 * 60.0


@dataclass(frozen=True)
class Fault:
    """One planned fault: `at` seconds after the drill's start (no action time counted)."""

    index: int
    kind: str
    target: str
    at: float
    duration: float
    gap: float
    spoof: bool = False

    @property
    def label(self) -> str:
        """Return e.g. ``crash a``, ``oneway a>b`` or ``flood b (spoofed a)``."""
        text = f"{self.kind} {self.target}".rstrip()
        return text + (" (spoofed peer source)" if self.spoof else "")

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return asdict(self)


def _ranges(kind: str, dead: float) -> tuple[float, float]:
    """Return the (shortest, longest) hold of `kind` for a pair with dead time `dead`."""
    if kind in ("flood", "flap"):
        return max(2.0, 10 * dead), max(5.0, 25 * dead)
    if kind in ("crash", "kill", "wipe"):
        return max(0.5, 3 * dead), max(2.0, 10 * dead)
    return max(0.3, 2 * dead), max(2.0, 12 * dead)


def _target(rng: random.Random, kind: str) -> tuple[str, bool]:
    node = rng.choice(NODES)
    if kind == "partition":
        return "", False
    if kind == "oneway":
        return f"{node}>{'b' if node == 'a' else 'a'}", False
    if kind == "flap":
        return "r1", False
    if kind == "flood":
        return node, rng.random() < 0.5
    return node, False


def make_schedule(
    seed: int,
    minutes: float,
    *,
    interval: float,
    dead_after: int,
    kinds: Sequence[str] = KINDS,
) -> list[Fault]:
    """Return the faults that fit in `minutes`, drawn from ``random.Random(seed)`` alone."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"unknown fault kinds {unknown}; choose from {', '.join(KINDS)}")
    if not 0 < minutes <= MAX_MINUTES or interval <= 0 or dead_after < 1:
        raise ValueError("need 0 < minutes <= 1440, interval > 0 and dead_after >= 1")
    rng = random.Random(seed)
    dead = dead_interval(interval, dead_after)
    # A quiet gap long enough to judge the heal: one dead time to converge, then some calm.
    gap_lo, gap_hi = max(1.0, 6 * dead), max(3.0, 20 * dead)
    budget = minutes * 60.0
    order = list(dict.fromkeys(kinds))
    faults: list[Fault] = []
    bag: list[str] = []
    t = 0.0
    while len(faults) < MAX_FAULTS:
        if not bag:
            bag = order[:]
            rng.shuffle(bag)
        kind = bag.pop()
        gap = round(rng.uniform(gap_lo, gap_hi), 3)
        lo, hi = _ranges(kind, dead)
        duration = round(rng.uniform(lo, hi), 3)
        target, spoof = _target(rng, kind)
        start = round(t + gap, 3)
        if start + duration + gap_lo > budget:
            break
        faults.append(Fault(len(faults), kind, target, start, duration, gap, spoof))
        t = start + duration
    return faults


def parse_kinds(text: str) -> list[str]:
    """Return the kinds named in a comma-separated list ("all" for every kind); ValueError."""
    if text.strip() == "all":
        return list(KINDS)
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown fault kinds {', '.join(unknown) or '(none)'}")
    return kinds
