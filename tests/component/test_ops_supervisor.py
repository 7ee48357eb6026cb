"""The supervisor for real: a real process tree, a fake daemon and a fake release."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hapair.lab.shell import pid_alive, wait_until

# fake_daemon.py DIR: records its pid once its SIGTERM handler is in; exits with DIR/exit_with
# at once when that file exists; on SIGTERM records it and exits 0; else lives up to 30 s.
FAKE_DAEMON = """
import os, pathlib, signal, sys, time
d = pathlib.Path(sys.argv[1])
def term(signum, frame):
    with open(d / "terms", "a") as f:
        f.write(f"{os.getpid()}\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
with open(d / "starts", "a") as f:
    f.write(f"{os.getpid()}\\n")
code = d / "exit_with"
if code.exists():
    sys.exit(int(code.read_text()))
time.sleep(30)
"""
FAKE_RELEASE = """
import pathlib, sys
with open(pathlib.Path(sys.argv[1]) / "releases", "a") as f:
    f.write("released\\n")
print("removed 198.51.100.50/24")
"""
# The small entry that injects both argvs: supervise() is the real thing, only they are fake.
ENTRY = """
import json, sys
from hapair.ops.supervisor import supervise
opts = json.loads(sys.argv[1])
sys.exit(supervise("unused.toml", **opts))
"""
WAIT = 10.0


@dataclass
class Run:
    """One supervisor process and the files its fakes write."""

    proc: subprocess.Popen[bytes]
    dir: Path

    @property
    def hold(self) -> Path:
        return self.dir / "run" / "hold"

    @property
    def pid_file(self) -> Path:
        return self.dir / "run" / "daemon.pid"

    def lines(self, name: str) -> list[str]:
        path = self.dir / name
        return path.read_text().split() if path.exists() else []

    def starts(self) -> list[int]:
        return [int(pid) for pid in self.lines("starts")]

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in (self.dir / "stderr").read_text().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event["event"] == name:
                    found.append(event)
        return found

    def started(self, count: int) -> int:
        """Wait until the fake daemon has started `count` times; return the last pid."""
        assert wait_until(lambda: len(self.starts()) >= count, timeout=WAIT), self.stderr()
        return self.starts()[-1]

    def daemon_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the supervisor did not exit:\n{self.stderr()}")

    def stderr(self) -> str:
        return (self.dir / "stderr").read_text()


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Any]:
    runs: list[Run] = []
    for name, text in [("daemon.py", FAKE_DAEMON), ("release.py", FAKE_RELEASE)]:
        (tmp_path / name).write_text(textwrap.dedent(text))

    def start(restart_delay: float = 0.2, held: bool = False, exit_with: int | None = None) -> Run:
        if exit_with is not None:
            (tmp_path / "exit_with").write_text(str(exit_with))
        if held:
            (tmp_path / "run").mkdir(exist_ok=True)
            (tmp_path / "run" / "hold").touch()
        opts = {
            "restart_delay": restart_delay,
            "hold_file": str(tmp_path / "run" / "hold"),
            "daemon_argv": [sys.executable, str(tmp_path / "daemon.py"), str(tmp_path)],
            "release_argv": [sys.executable, str(tmp_path / "release.py"), str(tmp_path)],
        }
        with open(tmp_path / "stderr", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", ENTRY, json.dumps(opts)], stderr=err, cwd=tmp_path
            )
        run = Run(proc, tmp_path)
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(timeout=WAIT)
    starts = tmp_path / "starts"
    for pid in [int(p) for p in starts.read_text().split()] if starts.exists() else []:
        if pid_alive(pid) and b"daemon.py" in _cmdline(pid):
            os.kill(pid, signal.SIGKILL)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_a_killed_daemon_is_released_and_restarted(supervisor: Any) -> None:
    run = supervisor()
    first = run.started(1)
    assert wait_until(lambda: run.daemon_pid() == first, timeout=WAIT)
    os.kill(first, signal.SIGKILL)
    second = run.started(2)
    assert second != first
    assert wait_until(lambda: run.daemon_pid() == second, timeout=WAIT)
    exited = run.events("daemon_exited")
    assert [(e["pid"], e["status"], e["signal"]) for e in exited] == [(first, None, "SIGKILL")]
    assert [e["after"] for e in run.events("daemon_restarting")] == [0.2]
    assert run.lines("releases") == ["released"]
    assert run.events("release_finished")[0]["output"] == ["removed 198.51.100.50/24"]

    run.proc.send_signal(signal.SIGTERM)
    assert run.wait() == 0
    assert run.lines("terms") == [str(second)]
    assert run.lines("releases") == ["released", "released"]
    assert not run.pid_file.exists()


def test_sigterm_is_forwarded_and_ends_with_0(supervisor: Any) -> None:
    run = supervisor()
    pid = run.started(1)
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait() == 0
    assert run.lines("terms") == [str(pid)]
    assert run.lines("releases") == ["released"]
    assert [(e["status"], e["signal"]) for e in run.events("daemon_exited")] == [(0, None)]
    assert run.events("daemon_restarting") == []
    last = run.events("supervisor_exiting")[-1]
    assert (last["reason"], last["status"]) == ("stopped", 0)


def test_the_hold_file_keeps_the_daemon_down(supervisor: Any) -> None:
    run = supervisor(held=True)
    # Held from the start: nothing runs for well over the restart delay.
    assert wait_until(run.starts, timeout=1.0) is None
    run.hold.unlink()
    first = run.started(1)

    run.hold.touch()
    os.kill(first, signal.SIGKILL)
    assert wait_until(lambda: run.events("daemon_exited"), timeout=WAIT)
    assert wait_until(lambda: len(run.starts()) > 1, timeout=1.0) is None
    assert run.daemon_pid() is None
    assert run.lines("releases") == ["released"]
    assert run.events("daemon_restarting") == []
    assert len(run.events("daemon_held")) == 2
    run.hold.unlink()
    run.started(2)

    # A stop request while held (no daemon running) ends at once, with 0.
    run.hold.touch()
    os.kill(run.starts()[-1], signal.SIGKILL)
    assert wait_until(lambda: len(run.events("daemon_held")) == 3, timeout=WAIT)
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait() == 0
    assert run.lines("releases") == ["released", "released"]


def test_exit_status_2_is_not_restarted(supervisor: Any) -> None:
    run = supervisor(exit_with=2)
    assert run.wait() == 2
    assert len(run.starts()) == 1
    assert run.lines("releases") == ["released"]
    assert [e["status"] for e in run.events("daemon_exited")] == [2]
    assert run.events("supervisor_exiting")[-1]["reason"] == "config_error"


def test_a_crash_loop_gives_up_after_five_starts(supervisor: Any) -> None:
    run = supervisor(restart_delay=0.0, exit_with=1)
    assert run.wait() == 1
    assert len(run.starts()) == 5
    assert run.lines("releases") == ["released"] * 5
    assert run.events("supervisor_exiting")[-1]["reason"] == "start_limit"
