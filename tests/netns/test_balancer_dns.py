"""The `dns` data plane in the lab: node a answers for the VIP, the client resolves through it."""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hapair.lab.addresses import LAN4, VIP4
from hapair.lab.topology import Lab

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

# A long-lived DnsDataPlane on a node, driven by one JSON command per line, as the daemon
# drives it: apply (a reload), supervise, status, remove.
DRIVER = """
import json, sys, time
from ipaddress import ip_address
from pathlib import Path
from hapair.balancer.dns import DnsDataPlane
from hapair.balancer.plane import Member, Pool
from hapair.config.balancer import Balancer
plane = DnsDataPlane(Balancer.model_validate(json.loads(sys.argv[1])), run_dir=Path(sys.argv[2]))
for line in sys.stdin:
    cmd = json.loads(line)
    try:
        if cmd["op"] == "apply":
            pool = Pool(tuple(Member(ip_address(a), 80) for a in cmd["pool"]))
            out = {"changed": plane.apply(pool)}
        elif cmd["op"] == "supervise":
            out = {"next": plane.supervise(time.monotonic())}
        elif cmd["op"] == "remove":
            out = {"removed": plane.remove()}
        else:
            out = plane.status()
    except Exception as exc:
        out = {"error": repr(exc)}
    print(json.dumps(out), flush=True)
"""

# From the client: COUNT queries for NAME over udp or tcp, a fresh socket (source port) each.
CLIENT = """
import json, sys
import dns.message, dns.query, dns.rcode
server, name, proto, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
send = dns.query.tcp if proto == "tcp" else dns.query.udp
out = []
for _ in range(count):
    try:
        r = send(dns.message.make_query(name, "A"), server, port=53, timeout=1.0)
        out.append([dns.rcode.to_text(r.rcode())] + [rd.to_text() for s in r.answer for rd in s])
    except Exception as exc:
        out.append(["FAILED", type(exc).__name__])
print(json.dumps(out))
"""

BACKENDS = [LAN4["r1"], LAN4["r2"]]
CONFIG: dict[str, Any] = {
    "kind": "dns",
    "listen": f"{VIP4}:53",
    "backend": [{"address": f"{a}:80"} for a in BACKENDS],
    "dns": {"names": ["www.lab.test"], "ttl": 1, "workers": 2},
}


class Driver:
    """A DnsDataPlane in ``node``'s namespace; ``call`` waits (bounded) for each reply."""

    def __init__(self, lab: Lab, node: str) -> None:
        self.run_dir = lab.dir / f"dns-{node}"
        argv = ["ip", "netns", "exec", lab.ns(node), sys.executable, "-c", DRIVER]
        self.proc = subprocess.Popen(
            [*argv, json.dumps(CONFIG), str(self.run_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=lab.env(), text=True,
        )  # fmt: skip

    def call(self, op: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"{op}: no reply within {timeout} s"
        reply: dict[str, Any] = json.loads(self.proc.stdout.readline())
        assert "error" not in reply, reply
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(f"hs{os.getpid() % 10000}") as lab:
        lab.exec("a", ["ip", "addr", "add", f"{VIP4}/24", "dev", "eth0"])
        yield lab


@pytest.fixture
def node_a(lab: Lab) -> Iterator[Driver]:
    driver = Driver(lab, "a")
    yield driver
    driver.call("remove")
    driver.close()


def resolve(
    lab: Lab, count: int, name: str = "www.lab.test", proto: str = "udp"
) -> list[list[str]]:
    """Answers as [rcode, address...] per query, or ["FAILED", error]."""
    args = ["-c", CLIENT, VIP4, name, proto, str(count)]
    result: list[list[str]] = json.loads(lab.python("c", args).stdout)
    return result


def marked(path: Path) -> list[int]:
    """Processes (the responder's manager and workers) whose command line names ``path``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(path).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_the_client_resolves_the_pool_through_the_vip(lab: Lab, node_a: Driver) -> None:
    assert node_a.call("apply", pool=BACKENDS)["changed"] is True
    answers = resolve(lab, 6)
    assert all(a[0] == "NOERROR" and sorted(a[1:]) == sorted(BACKENDS) for a in answers), answers
    # Round robin: the first address alternates from query to query (one counter, 2 workers).
    firsts = [a[1] for a in answers]
    assert all(x != y for x, y in itertools.pairwise(firsts)), firsts
    tcp = resolve(lab, 3, proto="tcp")
    assert all(a[0] == "NOERROR" and sorted(a[1:]) == sorted(BACKENDS) for a in tcp), tcp
    assert resolve(lab, 2, name="other.lab.test") == [["REFUSED"], ["REFUSED"]]


def test_a_standby_without_the_vip_runs_hot_but_does_not_answer(lab: Lab, node_a: Driver) -> None:
    node_b = Driver(lab, "b")
    try:
        node_a.call("apply", pool=[LAN4["r1"]])
        assert node_b.call("apply", pool=[LAN4["r2"]])["changed"] is True  # IP_FREEBIND
        assert resolve(lab, 4) == [["NOERROR", LAN4["r1"]]] * 4  # only the VIP holder
    finally:
        node_b.call("remove")
        node_b.close()


def test_a_pool_change_is_answered_as_soon_as_apply_returns(lab: Lab, node_a: Driver) -> None:
    node_a.call("apply", pool=BACKENDS)
    pid = node_a.call("status")["pid"]
    node_a.call("apply", pool=[LAN4["r2"]])  # r1 went down: SIGHUP, not a restart
    assert resolve(lab, 4) == [["NOERROR", LAN4["r2"]]] * 4
    assert node_a.call("status")["pid"] == pid


def test_a_killed_responder_is_restarted_and_remove_leaves_nothing(
    lab: Lab, node_a: Driver
) -> None:
    node_a.call("apply", pool=BACKENDS)
    pid = node_a.call("status")["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while node_a.call("status")["pid"] in (None, pid):
        assert time.monotonic() < deadline, "not restarted within 10 s"
        node_a.call("supervise")
        time.sleep(0.05)
    assert all(a[0] == "NOERROR" and len(a) == 3 for a in resolve(lab, 3))
    assert node_a.call("remove")["removed"] is True
    config = node_a.run_dir / "dns.json"
    deadline = time.monotonic() + 5.0
    while marked(config):  # workers die with their manager (PDEATHSIG), a moment later
        assert time.monotonic() < deadline, f"left running: {marked(config)}"
        time.sleep(0.05)
    assert resolve(lab, 1)[0][0] == "FAILED"
