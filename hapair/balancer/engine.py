"""The ``proxy`` and ``redirect`` data planes: a supervised nginx or HAProxy on the VIP.

``apply`` renders the pool (``nginxconf``, ``haproxyconf``), lets the engine test the new file
(``nginx -t``, ``haproxy -c``) and only then renames it into place: a refused file leaves the
running engine and its configuration untouched. The first apply starts the engine under
``Supervised``; later ones reload it gracefully (nginx: SIGHUP; HAProxy in master-worker mode:
SIGUSR2) and return once a new worker runs, while the old workers finish their connections.

Hot mode runs the engine on both nodes, so it binds a VIP this node may not hold: HAProxy does
so itself (``bind ... transparent``); nginx cannot and needs ``net.ipv4.ip_nonlocal_bind=1``
(``net.ipv6.ip_nonlocal_bind`` for an IPv6 VIP), which ``preflight`` checks. Readiness is
therefore never a connection to the VIP: the engine has written its own pid file and a socket
listens on the VIP's port (``/proc/net/tcp``).

These calls block their caller: a test takes tens of milliseconds, a start or a reload up to a
few seconds in the worst case, a stop up to ``STOP_GRACE``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from hapair.balancer import haproxyconf, nginxconf
from hapair.balancer.plane import Pool, endpoint_name
from hapair.balancer.process import RestartPolicy, Supervised, command_line, stop_from_pidfile
from hapair.config.balancer import Balancer
from hapair.errors import BalancerError
from hapair.iptypes import IpAddress
from hapair.net.freebind import freebind

Engine = Literal["nginx", "haproxy"]

#: ``nginx -t`` / ``haproxy -c`` must answer within this.
TEST_TIMEOUT: Final = 15.0
#: A reload has finished when the engine runs a new worker; it must within this.
RELOAD_TIMEOUT: Final = 5.0
#: How often a reload looks for the new worker. Each look reads /proc (Python work holding the
#: GIL between many short reads, which the loop then waits for): 20 ms, not 5, quarters that.
RELOAD_POLL: Final = 0.02
#: Graceful stop (nginx QUIT, HAProxy soft stop) before the engine is killed: a cold node
#: that lost the VIP cannot finish its clients' requests anyway.
STOP_GRACE: Final = 2.0
#: Where ``/proc/net/tcp`` says a socket listens.
TCP_LISTEN: Final = "0A"
SBIN: Final = "/usr/sbin:/sbin:/usr/local/sbin"
_LEVELS: Final = {
    "balancer_process_died": "warning",
    "balancer_process_failed": "error",
    "balancer_engine_refused": "warning",
    "balancer_engine_reload_slow": "warning",
}


@dataclass(frozen=True)
class EngineSpec:
    """What differs between nginx and HAProxy for running and reloading them."""

    name: Engine
    package: str
    conf_name: str
    pid_name: str
    reload_signal: int
    stop_signal: int

    def test_argv(self, binary: str, conf: Path, run_dir: Path) -> list[str]:
        """Check ``conf`` without touching the running engine."""
        if self.name == "nginx":
            return [binary, "-t", "-q", "-e", "stderr", "-p", f"{run_dir}/", "-c", str(conf)]
        return [binary, "-c", "-f", str(conf)]

    def run_argv(self, binary: str, conf: Path, run_dir: Path) -> list[str]:
        """Run in the foreground (``daemon off`` is in nginx's file; HAProxy: ``-W``)."""
        if self.name == "nginx":
            return [binary, "-e", "stderr", "-p", f"{run_dir}/", "-c", str(conf)]
        return [binary, "-W", "-f", str(conf)]


_NGINX: Final = EngineSpec(
    "nginx", "nginx", nginxconf.CONF_NAME, nginxconf.PID_NAME, signal.SIGHUP, signal.SIGQUIT
)
_HAPROXY: Final = EngineSpec(
    "haproxy", "haproxy", haproxyconf.CONF_NAME, haproxyconf.PID_NAME, signal.SIGUSR2,
    signal.SIGUSR1,
)  # fmt: skip
ENGINES: Final[dict[Engine, EngineSpec]] = {"nginx": _NGINX, "haproxy": _HAPROXY}


def engine_of(cfg: Balancer) -> Engine:
    """``redirect`` is nginx's; ``proxy`` runs ``[balancer.proxy] engine``."""
    return "nginx" if cfg.kind == "redirect" else cfg.proxy_options.engine


def engine_binary(cfg: Balancer, search: str | None = None) -> str:
    """The engine's program (on ``search``, else PATH and the sbin directories), or a
    BalancerError that says what to install or set."""
    spec = ENGINES[engine_of(cfg)]
    configured = cfg.proxy_options.binary
    if configured:
        if Path(configured).is_file() and os.access(configured, os.X_OK):
            return configured
        raise BalancerError(f"balancer.proxy.binary: {configured} is not an executable file")
    if search is not None:
        found = shutil.which(spec.name, path=search)
    else:
        found = shutil.which(spec.name) or shutil.which(spec.name, path=SBIN)
    if found is not None:
        return found
    if cfg.kind == "redirect":
        raise BalancerError(
            f'balancer.kind = "redirect" needs nginx, which is not installed here:'
            f" install package {spec.package}"
        )
    raise BalancerError(
        f'balancer.proxy.engine = "{spec.name}" needs {spec.name}, which is not installed here:'
        f" install package {spec.package}, or set balancer.proxy.binary to its path"
    )


def check_nonlocal_bind(cfg: Balancer, proc: Path = Path("/proc/sys/net")) -> None:
    """Hot nginx binds the VIP on the node without it: the kernel must allow that."""
    version = cfg.listen[0].version
    key = f"ipv{version}/ip_nonlocal_bind"
    try:
        on = (proc / key).read_text().strip() == "1"
    except OSError:
        on = False
    if not on:
        sysctl = f"net.ipv{version}.ip_nonlocal_bind"
        raise BalancerError(
            f'balancer.mode = "hot" runs nginx on both nodes, so it listens on'
            f" {endpoint_name(*cfg.listen)} where this node does not hold the VIP, but {sysctl}"
            f" is 0 here: run `sysctl -w {sysctl}=1` (and put it in /etc/sysctl.d/ to keep it),"
            f' or set balancer.mode = "cold"'
        )


def proc_net_address(address: IpAddress) -> str:
    """``address`` as ``/proc/net/tcp`` prints it: 32-bit words in host byte order, in hex."""
    packed = address.packed
    words = (packed[i : i + 4] for i in range(0, len(packed), 4))
    order = -1 if sys.byteorder == "little" else 1
    return "".join(word[::order].hex().upper() for word in words)


def listening_inodes(table: str, address: IpAddress, port: int) -> set[str]:
    """The inodes of the sockets ``/proc/net/tcp`` (or ``tcp6``) text shows listening on
    address:port."""
    want = f"{proc_net_address(address)}:{port:04X}"
    found = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9 and fields[1] == want and fields[3] == TCP_LISTEN:
            found.add(fields[9])
    return found


def holds_socket(pid: int, inodes: set[str]) -> bool | None:
    """Whether process ``pid`` has one of the socket ``inodes`` open; None if we may not look.

    Reading another user's ``/proc/PID/fd`` needs CAP_SYS_PTRACE, which the systemd unit
    does not grant: the engines' workers run as ``nobody``.
    """
    wanted = {f"socket:[{inode}]" for inode in inodes}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except PermissionError:
        return None
    except OSError:
        return False  # gone
    denied = False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                return True
        except PermissionError:  # listing needs DAC rights, reading a link needs ptrace rights
            denied = True
        except OSError:
            continue
    return None if denied else False


def still_accepting(pid: int, inodes: set[str], engine: str) -> bool:
    """Whether an old worker may still take connections after a reload.

    Where its descriptors cannot be read, nginx's process title tells (an old worker renames
    itself "worker process is shutting down", world-readable in ``/proc/PID/cmdline``);
    HAProxy's does not change, so there the new worker's arrival has to do.
    """
    held = holds_socket(pid, inodes)
    if held is not None:
        return held
    if engine != "nginx":
        return False
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"shutting down" not in title


def children(pid: int, proc: Path = Path("/proc")) -> set[int]:
    """The pids whose parent is ``pid``.

    ``/proc/PID/task/*/children`` answers at once; where the kernel lacks it, every
    process's ``stat`` is read (milliseconds on a busy host, and a reload polls this).
    """
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        tasks = []
    listed = []
    for task in tasks:
        # A thread that exits meanwhile (HAProxy's master re-executes on a reload) is skipped:
        # falling back to the scan for it cost the loop up to 13 ms of GIL under churn.
        with contextlib.suppress(OSError):
            listed.append((task / "children").read_text())
    if listed:
        return {int(p) for text in listed for p in text.split()}
    found = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()  # the command name may hold ")" and blanks
        if len(fields) > 1 and fields[1] == str(pid):
            found.add(int(entry.name))
    return found


def _hint(message: str) -> str:
    if "(99: Cannot assign requested address)" in message:
        return (
            f"{message} (the VIP is not on this host: set net.ipv4.ip_nonlocal_bind=1,"
            " or net.ipv6.ip_nonlocal_bind=1 for an IPv6 VIP)"
        )
    return message


def _unprivileged() -> tuple[int, int] | None:
    """The uid and gid HAProxy's workers drop to, when started as root."""
    if os.geteuid() != 0:
        return None
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return (65534, 65534)
    return (nobody.pw_uid, nobody.pw_gid)


class EngineDataPlane:
    """``kind = "proxy"`` (nginx or HAProxy) or ``"redirect"`` (nginx) on ``listen``."""

    def __init__(
        self,
        cfg: Balancer,
        *,
        run_dir: Path,
        log: Any = None,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.log = log
        self.spec = ENGINES[engine_of(cfg)]
        self.conf = run_dir / self.spec.conf_name
        self.next_conf = run_dir / f"next-{self.spec.conf_name}"
        self.engine_pidfile = run_dir / self.spec.pid_name
        self.applied: str | None = None
        self.reloads = 0
        try:
            binary = engine_binary(cfg)
        except BalancerError:
            binary = self.spec.name  # preflight and apply say what is missing
        self.process = Supervised(
            self.spec.name, self.spec.run_argv(binary, self.conf, run_dir),
            run_dir / f"{self.spec.name}.hapair.pid", str(self.conf),
            ready=self._ready, stop_signal=self.spec.stop_signal, stop_timeout=STOP_GRACE,
            policy=policy, on_event=self._event,
        )  # fmt: skip

    # -- the DataPlane contract ------------------------------------------------------------

    def preflight(self) -> None:
        """The engine is installed, hot nginx may bind the VIP, and nobody else has the port."""
        engine_binary(self.cfg)
        if self.spec.name == "nginx" and self.cfg.mode == "hot":
            check_nonlocal_bind(self.cfg)
        if not self.process.running and not self._stale_running():
            self._check_port_free()

    def reconfigure(self, cfg: Balancer) -> None:
        """New settings (scheduler, timeouts, workers) take effect at the next ``apply``."""
        if engine_of(cfg) != self.spec.name:
            raise BalancerError("balancer.proxy.engine cannot change on reload: restart")
        self.cfg = cfg

    def apply(self, pool: Pool) -> bool:
        """Test, then serve ``pool``: start the engine or reload it; False if unchanged."""
        text = self.render(pool)
        pending = self.process.restart_at is not None
        if text == self.applied and (self.process.running or pending):
            return False
        binary = engine_binary(self.cfg)
        self.process.argv = self.spec.run_argv(binary, self.conf, self.run_dir)
        self._install(binary, text)
        if self.process.running:
            try:
                self._reload()
            except BalancerError:
                self._restore()
                raise
        elif not pending:
            self._start()
        # else: a restart is pending and will read the new file
        self.applied = text
        return True

    def remove(self) -> bool:
        """Stop the engine (ours, or one a killed daemon left) and delete its files."""
        removed = self.process.running
        self.process.stop()
        self.applied = None
        for spec in ENGINES.values():  # a fresh instance, or the engine changed since
            marker = str(self.run_dir / spec.conf_name)
            for pidfile in (self.run_dir / f"{spec.name}.hapair.pid", self.run_dir / spec.pid_name):
                removed |= stop_from_pidfile(pidfile, marker, spec.stop_signal, STOP_GRACE)
                removed |= _unlink(pidfile)
            for name in (spec.conf_name, f"next-{spec.conf_name}"):
                removed |= _unlink(self.run_dir / name)
        temp = self.run_dir / nginxconf.TEMP_NAME
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
            removed = True
        with contextlib.suppress(OSError):
            self.run_dir.rmdir()  # only if nothing else lives there
        if removed:
            self._event("balancer_engine_stopped", engine=self.spec.name)
        return removed

    def supervise(self, now: float) -> float | None:
        """Restart an engine that died (it reads the current file); BalancerError to give up."""
        return self.process.supervise(now)

    def status(self) -> dict[str, Any]:
        """Engine, pid, configuration file, restarts and reloads, the end of its stderr."""
        tail = self.process.stderr_tail.strip().splitlines()[-3:]
        return {
            **self.process.status(),
            "engine": self.spec.name,
            "listen": endpoint_name(*self.cfg.listen),
            "config": str(self.conf),
            "serving": self.applied is not None,
            "reloads": self.reloads,
            "stderr": tail,
        }

    # -- the steps ---------------------------------------------------------------------------

    def render(self, pool: Pool) -> str:
        """The engine's configuration text for ``pool``."""
        try:
            if self.spec.name == "haproxy":
                return haproxyconf.render(
                    self.cfg, pool, self.run_dir, drop_to=_unprivileged()
                )  # fmt: skip
            return nginxconf.render(self.cfg, pool, self.run_dir)
        except ValueError as exc:
            raise BalancerError(f"{self.spec.name}: {exc}") from exc

    def _install(self, binary: str, text: str) -> None:
        """Write ``text`` next to the live file, let the engine test it, then rename it over."""
        try:
            (self.run_dir / nginxconf.TEMP_NAME).mkdir(parents=True, exist_ok=True)
            self.next_conf.write_text(text)
        except OSError as exc:
            raise BalancerError(f"cannot write {self.next_conf}: {exc}") from exc
        argv = self.spec.test_argv(binary, self.next_conf, self.run_dir)
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=TEST_TIMEOUT, check=False
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            _unlink(self.next_conf)
            raise BalancerError(f"{self.spec.name}: cannot test {self.next_conf}: {exc}") from exc
        if proc.returncode != 0:
            _unlink(self.next_conf)
            lines = [
                line.strip()
                for line in (proc.stderr + proc.stdout).splitlines()
                if line.strip() and "[NOTICE]" not in line
            ]
            message = _hint("; ".join(lines)[-1500:])
            self._event("balancer_engine_refused", engine=self.spec.name, error=message)
            raise BalancerError(f"{self.spec.name} refused the new configuration: {message}")
        os.replace(self.next_conf, self.conf)

    def _restore(self) -> None:
        """Put the served text back in place: a restart must not pick up a refused pool."""
        if self.applied is not None:
            with contextlib.suppress(OSError):
                self.next_conf.write_text(self.applied)
                os.replace(self.next_conf, self.conf)

    def _start(self) -> None:
        # An engine whose supervisor pid file is gone (a crash in between) still has its own.
        stop_from_pidfile(self.engine_pidfile, str(self.conf), self.spec.stop_signal, STOP_GRACE)
        _unlink(self.engine_pidfile)
        try:
            self.process.start()
        except BalancerError as exc:
            raise BalancerError(_hint(str(exc))) from None
        self._event("balancer_engine_started", engine=self.spec.name, pid=self.process.pid)

    def _reload(self) -> None:
        """Signal a graceful reload; return once a new worker runs and no old one accepts."""
        pid = self.process.pid
        if pid is None:
            raise BalancerError(f"{self.spec.name} is not running")
        before = children(pid)
        self.process.signal(self.spec.reload_signal)
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while True:
            now = children(pid)
            # Old workers close the listening socket when told to finish (nginx QUIT,
            # HAProxy soft stop): until then they may still take a connection to the old pool.
            inodes = self._listening_inodes()
            old = now & before
            if now - before and not any(still_accepting(p, inodes, self.spec.name) for p in old):
                break
            if not self.process.running:
                raise BalancerError(f"{self.spec.name} died while reloading")
            if time.monotonic() > deadline:
                if now - before:
                    self._event("balancer_engine_reload_slow", engine=self.spec.name, pid=pid)
                    break
                raise BalancerError(
                    f"{self.spec.name} started no new worker within {RELOAD_TIMEOUT:g} s of a"
                    f" reload (the old ones go on serving): {self.process.stderr_tail.strip()}"
                )
            time.sleep(RELOAD_POLL)
        self.reloads += 1
        self._event("balancer_engine_reloaded", engine=self.spec.name, pid=pid)

    def _listening_inodes(self) -> set[str]:
        address, port = self.cfg.listen
        table = "/proc/net/tcp6" if address.version == 6 else "/proc/net/tcp"
        try:
            return listening_inodes(Path(table).read_text(), address, port)
        except OSError:
            return set()

    def _ready(self) -> bool:
        """The engine wrote its own pid file naming our child, and the VIP's port listens."""
        pid = self.process.proc.pid if self.process.proc is not None else None
        try:
            written = int(self.engine_pidfile.read_text().strip())
        except (OSError, ValueError):
            return False
        return written == pid and bool(self._listening_inodes())

    def _stale_running(self) -> bool:
        for pidfile in (self.process.pidfile, self.engine_pidfile):
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            if str(self.conf).encode() in command_line(pid):
                return True
        return False

    def _check_port_free(self) -> None:
        address, port = self.cfg.listen
        v6 = address.version == 6
        with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET) as sock:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
                freebind(sock)
                sock.bind((str(address), port))
            except OSError as exc:
                why = "in use by another program" if exc.errno == errno.EADDRINUSE else exc
                raise BalancerError(
                    f"balancer.listen: cannot listen on {endpoint_name(address, port)}: {why}"
                ) from None

    def _event(self, event: str, **fields: Any) -> None:
        if self.log is not None:
            getattr(self.log, _LEVELS.get(event, "info"))(event, **fields)


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError:
        return False
    return True
