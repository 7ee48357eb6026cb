"""The `nat` data plane: L4 NAT with hapair's own nftables table, checked first, removed on release.

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
Rendering is pure; loading goes through ``hapair.balancer.nft``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from hapair.balancer.nft import HASH_SEED, nft_binary, nft_delete_table, nft_load
from hapair.balancer.plane import Pool
from hapair.config.balancer import Balancer
from hapair.errors import BalancerError
from hapair.iptypes import IpAddress
from hapair.schedulers import Scheduler

TABLE: Final = "hapair"


# ---------------------------------------------------------------- rendering (pure) ----------


@dataclass(frozen=True, slots=True)
class NatBackend:
    """One real server."""

    address: IpAddress
    port: int
    weight: int = 1


@dataclass(frozen=True, slots=True)
class NatService:
    """A VIP:port spread over backends."""

    vip: IpAddress
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


# ---------------------------------------------------------------- the data plane -------------


def check_forwarding(cfg: Balancer, proc: Path = Path("/proc/sys/net")) -> None:
    """NAT forwards the clients' packets: the kernel must allow it (we do not flip it)."""
    key = "ipv4/ip_forward" if cfg.listen[0].version == 4 else "ipv6/conf/all/forwarding"
    try:
        on = (proc / key).read_text().strip() == "1"
    except OSError:
        on = False
    if not on:
        sysctl = key.replace("/", ".")
        raise BalancerError(
            f'balancer.kind: "nat" forwards packets, but net.{sysctl} is 0 on this host: '
            f"set net.{sysctl}=1 (sysctl -w, and in /etc/sysctl.d/ to keep it)"
        )


class NatDataPlane:
    """Owns table ``inet hapair``; every change is checked (``nft -c``) and then swapped in."""

    def __init__(self, cfg: Balancer | None = None) -> None:
        self.cfg = cfg
        self.nft = nft_binary()
        self.loaded: str | None = None

    def preflight(self) -> None:
        if self.cfg is not None:
            check_forwarding(self.cfg)

    def reconfigure(self, cfg: Balancer) -> None:
        self.cfg = cfg

    def service(self, pool: Pool) -> NatService:
        """The nftables service for ``pool`` under this balancer's settings."""
        if self.cfg is None:
            raise BalancerError("a nat data plane without a [balancer] can only remove")
        cfg = self.cfg
        backends = tuple(NatBackend(m.address, m.port, m.weight) for m in pool.members)
        return NatService(
            cfg.listen[0], cfg.listen[1], backends, cfg.scheduler, cfg.protocol, cfg.masquerade
        )

    def apply(self, pool: Pool) -> bool:
        """Replace the table with ``pool``; False if it was already exactly that."""
        return self.apply_services([self.service(pool)])

    def apply_services(self, services: list[NatService]) -> bool:
        """Replace the table with ``services`` (check first, then one transaction)."""
        text = render_ruleset(services)
        if text == self.loaded:
            return False
        nft_load(self.nft, text)
        self.loaded = text
        return True

    def remove(self) -> bool:
        """Delete hapair's table if present (idempotent); True if there was one."""
        self.loaded = None
        return nft_delete_table(self.nft, "inet", TABLE)

    def supervise(self, now: float) -> float | None:
        return None  # the kernel runs the ruleset: nothing to look after

    def status(self) -> dict[str, Any]:
        return {"table": f"inet {TABLE}", "loaded": self.loaded is not None}
