"""Answers for the ``dns`` balancer kind: query bytes in, response bytes (or None) out (pure).

The responder is authoritative for a few names only, each with the pool's addresses as its A
(IPv4 backends) and AAAA (IPv6) records; the scheduler decides the order of the records, which
is what spreads clients, since most take the first address. Every record is rendered once
with dnspython when the pool changes; its owner is a compression pointer to the question at
offset 12 (RFC 1035 section 4.1.4), so a record's bytes are the same in every response and a
query is answered by splicing: header, the client's own question bytes (their letter case
included, for resolvers that randomise it), the records in the chosen order, an OPT record.
Only queries outside that fast path's narrow shape are parsed by dnspython. Nothing here
raises on a malformed packet: it is dropped (None).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any, Final

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from hapair.iptypes import IpAddress
from hapair.schedulers import SCHEDULERS, Scheduler

#: What a response over UDP may grow to when the client advertises more (RFC 9715's advice:
#: larger ones fragment, and fragments get lost or spoofed); plain DNS gets 512 (RFC 1035).
MAX_UDP_PAYLOAD: Final = 1232
PLAIN_UDP_PAYLOAD: Final = 512
TCP_PAYLOAD: Final = 65535
MAX_NAMES: Final = 64
MAX_RECORDS: Final = 1024
MAX_TTL: Final = 2**31 - 1
#: Distinct queries whose parse is kept, and clients whose order is (each cleared when full).
MAX_PLANS: Final = 4096
MAX_PLANNED_QUERY: Final = 512  # the largest query whose parse is kept
#: Rotations are pre-joined up to this many records in all (pools x answers).
MAX_BODY_RECORDS: Final = 16384

_HEADER: Final = struct.Struct("!HHHHHH")
_QTAIL: Final = struct.Struct("!HH")
_OPT: Final = struct.Struct("!BHHBBHH")  # root name, type 41, payload, ext-rcode, version, ...
_QR: Final = 0x8000
_AA: Final = 0x0400
_TC: Final = 0x0200
_RD: Final = 0x0100
_CD: Final = 0x0010
_OPCODE: Final = 0x7800
_DO: Final = 0x8000
_A: Final = 1
_AAAA: Final = 28
_ANY: Final = 255
_IN: Final = 1
_OPT_TYPE: Final = 41
_REFUSED: Final = 5
_NOTIMP: Final = 4

_DROP, _STATIC, _DYNAMIC, _SLOW = range(4)
#: (kind, the response after its ID (or before the records), the records' family, after them)
_Plan = tuple[int, bytes, "_Family | None", bytes]
_DROP_PLAN: Final[_Plan] = (_DROP, b"", None, b"")
_SLOW_PLAN: Final[_Plan] = (_SLOW, b"", None, b"")

Counter = Callable[[int], int]
"""``counter(slot)`` returns the next value of round-robin counter ``slot`` (0: A, 1: AAAA)."""


@dataclass(frozen=True, slots=True)
class Zone:
    """What to answer: the names, the records (address, weight) in pool order, and how."""

    names: tuple[str, ...]
    records: tuple[tuple[str, int], ...]
    ttl: int = 5
    scheduler: Scheduler = "rr"
    max_answers: int = 0  # 0: every record

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict that ``zone_from_json`` reads back."""
        return {
            "names": list(self.names),
            "records": [[a, w] for a, w in self.records],
            "ttl": self.ttl,
            "scheduler": self.scheduler,
            "max_answers": self.max_answers,
        }


def _int_in(obj: dict[str, Any], key: str, low: int, high: int) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{key} must be an integer from {low} to {high} (got {value!r})")
    return value


def zone_from_json(obj: object) -> Zone:
    """Read and check a zone as ``Zone.to_json`` wrote it; ValueError says what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError("the zone must be a JSON object")
    names, records = obj.get("names"), obj.get("records")
    if not isinstance(names, list) or not 1 <= len(names) <= MAX_NAMES:
        raise ValueError(f"names must be a list of 1 to {MAX_NAMES} names")
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"names: {name!r} is not a string")
        try:
            dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            raise ValueError(f"names: {name!r}: {exc}") from None
    if not isinstance(records, list) or not 1 <= len(records) <= MAX_RECORDS:
        raise ValueError(f"records must be a list of 1 to {MAX_RECORDS} [address, weight]")
    parsed: list[tuple[str, int]] = []
    for rec in records:
        if not (isinstance(rec, list) and len(rec) == 2 and isinstance(rec[0], str)):
            raise ValueError(f"records: {rec!r} is not [address, weight]")
        try:
            address = str(ip_address(rec[0]))
        except ValueError:
            raise ValueError(f"records: {rec[0]!r} is not an IP address") from None
        parsed.append((address, _int_in({"weight": rec[1]}, "weight", 1, 1_000_000)))
    scheduler = obj.get("scheduler")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)} (got {scheduler!r})")
    return Zone(
        names=tuple(n.lower().rstrip(".") for n in names),
        records=tuple(parsed),
        ttl=_int_in(obj, "ttl", 0, MAX_TTL),
        scheduler=next(s for s in SCHEDULERS if s == scheduler),
        max_answers=_int_in(obj, "max_answers", 0, MAX_RECORDS),
    )


class _Family:
    """The records of one type (A or AAAA), pre-rendered, and how to order them."""

    __slots__ = (
        "addresses", "bodies", "chunks", "cum", "keys", "limit", "rdtype", "rotations", "slot",
        "sticky", "weights",
    )  # fmt: skip

    def __init__(self, rdtype: int, slot: int, members: Sequence[tuple[IpAddress, int]]) -> None:
        self.rdtype = rdtype
        self.slot = slot
        self.addresses = [a for a, _ in members]
        self.weights = [w for _, w in members]
        self.keys = [a.packed for a in self.addresses]
        self.cum = list(itertools.accumulate(self.weights))
        self.chunks: list[bytes] = []
        self.bodies: list[bytes] = []  # per rotation start, when the scheduler rotates
        self.sticky: dict[str, list[int]] = {}  # source-hash: each client's order, bounded
        self.rotations = list(range(len(members))) * 2
        self.limit = len(members)

    def __len__(self) -> int:
        return len(self.addresses)


def _rrset(name: dns.name.Name, addresses: Sequence[IpAddress], ttl: int,
           ) -> dns.rrset.RRset:  # fmt: skip
    rdtype = dns.rdatatype.A if addresses[0].version == 4 else dns.rdatatype.AAAA
    return dns.rrset.from_text_list(name, ttl, "IN", rdtype, [str(a) for a in addresses])


def _soa(name: dns.name.Name, ttl: int) -> dns.rrset.RRset:
    # The negative-caching TTL is the answers' TTL: a name gains records as backends recover.
    rname = dns.name.Name((b"hostmaster", *name.labels))
    text = f"{name} {rname} 1 3600 600 86400 {ttl}"
    return dns.rrset.from_text(name, ttl, "IN", "SOA", text)


def _tail(name: dns.name.Name, section: str, rrset: dns.rrset.RRset) -> bytes:
    """The bytes of ``rrset`` as rendered right after a question for ``name``."""
    query = dns.message.make_query(name, rrset.rdtype, use_edns=False)
    response = dns.message.make_response(query)
    getattr(response, section).append(rrset)
    wire = response.to_wire(want_shuffle=False)
    return wire[12 + len(_wire(name)) + 4 :]


def _wire(name: dns.name.Name) -> bytes:
    wire = name.to_wire()
    assert wire is not None  # only None when written to a file
    return wire


class Answerer:
    """Answers queries for one zone; build a new one when the pool changes.

    ``rng`` drives ``random`` and ``weighted``; ``counter`` drives ``rr`` (the server shares
    one between its worker processes, so the rotation goes on across them).
    """

    def __init__(
        self, zone: Zone, *, rng: random.Random | None = None, counter: Counter | None = None
    ) -> None:
        self.zone = zone
        self.rng = rng or random.Random()
        self.counter = counter or _LocalCounter()
        merged: dict[IpAddress, int] = {}
        for text, weight in zone.records:
            address = ip_address(text)
            merged[address] = merged.get(address, 0) + weight  # one host, several ports
        self.families = {
            _A: _Family(_A, 0, [(a, w) for a, w in merged.items() if a.version == 4]),
            _AAAA: _Family(_AAAA, 1, [(a, w) for a, w in merged.items() if a.version == 6]),
        }
        self.names = {dns.name.from_text(n).canonicalize() for n in zone.names}
        self.soa: dict[bytes, bytes] = {}
        for name in self.names:
            self.soa[_wire(name)] = _tail(name, "authority", _soa(name, zone.ttl))
        first = min(self.names)
        for family in self.families.values():
            family.limit = min(len(family), zone.max_answers or len(family))
            family.chunks = [
                _tail(first, "answer", _rrset(first, [a], zone.ttl)) for a in family.addresses
            ]
            n, k = len(family), family.limit
            if zone.scheduler in ("rr", "weighted") and n * k <= MAX_BODY_RECORDS:
                doubled = family.chunks * 2
                family.bodies = [b"".join(doubled[r : r + k]) for r in range(n)]
        self._plans: dict[bool, dict[bytes, _Plan]] = {True: {}, False: {}}

    def reseed(self) -> None:
        """Draw fresh random numbers: a forked worker must not repeat its siblings' draws."""
        self.rng.seed()

    # ------------------------------------------------------------------ ordering --------------

    def order(self, rdtype: int, client: str) -> list[int]:
        """Indexes of ``rdtype``'s records in answer order, trimmed to ``max_answers``."""
        family = self.families[rdtype]
        if not family:
            return []
        scheduler = self.zone.scheduler
        if scheduler in ("rr", "weighted"):
            start = self._start(family)
            return family.rotations[start : start + family.limit]
        if scheduler == "random":
            return self.rng.sample(range(len(family)), family.limit)
        order = family.sticky.get(client)
        if order is None:
            order = _rendezvous(family, client.encode())[: family.limit]
            if len(family.sticky) >= MAX_PLANS:
                family.sticky.clear()
            family.sticky[client] = order
        return order

    def _start(self, family: _Family) -> int:
        """Where the rotation starts: the next one (rr), or one drawn by weight (weighted)."""
        if self.zone.scheduler == "rr":
            return self.counter(family.slot) % len(family)
        start = bisect.bisect_right(family.cum, self.rng.random() * family.cum[-1])
        return min(start, len(family) - 1)

    def _body(self, family: _Family, client: str) -> bytes:
        if family.bodies:
            return family.bodies[self._start(family)]
        chunks = family.chunks
        return b"".join([chunks[i] for i in self.order(family.rdtype, client)])

    # ------------------------------------------------------------------ answering -------------

    def respond(self, wire: bytes, client: str, *, udp: bool = True) -> bytes | None:
        """The response to ``wire`` from ``client`` (its address), or None to drop it."""
        # What to send depends on the bytes after the ID alone (and on the order picked):
        # the same query from any resolver reuses one plan.
        plans = self._plans[udp]
        key = wire[2:]
        plan = plans.get(key)
        if plan is None:
            plan = self._plan(wire, udp)
            if len(wire) <= MAX_PLANNED_QUERY:
                if len(plans) >= MAX_PLANS:
                    plans.clear()
                plans[key] = plan
        kind, pre, family, post = plan
        if kind == _DYNAMIC:
            assert family is not None
            return b"".join((wire[:2], pre, self._body(family, client), post))
        if kind == _STATIC:
            return wire[:2] + pre
        if kind == _SLOW:
            return self.respond_slow(wire, client, udp=udp)
        return None

    def _plan(self, wire: bytes, udp: bool) -> _Plan:
        """How to answer ``wire``: the fast path's whole parse, done once per distinct query."""
        size = len(wire)
        if size < 12:
            return _DROP_PLAN
        _, flags, qd, an, ns, ar = _HEADER.unpack_from(wire)
        if flags & _QR:
            return _DROP_PLAN  # a response (or a reflection attempt): never answer one
        if flags & _OPCODE:
            # Header only: NOTIMP needs no question (RFC 1035 4.1.1), and it cannot amplify.
            out = _QR | (flags & (_OPCODE | _RD)) | _NOTIMP
            return (_STATIC, _HEADER.pack(0, out, 0, 0, 0, 0)[2:], None, b"")
        if qd != 1 or an or ns or ar > 1 or size < 17:
            return _SLOW_PLAN
        end = wire.find(0, 12)
        if end < 0 or end + 5 > size:
            return _DROP_PLAN
        soa = self.soa.get(wire[12 : end + 1].lower())
        if soa is None and _label_end(wire) != end:
            return _SLOW_PLAN  # compressed, or not a name
        qtype, qclass = _QTAIL.unpack_from(wire, end + 1)
        pos = end + 5
        opt = b""
        limit = PLAIN_UDP_PAYLOAD if udp else TCP_PAYLOAD
        if ar:
            if size < pos + 11:
                return _DROP_PLAN
            root, otype, payload, _, version, eflags, rdlen = _OPT.unpack_from(wire, pos)
            if root or otype != _OPT_TYPE or version or pos + 11 + rdlen != size:
                return _SLOW_PLAN  # BADVERS, or not an OPT
            # Options (a cookie, say) are ignored, as RFC 6891 6.1.2 lets a server do.
            opt = _OPT.pack(0, _OPT_TYPE, MAX_UDP_PAYLOAD, 0, 0, eflags & _DO, 0)
            if udp:
                limit = max(PLAIN_UDP_PAYLOAD, min(payload, MAX_UDP_PAYLOAD))
        elif pos != size:
            return _SLOW_PLAN
        if qclass != _IN:
            return _SLOW_PLAN
        out = _QR | (flags & (_RD | _CD))
        question = wire[12:pos]
        family = self.families.get(self._rdtype(qtype)) if soa is not None else None
        answers, authority, body_size = 0, 0, 0
        if soa is None:
            out |= _REFUSED
        elif family:
            out |= _AA
            answers, body_size = family.limit, family.limit * len(family.chunks[0])
        else:
            out |= _AA
            authority, body_size = 1, len(soa)
        if 12 + len(question) + body_size + len(opt) > limit:
            out |= _TC
            answers, authority = 0, 0
        header = _HEADER.pack(0, out, 1, answers, authority, 1 if opt else 0)[2:]
        if answers:
            return (_DYNAMIC, header + question, family, opt)
        nodata = soa if authority and soa else b""
        return (_STATIC, b"".join((header, question, nodata, opt)), None, b"")

    def _rdtype(self, qtype: int) -> int:
        if qtype == _ANY:
            # RFC 8482: answer ANY with one RRset that exists rather than everything.
            return _A if self.families[_A] else _AAAA
        return qtype

    def respond_slow(self, wire: bytes, client: str, *, udp: bool = True) -> bytes | None:
        """``respond`` for any query, parsed and rendered by dnspython (the fast path's twin)."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # any malformed packet is dropped, whatever dnspython raises
            return None
        try:
            return self._render(query, client, udp)
        except Exception:  # a query dnspython parsed but cannot answer: drop it
            return None

    def _render(self, query: dns.message.Message, client: str, udp: bool) -> bytes | None:
        if query.flags & dns.flags.QR or len(query.question) != 1:
            return None
        if query.opcode() != dns.opcode.QUERY:
            out = _QR | (query.flags & (_OPCODE | _RD)) | _NOTIMP
            return _HEADER.pack(query.id, out, 0, 0, 0, 0)
        response = dns.message.make_response(query, our_payload=MAX_UDP_PAYLOAD, pad=0)
        response.flags = _QR | (query.flags & (_RD | _CD))
        if query.edns > 0:
            response.set_rcode(dns.rcode.BADVERS)
            return response.to_wire()
        if query.edns == 0:
            response.ednsflags = query.ednsflags & _DO
        question = query.question[0]
        name = question.name.canonicalize()
        if question.rdclass != dns.rdataclass.IN or name not in self.names:
            response.set_rcode(dns.rcode.REFUSED)
            return response.to_wire()
        response.flags |= dns.flags.AA
        rdtype = self._rdtype(question.rdtype)
        family = self.families.get(rdtype)
        if family:
            picked = [family.addresses[i] for i in self.order(rdtype, client)]
            response.answer.append(_rrset(question.name, picked, self.zone.ttl))
        else:
            response.authority.append(_soa(question.name, self.zone.ttl))
        limit = TCP_PAYLOAD
        if udp:
            limit = PLAIN_UDP_PAYLOAD
            if query.edns == 0:
                limit = max(PLAIN_UDP_PAYLOAD, min(query.payload, MAX_UDP_PAYLOAD))
        try:
            return response.to_wire(max_size=limit, want_shuffle=False)
        except dns.exception.TooBig:
            response.answer.clear()
            response.authority.clear()
            response.flags |= dns.flags.TC
            return response.to_wire(max_size=limit)


class _LocalCounter:
    """Round-robin counters for one process."""

    def __init__(self) -> None:
        self.values = [0, 0]

    def __call__(self, slot: int) -> int:
        value = self.values[slot]
        self.values[slot] = value + 1
        return value


def _label_end(wire: bytes) -> int:
    """Where the uncompressed name at offset 12 ends (its root label), or -1."""
    pos, size = 12, len(wire)
    while pos < size:
        length = wire[pos]
        if length == 0:
            return pos if pos - 12 < 255 else -1
        if length > 63:
            return -1
        pos += length + 1
    return -1


def _rendezvous(family: _Family, client: bytes) -> list[int]:
    """Weighted rendezvous hashing: a client keeps its address while that stays in the pool."""
    scores = []
    for index, key in enumerate(family.keys):
        digest = hashlib.blake2b(client + b"|" + key, digest_size=8).digest()
        u = (int.from_bytes(digest, "big") + 0.5) / 2.0**64
        scores.append((family.weights[index] / -math.log(u), index))
    scores.sort(reverse=True)
    return [index for _, index in scores]
