"""The nginx and HAProxy renderers, their arithmetic, and the engine plane's pure helpers."""

from __future__ import annotations

import re
import sys
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hapair.balancer import haproxyconf, nginxconf
from hapair.balancer.engine import (
    EngineDataPlane,
    check_nonlocal_bind,
    children,
    engine_binary,
    engine_of,
    listening_inodes,
    proc_net_address,
)
from hapair.balancer.plane import Member, Pool
from hapair.config.balancer import Balancer
from hapair.errors import BalancerError

RUN = Path("/run/hapair/lab-a.balancer")
R1, R2 = ip_address("10.0.1.21"), ip_address("10.0.1.22")


def cfg(kind: str = "proxy", scheduler: str = "rr", **proxy: Any) -> Balancer:
    data: dict[str, Any] = {
        "kind": kind,
        "scheduler": scheduler,
        "listen": "10.0.0.50:8080",
        "backend": [{"address": "10.0.1.21:80", "weight": 2}, {"address": "10.0.1.22:8080"}],
    }
    if proxy:
        data["proxy"] = proxy
    return Balancer.model_validate(data)


def cfg6(kind: str = "proxy") -> Balancer:
    return Balancer.model_validate(
        {"kind": kind, "listen": "[fd00::50]:80", "backend": [{"address": "[fd00::21]:80"}]}
    )


POOL = Pool((Member(R1, 80, 2), Member(R2, 8080, 1)))


def nginx_is_well_formed(text: str) -> None:
    """Balanced braces; every other non-comment line is a directive ending in ';'."""
    depth = 0
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("{"):
            depth += 1
        elif line == "}":
            depth -= 1
        else:
            assert line.endswith(";"), line
        assert depth >= 0, line
    assert depth == 0


# -- nginx proxy -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheduler", "method"),
    [
        ("rr", None),
        ("weighted", None),
        ("random", "random;"),
        ("source-hash", "hash $remote_addr consistent;"),
    ],
)
def test_nginx_proxy_upstream_per_scheduler(scheduler: str, method: str | None) -> None:
    text = nginxconf.render(cfg(scheduler=scheduler), POOL, RUN)
    nginx_is_well_formed(text)
    upstream = text.split("upstream hapair_pool {")[1].split("}")[0].strip().splitlines()
    lines = [line.strip() for line in upstream]
    expected = [
        *([method] if method else []),
        "server 10.0.1.21:80 weight=2 max_fails=0;",
        "server 10.0.1.22:8080 weight=1 max_fails=0;",
        "keepalive 32;",  # after the method: nginx requires it
    ]
    assert lines == expected
    assert "ip_hash" not in text


def test_nginx_proxy_is_self_contained_and_passes_the_client_on() -> None:
    text = nginxconf.render(cfg(connect_timeout="1500ms", timeout="30s", retries=3), POOL, RUN)
    for directive in (
        "daemon off;",
        "master_process on;",
        "worker_processes auto;",
        f'pid "{RUN}/nginx.pid";',
        "error_log stderr warn;",
        "access_log off;",
        f'proxy_temp_path "{RUN}/nginx-temp/proxy";',
        f'client_body_temp_path "{RUN}/nginx-temp/client_body";',
        "listen 10.0.0.50:8080;",
        "proxy_pass http://hapair_pool;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_set_header Host $hapair_host;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_next_upstream error timeout;",
        "proxy_next_upstream_tries 4;",
        "proxy_connect_timeout 1500ms;",
        "proxy_read_timeout 30s;",
        "proxy_send_timeout 30s;",
        "worker_shutdown_timeout 40s;",
        "proxy_request_buffering off;",
        "proxy_max_temp_file_size 0;",
        '"" "10.0.0.50:8080";',  # a request without Host gets the VIP's
    ):
        assert directive in text, directive
    assert "user " not in text  # nginx's own unprivileged default for the workers


def test_nginx_workers_and_ipv6_listen() -> None:
    assert "worker_processes 3;" in nginxconf.render(cfg(workers=3), POOL, RUN)
    pool = Pool((Member(ip_address("fd00::21"), 80),))
    text = nginxconf.render(cfg6(), pool, RUN)
    assert "listen [fd00::50]:80;" in text
    assert "server [fd00::21]:80 weight=1 max_fails=0;" in text
    assert '"" "[fd00::50]";' in text


def test_nginx_marks_the_sorry_server() -> None:
    sorry = Pool((Member(ip_address("10.0.1.99"), 80),), sorry=True)
    assert "sorry server" in nginxconf.render(cfg(), sorry, RUN)
    assert "sorry server" not in nginxconf.render(cfg(), POOL, RUN)


@pytest.mark.parametrize("bad", ["relative/dir", "/run/with space", '/run/q"uote', "/run/$x"])
def test_a_run_dir_the_config_cannot_carry_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="run directory"):
        nginxconf.render(cfg(), POOL, Path(bad))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(2.0, "2s"), (0.5, "500ms"), (1.25, "1250ms"), (60.0, "60s"), (0.0, "1ms")],
)
def test_duration(seconds: float, text: str) -> None:
    assert nginxconf.duration(seconds) == text


# -- nginx redirect ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "port", "host"),
    [
        ("10.0.1.21", 80, "10.0.1.21"),
        ("10.0.1.21", 8080, "10.0.1.21:8080"),
        ("fd00::21", 80, "[fd00::21]"),
        ("fd00::21", 8443, "[fd00::21]:8443"),
    ],
)
def test_url_host(address: str, port: int, host: str) -> None:
    assert nginxconf.url_host(ip_address(address), port) == host


def split_entries(text: str) -> tuple[str, list[tuple[str, str]]]:
    match = re.search(r'split_clients "(.*)" \$hapair_target \{\n(.*?)\n    \}', text, re.S)
    assert match is not None, text
    entries = [tuple(line.split()) for line in match.group(2).splitlines()]
    return match.group(1), [(share, target.strip('";')) for share, target in entries]


@pytest.mark.parametrize(
    ("scheduler", "key"), [("weighted", "${request_id}"), ("source-hash", "${remote_addr}")]
)
def test_redirect_splits_by_weight(scheduler: str, key: str) -> None:
    text = nginxconf.render(cfg("redirect", scheduler), POOL, RUN)
    nginx_is_well_formed(text)
    found_key, entries = split_entries(text)
    assert found_key == key
    assert entries == [("66.67%", "http://10.0.1.21"), ("*", "http://10.0.1.22:8080")]
    assert "return 302 $hapair_target$request_uri;" in text
    assert "upstream" not in text and "proxy_pass" not in text


def test_redirect_random_is_even_whatever_the_weights_say() -> None:
    pool = Pool(tuple(Member(ip_address(f"10.0.1.{i}"), 80) for i in (1, 2, 3)))
    _, entries = split_entries(nginxconf.render(cfg("redirect", "random"), pool, RUN))
    assert [share for share, _ in entries] == ["33.34%", "33.33%", "*"]


def test_redirect_rr_rotates_on_the_connection_counter() -> None:
    pool = Pool(tuple(Member(ip_address(f"10.0.1.{i}"), 80) for i in (1, 2, 3)))
    text = nginxconf.render(cfg("redirect", "rr"), pool, RUN)
    nginx_is_well_formed(text)
    assert "map 00$connection $hapair_tail {" in text
    table = dict(re.findall(r'^ {8}(\d{3}) "http://([0-9.]+)";$', text, re.M))
    default = re.search(r'default "http://([0-9.]+)";', text)
    assert default is not None and default.group(1) == "10.0.1.1"
    slot = {f"{v:03d}": table.get(f"{v:03d}", "10.0.1.1") for v in range(1000)}
    assert [slot[f"{v:03d}"] for v in range(6)] == ["10.0.1.1", "10.0.1.2", "10.0.1.3"] * 2
    assert all(slot[f"{v:03d}"] == f"10.0.1.{v % 3 + 1}" for v in range(1000))


def test_redirect_to_one_backend_needs_no_choice() -> None:
    pool = Pool((Member(ip_address("fd00::21"), 8080),))
    text = nginxconf.render(cfg6("redirect"), pool, RUN)
    assert "return 302 http://[fd00::21]:8080$request_uri;" in text
    assert "split_clients" not in text and "map " not in text


@pytest.mark.parametrize(
    ("weights", "shares"),
    [
        ([1], [10000]),
        ([1, 1], [5000, 5000]),
        ([2, 1], [6667, 3333]),
        ([1, 1, 1], [3334, 3333, 3333]),
        ([1, 1, 1, 1, 1, 1], [1667, 1667, 1667, 1667, 1666, 1666]),
        ([1, 100000], [1, 9999]),  # the floor of one keeps a tiny weight in the pool
        ([1000, 1, 1], [9980, 10, 10]),
    ],
)
def test_split_shares(weights: list[int], shares: list[int]) -> None:
    assert nginxconf.split_shares(weights) == shares


@given(st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=60))
def test_split_shares_sum_to_the_whole_and_stay_near_the_weights(weights: list[int]) -> None:
    shares = nginxconf.split_shares(weights)
    assert sum(shares) == 10000 and min(shares) >= 1
    total = sum(weights)
    for w, s in zip(weights, shares, strict=True):
        exact = w * 10000 / total
        assert abs(s - exact) < 1 or (exact < 1 and s == 1), (weights, shares)


def test_percent() -> None:
    assert [nginxconf.percent(b) for b in (6667, 5, 10000)] == ["66.67%", "0.05%", "100.00%"]


# -- HAProxy -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ([1, 1], [1, 1]),
        ([2, 1], [2, 1]),
        ([200, 100], [2, 1]),
        ([256, 1], [256, 1]),
        ([1000, 500, 3], [256, 128, 1]),  # scaled: HAProxy stops at 256
        ([1000, 1], [256, 1]),
    ],
)
def test_haproxy_weights(weights: list[int], expected: list[int]) -> None:
    assert haproxyconf.haproxy_weights(weights) == expected


@pytest.mark.parametrize(
    ("scheduler", "balance"),
    [
        ("rr", ["balance roundrobin"]),
        ("weighted", ["balance roundrobin"]),
        ("random", ["balance random(1)"]),
        ("source-hash", ["balance source", "hash-type consistent"]),
    ],
)
def test_haproxy_balance(scheduler: str, balance: list[str]) -> None:
    text = haproxyconf.render(cfg(scheduler=scheduler, engine="haproxy"), POOL, RUN)
    backend = [line.strip() for line in text.split("\nbackend hapair_pool\n")[1].splitlines()]
    assert backend == [
        *balance,
        "server b1 10.0.1.21:80 id 1 weight 2",
        "server b2 10.0.1.22:8080 id 2 weight 1",
    ]


def test_haproxy_global_defaults_and_frontend() -> None:
    c = cfg(engine="haproxy", connect_timeout="250ms", timeout="20s", retries=1, workers=4)
    text = haproxyconf.render(c, POOL, RUN, drop_to=(65534, 65534))
    for line in (
        f'pidfile "{RUN}/haproxy.pid"',
        "maxconn 4096",
        "nbthread 4",
        "hard-stop-after 30s",
        "uid 65534",
        "gid 65534",
        "mode http",
        "option forwardfor",
        "option redispatch 1",
        "retries 1",
        "timeout connect 250ms",
        "timeout client 20s",
        "timeout server 20s",
        "bind 10.0.0.50:8080 transparent",
        "http-request set-header X-Real-IP %[src]",
    ):
        assert f"    {line}\n" in text, line
    assert " check" not in text  # hapair's probes decide membership
    default = haproxyconf.render(cfg(engine="haproxy"), POOL, RUN)
    assert "nbthread" not in default and "uid " not in default and "daemon" not in default


def test_haproxy_server_ids_follow_the_configured_list() -> None:
    # r1 left the pool: r2 keeps id 2, so the consistent hash keeps r2's clients.
    only_r2 = Pool((Member(R2, 8080, 1),))
    text = haproxyconf.render(cfg("proxy", "source-hash", engine="haproxy"), only_r2, RUN)
    assert "server b2 10.0.1.22:8080 id 2 weight 1" in text
    sorry = Pool((Member(ip_address("10.0.1.99"), 80),), sorry=True)
    text = haproxyconf.render(cfg(engine="haproxy"), sorry, RUN)
    assert "server b3 10.0.1.99:80 id 3 weight 1" in text and "sorry server" in text


def test_haproxy_ipv6() -> None:
    pool = Pool((Member(ip_address("fd00::21"), 80),))
    text = haproxyconf.render(cfg6(), pool, RUN)
    assert "bind [fd00::50]:80 transparent" in text
    assert "server b1 [fd00::21]:80 id 1 weight 1" in text


# -- the engine plane's helpers ----------------------------------------------------------------

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 32000A0A:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1
   1: 32000A0A:1F90 6400000A:D431 01 00000000:00000000 00:00000000 00000000     0        0 4343 1
   2: 0100007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 000000FD000000000000000050000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0 100 0 0 10 0
"""  # noqa: E501


@pytest.mark.skipif(sys.byteorder != "little", reason="sample tables are from a little-endian host")
def test_listening_sockets_from_proc_net_tcp() -> None:
    vip = ip_address("10.10.0.50")
    assert proc_net_address(vip) == "32000A0A"
    assert listening_inodes(TCP, vip, 8080) == {"4242"}  # not the established one
    assert listening_inodes(TCP, vip, 80) == set()
    assert listening_inodes(TCP, ip_address("127.0.0.1"), 53) == {"4444"}
    assert listening_inodes(TCP6, ip_address("fd00::50"), 80) == {"777"}


def test_children_reads_the_parent_from_proc(tmp_path: Path) -> None:
    for pid, comm, ppid in ((10, "nginx", 1), (11, "nginx: worker", 10), (12, "odd) (x", 10)):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1\n")
    (tmp_path / "self").mkdir()
    assert children(10, tmp_path) == {11, 12}
    assert children(11, tmp_path) == set()


@pytest.mark.parametrize(("version", "listen"), [(4, "10.0.0.50:80"), (6, "[fd00::50]:80")])
def test_hot_nginx_needs_nonlocal_bind(tmp_path: Path, version: int, listen: str) -> None:
    backend = "10.0.1.21:80" if version == 4 else "[fd00::21]:80"
    c = Balancer.model_validate(
        {"kind": "proxy", "listen": listen, "backend": [{"address": backend}]}
    )
    key = tmp_path / f"ipv{version}" / "ip_nonlocal_bind"
    key.parent.mkdir()
    key.write_text("0\n")
    with pytest.raises(BalancerError) as info:
        check_nonlocal_bind(c, tmp_path)
    message = str(info.value)
    assert f"sysctl -w net.ipv{version}.ip_nonlocal_bind=1" in message
    assert 'balancer.mode = "cold"' in message
    key.write_text("1\n")
    check_nonlocal_bind(c, tmp_path)


def test_engine_of_and_a_configured_binary(tmp_path: Path) -> None:
    assert engine_of(cfg("redirect")) == "nginx"
    assert engine_of(cfg(engine="haproxy")) == "haproxy"
    with pytest.raises(BalancerError, match=r"balancer\.proxy\.binary: /nonexistent/nginx"):
        engine_binary(cfg(binary="/nonexistent/nginx"))
    fake = tmp_path / "nginx"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    assert engine_binary(cfg(binary=str(fake))) == str(fake)


@pytest.mark.parametrize(
    ("kind", "engine", "message"),
    [
        ("proxy", "nginx", 'balancer.proxy.engine = "nginx" needs nginx, which is not installed'),
        ("proxy", "haproxy", "install package haproxy, or set balancer.proxy.binary"),
        ("redirect", None, 'balancer.kind = "redirect" needs nginx, which is not installed'),
    ],
)
def test_a_missing_engine_names_the_setting_and_the_package(
    tmp_path: Path, kind: str, engine: str | None, message: str
) -> None:
    c = cfg(kind, engine=engine) if engine else cfg(kind)
    with pytest.raises(BalancerError) as info:
        engine_binary(c, search=str(tmp_path))
    assert message in str(info.value)
    assert "install package" in str(info.value)


def test_a_refused_configuration_changes_nothing(tmp_path: Path) -> None:
    fake = tmp_path / "nginx"
    fake.write_text('#!/bin/sh\necho "nginx: [emerg] forced failure" >&2\nexit 1\n')
    fake.chmod(0o755)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "nginx.conf").write_text("the served file\n")
    plane = EngineDataPlane(cfg(binary=str(fake)), run_dir=run_dir)
    with pytest.raises(BalancerError, match=r"nginx refused the new configuration: .*forced"):
        plane.apply(POOL)
    assert (run_dir / "nginx.conf").read_text() == "the served file\n"
    assert sorted(p.name for p in run_dir.iterdir()) == ["nginx-temp", "nginx.conf"]
    assert plane.status()["serving"] is False and plane.status()["pid"] is None


def test_remove_from_a_fresh_instance_is_idempotent(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "nginx-temp" / "proxy").mkdir(parents=True)
    (run_dir / "nginx.conf").write_text("x")
    (run_dir / "nginx.pid").write_text("999999999\n")  # a pid that cannot be ours
    plane = EngineDataPlane(cfg(), run_dir=run_dir)
    assert plane.remove() is True
    assert not run_dir.exists()
    assert plane.remove() is False
    assert plane.supervise(0.0) is None


def test_children_prefers_the_kernels_list_of_each_task(tmp_path: Path) -> None:
    for tid, kids in ((10, "11 12 "), (13, "14\n")):
        task = tmp_path / "10" / "task" / str(tid)
        task.mkdir(parents=True)
        (task / "children").write_text(kids)
    assert children(10, tmp_path) == {11, 12, 14}


def test_children_skips_a_task_that_vanished_instead_of_scanning_every_process(
    tmp_path: Path,
) -> None:
    (tmp_path / "10" / "task" / "10").mkdir(parents=True)
    (tmp_path / "10" / "task" / "10" / "children").write_text("11")
    (tmp_path / "10" / "task" / "15").mkdir()  # exited: its children file is gone
    (tmp_path / "99").mkdir()  # the scan would find this one
    (tmp_path / "99" / "stat").write_text("99 (x) S 10 99 99 0 -1\n")
    assert children(10, tmp_path) == {11}
