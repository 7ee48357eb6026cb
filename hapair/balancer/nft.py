"""Running ``nft`` for the kinds that program the kernel (``nat``, ``dr``): check, load, delete.

Each kind renders its own table (``hapair.balancer.nat``, ``hapair.balancer.dr``) as one
complete transaction; this module only finds the program, checks a ruleset (``nft -c``)
before applying it as one transaction, and deletes a table. Every call blocks on a child
process, so the daemon makes them on its balancer worker, never on the heartbeat loop; a
refusal is a BalancerError carrying nft's own message.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Final

from hapair.errors import BalancerError

NFT_TIMEOUT: Final = 10.0
#: jhash needs a seed; a fixed one keeps a client on the same backend across reloads and on
#: both nodes of the pair (a failover does not reshuffle sticky clients).
HASH_SEED: Final = 0x68617061  # "hapa"


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
