"""Prometheus metrics, and the HTTP endpoint that serves them beside ``/role``.

The loop only updates in-memory values; scrapes and role checks are answered on a thread of
their own, so a slow or stuck client never delays a heartbeat. What the loop owns (role, held
VIPs, when each peer was last heard) is handed over as immutable snapshots under a lock, never
read live from the election or the VIP holder, whose dicts and sets change under the loop.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import socketserver
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hapair import __version__
from hapair.clock import Clock
from hapair.core.roles import Role
from hapair.errors import RuntimeSetupError
from hapair.wire.heartbeat import RejectReason

#: The reasons the election gives for a transition. Others are folded (see transition_reason)
#: so that check names, addresses and node names never become label values.
TRANSITION_REASONS: Final = frozenset(
    {
        "no_master_heard",
        "peer_dead",
        "peer_resigned",
        "peer_fault",
        "preempt",
        "peer_is_master",
        "higher_priority_peer",
        "fitness_restored",
        "handover",
        "shutdown",
        "fault",
        "balancer_failed",
        "vip_add_failed",
    }
)
#: A pair has one peer; a few more names are tolerated (a secret shared by mistake), then folded.
MAX_PEER_LABELS: Final = 4
OVERFLOW_LABEL: Final = "_other"
#: Probe round trips: loopback connects take well under a millisecond, timeouts reach seconds.
PROBE_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Loop lateness: well under a millisecond when nothing blocks; a heartbeat interval is 20 ms+.
LATENESS_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
#: Seconds a client may stall on a socket operation before its connection is dropped.
CLIENT_TIMEOUT: Final = 2.0
#: Requests served at once (a thread each); more are refused so stalled clients cannot pile up.
MAX_CLIENTS: Final = 8


def transition_reason(reason: str) -> str:
    """The bounded label for a transition reason: known reasons as is, the others folded."""
    if reason.startswith("yield_to_"):
        return "yield_to_peer"
    # "fault: carrier_lost:eth0, gw" -> "fault"; "vip_add_failed:10.0.0.10/24" -> "vip_add_failed"
    head = reason.split(":", 1)[0].strip()
    return head if head in TRANSITION_REASONS else "other"


@dataclass(frozen=True, slots=True)
class _Snapshot:
    role: Role
    vips: tuple[str, ...]
    held: frozenset[str]
    last_seen: tuple[tuple[str, float], ...]
    now: float
    drops: tuple[tuple[str, int], ...] = ()
    link_errors: tuple[str, ...] = ()
    state_save_failures: int = 0
    control_rejected: tuple[tuple[str, int], ...] = ()


class _LiveCollector(Collector):
    """Families computed on each scrape from a snapshot: role, VIPs held, peer silence."""

    def __init__(self, snapshot: Callable[[], _Snapshot | None]) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        """The family names, without samples (lets the registry refuse duplicates)."""
        return list(self._families(None))

    def collect(self) -> Iterable[Metric]:
        """The families with their current values."""
        return list(self._families(self._snapshot()))

    @staticmethod
    def _families(snap: _Snapshot | None) -> Iterator[Metric]:
        role = GaugeMetricFamily(
            "hapair_role", "1 for this node's current role, 0 for the others", labels=["role"]
        )
        held = GaugeMetricFamily(
            "hapair_vip_held", "1 while this node holds the configured VIP", labels=["vip"]
        )
        seen = GaugeMetricFamily(
            "hapair_peer_last_seen_seconds",
            "Seconds since the last heartbeat accepted from the peer",
            labels=["peer"],
        )
        dropped = CounterMetricFamily(
            "hapair_heartbeat_dropped",
            "Datagrams the kernel dropped on a heartbeat link's socket (filter, full queue)",
            labels=["link"],
        )
        link_error = GaugeMetricFamily(
            "hapair_heartbeat_link_error",
            "1 while a configured heartbeat link has no socket (no route, cannot bind)",
            labels=["link"],
        )
        save_failures = CounterMetricFamily(
            "hapair_state_save_failures",
            "Writes of the durable state file that failed (the state lives on in memory)",
        )
        control_rejected = CounterMetricFamily(
            "hapair_control_rejected",
            "Control socket requests refused, by kind (access, malformed, oversized, busy...)",
            labels=["kind"],
        )
        if snap is not None:
            for link, n in snap.drops:
                dropped.add_metric([link], float(n))
            for link in snap.link_errors:
                link_error.add_metric([link], 1.0)
            save_failures.add_metric([], float(snap.state_save_failures))
            for kind, n in snap.control_rejected:
                control_rejected.add_metric([kind], float(n))
            for r in Role:
                role.add_metric([r.name], 1.0 if r is snap.role else 0.0)
            for vip in snap.vips:
                held.add_metric([vip], 1.0 if vip in snap.held else 0.0)
            for peer, at in snap.last_seen:
                seen.add_metric([peer], max(0.0, snap.now - at))
        yield from (role, held, seen, dropped, link_error, save_failures, control_rejected)


class Metrics:
    """hapair's metrics in a private registry; the loop calls the small methods, all cheap."""

    def __init__(self, *, cluster: str, node: str, clock: Clock, vips: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry()
        self._clock = clock
        self._lock = threading.Lock()
        self._role = Role.INIT
        self._vips = tuple(vips)
        self._held: frozenset[str] = frozenset()
        self._last_seen: dict[str, float] = {}
        self._backends: dict[str, bool] = {}
        self._drops: Callable[[], Mapping[str, int]] | None = None
        self._link_errors: Callable[[], Iterable[str]] | None = None
        self._save_failures: Callable[[], int] | None = None
        self._control_rejected: Callable[[], Mapping[str, int]] | None = None
        r = self.registry
        Info("hapair", "The daemon's version, cluster and node", registry=r).info(
            {"version": __version__, "cluster": cluster, "node": node}
        )
        self._transitions = Counter(
            "hapair_transitions",
            "Role transitions, by from, to and reason",
            ["from", "to", "reason"],
            registry=r,
        )
        self._sent = Counter(
            "hapair_heartbeats_sent",
            "Heartbeats sent (one per heartbeat, on all links)",
            registry=r,
        )
        self._received = Counter(
            "hapair_heartbeats_received", "Heartbeats accepted, by peer node", ["peer"], registry=r
        )
        self._rejected = Counter(
            "hapair_heartbeats_rejected", "Datagrams refused, by reason", ["reason"], registry=r
        )
        for reason in RejectReason:
            self._rejected.labels(reason.value)  # present at 0 so rate() works from the start
        self._garps = Counter(
            "hapair_garps_sent", "Gratuitous ARP and unsolicited NA frames sent", registry=r
        )
        self._conflicts = Counter(
            "hapair_vip_conflicts", "VIP conflicts answered by re-announcing", registry=r
        )
        self._backend_up = Gauge(
            "hapair_backend_up",
            "1 while the backend passes its health probes",
            ["backend"],
            registry=r,
        )
        self._backend_moves = Counter(
            "hapair_backend_transitions",
            "Backend health changes, by direction (up or down)",
            ["backend", "direction"],
            registry=r,
        )
        self._probe = Histogram(
            "hapair_probe_duration_seconds",
            "Backend health probe duration",
            ["backend"],
            buckets=PROBE_BUCKETS,
            registry=r,
        )
        self._lateness = Histogram(
            "hapair_loop_lateness_seconds",
            "How late the heartbeat loop woke for its deadlines",
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        r.register(_LiveCollector(self._snapshot))

    @property
    def role(self) -> Role:
        """The current role (read by the HTTP thread for ``/role``)."""
        return self._role

    def role_changed(self, from_: Role, to: Role, reason: str) -> None:
        """A transition happened (RoleChanged)."""
        with self._lock:
            self._role = to
        self._transitions.labels(from_.name, to.name, transition_reason(reason)).inc()

    def heartbeat_sent(self) -> None:
        """One heartbeat went out."""
        self._sent.inc()

    def heartbeat_received(self, peer: str, now: float) -> None:
        """A heartbeat from ``peer`` was accepted at monotonic time ``now``."""
        with self._lock:
            if peer in self._last_seen or len(self._last_seen) < MAX_PEER_LABELS:
                self._last_seen[peer] = now
            else:
                peer = OVERFLOW_LABEL
        self._received.labels(peer).inc()

    def heartbeat_rejected(self, reason: RejectReason) -> None:
        """A datagram was refused."""
        self._rejected.labels(reason.value).inc()

    def garp_sent(self, frames: int) -> None:
        """``frames`` announcement frames went out."""
        if frames > 0:
            self._garps.inc(frames)

    def vip_conflict(self) -> None:
        """A conflict on a held VIP was answered."""
        self._conflicts.inc()

    def set_vips(self, vips: Iterable[str]) -> None:
        """The configured VIPs (at start and on reload); they bound the ``vip`` label."""
        with self._lock:
            self._vips = tuple(vips)
            self._held &= frozenset(self._vips)

    def vips_held(self, held: Iterable[str]) -> None:
        """The VIPs this node holds now (cheap to call every step)."""
        held = frozenset(held)
        if held != self._held:
            with self._lock:
                self._held = held & frozenset(self._vips)

    def set_backends(self, names: Iterable[str], up: Iterable[str]) -> None:
        """The configured backends and which are up (at start and on reload).

        Series of backends no longer configured are removed; other names are ignored by
        backend_state and probe_observed, so the ``backend`` label stays bounded by the config.
        """
        wanted = set(names)
        healthy = set(up)
        for gone in set(self._backends) - wanted:
            del self._backends[gone]
            for child in (
                (self._backend_up, (gone,)),
                (self._probe, (gone,)),
                (self._backend_moves, (gone, "up")),
                (self._backend_moves, (gone, "down")),
            ):
                with contextlib.suppress(KeyError):
                    child[0].remove(*child[1])
        for name in sorted(wanted):
            self._backends[name] = name in healthy
            self._backend_up.labels(name).set(1.0 if name in healthy else 0.0)

    def backend_state(self, name: str, up: bool) -> None:
        """A backend's health is now ``up``; a change is counted once."""
        if name not in self._backends:
            return
        if self._backends[name] != up:
            self._backends[name] = up
            self._backend_moves.labels(name, "up" if up else "down").inc()
        self._backend_up.labels(name).set(1.0 if up else 0.0)

    def probe_observed(self, name: str, seconds: float) -> None:
        """A health probe of backend ``name`` took ``seconds``."""
        if name in self._backends:
            self._probe.labels(name).observe(seconds)

    def watch_drops(self, source: Callable[[], Mapping[str, int]]) -> None:
        """Read the kernel's per-link drop counts from ``source`` at each scrape."""
        self._drops = source

    def watch_links(self, source: Callable[[], Iterable[str]]) -> None:
        """Read the heartbeat links that have no socket from ``source`` at each scrape."""
        self._link_errors = source

    def watch_state(self, failures: Callable[[], int]) -> None:
        """Read the count of failed state-file writes from ``failures`` at each scrape."""
        self._save_failures = failures

    def watch_control(self, rejected: Callable[[], Mapping[str, int]]) -> None:
        """Read the control socket's refusals by kind from ``rejected`` at each scrape."""
        self._control_rejected = rejected

    def loop_lateness(self, seconds: float) -> None:
        """The loop woke ``seconds`` after a deadline."""
        self._lateness.observe(seconds)

    def _snapshot(self) -> _Snapshot:
        now = self._clock.now()
        drops: tuple[tuple[str, int], ...] = ()
        if self._drops is not None:
            try:  # on the scrape thread: a socket closed meanwhile must not fail the scrape
                drops = tuple(sorted(self._drops().items()))
            except (OSError, RuntimeError, ValueError):
                drops = ()
        # The loop mutates these dicts: copy them (a copy that races a mutation is retried once
        # by the next scrape, never a failed one).
        links: tuple[str, ...] = ()
        rejected: tuple[tuple[str, int], ...] = ()
        failures = 0
        with contextlib.suppress(RuntimeError):
            if self._link_errors is not None:
                links = tuple(sorted(self._link_errors()))
            if self._control_rejected is not None:
                rejected = tuple(sorted(dict(self._control_rejected()).items()))
            if self._save_failures is not None:
                failures = self._save_failures()
        with self._lock:
            return _Snapshot(
                self._role, self._vips, self._held, tuple(sorted(self._last_seen.items())), now,
                drops, links, failures, rejected,
            )  # fmt: skip


class _Server(ThreadingHTTPServer):
    # Never share the port: a second daemon must fail to bind, not split the scrapes.
    allow_reuse_port = False
    # Handler threads are joined by server_close (each bounded by CLIENT_TIMEOUT).
    daemon_threads = False
    block_on_close = True
    # socketserver's default backlog is 5: a burst of connections would hit SYN retransmits.
    request_queue_size = 4 * MAX_CLIENTS

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        metrics: Metrics,
        client_timeout: float,
    ) -> None:
        self.address_family = family
        self.metrics = metrics
        self.client_timeout = client_timeout
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            # Every slot is held (stalled clients?): refuse at once rather than queue behind them.
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall on DNS: skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # the client went away or stalled: nothing to report
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server_version = "hapair"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        assert isinstance(self.server, _Server)
        self.connection.settimeout(self.server.client_timeout)

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def _answer(self, with_body: bool) -> None:
        assert isinstance(self.server, _Server)
        metrics = self.server.metrics
        path = urlsplit(self.path).path
        if path == "/metrics":
            encode, content_type = choose_encoder(self.headers.get("Accept", ""))
            status, body = 200, encode(metrics.registry)
        elif path == "/role":
            role = metrics.role
            status = 200 if role is Role.MASTER else 503
            content_type, body = "text/plain; charset=utf-8", f"{role.name}\n".encode()
        else:
            status, content_type, body = (
                404,
                "text/plain; charset=utf-8",
                b"try /metrics or /role\n",
            )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a line per scrape or role check would flood the journal."""


class MetricsServer:
    """Serves ``/metrics`` and ``/role`` from threads of its own, outside the event loop.

    A thread per request, at most MAX_CLIENTS at once: a stalled client cannot delay the role
    check a balancer depends on, and a flood of clients costs a bounded number of threads.
    """

    def __init__(
        self,
        metrics: Metrics,
        host: str,
        port: int,
        *,
        key: str = "metrics.listen",
        client_timeout: float = CLIENT_TIMEOUT,
    ) -> None:
        self.metrics = metrics
        self.client_timeout = client_timeout
        self.host = host
        self.requested_port = port
        self.key = key
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port bound (the real one when 0 was asked for)."""
        if self._server is None:
            raise RuntimeError("the metrics server is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and start serving; RuntimeSetupError naming the config key if it cannot bind."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        host = f"[{self.host}]" if family is socket.AF_INET6 else self.host
        where = f"{host}:{self.requested_port}"
        try:
            server = _Server(
                (self.host, self.requested_port), family, self.metrics, self.client_timeout
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                hint = "another process listens there: stop it or choose another port"
            else:
                hint = exc.strerror or str(exc)
            raise RuntimeSetupError(f"{self.key}: cannot listen on {where}: {hint}") from exc
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.25},
            name="hapair-metrics",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving, close the socket and join the thread (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        if thread is not None:
            server.shutdown()  # returns once serve_forever has exited (within poll_interval)
            thread.join()
        server.server_close()
