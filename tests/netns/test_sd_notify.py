"""A real ``hapair run`` talks to systemd: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

The daemon runs on node a of the namespace lab, alone, with ``NOTIFY_SOCKET`` naming a datagram
socket this test binds (as systemd does), and inside what hapair.service grants it: the unit's
capability bounding set, no_new_privs and no writable executable memory. The kernel attaches
the sender's credentials to each datagram: with ``NotifyAccess=main`` systemd accepts only the
daemon's own pid.
"""

from __future__ import annotations

import itertools
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hapair.lab.addresses import VIP4
from hapair.lab.nodes import Timers
from hapair.lab.topology import Lab

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "hapair.service"
# A heartbeat every second: the loop must wake for the watchdog on its own (every 0.2 s).
SLOW = Timers(interval=1.0, dead_after=3)
WATCHDOG_USEC = 400_000
UCRED = struct.Struct("iII")  # pid, uid, gid
# MemoryDenyWriteExecute= as the kernel's PR_SET_MDWE (Linux >= 6.3; older: not checked), then
# exec (same pid) the rest of argv with this interpreter.
NO_WX_MEMORY = (
    "import ctypes, os, sys; ctypes.CDLL(None).prctl(65, 1, 0, 0, 0);"
    " os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


@dataclass(frozen=True)
class Message:
    """One notification: when it arrived, who sent it, its fields."""

    at: float
    pid: int
    fields: dict[str, str]


class NotifySocket:
    """What systemd binds for a Type=notify service, reading sender credentials."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.messages: list[Message] = []

    def close(self) -> None:
        self.sock.close()

    def drain(self, timeout: float) -> None:
        """Read what arrives within ``timeout`` seconds (at least what is queued)."""
        end = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.sock], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                return
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
            pid = -1
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = UCRED.unpack(payload[: UCRED.size])[0]
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            self.messages.append(Message(time.monotonic(), pid, fields))

    def wait(self, pred: Callable[[Message], bool], timeout: float) -> Message:
        """The first message (already read or arriving within ``timeout``) matching ``pred``."""
        end = time.monotonic() + timeout
        seen = 0
        while True:
            for m in self.messages[seen:]:
                if pred(m):
                    return m
            seen = len(self.messages)
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such notification in {timeout}s: {self.messages[-8:]}")
            self.drain(min(left, 0.05))


def bounding_set() -> str:
    for line in UNIT.read_text().splitlines():
        if line.startswith("CapabilityBoundingSet="):
            caps = line.partition("=")[2].split()
            return "-all," + ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)
    raise AssertionError("hapair.service has no CapabilityBoundingSet=")


def test_the_daemon_reports_its_life_to_systemd() -> None:
    with Lab(f"sn{os.getpid() % 10000}", timers=SLOW, services=False) as lab:
        notify = NotifySocket(lab.dir / "notify")
        try:
            proc = lab.spawn(
                "daemon-a",
                "a",
                [
                    "env", f"NOTIFY_SOCKET={notify.path}", f"WATCHDOG_USEC={WATCHDOG_USEC}",
                    "setpriv", f"--bounding-set={bounding_set()}", "--inh-caps=-all",
                    "--no-new-privs",
                    sys.executable, "-c", NO_WX_MEMORY,
                    "-m", "hapair", "run", "-c", str(lab.hapair.config_path("a")),
                ],
            )  # fmt: skip
            check_life(lab, notify, proc.pid)
        finally:
            notify.close()


def check_life(lab: Lab, notify: NotifySocket, pid: int) -> None:
    # Start-up: READY=1 first, with a status line.
    ready = notify.wait(lambda m: "READY" in m.fields, 20.0)
    assert notify.messages[0] is ready, notify.messages[:3]
    assert ready.fields["READY"] == "1" and ready.fields.get("STATUS")

    # Alone, it becomes MASTER after the dead time: STATUS says so.
    master = notify.wait(lambda m: m.fields.get("STATUS", "").startswith("MASTER"), 15.0)
    assert f"VIP {VIP4}/24 held" in master.fields["STATUS"]
    assert "no peer heard" in master.fields["STATUS"]

    # The watchdog: every half of WATCHDOG_USEC, though a heartbeat goes out once a second.
    notify.drain(1.5)
    pings = [m.at for m in notify.messages if m.fields.get("WATCHDOG") == "1"]
    assert len(pings) >= 5, notify.messages[-10:]
    gaps = [b - a for a, b in itertools.pairwise(pings[-5:])]
    assert max(gaps) < WATCHDOG_USEC / 1e6, gaps

    # Reload (SIGHUP, as `kill -HUP` or Type=notify-reload sends): RELOADING=1 with the
    # monotonic clock, then READY=1 again.
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    os.kill(pid, signal.SIGHUP)
    reloading = notify.wait(lambda m: "RELOADING" in m.fields, 5.0)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert reloading.fields["RELOADING"] == "1"
    assert before <= int(reloading.fields["MONOTONIC_USEC"]) <= after
    notify.wait(lambda m: "READY" in m.fields and m.at >= reloading.at and m is not ready, 5.0)

    # Stop: STOPPING=1 while it hands over, then a clean exit.
    lab.hapair.terminate("a")
    assert lab.procs["daemon-a"].popen.returncode == 0
    notify.drain(0.2)
    stopping = notify.wait(lambda m: "STOPPING" in m.fields, 1.0)
    assert stopping.fields["STOPPING"] == "1" and stopping.at >= reloading.at

    # Every notification came from the daemon's own process (NotifyAccess=main).
    assert {m.pid for m in notify.messages} == {pid}
