"""Supervise a data-plane process (nginx, HAProxy, the DNS responder): start, reload, restart.

The restart rule is pure (``RestartPolicy``, time passed in): a process that dies is restarted
after a backoff that doubles from ``first`` up to ``cap``; more than ``limit`` deaths within
``window`` seconds means it cannot run here, and the daemon puts the node in FAULT so that the
peer takes the VIP. ``Supervised`` is the I/O around it: it records the child's pid in a pid
file, so that ``hapair release`` (after the daemon was killed) and the next start find and stop
a process they did not start themselves, and it checks ``/proc/PID/cmdline`` first so a reused
pid is never signalled. The child gets ``PDEATHSIG`` (via ``setpriv``) and dies with the daemon:
a data plane nobody probes or reloads must not go on serving a stale pool. The signal is tied to
the *thread* that started the child, so start it from the daemon's main thread, never from a
short-lived worker thread (``asyncio.to_thread``): the child would die with that thread.

The child runs in its own session, so its workers (nginx forks them) share its process group:
when the leader dies hard, the rest of the group is killed too, or orphaned workers would keep
the listening socket and serve the old pool. Its stderr is a pipe that a small reader thread
empties into a bounded tail at once: a child that logs a lot (nginx, one line per failed
upstream connection) must never block on a full pipe, whatever the daemon's loop is doing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from hapair.errors import BalancerError

#: How often a running child is checked for death (its exit is not an fd event here).
POLL_INTERVAL: Final = 0.25
STOP_TIMEOUT: Final = 5.0
#: Per start: how long the child may take to become ready (bound its sockets, say).
READY_TIMEOUT: Final = 5.0
#: How much of the child's stderr is kept (for the died event and ``status``).
STDERR_TAIL: Final = 4096
#: How long a dead child's last words may take to arrive through the stderr pipe.
STDERR_FLUSH: Final = 0.5
#: How long ``signal`` waits for the child to install its handler (sent too early, it kills).
HANDLER_WAIT: Final = 2.0
#: How long a live pid's command line may read empty before the pid is judged not ours
#: (it does, for a moment, inside execve: setpriv, then the engine).
EXEC_SETTLE: Final = 0.5


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
        return now + min(self.cap, self.first * 2.0 ** (count - 1))

    @property
    def recent_deaths(self) -> int:
        """Deaths still inside the window (as of the last one recorded)."""
        return len(self._deaths)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def command_line(
    pid: int, settle: float = EXEC_SETTLE, read: Callable[[int], bytes] = _cmdline
) -> bytes:
    """``pid``'s command line, waiting (bounded) while it reads empty on a live process.

    The kernel shows an empty command line for a moment inside execve (the new image's
    arguments are not placed yet); a child just started through setpriv is often there.
    """
    deadline = time.monotonic() + settle
    while not (line := read(pid)) and _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.002)
    return line


def _alive(pid: int) -> bool:
    """Running (a zombie another parent has not reaped yet has stopped serving: not alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def _kill_group(pid: int) -> None:
    """SIGKILL what is left of ``pid``'s process group; call only while ``pid`` is still held
    (alive, or a zombie not yet reaped), so the group id cannot belong to anybody else."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def caught_signals(status: str) -> set[int]:
    """The signals a process has handlers for, from ``/proc/PID/status`` (``SigCgt``)."""
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            mask = int(line.split(":", 1)[1].strip(), 16)
            return {bit + 1 for bit in range(mask.bit_length()) if mask >> bit & 1}
    return set()


def catches(pid: int, sig: int) -> bool:
    """Whether ``pid`` has installed a handler for ``sig`` (a reload signal, say)."""
    try:
        return sig in caught_signals(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return False


def stop_pid(
    pid: int, marker: str, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT
) -> bool:
    """Stop ``pid`` if its command line contains ``marker``; True if it was ours and ran.

    After ``timeout`` it is killed, with the rest of its process group if it leads one.
    """
    if marker.encode() not in command_line(pid):
        return False
    leader = _group_leader(pid)
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
        if leader:
            _kill_group(pid)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return True


def stop_from_pidfile(
    pidfile: Path, marker: str, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT
) -> bool:
    """Stop the process a pid file names, if it is still ours; remove the file."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return False
    stopped = stop_pid(pid, marker, sig, timeout)
    pidfile.unlink(missing_ok=True)
    return stopped


class StderrTail:
    """A reader thread that empties a child's stderr pipe, keeping the last ``limit`` bytes."""

    def __init__(self, stream: IO[bytes], limit: int = STDERR_TAIL) -> None:
        self._stream = stream
        self._limit = limit
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, name="stderr-tail", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        fd = self._stream.fileno()
        try:
            while chunk := os.read(fd, 65536):
                with self._lock:
                    self._buf += chunk
                    del self._buf[: -self._limit]
        except OSError:
            pass
        finally:
            self._stream.close()

    def text(self) -> str:
        """What was kept so far."""
        with self._lock:
            return self._buf.decode(errors="replace")

    def finish(self, timeout: float = STDERR_FLUSH) -> str:
        """Wait (bounded) for the end of the stream; the text kept."""
        self._thread.join(timeout)
        return self.text()


def _exit_status(proc: subprocess.Popen[bytes]) -> int | None:
    """``proc``'s exit status if it has exited, *without* reaping it: while its zombie holds
    the pid, the pid and its process group cannot belong to anybody else."""
    if proc.returncode is not None:
        return proc.returncode
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return proc.poll()
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


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
        stop_timeout: float = STOP_TIMEOUT,
        policy: RestartPolicy | None = None,
        on_event: Callable[..., None] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.pidfile = pidfile
        self.marker = marker
        self.ready = ready
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.policy = policy or RestartPolicy()
        self.on_event = on_event or (lambda event, **kw: None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.restart_at: float | None = None
        self.starts = 0
        self.restarts = 0
        self.last_exit: int | None = None
        self._tail: StderrTail | None = None

    @property
    def running(self) -> bool:
        """The child runs (asking never reaps it: only supervise and stop do)."""
        return self.proc is not None and _exit_status(self.proc) is None

    @property
    def pid(self) -> int | None:
        """The running child's pid."""
        return self.proc.pid if self.proc is not None and self.running else None

    @property
    def stderr_tail(self) -> str:
        """The last few KiB the child (the current or the last one) wrote to stderr."""
        return self._tail.text() if self._tail is not None else ""

    def start(self) -> None:
        """Start the child (stopping a stale one first) and wait until it is ready."""
        if self.proc is not None and self._exited() is not None:
            self._reap()  # a death supervise has not seen yet: its workers must go too
        stop_from_pidfile(self.pidfile, self.marker, self.stop_signal, self.stop_timeout)
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.Popen(
                _with_pdeathsig(self.argv), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            raise BalancerError(f"{self.name}: cannot start {self.argv[0]}: {exc}") from exc
        self._tail = StderrTail(proc.stderr) if proc.stderr is not None else None
        self.pidfile.write_text(f"{proc.pid}\n")
        self.proc = proc
        self.starts += 1
        self.restart_at = None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._exited() is not None:
                code = self._reap()
                raise BalancerError(
                    f"{self.name} exited with status {code} at start: {self.stderr_tail.strip()}"
                )
            if self.ready is None or self.ready():
                return
            time.sleep(0.005)
        err = self.stderr_tail.strip()
        self.stop()
        raise BalancerError(f"{self.name} was not ready within {READY_TIMEOUT:g} s: {err}")

    def _exited(self) -> int | None:
        return _exit_status(self.proc) if self.proc is not None else None

    def _reap(self) -> int | None:
        """Kill what is left of the dead child's group, reap it, forget it; its exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            _kill_group(proc.pid)  # the zombie still holds the pid: the group is this child's
        code = proc.wait()
        if self._tail is not None:
            self._tail.finish()
        self.last_exit = code
        self.proc = None
        self.pidfile.unlink(missing_ok=True)
        return code

    def signal(self, sig: int, *, handler_wait: float = HANDLER_WAIT) -> None:
        """Send ``sig`` (a graceful reload, say) to the running child.

        Waits up to ``handler_wait`` for the child to catch ``sig``: a reload signal that
        arrives before the handler is installed (right after a start or a re-exec) kills it.
        """
        if not self.running or self.proc is None:
            raise BalancerError(f"{self.name} is not running")
        deadline = time.monotonic() + handler_wait
        while not catches(self.proc.pid, sig) and time.monotonic() < deadline:
            time.sleep(0.005)
        if not catches(self.proc.pid, sig):
            raise BalancerError(f"{self.name} does not handle signal {sig} (yet): not sent")
        self.proc.send_signal(sig)

    def stop(self) -> None:
        """Stop the child and forget any pending restart."""
        self.restart_at = None
        proc, self.proc = self.proc, None
        if proc is not None:
            if _exit_status(proc) is None:
                stop_pid(proc.pid, self.marker, self.stop_signal, self.stop_timeout)
            elif proc.returncode is None:
                _kill_group(proc.pid)  # dead but not reaped: its workers may live on
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)
        self.pidfile.unlink(missing_ok=True)

    def supervise(self, now: float) -> float | None:
        """Restart a dead child on the policy's schedule; BalancerError when giving up."""
        if self.proc is not None:
            if self._exited() is None:
                return now + POLL_INTERVAL
            code = self._reap()
            self.restart_at = self.policy.died(now)
            self.on_event(
                "balancer_process_died", process=self.name, status=code,
                stderr=self.stderr_tail.strip()[-500:],
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
        self.restarts += 1
        self.on_event("balancer_process_restarted", process=self.name, starts=self.starts)
        return now + POLL_INTERVAL

    def status(self) -> dict[str, Any]:
        """Pid, starts, restarts, last exit status, restart pending."""
        return {
            "process": self.name,
            "pid": self.pid,
            "starts": self.starts,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "restart_pending": self.restart_at is not None,
        }
