"""Direct routing: the netdev ruleset (golden text), the data plane over a fake kernel, and the
``hapair realserver`` plan (which sysctls change, and what ``down`` restores)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hapair.balancer.buckets import BUCKETS
from hapair.balancer.dr import (
    CHECK_INTERVAL,
    RETRY_INTERVAL,
    DrDataPlane,
    DrRule,
    explain_route,
    map_entries,
    parse_link_mac,
    parse_neighbours,
    render_rule,
    render_ruleset,
)
from hapair.balancer.plane import Member, Pool
from hapair.config.balancer import Balancer
from hapair.errors import BalancerError
from hapair.iptypes import IpAddress
from hapair.realserver import (
    ARP_SYSCTLS,
    RealserverError,
    State,
    load_state,
    parse_vip,
    plan_down,
    plan_up,
    read_sysctls,
    save_state,
    sysctl_path,
    write_sysctls,
)

ip = ipaddress.ip_address
VIP = ip("10.77.0.50")
OWN = "02:77:00:00:00:0b"
MAC1, MAC2, MAC3 = "02:77:00:00:00:15", "02:77:00:00:00:16", "02:77:00:00:00:17"
R1, R2 = ip("10.77.0.21"), ip("10.77.0.22")


# ---------------------------------------------------------------- rendering ------------------


@pytest.mark.parametrize(
    ("scheduler", "proto", "vip", "selector"),
    [
        ("rr", "tcp", VIP, "jhash ip saddr . tcp sport mod 4 seed 0x68617061"),
        ("random", "udp", VIP, "jhash ip saddr . udp sport mod 4 seed 0x68617061"),
        ("weighted", "tcp", VIP, "jhash ip saddr . tcp sport mod 4 seed 0x68617061"),
        ("source-hash", "tcp", VIP, "jhash ip saddr mod 4 seed 0x68617061"),
        ("rr", "tcp", ip("fd77::50"), "jhash ip6 saddr . tcp sport mod 4 seed 0x68617061"),
    ],
)
def test_rule_matches_our_mac_and_rewrites_both_macs(
    scheduler: Any, proto: Any, vip: IpAddress, selector: str
) -> None:
    rule = DrRule(vip, 8080, "eth0", OWN, (MAC1, MAC1, MAC2, MAC1), scheduler, proto)
    family = "ip" if vip.version == 4 else "ip6"
    assert render_rule(rule) == (
        f"ether daddr {OWN} {family} daddr {vip} {proto} dport 8080 counter "
        f"ether saddr set {OWN} ether daddr set {selector} map "
        f"{{ 0-1 : {MAC1}, 2 : {MAC2}, 3 : {MAC1} }} "
        'fwd to "eth0"'
    )


def test_ruleset_replaces_only_hapairs_netdev_table_atomically() -> None:
    text = render_ruleset(DrRule(VIP, 80, "eth0", OWN.upper(), (MAC1,) * BUCKETS))
    lines = text.splitlines()
    assert lines[:4] == [
        "table netdev hapair_dr",
        "delete table netdev hapair_dr",
        "table netdev hapair_dr {",
        "\tchain ingress {",
    ]
    assert lines[4] == (
        '\t\ttype filter hook ingress device "eth0" priority filter; policy accept;'
    )
    assert f"mod 256 seed 0x68617061 map {{ 0-255 : {MAC1} }}" in text
    assert f"ether daddr {OWN} " in text  # lower case, as nft prints it back


def test_map_entries_compress_runs() -> None:
    assert map_entries(["a", "a", "b", "a", "c", "c", "c"]) == "0-1 : a, 2 : b, 3 : a, 4-6 : c"
    assert map_entries(["a"]) == "0 : a"


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (DrRule(VIP, 80, "eth0", OWN, ()), "empty pool"),
        (DrRule(VIP, 80, 'eth0"; flush ruleset', OWN, (MAC1,)), "interface"),
        (DrRule(VIP, 80, "eth0", "02:77:00:00:0b", (MAC1,)), "not an Ethernet MAC"),
        (DrRule(VIP, 80, "eth0", OWN, ("nonsense",)), "not an Ethernet MAC"),
    ],
)
def test_bad_rules_are_refused(rule: DrRule, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_rule(rule)


# ---------------------------------------------------------------- parsing ip -j --------------


def test_parse_link_mac() -> None:
    text = '[{"ifname":"eth0","link_type":"ether","address":"02:77:00:00:00:0B"}]'
    assert parse_link_mac(text, "eth0") == OWN
    with pytest.raises(BalancerError, match="does not exist"):
        parse_link_mac("", "eth9")
    with pytest.raises(BalancerError, match="is loopback"):
        parse_link_mac('[{"link_type":"loopback","address":"00:00:00:00:00:00"}]', "lo")


def test_parse_neighbours_keeps_entries_with_a_usable_mac() -> None:
    text = (
        '[{"dst":"10.77.0.21","lladdr":"02:77:00:00:00:15","state":["REACHABLE"]},'
        '{"dst":"10.77.0.22","lladdr":"02:77:00:00:00:16","state":["STALE"]},'
        '{"dst":"10.77.0.23","state":["FAILED"]},'
        '{"dst":"10.77.0.24","lladdr":"02:77:00:00:00:18","state":["FAILED"]},'
        '{"dst":"10.77.0.25","state":["INCOMPLETE"]},'
        '{"dst":"fd77::21","lladdr":"02:77:00:00:00:15","router":null,"state":["DELAY"]},'
        '{"dst":"garbage","lladdr":"02:77:00:00:00:15","state":["REACHABLE"]}]'
    )
    assert parse_neighbours(text) == {R1: MAC1, R2: MAC2, ip("fd77::21"): MAC1}
    assert parse_neighbours("") == {}
    with pytest.raises(BalancerError, match="neighbour table"):
        parse_neighbours("{not json")


@pytest.mark.parametrize(
    ("route", "reason"),
    [
        ('[{"dst":"10.77.0.21","dev":"eth0"}]', "no ARP/NDP answer on eth0"),
        ('[{"dst":"10.9.0.1","gateway":"10.77.0.1","dev":"eth0"}]', "via gateway 10.77.0.1"),
        ('[{"dst":"10.88.0.1","dev":"eth1"}]', "leaves by eth1, not"),
        ('[{"type":"local","dst":"10.77.0.11","dev":"lo"}]', "address of this host"),
        ("[]", "no route"),
    ],
)
def test_explain_route(route: str, reason: str) -> None:
    assert reason in explain_route(route, "eth0")


# ---------------------------------------------------------------- the data plane -------------


class FakeLinks:
    """The kernel's link layer as a dict: ``arp`` is what a solicitation would find."""

    def __init__(self, table: dict[IpAddress, str], arp: dict[IpAddress, str] | None = None):
        self.mac = OWN
        self.table = dict(table)
        self.arp = dict(arp or {})
        self.resolved: list[list[IpAddress]] = []
        self.solicited: list[IpAddress] = []

    def own_mac(self, interface: str) -> str:
        if interface != "eth0":
            raise BalancerError(f"interface {interface} does not exist")
        return self.mac

    def neighbours(self, interface: str) -> dict[IpAddress, str]:
        return dict(self.table)

    def solicit(self, addresses: Sequence[IpAddress]) -> None:
        self.solicited += addresses

    def resolve(
        self, interface: str, addresses: Sequence[IpAddress], timeout: float
    ) -> dict[IpAddress, str]:
        self.resolved.append(list(addresses))
        self.table.update({a: self.arp[a] for a in addresses if a in self.arp})
        return {a: self.table[a] for a in addresses if a in self.table}

    def explain(self, interface: str, address: IpAddress) -> str:
        return "no ARP/NDP answer on eth0 (is it up?)"


def config(**extra: Any) -> Balancer:
    return Balancer.model_validate(
        {
            "kind": "dr",
            "listen": "10.77.0.50:8080",
            "backend": [{"address": "10.77.0.21:8080"}, {"address": "10.77.0.22:8080"}],
            **extra,
        }
    )


POOL = Pool((Member(R1, 8080), Member(R2, 8080)))
ONLY_R1 = Pool((Member(R1, 8080),))


def plane(links: FakeLinks, cfg: Balancer | None = None) -> tuple[DrDataPlane, list[str]]:
    loads: list[str] = []
    return DrDataPlane(cfg or config(), interface="eth0", links=links, load=loads.append), loads


def owners_in(text: str) -> set[str]:
    return {mac for mac in (MAC1, MAC2, MAC3) if f": {mac}" in text}


def test_apply_loads_once_and_reports_unchanged_pools() -> None:
    dp, loads = plane(FakeLinks({R1: MAC1, R2: MAC2}))
    assert dp.apply(POOL) is True
    assert dp.apply(POOL) is False
    assert len(loads) == 1 and owners_in(loads[0]) == {MAC1, MAC2}
    assert f"ether daddr {OWN} ip daddr 10.77.0.50 tcp dport 8080" in loads[0]
    status = dp.status()
    assert status["table"] == "netdev hapair_dr" and status["loaded"] is True
    assert status["backends"] == {"10.77.0.21:8080": MAC1, "10.77.0.22:8080": MAC2}
    assert status["own_mac"] == OWN and status["unresolved"] == {}


def test_an_unknown_mac_is_waited_for_once_then_left_out() -> None:
    links = FakeLinks({R1: MAC1})
    dp, loads = plane(links)
    assert dp.apply(POOL) is True
    assert links.resolved == [[R2]]
    assert owners_in(loads[-1]) == {MAC1}
    assert "no ARP/NDP answer" in dp.status()["unresolved"]["10.77.0.22:8080"]
    dp.apply(ONLY_R1)
    dp.apply(POOL)  # no second wait for a backend that did not answer: only a nudge
    assert links.resolved == [[R2]] and R2 in links.solicited


def test_a_backend_that_answers_in_time_is_served() -> None:
    links = FakeLinks({R1: MAC1}, arp={R2: MAC2})
    dp, loads = plane(links)
    dp.apply(POOL)
    assert owners_in(loads[-1]) == {MAC1, MAC2}


def test_no_known_mac_at_all_is_an_error_and_keeps_the_old_table() -> None:
    links = FakeLinks({R1: MAC1})
    dp, loads = plane(links)
    dp.apply(ONLY_R1)
    with pytest.raises(BalancerError, match=r"no backend's MAC.*10\.77\.0\.22:8080"):
        dp.apply(Pool((Member(R2, 8080),)))
    assert len(loads) == 1 and dp.pool == ONLY_R1


def test_a_refused_load_keeps_the_previous_pool() -> None:
    def refuse(text: str) -> None:
        raise BalancerError("nft refused the ruleset")

    links = FakeLinks({R1: MAC1, R2: MAC2})
    dp, _ = plane(links)
    dp.apply(ONLY_R1)
    loaded = dp.loaded
    dp._load = refuse
    with pytest.raises(BalancerError, match="refused"):
        dp.apply(POOL)
    assert dp.loaded == loaded and dp.pool == ONLY_R1


@pytest.mark.parametrize(
    ("member", "message"),
    [(Member(R1, 80), "cannot change the port"), (Member(ip("fd77::21"), 8080), "IPv4")],
)
def test_members_must_fit_direct_routing(member: Member, message: str) -> None:
    dp, _ = plane(FakeLinks({R1: MAC1}))
    with pytest.raises(BalancerError, match=message):
        dp.apply(Pool((member,)))


def test_without_config_it_can_only_remove() -> None:
    dp = DrDataPlane(None, interface="eth0", links=FakeLinks({}), load=lambda t: None)
    with pytest.raises(BalancerError, match="can only remove"):
        dp.apply(POOL)
    assert dp.supervise(0.0) is None  # nothing served: nothing to look after


def test_supervise_follows_a_replaced_backend() -> None:
    links = FakeLinks({R1: MAC1, R2: MAC2})
    dp, loads = plane(links)
    dp.apply(POOL)
    assert dp.supervise(10.0) == 10.0 + CHECK_INTERVAL
    assert len(loads) == 1  # nothing changed, nothing reloaded
    links.table[R2] = MAC3  # the backend was replaced: same address, new NIC
    dp.supervise(15.0)
    assert len(loads) == 2 and owners_in(loads[-1]) == {MAC1, MAC3}
    assert dp.status()["backends"]["10.77.0.22:8080"] == MAC3


def test_supervise_keeps_a_forgotten_mac_and_nudges_the_kernel() -> None:
    links = FakeLinks({R1: MAC1, R2: MAC2})
    dp, loads = plane(links)
    dp.apply(POOL)
    del links.table[R2]  # neighbour entry garbage-collected
    assert dp.supervise(1.0) == 1.0 + CHECK_INTERVAL
    assert len(loads) == 1 and links.solicited == [R2]


def test_supervise_adds_a_backend_that_answers_late() -> None:
    links = FakeLinks({R1: MAC1})
    dp, loads = plane(links)
    dp.apply(POOL)
    assert dp.supervise(1.0) == 1.0 + RETRY_INTERVAL  # still missing: look again soon
    links.table[R2] = MAC2
    assert dp.supervise(2.0) == 2.0 + CHECK_INTERVAL
    assert owners_in(loads[-1]) == {MAC1, MAC2} and dp.status()["unresolved"] == {}


def test_supervise_follows_our_own_mac() -> None:
    links = FakeLinks({R1: MAC1})
    dp, loads = plane(links)
    dp.apply(ONLY_R1)
    links.mac = "02:77:00:00:00:99"
    dp.supervise(1.0)
    assert "ether daddr 02:77:00:00:00:99 " in loads[-1]


def test_reconfigure_takes_effect_at_the_next_apply() -> None:
    dp, loads = plane(FakeLinks({R1: MAC1, R2: MAC2}))
    dp.apply(POOL)
    dp.reconfigure(config(scheduler="source-hash", protocol="udp"))
    assert dp.apply(POOL) is True
    assert "udp dport 8080" in loads[-1] and "jhash ip saddr mod 256" in loads[-1]


def test_preflight_names_a_missing_interface() -> None:
    dp = DrDataPlane(config(), interface="eth9", links=FakeLinks({}), load=lambda t: None)
    with pytest.raises(BalancerError, match="eth9 does not exist"):
        dp.preflight()


# ---------------------------------------------------------------- hapair realserver ----------

IGNORE, ANNOUNCE = "net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce"
DEFAULTS = {IGNORE: 0, ANNOUNCE: 0}


def test_up_raises_only_what_is_below_the_minimum_and_remembers_it() -> None:
    plan = plan_up(State(), ip("10.77.0.50"), "lo", {IGNORE: 0, ANNOUNCE: 2})
    assert plan.sysctls == {IGNORE: 1}
    assert plan.state == State({"10.77.0.50": "lo"}, {IGNORE: 0})


def test_up_again_changes_nothing_and_keeps_the_original_values() -> None:
    first = plan_up(State(), ip("10.77.0.50"), "lo", DEFAULTS)
    again = plan_up(first.state, ip("10.77.0.50"), "lo", dict(ARP_SYSCTLS))
    assert again.sysctls == {} and again.state == first.state


def test_up_sets_a_lowered_value_again_without_forgetting_the_original() -> None:
    first = plan_up(State(), ip("10.77.0.50"), "lo", DEFAULTS)
    again = plan_up(first.state, ip("10.77.0.50"), "lo", {IGNORE: 0, ANNOUNCE: 2})
    assert again.sysctls == {IGNORE: 1} and again.state.saved == {IGNORE: 0, ANNOUNCE: 0}
    assert "lowered" in again.notes[0]


def test_an_ipv6_vip_needs_no_sysctl() -> None:
    plan = plan_up(State(), ip("fd77::50"), "lo", DEFAULTS)
    assert plan.sysctls == {} and plan.state == State({"fd77::50": "lo"}, {})


def test_down_restores_only_when_the_last_ipv4_vip_goes() -> None:
    one = plan_up(State(), ip("10.77.0.50"), "lo", DEFAULTS).state
    two = plan_up(one, ip("10.77.0.51"), "lo", dict(ARP_SYSCTLS)).state
    first = plan_down(two, ip("10.77.0.50"), dict(ARP_SYSCTLS))
    assert first.sysctls == {} and "still needed by 10.77.0.51" in first.notes[0]
    last = plan_down(first.state, ip("10.77.0.51"), dict(ARP_SYSCTLS))
    assert last.sysctls == DEFAULTS and last.state == State()


def test_down_leaves_a_value_someone_else_changed() -> None:
    state = plan_up(State(), ip("10.77.0.50"), "lo", DEFAULTS).state
    plan = plan_down(state, ip("10.77.0.50"), {IGNORE: 2, ANNOUNCE: 2})
    assert plan.sysctls == {ANNOUNCE: 0}
    assert any("left at 2" in n for n in plan.notes)


def test_down_of_an_unknown_vip_says_so() -> None:
    plan = plan_down(State(), ip("10.77.0.50"), DEFAULTS)
    assert plan.sysctls == {} and "no record" in plan.notes[0]


@pytest.mark.parametrize("text", ["10.77.0.50/32", "lb.example", "127.0.0.1", "0.0.0.0"])
def test_parse_vip_refuses_what_cannot_be_a_vip(text: str) -> None:
    with pytest.raises(RealserverError):
        parse_vip(text)


def test_state_and_sysctls_round_trip_through_files(tmp_path: Path) -> None:
    path = tmp_path / "run" / "realserver.json"
    assert load_state(path) == State()
    state = State({"10.77.0.50": "lo"}, {IGNORE: 0})
    save_state(path, state)
    assert load_state(path) == state
    save_state(path, State())
    assert not path.exists()
    path.write_text("[]")
    with pytest.raises(RealserverError, match="unreadable"):
        load_state(path)
    assert sysctl_path(IGNORE, tmp_path) == tmp_path / "net/ipv4/conf/all/arp_ignore"
    sysctl_path(IGNORE, tmp_path).parent.mkdir(parents=True)
    write_sysctls({IGNORE: 1}, tmp_path)
    assert read_sysctls([IGNORE], tmp_path) == {IGNORE: 1}
    with pytest.raises(RealserverError, match="cannot read"):
        read_sysctls([ANNOUNCE], tmp_path)
