"""The `nat` data plane: load hapair's nftables table, check it first, remove it on release."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

from hapair.balancer.nft import TABLE, NatBackend, NatService, render_ruleset
from hapair.balancer.plane import Pool
from hapair.config.balancer import Balancer
from hapair.errors import BalancerError

NFT_TIMEOUT: Final = 10.0


def nft_binary(kind: str = "nat") -> str:
    """The ``nft`` program, or a BalancerError that says what to install."""
    nft = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
    if nft is None:
        raise BalancerError(f'balancer.kind = "{kind}" needs nftables: install package nftables')
    return nft


def nft_load(nft: str, text: str) -> None:
    """Check ``text`` (``nft -c``), then apply it as one transaction; nothing half-applied."""
    for args in (["-c", "-f", "-"], ["-f", "-"]):
        proc = subprocess.run(
            [nft, *args], input=text, capture_output=True, text=True,
            timeout=NFT_TIMEOUT, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise BalancerError(f"nft refused the ruleset: {proc.stderr.strip()}")


def nft_delete_table(nft: str, family: str, table: str) -> bool:
    """Delete one table if present (idempotent); True if there was one."""
    listed = subprocess.run(
        [nft, "list", "table", family, table],
        capture_output=True, text=True, timeout=NFT_TIMEOUT, check=False,
    )  # fmt: skip
    if listed.returncode != 0:
        return False
    subprocess.run(
        [nft, "delete", "table", family, table],
        capture_output=True, text=True, timeout=NFT_TIMEOUT, check=True,
    )  # fmt: skip
    return True


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
