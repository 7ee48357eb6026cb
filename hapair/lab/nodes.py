"""The failover pair running in the lab: hapair daemons (keepalived lives in keepalived.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from hapair.config.duration import format_duration
from hapair.config.keygen import generate_key
from hapair.core.timing import dead_interval
from hapair.errors import HapairError
from hapair.lab import shell
from hapair.lab.addresses import LAN4, VIP4, VIP6
from hapair.lab.events import Event, LogFollower, current_role, first
from hapair.lab.shell import LabError

PRIORITY: Final = {"a": 150, "b": 100}
PEER: Final = {"a": "b", "b": "a"}
START_TIMEOUT: Final = 15.0
HANDOVER_TIMEOUT: Final = 30.0


@dataclass(frozen=True)
class Timers:
    """Heartbeat timing for both implementations: `interval` seconds, dead after N missed."""

    interval: float = 0.2
    dead_after: int = 5
    preempt_delay: float = 0.0

    @property
    def dead_time(self) -> float:
        """Return how long a silent peer takes to be declared dead, in seconds."""
        return dead_interval(self.interval, self.dead_after)


class Pair(Protocol):
    """What a drill needs from a failover implementation running on lab nodes a and b."""

    label: str
    timers: Timers

    def write_configs(self) -> None:
        """Write both nodes' configuration into the lab directory."""

    def start(self, node: str) -> None:
        """Start the daemon on `node` and return once it runs (bounded)."""

    def kill(self, node: str) -> None:
        """SIGKILL the daemon on `node` (whole process group)."""

    def terminate(self, node: str) -> None:
        """SIGTERM the daemon on `node` and wait (bounded) for it to exit."""

    def release(self, node: str) -> float:
        """Remove `node`'s VIPs as ExecStopPost would; return the wall-clock time it finished."""

    def handover(self, node: str) -> bool | None:
        """Hand mastership from `node` to its peer; None if the implementation cannot."""

    def running(self, node: str) -> bool:
        """Return whether the daemon on `node` is alive."""

    def pids(self, node: str) -> list[int]:
        """Return the pids of the daemon's processes on `node`."""

    def events(self) -> list[Event]:
        """Return both nodes' log events in time order."""

    def role(self, node: str) -> str | None:
        """Return `node`'s current role per its log (None when not running)."""


class _Started(Protocol):
    """A process the lab started (``hapair.lab.topology.Proc``)."""

    @property
    def pid(self) -> int: ...


class PairLab(Protocol):
    """What a pair's daemons need from the lab they run in (``hapair.lab.topology.Lab``)."""

    @property
    def dir(self) -> Path: ...
    @property
    def prefix(self) -> str: ...
    @property
    def ipv6(self) -> bool: ...
    @property
    def procs(self) -> Mapping[str, _Started]: ...

    def peer_addresses(self, node: str) -> list[str]: ...

    def python(
        self, host: str, args: Sequence[str], *, timeout: float = ..., check: bool = ...
    ) -> subprocess.CompletedProcess[str]: ...

    def spawn(self, key: str, host: str, argv: Sequence[str]) -> object: ...

    def running(self, key: str) -> bool: ...

    def stop(
        self, key: str, *, sig: signal.Signals = ..., group: bool = ..., timeout: float = ...
    ) -> int | None: ...


def wait_started(pair: LogReadingPair, node: str, since: float, event: str, failure: str) -> None:
    """Wait (bounded) until `pair`'s daemon on `node` logs `event`; LabError if it dies first."""

    def started() -> bool:
        if not pair.running(node):
            tail = pair.log_path(node).read_text(errors="replace")[-3000:]
            raise LabError(f"{pair.label} on {node} exited at start:\n{tail}")
        return first(pair.events(), event, node=node, after=since) is not None

    if not shell.wait_until(started, timeout=START_TIMEOUT, step=0.02):
        raise LabError(f"{pair.label} on {node} {failure} in {START_TIMEOUT:.0f}s")


def checked_pool(probe_interval: float, fall: int) -> str:
    """TOML: backends r1:80 (weight 2) and r2:80 behind a fast http check (rise 1)."""
    return f"""
[balancer.check]
kind = "http"
path = "/"
interval = "{int(probe_interval * 1000)}ms"
timeout = "150ms"
rise = 1
fall = {fall}

[[balancer.backend]]
address = "{LAN4["r1"]}:80"
weight = 2

[[balancer.backend]]
address = "{LAN4["r2"]}:80"
"""


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


class LogReadingPair:
    """What both pairs share: each node's log file read as events, and the role it implies."""

    keepalived_logs = False
    label = ""

    def __init__(self) -> None:
        self._logs: dict[str, LogFollower] = {}

    def log_path(self, node: str) -> Path:
        """Return the daemon's log file on `node`."""
        raise NotImplementedError

    def running(self, node: str) -> bool:
        """Return whether the daemon on `node` is alive."""
        raise NotImplementedError

    def events(self) -> list[Event]:
        """Return both nodes' events, time-ordered."""
        for n in PEER:
            if n not in self._logs:
                self._logs[n] = LogFollower(n, self.log_path(n), keepalived=self.keepalived_logs)
        evs = [ev for n in PEER for ev in self._logs[n].events()]
        return sorted(evs, key=lambda e: e.ts)

    def role(self, node: str) -> str | None:
        """Return `node`'s current role per its log (None when not running)."""
        if not self.running(node):
            return None
        return current_role([ev for ev in self.events() if ev.node == node])


class HapairPair(LogReadingPair):
    """hapair daemons on nodes a and b: configs, start/stop, release, handover, logs."""

    label = "hapair"

    def __init__(self, lab: PairLab, timers: Timers) -> None:
        self.lab = lab
        self.timers = timers
        super().__init__()

    def config_path(self, node: str) -> Path:
        """Return `node`'s config file."""
        return self.lab.dir / f"{node}.toml"

    def log_path(self, node: str) -> Path:
        """Return `node`'s daemon log (JSON lines from stderr)."""
        return self.lab.dir / f"daemon-{node}.log"

    def config_text(self, node: str) -> str:
        """Return the TOML configuration of `node`."""
        peer = PEER[node]
        t = self.timers
        vips = [f'[[vip]]\naddress = "{VIP4}/24"\ninterface = "eth0"\n']
        if self.lab.ipv6:
            vips.append(f'[[vip]]\naddress = "{VIP6}/64"\ninterface = "eth0"\n')
        return (
            f'[node]\nname = "{node}"\npriority = {PRIORITY[node]}\n\n'
            f'[cluster]\nname = "lab-{self.lab.prefix}"\n'
            f'secret_file = "{self.lab.dir / "secret"}"\n'
            f"peers = {_toml_list(self.lab.peer_addresses(peer))}\n"
            f'port = 694\ninterval = "{format_duration(t.interval)}"\n'
            f"dead_after = {t.dead_after}\npreempt = true\n"
            f'preempt_delay = "{format_duration(t.preempt_delay)}"\n\n'
            + "\n".join(vips)
            + f'\n[runtime]\nstate_dir = "{self.lab.dir / node}"\n'
            + f'lib_dir = "{self.lab.dir / f"{node}.lib"}"\n\n[log]\nformat = "json"\n'
        )

    def write_configs(self) -> None:
        """Write the shared secret (mode 0600) and both nodes' configs and state dirs."""
        secret = self.lab.dir / "secret"
        if not secret.exists():
            secret.touch(mode=0o600)
            secret.chmod(0o600)
            secret.write_text(generate_key() + "\n", encoding="ascii")
        for node in PEER:
            (self.lab.dir / node).mkdir(mode=0o700, exist_ok=True)
            self.config_path(node).write_text(self.config_text(node), encoding="utf-8")

    def _key(self, node: str) -> str:
        return f"daemon-{node}"

    def start(self, node: str) -> None:
        """Start ``python -m hapair run -c NODE.toml`` in `node`; wait for daemon_started."""
        since = time.time()
        self.lab.spawn(
            self._key(node),
            node,
            [sys.executable, "-m", "hapair", "run", "-c", str(self.config_path(node))],
        )

        wait_started(self, node, since, "daemon_started", "logged no daemon_started")

    def kill(self, node: str) -> None:
        """SIGKILL the daemon's whole process group."""
        self.lab.stop(self._key(node), sig=signal.SIGKILL)

    def terminate(self, node: str) -> None:
        """SIGTERM the daemon (main pid, as systemd does first) and reap it."""
        self.lab.stop(self._key(node), sig=signal.SIGTERM, group=False, timeout=10.0)

    def release(self, node: str) -> float:
        """Run ``hapair release -c`` in `node`; return the time it finished."""
        self.lab.python(node, ["-m", "hapair", "release", "-c", str(self.config_path(node))])
        return time.time()

    def handover(self, node: str) -> bool | None:
        """Run ``hapair handover -c`` in `node`; return whether it reported success."""
        proc = self.lab.python(
            node,
            ["-m", "hapair", "handover", "-c", str(self.config_path(node))],
            timeout=HANDOVER_TIMEOUT,
            check=False,
        )
        return proc.returncode == 0

    def status(self, node: str) -> dict[str, object] | None:
        """Return ``hapair status --json`` of `node` (None if it fails)."""
        proc = self.lab.python(
            node,
            ["-m", "hapair", "status", "-c", str(self.config_path(node)), "--json"],
            check=False,
        )
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def running(self, node: str) -> bool:
        """Return whether the daemon on `node` is alive."""
        return self.lab.running(self._key(node))

    def worst_lateness(self, node: str, key: str = "worst_blocked_since_start") -> float | None:
        """The worst loop lateness `node`'s daemon saw, in seconds: from its status while it
        runs (over its whole run; by default the part that was not waiting for a CPU), else
        the ``loop_late`` line it logged (the first one over its threshold); None if neither
        tells."""
        from hapair.config import load_config
        from hapair.ops.control_client import request

        worst: float | None = None
        field = "blocked" if key.startswith("worst_blocked") else "lateness"
        for ev in self.events():
            late = ev.fields.get(field) if ev.name == "loop_late" else None
            if ev.node == node and isinstance(late, int | float):
                worst = max(worst or 0.0, float(late))
        if self.running(node):
            try:
                path = load_config(str(self.config_path(node))).control_socket_path
                loop = request(path, {"cmd": "status"}, timeout=2.0)["status"]["loop"]
                worst = max(worst or 0.0, float(loop[key]))
            except (OSError, ValueError, KeyError, TypeError, HapairError):
                pass  # an older daemon, or one that is going away
        return worst

    def pids(self, node: str) -> list[int]:
        """Return the daemon's pid (a list, for symmetry with multi-process daemons)."""
        proc = self.lab.procs.get(self._key(node))
        return [proc.pid] if proc is not None and self.running(node) else []
