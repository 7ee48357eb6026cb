"""hapair doctor: every check driven by fake /proc and /sys trees, fake programs, canned packets."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import struct
import threading
import time
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

import pytest

from hapair.cli import main
from hapair.config import Config
from hapair.config.load import validate_config
from hapair.core.advert import Advert
from hapair.core.roles import Role
from hapair.ops.doctor import Probes, counts, findings_json, format_findings, run_doctor
from hapair.ops.doctor_checks import (
    CLOCK_FLOOR,
    Finding,
    check_arp,
    check_balancer_sysctls,
    check_capabilities,
    check_clock,
    check_interfaces,
    check_port,
    check_routes,
    check_secret,
    check_tools,
    tools_needed,
)
from hapair.ops.doctor_peer import Capture, assess_peers, capture_heartbeats, udp_payload
from hapair.wire.heartbeat import Heartbeat, cluster_id, encode, vip_digest

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
PEER = "10.0.0.2"
HB_LINK = "192.168.0.2"
ALL_CAPS = "000001ffffffffff"
NOW = CLOCK_FLOOR + 86400.0 * 400


# ---------------------------------------------------------------- inputs ---------------------


def write_secret(tmp_path: Path, key: bytes = KEY, mode: int = 0o600) -> Path:
    path = tmp_path / "secret"
    path.write_text(base64.b64encode(key).decode() + "\n")
    path.chmod(mode)
    return path


def make_cfg(tmp_path: Path, **sections: Any) -> Config:
    data: dict[str, Any] = {
        "node": {"name": "a", "priority": 150},
        "cluster": {
            "name": "web",
            "peers": [PEER, HB_LINK],
            "secret_file": str(tmp_path / "secret"),
            "port": 694,
        },
        "vip": [{"address": "10.0.0.50/24", "interface": "eth0"}],
        "runtime": {"state_dir": str(tmp_path / "state")},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    return validate_config(data, source=str(tmp_path / "hapair.toml"), check_secret=False)


def balancer(kind: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "listen": "10.0.0.50:80",
        "backend": [{"address": "10.0.0.21:80"}],
        **extra,
    }


def fake_proc(tmp_path: Path, caps: str = ALL_CAPS, **sysctls: str) -> Path:
    """A /proc with self/status and sys/... files: sysctls as `net/ipv4/ip_forward="1"`."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True, exist_ok=True)
    (proc / "self/status").write_text(f"Name:\tpython\nCapInh:\t0\nCapEff:\t{caps}\n")
    for key, value in sysctls.items():
        path = proc / "sys" / key.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return proc


def set_sysctl(proc: Path, key: str, value: int) -> None:
    path = proc / "sys" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")


def fake_link(
    sys_root: Path, name: str, *, up: bool = True, carrier: str | None = "1", oper: str = "up"
) -> None:
    base = sys_root / "class/net" / name
    base.mkdir(parents=True, exist_ok=True)
    (base / "flags").write_text("0x1003\n" if up else "0x1002\n")
    (base / "operstate").write_text(oper + "\n")
    if carrier is not None:
        (base / "carrier").write_text(carrier + "\n")


def heartbeat(
    *,
    node: str = "b",
    cluster: str = "web",
    vips: tuple[str, ...] = ("10.0.0.50/24",),
    role: Role = Role.MASTER,
    key: bytes = KEY,
) -> bytes:
    hb = Heartbeat(
        cluster_id=cluster_id(cluster),
        node=node,
        run=0x5EED,
        seq=17,
        challenge=0xC0FFEE,
        echo=0,
        advert=Advert(role, 100, 90, False, 3, 200, vip_digest(vips)),
    )
    return encode(hb, key)


def levels(findings: list[Finding]) -> list[str]:
    return [f.level for f in findings]


def only(findings: list[Finding], check: str) -> list[Finding]:
    return [f for f in findings if f.check == check]


# ---------------------------------------------------------------- capabilities ---------------


@pytest.mark.parametrize(
    ("caps", "unprivileged", "level", "named"),
    [
        (ALL_CAPS, "1024", "ok", "CAP_NET_BIND_SERVICE"),
        ("0000000000003000", "1024", "error", "CAP_NET_BIND_SERVICE"),  # 694 is privileged
        ("0000000000003000", "0", "ok", "CAP_NET_RAW"),  # every port unprivileged here
        ("0000000000001000", "0", "error", "CAP_NET_RAW"),
        ("0000000000000000", "1024", "error", "CAP_NET_ADMIN"),
    ],
)
def test_capabilities_come_from_capeff(
    tmp_path: Path, caps: str, unprivileged: str, level: str, named: str
) -> None:
    proc = fake_proc(tmp_path, caps, net__ipv4__ip_unprivileged_port_start=unprivileged)
    [finding] = check_capabilities(make_cfg(tmp_path), proc)
    assert finding.level == level and named in finding.message
    if level == "error":
        assert finding.fix is not None and "AmbientCapabilities=" in finding.fix


def test_unreadable_status_means_no_capabilities(tmp_path: Path) -> None:
    [finding] = check_capabilities(make_cfg(tmp_path), tmp_path / "nowhere")
    assert finding.level == "error" and "CAP_NET_ADMIN" in finding.message


# ---------------------------------------------------------------- interfaces -----------------


def test_an_interface_up_with_carrier_is_ok(tmp_path: Path) -> None:
    fake_link(tmp_path, "eth0")
    [finding] = check_interfaces(make_cfg(tmp_path), tmp_path)
    assert finding.level == "ok" and "eth0 is up with carrier" in finding.message


def test_an_interface_set_down_is_an_error_with_the_ip_link_fix(tmp_path: Path) -> None:
    fake_link(tmp_path, "eth0", up=False, carrier=None, oper="down")  # carrier: EINVAL
    [finding] = check_interfaces(make_cfg(tmp_path), tmp_path)
    assert finding.level == "error" and "administratively down" in finding.message
    assert finding.fix == "ip link set dev eth0 up"


@pytest.mark.parametrize(("carrier", "oper"), [("0", "down"), ("1", "lowerlayerdown")])
def test_no_carrier_is_an_error(tmp_path: Path, carrier: str, oper: str) -> None:
    fake_link(tmp_path, "eth0", carrier=carrier, oper=oper)
    [finding] = check_interfaces(make_cfg(tmp_path), tmp_path)
    assert finding.level == "error" and "no carrier" in finding.message
    assert finding.fix is not None and "LOWER_UP" in finding.fix


def test_a_missing_interface_names_the_ones_there_are(tmp_path: Path) -> None:
    fake_link(tmp_path, "ens3")
    fake_link(tmp_path, "lo", oper="unknown")
    [finding] = check_interfaces(make_cfg(tmp_path), tmp_path)
    assert finding.level == "error" and "vip[0].interface" in finding.message
    assert finding.fix is not None and "ens3, lo" in finding.fix


def test_each_interface_is_checked_once(tmp_path: Path) -> None:
    fake_link(tmp_path, "eth0")
    vips = [
        {"address": "10.0.0.50/24", "interface": "eth0"},
        {"address": "10.0.0.51/24", "interface": "eth0"},
    ]
    assert len(check_interfaces(make_cfg(tmp_path, vip=vips), tmp_path)) == 1


# ---------------------------------------------------------------- sysctls --------------------


@pytest.mark.parametrize(
    ("section", "sysctls", "level", "text"),
    [
        (None, {}, "ok", "no [balancer]"),
        (balancer("nat"), {"net/ipv4/ip_forward": 0}, "error", "ip_forward"),
        (balancer("nat"), {"net/ipv4/ip_forward": 1}, "ok", "net.ipv4.ip_forward = 1"),
        (balancer("proxy"), {"net/ipv4/ip_nonlocal_bind": 0}, "error", "ip_nonlocal_bind"),
        (balancer("proxy"), {"net/ipv4/ip_nonlocal_bind": 1}, "ok", "ip_nonlocal_bind = 1"),
        (balancer("redirect"), {}, "error", "ip_nonlocal_bind"),
        (balancer("redirect", mode="cold"), {}, "ok", "cold mode"),
        (balancer("proxy", proxy={"engine": "haproxy"}), {}, "ok", "transparent"),
        (balancer("dr"), {}, "ok", "hapair realserver up 10.0.0.50"),
        (balancer("dns", dns={"names": ["www.example.com"]}), {}, "ok", "IP_FREEBIND"),
    ],
)
def test_balancer_sysctls_by_kind_and_mode(
    tmp_path: Path, section: dict[str, Any] | None, sysctls: dict[str, int], level: str, text: str
) -> None:
    proc = fake_proc(tmp_path)
    for key, value in sysctls.items():
        set_sysctl(proc, key, value)
    cfg = make_cfg(tmp_path, balancer=section) if section else make_cfg(tmp_path)
    findings = check_balancer_sysctls(cfg, proc / "sys")
    assert findings[0].level == level and text in findings[0].message
    if level == "error":
        key = "net.ipv4." + text
        assert (
            findings[0].fix
            == f"sysctl -w {key}=1 && echo '{key} = 1' >> /etc/sysctl.d/90-hapair.conf"
        )


def test_nat_without_masquerade_reminds_of_the_backends_route(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, net__ipv4__ip_forward="1")
    findings = check_balancer_sysctls(make_cfg(tmp_path, balancer=balancer("nat")), proc / "sys")
    assert levels(findings) == ["ok", "ok"] and "gateway" in findings[1].message


# ---------------------------------------------------------------- ARP ------------------------


def test_a_second_interface_on_the_vip_subnet_risks_arp_flux(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    cfg = make_cfg(tmp_path)
    addresses = {
        "eth0": [IPv4Interface("10.0.0.11/24")],
        "eth1": [IPv4Interface("10.0.0.12/24")],
        "lo": [IPv4Interface("127.0.0.1/8")],
    }
    flux, accept = check_arp(cfg, addresses, proc / "sys")
    assert flux.level == "warning" and flux.message.startswith("eth1 also on 10.0.0.0/24")
    assert flux.fix is not None and "arp_ignore=1" in flux.fix and "arp_announce=2" in flux.fix
    assert accept.level == "ok" and "arp_accept on eth0 is ?" in accept.message
    # The kernel takes the larger of conf/all and conf/<if>: `all` fixes it.
    set_sysctl(proc, "net/ipv4/conf/all/arp_ignore", 1)
    set_sysctl(proc, "net/ipv4/conf/eth1/arp_announce", 2)
    set_sysctl(proc, "net/ipv4/conf/eth0/arp_accept", 1)
    flux, accept = check_arp(cfg, addresses, proc / "sys")
    assert flux.level == "ok" and "arp_accept on eth0 is 1" in accept.message


def test_arp_needs_nothing_without_another_interface_on_the_subnet(tmp_path: Path) -> None:
    addresses = {"eth0": [IPv4Interface("10.0.0.11/24")], "eth1": [IPv4Interface("192.168.0.1/30")]}
    findings = check_arp(make_cfg(tmp_path), addresses, fake_proc(tmp_path) / "sys")
    assert levels(findings) == ["ok", "ok"] and "no other interface" in findings[0].message


# ---------------------------------------------------------------- tools ----------------------


def fake_program(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def which_in(bin_dir: Path) -> Any:
    return lambda name: shutil.which(name, path=str(bin_dir))


def test_tools_needed_per_kind(tmp_path: Path) -> None:
    assert tools_needed(make_cfg(tmp_path)) == []
    assert tools_needed(make_cfg(tmp_path, balancer=balancer("nat"))) == ["nft"]
    assert tools_needed(make_cfg(tmp_path, balancer=balancer("dr"))) == ["nft", "ip"]
    assert tools_needed(make_cfg(tmp_path, balancer=balancer("redirect"))) == ["nginx"]
    haproxy = balancer("proxy", proxy={"engine": "haproxy"})
    assert tools_needed(make_cfg(tmp_path, balancer=haproxy)) == ["haproxy"]


def test_a_tool_reports_its_version_even_on_stderr(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_program(bin_dir, "nginx", 'echo "nginx version: nginx/1.22.1" >&2')
    cfg = make_cfg(tmp_path, balancer=balancer("proxy"))
    [finding] = check_tools(cfg, which_in(bin_dir))
    assert finding.level == "ok" and finding.message.endswith("nginx version: nginx/1.22.1")


def test_a_missing_tool_is_an_error_naming_the_package(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, balancer=balancer("proxy", proxy={"engine": "haproxy"}))
    [finding] = check_tools(cfg, which_in(tmp_path / "empty"))
    assert finding.level == "error" and finding.fix == "apt-get install haproxy"


def test_a_tool_whose_version_fails_is_a_warning(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_program(bin_dir, "nft", 'echo "nft: kernel says no" >&2; exit 1')
    fake_program(bin_dir, "ip", 'echo "ip utility, iproute2-6.1.0"')
    findings = check_tools(make_cfg(tmp_path, balancer=balancer("dr")), which_in(bin_dir))
    assert levels(findings) == ["warning", "ok"]
    assert "kernel says no" in findings[0].message and "iproute2-6.1.0" in findings[1].message


def test_a_configured_engine_binary_must_be_executable(tmp_path: Path) -> None:
    binary = tmp_path / "nginx"
    binary.write_text("not a program")
    cfg = make_cfg(tmp_path, balancer=balancer("proxy", proxy={"binary": str(binary)}))
    [finding] = check_tools(cfg, which_in(tmp_path / "empty"))
    assert finding.level == "error" and "balancer.proxy.binary" in finding.message


# ---------------------------------------------------------------- secret ---------------------


def test_a_good_secret_is_ok_and_returns_the_key(tmp_path: Path) -> None:
    write_secret(tmp_path)
    findings, key = check_secret(make_cfg(tmp_path))
    assert key == KEY and levels(findings) == ["ok"] and "mode 0600" in findings[0].message


def test_a_secret_open_to_others_is_an_error_with_chmod(tmp_path: Path) -> None:
    path = write_secret(tmp_path, mode=0o644)
    findings, key = check_secret(make_cfg(tmp_path))
    assert key is None and levels(findings) == ["error"]
    assert findings[0].fix == f"chmod 600 {path}"


def test_a_missing_secret_is_an_error_with_how_to_make_one(tmp_path: Path) -> None:
    findings, key = check_secret(make_cfg(tmp_path))
    assert key is None and levels(findings) == ["error"]
    assert findings[0].fix is not None and "/dev/urandom" in findings[0].fix


def test_a_short_key_is_an_error(tmp_path: Path) -> None:
    write_secret(tmp_path, key=b"short")
    findings, key = check_secret(make_cfg(tmp_path))
    assert key is None and "decodes to 5 bytes" in findings[0].message


# ---------------------------------------------------------------- clock ----------------------


def test_clock_checks(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    assert levels(check_clock(cfg, NOW, True, 1e-9)) == ["ok"]
    assert levels(check_clock(cfg, NOW, None, 1e-9)) == ["ok"]
    [early] = check_clock(cfg, 86400.0, True, 1e-9)
    assert early.level == "warning" and "1970-01-02" in early.message
    [unsynced] = check_clock(cfg, NOW, False, 1e-9)
    assert unsynced.level == "warning" and unsynced.fix is not None
    [coarse] = check_clock(cfg, NOW, True, 0.1)  # interval 200 ms
    assert coarse.level == "warning" and "too coarse" in coarse.message


# ---------------------------------------------------------------- port, routes ---------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        port: int = s.getsockname()[1]
        return port


def test_port_free_taken_or_held_by_our_daemon(tmp_path: Path) -> None:
    port = free_port()
    cfg = make_cfg(tmp_path, cluster={"port": port})
    findings, bindable = check_port(cfg, daemon_live=False)
    assert bindable and levels(findings) == ["ok"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("0.0.0.0", port))
        findings, bindable = check_port(cfg, daemon_live=False)
        assert not bindable and levels(findings) == ["error"]
        assert findings[0].fix is not None and f"sport = :{port}" in findings[0].fix
        findings, bindable = check_port(cfg, daemon_live=True)
        assert not bindable and "in use by hapair itself" in findings[0].message


def test_routes_one_missing_is_a_warning_all_missing_an_error(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    assert levels(check_routes(cfg, lambda a: True)) == ["ok"]
    assert levels(check_routes(cfg, lambda a: str(a) == PEER)) == ["warning"]
    assert levels(check_routes(cfg, lambda a: False)) == ["error", "error"]


# ---------------------------------------------------------------- peer probe -----------------


def ipv4_udp(payload: bytes, dport: int, src: str = PEER) -> bytes:
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(udp), 1, 0, 64, 17, 0,
        socket.inet_aton(src), socket.inet_aton("10.0.0.1"),
    )  # fmt: skip
    return header + udp


def test_udp_payload_from_raw_packets() -> None:
    data = heartbeat()
    assert udp_payload(ipv4_udp(data, 694), socket.AF_INET, 694) == data
    assert udp_payload(ipv4_udp(data, 695), socket.AF_INET, 694) is None
    assert udp_payload(ipv4_udp(data, 694)[:24], socket.AF_INET, 694) is None
    tcp = bytearray(ipv4_udp(data, 694))
    tcp[9] = 6
    assert udp_payload(bytes(tcp), socket.AF_INET, 694) is None
    # IPv6 raw sockets start at the UDP header.
    udp6 = struct.pack("!HHHH", 40000, 694, 8 + len(data), 0) + data
    assert udp_payload(udp6, socket.AF_INET6, 694) == data
    assert udp_payload(udp6 + b"trailer", socket.AF_INET6, 694) == data


def capture(*datagrams: tuple[bytes, str]) -> Capture:
    return Capture(tuple(datagrams), "listened on UDP 694", 1.0)


def test_the_peer_heard_on_both_links_is_ok(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    findings = assess_peers(cfg, KEY, capture((heartbeat(), PEER), (heartbeat(), HB_LINK)), NOW)
    assert levels(findings) == ["ok"] * 3
    assert "b answers from 10.0.0.2: authenticated heartbeat, MASTER" in findings[0].message
    assert [f.check for f in findings] == ["peer", "peer", "vip-set"]


def test_silence_is_a_warning_not_started_yet(tmp_path: Path) -> None:
    findings = assess_peers(make_cfg(tmp_path), KEY, capture(), NOW)
    assert levels(findings) == ["warning"] * 3
    assert "peer not answering (not started yet?)" in findings[0].message
    assert only(findings, "vip-set")[0].message.startswith("not compared")


def test_one_silent_link_is_called_broken(tmp_path: Path) -> None:
    findings = assess_peers(make_cfg(tmp_path), KEY, capture((heartbeat(), PEER)), NOW)
    assert levels(only(findings, "peer")) == ["ok", "warning"]
    assert "this heartbeat link is broken" in findings[1].message


def test_another_key_is_an_error_naming_the_secret(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    findings = assess_peers(cfg, KEY, capture((heartbeat(key=OTHER_KEY), PEER)), NOW)
    error = findings[0]
    assert error.level == "error" and str(cfg.cluster.secret_file) in error.message
    assert error.fix is not None and error.fix.startswith(f"scp -p {cfg.cluster.secret_file}")


@pytest.mark.parametrize(
    ("packet", "text"),
    [
        (heartbeat(cluster="other"), "cluster.name is not 'web'"),
        (heartbeat(node="a"), "this node's own name"),
    ],
)
def test_configuration_mismatches_are_errors(tmp_path: Path, packet: bytes, text: str) -> None:
    findings = assess_peers(make_cfg(tmp_path), KEY, capture((packet, PEER)), NOW)
    assert findings[0].level == "error" and text in findings[0].message


def test_sources_outside_cluster_peers_are_reported(tmp_path: Path) -> None:
    heard = capture((heartbeat(), "10.0.0.3"), (heartbeat(key=OTHER_KEY), "10.0.0.4"))
    findings = only(assess_peers(make_cfg(tmp_path), KEY, heard, NOW), "peer")
    assert levels(findings) == ["warning", "warning", "ok", "warning"]
    assert "while the peer is heard from 10.0.0.3, 10.0.0.4" in findings[0].message
    assert "b is also heard from 10.0.0.3, which is not in cluster.peers" in findings[2].message
    assert "10.0.0.4 (not a configured peer) fail authentication" in findings[3].message


def test_something_else_on_the_port_is_a_warning(tmp_path: Path) -> None:
    findings = assess_peers(make_cfg(tmp_path), KEY, capture((b"hello", PEER)), NOW)
    assert findings[0].level == "warning" and "not hapair heartbeats" in findings[0].message


def test_without_a_key_nothing_is_authenticated(tmp_path: Path) -> None:
    findings = assess_peers(make_cfg(tmp_path), None, capture((heartbeat(), PEER)), NOW)
    assert findings[0].level == "warning" and "without a usable key" in findings[0].message


def test_a_different_vip_set_is_an_error(tmp_path: Path) -> None:
    packet = heartbeat(vips=("10.0.0.50/24", "10.0.0.51/24"))
    findings = assess_peers(make_cfg(tmp_path), KEY, capture((packet, PEER)), NOW)
    [vips] = only(findings, "vip-set")
    assert vips.level == "error" and "10.0.0.50/24" in vips.message


def test_the_prefix_length_counts_in_the_vip_set(tmp_path: Path) -> None:
    packet = heartbeat(vips=("10.0.0.50/32",))
    findings = assess_peers(make_cfg(tmp_path), KEY, capture((packet, PEER)), NOW)
    assert only(findings, "vip-set")[0].level == "error"


def test_heartbeats_give_no_peer_clock_finding(tmp_path: Path) -> None:
    # Protocol v2 carries no time: whatever our wall clock says, no clock finding is made.
    for wall in (0.0, NOW, NOW + 10**9):
        findings = assess_peers(make_cfg(tmp_path), KEY, capture((heartbeat(), PEER)), wall)
        assert only(findings, "clock") == []


def test_a_version_1_peer_is_named_as_such(tmp_path: Path) -> None:
    v1 = b"HAPR\x01" + bytes(115)  # a version 1 packet is 120 bytes
    findings = assess_peers(make_cfg(tmp_path), KEY, capture((v1, PEER)), NOW)
    assert findings[0].level == "error" and "version 2" in findings[0].message


def test_no_capture_is_a_warning(tmp_path: Path) -> None:
    unavailable = Capture(unavailable="UDP 694 is taken")
    [finding] = assess_peers(make_cfg(tmp_path), KEY, unavailable, NOW)
    assert finding.level == "warning" and "not probed" in finding.message


def test_capture_listens_on_the_port_and_stops_once_every_peer_spoke(tmp_path: Path) -> None:
    port = free_port()
    # A loopback peer is refused by the config loader; this capture test needs one.
    valid = make_cfg(tmp_path, cluster={"port": port})
    loopback = valid.cluster.model_copy(update={"peers": (IPv4Address("127.0.0.1"),)})
    cfg = valid.model_copy(update={"cluster": loopback})

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(heartbeat(), ("127.0.0.1", port))

    timer = threading.Timer(0.1, send)
    timer.start()
    try:
        start = time.monotonic()
        got = capture_heartbeats(cfg, port_free=True, raw_ok=False, wait=5.0)
        assert time.monotonic() - start < 4.0
    finally:
        timer.cancel()
    assert got.datagrams == ((heartbeat(), "127.0.0.1"),) and got.unavailable is None
    taken = capture_heartbeats(cfg, port_free=False, raw_ok=False, wait=0.1)
    assert taken.unavailable is not None and "CAP_NET_RAW" in taken.unavailable


# ---------------------------------------------------------------- the whole run --------------


def healthy_probes(tmp_path: Path, *datagrams: tuple[bytes, str]) -> Probes:
    proc = fake_proc(tmp_path)
    fake_link(tmp_path / "sys", "eth0")

    def canned(cfg: Config, *, port_free: bool, raw_ok: bool, wait: float) -> Capture:
        assert raw_ok and not port_free and wait == 1.0
        return capture(*datagrams)

    return Probes(
        proc=proc,
        sys=tmp_path / "sys",
        which=which_in(tmp_path / "empty"),
        addresses=lambda: {"eth0": [IPv4Interface("10.0.0.11/24")]},
        has_route=lambda a: True,
        wall=lambda: NOW,
        synced=lambda: True,
        daemon_live=lambda cfg: True,
        capture=canned,
    )


def test_a_healthy_node_has_no_warning(tmp_path: Path) -> None:
    write_secret(tmp_path)
    probes = healthy_probes(tmp_path, (heartbeat(), PEER), (heartbeat(), HB_LINK))
    findings = run_doctor(make_cfg(tmp_path), probes)
    assert counts(findings) == {"ok": len(findings), "warning": 0, "error": 0}
    checks = [f.check for f in findings]
    for check in ("capabilities", "secret", "interface", "sysctl", "arp", "tools", "clock"):
        assert check in checks
    assert checks[-3:] == ["peer", "peer", "vip-set"]
    report = findings_json(make_cfg(tmp_path), findings)
    assert report["ok"] and report["node"] == "a"
    assert json.loads(json.dumps(report))["findings"][0]["check"] == "capabilities"


def test_the_report_marks_levels_and_indents_fixes(tmp_path: Path) -> None:
    probes = healthy_probes(tmp_path)  # no secret file, nothing heard
    findings = run_doctor(make_cfg(tmp_path), probes)
    text = format_findings(findings)
    assert text.splitlines()[0].startswith("[ok]    capabilities:")
    assert "[ERROR] secret: no such file" in text
    assert "\n          fix: (umask 077; head -c 32 /dev/urandom" in text
    assert "[warn]  peer: no heartbeat from 10.0.0.2 in 1.0 s" in text
    assert text.splitlines()[-1] == f"{counts(findings)['ok']} ok, 3 warning(s), 1 error(s)"
    assert not findings_json(make_cfg(tmp_path), findings)["ok"]


def test_the_cli_prints_json_and_exits_1_on_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    text = (
        '[node]\nname = "a"\npriority = 150\n\n'
        f'[cluster]\nname = "web"\npeers = ["192.0.2.2"]\nport = {port}\n'
        f'secret_file = "{tmp_path / "missing-secret"}"\n\n'
        '[[vip]]\naddress = "192.0.2.50/24"\ninterface = "lo"\n\n'
        f'[runtime]\nstate_dir = "{tmp_path}"\n'
    )
    path = tmp_path / "hapair.toml"
    path.write_text(text)
    status = main(["doctor", "-c", str(path), "--json", "--wait", "0.05"])
    report = json.loads(capsys.readouterr().out)
    assert status == 1 and not report["ok"]  # the secret file is missing
    assert any(f["check"] == "secret" and f["level"] == "error" for f in report["findings"])


def test_the_cli_exits_2_on_an_invalid_file(tmp_path: Path) -> None:
    path = tmp_path / "hapair.toml"
    path.write_text("[node]\n")
    assert main(["doctor", "-c", str(path)]) == 2
