"""The classic BPF assembler and the heartbeat filter program (pure: no socket)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hapair.iptypes import IpAddress
from hapair.net.sockfilter import (
    ACCEPT_ALL,
    BPF_ABS,
    BPF_H,
    BPF_JEQ,
    BPF_JMP,
    BPF_K,
    BPF_LD,
    BPF_LEN,
    BPF_RET,
    BPF_W,
    MAX_INSNS,
    MAX_TOKENS,
    SKF_NET_OFF,
    FilterError,
    Insn,
    Jump,
    Label,
    Stmt,
    assemble,
    encode,
    heartbeat_program,
)

RET0 = Stmt(BPF_RET | BPF_K, 0)
PEER4 = ipaddress.ip_address("10.77.1.2")
PEER6 = ipaddress.ip_address("fd77:1::2")


def run(prog: list[Insn], ip_header: bytes, udp: bytes) -> int:
    """A reference interpreter for the instructions the program uses (kernel semantics)."""
    acc, pc = 0, 0
    for _ in range(len(prog) + 1):
        i = prog[pc]
        cls = i.code & 0x07
        if cls == BPF_RET:
            return i.k
        if cls == BPF_LD:
            if i.code & 0xE0 == BPF_LEN:
                acc = len(udp)
            else:
                k = i.k - (1 << 32) if i.k >= 1 << 31 else i.k
                buf, off = (ip_header, k - SKF_NET_OFF) if k < 0 else (udp, k)
                size = 2 if i.code & 0x18 == BPF_H else 4
                if off + size > len(buf):
                    return 0  # the kernel drops on an out-of-bounds load
                acc = int.from_bytes(buf[off : off + size], "big")
            pc += 1
        elif cls == BPF_JMP:
            if i.code & 0xF0 == BPF_JEQ:
                pc += 1 + (i.jt if acc == i.k else i.jf)
            else:
                pc += 1 + i.k
        else:
            raise AssertionError(f"unexpected opcode {i.code:#x}")
    raise AssertionError("program did not return")


def ip_header(src: IpAddress) -> bytes:
    if src.version == 4:
        return bytes(12) + src.packed + bytes(4)
    return bytes(8) + src.packed + bytes(16)


def udp(sport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, 694, 8 + len(payload), 0) + payload


def payload(size: int = 140, token: bytes = bytes(4)) -> bytes:
    return bytes(20) + token + bytes(size - 24)


# -- the assembler ----------------------------------------------------------------------


def test_encoding_is_struct_sock_filter() -> None:
    insn = Insn(BPF_JMP | BPF_JEQ | BPF_K, 3, 7, 0x0A4D0102)
    assert insn.encode() == struct.pack("=HBBI", 0x15, 3, 7, 0x0A4D0102)
    assert len(encode([insn, insn])) == 16


def test_negative_offsets_encode_as_u32() -> None:
    prog = assemble([Stmt(BPF_LD | BPF_W | BPF_ABS, SKF_NET_OFF + 12), RET0])
    assert prog[0].encode()[4:] == struct.pack("=I", 0xFFF0000C)


def test_jump_offsets_count_from_the_next_instruction() -> None:
    prog = assemble(
        [
            Jump(BPF_JMP | BPF_JEQ | BPF_K, 1, "yes", None),
            Stmt(BPF_LD | BPF_W | BPF_LEN),
            Label("no"),
            RET0,
            Label("yes"),
            Stmt(BPF_RET | BPF_K, 1),
        ]
    )
    assert (prog[0].jt, prog[0].jf) == (2, 0)


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        ([], "1..4096"),
        ([RET0] * (MAX_INSNS + 1), "1..4096"),
        ([Stmt(BPF_LD | BPF_W | BPF_LEN)], "end with a return"),
        ([Jump(BPF_JMP | BPF_JEQ, 0, "x", None), RET0], "undefined label"),
        ([Label("a"), Label("a"), RET0], "defined twice"),
        ([Label("back"), Jump(BPF_JMP | BPF_JEQ, 0, "back", None), RET0], "forward only"),
        ([Jump(BPF_JMP | BPF_JEQ, 0, "far", None), *[RET0] * 256, Label("far"), RET0], "spans 256"),
    ],
)
def test_refuses_what_the_kernel_would(ops: list[Stmt | Jump | Label], message: str) -> None:
    with pytest.raises(FilterError, match=message):
        assemble(ops)


def test_longest_jump_and_longest_program_are_accepted() -> None:
    prog = assemble([Jump(BPF_JMP | BPF_JEQ, 0, "far", None), *[RET0] * 255, Label("far"), RET0])
    assert prog[0].jt == 255
    assert len(assemble([RET0] * MAX_INSNS)) == MAX_INSNS


# -- the heartbeat program ----------------------------------------------------------------


def test_program_accepts_the_heartbeat_whole() -> None:
    prog = heartbeat_program([PEER4], 694, 140)
    assert run(prog, ip_header(PEER4), udp(694, payload())) == ACCEPT_ALL


@pytest.mark.parametrize(
    ("src", "sport", "size"),
    [
        ("10.77.1.3", 694, 140),  # another source
        ("10.77.1.2", 695, 140),  # another port
        ("10.77.1.2", 694, 139),
        ("10.77.1.2", 694, 141),
        ("10.77.1.2", 694, 120),  # protocol v1
    ],
)
def test_program_drops_wrong_source_port_or_size(src: str, sport: int, size: int) -> None:
    prog = heartbeat_program([PEER4], 694, 140)
    assert run(prog, ip_header(ipaddress.ip_address(src)), udp(sport, payload(size))) == 0


def test_tokens_admit_only_their_packets() -> None:
    prog = heartbeat_program([PEER4], 694, 140, [b"\x01\x02\x03\x04", b"\xff\x00\x00\x01"], 20)
    hdr = ip_header(PEER4)
    assert run(prog, hdr, udp(694, payload(token=b"\x01\x02\x03\x04"))) == ACCEPT_ALL
    assert run(prog, hdr, udp(694, payload(token=b"\xff\x00\x00\x01"))) == ACCEPT_ALL
    assert run(prog, hdr, udp(694, payload(token=b"\x01\x02\x03\x05"))) == 0
    assert run(prog, hdr, udp(694, payload(token=bytes(4)))) == 0


def test_size_none_skips_the_length_check() -> None:
    prog = heartbeat_program([PEER4], 694, None)
    assert run(prog, ip_header(PEER4), udp(694, b"x" * 7)) == ACCEPT_ALL


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sources": []}, "1..8 source"),
        ({"sources": [PEER4, PEER6]}, "one address family"),
        ({"tokens": []}, "1..16 tokens"),
        ({"tokens": [b"abc"]}, "4 bytes"),
        ({"tokens": [b"abcd"] * (MAX_TOKENS + 1)}, "1..16 tokens"),
        ({"tokens": [b"abcd"], "token_offset": 137}, "outside"),
        ({"port": 70000}, "out of range"),
    ],
)
def test_program_arguments_are_checked(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"sources": [PEER4], "port": 694, "size": 140}
    args.update(kwargs)
    with pytest.raises(FilterError, match=message):
        heartbeat_program(**args)  # type: ignore[arg-type]


def test_largest_program_fits_the_jump_range() -> None:
    many6 = [ipaddress.ip_address(f"fd77::{i + 1}") for i in range(8)]
    prog = heartbeat_program(many6, 694, 140, [bytes([i]) * 4 for i in range(MAX_TOKENS)])
    assert max(max(i.jt, i.jf) for i in prog) <= 255
    hdr = ip_header(many6[-1])
    assert run(prog, hdr, udp(694, payload(token=bytes([15]) * 4))) == ACCEPT_ALL


addresses4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
addresses6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))


@given(
    sources=st.one_of(
        st.lists(addresses4, min_size=1, max_size=8), st.lists(addresses6, min_size=1, max_size=8)
    ),
    pick=st.integers(0, 7),
    other=st.one_of(addresses4, addresses6),
    sport=st.sampled_from([694, 695, 0]),
    size=st.sampled_from([120, 139, 140, 141]),
    tokens=st.none() | st.lists(st.binary(min_size=4, max_size=4), min_size=1, max_size=4),
    token=st.binary(min_size=4, max_size=4),
    genuine_src=st.booleans(),
)
def test_program_admits_exactly_the_specified_datagrams(
    sources: list[IpAddress],
    pick: int,
    other: IpAddress,
    sport: int,
    size: int,
    tokens: list[bytes] | None,
    token: bytes,
    genuine_src: bool,
) -> None:
    if other.version != sources[0].version:
        genuine_src = True
    src = sources[pick % len(sources)] if genuine_src else other
    prog = heartbeat_program(sources, 694, 140, tokens, 20)
    want = src in sources and sport == 694 and size == 140 and (tokens is None or token in tokens)
    got = run(prog, ip_header(src), udp(sport, payload(size, token)))
    assert got == (ACCEPT_ALL if want else 0)
