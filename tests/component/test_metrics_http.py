"""The real metrics endpoint on loopback: scraped over HTTP, parsed by prometheus-client itself."""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from hapair.core.roles import Role
from hapair.errors import RuntimeSetupError
from hapair.ops.metrics import MAX_CLIENTS, Metrics, MetricsServer
from hapair.testing.clock import FakeClock
from hapair.wire.heartbeat import RejectReason

VIP = "10.0.0.10/24"
TIMEOUT = 0.5  # the client timeout of the servers under test (CLIENT_TIMEOUT in production)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def metrics(clock: FakeClock) -> Metrics:
    return Metrics(cluster="web", node="a", clock=clock, vips=[VIP])


@pytest.fixture
def server(metrics: Metrics) -> Iterator[MetricsServer]:
    before = set(threading.enumerate())
    srv = MetricsServer(metrics, "127.0.0.1", 0, client_timeout=TIMEOUT)
    srv.start()
    yield srv
    srv.close()
    assert set(threading.enumerate()) <= before, "the metrics server left a thread running"


def get(
    srv: MetricsServer, path: str, method: str = "GET", accept: str | None = None
) -> tuple[int, str, str]:
    """(status, content type, body) of one request; error statuses are returned, not raised."""
    request = urllib.request.Request(f"http://127.0.0.1:{srv.port}{path}", method=method)
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(srv: MetricsServer) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Family name -> {sorted labels: value}, from the exposition as Prometheus reads it."""
    status, content_type, body = get(srv, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            out.setdefault(sample.name, {})[key] = sample.value
    return out


def test_a_scrape_has_every_family_with_its_values(
    server: MetricsServer, metrics: Metrics, clock: FakeClock
) -> None:
    metrics.role_changed(Role.INIT, Role.BACKUP, "higher_priority_peer")
    metrics.role_changed(Role.BACKUP, Role.MASTER, "peer_dead")
    metrics.heartbeat_sent()
    metrics.heartbeat_received("b", clock.now())
    metrics.heartbeat_rejected(RejectReason.BAD_MAC)
    metrics.garp_sent(10)
    metrics.vip_conflict()
    metrics.vips_held([VIP])
    metrics.set_backends(["web1", "web2"], up=["web1", "web2"])
    metrics.backend_state("web2", False)
    metrics.probe_observed("web1", 0.004)
    clock.advance_to(1000.75)

    s = scrape(server)

    assert s["hapair_info"] == {
        (("cluster", "web"), ("node", "a"), ("version", "0.1.0")): 1.0,
    }
    assert s["hapair_role"] == {
        (("role", "INIT"),): 0.0,
        (("role", "BACKUP"),): 0.0,
        (("role", "MASTER"),): 1.0,
        (("role", "FAULT"),): 0.0,
    }
    transitions = s["hapair_transitions_total"]
    assert transitions[(("from", "BACKUP"), ("reason", "peer_dead"), ("to", "MASTER"))] == 1.0
    assert len(transitions) == 2
    assert s["hapair_heartbeats_sent_total"] == {(): 1.0}
    assert s["hapair_heartbeats_received_total"] == {(("peer", "b"),): 1.0}
    rejected = s["hapair_heartbeats_rejected_total"]
    assert len(rejected) == len(RejectReason)
    assert rejected[(("reason", "bad_mac"),)] == 1.0
    assert s["hapair_peer_last_seen_seconds"] == {(("peer", "b"),): 0.75}
    assert s["hapair_garps_sent_total"] == {(): 10.0}
    assert s["hapair_vip_conflicts_total"] == {(): 1.0}
    assert s["hapair_vip_held"] == {(("vip", VIP),): 1.0}
    assert s["hapair_backend_up"] == {(("backend", "web1"),): 1.0, (("backend", "web2"),): 0.0}
    assert s["hapair_backend_transitions_total"] == {
        (("backend", "web2"), ("direction", "down")): 1.0
    }
    assert s["hapair_probe_duration_seconds_count"] == {(("backend", "web1"),): 1.0}
    assert s["hapair_probe_duration_seconds_bucket"][(("backend", "web1"), ("le", "0.005"))] == 1


def test_peer_age_is_fresh_on_every_scrape(
    server: MetricsServer, metrics: Metrics, clock: FakeClock
) -> None:
    metrics.heartbeat_received("b", clock.now())
    clock.advance_to(1002.0)
    assert scrape(server)["hapair_peer_last_seen_seconds"] == {(("peer", "b"),): 2.0}
    clock.advance_to(1007.0)
    assert scrape(server)["hapair_peer_last_seen_seconds"] == {(("peer", "b"),): 7.0}


def test_openmetrics_is_served_when_asked_for(server: MetricsServer, metrics: Metrics) -> None:
    metrics.role_changed(Role.INIT, Role.MASTER, "no_master_heard")
    status, content_type, body = get(server, "/metrics", accept="application/openmetrics-text")
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    families = {f.name: f for f in openmetrics_families(body)}
    assert families["hapair_transitions"].type == "counter"
    master = [s for s in families["hapair_role"].samples if s.labels["role"] == "MASTER"]
    assert master[0].value == 1.0


def test_role_is_200_only_on_master(server: MetricsServer, metrics: Metrics) -> None:
    assert get(server, "/role")[0::2] == (503, "INIT\n")
    metrics.role_changed(Role.INIT, Role.BACKUP, "higher_priority_peer")
    assert get(server, "/role")[0::2] == (503, "BACKUP\n")
    metrics.role_changed(Role.BACKUP, Role.MASTER, "peer_dead")
    assert get(server, "/role")[0::2] == (200, "MASTER\n")
    assert get(server, "/role?from=haproxy")[0] == 200
    assert get(server, "/role", method="HEAD")[0::2] == (200, "")
    metrics.role_changed(Role.MASTER, Role.FAULT, "fault: carrier_lost:eth0")
    assert get(server, "/role")[0::2] == (503, "FAULT\n")
    assert get(server, "/role", method="HEAD")[0] == 503


def test_other_paths_are_404(server: MetricsServer) -> None:
    for path in ("/", "/roles", "/metrics/x", "/favicon.ico"):
        assert get(server, path)[0] == 404


def test_a_stalled_client_does_not_delay_the_role_check(server: MetricsServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)):  # connects, never sends
        time.sleep(0.05)
        started = time.monotonic()
        assert get(server, "/role")[0] == 503
        assert time.monotonic() - started < TIMEOUT / 2


def test_clients_beyond_the_cap_are_refused_then_served_again(server: MetricsServer) -> None:
    stalled = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(MAX_CLIENTS)]
    try:
        time.sleep(0.1)  # let the server accept them all
        started = time.monotonic()
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            get(server, "/role")
        assert time.monotonic() - started < TIMEOUT / 2  # refused, not queued
    finally:
        for sock in stalled:
            sock.close()
    deadline = time.monotonic() + TIMEOUT
    while True:  # the slots come back as the stalled connections end
        try:
            assert get(server, "/role")[0] == 503
            break
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException):
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_a_client_that_stalls_is_dropped_after_its_timeout(server: MetricsServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /role HTTP/1.1\r\n")  # never finishes its headers
        sock.settimeout(TIMEOUT + 2)
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server
        assert time.monotonic() - started < TIMEOUT + 1


def test_a_taken_port_is_a_clear_error_naming_the_key(metrics: Metrics) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = MetricsServer(metrics, "127.0.0.1", port)
        with pytest.raises(RuntimeSetupError, match=rf"metrics\.listen: .*127\.0\.0\.1:{port}"):
            srv.start()
        srv.close()  # harmless after a failed start


def test_two_daemons_cannot_share_the_port(server: MetricsServer, metrics: Metrics) -> None:
    second = MetricsServer(metrics, "127.0.0.1", server.port, key="metrics.listen")
    with pytest.raises(RuntimeSetupError, match="another process listens there"):
        second.start()


def test_close_stops_serving_and_joins_the_thread(metrics: Metrics) -> None:
    srv = MetricsServer(metrics, "127.0.0.1", 0)
    srv.start()
    port = srv.port
    assert any(t.name == "hapair-metrics" for t in threading.enumerate())
    srv.close()
    srv.close()  # idempotent
    assert not any(t.name == "hapair-metrics" for t in threading.enumerate())
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_ipv6_loopback(metrics: Metrics) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    srv = MetricsServer(metrics, "::1", 0)
    try:
        srv.start()
    except RuntimeSetupError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        with urllib.request.urlopen(f"http://[::1]:{srv.port}/metrics", timeout=5) as resp:
            names = {f.name for f in text_string_to_metric_families(resp.read().decode())}
        assert "hapair_role" in names
    finally:
        srv.close()
