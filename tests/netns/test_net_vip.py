"""hapair.net against a real kernel: two namespaces joined by a veth pair, built per test.

The code under test runs the way the daemon does, in its own namespace ("ip netns exec A
python -m tests.netns.test_net_vip SCENARIO"); this module is also that child's entry point.
The test process never switches namespace: it looks at B with "ip -n B" and with packet
sockets opened in B by pyroute2.netns.create_socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_interface
from pathlib import Path
from typing import Any

import pytest

from hapair.errors import VipError
from hapair.lab import shell
from hapair.net.garp import Announcer, build_arp, build_unsolicited_na
from hapair.net.vip import Vip, VipManager
from hapair.net.watch import (
    MAX_FRAMES_PER_READ,
    AddressAdded,
    AddressRemoved,
    ArpConflict,
    ArpWatcher,
    CarrierChanged,
    EventsLost,
    NetEvent,
    NetlinkWatcher,
)

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to build network namespaces"),
]

ROOT = Path(__file__).resolve().parents[2]
# Documentation prefixes (RFC 5737, RFC 3849), only ever assigned inside the lab namespaces.
ADDR_A, ADDR_B = "192.0.2.1/24", "192.0.2.2/24"
ADDR6_A, ADDR6_B = "2001:db8:5::1/64", "2001:db8:5::2/64"
VIP4 = "192.0.2.50/24"
VIP6 = "2001:db8:5::50/64"
BOGUS_MAC = "02:00:5e:00:53:99"
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
CMD_TIMEOUT_S = 10.0
CHILD_TIMEOUT_S = 30.0

_lab_ids = itertools.count()


@dataclass
class Lab:
    """Two namespaces, A (runs hapair code) and B (the neighbour), and their veth ends."""

    ns_a: str
    ns_b: str
    if_a: str
    if_b: str
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)

    def params(self, **extra: object) -> dict[str, object]:
        """Names a scenario needs, plus extras."""
        return {"ns_a": self.ns_a, "ns_b": self.ns_b, "if_a": self.if_a, "if_b": self.if_b, **extra}


def sh(*argv: str) -> str:
    """Run a command, bounded in time; raise with its stderr if it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=CMD_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def sysctl(ns: str, *settings: str) -> None:
    """Set sysctls inside a namespace."""
    sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", *settings)


def wait_for(what: str, probe: Callable[[], bool], timeout: float = 3.0) -> None:
    """Poll `probe` until it holds; bounded in both time and attempts."""
    if not shell.wait_until(probe, timeout=timeout, step=0.02):
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def neighbour(lab: Lab, ip: str) -> dict[str, Any] | None:
    """B's neighbour entry for `ip` on its veth, or None."""
    entries = json.loads(sh("ip", "-n", lab.ns_b, "-j", "neigh", "show", ip, "dev", lab.if_b))
    return entries[0] if entries else None


def lladdr_of(lab: Lab, ip: str) -> str | None:
    """The MAC B has cached for `ip`."""
    entry = neighbour(lab, ip)
    return None if entry is None else entry.get("lladdr")


def socket_in_b(lab: Lab, proto: int) -> socket.socket:
    """A non-blocking packet socket living in namespace B, bound to B's veth."""
    from pyroute2.netns import create_socket

    sock: socket.socket = create_socket(
        netns=lab.ns_b, family=socket.AF_PACKET, socket_type=socket.SOCK_RAW, proto=0, flags=0
    )
    lab.sockets.append(sock)
    sock.bind((lab.if_b, proto))
    sock.setblocking(False)
    return sock


def capture(
    sock: socket.socket, keep: Callable[[bytes], bool], count: int, timeout: float
) -> list[bytes]:
    """Up to `count` frames accepted by `keep`, waiting at most `timeout` seconds."""
    frames: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(frames) < count and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        for _ in range(256):
            try:
                frame = sock.recv(2048)
            except BlockingIOError:
                break
            if keep(frame):
                frames.append(frame)
    return frames


def child_argv(lab: Lab, scenario: str, params: dict[str, object]) -> list[str]:
    """Command line that runs `scenario` inside namespace A."""
    return [
        "ip", "netns", "exec", lab.ns_a,
        sys.executable, "-m", "tests.netns.test_net_vip", scenario, json.dumps(params),
    ]  # fmt: skip


def run_scenario(lab: Lab, scenario: str, **extra: object) -> dict[str, Any]:
    """Run a scenario to completion in A and return its final JSON line."""
    proc = subprocess.run(
        child_argv(lab, scenario, lab.params(**extra)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, f"{scenario} failed:\n{proc.stderr}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


class Child:
    """A scenario running in A that we talk to line by line, every read bounded."""

    def __init__(self, lab: Lab, scenario: str, **extra: object) -> None:
        self.proc = subprocess.Popen(
            child_argv(lab, scenario, lab.params(**extra)),
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        lab.children.append(self.proc)
        self._buf = b""

    def tell(self, line: str) -> None:
        """Send the child one line on its stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def read_json(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next JSON line from the child."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"child said nothing within {timeout}s")
            chunk = os.read(fd, 65536)
            if not chunk:
                self.proc.wait(timeout=CMD_TIMEOUT_S)
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"child exited early:\n{err}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        result: dict[str, Any] = json.loads(line)
        return result


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh A<->B veth lab; always torn down, even when setup or the test fails."""
    n, pid = next(_lab_ids), os.getpid()
    the_lab = Lab(f"hpt-net-{pid}-{n}a", f"hpt-net-{pid}-{n}b", f"hv{pid}x{n}a", f"hv{pid}x{n}b")
    assert len(the_lab.if_a) <= 15 and len(the_lab.if_b) <= 15  # IFNAMSIZ - 1
    try:
        _build(the_lab)
        yield the_lab
    finally:
        _teardown(the_lab)


def _build(lab: Lab) -> None:
    sh("ip", "netns", "add", lab.ns_a)
    sh("ip", "netns", "add", lab.ns_b)
    sh("ip", "link", "add", lab.if_a, "netns", lab.ns_a, "type", "veth",
       "peer", "name", lab.if_b, "netns", lab.ns_b)  # fmt: skip
    for ns, ifname, addr, addr6 in (
        (lab.ns_a, lab.if_a, ADDR_A, ADDR6_A),
        (lab.ns_b, lab.if_b, ADDR_B, ADDR6_B),
    ):
        sysctl(
            ns,
            "net.ipv4.ip_forward=0",
            "net.ipv6.conf.all.forwarding=0",
            "net.ipv4.conf.all.arp_accept=0",
            f"net.ipv4.conf.{ifname}.arp_accept=0",
            f"net.ipv6.conf.{ifname}.accept_dad=0",  # lab addresses usable at once
        )
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "add", addr, "dev", ifname)
        sh("ip", "-n", ns, "addr", "add", addr6, "dev", ifname, "nodad")
    sh("ip", "-n", lab.ns_a, "link", "set", lab.if_a, "up")
    sh("ip", "-n", lab.ns_b, "link", "set", lab.if_b, "up")
    # Carrier reaches IPv6 through linkwatch, a little later: until addrconf has installed
    # the ff00::/8 route, multicast (our NAs included) is dropped as "no route".
    for ns, ifname in ((lab.ns_a, lab.if_a), (lab.ns_b, lab.if_b)):
        wait_for(f"IPv6 multicast route on {ifname}", functools.partial(_mcast_ready, ns, ifname))


def _mcast_ready(ns: str, ifname: str) -> bool:
    routes = sh("ip", "-n", ns, "-6", "route", "show", "table", "local", "type", "multicast")
    return f"ff00::/8 dev {ifname} " in routes


def _teardown(lab: Lab) -> None:
    # Each step on its own: one failing must not leave the namespaces behind.
    for proc in lab.children:
        with contextlib.suppress(Exception):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=CMD_TIMEOUT_S)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()
    for sock in lab.sockets:
        sock.close()
    for ns in (lab.ns_a, lab.ns_b):  # deleting a namespace destroys its veth end, and the pair
        with contextlib.suppress(Exception):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=CMD_TIMEOUT_S)


# --- tests -------------------------------------------------------------------------------


def test_add_and_remove_are_idempotent(lab: Lab) -> None:
    r = run_scenario(lab, "vip_idempotent")
    assert r["add4"] == [True, False]
    assert r["count4_after_add"] == 1
    assert r["present4"] == [True, False]  # same address, other prefix length: not ours
    assert r["remove4"] == [True, False]
    assert r["count4_after_remove"] == 0
    assert r["present4_after_remove"] is False
    assert r["add6"] == [True, False]
    assert r["count6_after_add"] == 1
    assert r["remove6"] == [True, False]
    assert r["missing_interface"] == "no such interface 'nosuch0'"
    assert r["add_on_missing_interface"] == "no such interface 'nosuch0'"
    assert r["remove_on_missing_interface"] is False
    assert r["present_on_missing_interface"] is False
    assert r["carrier"] is True
    link = json.loads(sh("ip", "-n", lab.ns_a, "-j", "link", "show", lab.if_a))[0]
    assert r["mac"] == link["address"]


def test_ipv6_vip_is_added_without_dad(lab: Lab) -> None:
    sysctl(lab.ns_a, f"net.ipv6.conf.{lab.if_a}.accept_dad=1")  # DAD on, so NODAD must matter
    r = run_scenario(lab, "vip_nodad")
    assert r["vip"]["nodad"] is True
    assert "tentative" not in r["vip"]
    # The control: the same interface, an address added the ordinary way, is tentative.
    assert r["control"].get("tentative") is True


def test_garp_updates_existing_neighbour_entry(lab: Lab) -> None:
    ip = str(ip_interface(VIP4).ip)
    sh("ip", "-n", lab.ns_b, "neigh", "replace", ip, "lladdr", BOGUS_MAC,
       "dev", lab.if_b, "nud", "stale")  # fmt: skip
    cap = socket_in_b(lab, ETH_P_ARP)
    r = run_scenario(lab, "announce", vip=VIP4)
    assert r["sent"] == 2
    mac = bytes.fromhex(r["mac"].replace(":", ""))
    frames = capture(cap, lambda f: f[28:32] == IPv4Address(ip).packed, count=2, timeout=3.0)
    assert frames == [
        build_arp(mac, IPv4Address(ip), "request"),
        build_arp(mac, IPv4Address(ip), "reply"),
    ]
    # arp_accept is 0 in B: an existing entry is still overridden by a gratuitous ARP.
    wait_for("B to learn the VIP's new MAC", lambda: lladdr_of(lab, ip) == r["mac"])


def test_garp_creates_unknown_entry_only_with_arp_accept(lab: Lab) -> None:
    ip = str(ip_interface(VIP4).ip)
    cap = socket_in_b(lab, ETH_P_ARP)
    r = run_scenario(lab, "announce", vip=VIP4)
    assert len(capture(cap, lambda f: f[28:32] == IPv4Address(ip).packed, 2, 3.0)) == 2
    time.sleep(0.3)  # frames are in; give the (synchronous) ARP input path a margin
    assert neighbour(lab, ip) is None  # arp_accept=0: unsolicited ARP never creates entries

    sysctl(lab.ns_b, "net.ipv4.conf.all.arp_accept=1")  # the kernel takes max(all, dev)
    r = run_scenario(lab, "announce", vip=VIP4)
    wait_for("B to create an entry for the VIP", lambda: lladdr_of(lab, ip) == r["mac"])


def test_unsolicited_na_updates_existing_neighbour_entry(lab: Lab) -> None:
    ip = IPv6Address(str(ip_interface(VIP6).ip))
    sh("ip", "-n", lab.ns_b, "-6", "neigh", "replace", str(ip), "lladdr", BOGUS_MAC,
       "dev", lab.if_b, "nud", "stale")  # fmt: skip
    cap = socket_in_b(lab, ETH_P_IPV6)

    def is_our_na(f: bytes) -> bool:
        return len(f) >= 78 and f[20] == 58 and f[54] == 136 and f[62:78] == ip.packed

    r = run_scenario(lab, "announce", vip=VIP6)
    assert r["sent"] == 1
    mac = bytes.fromhex(r["mac"].replace(":", ""))
    assert capture(cap, is_our_na, count=1, timeout=3.0) == [build_unsolicited_na(mac, ip)]
    wait_for("B to learn the VIP6's new MAC", lambda: lladdr_of(lab, str(ip)) == r["mac"])


def test_announcer_recovers_when_interface_is_recreated(lab: Lab) -> None:
    r = run_scenario(lab, "announce_recreated")
    assert r["before"] == 2
    assert r["while_gone"] == "cannot announce 198.51.100.50/24 on hx0: No such device [ENODEV]"
    assert r["after"] == 2  # same name, new ifindex: the stale cached socket was replaced


def test_netlink_watcher_reports_address_and_carrier_changes(lab: Lab) -> None:
    r = run_scenario(lab, "netlink_watch")
    assert r["first_read"] == []
    assert r["first_read_s"] < 0.5  # nothing queued: returns at once instead of blocking
    events = [tuple(e) for e in r["events"]]
    vip4, vip6, ifa = VIP4, VIP6, lab.if_a
    added, removed = ("added", ifa, vip4), ("removed", ifa, vip4)
    assert added in events and removed in events
    assert events.index(added) < events.index(removed)
    carrier = [e for e in events if e[0] == "carrier" and e[1] == ifa]
    # peer down, peer up, own admin down, own admin up; the MTU change adds nothing.
    assert carrier == [("carrier", ifa, False), ("carrier", ifa, True)] * 2
    assert r["carrier_when_peer_down"] is False
    assert r["carrier_when_peer_up"] is True
    # Kernel behaviour the daemon must handle: admin-down flushes IPv6 VIPs (IPv4 stays).
    assert ("removed", ifa, vip6) in events
    assert r["vip6_present_after_down_up"] is False
    assert r["vip4_present_after_down_up"] is True
    assert r["malformed"] == 0


def test_netlink_watcher_reports_overrun(lab: Lab) -> None:
    r = run_scenario(lab, "netlink_overrun")
    assert r["lost"] is True
    assert r["malformed"] == 0
    assert r["reads"] >= 2  # drained in bounded slices, not one unbounded call


def test_arp_watcher_reports_only_foreign_claims(lab: Lab) -> None:
    child = Child(lab, "arp_watch", vip=VIP4)
    ready = child.read_json()
    own_mac = bytes.fromhex(ready["mac"].replace(":", ""))
    assert ready["announced"] == 2  # our own GARPs, sent on the watched interface

    sender = socket_in_b(lab, 0)
    b_mac: bytes = sender.getsockname()[4]
    vip = IPv4Address(str(ip_interface(VIP4).ip))
    probe = bytearray(build_arp(b_mac, vip, "request"))
    probe[28:32] = bytes(4)  # RFC 5227 probe: sender IP 0.0.0.0
    for frame in (
        bytes(probe),
        build_arp(own_mac, vip, "request"),  # our own GARP coming back (a reflecting switch)
        build_arp(b_mac, IPv4Address("192.0.2.77"), "request"),  # someone else's address
        build_arp(b_mac, vip, "request"),  # the one real conflict
    ):
        sender.send(frame)
    assert child.read_json()["conflicts"] == [[str(vip), b_mac.hex(":")]]

    # A flood is read in capped slices: one call leaves frames queued, the next one drains.
    for _ in range(MAX_FRAMES_PER_READ + 20):
        sender.send(build_arp(b_mac, IPv4Address("192.0.2.77"), "request"))
    child.tell("flooded")
    cap = child.read_json()
    assert cap["first_call_left_some"] is True
    assert cap["second_call_drained"] is True
    assert cap["conflicts"] == []


# --- scenarios: run inside namespace A by the tests above ---------------------------------


def _emit(obj: object) -> None:
    print(json.dumps(obj), flush=True)


def _ip_json(*argv: str) -> Any:
    return json.loads(sh("ip", "-j", *argv))


def _addr_infos(ifname: str, ip: str) -> list[dict[str, Any]]:
    links = _ip_json("addr", "show", "dev", ifname)
    return [a for a in links[0]["addr_info"] if a["local"] == ip]


def _scenario_vip_idempotent(p: dict[str, Any]) -> dict[str, Any]:
    async def in_loop() -> dict[str, Any]:
        # Called from inside a running event loop, as the daemon does.
        m = VipManager()
        try:
            ifa = p["if_a"]
            v4, v6 = Vip(ip_interface(VIP4), ifa), Vip(ip_interface(VIP6), ifa)
            other_prefix = Vip(ip_interface(str(v4.ip) + "/32"), ifa)
            ghost = Vip(ip_interface(VIP4), "nosuch0")
            out: dict[str, Any] = {"add4": [m.add(v4), m.add(v4)]}
            out["count4_after_add"] = len(_addr_infos(ifa, str(v4.ip)))
            out["present4"] = [m.present(v4), m.present(other_prefix)]
            out["remove4"] = [m.remove(v4), m.remove(v4)]
            out["count4_after_remove"] = len(_addr_infos(ifa, str(v4.ip)))
            out["present4_after_remove"] = m.present(v4)
            out["add6"] = [m.add(v6), m.add(v6)]
            out["count6_after_add"] = len(_addr_infos(ifa, str(v6.ip)))
            out["remove6"] = [m.remove(v6), m.remove(v6)]
            calls: list[tuple[str, Callable[[], object]]] = [
                ("missing_interface", lambda: m.interface_index("nosuch0")),
                ("add_on_missing_interface", lambda: m.add(ghost)),
            ]
            for key, call in calls:
                try:
                    call()
                    out[key] = None
                except VipError as exc:
                    out[key] = str(exc)
            out["remove_on_missing_interface"] = m.remove(ghost)
            out["present_on_missing_interface"] = m.present(ghost)
            out["mac"] = m.mac(ifa).hex(":")
            out["carrier"] = m.carrier(ifa)
            return out
        finally:
            m.close()

    return asyncio.run(in_loop())


def _scenario_vip_nodad(p: dict[str, Any]) -> dict[str, Any]:
    ifa = p["if_a"]
    m = VipManager()
    try:
        vip = Vip(ip_interface(VIP6), ifa)
        m.add(vip)
        sh("ip", "addr", "add", "2001:db8:5::77/64", "dev", ifa)  # with DAD, for contrast
        return {
            "vip": _addr_infos(ifa, str(vip.ip))[0],
            "control": _addr_infos(ifa, "2001:db8:5::77")[0],
        }
    finally:
        m.close()


def _scenario_announce(p: dict[str, Any]) -> dict[str, Any]:
    m, announcer = VipManager(), Announcer()
    try:
        vip = Vip(ip_interface(p["vip"]), p["if_a"])
        m.add(vip)
        return {"sent": announcer.announce(vip), "mac": m.mac(vip.interface).hex(":")}
    finally:
        announcer.close()
        m.close()


def _scenario_announce_recreated(p: dict[str, Any]) -> dict[str, Any]:
    vip = Vip(ip_interface("198.51.100.50/24"), "hx0")  # RFC 5737 TEST-NET-2, inside A only

    def make() -> None:
        sh("ip", "link", "add", "hx0", "type", "veth", "peer", "name", "hx1")
        sh("ip", "link", "set", "hx1", "up")
        sh("ip", "link", "set", "hx0", "up")

    announcer = Announcer()
    try:
        make()
        out: dict[str, Any] = {"before": announcer.announce(vip)}
        sh("ip", "link", "del", "hx0")
        try:
            out["while_gone"] = announcer.announce(vip)
        except VipError as exc:
            out["while_gone"] = str(exc)
        make()
        out["after"] = announcer.announce(vip)
        return out
    finally:
        announcer.close()


def _event_json(ev: NetEvent) -> list[object]:
    if isinstance(ev, AddressAdded):
        return ["added", ev.interface, ev.address.with_prefixlen]
    if isinstance(ev, AddressRemoved):
        return ["removed", ev.interface, ev.address.with_prefixlen]
    if isinstance(ev, CarrierChanged):
        return ["carrier", ev.interface, ev.up]
    return ["lost"]


def _scenario_netlink_watch(p: dict[str, Any]) -> dict[str, Any]:
    ifa, ns_b, ifb = p["if_a"], p["ns_b"], p["if_b"]
    m, w = VipManager(), NetlinkWatcher()
    events: list[NetEvent] = []

    def pump_until(wanted: NetEvent, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while wanted not in events and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([w.fileno()], [], [], left)
            if ready:
                events.extend(w.read_events())
        if wanted not in events:
            raise AssertionError(f"no {wanted} within {timeout}s; got {events}")

    try:
        t0 = time.monotonic()
        first = w.read_events()
        first_s = time.monotonic() - t0
        v4, v6 = ip_interface(VIP4), ip_interface(VIP6)
        sh("ip", "addr", "add", VIP4, "dev", ifa)
        pump_until(AddressAdded(ifa, v4))
        sh("ip", "addr", "del", VIP4, "dev", ifa)
        pump_until(AddressRemoved(ifa, v4))
        # A link change that is not a carrier change, then a marker to know it was read.
        sh("ip", "link", "set", ifa, "mtu", "1400")
        marker = ip_interface("192.0.2.99/24")
        sh("ip", "addr", "add", str(marker), "dev", ifa)
        pump_until(AddressAdded(ifa, marker))
        sh("ip", "-n", ns_b, "link", "set", ifb, "down")
        pump_until(CarrierChanged(ifa, False))
        carrier_down = m.carrier(ifa)
        sh("ip", "-n", ns_b, "link", "set", ifb, "up")
        pump_until(CarrierChanged(ifa, True))
        carrier_up = m.carrier(ifa)
        m.add(Vip(v4, ifa))
        m.add(Vip(v6, ifa))
        sh("ip", "link", "set", ifa, "down")
        pump_until(AddressRemoved(ifa, v6))
        sh("ip", "link", "set", ifa, "up")
        pump_until(CarrierChanged(ifa, True))
        # One more marker so that any stray carrier event after the last one is caught.
        sh("ip", "addr", "add", "192.0.2.98/24", "dev", ifa)
        pump_until(AddressAdded(ifa, ip_interface("192.0.2.98/24")))
        return {
            "first_read": [_event_json(ev) for ev in first],
            "first_read_s": first_s,
            "events": [_event_json(ev) for ev in events],
            "carrier_when_peer_down": carrier_down,
            "carrier_when_peer_up": carrier_up,
            "vip4_present_after_down_up": m.present(Vip(v4, ifa)),
            "vip6_present_after_down_up": m.present(Vip(v6, ifa)),
            "malformed": w.malformed,
        }
    finally:
        w.close()
        m.close()


def _scenario_netlink_overrun(p: dict[str, Any]) -> dict[str, Any]:
    ifa = p["if_a"]
    w = NetlinkWatcher()
    try:
        # Far more notifications than the socket's receive buffer holds, none read meanwhile.
        batch = "".join(
            f"addr add 198.18.{i // 250}.{i % 250 + 1}/32 dev {ifa}\n" for i in range(4000)
        )
        subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=True, timeout=60)
        lost, reads = False, 0
        for _ in range(1000):  # bounded drain
            reads += 1
            got = w.read_events()
            lost = lost or any(isinstance(ev, EventsLost) for ev in got)
            if not got:
                break
        return {"lost": lost, "reads": reads, "malformed": w.malformed}
    finally:
        w.close()


def _scenario_arp_watch(p: dict[str, Any]) -> dict[str, Any]:
    ifa = p["if_a"]
    m, announcer, watcher = VipManager(), Announcer(), ArpWatcher(ifa)
    try:
        vip = Vip(ip_interface(p["vip"]), ifa)
        mine = [IPv4Address(str(vip.ip))]
        m.add(vip)
        mac = m.mac(ifa)
        _emit({"mac": mac.hex(":"), "announced": announcer.announce(vip)})
        conflicts: list[ArpConflict] = []
        deadline = time.monotonic() + 10.0
        while not conflicts and (left := deadline - time.monotonic()) > 0:
            if _readable(watcher, left):
                conflicts.extend(watcher.read_conflicts(mine, mac))
        # Our kernel answers B's frames (sender IP = VIP, our MAC): make sure those are ignored.
        time.sleep(0.2)
        conflicts.extend(watcher.read_conflicts(mine, mac))
        _emit({"conflicts": [[str(c.ip), c.mac.hex(":")] for c in conflicts]})

        ready, _, _ = select.select([sys.stdin], [], [], 10.0)
        assert ready and sys.stdin.readline().strip() == "flooded"
        time.sleep(0.2)  # let the whole flood land in the socket
        flood = watcher.read_conflicts(mine, mac)
        first_left_some = _readable(watcher, 0)
        flood += watcher.read_conflicts(mine, mac)
        return {
            "first_call_left_some": first_left_some,
            "second_call_drained": not _readable(watcher, 0),
            "conflicts": [[str(c.ip), c.mac.hex(":")] for c in flood],
        }
    finally:
        watcher.close()
        announcer.close()
        m.close()


def _readable(watcher: ArpWatcher, timeout: float) -> bool:
    ready, _, _ = select.select([watcher.fileno()], [], [], timeout)
    return bool(ready)


SCENARIOS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "vip_idempotent": _scenario_vip_idempotent,
    "vip_nodad": _scenario_vip_nodad,
    "announce": _scenario_announce,
    "announce_recreated": _scenario_announce_recreated,
    "netlink_watch": _scenario_netlink_watch,
    "netlink_overrun": _scenario_netlink_overrun,
    "arp_watch": _scenario_arp_watch,
}


if __name__ == "__main__":
    _emit(SCENARIOS[sys.argv[1]](json.loads(sys.argv[2])))
