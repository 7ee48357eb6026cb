"""The ``dns`` data plane: a supervised DNS responder that hands out the pool's addresses.

The pool goes into a JSON file in the run directory (written atomically); the responder
(``hapair.balancer.dnsserver``) reads it at start and again on SIGHUP. ``apply`` returns once
the responder says (in its ready file) that it serves the new file, so a backend that went down
is out of the answers when ``apply`` returns; what resolvers cached stays for up to ``ttl``.
The responder's workers are forked over sockets bound at its start, so a new ``workers`` count
(``reconfigure``) restarts it; everything else is a reload.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Final

from hapair.balancer.dnsanswer import Zone
from hapair.balancer.dnsserver import ServerConfig, parse_config
from hapair.balancer.plane import Pool, endpoint_name
from hapair.balancer.process import Supervised, command_line, stop_from_pidfile
from hapair.config.balancer import Balancer, DnsOptions
from hapair.errors import BalancerError
from hapair.net.freebind import freebind

#: How long a reload may take: the responder forks its new workers and stops the old ones.
RELOAD_TIMEOUT: Final = 3.0
CONFIG_NAME: Final = "dns.json"


def zone_for(cfg: Balancer, pool: Pool) -> Zone:
    """The answers for ``pool`` under ``cfg`` (the backends' ports are for health checks only)."""
    options = cfg.dns
    if options is None:
        raise BalancerError('balancer.dns: kind "dns" needs [balancer.dns] names = ["..."]')
    return Zone(
        names=options.names,
        records=tuple((str(m.address), m.weight) for m in pool.members),
        ttl=int(options.ttl + 0.5),
        scheduler=cfg.scheduler,
        max_answers=options.max_answers,
    )


class DnsDataPlane:
    """``kind = "dns"``: answer A/AAAA queries for ``[balancer.dns] names`` on ``listen``."""

    def __init__(self, cfg: Balancer, *, run_dir: Path, log: Any = None) -> None:
        if cfg.dns is None:
            raise BalancerError('balancer.dns: kind "dns" needs [balancer.dns] names = ["..."]')
        self.cfg = cfg
        self.options: DnsOptions = cfg.dns
        self.run_dir = run_dir
        self.config_path = run_dir / CONFIG_NAME
        self.ready_path = run_dir / "dns.ready"
        self.generation = 0
        self.zone: Zone | None = None
        self.workers = self.options.workers  # what the running responder was started with
        self.written_workers = self.workers
        self.log = log

        def on_event(event: str, **fields: Any) -> None:
            if self.log is not None:
                level = "info" if event == "balancer_process_restarted" else "warning"
                getattr(self.log, level)(event, **fields)

        marker = str(self.config_path)
        argv = [sys.executable, "-m", "hapair.balancer.dnsserver", "--config", marker]
        self.process = Supervised(
            "dns responder", argv, run_dir / "dns.pid", marker,
            ready=self._ready, on_event=on_event,
        )  # fmt: skip

    @property
    def listen(self) -> str:
        """``VIP:port`` as in the logs."""
        return endpoint_name(*self.cfg.listen)

    def _ready(self) -> bool:
        proc = self.process.proc
        try:
            text = self.ready_path.read_text()
        except OSError:
            return False
        return proc is not None and text == f"{proc.pid} {self.generation}\n"

    def preflight(self) -> None:
        """The listen port must be free of other programs (the VIP need not be here yet)."""
        if self.process.running or self._ours_running():
            return
        address, port = self.cfg.listen
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        for kind, name in ((socket.SOCK_DGRAM, "udp"), (socket.SOCK_STREAM, "tcp")):
            with socket.socket(family, kind) as sock:
                try:
                    freebind(sock)
                    sock.bind((str(address), port))
                except OSError as exc:
                    why = "in use by another program" if exc.errno == errno.EADDRINUSE else exc
                    raise BalancerError(
                        f"balancer.listen: cannot listen on {self.listen}/{name}: {why}"
                    ) from None

    def _ours_running(self) -> bool:
        try:
            pid = int((self.run_dir / "dns.pid").read_text().strip())
        except (OSError, ValueError):
            return False
        return str(self.config_path).encode() in command_line(pid)

    def reconfigure(self, cfg: Balancer) -> None:
        """New names, ttl, scheduler or workers for the next ``apply`` (``listen`` is fixed)."""
        if cfg.dns is None:
            raise BalancerError('balancer.dns: kind "dns" needs [balancer.dns] names = ["..."]')
        self.cfg, self.options = cfg, cfg.dns

    def apply(self, pool: Pool) -> bool:
        """Serve ``pool``: start the responder, or reload it and wait until it serves ``pool``."""
        zone = zone_for(self.cfg, pool)
        pending = self.process.restart_at is not None
        # The workers are forked over sockets bound at start: another number needs a restart.
        restart = self.process.running and self.workers != self.options.workers
        if zone == self.zone and (self.process.running or pending) and not restart:
            return False
        self.generation += 1
        self._write(zone)
        if restart:
            self.process.stop()
        if self.process.running:
            self.process.signal(signal.SIGHUP)
            deadline = time.monotonic() + RELOAD_TIMEOUT
            while not self._ready():
                if time.monotonic() > deadline:
                    raise BalancerError(
                        f"dns responder did not load {self.config_path} within"
                        f" {RELOAD_TIMEOUT:g} s: {self.process.stderr_tail.strip()[-300:]}"
                    )
                time.sleep(0.002)
        elif not pending:
            self.process.start()  # waits until the ready file names this generation
            self.workers = self.written_workers
        # else: a restart is due (supervise) and the new process reads the new file
        self.zone = zone
        return True

    def _write(self, zone: Zone) -> None:
        address, port = self.cfg.listen
        config = ServerConfig(
            str(address), port, self.options.workers, self.ready_path, self.generation, zone
        )
        text = json.dumps(config.to_json(), indent=1)
        try:
            parse_config(text)  # the responder's own check, before it can refuse the file
        except ValueError as exc:
            raise BalancerError(f"dns responder configuration: {exc}") from exc
        tmp = self.config_path.with_name(f".{CONFIG_NAME}.tmp")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            os.replace(tmp, self.config_path)
        except OSError as exc:
            raise BalancerError(f"cannot write {self.config_path}: {exc}") from exc
        self.written_workers = config.workers

    def remove(self) -> bool:
        """Stop the responder (ours, or one a killed daemon left) and delete its files."""
        removed = self.process.running
        if self.process.proc is None:  # a fresh instance: the pid file knows the responder
            removed = stop_from_pidfile(self.process.pidfile, self.process.marker)
        self.process.stop()
        for path in (self.config_path, self.ready_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed = True
        self.zone = None
        return removed

    def supervise(self, now: float) -> float | None:
        """Restart a responder that died (it reads the current file)."""
        starts = self.process.starts
        wake = self.process.supervise(now)
        if self.process.starts != starts:
            self.workers = self.written_workers
        return wake

    def status(self) -> dict[str, Any]:
        """The responder's process, what it answers, and where."""
        zone = self.zone
        return {
            **self.process.status(),
            "listen": self.listen,
            "names": list(self.options.names),
            "records": [address for address, _ in zone.records] if zone else [],
            "generation": self.generation,
        }
