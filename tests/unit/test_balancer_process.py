"""Supervision: the pure restart rule, and real short-lived children (no engine needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hapair.balancer.process import (
    RestartPolicy,
    Supervised,
    _with_pdeathsig,
    caught_signals,
    command_line,
    stop_from_pidfile,
)
from hapair.errors import BalancerError
from hapair.lab.shell import wait_until

# -- the restart rule (pure) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "deaths", "expected"),
    [
        # Backoff doubles from `first`; the sixth death within the window gives up.
        (
            RestartPolicy(first=0.2, cap=5.0, limit=5, window=60.0),
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
            [0.2, 1.4, 2.8, 4.6, 7.2, None],
        ),
        # The backoff stops at `cap`.
        (
            RestartPolicy(first=1.0, cap=3.0, limit=10, window=60.0),
            [0.0, 10.0, 20.0, 30.0],
            [1.0, 12.0, 23.0, 33.0],
        ),
        # Deaths older than the window are forgotten: the count starts again.
        (
            RestartPolicy(first=0.5, cap=5.0, limit=1, window=10.0),
            [0.0, 10.0, 20.5, 21.0],
            [0.5, 10.5, 21.0, None],
        ),
    ],
)
def test_restart_policy(
    policy: RestartPolicy, deaths: list[float], expected: list[float | None]
) -> None:
    got = [policy.died(t) for t in deaths]
    assert got == pytest.approx(expected)


def test_recent_deaths_counts_inside_the_window() -> None:
    policy = RestartPolicy(window=5.0)
    for t in (0.0, 1.0, 7.0):
        policy.died(t)
    assert policy.recent_deaths == 1


@pytest.mark.parametrize(
    ("status", "signals"),
    [
        ("Name:\tx\nSigBlk:\t0000000000000000\nSigCgt:\t0000000000004a02\n", {2, 10, 12, 15}),
        ("SigCgt:\t0000000000000001\n", {1}),
        ("SigCgt:\t0000000000000000\n", set()),
        ("Name:\tx\n", set()),
    ],
)
def test_caught_signals(status: str, signals: set[int]) -> None:
    assert caught_signals(status) == signals


# -- real children -----------------------------------------------------------------------------

# Writes its stderr line, spawns a grandchild in its own process group if asked, and waits.
CHILD = """
import os, signal, subprocess, sys, time
marker, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]
print("child started", file=sys.stderr, flush=True)
if mode == "fail":
    print("boom: cannot bind", file=sys.stderr, flush=True)
    sys.exit(3)
if mode == "grandchild":
    g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    open(out, "w").write(str(g.pid))
if mode == "chatty":
    line = b"x" * 1023 + b"\\n"
    for _ in range(2048):  # 2 MiB: far more than a pipe holds
        os.write(2, line)
    os.write(2, b"last words\\n")
    open(out, "w").write("done")
if mode == "late-handler":
    time.sleep(0.3)
    signal.signal(signal.SIGHUP, lambda *_: open(out, "w").write("hup"))
time.sleep(60)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def child(tmp_path: Path) -> Iterator[Callable[..., tuple[Supervised, list[tuple[str, Any]]]]]:
    made: list[Supervised] = []

    def make(
        mode: str = "wait",
        policy: RestartPolicy | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> tuple[Supervised, list[tuple[str, Any]]]:
        marker = str(tmp_path / f"child-{len(made)}.conf")
        events: list[tuple[str, Any]] = []
        sup = Supervised(
            "child", [sys.executable, "-c", CHILD, marker, mode, str(tmp_path / "out")],
            tmp_path / f"child-{len(made)}.pid", marker, ready=ready,
            policy=policy or RestartPolicy(first=0.1, limit=1, window=60.0),
            on_event=lambda event, **kw: events.append((event, kw)), stop_timeout=1.0,
        )  # fmt: skip
        made.append(sup)
        return sup, events

    yield make
    for sup in made:
        sup.stop()


def test_a_dead_child_is_restarted_then_given_up_on(
    child: Callable[..., tuple[Supervised, list[tuple[str, Any]]]],
) -> None:
    sup, events = child()
    sup.start()
    first = sup.pid
    assert first is not None and sup.pidfile.read_text() == f"{first}\n"
    assert sup.supervise(100.0) == pytest.approx(100.25)  # alive: look again soon
    assert wait_until(lambda: "child started" in sup.stderr_tail, timeout=5.0, step=0.01)
    os.kill(first, signal.SIGKILL)
    assert wait_until(lambda: not sup.running, timeout=5.0, step=0.01)
    assert sup.supervise(100.0) == pytest.approx(100.1)  # the first backoff
    assert events[-1][0] == "balancer_process_died" and events[-1][1]["status"] == -9
    assert "child started" in events[-1][1]["stderr"]
    assert not sup.pidfile.exists()
    assert sup.supervise(100.05) == pytest.approx(100.1)  # not yet
    sup.supervise(100.1)
    assert sup.running and sup.pid not in (None, first)
    assert sup.status()["restarts"] == 1 and sup.status()["starts"] == 2
    os.kill(sup.pid or 0, signal.SIGKILL)
    assert wait_until(lambda: not sup.running, timeout=5.0, step=0.01)
    with pytest.raises(BalancerError, match=r"died 2 times within 60 s .* giving up"):
        sup.supervise(101.0)
    assert sup.supervise(200.0) is None and sup.status()["pid"] is None


def test_the_dead_leaders_group_is_killed_too(
    child: Callable[..., tuple[Supervised, list[tuple[str, Any]]]], tmp_path: Path
) -> None:
    sup, _ = child("grandchild")
    sup.start()
    out = tmp_path / "out"
    assert wait_until(lambda: out.exists() and out.read_text().isdigit(), timeout=5.0, step=0.01)
    grandchild = int(out.read_text())
    assert alive(grandchild)
    os.kill(sup.pid or 0, signal.SIGKILL)  # an nginx master dying leaves its workers
    assert wait_until(lambda: not sup.running, timeout=5.0, step=0.01)
    sup.supervise(0.0)
    assert wait_until(lambda: not alive(grandchild), timeout=5.0, step=0.01)


def test_a_chatty_child_never_blocks_on_its_stderr(
    child: Callable[..., tuple[Supervised, list[tuple[str, Any]]]], tmp_path: Path
) -> None:
    sup, _ = child("chatty")
    sup.start()
    # Nobody calls supervise meanwhile.
    assert wait_until(lambda: (tmp_path / "out").exists(), timeout=5.0, step=0.01)
    assert wait_until(lambda: sup.stderr_tail.endswith("last words\n"), timeout=5.0, step=0.01)
    assert len(sup.stderr_tail) <= 4096


def test_a_child_that_fails_at_start_says_why(
    child: Callable[..., tuple[Supervised, list[tuple[str, Any]]]],
) -> None:
    sup, _ = child("fail", ready=lambda: False)  # it would be ready once it listens
    with pytest.raises(BalancerError, match=r"(?s)exited with status 3 at start: .*boom: cannot"):
        sup.start()
    assert not sup.running and not sup.pidfile.exists()


def test_a_reload_signal_waits_for_the_handler(
    child: Callable[..., tuple[Supervised, list[tuple[str, Any]]]], tmp_path: Path
) -> None:
    sup, _ = child("late-handler")
    sup.start()
    sup.signal(signal.SIGHUP)  # sent at once, SIGHUP's default action would kill it
    assert wait_until(lambda: (tmp_path / "out").exists(), timeout=5.0, step=0.01)
    assert sup.running
    plain, _ = child()
    plain.start()
    with pytest.raises(BalancerError, match="does not handle signal"):
        plain.signal(signal.SIGUSR2, handler_wait=0.05)
    assert plain.running


def test_a_pid_file_naming_somebody_else_is_not_signalled(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pidfile = tmp_path / "x.pid"
        pidfile.write_text(f"{other.pid}\n")
        assert stop_from_pidfile(pidfile, str(tmp_path / "x.conf")) is False
        assert other.poll() is None and not pidfile.exists()
    finally:
        other.kill()
        other.wait(timeout=5)


def test_stop_from_a_pid_file_stops_our_child(
    child: Callable[..., tuple[Supervised, list[tuple[str, Any]]]],
) -> None:
    sup, _ = child()
    sup.start()
    pid = sup.pid or 0
    # A fresh Supervised (after a daemon restart) finds the child through the pid file.
    assert stop_from_pidfile(sup.pidfile, sup.marker, signal.SIGTERM, 1.0) is True
    assert wait_until(lambda: not alive(pid), timeout=5.0, step=0.01)
    assert not sup.pidfile.exists()


def test_a_start_after_an_unnoticed_death_clears_the_old_group(
    child: Callable[..., tuple[Supervised, list[tuple[str, Any]]]], tmp_path: Path
) -> None:
    sup, _ = child("grandchild")
    sup.start()
    out = tmp_path / "out"
    assert wait_until(lambda: out.exists() and out.read_text().isdigit(), timeout=5.0, step=0.01)
    grandchild = int(out.read_text())
    old = sup.pid or 0
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: not sup.running, timeout=5.0, step=0.01)
    out.unlink()
    sup.start()  # a pool change came before supervise saw the death
    assert wait_until(lambda: not alive(grandchild), timeout=5.0, step=0.01)
    assert sup.running and sup.pid != old and sup.last_exit == -9


def test_a_command_line_read_inside_execve_is_waited_for() -> None:
    reads = iter([b"", b"", b"nginx -c /run/hapair/nginx.conf\0"])
    line = command_line(os.getpid(), settle=5.0, read=lambda _pid: next(reads))
    assert line == b"nginx -c /run/hapair/nginx.conf\0"


def test_an_empty_command_line_is_waited_for_only_so_long() -> None:
    calls: list[int] = []

    def empty(pid: int) -> bytes:
        calls.append(pid)
        return b""

    assert command_line(os.getpid(), settle=0.05, read=empty) == b""
    assert 1 < len(calls) < 1000  # it retried, and it stopped
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait(timeout=5)
    calls.clear()
    assert command_line(dead.pid, settle=5.0, read=empty) == b""
    assert len(calls) == 1  # nothing is running there: no wait


def test_a_child_just_started_through_setpriv_is_recognised() -> None:
    # Found by CI: the marker check read the command line while the child was between
    # setpriv's exec and the program's, saw nothing, and left the child running.
    misses = 0
    for _ in range(150):
        proc = subprocess.Popen(
            _with_pdeathsig([sys.executable, "-c", "import time; time.sleep(30)", "hp-marker"]),
            start_new_session=True,
        )
        try:
            misses += b"hp-marker" not in command_line(proc.pid)
        finally:
            proc.kill()
            proc.wait(timeout=5)
    assert misses == 0
