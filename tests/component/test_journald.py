"""hapair's entries in a real systemd-journald, read back with ``journalctl -o json``.

Each test starts its own journald in a private mount namespace: a tmpfs over /run (and over
/var/log/journal if the host has one) and ``Storage=volatile`` through a drop-in on that tmpfs,
so the host's journal, sockets and configuration are never touched. The test reaches the
daemon's sockets and journal files through ``/proc/<pid>/root``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from hapair.log import configure, get_logger
from hapair.ops.journald import MESSAGE_IDS

JOURNALD = "/lib/systemd/systemd-journald"
UNSHARE = ("unshare", "--mount", "--propagation", "private")
REPO = Path(__file__).resolve().parents[2]
WAIT = 10.0  # seconds: the bound on every wait in this file

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0
    or not os.access(JOURNALD, os.X_OK)
    or not all(shutil.which(tool) for tool in ("unshare", "nsenter", "journalctl")),
    reason="needs root, systemd-journald, journalctl, unshare and nsenter",
)

DROP_IN = """\
[Journal]
Storage=volatile
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
RateLimitBurst=0
"""

# Runs inside the new mount namespace, then becomes journald (so the Popen pid is journald's).
START = """\
set -e
mount -t tmpfs -o mode=0755 tmpfs /run
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
mkdir -p /run/systemd/journald.conf.d
cp "$1" /run/systemd/journald.conf.d/hapair-test.conf
exec "$2"
"""


@dataclass
class Journald:
    """A private journald: its pid, sockets and journal as seen from the host."""

    pid: int

    @property
    def root(self) -> Path:
        return Path(f"/proc/{self.pid}/root")

    @property
    def socket(self) -> str:
        return str(self.root / "run/systemd/journal/socket")

    @property
    def stdout_socket(self) -> str:
        return str(self.root / "run/systemd/journal/stdout")

    def journalctl(self, *args: str) -> str:
        """Run journalctl on this journal's files."""
        argv = ["journalctl", "-D", str(self.root / "run/log/journal"), "--no-pager", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=WAIT, check=True).stdout

    def entries(self, *matches: str, want: int) -> list[dict[str, Any]]:
        """hapair's entries matching ``matches``, once at least ``want`` are there (bounded)."""
        deadline = time.monotonic() + WAIT
        while True:
            out = self.journalctl("-o", "json", "--all", "SYSLOG_IDENTIFIER=hapair", *matches)
            found = [json.loads(line) for line in out.splitlines()]
            if len(found) >= want or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[Journald]:
    conf = tmp_path / "journald.conf"
    conf.write_text(DROP_IN)
    errors = tmp_path / "journald.err"
    with errors.open("wb") as err:
        proc = subprocess.Popen(
            [*UNSHARE, "sh", "-c", START, "sh", str(conf), JOURNALD],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
        )
    try:
        jd = Journald(proc.pid)
        deadline = time.monotonic() + WAIT
        while not Path(jd.socket).is_socket():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"journald did not start: {errors.read_text()!r}")
            time.sleep(0.02)
        yield jd
    finally:
        proc.terminate()
        try:
            proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(WAIT)


@pytest.fixture
def log(journald: Journald) -> Iterator[Any]:
    configure("debug", sink="journald", journal_socket=journald.socket, cluster="web", node="alpha")
    try:
        yield get_logger()
    finally:
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()


def test_role_change_is_a_structured_entry(journald: Journald, log: Any) -> None:
    host_run = sorted(os.listdir("/run"))
    log.info(
        "role_changed",
        from_role="BACKUP",
        to_role="MASTER",
        reason="peer_lost",
        term=4,
        priority=150,
    )
    [entry] = journald.entries(want=1)
    assert entry["_TRANSPORT"] == "journal"
    assert entry["MESSAGE"] == "role BACKUP -> MASTER (peer_lost)"
    assert entry["MESSAGE_ID"] == MESSAGE_IDS["role_changed"]
    assert entry["PRIORITY"] == "6"
    assert entry["SYSLOG_IDENTIFIER"] == "hapair"
    assert entry["_PID"] == str(os.getpid())
    assert {k: v for k, v in entry.items() if k.startswith("HAPAIR_")} == {
        "HAPAIR_EVENT": "role_changed",
        "HAPAIR_ROLE": "MASTER",
        "HAPAIR_PREVIOUS_ROLE": "BACKUP",
        "HAPAIR_REASON": "peer_lost",
        "HAPAIR_CLUSTER": "web",
        "HAPAIR_NODE": "alpha",
        "HAPAIR_TERM": "4",
        "HAPAIR_PRIORITY": "150",
    }
    assert sorted(os.listdir("/run")) == host_run  # the host's /run saw nothing


# One call per event with a MESSAGE_ID, shaped like the daemon's own calls.
EVENTS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "info",
        "role_changed",
        {"from_role": "MASTER", "to_role": "BACKUP", "reason": "peer_higher_priority"},
    ),
    ("info", "vip_acquired", {"vip": "10.0.0.10/24", "interface": "eth0", "reason": "takeover"}),
    ("info", "vip_released", {"vip": "10.0.0.10/24", "reason": "demoted"}),
    ("warning", "peer_lost", {"peer": "beta", "reason": "dead_interval"}),
    ("info", "peer_found", {"peer": "beta", "reason": "heartbeat"}),
    ("warning", "split_brain", {"peer": "beta", "reason": "both_master"}),
    ("warning", "backend_down", {"backend": "web1", "reason": "refused", "pool": ["web2"]}),
    ("info", "backend_up", {"backend": "web1", "reason": "ok", "pool": ["web1", "web2"]}),
    ("info", "config_reloaded", {"source": "/etc/hapair/hapair.toml"}),
    ("error", "config_reload_failed", {"error": "cluster.peers: empty"}),
    ("info", "daemon_started", {"priority": 150, "peers": ["10.0.0.2"]}),
    ("info", "daemon_stopped", {}),
    ("error", "balancer_failed", {"error": "nginx -t failed"}),
]


def test_each_event_type_has_its_message_id(journald: Journald, log: Any) -> None:
    assert {event for _, event, _ in EVENTS} == set(MESSAGE_IDS)
    for level, event, fields in EVENTS:
        getattr(log, level)(event, **fields)
    assert len(journald.entries(want=len(EVENTS))) == len(EVENTS)
    for _, event, fields in EVENTS:
        [entry] = journald.entries(f"MESSAGE_ID={MESSAGE_IDS[event]}", want=1)
        assert entry["HAPAIR_EVENT"] == event
        for key in ("peer", "vip", "backend", "reason"):
            if key in fields:
                assert entry[f"HAPAIR_{key.upper()}"] == fields[key]
    [backend_down] = journald.entries("HAPAIR_EVENT=backend_down", want=1)
    assert (backend_down["PRIORITY"], backend_down["HAPAIR_POOL"]) == ("4", '["web2"]')


def test_operator_queries(journald: Journald, log: Any) -> None:
    """The documented one-liners: failovers (role changes to MASTER), and why."""
    role = MESSAGE_IDS["role_changed"]
    log.info("role_changed", from_role="BACKUP", to_role="MASTER", reason="peer_lost")
    log.info("role_changed", from_role="MASTER", to_role="BACKUP", reason="peer_higher_priority")
    log.info("role_changed", from_role="BACKUP", to_role="MASTER", reason="peer_resigned")
    log.warning("peer_lost", peer="beta", reason="dead_interval")
    journald.entries(want=4)
    failovers = journald.journalctl(
        f"MESSAGE_ID={role}", "HAPAIR_ROLE=MASTER", "--since=-7d", "-o", "cat"
    )
    assert failovers.splitlines() == [
        "role BACKUP -> MASTER (peer_lost)",
        "role BACKUP -> MASTER (peer_resigned)",
    ]
    why = journald.journalctl(
        f"MESSAGE_ID={role}",
        "-n1",
        "-o",
        "verbose",
        "--output-fields=HAPAIR_PREVIOUS_ROLE,HAPAIR_ROLE,HAPAIR_REASON",
    )
    assert "HAPAIR_REASON=peer_resigned" in why
    assert "HAPAIR_PREVIOUS_ROLE=BACKUP" in why
    reasons = journald.journalctl("-F", "HAPAIR_REASON")
    assert set(reasons.split()) == {
        "peer_lost",
        "peer_higher_priority",
        "peer_resigned",
        "dead_interval",
    }


def test_multiline_and_oversize_values_survive(journald: Journald, log: Any) -> None:
    try:
        raise OSError("address in use")
    except OSError:
        log.exception("balancer_failed", error="bind failed")
    blob = "0123456789abcdef" * 65536  # 1 MiB: beyond one datagram, so sent as a memfd
    log.info("big_event", blob=blob)
    failed, big = journald.entries(want=2)
    assert failed["PRIORITY"] == "3"
    assert failed["MESSAGE"] == "balancer failed: bind failed: OSError: address in use"
    assert failed["HAPAIR_EXCEPTION"].startswith("Traceback (most recent call last):\n")
    assert failed["HAPAIR_EXCEPTION"].rstrip().endswith("OSError: address in use")
    assert big["HAPAIR_BLOB"] == blob


CHILD = """\
from hapair.log import configure, get_logger
configure("info", "json", cluster="web", node="beta")
get_logger().warning("split_brain", peer="alpha", reason="both_master")
"""


def run_child_on_journal_stream(journald: Journald, journal_stream: str | None) -> None:
    """Run CHILD in journald's namespace with stderr on a journal stream, as systemd does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
        stream.settimeout(WAIT)
        stream.connect(journald.stdout_socket)
        # identifier, unit, priority, level prefix, forward to syslog / kmsg / console
        stream.sendall(b"hapair\n\n6\n0\n0\n0\n0\n")
        st = os.fstat(stream.fileno())
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        env["PYTHONPATH"] = str(REPO)
        env["JOURNAL_STREAM"] = journal_stream or f"{st.st_dev}:{st.st_ino}"
        subprocess.run(
            ["nsenter", f"--target={journald.pid}", "--mount", sys.executable, "-c", CHILD],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stream.fileno(),
            env=env,
            timeout=WAIT,
            check=True,
        )


def test_stderr_on_the_journal_switches_to_native_entries(journald: Journald) -> None:
    """Default sink and socket path: $JOURNAL_STREAM naming stderr is enough."""
    run_child_on_journal_stream(journald, None)
    [entry] = journald.entries(want=1)
    assert entry["_TRANSPORT"] == "journal"
    assert entry["MESSAGE_ID"] == MESSAGE_IDS["split_brain"]
    assert entry["MESSAGE"] == "split brain with peer alpha (both_master)"
    assert (entry["HAPAIR_NODE"], entry["HAPAIR_PEER"]) == ("beta", "alpha")


def test_other_stream_keeps_json_lines(journald: Journald) -> None:
    """$JOURNAL_STREAM naming another file: stderr stays JSON lines (here, stream transport)."""
    run_child_on_journal_stream(journald, "1:1")
    [entry] = journald.entries(want=1)
    assert entry["_TRANSPORT"] == "stdout"
    assert "MESSAGE_ID" not in entry
    line = json.loads(entry["MESSAGE"])
    assert (line["event"], line["peer"], line["node"]) == ("split_brain", "alpha", "beta")
