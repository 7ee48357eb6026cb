"""Heartbeat links on real sockets, in a private network namespace: the kernel filter drops
and counts what is not the peer's heartbeat, each link has its own socket, reads are fair."""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import select
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

from hapair.errors import RuntimeSetupError
from hapair.lab.shell import wait_until
from hapair.net.transport import MAX_READ_PER_SOCKET, UdpTransport
from hapair.wire.heartbeat import VERSION, cluster_id

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
PORT = 694
IPV6_TRANSPARENT = 75
SIZE = 140

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a network namespace)")


def _enter_netns() -> None:
    """Move this thread (only) into a new network namespace with two 'links' on lo."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    for cmd in (
        "ip link set lo up",
        "ip addr add 10.9.1.1/24 dev lo",
        "ip addr add 10.9.2.1/24 dev lo",
        "ip route add 192.0.2.7/32 dev lo src 10.9.1.1",  # a peer the flood forges
        "ip addr add fd00:9::1/128 dev lo nodad",
        "ip route add fd00:9::7/128 dev lo src fd00:9::1",  # an IPv6 peer, forged the same way
    ):
        subprocess.run(cmd.split(), check=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[Callable[[Callable[[], T]], T]]:
    """Run a callable in a thread of its own network namespace (gone with the thread)."""
    with ThreadPoolExecutor(1, initializer=_enter_netns) as pool:

        def run(fn: Callable[[], T]) -> T:
            return pool.submit(fn).result(timeout=60)

        yield run


def sender(address: str, port: int = PORT) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, port))
    return s


def packet(size: int = SIZE, token: bytes = b"\0\0\0\0") -> bytes:
    return bytes(20) + token + bytes(size - 24)


def collect(t: UdpTransport, want: int) -> list[tuple[bytes, str, str]]:
    out: list[tuple[bytes, str, str]] = []
    for _ in range(50):
        if len(out) >= want:
            break
        select.select(t.filenos(), [], [], 0.1)
        out += t.receive()
    return out


def peers(*addresses: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return [ipaddress.ip_address(a) for a in addresses]


def test_filter_admits_only_the_peers_heartbeat_and_counts_the_rest(netns: Callable) -> None:
    def body() -> None:
        t = UdpTransport(PORT, peers("10.9.1.2"), packet_size=SIZE)
        try:
            assert t.links() == {"10.9.1.2": "10.9.1.1"}
            peer, stranger, other_port = (
                sender("10.9.1.2"),
                sender("10.9.1.3"),
                sender("10.9.1.2", PORT + 1),
            )
            dst = ("10.9.1.1", PORT)
            stranger.sendto(packet(), dst)  # wrong source
            other_port.sendto(packet(), dst)  # wrong source port
            peer.sendto(packet(SIZE - 1), dst)  # wrong length
            peer.sendto(packet(120), dst)  # protocol v1
            peer.sendto(packet(), dst)
            got = collect(t, 1)
            assert [(len(d), s, link) for d, s, link in got] == [(SIZE, "10.9.1.2", "10.9.1.2")]
            wait_until(lambda: t.drops() == {"10.9.1.2": 4}, timeout=5)

            t.set_tokens([b"good", b"prev"])
            peer.sendto(packet(token=b"evil"), dst)
            peer.sendto(packet(), dst)  # no token at all
            peer.sendto(packet(token=b"prev"), dst)
            got = collect(t, 1)
            assert [d[20:24] for d, _, _ in got] == [b"prev"]
            wait_until(lambda: t.drops() == {"10.9.1.2": 6}, timeout=5)

            t.set_tokens(None)
            peer.sendto(packet(token=b"evil"), dst)
            assert len(collect(t, 1)) == 1
            for s in (peer, stranger, other_port):
                s.close()
        finally:
            t.close()

    netns(body)


def test_each_link_has_its_own_socket_and_a_flood_on_one_cannot_starve_the_other(
    netns: Callable,
) -> None:
    def body() -> None:
        t = UdpTransport(PORT, peers("10.9.1.2", "10.9.2.2"), packet_size=SIZE)
        try:
            assert t.links() == {"10.9.1.2": "10.9.1.1", "10.9.2.2": "10.9.2.1"}
            lan, cable = sender("10.9.1.2"), sender("10.9.2.2")
            lan.setblocking(False)
            sent = 0
            for _ in range(5000):  # until the LAN socket's queue is full
                try:
                    lan.sendto(packet(), ("10.9.1.1", PORT))
                    sent += 1
                except BlockingIOError:
                    break
            cable.sendto(packet(token=b"cabl"), ("10.9.2.1", PORT))
            wait_until(lambda: t.drops().get("10.9.1.2", 0) > 0, timeout=5)
            assert t.drops().get("10.9.2.2", 0) == 0
            select.select(t.filenos(), [], [], 1.0)
            first = t.receive()
            links = [link for _, _, link in first]
            assert links.count("10.9.1.2") == MAX_READ_PER_SOCKET
            assert [d[20:24] for d, _, link in first if link == "10.9.2.2"] == [b"cabl"]
            lan.close()
            cable.close()
        finally:
            t.close()

    netns(body)


def test_sends_leave_from_each_links_address_and_links_follow_set_peers(netns: Callable) -> None:
    def body() -> None:
        listeners = {a: sender(a) for a in ("10.9.1.2", "10.9.2.2")}
        t = UdpTransport(PORT, peers("10.9.1.2"), packet_size=SIZE)
        try:
            assert t.send(b"hb") == 1
            data, src = listeners["10.9.1.2"].recvfrom(64)
            assert (data, src) == (b"hb", ("10.9.1.1", PORT))
            t.set_peers(peers("10.9.2.2", "10.9.1.2"))
            assert t.links() == {"10.9.2.2": "10.9.2.1", "10.9.1.2": "10.9.1.1"}
            assert t.send(b"two") == 2
            assert listeners["10.9.2.2"].recvfrom(64) == (b"two", ("10.9.2.1", PORT))
            t.set_peers(peers("10.9.2.2"))
            assert t.links() == {"10.9.2.2": "10.9.2.1"}
            # The LAN address is free again: the port can be bound there by someone else.
            sender("10.9.1.1").close()
            t.set_peers([])
            assert t.links() == {} and t.send(b"none") == 0
        finally:
            t.close()
            for s in listeners.values():
                s.close()

    netns(body)


def test_a_link_without_route_is_opened_once_it_has_one(netns: Callable) -> None:
    def body() -> None:
        t = UdpTransport(PORT, peers("10.9.3.2"), packet_size=SIZE)
        try:
            assert t.links() == {"10.9.3.2": None}
            assert "no route" in t.link_errors["10.9.3.2"]
            subprocess.run(
                ["ip", "addr", "add", "10.9.3.1/24", "dev", "lo"], check=True, timeout=10
            )
            t.send(b"x")
            assert t.links() == {"10.9.3.2": "10.9.3.1"} and t.link_errors == {}
        finally:
            t.close()

    netns(body)


def test_port_in_use_is_a_clear_setup_error(netns: Callable) -> None:
    def body() -> None:
        squatter = sender("10.9.1.1")
        try:
            with pytest.raises(RuntimeSetupError, match="UDP port 694 is already in use"):
                UdpTransport(PORT, peers("10.9.1.2"), packet_size=SIZE)
            t = UdpTransport(PORT, [], packet_size=SIZE)
            with pytest.raises(RuntimeSetupError, match="already in use"):
                t.open_family(socket.AF_INET)
            t.close()
        finally:
            squatter.close()

    netns(body)


def _flood(*args: str) -> dict[str, float]:
    argv = [sys.executable, "-m", "hapair.lab.flood", "--cluster", "lab-trf", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    out: dict[str, float] = json.loads(proc.stdout)
    return out


def _drain(t: UdpTransport, want: int) -> list[tuple[bytes, str, str]]:
    got: list[tuple[bytes, str, str]] = []
    for _ in range(200):
        batch = t.receive()
        if not batch and (len(got) >= want or not select.select(t.filenos(), [], [], 0.2)[0]):
            break
        got += batch
    return got


def test_a_short_flood_arrives_whole_and_the_filter_sorts_it(netns: Callable) -> None:
    def body() -> None:
        # The flood forges the peer's address: the filter admits it (it is the peer's size and
        # port; only the MAC is wrong), so every datagram is either read or a counted drop.
        t = UdpTransport(PORT, peers("192.0.2.7"), packet_size=SIZE)
        stranger = UdpTransport(PORT, peers("10.9.2.9"), packet_size=SIZE)
        try:
            spoofed = _flood("--dst", "10.9.1.1", "--seconds", "0.3", "--rate", "20000",
                             "--size", str(SIZE), "--spoof-src", "192.0.2.7")  # fmt: skip
            assert 1000 <= spoofed["sent"] <= 6000
            got = _drain(t, 1)
            assert got and {(s, link) for _, s, link in got} == {("192.0.2.7", "192.0.2.7")}
            data = got[0][0]
            assert data[:5] == b"HAPR" + bytes([VERSION]) and data[12:20] == cluster_id("lab-trf")
            wait_until(lambda: len(got) + t.drops()["192.0.2.7"] == spoofed["sent"], timeout=5)
            plain = _flood("--dst", "10.9.2.1", "--seconds", "0.2", "--size", str(SIZE))
            assert plain["sent"] > 0
            wait_until(lambda: stranger.drops()["10.9.2.9"] == plain["sent"], timeout=5)
            assert stranger.receive() == []
        finally:
            t.close()
            stranger.close()

    netns(body)


def test_ipv6_links_are_filtered_by_the_whole_source_address(netns: Callable) -> None:
    def forged(address: str) -> socket.socket:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)  # a source not on this host
        s.bind((address, PORT))
        return s

    def body() -> None:
        t = UdpTransport(PORT, peers("fd00:9::7"), packet_size=SIZE)
        try:
            assert t.links() == {"fd00:9::7": "fd00:9::1"}
            peer, near_miss = forged("fd00:9::7"), forged("fd00:9::8")  # last word differs
            peer.sendto(packet(SIZE - 1), ("fd00:9::1", PORT))
            near_miss.sendto(packet(), ("fd00:9::1", PORT))
            peer.sendto(packet(), ("fd00:9::1", PORT))
            got = collect(t, 1)
            assert [(len(d), s, link) for d, s, link in got] == [(SIZE, "fd00:9::7", "fd00:9::7")]
            wait_until(lambda: t.drops() == {"fd00:9::7": 2}, timeout=5)
            peer.close()
            near_miss.close()
        finally:
            t.close()

    netns(body)
