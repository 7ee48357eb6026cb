"""The ``dns`` data plane on loopback: the supervised responder, reloads, restarts, removal."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from hapair.balancer.dns import DnsDataPlane
from hapair.balancer.plane import Member, Pool
from hapair.config.balancer import Balancer
from hapair.errors import BalancerError
from hapair.lab.shell import wait_until


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (at the time of asking)."""
    while True:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            try:
                udp.bind(tcp.getsockname())
            except OSError:
                continue
            port: int = tcp.getsockname()[1]
            return port


def balancer(
    port: int,
    workers: int = 2,
    scheduler: str = "rr",
    names: tuple[str, ...] = ("www.example.com",),
) -> Balancer:
    return Balancer.model_validate(
        {
            "kind": "dns",
            "scheduler": scheduler,
            "listen": f"127.0.0.1:{port}",
            "backend": [{"address": "10.0.0.21:80"}, {"address": "10.0.0.22:80"}],
            "dns": {"names": list(names), "ttl": 1, "workers": workers},
        }
    )


def pool(*last: int) -> Pool:
    return Pool(tuple(Member(ip_address(f"10.0.0.{n}"), 80) for n in last))


def ask(port: int, name: str = "www.example.com", tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, "A")
    send = dns.query.tcp if tcp else dns.query.udp
    return send(q, "127.0.0.1", port=port, timeout=2.0)


def answer(port: int, tcp: bool = False) -> list[str]:
    return [rd.to_text() for rrset in ask(port, tcp=tcp).answer for rd in rrset]


def responder_pids(marker: Path) -> list[int]:
    """Every process (manager and workers) whose command line names ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(marker).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def plane(tmp_path: Path, port: int) -> Iterator[DnsDataPlane]:
    plane = DnsDataPlane(balancer(port), run_dir=tmp_path / "run")
    yield plane
    plane.remove()


def test_apply_serves_the_pool_over_udp_and_tcp(plane: DnsDataPlane, port: int) -> None:
    assert plane.apply(pool(21, 22)) is True
    assert sorted(answer(port)) == ["10.0.0.21", "10.0.0.22"]
    assert sorted(answer(port, tcp=True)) == ["10.0.0.21", "10.0.0.22"]
    assert ask(port, "other.example.com").rcode() == dns.rcode.REFUSED
    assert plane.apply(pool(21, 22)) is False  # already served
    status = plane.status()
    assert status["pid"] and status["records"] == ["10.0.0.21", "10.0.0.22"]
    assert status["listen"] == f"127.0.0.1:{port}"


def test_rr_rotates_across_the_workers(plane: DnsDataPlane, port: int) -> None:
    plane.apply(pool(21, 22, 23))
    firsts = [answer(port)[0] for _ in range(9)]
    # One counter shared by both workers: every query moves the rotation on by one.
    assert firsts == ["10.0.0.21", "10.0.0.22", "10.0.0.23"] * 3


def test_a_pool_change_is_served_when_apply_returns(plane: DnsDataPlane, port: int) -> None:
    plane.apply(pool(21, 22))
    pid = plane.status()["pid"]
    for members in ((21,), (22, 23), (21, 22, 23)):
        assert plane.apply(pool(*members)) is True
        expected = sorted(f"10.0.0.{n}" for n in members)
        assert all(sorted(answer(port)) == expected for _ in range(6))
    assert plane.status()["pid"] == pid  # reloaded, not restarted


def test_a_bad_file_keeps_the_old_answers(plane: DnsDataPlane, port: int) -> None:
    plane.apply(pool(21, 22))
    ready = plane.ready_path.read_text()
    plane.config_path.write_text('{"listen": "127.0.0.1", "port": 1, "zone": {}}')
    plane.process.signal(signal.SIGHUP)
    time.sleep(0.3)
    assert sorted(answer(port)) == ["10.0.0.21", "10.0.0.22"]
    assert plane.ready_path.read_text() == ready


def test_a_dead_responder_is_restarted_by_supervise(plane: DnsDataPlane, port: int) -> None:
    plane.apply(pool(21, 22))
    old = plane.status()["pid"]
    os.kill(old, signal.SIGKILL)
    now = time.monotonic()

    def restarted() -> bool:
        plane.supervise(time.monotonic())
        return plane.status()["pid"] not in (None, old)

    assert wait_until(restarted, timeout=5.0, step=0.02)
    assert plane.status()["starts"] == 2
    assert time.monotonic() - now < 3.0
    assert sorted(answer(port)) == ["10.0.0.21", "10.0.0.22"]


def test_a_dead_worker_is_replaced_by_the_manager(plane: DnsDataPlane, port: int) -> None:
    plane.apply(pool(21))
    manager = plane.status()["pid"]
    workers = [p for p in responder_pids(plane.config_path) if p != manager]
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    assert wait_until(
        lambda: (
            len(responder_pids(plane.config_path)) == 3
            and workers[0] not in responder_pids(plane.config_path)
        ),
        timeout=5.0,
        step=0.02,
    )
    assert all(answer(port) == ["10.0.0.21"] for _ in range(6))
    assert plane.status()["pid"] == manager


def test_remove_from_a_fresh_instance_stops_every_process(tmp_path: Path, port: int) -> None:
    run = tmp_path / "run"
    DnsDataPlane(balancer(port), run_dir=run).apply(pool(21))
    assert len(responder_pids(run / "dns.json")) == 3
    fresh = DnsDataPlane(balancer(port), run_dir=run)
    assert fresh.remove() is True
    assert wait_until(lambda: not responder_pids(run / "dns.json"), timeout=3.0, step=0.02)
    assert fresh.remove() is False
    assert not list(run.iterdir())


def test_preflight_names_the_listen_setting_when_the_port_is_taken(
    tmp_path: Path, port: int
) -> None:
    plane = DnsDataPlane(balancer(port), run_dir=tmp_path)
    plane.preflight()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port))
        with pytest.raises(
            BalancerError, match=r"balancer\.listen: .*127\.0\.0\.1:\d+/udp: in use"
        ):
            plane.preflight()


def test_a_port_in_use_fails_the_start_with_the_reason(tmp_path: Path, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port))
        with pytest.raises(BalancerError, match="Address already in use"):
            DnsDataPlane(balancer(port), run_dir=tmp_path).apply(pool(21))


def test_reconfigure_takes_new_names_by_reload_and_new_workers_by_restart(
    plane: DnsDataPlane, port: int
) -> None:
    plane.apply(pool(21))
    pid = plane.status()["pid"]
    plane.reconfigure(balancer(port, names=("www.example.com", "api.example.com")))
    assert plane.apply(pool(21)) is True
    assert ask(port, "api.example.com").rcode() == dns.rcode.NOERROR
    assert plane.status()["pid"] == pid
    plane.reconfigure(balancer(port, workers=1, names=("api.example.com",)))
    assert plane.apply(pool(21)) is True
    assert ask(port).rcode() == dns.rcode.REFUSED
    assert plane.status()["pid"] != pid
    assert len(responder_pids(plane.config_path)) == 2  # the manager and one worker
    assert plane.apply(pool(21)) is False
