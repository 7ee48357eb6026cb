"""Durable state with the real pair: maintenance survives a reboot (the /run state wiped, the
lib dir kept); a corrupt or non-regular state file is logged and repaired at start; a state
directory that stops being writable costs a logged, counted failure, never the daemon.

One lab for all of it (each daemon start and CLI run costs about 2 s on the shared VM); the
control socket is asked directly where the CLI's own output is not the point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hapair.lab.events import first
from hapair.lab.nodes import Timers
from hapair.lab.shell import wait_until
from hapair.lab.topology import Lab
from hapair.ops.control_client import request

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

FAST = Timers(interval=0.05, dead_after=4)


def ask(lab: Lab, node: str, payload: dict[str, object]) -> dict[str, object]:
    # The lab's configs put the control socket in DIR/NODE (runtime.state_dir).
    return request(lab.dir / node / f"lab-{lab.prefix}-{node}.sock", payload)


def status(lab: Lab, node: str) -> dict[str, object]:
    reply = ask(lab, node, {"cmd": "status"})
    assert reply["ok"] is True, reply
    state = reply["status"]
    assert isinstance(state, dict)
    return state


def state_file(lab: Lab, node: str) -> Path:
    return lab.dir / f"{node}.lib" / f"lab-{lab.prefix}-{node}.state"


def restart(lab: Lab, node: str) -> float:
    """SIGTERM `node` (it resigns and releases its VIPs) and start it again."""
    lab.hapair.terminate(node)
    since = time.time()
    lab.hapair.start(node)
    return since


def test_durable_state_survives_reboots_repairs_and_unwritable_dirs() -> None:
    with Lab(f"st{os.getpid() % 10000}", timers=FAST) as lab:
        lab.hapair.start("a")
        lab.hapair.start("b")
        assert wait_until(lambda: lab.vip_holders() == ["a"], timeout=10)
        path = state_file(lab, "a")
        assert oct(path.parent.stat().st_mode & 0o777) == "0o700"  # created by the daemon

        cfg = str(lab.hapair.config_path("a"))
        out = lab.python("a", ["-m", "hapair", "maintenance", "on", "-c", cfg]).stdout
        assert "stays so until `off`" in out
        # The reply came after the write: the file already says so.
        assert json.loads(path.read_text()) == {"version": 1, "maintenance": True}
        assert lab.vip_holders() == ["b"]

        # A reboot: /run (state_dir: control socket, balancer files) is gone, /var/lib stays.
        lab.hapair.terminate("a")
        shutil.rmtree(lab.dir / "a")
        lab.hapair.start("a")
        assert status(lab, "a")["maintenance"] is True
        assert wait_until(lambda: lab.hapair.role("a") == "BACKUP", timeout=5)
        assert lab.vip_holders() == ["b"]

        # A corrupt file (what once turned maintenance on): logged with path and reason,
        # defaults used, and the file rewritten before the daemon goes on.
        path.write_text('{"version": 1, "maintenance": "false"}')
        since = restart(lab, "a")
        reset = first(lab.hapair.events(), "state_file_reset", node="a", after=since)
        assert reset is not None and reset.get("path") == str(path)
        assert "maintenance must be true or false" in reset.get("problem")
        assert json.loads(path.read_text()) == {"version": 1, "maintenance": False}
        assert status(lab, "a")["maintenance"] is False

        # A FIFO there does not hang the start (it would block a plain open for ever).
        path.unlink()
        os.mkfifo(path)
        since = restart(lab, "a")
        reset = first(lab.hapair.events(), "state_file_reset", node="a", after=since)
        assert reset is not None and "FIFO" in reset.get("problem")
        assert path.is_file() and not path.is_fifo()

        # An upgrade: the file an older hapair wrote keeps its maintenance, in the new schema.
        legacy = {
            "boot_epoch": 2**64 - 1,
            "replay_marks": {"b": [1, 2]},
            "extra": {"maintenance": True},
        }
        path.write_text(json.dumps(legacy))
        since = restart(lab, "a")
        migrated = first(lab.hapair.events(), "state_file_migrated", node="a", after=since)
        assert migrated is not None and migrated.get("maintenance") == "True"
        assert json.loads(path.read_text()) == {"version": 1, "maintenance": True}
        assert status(lab, "a")["maintenance"] is True

        # The directory stops being writable while running: a file where it was (ENOTDIR).
        lib = path.parent
        since = time.time()
        lib.rename(lib.with_name("a.lib.moved"))
        lib.write_text("")
        reply = ask(lab, "a", {"cmd": "maintenance", "on": True})
        error = str(reply.get("error"))
        assert reply["ok"] is False and "maintenance is on now but could not be saved" in error
        assert str(path) in error and "survive a restart" in error
        reply = ask(lab, "a", {"cmd": "maintenance", "on": False})
        assert reply["ok"] is False and "maintenance is off now" in str(reply.get("error"))
        assert lab.hapair.running("a") and status(lab, "a")["state_save_failures"] == 2
        failed = [
            e for e in lab.hapair.events()
            if e.node == "a" and e.name == "state_save_failed" and e.ts >= since
        ]  # fmt: skip
        assert len(failed) == 1, failed  # logged once, then counted

        lib.unlink()
        lib.with_name("a.lib.moved").rename(lib)
        assert ask(lab, "a", {"cmd": "maintenance", "on": False})["ok"] is True
        back = first(lab.hapair.events(), "state_save_recovered", node="a", after=since)
        assert back is not None and back.get("failures") == "2"
        assert json.loads(path.read_text()) == {"version": 1, "maintenance": False}

        # A read-only lib dir at start (ProtectSystem=strict without StateDirectory=): exit 1
        # naming the key, the path and the fix, before any VIP; no traceback.
        lab.hapair.terminate("a")
        run = f"ip netns exec {lab.ns('a')} {sys.executable} -m hapair run -c {cfg}"
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             f"mount --bind -o ro {lib} {lib} && exec {run}"],
            capture_output=True, text=True, timeout=30, check=False, env=lab.env(),
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert f"runtime.lib_dir: {lib} is not writable (Read-only file system)" in proc.stderr
        assert "StateDirectory=hapair" in proc.stderr and "Traceback" not in proc.stderr
        assert not lab.has_vip("a")
