"""The real daemons in the namespace lab: behaviours beyond the drills.

Each test builds its own lab (unique prefix), runs real ``hapair run`` processes in it and
tears everything down, even on failure. Every wait is bounded.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from hapair.core.advert import Advert
from hapair.core.roles import Role
from hapair.lab.addresses import HB4, LAN4, VIP4, VIP6
from hapair.lab.nodes import Timers
from hapair.lab.shell import wait_until
from hapair.lab.topology import Lab
from hapair.wire.heartbeat import Heartbeat, cluster_id, encode, vip_digest

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

FAST = Timers(interval=0.05, dead_after=4)


_counter = iter(range(1000))


def make_lab(**kw: object) -> Lab:
    return Lab(f"hd{os.getpid() % 10000}{next(_counter)}", **kw)  # type: ignore[arg-type]


@pytest.fixture
def lab() -> Iterator[Lab]:
    with make_lab(timers=FAST) as lab:
        yield lab


def role(lab: Lab, node: str) -> str | None:
    status = lab.hapair.status(node)
    return None if status is None else str(status["role"])


def hapair_in(
    lab: Lab, node: str, *args: str, timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", lab.ns(node), sys.executable, "-m", "hapair", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def events(lab: Lab, name: str, node: str | None = None) -> list[dict[str, object]]:
    return [
        {"ts": e.ts, **e.fields}
        for e in lab.hapair.events()
        if e.name == name and (node is None or e.node == node)
    ]


def start_pair(lab: Lab) -> None:
    lab.hapair.start("a")
    lab.hapair.start("b")
    assert wait_until(
        lambda: lab.vip_holders() == ["a"] and role(lab, "b") == "BACKUP", timeout=10, step=0.02
    )


def add_track(lab: Lab, node: str, track: str) -> None:
    """Append a ``[[track]]`` table (body ``track``) to ``node``'s configuration."""
    cfg = lab.hapair.config_path(node)
    cfg.write_text(cfg.read_text().replace("[runtime]", f"[[track]]\n{track}\n\n[runtime]"))


def set_preempt(lab: Lab, node: str, on: bool) -> None:
    path = lab.hapair.config_path(node)
    text = path.read_text()
    path.write_text(
        text.replace(f"preempt = {'false' if on else 'true'}", f"preempt = {str(on).lower()}")
    )


# -- start-up and VIP handling -------------------------------------------------------------


def test_stale_vip_from_a_crashed_run_is_removed_at_start(lab: Lab) -> None:
    lab.hapair.start("a")
    assert wait_until(lambda: lab.vip_holders() == ["a"], timeout=10, step=0.02)
    lab.exec("b", ["ip", "addr", "add", f"{VIP4}/24", "dev", "eth0"])  # what a crash leaves
    lab.hapair.start("b")
    assert wait_until(lambda: lab.vip_holders() == ["a"], timeout=5, step=0.02)
    assert events(lab, "stale_vip_removed", "b")
    assert wait_until(lambda: role(lab, "b") == "BACKUP", timeout=5, step=0.02)


def test_vip_removed_behind_the_daemons_back_is_restored(lab: Lab) -> None:
    start_pair(lab)
    lab.exec("a", ["ip", "addr", "del", f"{VIP4}/24", "dev", "eth0"])
    assert wait_until(
        lambda: lab.has_vip("a") and bool(events(lab, "vip_restored", "a")), timeout=5, step=0.02
    )
    assert events(lab, "vip_removed_externally", "a")


def test_release_removes_vips_and_is_idempotent(lab: Lab) -> None:
    lab.hapair.start("a")
    assert wait_until(lambda: lab.has_vip("a"), timeout=10, step=0.02)
    refused = hapair_in(lab, "a", "release", "-c", str(lab.hapair.config_path("a")))
    assert refused.returncode == 1 and "is running" in refused.stderr
    assert lab.has_vip("a")
    lab.hapair.kill("a")  # SIGKILL leaves the VIP configured in the kernel
    assert lab.has_vip("a")
    first = hapair_in(lab, "a", "release", "-c", str(lab.hapair.config_path("a")))
    assert first.returncode == 0, first.stderr
    assert f"removed {VIP4}/24" in first.stdout
    assert not lab.has_vip("a")
    again = hapair_in(lab, "a", "release", "-c", str(lab.hapair.config_path("a")))
    assert again.returncode == 0 and "nothing to release" in again.stdout


# -- election behaviour with real daemons ------------------------------------------------------


@pytest.mark.parametrize("preempt", [False, True])
def test_restarted_higher_node_preempts_only_when_allowed(preempt: bool) -> None:
    with make_lab(timers=FAST) as lab:
        for node in ("a", "b"):
            set_preempt(lab, node, preempt)
        lab.hapair.start("b")
        assert wait_until(lambda: lab.vip_holders() == ["b"], timeout=10, step=0.02)
        lab.hapair.start("a")  # priority 150 > 100
        if preempt:
            assert wait_until(lambda: lab.vip_holders() == ["a"], timeout=5, step=0.02)
            assert wait_until(lambda: role(lab, "b") == "BACKUP", timeout=5, step=0.02)
        else:
            time.sleep(10 * FAST.interval * FAST.dead_after)
            assert lab.vip_holders() == ["b"]
            assert role(lab, "a") == "BACKUP"


def test_ipv6_vip_fails_over_and_unsolicited_na_moves_the_client() -> None:
    with make_lab(timers=FAST, ipv6=True) as lab:
        start_pair(lab)
        assert wait_until(lambda: lab.has_vip("a", VIP6), timeout=5, step=0.02)
        poke = (
            "import socket;s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM);"
            f"s.sendto(b'x',('{VIP6}',9))"
        )
        lab.exec("c", [sys.executable, "-c", poke])

        def client_mac() -> str | None:
            out = lab.exec("c", ["ip", "-j", "-6", "neigh", "show", VIP6]).stdout
            entries = json.loads(out or "[]")
            return entries[0].get("lladdr") if entries else None

        mac_a = json.loads(lab.exec("a", ["ip", "-j", "link", "show", "eth0"]).stdout)[0]["address"]
        mac_b = json.loads(lab.exec("b", ["ip", "-j", "link", "show", "eth0"]).stdout)[0]["address"]
        assert wait_until(lambda: client_mac() == mac_a, timeout=5, step=0.02)
        lab.hapair.kill("a")
        lab.set_host_links("a", up=False)  # a dead host: it cannot answer anything
        assert wait_until(lambda: lab.has_vip("b", VIP6), timeout=5, step=0.02)
        # The client sent nothing: only the unsolicited NA can have updated its cache.
        assert wait_until(lambda: client_mac() == mac_b, timeout=3, step=0.02)


# -- authentication and replay ----------------------------------------------------------------


def _send_from_client(lab: Lab, packets: list[bytes], dest: str, spoof: str) -> None:
    """Send from the client, forging ``spoof`` (a peer's address and port) as the source:
    the kernel filter drops anything else before the daemon sees it."""
    code = (
        "import socket,sys,binascii\n"
        "from hapair.lab.flood import udp_ipv4\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_RAW)\n"
        "s.setsockopt(socket.IPPROTO_IP,socket.IP_HDRINCL,1)\n"
        "for h in sys.argv[3:]:\n"
        "    s.sendto(udp_ipv4(sys.argv[2],sys.argv[1],694,694,binascii.unhexlify(h)),"
        "(sys.argv[1],0))\n"
    )
    lab.exec("c", [sys.executable, "-c", code, dest, spoof, *(p.hex() for p in packets)])


def test_forged_and_unproven_heartbeats_change_nothing(lab: Lab) -> None:
    start_pair(lab)
    key = base64.b64decode((lab.dir / "secret").read_text())
    cid = cluster_id(f"lab-{lab.prefix}")

    def resign(run: int, echo: int, signing_key: bytes) -> bytes:
        advert = Advert(Role.MASTER, 150, 150, True, 1, 50, vip_digest([f"{VIP4}/24"]))
        hb = Heartbeat(
            cluster_id=cid, node="a", run=run, seq=1, challenge=7, echo=echo, advert=advert
        )
        return encode(hb, signing_key)

    forged = resign(1, 0, b"\x00" * 32)  # wrong key
    # Genuine key, but a run b has not accepted that cannot echo b's challenge.
    unproven = [resign(run, echo, key) for run, echo in ((2, 0), (3, 12345))]
    garbage = [b"garbage", b"\x00" * 500, b"HAPR\x02" + bytes(200)]
    _send_from_client(lab, [forged, *unproven, *garbage], LAN4["b"], spoof=LAN4["a"])
    _send_from_client(lab, [forged], LAN4["b"], spoof=LAN4["c"])  # not a peer
    time.sleep(10 * FAST.interval)
    assert lab.vip_holders() == ["a"]
    assert role(lab, "b") == "BACKUP" and role(lab, "a") == "MASTER"
    status = lab.hapair.status("b")
    assert status is not None
    rejected = status["rejected"]
    assert isinstance(rejected, dict)
    # b has accepted a's run, so its kernel filter admits only a's address with the right size
    # and b's filter token: each of the 7 forgeries dies there (or, if one got through, in
    # decode() or the freshness check); none moves anything.
    drops = status["heartbeat_drops"]
    assert isinstance(drops, dict)
    assert drops.get(LAN4["a"], 0) + sum(rejected.values()) >= 7
    assert set(rejected) <= {"bad_mac", "unproven", "bad_magic", "oversized", "truncated"}
    # Logged once per reason, then only counted.
    reasons = [e["reason"] for e in events(lab, "heartbeat_rejected", "b")]
    assert len(reasons) == len(set(reasons))


# -- bad input and failure at start ------------------------------------------------------------


def test_missing_interface_is_a_config_error_naming_the_key(lab: Lab) -> None:
    cfg = lab.hapair.config_path("a")
    bad = cfg.with_name("bad.toml")
    bad.write_text(cfg.read_text().replace('interface = "eth0"', 'interface = "eth9"'))
    proc = hapair_in(lab, "a", "run", "-c", str(bad))
    assert proc.returncode == 2
    assert "vip[0].interface" in proc.stderr and "eth9" in proc.stderr
    assert not lab.has_vip("a")


def test_second_daemon_for_the_same_node_fails_and_leaves_the_first_alone(lab: Lab) -> None:
    lab.hapair.start("a")
    assert wait_until(lambda: lab.has_vip("a"), timeout=10, step=0.02)
    proc = hapair_in(lab, "a", "run", "-c", str(lab.hapair.config_path("a")))
    assert proc.returncode == 1
    assert "cluster.port" in proc.stderr and "in use" in proc.stderr
    assert lab.has_vip("a") and role(lab, "a") == "MASTER"


def test_without_capabilities_it_says_which_are_missing(lab: Lab) -> None:
    proc = subprocess.run(
        ["ip", "netns", "exec", lab.ns("a"), "setpriv", "--bounding-set=-net_admin,-net_raw",
         sys.executable, "-m", "hapair", "run", "-c", str(lab.hapair.config_path("a"))],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "CAP_NET_ADMIN" in proc.stderr and "CAP_NET_RAW" in proc.stderr
    assert not lab.has_vip("a")


def test_sigterm_on_master_hands_over_without_loss_and_exits_quickly(lab: Lab) -> None:
    start_pair(lab)
    t0 = time.monotonic()
    lab.hapair.terminate("a")
    took = time.monotonic() - t0
    assert took < 1.5  # the daemon exits within 1 s (plus process start-up slack)
    assert wait_until(lambda: lab.vip_holders() == ["b"], timeout=2, step=0.02)
    reasons = [e.get("reason") for e in events(lab, "role_changed", "b")]
    assert "peer_resigned" in reasons


def test_handover_cli_returns_when_peer_is_master(lab: Lab) -> None:
    start_pair(lab)
    proc = hapair_in(lab, "a", "handover", "-c", str(lab.hapair.config_path("a")))
    assert proc.returncode == 0, proc.stderr
    assert "b is MASTER" in proc.stdout
    assert lab.vip_holders() == ["b"]
    refused = hapair_in(lab, "a", "handover", "-c", str(lab.hapair.config_path("a")))
    assert refused.returncode == 1 and "not MASTER" in refused.stderr


# -- stalls, tracking, conflicts, reload ------------------------------------------------------


def test_stalled_backup_reads_pending_heartbeats_before_its_late_timer(lab: Lab) -> None:
    start_pair(lab)
    pid = lab.hapair.pids("b")[0]
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(4 * FAST.dead_time)  # b's dead timer is long overdue when it wakes
    finally:
        os.kill(pid, signal.SIGCONT)
    time.sleep(10 * FAST.interval)
    assert lab.vip_holders() == ["a"]
    assert not [e for e in events(lab, "role_changed", "b") if e["to_role"] == "MASTER"]


def test_failing_track_lowers_priority_and_the_peer_preempts(lab: Lab) -> None:
    flag = lab.dir / "a-healthy"
    flag.touch()
    add_track(
        lab,
        "a",
        f'kind = "command"\ncommand = ["/usr/bin/test", "-e", "{flag}"]\n'
        'weight = 60\ninterval = "50ms"\ntimeout = "50ms"\nrise = 1\nfall = 2',
    )
    start_pair(lab)
    flag.unlink()  # a: 150 - 60 = 90 < b's 100
    assert wait_until(lambda: lab.vip_holders() == ["b"], timeout=5, step=0.02)
    status = lab.hapair.status("a")
    assert status is not None and status["priority"] == {"base": 150, "effective": 90}
    flag.touch()  # recovered: a preempts back
    assert wait_until(lambda: lab.vip_holders() == ["a"], timeout=5, step=0.02)


def test_foreign_arp_claim_is_answered_with_a_fresh_announcement(lab: Lab) -> None:
    from hapair.net.garp import build_arp

    start_pair(lab)
    intruder = bytes.fromhex("020000bad001")
    frame = build_arp(intruder, ipaddress.IPv4Address(VIP4), "reply")
    code = (
        "import socket,sys,binascii\n"
        "s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n"
        "s.bind(('eth0',0))\n"
        "s.send(binascii.unhexlify(sys.argv[1]))\n"
    )
    lab.exec("r1", [sys.executable, "-c", code, frame.hex()])
    assert wait_until(lambda: bool(events(lab, "vip_conflict", "a")), timeout=3, step=0.02)
    conflict = events(lab, "vip_conflict", "a")[0]
    assert conflict["mac"] == "02:00:00:ba:d0:01"
    bursts = [e for e in events(lab, "garp_sent", "a") if e["burst"] == "conflict"]
    assert bursts and float(bursts[0]["ts"]) >= float(conflict["ts"])  # type: ignore[arg-type]
    assert lab.vip_holders() == ["a"]


def test_sighup_reload_applies_a_valid_file_and_keeps_the_old_on_error(lab: Lab) -> None:
    start_pair(lab)
    cfg = lab.hapair.config_path("a")
    good = cfg.read_text()
    cfg.write_text(good.replace("priority = 150", "priority = 120"))
    os.kill(lab.hapair.pids("a")[0], signal.SIGHUP)
    assert wait_until(lambda: bool(events(lab, "config_reloaded", "a")), timeout=3, step=0.02)
    status = lab.hapair.status("a")
    assert status is not None and status["priority"]["base"] == 120  # type: ignore[index]
    cfg.write_text(good.replace("priority = 150", "priority = 999"))
    os.kill(lab.hapair.pids("a")[0], signal.SIGHUP)
    assert wait_until(lambda: bool(events(lab, "config_reload_failed", "a")), timeout=3, step=0.02)
    assert "node.priority" in str(events(lab, "config_reload_failed", "a")[0]["error"])
    status = lab.hapair.status("a")
    assert status is not None and status["priority"]["base"] == 120  # type: ignore[index]
    assert lab.vip_holders() == ["a"]  # the VIP never moved


def test_unreachable_peer_is_a_runtime_error_naming_it(lab: Lab) -> None:
    cfg = lab.hapair.config_path("a")
    bad = cfg.with_name("unroutable.toml")
    text = cfg.read_text()
    start = text.index("peers = ")
    end = text.index("\n", start)
    bad.write_text(text[:start] + 'peers = ["10.254.0.1"]' + text[end:])
    proc = hapair_in(lab, "a", "run", "-c", str(bad))
    assert proc.returncode == 1
    assert "cluster.peers[0]" in proc.stderr and "10.254.0.1" in proc.stderr
    assert not lab.has_vip("a")


def test_peer_is_alive_while_any_link_carries_heartbeats(lab: Lab) -> None:
    start_pair(lab)

    def links_of_a() -> dict[str, float]:
        status = lab.hapair.status("b")
        assert status is not None
        peers = status["peers"]
        assert isinstance(peers, list) and peers
        return dict(peers[0]["links"])

    assert wait_until(lambda: set(links_of_a()) == {LAN4["a"], HB4["a"]}, timeout=3, step=0.02)
    # Cut the direct cable: the LAN still carries heartbeats, so nothing fails over.
    lab.exec("a", ["ip", "link", "set", "eth1", "down"])
    time.sleep(3 * FAST.dead_time)
    assert lab.vip_holders() == ["a"] and role(lab, "b") == "BACKUP"
    links = links_of_a()
    assert links[LAN4["a"]] < 2 * FAST.interval < FAST.dead_time < links[HB4["a"]]
    status = lab.hapair.status("b")
    assert status is not None and "replay" not in status["rejected"]  # type: ignore[operator]
    assert not events(lab, "peer_lost", "b")


def test_release_after_a_kill_hands_the_vip_to_the_peer_before_its_dead_timer() -> None:
    with make_lab(timers=Timers(interval=0.5, dead_after=5)) as lab:  # dead time > 2.5 s
        start_pair(lab)
        lab.hapair.kill("a")  # the daemon dies as MASTER; its VIP stays in the kernel
        t0 = time.time()
        proc = hapair_in(lab, "a", "release", "-c", str(lab.hapair.config_path("a")))
        assert proc.returncode == 0, proc.stderr
        assert "peer b is MASTER" in proc.stdout and f"removed {VIP4}/24" in proc.stdout
        took_over = [e for e in events(lab, "role_changed", "b") if e["to_role"] == "MASTER"]
        assert took_over and took_over[0]["reason"] == "peer_fault"
        assert float(took_over[0]["ts"]) - t0 < 2.0  # type: ignore[arg-type]
        assert lab.vip_holders() == ["b"]


@pytest.mark.parametrize(
    ("track", "break_it", "mend_it"),
    [
        (
            'kind = "interface"\ninterface = "eth1"',
            ["a", "ip", "link", "set", "eth1", "down"],
            ["a", "ip", "link", "set", "eth1", "up"],
        ),
        (
            f'kind = "gateway"\naddress = "{LAN4["r1"]}"\nmethod = "icmp"',
            ["r1", "ip", "link", "set", "eth0", "down"],
            ["r1", "ip", "link", "set", "eth0", "up"],
        ),
        (
            f'kind = "gateway"\naddress = "{LAN4["r1"]}"\nmethod = "arp"\ninterface = "eth0"',
            ["r1", "ip", "link", "set", "eth0", "down"],
            ["r1", "ip", "link", "set", "eth0", "up"],
        ),
    ],
    ids=["interface", "gateway-icmp", "gateway-arp"],
)
def test_tracked_interface_and_gateway_lower_the_priority(
    track: str, break_it: list[str], mend_it: list[str]
) -> None:
    with make_lab(timers=FAST) as lab:
        add_track(
            lab,
            "a",
            f'{track}\nweight = 60\ninterval = "200ms"\ntimeout = "200ms"\nrise = 1\nfall = 1',
        )
        start_pair(lab)
        lab.exec(break_it[0], break_it[1:])  # a: 150 - 60 = 90 < b's 100
        assert wait_until(lambda: lab.vip_holders() == ["b"], timeout=5, step=0.02)
        status = lab.hapair.status("a")
        assert status is not None and status["priority"] == {"base": 150, "effective": 90}
        lab.exec(mend_it[0], mend_it[1:])
        assert wait_until(lambda: lab.vip_holders() == ["a"], timeout=5, step=0.02)


def test_reload_adds_and_drops_vips_without_touching_the_others(lab: Lab) -> None:
    start_pair(lab)
    extra = "10.77.0.51"
    cfg = lab.hapair.config_path("a")
    original = cfg.read_text()
    cfg.write_text(
        original.replace(
            "[runtime]", f'[[vip]]\naddress = "{extra}/24"\ninterface = "eth0"\n\n[runtime]'
        )
    )
    os.kill(lab.hapair.pids("a")[0], signal.SIGHUP)
    assert wait_until(lambda: lab.has_vip("a", extra), timeout=3, step=0.02)
    assert lab.has_vip("a", VIP4)
    assert not [e for e in events(lab, "vip_released", "a")]  # the first VIP never blinked
    assert wait_until(
        lambda: bool(events(lab, "vip_set_mismatch", "b")), timeout=3, step=0.02
    )  # b has the old set
    cfg.write_text(original)
    os.kill(lab.hapair.pids("a")[0], signal.SIGHUP)
    assert wait_until(lambda: not lab.has_vip("a", extra), timeout=3, step=0.02)
    assert lab.has_vip("a", VIP4)
    released = events(lab, "vip_released", "a")
    assert [e["vip"] for e in released] == [f"{extra}/24"]
    # A new interface needs a restart: refused, old configuration kept.
    cfg.write_text(original.replace('interface = "eth0"', 'interface = "eth1"'))
    os.kill(lab.hapair.pids("a")[0], signal.SIGHUP)
    assert wait_until(lambda: bool(events(lab, "config_reload_failed", "a")), timeout=3, step=0.02)
    assert "vip[*].interface" in str(events(lab, "config_reload_failed", "a")[0]["error"])
    assert lab.has_vip("a", VIP4)
