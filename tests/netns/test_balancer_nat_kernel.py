"""The kernel accepts the rendered `nat` ruleset (`nft -c` in a throw-away namespace)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import uuid

import pytest

from hapair.balancer.nat import NatBackend, NatService, render_ruleset

VIP = ipaddress.ip_address("10.77.0.50")
R1 = NatBackend(ipaddress.ip_address("10.77.0.21"), 8080, weight=2)
R2 = NatBackend(ipaddress.ip_address("10.77.0.22"), 8080, weight=1)


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="nft -c needs root")
def test_the_kernel_accepts_the_ruleset() -> None:
    nft = shutil.which("nft")
    assert nft is not None, "nftables must be installed (scripts/setup.sh installs it)"
    ns = f"hpt-nft-{uuid.uuid4().hex[:6]}"
    v6 = NatBackend(ipaddress.ip_address("fd77::21"), 8080)
    text = render_ruleset(
        [
            NatService(VIP, 80, (R1, R2), "weighted", masquerade=True),
            NatService(VIP, 53, (R1, R2), "source-hash", proto="udp"),
            NatService(ipaddress.ip_address("fd77::50"), 80, (v6,), "random"),
        ]
    )
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, nft, "-c", "-f", "-"],
            input=text, capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr + text
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
