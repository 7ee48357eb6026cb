"""Flow buckets for direct routing: which backend owns each of a fixed set of hash buckets (pure).

The ``dr`` data plane rewrites frames in the netdev ingress hook, where there is no connection
tracking: every packet of a flow must pick the same backend on its own. So a packet's flow hash
selects one of ``BUCKETS`` buckets, and each bucket is owned by one backend.

Ownership is decided per bucket by weighted rendezvous hashing (highest random weight): every
backend draws a score for the bucket from a keyed hash of ``(bucket, backend name)`` scaled by
its weight, and the best score wins. That gives the two properties a table without connection
state needs when the pool changes:

- removing a backend moves only the buckets it owned (the flows on the others stay put);
- adding one takes only the buckets it now wins, from whoever had them;

and a backend's expected share of the buckets is its weight over the sum of the weights. The
hash is blake2b, not Python's ``hash()`` (randomised per process), so both nodes of the pair and
every restart compute the same table: a failover does not reshuffle flows.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from hashlib import blake2b
from typing import Final

#: Buckets in the table. 256 keeps the nft map small while a weight-1 backend among ten still
#: owns about 25 buckets, so shares stay close to the weights.
BUCKETS: Final = 256
_PERSON: Final = b"hapair-dr-hrw"  # domain separation for the keyed hash
_MANTISSA: Final = 52  # bits kept, so (h + 0.5) / 2**52 is exact and strictly inside (0, 1)


def score(bucket: int, name: str, weight: int) -> float:
    """The backend's claim on ``bucket``: ``weight / -ln(u)`` with ``u`` uniform in (0, 1).

    ``-ln(u) / weight`` is exponentially distributed with rate ``weight``, and the smallest of
    independent exponentials is backend ``i``'s with probability ``w_i / sum(w)``: the largest
    inverse wins in the same proportion.
    """
    digest = blake2b(f"{bucket}/{name}".encode(), digest_size=8, person=_PERSON).digest()
    unit = ((int.from_bytes(digest, "big") >> (64 - _MANTISSA)) + 0.5) / (1 << _MANTISSA)
    return weight / -math.log(unit)


def assign(backends: Sequence[tuple[str, int]], buckets: int = BUCKETS) -> tuple[str, ...]:
    """The owner's name for each bucket ``0 .. buckets-1``, from ``(name, weight)`` pairs.

    The result depends on the set of backends only, not on their order.
    """
    if not backends:
        raise ValueError("no backends: an empty pool cannot own any bucket")
    if buckets < 1:
        raise ValueError(f"need at least one bucket (got {buckets})")
    names = [name for name, _ in backends]
    if len(set(names)) != len(names):
        raise ValueError(f"backend names must be unique (got {names})")
    for name, weight in backends:
        if weight < 1:
            raise ValueError(f"backend {name}: weight must be >= 1 (got {weight})")
    return tuple(_owner(k, backends) for k in range(buckets))


def _owner(bucket: int, backends: Sequence[tuple[str, int]]) -> str:
    # Ties (practically impossible) go to the larger name, so the order never matters.
    best = max((score(bucket, name, weight), name) for name, weight in backends)
    return best[1]


def shares(table: Sequence[str]) -> Counter[str]:
    """How many buckets each backend owns."""
    return Counter(table)


def moved(before: Sequence[str], after: Sequence[str]) -> list[int]:
    """The buckets whose owner differs between two tables of the same size."""
    if len(before) != len(after):
        raise ValueError("tables of different sizes cannot be compared")
    return [k for k, (x, y) in enumerate(zip(before, after, strict=True)) if x != y]
