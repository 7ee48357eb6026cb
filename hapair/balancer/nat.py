"""The `nat` data plane: load hapair's nftables table, check it first, remove it on release."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from typing import Final

from hapair.balancer.nft import TABLE, NatService, render_ruleset
from hapair.errors import BalancerError

NFT_TIMEOUT: Final = 10.0


def _nft() -> str:
    nft = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
    if nft is None:
        raise BalancerError('balancer.kind = "nat" needs nftables: install the nftables package')
    return nft


class NatDataPlane:
    """Owns table ``inet hapair``; every change is checked (``nft -c``) and then swapped in."""

    def __init__(self) -> None:
        self.nft = _nft()
        self.loaded: str | None = None

    def apply(self, services: Sequence[NatService]) -> bool:
        """Replace the table with ``services``; False if it was already exactly that.

        On a rejected ruleset nothing changes: the check runs first, and ``nft -f`` applies a
        file as one transaction.
        """
        text = render_ruleset(services)
        if text == self.loaded:
            return False
        for args in (["-c", "-f", "-"], ["-f", "-"]):
            proc = subprocess.run(
                [self.nft, *args], input=text, capture_output=True, text=True,
                timeout=NFT_TIMEOUT, check=False,
            )  # fmt: skip
            if proc.returncode != 0:
                raise BalancerError(f"nft refused the ruleset: {proc.stderr.strip()}")
        self.loaded = text
        return True

    def remove(self) -> bool:
        """Delete hapair's table if present (idempotent); True if there was one."""
        listed = subprocess.run(
            [self.nft, "list", "table", "inet", TABLE],
            capture_output=True, text=True, timeout=NFT_TIMEOUT, check=False,
        )  # fmt: skip
        self.loaded = None
        if listed.returncode != 0:
            return False
        subprocess.run(
            [self.nft, "delete", "table", "inet", TABLE],
            capture_output=True, text=True, timeout=NFT_TIMEOUT, check=True,
        )  # fmt: skip
        return True
