"""After a reload, is an old engine worker still accepting? Also without CAP_SYS_PTRACE, as
under the systemd unit, where another user's /proc/PID/fd cannot be read."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from ipaddress import ip_address
from pathlib import Path

import pytest

from hapair.balancer.engine import holds_socket, listening_inodes, still_accepting

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)

CHECK = """
import sys
from hapair.balancer.engine import holds_socket, still_accepting
pid, inode = int(sys.argv[1]), sys.argv[2]
print(holds_socket(pid, {inode}), still_accepting(pid, {inode}, "nginx"),
      still_accepting(pid, {inode}, "haproxy"))
"""


def test_a_listening_socket_is_seen_in_our_own_process() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with open("/proc/net/tcp") as fh:
            inodes = listening_inodes(fh.read(), ip_address("127.0.0.1"), port)
        assert inodes
        assert holds_socket(os.getpid(), inodes) is True
        assert still_accepting(os.getpid(), inodes, "nginx") is True
    assert holds_socket(os.getpid(), {"1"}) is False


@pytest.mark.parametrize(
    "drop", ["-sys_ptrace", "-sys_ptrace,-dac_override,-dac_read_search"]
)  # readlink refused; the listing refused too (the unit's bounding set has neither)
def test_without_ptrace_the_title_decides_for_nginx(drop: str) -> None:
    # A worker owned by nobody, and a checker without CAP_SYS_PTRACE (as under the unit).
    worker = subprocess.Popen(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "sleep", "30"]
    )
    try:
        for _ in range(200):  # until setpriv has become nobody and exec'd sleep
            status = Path(f"/proc/{worker.pid}/status").read_text()
            if (
                "\nUid:\t65534" in status
                and b"sleep" in Path(f"/proc/{worker.pid}/cmdline").read_bytes()
            ):
                break
            time.sleep(0.01)
        checker = subprocess.run(
            ["setpriv", f"--bounding-set={drop}", "--inh-caps=-all", sys.executable,
             "-c", CHECK, str(worker.pid), "12345"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        held, nginx, haproxy = checker.stdout.split()
        assert held == "None"  # may not look at nobody's descriptors
        assert nginx == "True"  # its title does not say "shutting down": assume it accepts
        assert haproxy == "False"  # nothing to tell by: the new worker's arrival decides
    finally:
        worker.kill()
        worker.wait(timeout=5)
