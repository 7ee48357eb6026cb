"""The daemon process: preflight, open the I/O edges, run the node, and undo it all on exit.

Start-up is all-or-nothing: every check (config, secret, capabilities, interfaces, routes to
peers, the UDP port, the control socket) runs before anything is configured, and whatever was
opened is closed again if a later step fails. No VIP is added before the election says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
from ipaddress import ip_interface
from pathlib import Path
from typing import Any, Final

from hapair.clock import MonotonicClock
from hapair.config import Config, load_config, read_secret
from hapair.errors import BalancerError, ConfigError, HapairError, RuntimeSetupError, VipError
from hapair.log import configure, get_logger
from hapair.net.garp import Announcer
from hapair.net.routes import has_route
from hapair.net.transport import UdpTransport
from hapair.net.vip import VipManager
from hapair.net.watch import ArpWatcher, NetlinkWatcher
from hapair.ops.systemd import Notifier, status_line_from
from hapair.runtime.control import ControlServer
from hapair.runtime.loop import LoopDriver
from hapair.runtime.node import Node
from hapair.runtime.sched import enter_realtime
from hapair.runtime.state import (
    Loaded,
    PersistentState,
    StateWriter,
    ensure_lib_dir,
    load_and_repair,
)
from hapair.runtime.vipholder import remove_stale_vips
from hapair.runtime.wiring import Adapters, PeerFeed, vips_of
from hapair.runtime.worker import SWITCH_INTERVAL
from hapair.wire.heartbeat import PACKET_SIZE

CAP_NET_ADMIN: Final = 12
CAP_NET_RAW: Final = 13
#: How long `hapair maintenance` waits for the state file to be durable before answering.
PERSIST_WAIT: Final = 2.0


def effective_capabilities() -> int:
    """This process's effective capability mask (from /proc; 0 if unreadable)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def check_capabilities() -> None:
    """Fail early, by name, when the daemon could not manage addresses or raw frames."""
    caps = effective_capabilities()
    missing = [
        name
        for bit, name in ((CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_NET_RAW, "CAP_NET_RAW"))
        if not caps & (1 << bit)
    ]
    if missing:
        raise RuntimeSetupError(
            f"missing capabilities {', '.join(missing)}: run as root, or grant them "
            "(systemd: AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE)"
        )


def check_host(cfg: Config, vips: VipManager) -> None:
    """Interfaces must exist (a config problem, exit 2); peers must be routable (exit 1)."""
    problems: list[tuple[str, str]] = []
    for i, vip in enumerate(cfg.vip):
        try:
            vips.interface_index(vip.interface)
        except VipError:
            problems.append((f"vip[{i}].interface", f"no such interface {vip.interface!r} here"))
    if problems:
        raise ConfigError(cfg.source, problems)
    peers = cfg.cluster.peer_addresses  # none with "auto": discovery finds the peer later
    unroutable = [
        f"cluster.peers[{i}]: no route to {peer} from this host"
        for i, peer in enumerate(peers)
        if not has_route(peer)
    ]
    if peers and len(unroutable) == len(peers):
        raise RuntimeSetupError("; ".join(unroutable))
    for line in unroutable:
        get_logger().warning("peer_unroutable", detail=line)


class Daemon:
    """Owns the process: signals, reload, control socket, and clean shutdown."""

    def __init__(
        self, config_path: str, cfg: Config, key: bytes, notifier: Notifier | None = None
    ) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self.key = key
        self.log = get_logger()
        self.node: Node | None = None
        self.notifier = notifier or Notifier(None)
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Future[None]] = set()

    async def run(self) -> int:
        """Set up, run the node until it stops, tear down. Returns the exit status."""
        cfg = self.cfg
        async with contextlib.AsyncExitStack() as stack:
            # Netlink retries must give up well inside the failover budget.
            vips = VipManager(retry_budget=min(0.15, cfg.cluster.dead_interval / 4))
            stack.callback(vips.close)
            transport = UdpTransport(
                cfg.cluster.port, cfg.cluster.peer_addresses, packet_size=PACKET_SIZE
            )
            if cfg.cluster.peers_auto:
                transport.open_family(socket.AF_INET)  # discovery runs over IPv4
            stack.callback(transport.close)
            netlink = NetlinkWatcher()
            stack.callback(netlink.close)
            announcer = Announcer()
            stack.callback(announcer.close)
            arp: dict[str, ArpWatcher] = {}
            for ifname in sorted({v.interface for v in cfg.vip if v.address.version == 4}):
                arp[ifname] = ArpWatcher(ifname)
                stack.callback(arp[ifname].close)
            # The control socket before anything changes: a second daemon for the same node
            # must stop here, before it could remove the running daemon's VIPs.
            control = ControlServer(
                cfg.control_socket_path, self._control, cfg.runtime.control_group,
                cfg.runtime.control_admin_group, log=self.log,
            )  # fmt: skip
            await control.start()
            stack.push_async_callback(control.close)
            clock = MonotonicClock()
            metrics = None
            if cfg.metrics is not None:
                # Imported only when configured (memory); bound before anything changes.
                from hapair.ops.metrics import Metrics, MetricsServer

                metrics = Metrics(
                    cluster=cfg.cluster.name, node=cfg.node.name, clock=clock,
                    vips=[str(v.address) for v in vips_of(cfg)],
                )  # fmt: skip
                host, port = cfg.metrics.listen
                metrics.watch_drops(transport.drops)
                metrics.watch_links(lambda: tuple(transport.link_errors))
                metrics.watch_control(lambda: control.rejected)
                server = MetricsServer(metrics, str(host), port)
                server.start()
                stack.callback(server.close)
            state = await self._load_state(cfg)
            writer = self._state_writer(cfg)
            stack.push_async_callback(writer.close)  # after the last change is written
            if metrics is not None:
                metrics.watch_state(lambda: writer.failures)
            stale = remove_stale_vips(vips_of(cfg), vips)
            if stale:
                self.log.warning("stale_vip_removed", vips=stale, reason="left by an earlier run")
            mdns, feed = self._start_discovery(cfg, stack)
            balancer = None
            if cfg.balancer is not None:
                from hapair.runtime.balancing import LocalBalancer, build_plane

                plane = build_plane(cfg, self.log)
                balancer = LocalBalancer(cfg.balancer, clock.now(), plane)
                if metrics is not None:
                    metrics.set_backends(balancer.specs, balancer.board.healthy())
                stack.callback(balancer.stop)  # at exit, and if start-up fails from here on
                if cfg.balancer.mode == "hot":
                    try:
                        balancer.start()
                    except BalancerError as exc:
                        raise RuntimeSetupError(f"balancer: {exc}") from exc
                    self.log.info("balancer_started", kind=cfg.balancer.kind, mode="hot")
            node = Node(
                cfg,
                self.key,
                clock,
                Adapters(
                    transport,
                    vips,
                    announcer,
                    netlink,
                    arp,
                    balancer,
                    metrics,
                    self.notifier,
                    mdns,
                    feed,
                ),
                state,
                writer,
            )
            self.node = node
            try:
                self._install_signals()
                self.log.info(
                    "daemon_started",
                    priority=cfg.node.priority,
                    peers="auto"
                    if cfg.cluster.peers_auto
                    else [str(p) for p in cfg.cluster.peer_addresses],
                    vips=[str(v) for v in vips_of(cfg)],
                    interval=cfg.cluster.interval,
                    dead_time=round(cfg.dead_time, 4),
                )
                # Start-up made nearly every long-lived object; a full collection would walk
                # them all again, on the loop (measured: 30-50 ms pauses under balancer churn).
                gc.collect()
                gc.freeze()
                # Threads beside the loop (the balancer's worker, reload validation) must not
                # keep it waiting for the GIL for CPython's default 5 ms after each syscall.
                sys.setswitchinterval(SWITCH_INTERVAL)
                # Last, once start-up's long work is done: only this thread (the loop's) turns
                # real time; the threads and children it starts later are reset to normal.
                rt = enter_realtime(cfg.runtime.realtime_priority)
                if rt is not None:
                    log_rt = self.log.info if rt.realtime else self.log.warning
                    log_rt(rt.event, detail=rt.detail)
                self.notifier.ready(status_line_from(node.status()))
                await LoopDriver(node).run()
            finally:
                # Whatever happened, leave no VIP behind.
                for vip in vips_of(cfg):
                    with contextlib.suppress(VipError):
                        if vips.remove(vip):
                            self.log.info("vip_released", vip=str(vip.address), reason="exit")
                self.log.info("daemon_stopped")
        return 0

    async def _load_state(self, cfg: Config) -> PersistentState:
        """Read the durable state (creating its directory); repair and log a bad file.

        A directory that cannot be created or written is a start-up error naming the fix; a
        missing, unreadable or invalid file is a warning, then the defaults, written back.
        The reads and the fsync run on a thread (the control socket is already served).
        """
        path = cfg.state_file_path
        key = "runtime.state_file" if cfg.runtime.state_file else "runtime.lib_dir"
        unusable = await asyncio.to_thread(ensure_lib_dir, path.parent)
        if unusable is not None:
            raise RuntimeSetupError(f"{key}: {unusable}")
        loaded, error = await asyncio.to_thread(load_and_repair, path)
        self._log_loaded(path, loaded, error)
        return loaded.state

    def _log_loaded(self, path: Path, loaded: Loaded, error: OSError | None) -> None:
        fields: dict[str, Any] = {"path": str(path), "maintenance": loaded.state.maintenance}
        if error is not None:
            fields["repair_failed"] = str(error)
        if loaded.problem is not None:
            action = "defaults used" + ("" if error is not None else ", file rewritten")
            self.log.warning("state_file_reset", problem=loaded.problem, action=action, **fields)
        elif loaded.migrated:
            (self.log.warning if error is not None else self.log.info)(
                "state_file_migrated",
                note="an older hapair's file: maintenance kept, boot_epoch and replay marks "
                "dropped (protocol v2 keeps no freshness state)",
                **fields,
            )
        elif error is not None:
            self.log.warning("state_save_failed", **fields)

    def _state_writer(self, cfg: Config) -> StateWriter:
        path = cfg.state_file_path

        def failed(error: str, first: bool) -> None:
            if first:
                self.log.warning(
                    "state_save_failed", path=str(path), error=error,
                    note="logged once; then counted until a write succeeds",
                )  # fmt: skip

        def recovered(failures: int) -> None:
            self.log.info("state_save_recovered", path=str(path), failures=failures)

        return StateWriter(path, failed, recovered)

    def _start_discovery(
        self, cfg: Config, stack: contextlib.AsyncExitStack
    ) -> tuple[Any, PeerFeed | None]:
        """Announce this node over mDNS on the first VIP's link, if ``[discovery]`` says so,
        and with ``cluster.peers = "auto"`` watch for the peer.

        zeroconf runs on a thread of its own (it parses every mDNS packet on the LAN, which
        must never sit in front of the heartbeat timers). With static peers discovery is
        optional: a failure to start it is logged and the pair runs on; with "auto" the node
        cannot find its peer without it, so start-up fails.
        """
        if cfg.discovery is None or not cfg.discovery.announce:
            return None, None
        auto = cfg.cluster.peers_auto
        import hapair
        from hapair.core.roles import Role
        from hapair.ops import discovery, mdns

        ifname = cfg.vip[0].interface
        vip_set = set(cfg.vip_addresses)
        try:
            prefixed = mdns.interface_addresses(ifname)
            own = [a for a, _ in prefixed if a not in vip_set]
            usable = [a for a in own if not (a.version == 6 and a.is_link_local)]
            v4 = [str(a) for a in usable if a.version == 4]
            if not v4:
                raise OSError(f"no IPv4 address on {ifname}")
            zc = mdns.open_zeroconf(v4)
        except (OSError, RuntimeError, TimeoutError) as exc:
            if auto:
                raise RuntimeSetupError(
                    f'cluster.peers = "auto" needs discovery, which cannot start: {exc}'
                ) from exc
            self.log.warning("discovery_unavailable", reason=str(exc))
            return None, None
        stack.callback(zc.close)
        record = discovery.NodeRecord(
            cfg.cluster.name, cfg.node.name, Role.INIT.name, cfg.node.priority,
            hapair.__version__, cfg.cluster.port,
        )  # fmt: skip
        announcer = mdns.Announcer(zc, record, usable, log=self.log)
        stack.callback(announcer.stop, 0.3)  # a goodbye before zeroconf closes
        self.log.info("discovery_announced", service=discovery.SERVICE_TYPE, interface=ifname)
        if not auto:
            return announcer, None
        loop = asyncio.get_running_loop()

        def wake() -> None:  # on zeroconf's thread
            loop.call_soon_threadsafe(self._discovery_arrived)

        watch = mdns.PeerWatch(zc, wake)
        stack.callback(watch.close)
        finder = discovery.PeerFinder(
            me=cfg.node.name,
            own_addresses=[*own, *cfg.vip_addresses],
            networks=[ip_interface(f"{a}/{n}").network for a, n in prefixed if a not in vip_set],
            port=cfg.cluster.port,
            log=self.log,
        )
        return announcer, PeerFeed(watch, finder)

    def _discovery_arrived(self) -> None:
        if self.node is not None:
            self.node.discovery_arrived()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        # A plain handler, not the loop's: it runs as soon as the thread resumes, before the
        # late wake it explains is measured.
        signal.signal(signal.SIGCONT, self._on_cont)
        loop.add_signal_handler(signal.SIGTERM, self._on_term)
        loop.add_signal_handler(signal.SIGINT, self._on_term)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)

    def _on_cont(self, signum: int, frame: object) -> None:
        del signum, frame
        if self.node is not None:
            self.node.continued = True

    def _on_term(self) -> None:
        self.log.info("shutdown_requested")
        if self.node is not None:
            self.notifier.stopping("stopping: " + status_line_from(self.node.status()))
            self.node.shutdown()
        else:
            self.notifier.stopping("stopping")

    def _on_hup(self) -> None:
        task = asyncio.ensure_future(self._hup())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hup(self) -> None:
        result = await self.reload()
        if not result.get("ok"):
            self.log.error("config_reload_failed", error=result.get("error"))

    async def reload(self) -> dict[str, Any]:
        """Validate the file again and apply what can change live; keep the old on error.

        The balancer's part runs off the loop and is awaited here (the heartbeats go on);
        reloads run one at a time. systemd hears RELOADING=1 before and READY=1 after,
        refused or not (otherwise the unit would stay "reloading").
        """
        node = self.node
        if node is None:
            return {"ok": False, "error": "not running"}
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                return await self._apply_reload(node)
            finally:
                self.notifier.ready(status_line_from(node.status()))

    async def _apply_reload(self, node: Node) -> dict[str, Any]:
        def load() -> tuple[Config, bytes]:
            cfg = load_config(self.config_path)
            return cfg, read_secret(cfg.cluster.secret_file)

        try:
            # Off the loop: file reads (a slow disk, a FIFO) and validation take their time.
            new, key = await asyncio.to_thread(load)
        except HapairError as exc:
            return {"ok": False, "error": str(exc)}
        old = self.cfg
        fixed = [
            ("node.name", old.node.name, new.node.name),
            ("cluster.name", old.cluster.name, new.cluster.name),
            ("cluster.port", old.cluster.port, new.cluster.port),
            ("runtime", old.runtime, new.runtime),
            # The VIP set may change, but not the interfaces it lives on: carrier and ARP
            # watches are set up per interface at start.
            ("vip[*].interface", {v.interface for v in old.vip}, {v.interface for v in new.vip}),
            ("balancer", old.balancer is None, new.balancer is None),
            ("metrics", old.metrics, new.metrics),
            ("discovery", old.discovery, new.discovery),
        ]
        changed = [name for name, a, b in fixed if a != b]
        if changed:
            return {
                "ok": False,
                "error": f"{', '.join(changed)} cannot change on reload: restart the daemon "
                "(hapair handover first to avoid an outage)",
            }
        driver = node.balancing
        if driver is not None and new.balancer is not None and new.balancer != old.balancer:
            # First, and all or nothing: a pool the data plane refuses rejects the whole reload.
            try:
                await driver.reload(new.balancer)
            except BalancerError as exc:
                return {"ok": False, "error": f"balancer: {exc} (the running balancer is kept)"}
            self.log.info("balancer_reloaded", kind=new.balancer.kind)
        self.cfg = new
        node.key = key
        node.reconfigure(new)
        self.log.info("config_reloaded", source=self.config_path)
        return {"ok": True}

    async def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        node = self.node
        if node is None:
            return {"ok": False, "error": "starting"}
        cmd = request.get("cmd")
        if cmd == "status":
            return {"ok": True, "status": node.status()}
        if cmd == "handover":
            refused = node.request_handover()
            if refused:
                return {"ok": False, "error": refused}
            return {"ok": True}
        if cmd == "reload":
            return await self.reload()
        if cmd == "maintenance":
            on = request.get("on")
            if not isinstance(on, bool):
                return {"ok": False, "error": 'maintenance needs "on": true or false'}
            return await self._maintenance(node, on)
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    async def _maintenance(self, node: Node, on: bool) -> dict[str, Any]:
        """Apply maintenance now; answer once it is durable (the loop runs on meanwhile)."""
        note, durable = node.set_maintenance(on)
        try:
            error = await asyncio.wait_for(asyncio.shield(durable), PERSIST_WAIT)
        except TimeoutError:
            error = f"{node.writer.path}: not written after {PERSIST_WAIT:g} s"
        if error is not None:
            word = "on" if on else "off"
            return {
                "ok": False,
                "error": f"maintenance is {word} now but could not be saved ({error}): it would "
                f"not survive a restart; fix that, then run `hapair maintenance {word}` again",
            }
        return {"ok": True, "note": note, "role": node.election.role.name}


def log_config_warnings(cfg: Config) -> None:
    """Log, once at start, what ``check-config`` prints as warnings (valid but risky)."""
    from hapair.config.explain import config_warnings

    for line in config_warnings(cfg):
        get_logger().warning("config_warning", warning=line, source=cfg.source)


def run_daemon(config_path: str, log_format: str | None = None) -> int:
    """``hapair run``: load, check, run. Exit 2 on configuration errors, 1 on runtime errors."""
    cfg = load_config(config_path)
    fmt = log_format or cfg.log.format
    configure(
        cfg.log.level, fmt, sink=cfg.log.sink,  # type: ignore[arg-type]
        cluster=cfg.cluster.name, node=cfg.node.name,
    )  # fmt: skip
    log_config_warnings(cfg)
    # Before any child process (nginx -t in preflight): they must not inherit NOTIFY_SOCKET.
    notifier = Notifier.from_environ(
        os.environ, unset=True,
        on_error=lambda detail: get_logger().warning(
            "sd_notify_failed", error=detail, note="logged once; then counted"
        ),
    )  # fmt: skip
    check_capabilities()
    key = read_secret(cfg.cluster.secret_file)
    vips = VipManager()
    try:
        check_host(cfg, vips)  # before the loop: route look-ups use pyroute2's own loop
    finally:
        vips.close()
    if cfg.balancer is not None:
        from hapair.runtime.balancing import build_plane

        try:
            build_plane(cfg).preflight()
        except BalancerError as exc:
            raise RuntimeSetupError(f"balancer: {exc}") from exc
    os.umask(0o007)
    daemon = Daemon(config_path, cfg, key, notifier)
    return asyncio.run(daemon.run())
