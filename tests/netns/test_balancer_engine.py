"""The `proxy` (nginx, HAProxy) and `redirect` data planes in the lab, driven as the daemon does.

Node a holds the VIP (added by hand) and runs one EngineDataPlane inside a driver process that
lives for the whole test (the engine dies with its parent: PDEATHSIG); the client reaches the
lab's backends r1 and r2 through VIP:8080.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hapair.lab.addresses import LAN4, VIP4
from hapair.lab.shell import wait_until
from hapair.lab.topology import Lab
from tests.netns.lab_http import fetch, redirects

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

R1, R2 = LAN4["r1"], LAN4["r2"]
SLOW_PORT = 8081
SLOW_SECONDS = 1.5

# One EngineDataPlane, one JSON command per line; a quick restart policy (the third death
# within 30 s gives up) so that the give-up path is reached in a second.
DRIVER = """
import json, sys, time
from ipaddress import ip_address
from pathlib import Path
from hapair.balancer.engine import EngineDataPlane
from hapair.balancer.plane import Member, Pool
from hapair.balancer.process import RestartPolicy
from hapair.config.balancer import Balancer
from hapair.errors import BalancerError
policy = RestartPolicy(first=0.05, cap=0.2, limit=2, window=30.0)
cfg = Balancer.model_validate(json.loads(sys.argv[1]))
plane = EngineDataPlane(cfg, run_dir=Path(sys.argv[2]), policy=policy)
for line in sys.stdin:
    cmd = json.loads(line)
    try:
        op = cmd["op"]
        if op == "apply":
            pool = Pool(tuple(Member(ip_address(a), p, w) for a, p, w in cmd["members"]))
            out = {"result": plane.apply(pool)}
        elif op == "reconfigure":
            out = {"result": plane.reconfigure(Balancer.model_validate(cmd["cfg"]))}
        elif op == "supervise":
            out = {"result": plane.supervise(time.monotonic())}
        elif op == "preflight":
            out = {"result": plane.preflight()}
        elif op == "remove":
            out = {"result": plane.remove()}
        else:
            out = {"result": plane.status()}
    except BalancerError as exc:
        out = {"error": str(exc)}
    print(json.dumps(out), flush=True)
"""

REMOVE = """
import json, sys
from pathlib import Path
from hapair.balancer.engine import EngineDataPlane
from hapair.config.balancer import Balancer
cfg = Balancer.model_validate(json.loads(sys.argv[1]))
print(EngineDataPlane(cfg, run_dir=Path(sys.argv[2])).remove())
"""

# A backend that answers "slow" SLOW_SECONDS after it has read a request (one at a time).
SLOW = f"""
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{R1}", {SLOW_PORT}))
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(5)
    data = b""
    while b"\\r\\n\\r\\n" not in data:
        chunk = c.recv(4096)
        if not chunk:
            break
        data += chunk
    time.sleep({SLOW_SECONDS})
    c.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 5\\r\\nConnection: close\\r\\n\\r\\nslow\\n")
    c.close()
"""


def balancer(kind: str, scheduler: str, engine: str = "nginx") -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "kind": kind,
        "scheduler": scheduler,
        "listen": f"{VIP4}:8080",
        "backend": [{"address": f"{R1}:80", "weight": 2}, {"address": f"{R2}:80"}],
    }
    if kind == "proxy":
        cfg["proxy"] = {"engine": engine, "connect_timeout": "500ms", "timeout": "5s"}
    return cfg


def marked(marker: str) -> list[int]:
    """Pids whose command line names ``marker`` (the engine's configuration file)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


class Driver:
    """The data plane in a long-lived process inside a node's namespace."""

    def __init__(self, lab: Lab, node: str, cfg: dict[str, Any], run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        argv = [sys.executable, "-c", DRIVER, json.dumps(cfg), str(run_dir)]
        self.log = (lab.dir / f"driver-{node}.log").open("ab")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns(node), *argv],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=lab.env(),
        )  # fmt: skip

    def call(self, op: str, timeout: float = 20.0, **args: Any) -> Any:
        """Run ``op``; its result, or the BalancerError text as ``{"error": ...}``."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"driver did not answer {op} within {timeout} s"
        reply = json.loads(self.proc.stdout.readline())
        return reply if "error" in reply else reply["result"]

    def apply(self, *members: tuple[str, int, int]) -> Any:
        return self.call("apply", members=[list(m) for m in members])

    def status(self) -> dict[str, Any]:
        status = self.call("status")
        assert isinstance(status, dict)
        return status

    def close(self) -> None:
        if self.proc.poll() is None:
            self.call("remove")
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(f"he{os.getpid() % 10000}") as lab:
        lab.exec("a", ["ip", "addr", "add", f"{VIP4}/24", "dev", "eth0"])
        lab.exec("a", ["sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1"])
        yield lab


@pytest.fixture
def plane(lab: Lab, request: pytest.FixtureRequest) -> Iterator[Callable[..., Driver]]:
    drivers: list[Driver] = []

    def make(cfg: dict[str, Any], node: str = "a") -> Driver:
        run_dir = lab.dir / f"{request.node.name.replace('[', '-').strip(']')}-{node}"
        driver = Driver(lab, node, cfg, run_dir)
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        driver.close()


ENGINES = ["nginx", "haproxy"]


@pytest.mark.parametrize("engine", ENGINES)
def test_weighted_spread_then_sticky_source_hash(
    engine: str, plane: Callable[..., Driver], lab: Lab
) -> None:
    d = plane(balancer("proxy", "weighted", engine))
    assert d.call("preflight") is None
    assert d.apply((R1, 80, 2), (R2, 80, 1)) is True
    assert d.apply((R1, 80, 2), (R2, 80, 1)) is False  # the same text: nothing to do
    spread = Counter(fetch(lab, 60))
    assert spread["FAILED"] == 0, spread
    assert 30 <= spread["r1"] <= 50 and spread["r2"] >= 10, spread

    pid = d.status()["pid"]
    assert d.call("reconfigure", cfg=balancer("proxy", "source-hash", engine)) is None
    assert d.apply((R1, 80, 2), (R2, 80, 1)) is True
    assert len(set(fetch(lab, 20))) == 1
    status = d.status()
    assert status["pid"] == pid and status["reloads"] == 1 and status["engine"] == engine


@pytest.mark.parametrize("engine", ENGINES)
def test_a_reload_lets_a_request_in_flight_finish(
    engine: str, plane: Callable[..., Driver], lab: Lab
) -> None:
    if not lab.running("slow-r1"):
        with (lab.dir / "slow-r1.out").open("wb") as out:
            lab.spawn("slow-r1", "r1", [sys.executable, "-c", SLOW], stdout=out)
        assert wait_until(lambda: b"ready" in (lab.dir / "slow-r1.out").read_bytes(), timeout=10)
    d = plane(balancer("proxy", "rr", engine))
    assert d.apply((R1, SLOW_PORT, 1)) is True
    pid = d.status()["pid"]
    client = subprocess.Popen(
        ["ip", "netns", "exec", lab.ns("c"), "curl", "-sS", "-m", "10", f"http://{VIP4}:8080/"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(0.5)  # the request is at the slow backend now
    t0 = time.monotonic()
    assert d.apply((R2, 80, 1)) is True  # a graceful reload while the request is in flight
    assert time.monotonic() - t0 < SLOW_SECONDS  # apply did not wait for the old request
    assert fetch(lab, 2) == ["r2", "r2"]  # the new pool serves as soon as apply returned
    out, err = client.communicate(timeout=15)
    assert (client.returncode, out, err) == (0, b"slow\n", b"")
    status = d.status()
    assert status["pid"] == pid and status["reloads"] == 1 and status["restarts"] == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_a_refused_configuration_leaves_the_old_engine_serving(
    engine: str, plane: Callable[..., Driver], lab: Lab
) -> None:
    d = plane(balancer("proxy", "rr", engine))
    assert d.apply((R1, 80, 1)) is True
    before = d.status()
    text = Path(before["config"]).read_text()
    refused = d.apply((R1, 70000, 1))  # the engine's own test rejects the port
    assert "refused the new configuration" in refused["error"]
    assert "70000" in refused["error"] and "invalid port" in refused["error"]
    assert Path(before["config"]).read_text() == text
    assert not any(p.name.startswith("next-") for p in d.run_dir.iterdir())
    assert d.status()["pid"] == before["pid"]
    assert fetch(lab, 3) == ["r1", "r1", "r1"]
    assert d.apply((R1, 80, 1)) is False  # still the served pool


@pytest.mark.parametrize("engine", ENGINES)
def test_a_killed_engine_is_restarted_until_it_dies_too_often(
    engine: str, plane: Callable[..., Driver], lab: Lab
) -> None:
    d = plane(balancer("proxy", "rr", engine))
    assert d.apply((R1, 80, 1), (R2, 80, 1)) is True
    config = d.status()["config"]
    for death in (1, 2):
        pid = d.status()["pid"]
        os.kill(pid, signal.SIGKILL)

        def restarted(old: int = pid) -> bool:
            return d.call("supervise") is not None and d.status()["pid"] not in (None, old)

        assert wait_until(restarted, timeout=5)
        status = d.status()
        assert status["pid"] is not None and status["restarts"] == death, status
        assert sorted(set(fetch(lab, 4))) == ["r1", "r2"]  # no orphaned worker kept the port
    os.kill(d.status()["pid"], signal.SIGKILL)  # the third death within the window
    answers: list[Any] = []

    def gave_up() -> bool:
        answers.append(d.call("supervise"))
        return isinstance(answers[-1], dict) and "error" in answers[-1]

    assert wait_until(gave_up, timeout=5)
    assert "giving up" in answers[-1]["error"]
    assert d.call("remove") is True
    assert marked(config) == []
    assert fetch(lab, 1) == ["FAILED"]
    assert d.call("remove") is False  # idempotent


@pytest.mark.parametrize("engine", ENGINES)
def test_a_fresh_instance_removes_a_running_engine(
    engine: str, plane: Callable[..., Driver], lab: Lab
) -> None:
    d = plane(balancer("proxy", "rr", engine))
    assert d.apply((R1, 80, 1)) is True
    config = d.status()["config"]
    assert len(marked(config)) >= 1
    args = ["-c", REMOVE, json.dumps(d.cfg), str(d.run_dir)]
    assert lab.python("a", args).stdout.strip() == "True"  # as `hapair release` does
    assert wait_until(lambda: marked(config) == [], timeout=5)
    assert not d.run_dir.exists()
    assert fetch(lab, 1) == ["FAILED"]
    assert lab.python("a", args).stdout.strip() == "False"


@pytest.mark.parametrize("engine", ENGINES)
def test_hot_standby_binds_the_vip_it_does_not_hold(
    engine: str, plane: Callable[..., Driver], lab: Lab
) -> None:
    lab.exec("b", ["sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=0"])
    d = plane(balancer("proxy", "rr", engine), node="b")
    if engine == "nginx":
        refused = d.call("preflight")
        assert "net.ipv4.ip_nonlocal_bind" in refused["error"]
        assert "sysctl -w net.ipv4.ip_nonlocal_bind=1" in refused["error"]
        lab.exec("b", ["sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1"])
    assert d.call("preflight") is None  # HAProxy binds with IP_TRANSPARENT: no sysctl
    assert d.apply((R2, 80, 1)) is True
    assert not lab.has_vip("b")
    lab.remove_vips("a")
    try:
        lab.exec("b", ["ip", "addr", "add", f"{VIP4}/24", "dev", "eth0"])
        lab.exec("c", ["ip", "neigh", "flush", "all"])
        assert wait_until(lambda: fetch(lab, 1) == ["r2"], timeout=5)
    finally:
        lab.remove_vips("b")
        lab.exec("a", ["ip", "addr", "add", f"{VIP4}/24", "dev", "eth0"])
        lab.exec("c", ["ip", "neigh", "flush", "all"])


def test_redirect_sends_the_client_to_a_backend_by_weight(
    plane: Callable[..., Driver], lab: Lab
) -> None:
    d = plane(balancer("redirect", "weighted"))
    assert d.apply((R1, 80, 2), (R2, 80, 1)) is True
    answers = Counter(redirects(lab, 90, timeout=2))
    assert set(answers) <= {f"302|http://{R1}/page?q=1", f"302|http://{R2}/page?q=1"}, answers
    assert 45 <= answers[f"302|http://{R1}/page?q=1"] <= 75, answers  # 60 expected

    assert d.call("reconfigure", cfg=balancer("redirect", "rr")) is None
    assert d.apply((R1, 80, 1), (R2, 8080, 1)) is True
    answers_rr = redirects(lab, 6, timeout=2)
    assert set(answers_rr) == {f"302|http://{R1}/page?q=1", f"302|http://{R2}:8080/page?q=1"}
    assert all(x != y for x, y in itertools.pairwise(answers_rr))  # it rotates

    assert d.call("reconfigure", cfg=balancer("redirect", "source-hash")) is None
    assert d.apply((R1, 80, 1), (R2, 80, 1)) is True
    assert len(set(redirects(lab, 20, timeout=2))) == 1
