"""Hooks, the asyncio half: real processes on a real loop (order, env, timeouts, cancellation)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from hapair.config.hooks import Hook
from hapair.core.roles import Role
from hapair.ops.hooks import BackendEvent, HookContext, HookRunner, RoleEvent

PY = sys.executable
CONTEXT = HookContext(cluster="web", node="alpha", vips=("198.51.100.50/24",))
ENVIRON = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "SECRET": "nope"}
TAKEOVER = RoleEvent(Role.MASTER, Role.BACKUP, "peer_dead", peer="beta")
DEMOTED = RoleEvent(Role.BACKUP, Role.MASTER, "preempted", peer="beta")
FAULTED = RoleEvent(Role.FAULT, Role.BACKUP, "carrier_lost:eth0", peer="beta")

SCRIPTS = {
    # record.py OUT TAG [DELAY]: sleep DELAY, then append one JSON line (tag, argv, env).
    "record.py": """
        import json, os, sys, time
        if len(sys.argv) > 3:
            time.sleep(float(sys.argv[3]))
        with open(sys.argv[1], "a") as f:
            f.write(json.dumps({"tag": sys.argv[2], "argv": sys.argv, "env": dict(os.environ)}))
            f.write("\\n")
    """,
    "sleep.py": """
        import sys, time
        time.sleep(float(sys.argv[1]))
    """,
    # stubborn.py [READYFILE]: ignores SIGTERM (only SIGKILL stops it), then says so.
    "stubborn.py": """
        import pathlib, signal, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        if len(sys.argv) > 1:
            pathlib.Path(sys.argv[1]).touch()
        time.sleep(30)
    """,
    "fail.py": """
        import sys
        print("to stdout", flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        sys.exit(3)
    """,
    "chatty.py": """
        import sys
        for i in range(20000):
            print(f"line {i:05d}")
        print("THE END")
    """,
    # spawn.py PIDFILE SECONDS [exit]: start a grandchild `sleep`, record its pid, then either
    # sleep too or exit at once (leaving the grandchild with our pipe as its stdout).
    "spawn.py": """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        with open(sys.argv[1], "w") as f:
            f.write(str(child.pid))
        if len(sys.argv) < 4:
            time.sleep(float(sys.argv[2]))
    """,
}


class RecordingLog:
    """A structlog-like logger that keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append(("info", event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.lines.append(("warning", event, kw))

    def error(self, event: str, **kw: Any) -> None:
        self.lines.append(("error", event, kw))

    def named(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [
            kw
            for _, name, kw in self.lines
            if name == event and all(kw.get(k) == v for k, v in match.items())
        ]

    def index(self, event: str, **match: Any) -> int:
        for i, (_, name, kw) in enumerate(self.lines):
            if name == event and all(kw.get(k) == v for k, v in match.items()):
                return i
        raise AssertionError(f"no {event} {match} in {self.lines}")

    def level(self, event: str) -> str:
        return next(level for level, name, _ in self.lines if name == event)

    async def wait_for(self, event: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.named(event, **match):
            assert time.monotonic() < deadline, f"no {event} {match} in {self.lines}"
            await asyncio.sleep(0.01)
        return self.named(event, **match)[0]


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    for name, text in SCRIPTS.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run one scenario on a fresh loop, failing instead of hanging."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(bounded())


def hook(on: Any, *argv: str | Path, **extra: Any) -> Hook:
    return Hook.model_validate({"on": on, "command": [str(a) for a in argv], **extra})


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for init counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def reaped(pid: int) -> bool:
    """True if ``pid`` (our child) is gone and reaped: no zombie left behind."""
    return not Path(f"/proc/{pid}").exists()


async def eventually(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def runner(hooks: list[Hook], log: RecordingLog, **kw: Any) -> HookRunner:
    return HookRunner(hooks, CONTEXT, log, environ=ENVIRON, **kw)


# --- order, environment, exit status ---------------------------------------------------------


def test_chain_runs_in_config_order_one_at_a_time_with_its_env(scripts: Path) -> None:
    out = scripts / "out.jsonl"
    rec = scripts / "record.py"
    hooks = [
        hook("role", PY, rec, out, "a", "0.1"),
        hook("master", PY, rec, out, "b"),
        hook("backend", PY, rec, out, "not-for-roles"),
        hook(["backup", "master"], PY, rec, out, "c", env={"SERVICE": "web"}),
        hook("backup", PY, rec, out, "not-for-master"),
    ]
    log = RecordingLog()

    async def scenario() -> None:
        r = runner(hooks, log)
        r.submit(TAKEOVER)
        await r.wait_idle()

    run(scenario())
    lines = records(out)
    assert [line["tag"] for line in lines] == ["a", "b", "c"]
    assert lines[1]["argv"] == [str(rec), str(out), "b"]
    env = lines[2]["env"]
    assert {k: v for k, v in env.items() if k.startswith("HAPAIR_")} == {
        "HAPAIR_EVENT": "master",
        "HAPAIR_ROLE": "MASTER",
        "HAPAIR_PREVIOUS_ROLE": "BACKUP",
        "HAPAIR_REASON": "peer_dead",
        "HAPAIR_CLUSTER": "web",
        "HAPAIR_NODE": "alpha",
        "HAPAIR_PEER": "beta",
        "HAPAIR_VIPS": "198.51.100.50/24",
        "HAPAIR_BACKEND": "",
        "HAPAIR_BACKEND_STATE": "",
    }
    assert env["SERVICE"] == "web" and "SERVICE" not in lines[0]["env"]
    assert env["PATH"] == ENVIRON["PATH"] and env["LANG"] == "C.UTF-8"
    # Nothing else of the daemon's environment (Python may add LC_CTYPE itself, PEP 538).
    own = {k for k in env if k.startswith("HAPAIR_")}
    assert set(env) - own - {"PATH", "LANG", "SERVICE", "LC_CTYPE"} == set()
    assert "SECRET" not in env
    # One at a time: each hook starts after the one before it finished.
    for before, after in (("hook[0]", "hook[1]"), ("hook[1]", "hook[3]")):
        assert log.index("hook_finished", hook=before) < log.index("hook_started", hook=after)
    finished = log.named("hook_finished")
    assert [f["exit_status"] for f in finished] == [0, 0, 0]
    assert all(f["trigger"] == "master" and f["duration"] >= 0 for f in finished)


def test_backend_event_env(scripts: Path) -> None:
    out = scripts / "out.jsonl"
    log = RecordingLog()

    async def scenario() -> None:
        r = runner([hook("backend_down", PY, scripts / "record.py", out, "d")], log)
        r.submit(BackendEvent("web1", up=False, reason="connection refused", role=Role.MASTER))
        r.submit(BackendEvent("web2", up=True, reason="ok", role=Role.MASTER))  # not subscribed
        await r.wait_idle()

    run(scenario())
    [line] = records(out)
    env = line["env"]
    assert env["HAPAIR_EVENT"] == "backend_down"
    assert env["HAPAIR_BACKEND"] == "web1" and env["HAPAIR_BACKEND_STATE"] == "down"
    assert env["HAPAIR_ROLE"] == "MASTER" and env["HAPAIR_PREVIOUS_ROLE"] == ""
    assert env["HAPAIR_REASON"] == "connection refused"
    assert log.named("hook_finished")[0]["backend"] == "web1"


def test_non_zero_exit_is_logged_with_its_output(scripts: Path) -> None:
    log = RecordingLog()

    async def scenario() -> None:
        r = runner([hook("role", PY, scripts / "fail.py")], log)
        r.submit(TAKEOVER)
        await r.wait_idle()

    run(scenario())
    [done] = log.named("hook_finished")
    assert done["exit_status"] == 3
    assert done["output"] == "to stdout\nto stderr"
    assert done["program"] == PY and done["hook"] == "hook[0]"
    assert log.level("hook_finished") == "warning"


def test_long_output_is_cut_to_its_tail(scripts: Path) -> None:
    log = RecordingLog()

    async def scenario() -> None:
        r = runner([hook("role", PY, scripts / "chatty.py")], log, output_limit=1024)
        r.submit(TAKEOVER)
        await r.wait_idle()

    run(scenario())
    [done] = log.named("hook_finished")
    assert done["exit_status"] == 0 and done["output_truncated"] is True
    assert len(done["output"]) <= 1024 and done["output"].endswith("line 19999\nTHE END")


def test_missing_program_is_logged_and_the_chain_goes_on(scripts: Path) -> None:
    out = scripts / "out.jsonl"
    log = RecordingLog()
    hooks = [
        hook("role", "/nonexistent/hapair-hook"),
        hook("role", scripts / "record.py"),  # not executable: cannot exec either
        hook("role", PY, scripts / "record.py", out, "after"),
    ]

    async def scenario() -> None:
        r = runner(hooks, log)
        r.submit(TAKEOVER)
        await r.wait_idle()

    run(scenario())
    failed = log.named("hook_failed")
    assert [f["hook"] for f in failed] == ["hook[0]", "hook[1]"]
    assert "No such file" in failed[0]["error"] and "Permission denied" in failed[1]["error"]
    assert log.level("hook_failed") == "error"
    assert [line["tag"] for line in records(out)] == ["after"]


def test_a_background_child_holding_the_pipe_does_not_delay_the_result(scripts: Path) -> None:
    log = RecordingLog()
    pidfile = scripts / "grandchild.pid"

    async def scenario() -> float:
        r = runner([hook("role", PY, scripts / "spawn.py", pidfile, "0", "exit", timeout=5)], log)
        start = time.monotonic()
        r.submit(TAKEOVER)
        await r.wait_idle()
        return time.monotonic() - start

    took = run(scenario())
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert log.named("hook_finished")[0]["exit_status"] == 0
    assert not log.named("hook_timeout")
    assert took < 2.0


# --- timeouts --------------------------------------------------------------------------------


def test_timeout_terminates_the_hook_and_the_chain_goes_on(scripts: Path) -> None:
    out = scripts / "out.jsonl"
    log = RecordingLog()
    hooks = [
        hook("role", PY, scripts / "sleep.py", "30", timeout="300ms"),
        hook("role", PY, scripts / "record.py", out, "next"),
    ]

    async def scenario() -> None:
        r = runner(hooks, log)
        r.submit(TAKEOVER)
        await r.wait_idle()

    run(scenario())
    [timeout] = log.named("hook_timeout")
    assert timeout["signal"] == "SIGTERM" and timeout["killed"] is False
    assert 0.3 <= timeout["duration"] < 2.0 and timeout["timeout"] == 0.3
    assert reaped(timeout["pid"])
    assert log.level("hook_timeout") == "warning"
    assert [line["tag"] for line in records(out)] == ["next"]


def test_a_hook_ignoring_sigterm_is_killed_after_the_grace(scripts: Path) -> None:
    log = RecordingLog()

    async def scenario() -> None:
        r = runner([hook("role", PY, scripts / "stubborn.py", timeout="500ms")], log, grace=0.3)
        r.submit(TAKEOVER)
        await r.wait_idle()

    run(scenario())
    [timeout] = log.named("hook_timeout")
    assert timeout["killed"] is True and timeout["signal"] == "SIGKILL"
    assert timeout["output"] == "ready"
    assert 0.8 <= timeout["duration"] < 3.0
    assert reaped(timeout["pid"])


# --- newer events supersede older ones on their lane -----------------------------------------


def test_a_newer_role_change_cancels_the_running_role_chain(scripts: Path) -> None:
    out = scripts / "out.jsonl"
    log = RecordingLog()
    hooks = [
        hook("master", PY, scripts / "sleep.py", "30", timeout="60s"),
        hook("master", PY, scripts / "record.py", out, "master-only"),
        hook("role", PY, scripts / "record.py", out, "any-role"),
    ]

    async def scenario() -> None:
        r = runner(hooks, log)
        r.submit(TAKEOVER)
        await log.wait_for("hook_started", hook="hook[0]")
        r.submit(DEMOTED)
        await r.wait_idle()

    run(scenario())
    [stopped] = log.named("hook_cancelled", started=True)
    assert stopped["hook"] == "hook[0]" and stopped["reason"] == "superseded"
    assert stopped["duration"] < 2.0 and reaped(stopped["pid"])
    skipped = log.named("hook_cancelled", started=False)
    assert [(s["trigger"], s["hook"]) for s in skipped] == [
        ("master", "hook[1]"),
        ("master", "hook[2]"),
    ]
    [line] = records(out)
    assert line["tag"] == "any-role" and line["env"]["HAPAIR_EVENT"] == "backup"
    # The newer chain starts only once the older hook is gone.
    assert log.index("hook_cancelled", hook="hook[0]") < log.index("hook_started", trigger="backup")


def test_of_several_quick_role_changes_only_the_newest_runs(scripts: Path) -> None:
    out = scripts / "out.jsonl"
    log = RecordingLog()
    hooks = [hook("role", PY, scripts / "record.py", out, "r", "0.3")]

    async def scenario() -> None:
        r = runner(hooks, log)
        r.submit(TAKEOVER)
        await log.wait_for("hook_started")
        r.submit(DEMOTED)  # waits for the master hook to stop...
        r.submit(FAULTED)  # ...and is superseded before it ever starts
        await r.wait_idle()

    run(scenario())
    assert [line["env"]["HAPAIR_EVENT"] for line in records(out)] == ["fault"]
    cancelled = log.named("hook_cancelled")
    assert [(c["trigger"], c["started"]) for c in cancelled] == [
        ("backup", False),
        ("master", True),
    ]
    assert [s["trigger"] for s in log.named("hook_started")] == ["master", "fault"]


def test_backend_lanes_same_backend_supersedes_others_and_roles_do_not(scripts: Path) -> None:
    out = scripts / "out.jsonl"
    log = RecordingLog()
    hooks = [
        hook("backend", PY, scripts / "record.py", out, "b", "0.4"),
        hook("role", PY, scripts / "record.py", out, "r", "0.1"),
    ]

    async def scenario() -> None:
        r = runner(hooks, log)
        r.submit(BackendEvent("web1", False, "refused", Role.MASTER))
        r.submit(BackendEvent("web2", False, "refused", Role.MASTER))
        await log.wait_for("hook_started", backend="web1")
        r.submit(TAKEOVER)
        r.submit(BackendEvent("web1", True, "ok", Role.MASTER))
        await r.wait_idle()

    run(scenario())
    seen = sorted(
        (line["env"]["HAPAIR_EVENT"], line["env"]["HAPAIR_BACKEND"]) for line in records(out)
    )
    assert seen == [("backend_down", "web2"), ("backend_up", "web1"), ("master", "")]
    [cancelled] = log.named("hook_cancelled")
    assert cancelled["backend"] == "web1" and cancelled["trigger"] == "backend_down"
    # Lanes overlap: web2's hook started before web1's first one ended.
    assert log.index("hook_started", backend="web2") < log.index("hook_cancelled")


def test_backend_lanes_are_bounded_and_roles_always_get_one(scripts: Path) -> None:
    log = RecordingLog()
    hooks = [hook("backend", PY, scripts / "sleep.py", "30"), hook("role", PY, "-c", "pass")]

    async def scenario() -> HookRunner:
        r = runner(hooks, log, max_backend_lanes=2)
        for name in ("a", "b", "c", "d"):
            r.submit(BackendEvent(name, False, "refused", Role.MASTER))
        r.submit(TAKEOVER)
        await log.wait_for("hook_finished", trigger="master")
        await r.close()
        return r

    r = run(scenario())
    assert r.dropped == 2
    [dropped] = log.named("hook_dropped")
    assert dropped["backend"] == "c" and dropped["lanes"] == 2
    assert sorted(s["backend"] for s in log.named("hook_started", trigger="backend_down")) == [
        "a",
        "b",
    ]


# --- the loop is never blocked; close() leaves nothing behind --------------------------------


def test_the_loop_keeps_ticking_while_hooks_run(scripts: Path) -> None:
    log = RecordingLog()
    hooks = [
        hook("role", PY, scripts / "sleep.py", "0.5"),
        hook("role", PY, scripts / "chatty.py"),
        hook("role", PY, scripts / "sleep.py", "30", timeout="200ms"),
    ]

    async def scenario() -> float:
        r = runner(hooks, log, grace=0.2)
        gaps: list[float] = []
        stop = False

        async def ticker() -> None:
            last = time.monotonic()
            while not stop:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        r.submit(TAKEOVER)
        await r.wait_idle()
        stop = True
        await tick
        assert len(gaps) > 30
        return max(gaps)

    assert run(scenario()) < 0.2
    assert len(log.named("hook_finished")) == 2 and len(log.named("hook_timeout")) == 1


def test_close_stops_every_hook_and_reaps_it(scripts: Path) -> None:
    log = RecordingLog()
    pidfile = scripts / "grandchild.pid"
    hooks = [
        hook("role", PY, scripts / "spawn.py", pidfile, "30", timeout="60s"),
        hook("role", PY, "-c", "pass"),
        hook("backend", PY, scripts / "stubborn.py", scripts / "ready", timeout="60s"),
    ]

    async def scenario() -> tuple[HookRunner, float]:
        r = runner(hooks, log, grace=0.3)
        r.submit(TAKEOVER)
        r.submit(BackendEvent("web1", False, "refused", Role.MASTER))
        await log.wait_for("hook_started", trigger="master")
        await log.wait_for("hook_started", trigger="backend_down")
        await eventually(lambda: pidfile.exists() and pidfile.read_text())
        await eventually((scripts / "ready").exists)
        r.submit(DEMOTED)  # waiting behind the master chain when close() comes
        start = time.monotonic()
        await r.close()
        took = time.monotonic() - start
        r.submit(FAULTED)  # ignored after close
        assert not r.busy
        await eventually(lambda: not alive(int(pidfile.read_text())))
        return r, took

    _, took = run(scenario())
    started = log.named("hook_started")
    assert len(started) == 2
    assert all(reaped(s["pid"]) for s in started)
    stopped = log.named("hook_cancelled", started=True)
    assert sorted(s["trigger"] for s in stopped) == ["backend_down", "master"]
    assert all(s["reason"] == "closing" for s in stopped)
    assert [s["killed"] for s in stopped if s["trigger"] == "backend_down"] == [True]
    skipped = log.named("hook_cancelled", started=False)
    assert sorted((s["trigger"], s["hook"]) for s in skipped) == [
        ("backup", "hook[0]"),
        ("backup", "hook[1]"),
        ("master", "hook[1]"),
    ]
    assert not log.named("hook_started", trigger="fault")
    assert took < 2.0


def test_close_with_wait_lets_a_running_chain_finish(scripts: Path) -> None:
    log = RecordingLog()

    async def scenario() -> None:
        r = runner([hook("role", PY, scripts / "sleep.py", "0.2")], log)
        r.submit(DEMOTED)
        await log.wait_for("hook_started")
        await r.close(wait=5.0)

    run(scenario())
    assert log.named("hook_finished")[0]["exit_status"] == 0
    assert not log.named("hook_cancelled")
