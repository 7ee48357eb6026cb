"""The `dr` data plane in the lab: node a rewrites MACs, the backends answer the client directly.

Node a holds the VIP (added by hand, as in the nat tests) and keeps ip_forward at 0; r1 and r2
run ``hapair realserver up`` and a service bound to VIP:8080 (HTTP over TCP, echo over UDP).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from hapair.balancer.dr import DrRule, render_ruleset
from hapair.lab import shell
from hapair.lab.addresses import LAN4, LAN6, VIP4, VIP6, mac
from hapair.lab.topology import Lab
from tests.netns import lab_http

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

PORT = 8080
BACKENDS = ("r1", "r2")

APPLY = """
import json, sys
from hapair.balancer.dr import DrDataPlane
from hapair.balancer.plane import Member, Pool
from hapair.config.balancer import Balancer
action, listen, scheduler, protocol, *members = sys.argv[1:]
backend = [{"address": m.rsplit("=", 1)[0], "weight": int(m.rsplit("=", 1)[1])} for m in members]
cfg = Balancer.model_validate(
    {"kind": "dr", "listen": listen, "scheduler": scheduler, "protocol": protocol,
     "backend": backend or [{"address": "10.77.0.21:8080"}]}
)
plane = DrDataPlane(cfg, interface="eth0")
if action == "remove":
    print(json.dumps(plane.remove()))
else:
    plane.preflight()
    changed = plane.apply(Pool(tuple(Member(*b.address, b.weight) for b in cfg.backend)))
    print(json.dumps({"changed": changed, **plane.status()}))
"""


ECHO = """
import socket, sys
names = []
for i in range(int(sys.argv[2])):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        try:
            s.sendto(b"ping", (sys.argv[1], 8080))
            names.append(s.recvfrom(512)[0].split()[0].decode())
        except OSError:
            names.append("FAILED")
print(" ".join(names))
"""

# Opens COUNT connections, reports their source ports, waits for GO, then sends one request on
# each: a connection's backend can be told from the backends' socket tables in between.
HOLD = """
import json, os, socket, sys, time
host, count, ports_file, go_file, out_file = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
socks = [socket.create_connection((host, 8080), timeout=2) for _ in range(count)]
with open(ports_file + ".tmp", "w") as fh:
    json.dump([s.getsockname()[1] for s in socks], fh)
os.rename(ports_file + ".tmp", ports_file)
deadline = time.monotonic() + 30
while not os.path.exists(go_file) and time.monotonic() < deadline:
    time.sleep(0.01)
names = []
for s in socks:
    try:
        s.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        names.append(data.split(b"\\r\\n\\r\\n", 1)[1].decode().strip())
    except (OSError, IndexError):
        names.append("FAILED")
with open(out_file + ".tmp", "w") as fh:
    json.dump(names, fh)
os.rename(out_file + ".tmp", out_file)
"""


def realserver(lab: Lab, host: str, action: str, vip: str) -> str:
    state = lab.dir / f"realserver-{host}.json"
    argv = ["-m", "hapair", "realserver", action, vip, "--state-file", str(state)]
    return lab.python(host, argv).stdout


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(f"hd{os.getpid() % 10000}", services=False) as lab:
        # Node a is the dispatcher: it holds both VIPs and does not forward.
        lab.exec("a", ["ip", "addr", "add", f"{VIP4}/24", "dev", "eth0"])
        lab.exec("a", ["ip", "addr", "add", f"{VIP6}/64", "dev", "eth0", "nodad"])
        for host in BACKENDS:
            realserver(lab, host, "up", VIP4)
            realserver(lab, host, "up", VIP6)
            args = ["--name", host, "--vip", VIP4, "--vip", VIP6]
            args += ["--http-port", str(PORT), "--udp-port", str(PORT)]
            with (lab.dir / f"dr-{host}.out").open("wb") as out:
                lab.spawn(f"dr-{host}", host, [sys.executable, "-m", "hapair.lab.service", *args],
                          stdout=out)  # fmt: skip
        for host in BACKENDS:
            ready = lab.dir / f"dr-{host}.out"
            assert shell.wait_until(lambda p=ready: b"ready" in p.read_bytes(), timeout=10)
        yield lab


def apply(
    lab: Lab,
    node: str,
    scheduler: str,
    weights: tuple[int, int] = (1, 1),
    *,
    v6: bool = False,
    protocol: str = "tcp",
    hosts: tuple[str, ...] = BACKENDS,
) -> dict[str, Any]:
    if v6:
        listen = f"[{VIP6}]:{PORT}"
        members = [f"[{LAN6[h]}]:{PORT}={w}" for h, w in zip(hosts, weights, strict=False)]
    else:
        listen = f"{VIP4}:{PORT}"
        members = [f"{LAN4[h]}:{PORT}={w}" for h, w in zip(hosts, weights, strict=False)]
    out = lab.python(node, ["-c", APPLY, "apply", listen, scheduler, protocol, *members]).stdout
    status: dict[str, Any] = json.loads(out)
    return status


def remove(lab: Lab, node: str) -> bool:
    out = lab.python(node, ["-c", APPLY, "remove", f"{VIP4}:{PORT}", "rr", "tcp"]).stdout
    return bool(json.loads(out))


def fetch(lab: Lab, count: int, host: str = VIP4, timeout: float = 1.0) -> list[str]:
    return lab_http.fetch(lab, count, host=host, timeout=timeout, deadline=60)


def nft_json(lab: Lab, host: str, *args: str) -> list[dict[str, Any]]:
    out = lab.exec(host, ["nft", "-j", "list", *args]).stdout
    items: list[dict[str, Any]] = json.loads(out)["nftables"]
    return items


def rule_packets(lab: Lab, node: str) -> int:
    """Packets the dr rule on ``node`` rewrote (its counter)."""
    for item in nft_json(lab, node, "table", "netdev", "hapair_dr"):
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                return int(expr["counter"]["packets"])
    raise AssertionError(f"no dr rule with a counter on {node}")


def count_reply_macs(lab: Lab) -> None:
    """On the client, count packets from VIP:8080 by source MAC (a dispatcher, r1, r2)."""
    rules = "\n".join(
        f'\t\tether saddr {mac(h)} ip saddr {VIP4} tcp sport {PORT} counter name "{h}"'
        for h in ("a", *BACKENDS)
    )
    counters = "\n".join(f"\tcounter {h} {{ }}" for h in ("a", *BACKENDS))
    text = (
        f"table netdev replies {{\n{counters}\n\tchain in {{\n"
        '\t\ttype filter hook ingress device "eth0" priority filter; policy accept;\n'
        f"{rules}\n\t}}\n}}\n"
    )
    shell.run(["ip", "netns", "exec", lab.ns("c"), "nft", "-f", "-"], input_text=text)


def reply_macs(lab: Lab) -> dict[str, int]:
    return {
        item["counter"]["name"]: int(item["counter"]["packets"])
        for item in nft_json(lab, "c", "counters", "table", "netdev", "replies")
        if "counter" in item
    }


def test_weighted_spreads_by_weight_and_backends_answer_directly(lab: Lab) -> None:
    assert lab.sysctl("a", "net.ipv4.ip_forward") == "0"  # direct routing does not route
    status = apply(lab, "a", "weighted", (2, 1))
    assert status["changed"] is True and status["unresolved"] == {}
    assert status["backends"] == {
        f"{LAN4['r1']}:{PORT}": mac("r1"),
        f"{LAN4['r2']}:{PORT}": mac("r2"),
    }
    assert status["own_mac"] == mac("a")
    count_reply_macs(lab)
    counts = Counter(fetch(lab, 60))
    # r1 owns 165 of the 256 buckets (p = 0.64, 38.7 of 60 expected, sd 3.7): a wide bound.
    assert "FAILED" not in counts and 25 <= counts["r1"] <= 52 and counts["r2"] >= 8, counts
    assert counts["r1"] > counts["r2"]
    # The replies came from the backends' MACs, none through the dispatcher...
    replies = reply_macs(lab)
    assert replies["a"] == 0 and replies["r1"] > 0 and replies["r2"] > 0, replies
    # ...while the dispatcher rewrote the client's packets (at least SYN, request, ACK, FIN).
    assert rule_packets(lab, "a") >= 60 * 4
    # Only a answers ARP for the VIP: the backends keep quiet about their loopback VIP.
    neigh = lab.exec("c", ["ip", "-j", "neigh", "show", VIP4, "dev", "eth0"]).stdout
    assert json.loads(neigh)[0]["lladdr"] == mac("a")
    assert lab.sysctl("a", "net.ipv4.ip_forward") == "0"


def test_round_robin_hashes_each_flow(lab: Lab) -> None:
    apply(lab, "a", "rr")
    counts = Counter(fetch(lab, 40))
    assert "FAILED" not in counts and counts["r1"] >= 8 and counts["r2"] >= 8, counts


def test_source_hash_keeps_a_client_on_one_backend(lab: Lab) -> None:
    apply(lab, "a", "source-hash")
    names = fetch(lab, 12)
    assert len(set(names)) == 1 and names[0] in BACKENDS, names


def test_udp_flows_are_spread_too(lab: Lab) -> None:
    apply(lab, "a", "rr", protocol="udp")
    counts = Counter(lab.python("c", ["-c", ECHO, VIP4, "30"]).stdout.split())
    assert "FAILED" not in counts and counts["r1"] >= 5 and counts["r2"] >= 5, counts


def test_ipv6(lab: Lab) -> None:
    assert lab.sysctl("a", "net.ipv6.conf.all.forwarding") == "0"
    status = apply(lab, "a", "rr", v6=True)
    assert status["backends"] == {
        f"[{LAN6['r1']}]:{PORT}": mac("r1"),
        f"[{LAN6['r2']}]:{PORT}": mac("r2"),
    }
    counts = Counter(fetch(lab, 30, VIP6))
    assert "FAILED" not in counts and counts["r1"] >= 4 and counts["r2"] >= 4, counts
    assert rule_packets(lab, "a") > 0
    neigh = lab.exec("c", ["ip", "-j", "neigh", "show", VIP6, "dev", "eth0"]).stdout
    assert json.loads(neigh)[0]["lladdr"] == mac("a")  # no backend answered NDP for the VIP


def test_the_node_without_the_vip_does_not_touch_frames(lab: Lab) -> None:
    apply(lab, "a", "rr")
    apply(lab, "b", "rr")  # hot mode: the same pool on the standby, matching its own MAC
    rules = lab.exec("b", ["nft", "list", "table", "netdev", "hapair_dr"]).stdout
    assert f"ether daddr {mac('b')} " in rules
    assert sorted(set(fetch(lab, 20))) == ["r1", "r2"]
    assert rule_packets(lab, "a") > 0 and rule_packets(lab, "b") == 0


def established_peers(lab: Lab, host: str) -> set[int]:
    out = lab.exec(host, ["ss", "-Htn", "state", "established", f"( sport = :{PORT} )"]).stdout
    return {int(line.split()[-1].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


def test_removing_a_backend_leaves_the_other_backends_flows_alone(lab: Lab) -> None:
    apply(lab, "a", "rr")
    ports_file, go, out = (lab.dir / n for n in ("hold-ports", "hold-go", "hold-out"))
    lab.spawn(
        "hold", "c", [sys.executable, "-c", HOLD, VIP4, "16", *map(str, (ports_file, go, out))]
    )
    assert shell.wait_until(ports_file.exists, timeout=10)
    ports = json.loads(ports_file.read_text())

    def mapped() -> dict[str, set[int]] | None:
        on = {h: established_peers(lab, h) & set(ports) for h in BACKENDS}
        return on if len(on["r1"] | on["r2"]) == len(ports) else None

    on = shell.wait_until(mapped, timeout=5)
    assert on is not None and on["r1"] and on["r2"], on  # 16 flows: both backends have some
    apply(lab, "a", "rr", hosts=("r1",))  # r2 leaves the pool while the flows are open
    go.touch()
    assert shell.wait_until(out.exists, timeout=20)
    names = dict(zip(ports, json.loads(out.read_text()), strict=True))
    # r1's flows kept their backend: without connection tracking, only r2's buckets moved.
    assert all(names[p] == "r1" for p in on["r1"]), names
    assert set(fetch(lab, 10)) == {"r1"}  # and every new flow goes to r1


def test_the_kernel_accepts_every_variant(lab: Lab) -> None:
    owners = (mac("r1"), mac("r2")) * 128
    for vip in (VIP4, VIP6):
        for scheduler in ("rr", "random", "weighted", "source-hash"):
            for proto in ("tcp", "udp"):
                rule = DrRule(ip_address(vip), 80, "eth0", mac("a"), owners, scheduler, proto)
                check = ["ip", "netns", "exec", lab.ns("a"), "nft", "-c", "-f", "-"]
                shell.run(check, input_text=render_ruleset(rule))


def test_remove_and_realserver_down_restore_everything(lab: Lab) -> None:
    apply(lab, "a", "rr")
    assert remove(lab, "a") is True  # a fresh instance, as `hapair release` has
    assert remove(lab, "a") is False
    assert "hapair_dr" not in lab.exec("a", ["nft", "list", "tables"]).stdout
    assert fetch(lab, 1, timeout=2.0) == ["FAILED"]  # a itself serves nothing on VIP:8080
    assert lab.has_vip("a")  # the VIP stays: releasing it is the daemon's job

    assert "already on lo" in realserver(lab, "r1", "up", VIP4)  # idempotent
    assert lab.sysctl("r1", "net.ipv4.conf.all.arp_ignore") == "1"
    assert lab.sysctl("r1", "net.ipv4.conf.all.arp_announce") == "2"
    out = realserver(lab, "r1", "down", VIP4)
    # The last IPv4 VIP went: the ARP sysctls go back (the IPv6 VIP does not need them).
    assert f"removed {VIP4}/32 from lo" in out
    assert "restored net.ipv4.conf.all.arp_ignore=0" in out
    assert f"removed {VIP6}/128 from lo" in realserver(lab, "r1", "down", VIP6)
    assert lab.sysctl("r1", "net.ipv4.conf.all.arp_ignore") == "0"
    assert lab.sysctl("r1", "net.ipv4.conf.all.arp_announce") == "0"
    addrs = lab.exec("r1", ["ip", "-br", "addr", "show", "dev", "lo"]).stdout
    assert VIP4 not in addrs and VIP6 not in addrs
    assert not Path(lab.dir / "realserver-r1.json").exists()
    assert f"{VIP4} was not on lo" in realserver(lab, "r1", "down", VIP4)  # idempotent
