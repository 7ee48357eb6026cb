"""The pure part of discovery: TXT codec, validation of what the network sends, PeerFinder."""

from __future__ import annotations

import contextlib
import math
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hapair.ops.discovery import (
    MAX_ADDRESSES,
    MAX_SERVICES,
    MAX_TTL,
    MAX_TXT_BYTES,
    MAX_TXT_KEYS,
    SERVICE_TYPE,
    NodeRecord,
    PeerFinder,
    RecordError,
    Sighting,
    decode_txt,
    encode_txt,
    host_label,
    instance_label,
    service_info,
    sighting_of,
)

A = NodeRecord("web", "lb1", "MASTER", 150, "0.1.0", 694)
B = NodeRecord("web", "lb2", "BACKUP", 100, "0.1.0", 694)
LAN = IPv4Network("10.0.0.0/24")


class Recorder:
    """Collects warnings instead of logging them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> object:
        self.events.append((event, fields))
        return None

    def named(self, event: str) -> list[dict[str, Any]]:
        return [f for e, f in self.events if e == event]


def sighting(
    record: NodeRecord, *addresses: str, ttl: float = 120.0, name: str | None = None
) -> Sighting:
    return Sighting(
        name=name or f"{record.cluster}-{record.node}.{SERVICE_TYPE}",
        properties=encode_txt(record),
        addresses=addresses,
        ttl=ttl,
    )


# ------------------------------------------------------------------ TXT codec ------------------


def test_txt_golden() -> None:
    assert encode_txt(A) == {
        b"cluster": b"web",
        b"node": b"lb1",
        b"role": b"MASTER",
        b"prio": b"150",
        b"ver": b"0.1.0",
        b"port": b"694",
    }


def test_txt_round_trip_and_unknown_keys_are_ignored() -> None:
    props: dict[bytes, bytes | None] = {**encode_txt(A), b"future": b"x", b"flag": None}
    assert decode_txt(props) == A


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({b"cluster": None}, "cluster: missing"),
        ({b"node": "lb1".encode("utf-16")}, "node: not ASCII"),
        ({b"node": b"lb 1"}, "node: invalid"),
        ({b"node": b"x" * 33}, "node: invalid"),
        ({b"cluster": b""}, "cluster: invalid"),
        ({b"role": b"master"}, "role: invalid"),
        ({b"prio": b"256"}, "prio: 256 is not 0..255"),
        ({b"prio": b"-1"}, "prio: invalid"),
        ({b"port": b"0"}, "port: 0 is not 1..65535"),
        ({b"port": b"70000"}, "port: 70000 is not 1..65535"),
        ({b"port": b"+694"}, "port: invalid"),
        ({b"port": b" 694"}, "port: invalid"),
        ({b"port": b"123456"}, "port: invalid"),
        ({b"ver": b"0.1 beta"}, "ver: invalid"),
    ],
)
def test_txt_rejects(change: dict[bytes, bytes | None], reason: str) -> None:
    props: dict[bytes, bytes | None] = {**encode_txt(A), **change}
    if change.get(b"cluster", b"") is None:
        del props[b"cluster"]
    with pytest.raises(RecordError, match=reason.replace("..", r"\.\.")):
        decode_txt(props)


def test_txt_size_caps() -> None:
    many = {**encode_txt(A), **{f"k{i}".encode(): b"v" for i in range(MAX_TXT_KEYS)}}
    with pytest.raises(RecordError, match="TXT keys"):
        decode_txt(many)
    with pytest.raises(RecordError, match="bytes"):
        decode_txt({**encode_txt(A), b"pad": b"x" * MAX_TXT_BYTES})
    with pytest.raises(RecordError, match="bytes"):
        decode_txt(encode_txt(A), size=MAX_TXT_BYTES + 1)


@given(
    st.dictionaries(
        st.binary(max_size=12), st.none() | st.binary(max_size=40), max_size=MAX_TXT_KEYS + 2
    )
)
def test_txt_decode_raises_only_record_error(props: dict[bytes, bytes | None]) -> None:
    with contextlib.suppress(RecordError):
        decode_txt(props)


def test_txt_survives_zeroconf_encoding() -> None:
    info = service_info(A, [ip_address("10.0.0.1"), ip_address("fd00::1")])
    assert info.name == f"web-lb1.{SERVICE_TYPE}"
    assert info.port == 694
    seen = sighting_of(info, 60.0)
    assert decode_txt(seen.properties, seen.text_size) == A
    assert seen.addresses == ("10.0.0.1", "fd00::1")


def test_labels_fit_dns_and_stay_apart() -> None:
    long_name = "x" * 32
    assert len(instance_label(long_name, long_name).encode()) <= 63
    assert instance_label("web", "lb1.dc2") == "web-lb1_dc2"
    host = host_label(long_name, "a.b")
    assert len(host) <= 63
    assert all(c.isalnum() or c == "-" for c in host)
    assert host_label("web", "a.b") != host_label("web", "a_b")
    assert host_label("web", "lb1") == host_label("web", "lb1")


# ------------------------------------------------------------------ PeerFinder -----------------


def test_nodes_listed_and_filtered_by_cluster() -> None:
    finder = PeerFinder()
    other = NodeRecord("db", "pg1", "MASTER", 100, "0.1.0", 694)
    for record, addr in ((A, "10.0.0.1"), (B, "10.0.0.2"), (other, "10.0.0.3")):
        finder.observe_at(sighting(record, addr), 0.0)
    assert [s.record.node for s in finder.nodes_at(1.0)] == ["pg1", "lb1", "lb2"]
    assert [s.record.node for s in finder.nodes_at(1.0, "web")] == ["lb1", "lb2"]
    assert finder.nodes_at(1.0, "none") == []


def test_record_expires_when_its_ttl_passes() -> None:
    finder = PeerFinder()
    finder.observe_at(sighting(A, "10.0.0.1", ttl=10.0), 100.0)
    assert finder.next_expiry() == 110.0
    assert finder.nodes_at(109.9)
    assert finder.nodes_at(110.0) == []
    assert finder.next_expiry() is None


def test_a_new_sighting_moves_the_expiry() -> None:
    finder = PeerFinder()
    finder.observe_at(sighting(A, "10.0.0.1", ttl=10.0), 0.0)
    finder.observe_at(sighting(A, "10.0.0.1", ttl=10.0), 8.0)
    assert finder.nodes_at(15.0)


@pytest.mark.parametrize("ttl", [0.0, -1.0, math.nan])
def test_goodbye_or_nonsense_ttl_forgets(ttl: float) -> None:
    finder = PeerFinder()
    finder.observe_at(sighting(A, "10.0.0.1"), 0.0)
    finder.observe_at(sighting(A, "10.0.0.1", ttl=ttl), 1.0)
    assert finder.nodes_at(1.0) == []


def test_forget_and_ttl_cap() -> None:
    finder = PeerFinder()
    finder.observe_at(sighting(A, "10.0.0.1", ttl=math.inf), 0.0)
    assert finder.next_expiry() == MAX_TTL
    finder.forget_at(f"web-lb1.{SERVICE_TYPE}", 1.0)
    finder.forget_at("never-seen", 1.0)
    assert finder.nodes_at(1.0) == []


def test_take_at_observes_sightings_and_forgets_goodbyes() -> None:
    finder = PeerFinder()
    finder.take_at([(f"web-lb1.{SERVICE_TYPE}", sighting(A, "10.0.0.1"))], 0.0)
    finder.take_at([(f"web-lb2.{SERVICE_TYPE}", sighting(B, "10.0.0.2"))], 1.0)
    assert [s.record.node for s in finder.nodes_at(1.0)] == ["lb1", "lb2"]
    finder.take_at([(f"web-lb1.{SERVICE_TYPE}", None)], 2.0)
    assert [s.record.node for s in finder.nodes_at(2.0)] == ["lb2"]


def test_malformed_is_ignored_logged_once_and_counted() -> None:
    log = Recorder()
    finder = PeerFinder(log=log)
    bad = Sighting("evil." + SERVICE_TYPE, {b"cluster": b"web"}, ("10.0.0.9",), 120.0)
    for _ in range(3):
        finder.observe_at(bad, 0.0)
    assert finder.nodes_at(0.0) == []
    assert finder.rejected == 3
    [logged] = log.named("discovery_record_ignored")
    assert logged["service"] == "evil." + SERVICE_TYPE
    assert "missing" in logged["reason"]


def test_a_malformed_update_removes_the_old_record() -> None:
    finder = PeerFinder(log=Recorder())
    finder.observe_at(sighting(A, "10.0.0.1"), 0.0)
    broken = Sighting(f"web-lb1.{SERVICE_TYPE}", {**encode_txt(A), b"prio": b"x"}, (), 120.0)
    finder.observe_at(broken, 1.0)
    assert finder.nodes_at(1.0) == []


@pytest.mark.parametrize(
    "junk",
    [
        Sighting("x", {b"cluster": 5}, (), 1.0),  # type: ignore[dict-item]
        Sighting("x", None, (), 1.0),  # type: ignore[arg-type]
        Sighting("x", encode_txt(A), (None,), 1.0),  # type: ignore[arg-type]
        Sighting("x" * 300, encode_txt(A), (), 1.0),
    ],
)
def test_garbage_never_raises(junk: Sighting) -> None:
    finder = PeerFinder(log=Recorder())
    finder.observe_at(junk, 0.0)
    assert finder.nodes_at(0.0) == []
    assert finder.rejected == 1


def test_addresses_are_parsed_capped_and_ordered() -> None:
    finder = PeerFinder()
    junk = ["not-an-ip", "0.0.0.0", "224.0.0.251", "127.0.0.1", "::1", "10.0.0.1"]
    many = [f"10.0.1.{i}" for i in range(20)]
    finder.observe_at(sighting(A, "fd00::1", *junk, "10.0.0.1", *many), 0.0)
    [seen] = finder.nodes_at(0.0)
    assert len(seen.addresses) == MAX_ADDRESSES
    assert seen.addresses[0] == ip_address("10.0.0.1")
    assert all(a.version == 4 for a in seen.addresses)


def test_table_is_capped() -> None:
    log = Recorder()
    finder = PeerFinder(log=log)
    for i in range(MAX_SERVICES + 5):
        rec = NodeRecord("c", f"n{i}", "BACKUP", 1, "1", 694)
        finder.observe_at(sighting(rec, "10.0.0.1"), 0.0)
    assert len(finder.nodes_at(0.0)) == MAX_SERVICES
    assert finder.dropped == 5
    assert len(log.named("discovery_table_full")) == 1


def _web_finder(log: Recorder | None = None) -> PeerFinder:
    return PeerFinder(
        me="lb1",
        own_addresses=[ip_address("10.0.0.1")],
        networks=[LAN, IPv6Network("fd00::/64")],
        port=694,
        log=log,
    )


def test_peer_is_the_other_node_of_the_same_cluster_never_itself() -> None:
    finder = _web_finder()
    other = NodeRecord("db", "pg1", "MASTER", 100, "0.1.0", 694)
    finder.observe_at(sighting(A, "10.0.0.1"), 0.0)
    finder.observe_at(sighting(other, "10.0.0.3"), 0.0)
    assert finder.peer_of_at("web", 0.0) is None
    finder.observe_at(sighting(B, "10.0.0.2", "fd00::2"), 0.0)
    peer = finder.peer_of_at("web", 0.0)
    assert peer is not None
    assert peer.record == B
    assert peer.addresses == (ip_address("10.0.0.2"), ip_address("fd00::2"))


def test_a_node_announcing_one_of_our_addresses_is_never_the_peer() -> None:
    finder = _web_finder()
    twin = NodeRecord("web", "lb1-old", "BACKUP", 100, "0.1.0", 694)
    finder.observe_at(sighting(twin, "10.0.0.1"), 0.0)
    assert finder.peer_of_at("web", 0.0) is None


def test_only_addresses_on_the_vip_subnet_and_no_link_local() -> None:
    log = Recorder()
    finder = _web_finder(log)
    finder.observe_at(sighting(B, "192.168.9.2", "fe80::2", "10.0.0.2"), 0.0)
    peer = finder.peer_of_at("web", 0.0)
    assert peer is not None
    assert peer.addresses == (ip_address("10.0.0.2"),)
    finder.observe_at(sighting(B, "192.168.9.2", "fe80::2"), 1.0)
    assert finder.peer_of_at("web", 1.0) is None
    assert finder.peer_of_at("web", 1.0) is None
    assert len(log.named("discovery_peer_unreachable")) == 1


def test_a_peer_on_another_port_is_skipped_and_logged_once() -> None:
    log = Recorder()
    finder = _web_finder(log)
    finder.observe_at(sighting(NodeRecord("web", "lb2", "BACKUP", 1, "1", 695), "10.0.0.2"), 0.0)
    for _ in range(3):
        assert finder.peer_of_at("web", 0.0) is None
    [logged] = log.named("discovery_port_mismatch")
    assert (logged["port"], logged["expected"]) == (695, 694)


def test_the_choice_is_stable_until_the_chosen_one_goes() -> None:
    log = Recorder()
    finder = _web_finder(log)
    lb3 = NodeRecord("web", "lb3", "BACKUP", 100, "0.1.0", 694)
    lb0 = NodeRecord("web", "lb0", "BACKUP", 100, "0.1.0", 694)
    finder.observe_at(sighting(lb3, "10.0.0.3", ttl=10.0), 0.0)
    assert _node(finder.peer_of_at("web", 0.0)) == "lb3"
    # A newcomer sorting first does not take over while lb3 is still announced.
    finder.observe_at(sighting(lb0, "10.0.0.4", ttl=100.0), 1.0)
    assert _node(finder.peer_of_at("web", 1.0)) == "lb3"
    # Role and priority changes of the chosen peer keep it chosen.
    finder.observe_at(
        sighting(NodeRecord("web", "lb3", "MASTER", 1, "0.1.0", 694), "10.0.0.3", ttl=10.0), 2.0
    )
    assert _node(finder.peer_of_at("web", 3.0)) == "lb3"
    assert _node(finder.peer_of_at("web", 12.0)) == "lb0"
    assert len(log.named("discovery_extra_nodes")) == 0
    finder.observe_at(sighting(lb3, "10.0.0.3"), 13.0)
    assert _node(finder.peer_of_at("web", 13.0)) == "lb0"


def test_a_fresh_choice_is_the_lowest_node_name_and_extra_nodes_are_logged() -> None:
    log = Recorder()
    finder = _web_finder(log)
    for name, addr in (("lb3", "10.0.0.3"), ("lb2", "10.0.0.2"), ("lb4", "10.0.0.4")):
        finder.observe_at(sighting(NodeRecord("web", name, "BACKUP", 1, "1", 694), addr), 0.0)
    assert _node(finder.peer_of_at("web", 0.0)) == "lb2"
    [logged] = log.named("discovery_extra_nodes")
    assert logged["ignored"] == ["lb3", "lb4"]


def test_seen_as_dict() -> None:
    finder = PeerFinder()
    finder.observe_at(sighting(A, "fd00::1", "10.0.0.1"), 0.0)
    [seen] = finder.nodes_at(0.0)
    assert seen.as_dict() == {
        "name": f"web-lb1.{SERVICE_TYPE}",
        "address": "10.0.0.1",
        "addresses": ["10.0.0.1", "fd00::1"],
        "cluster": "web",
        "node": "lb1",
        "role": "MASTER",
        "priority": 150,
        "version": "0.1.0",
        "port": 694,
    }


def _node(seen: Any) -> str | None:
    return None if seen is None else str(seen.record.node)
