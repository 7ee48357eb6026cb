"""Classic BPF socket filters for the heartbeat sockets: a tiny assembler and the one program.

Why a socket filter (``SO_ATTACH_FILTER``) and not rules in an nftables table of hapair's own:
the filter belongs to the socket, so it is per link by construction, is replaced atomically
by one ``setsockopt`` (the node re-installs the tokens every time its challenge rotates, which
must cost no netlink transaction, no ruleset reload and nothing off the loop), and vanishes
with the process: there is no ruleset to leave behind after a crash, none to clash with the
host's firewall, and no CAP_NET_ADMIN needed for it. What it refuses is counted in the
socket's own ``sk_drops`` (read with ``SO_MEMINFO``), so the drops of each link are known.

A filter on a UDP socket runs in ``udp_queue_rcv_one_skb`` with ``skb->data`` at the UDP
header (offset 0 = source port; ``len`` = 8 + payload), after the checksum was verified; the
IP header is reached through ``SKF_NET_OFF`` (negative offsets). tests/component pins this.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from hapair.iptypes import IpAddress

# Instruction classes, sizes, modes, ALU/jump ops and sources (linux/filter.h, linux/bpf_common.h)
BPF_LD: Final = 0x00
BPF_JMP: Final = 0x05
BPF_RET: Final = 0x06
BPF_W: Final = 0x00
BPF_H: Final = 0x08
BPF_B: Final = 0x10
BPF_ABS: Final = 0x20
BPF_LEN: Final = 0x80
BPF_JA: Final = 0x00
BPF_JEQ: Final = 0x10
BPF_K: Final = 0x00

#: Most instructions the kernel accepts in one classic program (BPF_MAXINSNS).
MAX_INSNS: Final = 4096
#: A conditional jump skips at most this many instructions (jt and jf are u8).
MAX_JUMP: Final = 255
#: Offset base of the network (IP) header in loads (SKF_NET_OFF = -0x100000).
SKF_NET_OFF: Final = -0x100000
UDP_HEADER: Final = 8
#: What an accepting program returns: keep the whole datagram.
ACCEPT_ALL: Final = 0xFFFF_FFFF
#: Most tokens one filter compares (the node installs two: current and previous challenge).
MAX_TOKENS: Final = 16
MAX_SOURCES: Final = 8
TOKEN_SIZE: Final = 4

SO_ATTACH_FILTER: Final = 26
SO_DETACH_FILTER: Final = 27
SO_MEMINFO: Final = 55
SK_MEMINFO_DROPS: Final = 8
_SK_MEMINFO_VARS: Final = 9

_INSN: Final = struct.Struct("=HBBI")  # struct sock_filter, native order
_FPROG: Final = struct.Struct("@HP")  # struct sock_fprog {u16 len; struct sock_filter *filter;}
_IPV4_SRC: Final = 12
_IPV6_SRC: Final = 8


class FilterError(ValueError):
    """A program that the kernel would refuse (or that does not say what was meant)."""


@dataclass(frozen=True, slots=True)
class Insn:
    """One encoded instruction (struct sock_filter)."""

    code: int
    jt: int
    jf: int
    k: int

    def encode(self) -> bytes:
        """The 8 bytes the kernel reads."""
        return _INSN.pack(self.code, self.jt, self.jf, self.k & 0xFFFF_FFFF)


@dataclass(frozen=True, slots=True)
class Stmt:
    """A non-jump instruction."""

    code: int
    k: int = 0


@dataclass(frozen=True, slots=True)
class Jump:
    """A conditional jump to labels ``jt`` (true) and ``jf`` (false); ``None`` = next."""

    code: int
    k: int
    jt: str | None
    jf: str | None


@dataclass(frozen=True, slots=True)
class Label:
    """Marks the position of the next instruction."""

    name: str


Op = Stmt | Jump | Label


def assemble(ops: Sequence[Op]) -> list[Insn]:
    """Resolve labels to forward offsets; raise FilterError on what the kernel would refuse."""
    where: dict[str, int] = {}
    n = 0
    for op in ops:
        if isinstance(op, Label):
            if op.name in where:
                raise FilterError(f"label {op.name!r} defined twice")
            where[op.name] = n
        else:
            n += 1
    if not 1 <= n <= MAX_INSNS:
        raise FilterError(f"a program has 1..{MAX_INSNS} instructions, this one {n}")
    out: list[Insn] = []
    for op in ops:
        if isinstance(op, Label):
            continue
        here = len(out)
        if isinstance(op, Stmt):
            out.append(Insn(op.code, 0, 0, op.k))
            continue
        offsets = []
        for target in (op.jt, op.jf):
            if target is None:
                offsets.append(0)
                continue
            if target not in where:
                raise FilterError(f"jump to undefined label {target!r}")
            off = where[target] - here - 1
            if not 0 <= off <= MAX_JUMP:
                raise FilterError(f"jump to {target!r} spans {off} (0..{MAX_JUMP}, forward only)")
            offsets.append(off)
        out.append(Insn(op.code, offsets[0], offsets[1], op.k))
    last = out[-1].code
    if last & 0x07 != BPF_RET:
        raise FilterError("a program must end with a return")
    return out


def encode(insns: Sequence[Insn]) -> bytes:
    """The instruction array as the kernel reads it."""
    return b"".join(i.encode() for i in insns)


def heartbeat_program(
    sources: Sequence[IpAddress],
    port: int,
    size: int | None,
    tokens: Sequence[bytes] | None = None,
    token_offset: int = 20,
) -> list[Insn]:
    """Admit UDP datagrams from one of ``sources`` and ``port``, of payload ``size`` (None: any)
    and, given ``tokens``, with 4 bytes at payload ``token_offset`` equal to one of them."""
    if not 1 <= len(sources) <= MAX_SOURCES:
        raise FilterError(f"1..{MAX_SOURCES} source addresses, got {len(sources)}")
    if len({s.version for s in sources}) != 1:
        raise FilterError("sources of one socket are of one address family")
    if not 0 <= port <= 0xFFFF:
        raise FilterError(f"port {port} out of range")
    if tokens is not None:
        if not 1 <= len(tokens) <= MAX_TOKENS:
            raise FilterError(f"1..{MAX_TOKENS} tokens, got {len(tokens)}")
        if any(len(t) != TOKEN_SIZE for t in tokens):
            raise FilterError(f"tokens are {TOKEN_SIZE} bytes")
        if size is not None and not 0 <= token_offset <= size - TOKEN_SIZE:
            raise FilterError(f"token offset {token_offset} outside a {size}-byte payload")
    ops: list[Op] = [
        Stmt(BPF_LD | BPF_H | BPF_ABS, 0),  # UDP source port
        Jump(BPF_JMP | BPF_JEQ | BPF_K, port, None, "drop"),
    ]
    if size is not None:
        ops += [
            Stmt(BPF_LD | BPF_W | BPF_LEN),
            Jump(BPF_JMP | BPF_JEQ | BPF_K, UDP_HEADER + size, None, "drop"),
        ]
    for i, src in enumerate(sources):
        miss = f"src{i + 1}" if i + 1 < len(sources) else "drop"
        ops.append(Label(f"src{i}"))
        packed = src.packed
        base = SKF_NET_OFF + (_IPV4_SRC if src.version == 4 else _IPV6_SRC)
        words = [int.from_bytes(packed[j : j + 4], "big") for j in range(0, len(packed), 4)]
        for j, word in enumerate(words):
            ops.append(Stmt(BPF_LD | BPF_W | BPF_ABS, base + 4 * j))
            hit = "token" if j == len(words) - 1 else None
            ops.append(Jump(BPF_JMP | BPF_JEQ | BPF_K, word, hit, miss))
    ops.append(Label("token"))
    if tokens is not None:
        ops.append(Stmt(BPF_LD | BPF_W | BPF_ABS, UDP_HEADER + token_offset))
        for i, token in enumerate(tokens):
            last = i == len(tokens) - 1
            value = int.from_bytes(token, "big")
            ops.append(Jump(BPF_JMP | BPF_JEQ | BPF_K, value, "accept", "drop" if last else None))
    ops += [Label("accept"), Stmt(BPF_RET | BPF_K, ACCEPT_ALL), Label("drop"), Stmt(BPF_RET, 0)]
    return assemble(ops)


def attach(sock: socket.socket, insns: Sequence[Insn]) -> None:
    """Attach (or atomically replace) the socket's filter; raises OSError if refused."""
    blob = encode(insns)
    buf = ctypes.create_string_buffer(blob, len(blob))
    # The kernel copies the program during the call; buf must live until it returns.
    sock.setsockopt(
        socket.SOL_SOCKET, SO_ATTACH_FILTER, _FPROG.pack(len(insns), ctypes.addressof(buf))
    )


def kernel_drops(sock: socket.socket) -> int:
    """Datagrams the kernel dropped for this socket (filter refusals and full queue)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * _SK_MEMINFO_VARS)
    values = struct.unpack(f"={len(raw) // 4}I", raw[: len(raw) // 4 * 4])
    return int(values[SK_MEMINFO_DROPS]) if len(values) > SK_MEMINFO_DROPS else 0
