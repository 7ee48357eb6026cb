"""The ``dns`` balancer's answers: records, order per scheduler, rcodes, EDNS, truncation."""

from __future__ import annotations

import json
import os
import random
import struct
from collections import Counter

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hapair.balancer.dnsanswer import MAX_PLANS, Answerer, Zone, zone_from_json
from hapair.balancer.dnsserver import parse_config
from hapair.schedulers import Scheduler

NAMES = ("www.example.com", "api.example.com")
V4 = (("10.0.0.21", 1), ("10.0.0.22", 1), ("10.0.0.23", 1))


def answerer(
    records: tuple[tuple[str, int], ...] = V4,
    scheduler: Scheduler = "rr",
    max_answers: int = 0,
    seed: int = 1,
) -> Answerer:
    zone = Zone(NAMES, records, ttl=7, scheduler=scheduler, max_answers=max_answers)
    return Answerer(zone, rng=random.Random(seed))


def query(
    name: str = "www.example.com",
    rdtype: str = "A",
    *,
    use_edns: int | bool = False,
    **kw: object,
) -> bytes:
    q = dns.message.make_query(name, rdtype, use_edns=use_edns, **kw)  # type: ignore[arg-type]
    q.id = 4660
    return q.to_wire()


def ask(
    a: Answerer, wire: bytes, client: str = "192.0.2.1", udp: bool = True
) -> dns.message.Message:
    response = a.respond(wire, client, udp=udp)
    assert response is not None
    return dns.message.from_wire(response)


def addresses(m: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in m.answer for rd in rrset]


# ------------------------------------------------------------------ answers -------------------


def test_a_configured_name_gets_its_a_records_authoritatively() -> None:
    m = ask(answerer(), query("WwW.Example.COM"))
    assert m.id == 4660 and m.rcode() == dns.rcode.NOERROR
    assert m.flags & dns.flags.QR and m.flags & dns.flags.AA and m.flags & dns.flags.RD
    assert not m.flags & (dns.flags.TC | dns.flags.RA)
    assert str(m.question[0].name) == "WwW.Example.COM."  # echoed as asked (0x20 case)
    assert addresses(m) == ["10.0.0.21", "10.0.0.22", "10.0.0.23"]
    assert m.answer[0].ttl == 7 and m.answer[0].rdtype == dns.rdatatype.A
    assert m.edns < 0  # no EDNS asked, none given


def test_rd_is_copied_not_set() -> None:
    wire = bytearray(query())
    wire[2] &= ~0x01  # clear RD
    m = ask(answerer(), bytes(wire))
    assert not m.flags & dns.flags.RD and m.flags & dns.flags.AA


def test_ipv6_backends_answer_aaaa_and_ipv4_ones_a() -> None:
    a = answerer((("10.0.0.21", 1), ("fd00::21", 1), ("fd00::22", 1)))
    assert addresses(ask(a, query(rdtype="A"))) == ["10.0.0.21"]
    assert addresses(ask(a, query("api.example.com", "AAAA"))) == ["fd00::21", "fd00::22"]


@pytest.mark.parametrize("rdtype", ["AAAA", "MX", "TXT"])
def test_a_type_without_records_is_nodata_with_a_soa(rdtype: str) -> None:
    m = ask(answerer(), query(rdtype=rdtype))
    assert m.rcode() == dns.rcode.NOERROR and m.flags & dns.flags.AA and not m.answer
    (soa,) = m.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == 7 and soa[0].minimum == 7


def test_any_is_answered_with_one_rrset() -> None:
    assert addresses(ask(answerer(), query(rdtype="ANY"))) == [
        "10.0.0.21",
        "10.0.0.22",
        "10.0.0.23",
    ]


@pytest.mark.parametrize("name", ["example.com", "x.www.example.com", "www.example.org", "."])
def test_other_names_are_refused(name: str) -> None:
    m = ask(answerer(), query(name))
    assert m.rcode() == dns.rcode.REFUSED and not m.flags & dns.flags.AA and not m.answer
    assert str(m.question[0].name) == (name if name == "." else name + ".")


def test_other_classes_are_refused() -> None:
    m = ask(answerer(), query(rdclass="CH"))
    assert m.rcode() == dns.rcode.REFUSED and not m.answer


@pytest.mark.parametrize("opcode", [dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.IQUERY, 3])
def test_other_opcodes_are_not_implemented(opcode: int) -> None:
    wire = bytearray(query())
    wire[2] = (wire[2] & 0x87) | (opcode << 3)
    m = ask(answerer(), bytes(wire))
    assert m.rcode() == dns.rcode.NOTIMP and m.opcode() == opcode and m.id == 4660


def test_duplicate_addresses_are_one_record_with_the_summed_weight() -> None:
    a = answerer((("10.0.0.21", 2), ("10.0.0.21", 3), ("10.0.0.22", 5)), "weighted")
    assert sorted(addresses(ask(a, query()))) == ["10.0.0.21", "10.0.0.22"]
    assert a.families[1].weights == [5, 5]


# ------------------------------------------------------------------ order ---------------------


def test_rr_rotates_the_order_per_query() -> None:
    a = answerer()
    orders = [addresses(ask(a, query())) for _ in range(4)]
    assert orders == [
        ["10.0.0.21", "10.0.0.22", "10.0.0.23"],
        ["10.0.0.22", "10.0.0.23", "10.0.0.21"],
        ["10.0.0.23", "10.0.0.21", "10.0.0.22"],
        ["10.0.0.21", "10.0.0.22", "10.0.0.23"],
    ]


def test_max_answers_trims_and_the_window_rotates() -> None:
    a = answerer(max_answers=2)
    assert [addresses(ask(a, query())) for _ in range(3)] == [
        ["10.0.0.21", "10.0.0.22"],
        ["10.0.0.22", "10.0.0.23"],
        ["10.0.0.23", "10.0.0.21"],
    ]


def test_random_shuffles_every_record_in() -> None:
    a = answerer(scheduler="random")
    orders = [tuple(addresses(ask(a, query()))) for _ in range(300)]
    assert all(sorted(o) == ["10.0.0.21", "10.0.0.22", "10.0.0.23"] for o in orders)
    assert len(set(orders)) == 6  # every permutation shows up
    firsts = Counter(o[0] for o in orders)
    assert all(70 <= n <= 130 for n in firsts.values())


def test_weighted_puts_a_record_first_in_proportion_to_its_weight() -> None:
    a = answerer((("10.0.0.21", 6), ("10.0.0.22", 3), ("10.0.0.23", 1)), "weighted")
    n = 10_000
    order = [a.families[1].addresses[a.order(1, "192.0.2.1")[0]] for _ in range(n)]
    firsts = Counter(str(address) for address in order)
    assert sorted(addresses(ask(a, query()))) == ["10.0.0.21", "10.0.0.22", "10.0.0.23"]
    # Binomial: 4 sigma is at most 0.02 of n here; a seeded rng keeps the test deterministic.
    for address, share in (("10.0.0.21", 0.6), ("10.0.0.22", 0.3), ("10.0.0.23", 0.1)):
        assert abs(firsts[address] / n - share) < 0.02, firsts


def test_source_hash_keeps_a_client_on_its_address() -> None:
    a = answerer(scheduler="source-hash")
    clients = [f"198.51.100.{i}" for i in range(200)]
    first = {c: addresses(ask(a, query(), c))[0] for c in clients}
    assert all(addresses(ask(a, query(), c))[0] == first[c] for c in clients[:20])
    spread = Counter(first.values())
    assert len(spread) == 3 and min(spread.values()) > 40
    # Rendezvous hashing: dropping one backend moves only the clients that were on it.
    b = answerer(V4[:2], scheduler="source-hash")
    moved = [c for c in clients if addresses(ask(b, query(), c))[0] != first[c]]
    assert all(first[c] == "10.0.0.23" for c in moved)


def test_source_hash_follows_the_weights() -> None:
    a = answerer((("10.0.0.21", 3), ("10.0.0.22", 1)), "source-hash")
    firsts = Counter(a.order(1, f"2001:db8::{i:x}")[0] for i in range(4000))
    assert 0.72 < firsts[0] / 4000 < 0.78


# ------------------------------------------------------------------ EDNS and size -------------


def test_edns_is_echoed_with_our_payload_and_the_do_bit() -> None:
    m = ask(answerer(), query(use_edns=0, payload=4096, want_dnssec=True))
    assert m.edns == 0 and m.payload == 1232 and m.ednsflags & dns.flags.DO
    assert addresses(m)
    m = ask(
        answerer(),
        query(
            use_edns=0, options=[dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"12345678")]
        ),
    )
    assert m.edns == 0 and not m.ednsflags & dns.flags.DO and not m.options  # cookie ignored


def test_an_unknown_edns_version_gets_badvers() -> None:
    m = ask(answerer(), query(use_edns=1))
    assert m.rcode() == dns.rcode.BADVERS and not m.answer


MANY_V6 = tuple((f"fd00::{i:x}", 1) for i in range(1, 41))  # 40 AAAA: 1120 bytes of answers


def test_an_answer_too_big_for_udp_is_truncated() -> None:
    a = answerer(MANY_V6)
    m = ask(a, query(rdtype="AAAA"))
    assert m.flags & dns.flags.TC and m.flags & dns.flags.AA and not m.answer
    assert m.question[0].rdtype == dns.rdatatype.AAAA
    big = ask(a, query(rdtype="AAAA", use_edns=0, payload=4096))  # fits in 1232
    assert not big.flags & dns.flags.TC and len(addresses(big)) == 40
    small = ask(a, query(rdtype="AAAA", use_edns=0, payload=600))
    assert small.flags & dns.flags.TC and small.edns == 0
    assert len(addresses(ask(a, query(rdtype="AAAA"), udp=False))) == 40  # TCP: all


def test_max_answers_keeps_an_answer_under_512_bytes() -> None:
    m = ask(answerer(MANY_V6, max_answers=8), query(rdtype="AAAA"))
    assert not m.flags & dns.flags.TC and len(addresses(m)) == 8


# ------------------------------------------------------------------ drops ---------------------


def _header(qid: int, flags: int, qd: int, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


QUESTION = b"\x03www\x07example\x03com\x00\x00\x01\x00\x01"


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x12\x34\x01",
        _header(1, 0x0100, 1),  # no question
        _header(1, 0x0100, 1) + QUESTION[:-2],  # truncated question
        _header(1, 0x8100, 1) + QUESTION,  # a response
        _header(1, 0x0100, 0) + QUESTION,
        _header(1, 0x0100, 2) + QUESTION + QUESTION,
        _header(1, 0x0100, 1) + QUESTION + b"junk",
        _header(1, 0x0100, 1) + b"\xc0\x0c\x00\x01\x00\x01",  # a pointer to itself
        _header(1, 0x0100, 1, ar=1) + QUESTION + b"\x00\x00\x29\x04",  # cut OPT
        _header(1, 0x0100, 1, ar=1) + QUESTION + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x09",
        _header(1, 0x0100, 1) + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",  # label > 63
    ],
)
def test_malformed_packets_are_dropped(wire: bytes) -> None:
    assert answerer().respond(wire, "192.0.2.1") is None
    assert answerer().respond_slow(wire, "192.0.2.1") is None


FAST_CASES = [
    query(),
    query("API.example.com", "AAAA"),
    query(rdtype="MX"),
    query("nope.example", "A"),
    query(use_edns=0, payload=1400, want_dnssec=True),
    query(use_edns=0, payload=100),
    query(rdtype="ANY", use_edns=0),
]


@pytest.mark.parametrize("wire", FAST_CASES)
@pytest.mark.parametrize("scheduler", ["rr", "source-hash"])
def test_the_fast_path_renders_what_dnspython_renders(wire: bytes, scheduler: Scheduler) -> None:
    records = (*V4, ("fd00::1", 2))
    fast, slow = answerer(records, scheduler), answerer(records, scheduler)
    for _ in range(3):
        assert fast.respond(wire, "192.0.2.9") == slow.respond_slow(wire, "192.0.2.9")


# ------------------------------------------------------------------ properties ----------------


FUZZED = answerer((*V4, ("fd00::1", 1)))


def _check(wire: bytes) -> None:
    response = FUZZED.respond(wire, "192.0.2.1")
    if response is not None:
        m = dns.message.from_wire(response)
        assert m.id == int.from_bytes(wire[:2], "big") and m.flags & dns.flags.QR


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(wire: bytes) -> None:
    _check(wire)


@settings(max_examples=1500, deadline=None)
@given(
    st.sampled_from(FAST_CASES),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    st.integers(0, 40),
)
def test_mutated_queries_never_raise(wire: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    mutated = bytearray(wire)
    for pos, value in flips:
        if pos < len(mutated):
            mutated[pos] = value
    _check(bytes(mutated[: len(mutated) - cut] if cut < len(mutated) else mutated))


# ------------------------------------------------------------------ the file ------------------


def test_a_zone_survives_json() -> None:
    zone = Zone(NAMES, (("10.0.0.21", 2), ("fd00::1", 1)), 3, "weighted", 4)
    assert zone_from_json(zone.to_json()) == zone


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"names": []}, "names"),
        ({"names": ["a..b"]}, "names"),
        ({"records": [["10.0.0.300", 1]]}, "not an IP address"),
        ({"records": [["10.0.0.1", 0]]}, "weight"),
        ({"ttl": -1}, "ttl"),
        ({"scheduler": "lc"}, "scheduler"),
    ],
)
def test_a_bad_zone_is_reported(change: dict[str, object], message: str) -> None:
    obj = {**Zone(NAMES, V4).to_json(), **change}
    with pytest.raises(ValueError, match=message):
        zone_from_json(obj)


@pytest.mark.parametrize("text", ["", "[]", '{"listen": "x"}', "{" * 10])
def test_a_bad_server_file_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_config(text)


def test_the_per_query_and_per_client_memory_is_bounded() -> None:
    a = answerer(scheduler="source-hash")
    for i in range(MAX_PLANS + 10):
        assert ask(a, query(f"x{i}.example.com"), f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")
        ask(a, query(), f"2001:db8::{i:x}")
    assert len(a._plans[True]) <= MAX_PLANS
    assert len(a.families[1].sticky) <= MAX_PLANS
    big = query(
        use_edns=0, options=[dns.edns.GenericOption(dns.edns.OptionType.PADDING, bytes(600))]
    )
    assert addresses(ask(a, big)) and big[2:] not in a._plans[True]


def _orders_in_a_child(a: Answerer, *, reseed: bool) -> list[list[int]]:
    """Fork as the responder forks a worker; return the child's next 32 A-record orders."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: draw, report, leave without running the parent's cleanup
        try:
            os.close(read)
            if reseed:
                a.reseed()
            orders = [a.order(dns.rdatatype.A, "10.9.9.9") for _ in range(32)]
            os.write(write, json.dumps(orders).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    orders: list[list[int]] = json.loads(data)
    return orders


@pytest.mark.parametrize("scheduler", ["weighted", "random"])
def test_forked_workers_draw_their_own_random_orders(scheduler: Scheduler) -> None:
    a = answerer(scheduler=scheduler)
    # Without a reseed, two forked workers repeat each other's draws, one for one...
    assert _orders_in_a_child(a, reseed=False) == _orders_in_a_child(a, reseed=False)
    # ...with it (what run_worker does first), they do not (32 draws of 3: equal by chance
    # with probability 3**-32 or less).
    assert _orders_in_a_child(a, reseed=True) != _orders_in_a_child(a, reseed=True)
