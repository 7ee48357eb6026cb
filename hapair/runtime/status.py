"""The ``hapair status`` snapshot: what an operator needs to see, as plain JSON data."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from hapair.config.model import Config
from hapair.core.election import Election
from hapair.net.vip import Vip


def build_status(
    cfg: Config,
    election: Election,
    *,
    held: Iterable[Vip],
    rejected: dict[str, int],
    now: float,
    transition_wall: float | None,
    started_wall: float,
    drops: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Role, priorities, peers with per-link ages, VIPs, last transition, rejects, uptime."""
    e = election
    last = e.last_transition
    return {
        "cluster": cfg.cluster.name,
        "node": cfg.node.name,
        "role": e.role.name,
        "resigning": e.resigning,
        "maintenance": e.maintenance,
        "term": e.term,
        "priority": {"base": cfg.node.priority, "effective": e.effective_priority},
        "fault_reason": e.fault_reason if e.fault else None,
        "vips_held": sorted(str(v.address) for v in held),
        "vips_configured": [f"{v.address} on {v.interface}" for v in cfg.vip],
        "peers": [
            {
                "node": p.node,
                "role": p.advert.role.name,
                "alive": p.alive,
                "resigning": p.advert.resigning,
                "maintenance": p.advert.maintenance,
                "priority": {
                    "base": p.advert.base_priority,
                    "effective": p.advert.effective_priority,
                },
                "last_heard_ago": round(now - p.last_heard, 3),
                "links": {k: round(now - v, 3) for k, v in sorted(p.links.items())},
            }
            for p in e.peers.values()
        ],
        "last_transition": None
        if last is None
        else {
            "from": last.from_role.name,
            "to": last.to_role.name,
            "reason": last.reason,
            "ago": round(now - last.at, 3),
            "at": transition_wall,
        },
        "rejected": rejected,
        # Refused by the kernel filter of each link, or lost to a full queue (never logged).
        "heartbeat_drops": dict(sorted((drops or {}).items())),
        "uptime": round(time.time() - started_wall, 3),
    }
