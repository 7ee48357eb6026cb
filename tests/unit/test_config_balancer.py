"""The [balancer] section: what is accepted, and every problem with its dotted path."""

from __future__ import annotations

from typing import Any

import pytest

from hapair.config.load import validate_config
from hapair.errors import ConfigError

BASE: dict[str, Any] = {
    "node": {"name": "a", "priority": 150},
    "cluster": {"name": "c", "peers": ["10.0.0.2"]},
    "vip": [{"address": "10.0.0.50/24", "interface": "eth0"}],
}


def with_balancer(balancer: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, "balancer": balancer}


def problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        validate_config(data, check_secret=False)
    return info.value.problems


def test_a_nat_balancer_with_defaults() -> None:
    cfg = validate_config(
        with_balancer(
            {
                "kind": "nat",
                "listen": "10.0.0.50:80",
                "backend": [
                    {"address": "10.0.1.21:8080", "weight": 2},
                    {"address": "10.0.1.22:8080"},
                ],
            }
        ),
        check_secret=False,
    )
    b = cfg.balancer
    assert b is not None and b.scheduler == "rr" and b.mode == "hot" and not b.masquerade
    assert [x.weight for x in b.backend] == [2, 1]
    assert (b.check.kind, b.check.interval, b.check.rise, b.check.fall) == ("tcp", 1.0, 2, 3)


def test_every_balancer_problem_is_reported_with_its_path() -> None:
    found = problems(
        with_balancer(
            {
                "kind": "nat",
                "scheduler": "least-conn",
                "listen": "10.0.0.50",
                "backend": [{"address": "10.0.1.21:99999"}, {"address": "example:80"}],
            }
        )
    )
    paths = [p for p, _ in found]
    assert "balancer.scheduler" in paths and "balancer.listen" in paths
    assert "balancer.backend[0].address" in paths and "balancer.backend[1].address" in paths


def test_an_unknown_kind_names_the_choices() -> None:
    found = problems(with_balancer({"kind": "lvs", "listen": "10.0.0.50:80", "backend": [
        {"address": "10.0.1.21:80"}]}))  # fmt: skip
    assert found == [
        ("balancer.kind", 'must be one of "nat", "dr", "proxy", "redirect", "dns" (got \'lvs\')')
    ]


def test_ipvs_is_refused_with_the_alternative() -> None:
    found = problems(with_balancer({"kind": "ipvs", "listen": "10.0.0.50:80", "backend": [
        {"address": "10.0.1.21:80"}]}))  # fmt: skip
    assert len(found) == 1 and found[0][0] == "balancer.kind"
    assert found[0][1].startswith('"ipvs" is not offered: use "nat" (L4 NAT with nftables')
    assert "IPVS" in found[0][1]


@pytest.mark.parametrize("kind", ["nat", "dr", "proxy", "redirect"])
def test_every_kind_but_dns_is_accepted_with_the_common_keys(kind: str) -> None:
    cfg = validate_config(with_balancer({"kind": kind, "listen": "10.0.0.50:80", "backend": [
        {"address": "10.0.1.21:80", "weight": 2}]}), check_secret=False)  # fmt: skip
    assert cfg.balancer is not None and cfg.balancer.kind == kind


def test_kind_specific_options_belong_to_their_kind() -> None:
    found = problems(with_balancer({
        "kind": "redirect", "listen": "10.0.0.50:80", "protocol": "udp", "masquerade": True,
        "proxy": {"engine": "haproxy"}, "dns": {"names": ["www.example.com"]},
        "backend": [{"address": "10.0.1.21:80"}],
    }))  # fmt: skip
    assert ("balancer.protocol", '"udp" is for kinds "nat" and "dr", not \'redirect\'') in found
    assert ("balancer.masquerade", "only kind \"nat\" translates addresses, not 'redirect'") in (
        found
    )
    assert ("balancer.proxy", "[balancer.proxy] is for kind \"proxy\", not 'redirect'") in found
    assert ("balancer.dns", "[balancer.dns] is for kind \"dns\", not 'redirect'") in found


def test_direct_routing_keeps_the_port() -> None:
    found = problems(with_balancer({"kind": "dr", "listen": "10.0.0.50:80", "backend": [
        {"address": "10.0.1.21:8080"}, {"address": "10.0.0.50:80"}]}))  # fmt: skip
    paths = dict(found)
    assert paths["balancer.backend[0].address"].startswith(
        "direct routing cannot change the port: use port 80"
    )
    assert paths["balancer.backend[1].address"] == "is the VIP itself"


def test_dns_needs_names_and_takes_both_families() -> None:
    found = problems(with_balancer({"kind": "dns", "listen": "10.0.0.50:53", "backend": [
        {"address": "10.0.1.21:80"}]}))  # fmt: skip
    assert found == [("balancer.dns", 'kind "dns" needs [balancer.dns] with names = ["..."]')]
    bad = problems(with_balancer({"kind": "dns", "listen": "10.0.0.50:53",
        "dns": {"names": ["www.example.com", "bad..name"], "ttl": "5s"},
        "backend": [{"address": "10.0.1.21:80"}]}))  # fmt: skip
    assert bad == [
        ("balancer.dns.names[1]", "'bad..name' is not a domain name (e.g. \"www.example.com\")")
    ]
    cfg = validate_config(with_balancer({"kind": "dns", "listen": "10.0.0.50:53",
        "dns": {"names": ["WWW.Example.com."], "ttl": "2s"},
        "backend": [{"address": "10.0.1.21:80"}, {"address": "[fd00::21]:80"}]}),
        check_secret=False)  # fmt: skip
    assert cfg.balancer is not None and cfg.balancer.dns is not None
    assert cfg.balancer.dns.names == ("www.example.com",) and cfg.balancer.dns.ttl == 2.0


def test_listen_must_be_a_vip_and_backends_unique() -> None:
    found = problems(
        with_balancer(
            {
                "kind": "nat",
                "listen": "10.0.0.99:80",
                "backend": [{"address": "10.0.1.21:80"}, {"address": "10.0.1.21:80"}],
            }
        )
    )
    assert ("balancer.backend[1].address", "duplicates backend[0]") in found


def test_listen_address_must_be_one_of_the_vips() -> None:
    found = problems(
        with_balancer(
            {"kind": "nat", "listen": "10.0.0.99:80", "backend": [{"address": "10.0.1.21:80"}]}
        )
    )
    assert found == [("balancer.listen", "10.0.0.99 is not one of the VIPs")]


def test_check_config_explains_the_balancer() -> None:
    from hapair.balancer.explain import explain_balancer

    cfg = validate_config(with_balancer({
        "kind": "proxy", "listen": "10.0.0.50:80", "scheduler": "weighted",
        "check": {"kind": "http", "interval": "1s", "timeout": "500ms", "fall": 3, "rise": 2},
        "backend": [{"address": "10.0.1.21:80", "weight": 2},
                    {"address": "10.0.1.22:80", "check": {"kind": "none"}}],
    }), check_secret=False)  # fmt: skip
    assert cfg.balancer is not None
    lines = explain_balancer(cfg.balancer)
    assert lines[0] == (
        "balancer: reverse proxy (nginx) on 10.0.0.50:80, weighted over 2 backend(s):"
        " 10.0.1.21:80 (weight 2), 10.0.1.22:80 (weight 1)"
    )
    assert (
        "probes (each backend): http every 1s; out of the pool after 3 failures (≤ 3.5s),"
        " back after 2 successes"
    ) in lines
    assert "probes (backend[1]): none; always in the pool" in lines
    assert lines[-1].startswith("balancer needs: net.ipv4.ip_nonlocal_bind=1")


def test_peers_auto_needs_discovery_and_has_no_addresses() -> None:
    base = {
        "node": {"name": "a", "priority": 150},
        "cluster": {"name": "c", "peers": "auto"},
        "vip": [{"address": "10.0.0.50/24", "interface": "eth0"}],
    }
    with pytest.raises(ConfigError) as info:
        validate_config(base, check_secret=False)
    assert info.value.problems == [
        ("cluster.peers", '"auto" finds the peer by discovery: add [discovery] announce = true')
    ]
    cfg = validate_config({**base, "discovery": {"announce": True}}, check_secret=False)
    assert cfg.cluster.peers_auto and cfg.cluster.peer_addresses == ()
    from hapair.config.explain import explain_timers

    assert "found by discovery (mDNS)" in explain_timers(cfg)[0]
