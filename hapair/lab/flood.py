"""Flood the heartbeat port: datagrams that look like heartbeats (magic, version, cluster id,
size) but carry a wrong MAC, as fast as the kernel takes them or at a given rate.

    python -m hapair.lab.flood --dst IP [--port 694] --seconds S [--rate N]
        [--spoof-src IP] [--cluster NAME] [--size 140]

Prints one JSON line ``{"sent": N, "seconds": S, "rate": R}`` and exits 0 (SIGTERM ends it
early, still printing). A Python ``sendto`` loop tops out far below 250,000 datagrams/s;
this sends prebuilt batches with sendmmsg(2), each message cut into up to 64 datagrams by UDP
GSO (UDP_SEGMENT), so neither the interpreter nor the sender's stack is the limit. In the lab
the segments travel as one buffer as far as the receiving UDP socket, which splits them: the
socket, its filter, its queue and the daemon see every datagram one by one (on a real wire
the receiver's IP layer would pay per datagram too). ``--spoof-src`` forges that IPv4 source
with IP_TRANSPARENT (CAP_NET_ADMIN), falling back to a raw socket (IP_HDRINCL) with the
headers and checksums written here. For the lab only: it sends to the given address only.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import errno
import ipaddress
import json
import os
import random
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Final

from hapair.wire.heartbeat import MAGIC, PACKET_SIZE, VERSION, cluster_id

#: Messages per sendmmsg(2) call (UIO_MAXIOV is 1024); distinct packets cycled through.
BATCH: Final = 64
#: Datagrams per message, cut by UDP GSO (UDP_MAX_SEGMENTS is 64 on older kernels).
MAX_SEGMENTS: Final = 64
UDP_SEGMENT: Final = 103
IP_TRANSPARENT: Final = 19
_CLUSTER_OFFSET: Final = 12
_IPV4_HEADER: Final = 20
_UDP_HEADER: Final = 8
_DEFAULT_TTL: Final = 64
IPPROTO_UDP: Final = 17


def flood_packet(cid: bytes, size: int, rng: random.Random, version: int = VERSION) -> bytes:
    """One datagram that passes every cheap check of a heartbeat but the MAC (random)."""
    if size < _CLUSTER_OFFSET + len(cid):
        raise ValueError(f"size must be at least {_CLUSTER_OFFSET + len(cid)}, got {size}")
    # flags 0, role BACKUP, priorities 100, reserved 0; the rest (name, counters, MAC) random.
    head = MAGIC + bytes([version, 0, 1, 100, 100]) + bytes(3) + cid
    return head + rng.randbytes(size - len(head))


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def udp_ipv4(src: str, dst: str, sport: int, dport: int, payload: bytes, ident: int = 0) -> bytes:
    """A whole IPv4 packet carrying a UDP datagram, with both checksums (RFC 768, RFC 791)."""
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    length = _UDP_HEADER + len(payload)
    pseudo = s + d + struct.pack("!BBH", 0, IPPROTO_UDP, length)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    csum = checksum(pseudo + header + payload) or 0xFFFF  # 0 would mean "no checksum"
    udp = struct.pack("!HHHH", sport, dport, length, csum) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, _IPV4_HEADER + length, ident, 0, _DEFAULT_TTL,
        IPPROTO_UDP, 0, s, d,
    )  # fmt: skip
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + udp


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_Iovec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


def _sockaddr_in(address: str, port: int) -> bytes:
    """struct sockaddr_in (family in host order, port and address in network order)."""
    packed = ipaddress.IPv4Address(address).packed
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + packed + bytes(8)


def _sockaddr_in6(address: str, port: int) -> bytes:
    packed = ipaddress.IPv6Address(address).packed
    return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) + packed + bytes(4)


class Batch:
    """Prebuilt messages for sendmmsg(2): every datagram and the destination stay in place."""

    def __init__(self, packets: Sequence[bytes], sockaddr: bytes) -> None:
        n = len(packets)
        self._bufs = [ctypes.create_string_buffer(p, len(p)) for p in packets]
        self._addr = ctypes.create_string_buffer(sockaddr, len(sockaddr))
        self._iov = (_Iovec * n)()
        self.msgs = (_Mmsghdr * n)()
        for i, buf in enumerate(self._bufs):
            self._iov[i].base = ctypes.addressof(buf)
            self._iov[i].len = len(packets[i])
            hdr = self.msgs[i].hdr
            hdr.name = ctypes.addressof(self._addr)
            hdr.namelen = len(sockaddr)
            hdr.iov = ctypes.pointer(self._iov[i])
            hdr.iovlen = 1
        self.size = n


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_libc.sendmmsg.restype = ctypes.c_int


def sendmmsg(sock: socket.socket, batch: Batch, count: int) -> int:
    """Send the first ``count`` messages of ``batch``; return how many went (0 on ENOBUFS)."""
    n = int(_libc.sendmmsg(sock.fileno(), ctypes.addressof(batch.msgs), count, 0))
    if n < 0:
        err = ctypes.get_errno()
        if err in (errno.ENOBUFS, errno.EAGAIN, errno.EINTR, errno.ECONNREFUSED):
            return 0
        raise OSError(err, os.strerror(err))
    return n


def _plan(rate: float | None) -> tuple[int, int]:
    """(datagrams per message, messages per call): large when flat out, about one
    millisecond's worth when paced, so a rate is held evenly."""
    if rate is None:
        return MAX_SEGMENTS, BATCH
    quantum = max(1, int(rate / 1000))
    segs = min(MAX_SEGMENTS, quantum)
    return segs, max(1, min(BATCH, quantum // segs))


def open_sender(
    dst: str, port: int, spoof_src: str | None, packets: Sequence[bytes], segs: int
) -> tuple[socket.socket, Batch, int]:
    """A socket, its batch and the datagrams per message.

    UDP from the cluster port (any local address, or with ``spoof_src`` that address through
    IP_TRANSPARENT), each message carrying ``segs`` datagrams cut by UDP GSO (UDP_SEGMENT);
    without GSO, one each; if the forged address cannot be bound, a raw socket (IP_HDRINCL)
    with the headers written here.
    """
    v6 = ipaddress.ip_address(dst).version == 6
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if spoof_src is not None:
            sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            sock.bind((spoof_src, port))
        else:  # the heartbeat's own source port: only the address gives the flood away
            with contextlib.suppress(OSError):
                sock.bind(("::" if v6 else "0.0.0.0", port))
    except OSError:
        sock.close()
        return _open_raw(dst, port, spoof_src or "", packets)
    addr = _sockaddr_in6(dst, port) if v6 else _sockaddr_in(dst, port)
    size = len(packets[0])
    try:
        if segs > 1:
            sock.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, size)
    except OSError:
        segs = 1
    # Distinct messages: each a run of ``segs`` distinct datagrams, cycled through.
    msgs = [b"".join(packets[(i + j) % len(packets)] for j in range(segs)) for i in range(BATCH)]
    return sock, Batch(msgs, addr), segs


def _open_raw(
    dst: str, port: int, spoof_src: str, packets: Sequence[bytes]
) -> tuple[socket.socket, Batch, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    frames = [udp_ipv4(spoof_src, dst, port, port, p, i + 1) for i, p in enumerate(packets)]
    return sock, Batch(frames, _sockaddr_in(dst, 0)), 1


def default_cluster() -> str:
    """``lab-<prefix>`` when run in a lab namespace ``<prefix>-x``, else ``hapair``."""
    try:
        mine = os.stat("/proc/self/ns/net").st_ino
        for ns in Path("/run/netns").iterdir():
            if ns.stat().st_ino == mine and "-" in ns.name:
                return "lab-" + ns.name.rsplit("-", 1)[0]
    except OSError:
        pass
    return "hapair"


def flood(
    sock: socket.socket,
    batch: Batch,
    segs: int,
    chunk: int,
    seconds: float,
    rate: float | None,
    stop: list[bool],
) -> tuple[int, float]:
    """Send ``chunk`` messages of ``segs`` datagrams per call for ``seconds`` (paced to
    ``rate`` datagrams per second if given); return (datagrams sent, elapsed)."""
    start = time.monotonic()
    end = start + seconds
    sent = 0
    chunk = min(chunk, batch.size)
    while not stop[0]:
        now = time.monotonic()
        if now >= end:
            break
        if rate is not None:
            due = start + sent / rate
            if due > now:
                time.sleep(min(due - now, end - now))
                continue
        sent += sendmmsg(sock, batch, chunk) * segs
    return sent, time.monotonic() - start


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m hapair.lab.flood", description=__doc__)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--port", type=int, default=694)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--rate", type=float, default=None, help="datagrams per second (default: max)")
    ap.add_argument("--spoof-src", default=None, help="forge this IPv4 source (raw socket)")
    ap.add_argument("--cluster", default=None, help="cluster name (default: lab-<prefix>)")
    ap.add_argument("--size", type=int, default=PACKET_SIZE)
    args = ap.parse_args(argv)
    try:
        ipaddress.ip_address(args.dst)
        if args.spoof_src is not None:
            ipaddress.IPv4Address(args.spoof_src)
            ipaddress.IPv4Address(args.dst)
        if args.rate is not None and args.rate <= 0:
            raise ValueError("--rate must be positive")
        rng = random.Random(0x4841)
        cid = cluster_id(args.cluster or default_cluster())
        packets = [flood_packet(cid, args.size, rng) for _ in range(BATCH)]
        segs, chunk = _plan(args.rate)
        sock, batch, segs = open_sender(args.dst, args.port, args.spoof_src, packets, segs)
    except (ValueError, OSError) as exc:
        print(f"flood: {exc}", file=sys.stderr)
        return 2
    stop = [False]

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        sent, elapsed = flood(sock, batch, segs, chunk, args.seconds, args.rate, stop)
    except OSError as exc:
        print(f"flood: {exc}", file=sys.stderr)
        return 1
    finally:
        sock.close()
    rate = sent / elapsed if elapsed > 0 else 0.0
    print(json.dumps({"sent": sent, "seconds": round(elapsed, 3), "rate": round(rate)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
