"""Discovery between network namespaces: announce in a, b, r1, r2; browse from c.

Every zeroconf instance runs inside a lab namespace, restricted to that host's eth0, so
multicast stays on the lab's bridge; the test process itself never opens an mDNS socket.
This module is also the children's entry point ("python -m tests.netns.test_discovery ROLE").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv6Address, ip_interface
from typing import Any

import pytest

import hapair
from hapair.lab import shell
from hapair.lab.addresses import LAN4, LAN6
from hapair.lab.topology import Lab, Proc, lab_namespaces
from hapair.ops.discovery import NodeRecord, PeerFinder
from hapair.ops.mdns import Announcer, PeerWatch, interface_addresses, open_zeroconf

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

PREFIX = f"hpd{os.getpid() % 100000}"
PORT = 694
READY_TIMEOUT_S = 15.0
SEEN_TIMEOUT_S = 10.0
# A goodbye (RFC 6762 §10.1) makes caches drop the record one second later.
GOODBYE_BOUND_S = 3.0


# ------------------------------------------------------------------ children -------------------


def _eth0() -> tuple[list[str], list[Any]]:
    """eth0's IPv4 addresses (for zeroconf) and every usable address (for the records)."""
    own = interface_addresses("eth0")
    v4 = [str(a) for a, _ in own if isinstance(a, IPv4Address)]
    usable = [a for a, _ in own if not (isinstance(a, IPv6Address) and a.is_link_local)]
    return v4, usable


def _emit(obj: object) -> None:
    print(json.dumps(obj), flush=True)


def child_announce(args: argparse.Namespace) -> None:
    """Announce until SIGTERM; SIGUSR1 switches to role BACKUP, priority 50."""
    v4, usable = _eth0()
    zc = open_zeroconf(v4)
    record = NodeRecord(args.cluster, args.node, args.role, args.prio, hapair.__version__, PORT)
    announcer = Announcer(zc, record, usable)
    stop, flip = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: flip.set())
    if announcer.wait_registered(READY_TIMEOUT_S):
        _emit({"ready": announcer.record.node})
    while not stop.wait(0.05):
        if flip.is_set():
            flip.clear()
            announcer.update(role="BACKUP", priority=50)
    announcer.stop(1.0)
    zc.close()


def child_watch(args: argparse.Namespace) -> None:
    """Print every node announced on eth0's LAN, one JSON line per change."""
    v4, usable = _eth0()
    zc = open_zeroconf(v4)
    woken = threading.Event()
    watch = PeerWatch(zc, woken.set, refresh=1.0)
    finder = PeerFinder(me=args.node, own_addresses=usable, port=PORT)
    if args.node:  # the peer a daemon with cluster.peers = "auto" would use
        finder.networks = tuple(
            ip_interface(f"{a}/{p}").network for a, p in interface_addresses("eth0")
        )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    last: object = None
    while not stop.is_set():
        woken.wait(0.2)
        woken.clear()
        now = time.monotonic()
        finder.take_at(watch.drain(), now)
        if args.node:
            peer = finder.peer_of_at(args.cluster, now)
            state: object = peer.as_dict() if peer else None
        else:
            state = [s.as_dict() for s in finder.nodes_at(now)]
        if state != last:
            _emit({"t": now, "state": state})
            last = state
    watch.close()
    zc.close()


# ------------------------------------------------------------------ helpers --------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(PREFIX, services=False) as built:
        yield built
    assert lab_namespaces(PREFIX) == []


def _lines(proc: Proc) -> list[dict[str, Any]]:
    out = proc.log.with_suffix(".out")
    try:
        text = out.read_text(encoding="utf-8")
    except OSError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _spawn(lab: Lab, key: str, host: str, *args: str) -> Proc:
    out = lab.dir / f"{key}.out"
    with out.open("wb") as fh:
        return lab.spawn(
            key, host, [sys.executable, "-m", "tests.netns.test_discovery", *args], stdout=fh
        )


def announce(lab: Lab, host: str, cluster: str, node: str, role: str, prio: int) -> Proc:
    """Start an announcer in `host` and wait (bounded) until its service is registered."""
    key = f"announce-{node}"
    proc = _spawn(lab, key, host, "announce", cluster, node, role, str(prio))
    if not shell.wait_until(lambda: _lines(proc), timeout=READY_TIMEOUT_S):
        raise AssertionError(f"{key} not registered:\n{proc.log.read_text()[-2000:]}")
    return proc


def wait_state(
    proc: Proc, predicate: Callable[[Any], bool], timeout: float = SEEN_TIMEOUT_S, after: int = 0
) -> dict[str, Any]:
    """The first state line of watcher `proc`, from line `after` on, satisfying `predicate`."""

    def find() -> dict[str, Any] | None:
        return next((ln for ln in _lines(proc)[after:] if predicate(ln["state"])), None)

    found = shell.wait_until(find, timeout=timeout)
    if found is None:
        raise AssertionError(f"not seen within {timeout}s; last: {_lines(proc)[-1:]}")
    return found


def names(state: list[dict[str, Any]]) -> set[str]:
    return {n["node"] for n in state}


def discover(lab: Lab, *args: str) -> list[dict[str, Any]]:
    out = lab.python("c", ["-m", "hapair", "discover", "--json", "--timeout", "2", *args])
    result: list[dict[str, Any]] = json.loads(out.stdout)
    return result


@pytest.fixture(scope="module")
def pair(lab: Lab) -> None:
    announce(lab, "a", "lab", "a", "MASTER", 150)
    announce(lab, "b", "lab", "b", "BACKUP", 100)
    announce(lab, "r1", "other", "r1", "MASTER", 50)


# ------------------------------------------------------------------ tests ----------------------


def test_discover_lists_every_node_with_its_fields(lab: Lab, pair: None) -> None:
    by_node = {n["node"]: n for n in discover(lab)}
    assert {"a", "b", "r1"} <= set(by_node)
    a = by_node["a"]
    assert a["address"] == LAN4["a"]
    assert a["addresses"] == [LAN4["a"], LAN6["a"]]
    assert (a["cluster"], a["role"], a["priority"], a["version"], a["port"]) == (
        "lab",
        "MASTER",
        150,
        hapair.__version__,
        PORT,
    )
    b = by_node["b"]
    assert (b["address"], b["cluster"], b["role"], b["priority"]) == (
        LAN4["b"],
        "lab",
        "BACKUP",
        100,
    )
    assert (by_node["r1"]["cluster"], by_node["r1"]["address"]) == ("other", LAN4["r1"])


def test_cluster_filter(lab: Lab, pair: None) -> None:
    assert {n["node"] for n in discover(lab, "--cluster", "lab")} == {"a", "b"}
    assert {n["node"] for n in discover(lab, "--cluster", "other")} == {"r1"}
    assert discover(lab, "--cluster", "nosuch") == []


def test_discover_prints_a_table(lab: Lab, pair: None) -> None:
    out = lab.python("c", ["-m", "hapair", "discover", "--cluster", "lab", "--timeout", "2"])
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ADDRESS", "CLUSTER", "NODE", "ROLE", "PRIORITY", "VERSION", "PORT"]
    rows = sorted(line.split() for line in lines[1:])
    assert rows == [
        [f"{LAN4['a']},{LAN6['a']}", "lab", "a", "MASTER", "150", hapair.__version__, str(PORT)],
        [f"{LAN4['b']},{LAN6['b']}", "lab", "b", "BACKUP", "100", hapair.__version__, str(PORT)],
    ]


def test_auto_peer_is_the_other_node_of_the_same_cluster(lab: Lab, pair: None) -> None:
    # What `cluster.peers = "auto"` would feed to UdpTransport.set_peers on node a.
    watcher = _spawn(lab, "peer-a", "a", "watch", "--cluster", "lab", "--node", "a")
    found = wait_state(watcher, lambda s: s is not None)
    assert found["state"]["node"] == "b"
    assert found["state"]["addresses"] == [LAN4["b"], LAN6["b"]]
    lab.stop("peer-a")


def test_role_change_reaches_a_watcher(lab: Lab, pair: None) -> None:
    proc = announce(lab, "r2", "flip", "r2", "MASTER", 120)
    watcher = _spawn(lab, "watch-flip", "c", "watch")

    def r2(state: list[dict[str, Any]]) -> dict[str, Any] | None:
        return next((n for n in state if n["node"] == "r2"), None)

    wait_state(watcher, lambda s: (r2(s) or {}).get("role") == "MASTER")
    os.kill(proc.pid, signal.SIGUSR1)
    # The update is announced at once (not at the next TTL refresh): seen within 3 s.
    changed = wait_state(watcher, lambda s: (r2(s) or {}).get("role") == "BACKUP", timeout=3.0)
    assert r2(changed["state"]) is not None
    assert r2(changed["state"])["priority"] == 50  # type: ignore[index]
    lab.stop("watch-flip")
    lab.stop(proc.key)


def test_goodbye_removes_a_node_within_a_bound(lab: Lab, pair: None) -> None:
    polite = announce(lab, "r2", "bye", "polite", "BACKUP", 10)
    crashed = announce(lab, "r2", "bye", "crashed", "BACKUP", 20)
    watcher = _spawn(lab, "watch-bye", "c", "watch")
    wait_state(watcher, lambda s: {"polite", "crashed"} <= names(s))
    seen = len(_lines(watcher))
    lab.stop(crashed.key, sig=signal.SIGKILL)  # no goodbye: its records live out their TTL
    lab.stop(polite.key)  # SIGTERM: the announcer sends its goodbye
    gone = wait_state(
        watcher, lambda s: "polite" not in names(s), timeout=GOODBYE_BOUND_S, after=seen
    )
    # The crashed one is still listed: the goodbye, not a timeout, removed the polite one.
    assert "crashed" in names(gone["state"])
    assert {"a", "b"} <= names(gone["state"])
    lab.stop("watch-bye")


# ------------------------------------------------------------------ entry point ----------------


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="test_discovery")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("announce")
    p.add_argument("cluster")
    p.add_argument("node")
    p.add_argument("role")
    p.add_argument("prio", type=int)
    p.set_defaults(func=child_announce)
    p = sub.add_parser("watch")
    p.add_argument("--cluster", default="")
    p.add_argument("--node", default="")
    p.set_defaults(func=child_watch)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
