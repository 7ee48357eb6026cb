"""The lab's fixed names and addresses: hosts, LAN and heartbeat-cable addresses, VIPs, MACs.

A leaf: the lab's topology, the pairs that run in it, drills and tests all read these.
"""

from __future__ import annotations

from typing import Final

NODES: Final = ("a", "b")
HOSTS: Final = ("a", "b", "c", "r1", "r2", "x")
SWITCH: Final = "sw"
LAN4: Final = {
    "a": "10.77.0.11",
    "b": "10.77.0.12",
    "c": "10.77.0.100",
    "r1": "10.77.0.21",
    "r2": "10.77.0.22",
    "x": "10.77.0.66",
}
LAN6: Final = {h: f"fd77::{v.rsplit('.', 1)[1]}" for h, v in LAN4.items()}
HB4: Final = {"a": "192.168.77.1", "b": "192.168.77.2"}
VIP4: Final = "10.77.0.50"
VIP6: Final = "fd77::50"


def mac(host: str, link: int = 0) -> str:
    """Return the fixed MAC of `host`'s eth`link`, readable in ARP tables (02:77:0L:00:00:HH)."""
    last = int(LAN4[host].rsplit(".", 1)[1])
    return f"02:77:0{link}:00:00:{last:02x}"
