"""The ``[balancer]`` table: which scheduler backend, its pool, and how backends are probed.

Five kinds share one table (``kind``, ``scheduler``, ``mode``, ``listen``, the backends and
their check); options that only one kind has live in a sub-table named after it
(``[balancer.proxy]``, ``[balancer.dns]``), and setting one for another kind is an error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, Field, PlainValidator

from hapair.config.duration import Duration
from hapair.config.fields import (
    Model,
    Problems,
    StrictBool,
    duration_between,
    int_between,
    non_empty,
    parse_endpoint,
    problem,
)
from hapair.config.shown import toml_repr
from hapair.iptypes import IpAddress
from hapair.schedulers import Scheduler

Kind = Literal["nat", "dr", "proxy", "redirect", "dns"]
KINDS: Final[tuple[Kind, ...]] = ("nat", "dr", "proxy", "redirect", "dns")
_LABEL_RE: Final = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _ipvs_note() -> str:
    # The ip_vs module creates /proc/net/ip_vs when it is loaded (or built in).
    if Path("/proc/net/ip_vs").exists():
        return "this kernel has IPVS loaded, but hapair does not drive it"
    return "this kernel has no IPVS loaded either (/proc/net/ip_vs is missing)"


def _balancer_kind(value: object) -> Kind:
    for kind in KINDS:
        if value == kind:
            return kind
    if value == "ipvs":
        raise problem(
            f'"ipvs" is not offered: use "nat" (L4 NAT with nftables, the same job) or "dr"'
            f" (direct routing); {_ipvs_note()}"
        )
    raise problem(
        f'must be one of "nat", "dr", "proxy", "redirect", "dns" (got {toml_repr(value)})'
    )


def _dns_name(value: object) -> str:
    if not isinstance(value, str):
        raise problem(f"must be a domain name string (got {toml_repr(value)})")
    name = value.strip().rstrip(".").lower()
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise problem(f'{toml_repr(value)} is not a domain name (e.g. "www.example.com")')
    return name


def _parse_endpoint(value: object) -> tuple[IpAddress, int]:
    return parse_endpoint(value, 'use "10.0.1.21:8080" or "[fd00::21]:8080"')


def _endpoint_text(endpoint: tuple[IpAddress, int]) -> str:
    address, port = endpoint
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


Endpoint = Annotated[tuple[IpAddress, int], PlainValidator(_parse_endpoint)]


class BackendCheck(Model):
    """How backends are probed: tcp connect, http GET, or not at all."""

    kind: Literal["tcp", "http", "none"] = "tcp"
    path: str = "/"
    expect_status: Annotated[int, int_between(100, 599)] = 200
    body: str | None = None
    interval: Annotated[Duration, duration_between(0.05, 3600.0)] = 1.0
    timeout: Annotated[Duration, duration_between(0.01, 3600.0)] = 0.5
    rise: Annotated[int, int_between(1, 100)] = 2
    fall: Annotated[int, int_between(1, 100)] = 3

    def _problems(self) -> Problems:
        if self.timeout > self.interval:
            return [("timeout", "must not exceed interval: probes would overlap")]
        return []


class Backend(Model):
    """One real server."""

    address: Endpoint
    weight: Annotated[int, int_between(1, 1000)] = 1
    check: BackendCheck | None = None


DnsName = Annotated[str, PlainValidator(_dns_name)]


class ProxyOptions(Model):
    """``[balancer.proxy]``: the reverse proxy engine and its timeouts."""

    engine: Literal["nginx", "haproxy"] = "nginx"
    connect_timeout: Annotated[Duration, duration_between(0.01, 3600.0)] = 2.0
    timeout: Annotated[Duration, duration_between(0.1, 86400.0)] = 60.0
    retries: Annotated[int, int_between(0, 10)] = 2
    workers: Annotated[int, int_between(0, 256)] = 0  # 0: one per CPU
    binary: str | None = None  # the engine's path if not on PATH


class DnsOptions(Model):
    """``[balancer.dns]``: the names answered and how."""

    names: Annotated[tuple[DnsName, ...], AfterValidator(non_empty("name in names"))]
    ttl: Annotated[Duration, duration_between(0.0, 86400.0)] = 5.0
    max_answers: Annotated[int, int_between(0, 64)] = 0  # 0: every healthy backend
    workers: Annotated[int, int_between(1, 64)] = 2


class Balancer(Model):
    """The local load balancer run by the pair."""

    kind: Annotated[Kind, PlainValidator(_balancer_kind)]
    scheduler: Scheduler = "rr"
    mode: Literal["hot", "cold"] = "hot"
    listen: Endpoint
    protocol: Literal["tcp", "udp"] = "tcp"
    masquerade: StrictBool = False
    all_down: Literal["keep", "sorry"] = "keep"
    sorry: Endpoint | None = None
    backend: Annotated[tuple[Backend, ...], AfterValidator(non_empty("[[balancer.backend]]"))]
    check: BackendCheck = Field(default_factory=BackendCheck)
    proxy: ProxyOptions | None = None
    dns: DnsOptions | None = None

    @property
    def proxy_options(self) -> ProxyOptions:
        """``[balancer.proxy]`` or its defaults."""
        return self.proxy or ProxyOptions()

    def _problems(self) -> Problems:
        problems: Problems = []
        kind = self.kind
        if self.all_down == "sorry" and self.sorry is None:
            problems.append(("sorry", 'required when all_down = "sorry" (e.g. "10.0.1.99:80")'))
        if self.protocol == "udp" and kind not in ("nat", "dr"):
            problems.append(("protocol", f'"udp" is for kinds "nat" and "dr", not {kind!r}'))
        if self.masquerade and kind != "nat":
            problems.append(("masquerade", f'only kind "nat" translates addresses, not {kind!r}'))
        if self.proxy is not None and kind != "proxy":
            problems.append(("proxy", f'[balancer.proxy] is for kind "proxy", not {kind!r}'))
        if kind == "dns" and self.dns is None:
            problems.append(("dns", 'kind "dns" needs [balancer.dns] with names = ["..."]'))
        if self.dns is not None and kind != "dns":
            problems.append(("dns", f'[balancer.dns] is for kind "dns", not {kind!r}'))
        if kind == "dr" and self.sorry is not None and self.sorry[1] != self.listen[1]:
            problems.append(
                ("sorry", f"direct routing cannot change the port: use port {self.listen[1]}")
            )
        seen: dict[tuple[IpAddress, int], int] = {}
        for index, b in enumerate(self.backend):
            where = f"backend[{index}].address"
            if b.address in seen:
                problems.append((where, f"duplicates backend[{seen[b.address]}]"))
            seen.setdefault(b.address, index)
            # dns answers A and AAAA records: both families may be mixed.
            if kind != "dns" and b.address[0].version != self.listen[0].version:
                problems.append((where, f"must be IPv{self.listen[0].version} like listen"))
            if kind == "dr" and b.address[1] != self.listen[1]:
                problems.append(
                    (where, f"direct routing cannot change the port: use port {self.listen[1]}"
                     " (the backend serves the VIP's own port on its loopback VIP)")
                )  # fmt: skip
            if kind == "dr" and b.address[0] == self.listen[0]:
                problems.append((where, "is the VIP itself"))
            elif b.address == self.listen:
                shown = _endpoint_text(b.address)
                problems.append(
                    (where, f"{shown} is the balancer's own listen address: traffic would loop")
                )
        return problems
