"""``hapair check-config``'s lines about the ``[balancer]``: kind, pool, probes, host needs."""

from __future__ import annotations

from hapair.balancer.kinds import spec_for
from hapair.config.balancer import Balancer
from hapair.config.duration import format_duration as fmt


def explain_balancer(b: Balancer) -> list[str]:
    """What the ``[balancer]`` will do: kind, pool, when backends leave and return."""
    spec = spec_for(b.kind)
    label = spec.label(b)
    address, port = b.listen
    listen = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    weighted = b.scheduler in ("weighted", "source-hash")
    pool = ", ".join(
        f"{b_.address[0]}:{b_.address[1]}" + (f" (weight {b_.weight})" if weighted else "")
        for b_ in b.backend
    )
    mode = (
        "hot: runs on both nodes, only the VIP moves"
        if b.mode == "hot"
        else "cold: started on becoming MASTER, stopped on leaving it"
    )
    lines = [
        f"balancer: {label} on {listen}, {b.scheduler} over {len(b.backend)} backend(s): {pool}",
        f"balancer mode: {mode}",
    ]
    checks = [("each backend", b.check)]
    checks += [(f"backend[{i}]", x.check) for i, x in enumerate(b.backend) if x.check is not None]
    for who, check in checks:
        if check.kind == "none":
            lines.append(f"probes ({who}): none; always in the pool")
            continue
        lines.append(
            f"probes ({who}): {check.kind} every {fmt(check.interval)}; out of the pool after"
            f" {check.fall} failures (≤ {fmt(check.fall * check.interval + check.timeout)}),"
            f" back after {check.rise} successes"
        )
    needs = spec.needs(b)
    if needs:
        lines.append(f"balancer needs: {needs}")
    return lines
