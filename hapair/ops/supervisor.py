"""What systemd does for hapair.service, for a container without systemd.

``python -m hapair.ops.supervisor -c CFG`` runs ``hapair run -c CFG`` as its child and, like the
unit: runs ``hapair release`` after every exit (ExecStopPost), restarts after a delay
(Restart=, RestartSec=), never restarts a configuration error (RestartPreventExitStatus=2),
gives up after 5 starts in 60 s (StartLimitBurst=) and passes SIGTERM to the daemon alone
(KillMode=mixed). ``UnitPolicy`` decides, from explicit ``now`` values; ``Supervisor`` is
the I/O around it and the only part that reads the clock or sleeps.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

from hapair.config.duration import format_duration, parse_duration

DEFAULT_CONFIG: Final = "/etc/hapair/hapair.toml"
DEFAULT_HOLD_FILE: Final = "/run/hapair/hold"
DEFAULT_RESTART_DELAY: Final = 2.0
PID_FILE_NAME: Final = "daemon.pid"
#: The daemon's exit status for a configuration error (hapair.cli): restarting cannot fix it.
CONFIG_ERROR_STATUS: Final = 2
#: StartLimitBurst= and StartLimitIntervalSec= of systemd/hapair.service.
START_LIMIT_BURST: Final = 5
START_LIMIT_WINDOW: Final = 60.0
HOLD_POLL: Final = 0.1
#: systemd gives each ExecStopPost= this long (TimeoutStopSec=).
RELEASE_TIMEOUT: Final = 20.0
FORWARDED: Final = (signal.SIGTERM, signal.SIGINT)


class Verdict(enum.Enum):
    """What the supervisor does next."""

    START = "start"
    WAIT = "wait"
    HOLD = "hold"
    EXIT = "exit"


@dataclass(frozen=True)
class Step:
    """One decision: a verdict, why, when to ask again (WAIT, HOLD) and the exit status (EXIT)."""

    verdict: Verdict
    reason: str
    until: float | None = None
    exit_status: int | None = None


class UnitPolicy:
    """Pure restart rules: Restart=, RestartSec=, RestartPreventExitStatus=2, StartLimitBurst=."""

    def __init__(
        self,
        restart_delay: float,
        *,
        burst: int = START_LIMIT_BURST,
        window: float = START_LIMIT_WINDOW,
    ) -> None:
        if restart_delay < 0 or burst < 1 or window <= 0:
            raise ValueError("restart_delay >= 0, burst >= 1 and window > 0 are required")
        self.restart_delay = restart_delay
        self.burst = burst
        self.window = window
        self._starts: deque[float] = deque()
        self._due = float("-inf")
        self._held = False
        self._stopping = False

    def stop(self) -> None:
        """Record a stop request (SIGTERM/SIGINT): no more starts; exit 0 once the child is gone."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested."""
        return self._stopping

    def next_step(self, now: float, *, held: bool) -> Step:
        """Return whether to start the daemon at `now`, wait, keep holding, or exit."""
        if self._stopping:
            return Step(Verdict.EXIT, "stopped", exit_status=0)
        if held:
            self._held = True
            return Step(Verdict.HOLD, "hold_file", until=now + HOLD_POLL)
        if self._held:
            # The operator let go of the hold: a deliberate start, like `systemctl
            # reset-failed` + `start`, so earlier crashes do not count against it.
            self._held = False
            self._starts.clear()
        if now < self._due:
            return Step(Verdict.WAIT, "restart_delay", until=self._due)
        while self._starts and now - self._starts[0] >= self.window:
            self._starts.popleft()
        if len(self._starts) >= self.burst:
            return Step(Verdict.EXIT, "start_limit", exit_status=1)
        return Step(Verdict.START, "start")

    def started(self, now: float) -> None:
        """Record that the daemon was started at `now`."""
        self._starts.append(now)

    def exited(self, now: float, status: int | None) -> Step:
        """Return what follows the daemon's exit at `now` (`status` None: killed by a signal)."""
        if self._stopping:
            return Step(Verdict.EXIT, "stopped", exit_status=0)
        if status == CONFIG_ERROR_STATUS:
            return Step(Verdict.EXIT, "config_error", exit_status=CONFIG_ERROR_STATUS)
        self._due = now + self.restart_delay
        return Step(Verdict.WAIT, "restart_delay", until=self._due)


def exit_fields(returncode: int) -> tuple[int | None, str | None]:
    """Split a Popen returncode into (exit status, signal name); one of them is None."""
    if returncode >= 0:
        return returncode, None
    try:
        return None, signal.Signals(-returncode).name
    except ValueError:
        return None, f"SIG{-returncode}"


def hapair_argv(command: str, config: str) -> list[str]:
    """Return the argv of `hapair COMMAND -c CONFIG` under this interpreter."""
    return [sys.executable, "-m", "hapair", command, "-c", config]


class Supervisor:
    """Run the daemon argv under a UnitPolicy; signals, pid file, release and JSON log lines."""

    def __init__(
        self,
        daemon_argv: Sequence[str],
        release_argv: Sequence[str],
        *,
        policy: UnitPolicy,
        hold_file: Path,
        pid_file: Path,
        log: TextIO = sys.stderr,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.daemon_argv = list(daemon_argv)
        self.release_argv = list(release_argv)
        self.policy = policy
        self.hold_file = hold_file
        self.pid_file = pid_file
        self._log = log
        self._clock = clock
        self._child: subprocess.Popen[bytes] | None = None

    def emit(self, event: str, **fields: Any) -> None:
        """Write one JSON line: event, wall-clock ts, then `fields`."""
        line = json.dumps({"event": event, "ts": time.time(), **fields})
        self._log.write(line + "\n")
        self._log.flush()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.policy.stop()
        if self._child is not None and self._child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._child.send_signal(signum)

    def run(self) -> int:
        """Supervise until a stop request, a configuration error or the start limit; exit status."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in FORWARDED}
        try:
            return self._loop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _loop(self) -> int:
        last: Verdict | None = None
        while True:
            step = self.policy.next_step(self._clock(), held=self.hold_file.exists())
            if step.verdict is Verdict.HOLD and last is not Verdict.HOLD:
                self.emit("daemon_held", hold_file=str(self.hold_file))
            elif last is Verdict.HOLD and step.verdict is not Verdict.HOLD:
                self.emit("hold_released", hold_file=str(self.hold_file))
            last = step.verdict
            if step.verdict is Verdict.EXIT:
                return self._finish(step)
            if step.verdict is not Verdict.START:
                # Short naps: a stop request or a removed hold file is noticed within one poll.
                time.sleep(max(0.0, min(HOLD_POLL, (step.until or 0.0) - self._clock())))
                continue
            step = self._run_once()
            if step.verdict is Verdict.EXIT:
                return self._finish(step)
            if not self.hold_file.exists():
                self.emit("daemon_restarting", after=self.policy.restart_delay)

    def _run_once(self) -> Step:
        self.policy.started(self._clock())
        # Its own process group: a terminal's Ctrl-C reaches the daemon once, through us.
        child = subprocess.Popen(self.daemon_argv, process_group=0)
        self._child = child
        self._write_pid(child.pid)
        self.emit("daemon_spawned", pid=child.pid, argv=self.daemon_argv)
        if self.policy.stopping:
            # A stop request that came while the child was being spawned.
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
        returncode = child.wait()
        ended = self._clock()
        self._remove_pid()
        status, signame = exit_fields(returncode)
        self.emit("daemon_exited", pid=child.pid, status=status, signal=signame)
        self._release()
        return self.policy.exited(ended, status)

    def _release(self) -> None:
        try:
            proc = subprocess.run(
                self.release_argv,
                capture_output=True,
                text=True,
                timeout=RELEASE_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.emit("release_failed", error=str(exc))
            return
        output = (proc.stdout + proc.stderr).strip().splitlines()
        self.emit("release_finished", status=proc.returncode, output=output)

    def _finish(self, step: Step) -> int:
        status = step.exit_status if step.exit_status is not None else 1
        self.emit("supervisor_exiting", reason=step.reason, status=status)
        return status

    def _write_pid(self, pid: int) -> None:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.pid_file.with_name(self.pid_file.name + ".tmp")
        tmp.write_text(f"{pid}\n")
        tmp.replace(self.pid_file)

    def _remove_pid(self) -> None:
        self._child = None
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()


def supervise(
    config: str,
    *,
    restart_delay: float = DEFAULT_RESTART_DELAY,
    hold_file: str = DEFAULT_HOLD_FILE,
    daemon_argv: Sequence[str] | None = None,
    release_argv: Sequence[str] | None = None,
    log: TextIO = sys.stderr,
) -> int:
    """Supervise `hapair run -c config` (or `daemon_argv`) and return the exit status."""
    hold = Path(hold_file)
    hold.parent.mkdir(parents=True, exist_ok=True)
    return Supervisor(
        daemon_argv if daemon_argv is not None else hapair_argv("run", config),
        release_argv if release_argv is not None else hapair_argv("release", config),
        policy=UnitPolicy(restart_delay),
        hold_file=hold,
        pid_file=hold.parent / PID_FILE_NAME,
        log=log,
    ).run()


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The supervisor's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m hapair.ops.supervisor",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run `hapair run -c CFG` the way systemd runs hapair.service, for a container\n"
            "that has no systemd (compose/docker-compose.yml uses it as the nodes' command).\n\n"
            "  after every exit  `hapair release -c CFG` (ExecStopPost=): a daemon killed\n"
            "                    as MASTER leaves no VIP behind, the peer takes over at once\n"
            "  restart           after --restart-delay (RestartSec=), whatever the exit was:\n"
            "                    in a container nothing else would start the daemon again\n"
            "  exit status 2     a configuration error: no restart, the supervisor exits 2\n"
            "  start limit       a 6th start within 60 s: exit 1 and let the container's\n"
            "                    restart policy take over (StartLimitBurst=5)\n"
            "  SIGTERM, SIGINT   passed to the daemon alone (KillMode=mixed), which hands the\n"
            "                    VIP over; exit 0 once it is gone and release ran\n\n"
            "Hold file: while it exists the daemon is not (re)started; the container stays\n"
            "up. This is how a drill or an operator keeps the daemon down:\n"
            "  touch /run/hapair/hold; kill $(cat /run/hapair/daemon.pid)   # down, stays down\n"
            "  rm /run/hapair/hold                                         # starts again\n"
            "The daemon's pid is in daemon.pid next to the hold file while it runs.\n"
            "Each step is one JSON line on stderr: daemon_spawned, daemon_exited (pid,\n"
            "status, signal), release_finished, daemon_restarting (after), daemon_held,\n"
            "hold_released, supervisor_exiting (reason, status)."
        ),
        epilog="exit status: 0 stopped by a signal, 1 start limit hit, 2 configuration error",
    )
    parser.add_argument(
        "-c",
        "--config",
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"the daemon's configuration file (default: {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--restart-delay",
        type=_duration,
        default=DEFAULT_RESTART_DELAY,
        metavar="DURATION",
        help=f'wait this long before a restart, e.g. "500ms", "2s" '
        f"(default: {format_duration(DEFAULT_RESTART_DELAY)})",
    )
    parser.add_argument(
        "--hold-file",
        default=DEFAULT_HOLD_FILE,
        metavar="PATH",
        help=f"while this file exists, do not start the daemon; its directory also holds "
        f"{PID_FILE_NAME} (default: {DEFAULT_HOLD_FILE})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m hapair.ops.supervisor``."""
    args = build_parser().parse_args(argv)
    return supervise(args.config, restart_delay=args.restart_delay, hold_file=args.hold_file)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
