"""L4 NAT with nftables: render hapair's own table from the healthy pool (pure).

hapair owns one table, ``inet hapair``, and never touches any other. The rendered text is a
complete transaction for ``nft -f``: it creates the table if missing, deletes it, and defines
it again, so the kernel swaps the whole ruleset atomically (no moment without rules, nothing
half-applied if the file is rejected). Schedulers map a number to a backend:

- ``rr``: ``numgen inc`` (round robin), ``random``: ``numgen random``;
- ``weighted``: ``numgen inc`` over the sum of the weights, each backend owning a range as wide
  as its weight;
- ``source-hash``: ``jhash`` of the client address (sticky), weighted the same way.

Connection tracking keeps an established flow on its backend when the map changes: only new
connections consult the map. Only the node that holds the VIP translates (``fib daddr type
local``), so the same ruleset can be loaded on both nodes (hot mode) and only the VIP moves.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

Scheduler = Literal["rr", "random", "weighted", "source-hash"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

TABLE: Final = "hapair"
#: jhash needs a seed; a fixed one keeps a client on the same backend across reloads and on
#: both nodes of the pair (a failover does not reshuffle sticky clients).
HASH_SEED: Final = 0x68617061  # "hapa"


@dataclass(frozen=True, slots=True)
class NatBackend:
    """One real server."""

    address: IPAddress
    port: int
    weight: int = 1


@dataclass(frozen=True, slots=True)
class NatService:
    """A VIP:port spread over backends."""

    vip: IPAddress
    port: int
    backends: tuple[NatBackend, ...]
    scheduler: Scheduler = "rr"
    proto: Literal["tcp", "udp"] = "tcp"
    masquerade: bool = False


def slots(backends: Sequence[NatBackend], scheduler: Scheduler) -> list[tuple[int, int, int]]:
    """``(first, last, backend index)`` ranges covering ``0 .. modulus-1`` without gaps."""
    if not backends:
        raise ValueError("an empty pool cannot be rendered: keep the last pool or a sorry server")
    weighted = scheduler in ("weighted", "source-hash")
    out: list[tuple[int, int, int]] = []
    start = 0
    for i, b in enumerate(backends):
        width = b.weight if weighted else 1
        if width < 1:
            raise ValueError(f"backend {b.address}:{b.port}: weight must be >= 1")
        out.append((start, start + width - 1, i))
        start += width
    return out


def _target(b: NatBackend) -> str:
    return f"{b.address} . {b.port}"


def _selector(scheduler: Scheduler, family: str, modulus: int) -> str:
    if scheduler == "random":
        return f"numgen random mod {modulus}"
    if scheduler == "source-hash":
        return f"jhash {family} saddr mod {modulus} seed {HASH_SEED:#x}"
    return f"numgen inc mod {modulus}"


def render_rule(svc: NatService) -> str:
    """The DNAT rule for one service."""
    family = "ip" if svc.vip.version == 4 else "ip6"
    if any(b.address.version != svc.vip.version for b in svc.backends):
        raise ValueError(
            f"{svc.vip}:{svc.port}: backends must be IPv{svc.vip.version} like the VIP"
        )
    ranges = slots(svc.backends, svc.scheduler)
    modulus = ranges[-1][1] + 1
    entries = ", ".join(
        f"{lo if lo == hi else f'{lo}-{hi}'} : {_target(svc.backends[i])}" for lo, hi, i in ranges
    )
    # `fib daddr type local`: only the node that holds the VIP right now translates, so in
    # hot mode a former master with stale clients does not keep serving (and hide a missing
    # gratuitous ARP).
    return (
        f"{family} daddr {svc.vip} fib daddr type local {svc.proto} dport {svc.port} "
        f"dnat {family} to {_selector(svc.scheduler, family, modulus)} map {{ {entries} }}"
    )


def render_ruleset(services: Sequence[NatService]) -> str:
    """A complete, atomic ``nft -f`` transaction replacing table ``inet hapair``."""
    pre = [f"\t\t{render_rule(s)}" for s in services]
    post = []
    for s in services:
        if s.masquerade:
            family = "ip" if s.vip.version == 4 else "ip6"
            addrs = ", ".join(sorted({str(b.address) for b in s.backends}))
            post.append(f"\t\tct status dnat {family} daddr {{ {addrs} }} masquerade")
    lines = [
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        *pre,
        "\t}",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        *post,
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"
