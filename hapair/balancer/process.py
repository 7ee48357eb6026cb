"""Supervise a data-plane process (nginx, HAProxy, the DNS responder): start, reload, restart.

The restart rule is pure (``RestartPolicy``, time passed in): a process that dies is restarted
after a backoff that doubles from ``first`` up to ``cap``; more than ``limit`` deaths within
``window`` seconds means it cannot run here, and the daemon puts the node in FAULT so that the
peer takes the VIP. ``Supervised`` is the I/O around it: it records the child's pid in a pid
file, so that ``hapair release`` (after the daemon was killed) and the next start find and stop
a process they did not start themselves, and it checks ``/proc/PID/cmdline`` first so a reused
pid is never signalled. The child gets ``PDEATHSIG`` (via ``setpriv``) and dies with the daemon:
a data plane nobody probes or reloads must not go on serving a stale pool.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from hapair.errors import BalancerError

#: How often a running child is checked for death (its exit is not an fd event here).
POLL_INTERVAL: Final = 0.25
STOP_TIMEOUT: Final = 5.0
#: Per start: how long the child may take to become ready (bound its sockets, say).
READY_TIMEOUT: Final = 5.0


@dataclass
class RestartPolicy:
    """When to restart a dead process, and when to give up (pure)."""

    first: float = 0.2
    cap: float = 5.0
    limit: int = 5
    window: float = 60.0
    _deaths: deque[float] = field(default_factory=deque)

    def died(self, now: float) -> float | None:
        """Record a death at ``now``; return when to restart, or None to give up."""
        self._deaths.append(now)
        while self._deaths and self._deaths[0] <= now - self.window:
            self._deaths.popleft()
        count = len(self._deaths)
        if count > self.limit:
            return None
        return now + min(self.cap, self.first * 2 ** (count - 1))

    @property
    def recent_deaths(self) -> int:
        """Deaths still inside the window (as of the last one recorded)."""
        return len(self._deaths)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_pid(
    pid: int, marker: str, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT
) -> bool:
    """Stop ``pid`` if its command line contains ``marker``; True if it was ours and ran."""
    if marker.encode() not in _cmdline(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.01)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return True


def stop_from_pidfile(pidfile: Path, marker: str, sig: int = signal.SIGTERM) -> bool:
    """Stop the process a pid file names, if it is still ours; remove the file."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return False
    stopped = stop_pid(pid, marker, sig)
    pidfile.unlink(missing_ok=True)
    return stopped


def _with_pdeathsig(argv: Sequence[str]) -> list[str]:
    setpriv = shutil.which("setpriv") or shutil.which("setpriv", path="/usr/bin:/bin")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else list(argv)


class Supervised:
    """One supervised child process.

    ``marker`` is a string in the child's command line (its config file path) that proves a
    pid found in ``pidfile`` is really this child; ``ready`` says when a start has finished.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        pidfile: Path,
        marker: str,
        *,
        ready: Callable[[], bool] | None = None,
        stop_signal: int = signal.SIGTERM,
        policy: RestartPolicy | None = None,
        on_event: Callable[..., None] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.pidfile = pidfile
        self.marker = marker
        self.ready = ready
        self.stop_signal = stop_signal
        self.policy = policy or RestartPolicy()
        self.on_event = on_event or (lambda event, **kw: None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.restart_at: float | None = None
        self.starts = 0
        self.last_exit: int | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start the child (stopping a stale one first) and wait until it is ready."""
        stop_from_pidfile(self.pidfile, self.marker, self.stop_signal)
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.Popen(
                _with_pdeathsig(self.argv), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            raise BalancerError(f"{self.name}: cannot start {self.argv[0]}: {exc}") from exc
        self.pidfile.write_text(f"{proc.pid}\n")
        self.proc = proc
        self.starts += 1
        self.restart_at = None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                self.last_exit = code
                err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                self.proc = None
                self.pidfile.unlink(missing_ok=True)
                raise BalancerError(f"{self.name} exited with status {code} at start: {err}")
            if self.ready is None or self.ready():
                if proc.stderr is not None:
                    os.set_blocking(proc.stderr.fileno(), False)
                return
            time.sleep(0.005)
        self.stop()
        raise BalancerError(f"{self.name} was not ready within {READY_TIMEOUT:g} s")

    def signal(self, sig: int) -> None:
        """Send ``sig`` (a graceful reload, say) to the running child."""
        if not self.running or self.proc is None:
            raise BalancerError(f"{self.name} is not running")
        self.proc.send_signal(sig)

    def stop(self) -> None:
        """Stop the child and forget any pending restart."""
        self.restart_at = None
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_pid(proc.pid, self.marker, self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)
        self.pidfile.unlink(missing_ok=True)

    def supervise(self, now: float) -> float | None:
        """Restart a dead child on the policy's schedule; BalancerError when giving up."""
        if self.proc is not None:
            code = self.proc.poll()
            if code is None:
                return now + POLL_INTERVAL
            self.last_exit = code
            err = b""
            if self.proc.stderr is not None:
                with contextlib.suppress(OSError, TypeError):
                    err = self.proc.stderr.read() or b""
            self.proc = None
            self.pidfile.unlink(missing_ok=True)
            self.restart_at = self.policy.died(now)
            self.on_event(
                "balancer_process_died", process=self.name, status=code,
                stderr=err.decode(errors="replace").strip()[-500:],
                restart_in=None if self.restart_at is None else round(self.restart_at - now, 3),
            )  # fmt: skip
            if self.restart_at is None:
                raise BalancerError(
                    f"{self.name} died {self.policy.recent_deaths} times within"
                    f" {self.policy.window:g} s (last status {code}): giving up"
                )
        if self.restart_at is None:
            return None
        if now < self.restart_at:
            return self.restart_at
        try:
            self.start()
        except BalancerError as exc:
            self.restart_at = self.policy.died(now)
            self.on_event("balancer_process_failed", process=self.name, error=str(exc))
            if self.restart_at is None:
                raise
            return self.restart_at
        self.on_event("balancer_process_restarted", process=self.name, starts=self.starts)
        return now + POLL_INTERVAL

    def status(self) -> dict[str, Any]:
        """Pid, starts, last exit status, restart pending."""
        return {
            "process": self.name,
            "pid": self.proc.pid if self.running and self.proc else None,
            "starts": self.starts,
            "last_exit": self.last_exit,
            "restart_pending": self.restart_at is not None,
        }
