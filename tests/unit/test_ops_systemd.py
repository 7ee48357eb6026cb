"""sd_notify over a real AF_UNIX datagram socket, the watchdog period, the status line, RT."""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import pytest

from hapair.ops.systemd import (
    MESSAGE_MAX,
    STATUS_MAX,
    BalancerSummary,
    Notifier,
    PeerRole,
    WatchdogTimer,
    format_message,
    notify_address,
    status_line,
    status_line_from,
    watchdog_interval,
)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A notify socket, as systemd binds it: AF_UNIX datagrams on a path."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield sock, str(path)
    sock.close()


def received(sock: socket.socket) -> list[str]:
    """One datagram's lines."""
    return sock.recv(MESSAGE_MAX + 1).decode().split("\n")


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail instead of hanging if the body blocks (a blocking send would)."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"blocked for more than {seconds}s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# -- the messages ------------------------------------------------------------------------------


def test_each_message_arrives_as_systemd_reads_it(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("BACKUP, no VIP held, no peer heard")
    assert received(sock) == ["READY=1", "STATUS=BACKUP, no VIP held, no peer heard"]
    assert n.ready()
    assert received(sock) == ["READY=1"]
    assert n.status("MASTER, VIP 10.0.0.50/24 held")
    assert received(sock) == ["STATUS=MASTER, VIP 10.0.0.50/24 held"]
    assert n.watchdog()
    assert received(sock) == ["WATCHDOG=1"]
    assert n.stopping("MASTER, handing over")
    assert received(sock) == ["STOPPING=1", "STATUS=MASTER, handing over"]
    assert n.sent == 5 and n.failures == 0
    n.close()


def test_reloading_carries_the_monotonic_clock(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert Notifier.from_environ({"NOTIFY_SOCKET": path}).reloading()
    lines = received(sock)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert lines[0] == "RELOADING=1"
    key, value = lines[1].split("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after


def test_an_unchanged_status_is_not_sent_again(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert n.status("BACKUP") and n.status("BACKUP") and n.status("MASTER")
    assert received(sock) == ["STATUS=BACKUP"]
    assert received(sock) == ["STATUS=MASTER"]
    assert n.sent == 2
    assert n.ready("MASTER")  # READY carries its own STATUS: it counts as shown
    received(sock)
    assert n.status("MASTER") and n.sent == 3


def test_status_is_one_line_and_bounded(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert n.status("FAULT\ncarrier lost\r\non eth0 " + "x" * 1000)
    lines = received(sock)
    assert len(lines) == 1
    assert lines[0].startswith("STATUS=FAULT carrier lost on eth0 x")
    assert len(lines[0]) == len("STATUS=") + STATUS_MAX and lines[0].endswith("…")


def test_format_message_refuses_what_systemd_would_misread() -> None:
    assert format_message([("READY", "1"), ("STATUS", "a\nb")]) == b"READY=1\nSTATUS=a b"
    for bad in ("ready", "A=B", "", "STATUS\n"):
        with pytest.raises(ValueError):
            format_message([(bad, "1")])


def test_abstract_socket_names(tmp_path: Path) -> None:
    name = f"hapair-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2.0)
        n = Notifier.from_environ({"NOTIFY_SOCKET": f"@{name}"})
        assert n.address == b"\0" + name.encode()
        assert n.watchdog()
        assert received(sock) == ["WATCHDOG=1"]


@pytest.mark.parametrize(
    ("value", "address"),
    [
        (None, None),
        ("", None),
        ("@", None),
        ("@x", b"\0x"),
        ("/run/systemd/notify", b"/run/systemd/notify"),
        ("relative/path", None),
        ("vsock:2:1234", None),
        ("/" + "p" * 106, b"/" + b"p" * 106),
        ("/" + "p" * 107, None),  # 108 bytes leave no room for the NUL
        ("@" + "a" * 107, b"\0" + b"a" * 107),
        ("@" + "a" * 108, None),
    ],
)
def test_notify_address(value: str | None, address: bytes | None) -> None:
    assert notify_address(value) == address


# -- failures: never raise, never block, report once ------------------------------------------


def test_no_notify_socket_is_a_quiet_no_op() -> None:
    errors: list[str] = []
    n = Notifier.from_environ({}, on_error=errors.append)
    assert not n.enabled
    assert not n.ready("x") and not n.watchdog() and not n.reloading() and not n.stopping()
    assert n.failures == 0 and errors == []


def test_an_unsupported_address_is_reported_once() -> None:
    errors: list[str] = []
    n = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:99"}, on_error=errors.append)
    assert not n.enabled and not n.ready()
    assert len(errors) == 1 and "vsock:2:99" in errors[0]


def test_a_missing_listener_is_reported_once_then_counted(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    errors: list[str] = []
    n = Notifier.from_environ({"NOTIFY_SOCKET": str(path)}, on_error=errors.append)
    assert [n.watchdog() for _ in range(3)] == [False, False, False]
    assert n.failures == 3 and len(errors) == 1 and n.last_error is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))  # systemd back (or re-executed): the same name, a new socket
        sock.settimeout(2.0)
        assert n.watchdog()
        assert received(sock) == ["WATCHDOG=1"]
    assert not n.watchdog()  # a new outage after a success is reported again
    assert len(errors) == 2


def test_a_full_listener_makes_sends_fail_without_blocking(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    errors: list[str] = []
    n = Notifier.from_environ({"NOTIFY_SOCKET": path}, on_error=errors.append)
    with deadline(5.0):
        results = [n.watchdog() for _ in range(5000)]  # nobody reads: the queue fills
    assert results[0] and not results[-1]
    assert n.failures > 0 and len(errors) == 1
    sock.setblocking(False)
    try:
        while sock.recv(64):
            pass
    except BlockingIOError:
        pass
    assert n.watchdog()


def test_an_oversized_message_is_refused_not_truncated(
    listener: tuple[socket.socket, str],
) -> None:
    _, path = listener
    n = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert not n.send([("X_HAPAIR", "y" * MESSAGE_MAX)])
    assert n.last_error is not None and "bytes" in n.last_error


def test_a_raising_error_callback_does_not_escape(tmp_path: Path) -> None:
    def boom(detail: str) -> None:
        raise RuntimeError(detail)

    n = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone")}, on_error=boom)
    assert not n.ready()


def test_unset_keeps_the_variables_from_the_children() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "7", "K": "v"}
    n = Notifier.from_environ(env, unset=True, pid=7)
    assert n.address == b"/run/x" and n.watchdog_period == 2.5
    assert env == {"K": "v"}


def test_the_watchdog_period_is_this_process_s_by_default() -> None:
    env = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_environ(env).watchdog_period == 0.5
    env["WATCHDOG_PID"] = str(os.getpid() + 1)
    assert Notifier.from_environ(env).watchdog_period is None
    assert Notifier.from_environ({}).watchdog_period is None


# -- the watchdog ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "pid", "period"),
    [
        ({}, 42, None),
        ({"WATCHDOG_USEC": "5000000"}, 42, 2.5),
        ({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "42"}, 42, 2.5),
        ({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "43"}, 42, None),  # a child's copy
        ({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "x"}, 42, None),
        ({"WATCHDOG_USEC": "400000"}, 42, 0.2),
        ({"WATCHDOG_USEC": "0"}, 42, None),
        ({"WATCHDOG_USEC": "-5"}, 42, None),
        ({"WATCHDOG_USEC": "5s"}, 42, None),
        ({"WATCHDOG_USEC": ""}, 42, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], pid: int, period: float | None) -> None:
    assert watchdog_interval(env, pid) == period


def test_watchdog_timer_pings_at_once_then_every_period() -> None:
    t = WatchdogTimer(2.5, now=100.0)
    assert t.next_deadline() == 100.0
    assert t.due_at(100.0)
    assert not t.due_at(101.0) and t.next_deadline() == 102.5
    assert t.due_at(103.0)  # late: the next one counts from now, no burst of catch-up pings
    assert t.next_deadline() == 105.5
    with pytest.raises(ValueError):
        WatchdogTimer(0, now=0.0)


# -- the status line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ("MASTER", ["10.0.0.50/24"], PeerRole("lb2", "BACKUP"), BalancerSummary("nat", 2, 2)),
            "MASTER, VIP 10.0.0.50/24 held, peer lb2 BACKUP, balancer nat 2/2 up",
        ),
        (("BACKUP", [], None, None), "BACKUP, no VIP held, no peer heard"),
        (
            ("MASTER", ["10.0.0.50/24", "fd00::50/64"], PeerRole("lb2", "lost"), None),
            "MASTER, VIPs 10.0.0.50/24 fd00::50/64 held, peer lb2 lost",
        ),
        (
            ("BACKUP", [], PeerRole("lb1", "MASTER"), BalancerSummary("proxy", 1, 3, False)),
            "BACKUP, no VIP held, peer lb1 MASTER, balancer proxy idle, 1/3 up",
        ),
        (
            ("MASTER", [f"10.0.0.{i}/24" for i in range(6)], None, None),
            "MASTER, VIPs 10.0.0.0/24 10.0.0.1/24 10.0.0.2/24 10.0.0.3/24 +2 more held,"
            " no peer heard",
        ),
    ],
)
def test_status_line(
    args: tuple[str, list[str], PeerRole | None, BalancerSummary | None], line: str
) -> None:
    assert status_line(*args) == line


def test_status_line_from_a_status_snapshot() -> None:
    status = {
        "role": "MASTER",
        "resigning": False,
        "fault_reason": None,
        "vips_held": ["10.0.0.50/24"],
        "peers": [
            {"node": "old", "role": "MASTER", "alive": False},
            {"node": "lb2", "role": "BACKUP", "alive": True},
        ],
        "balancer": {
            "kind": "nat",
            "active": True,
            "backends": {"r1": {"up": True}, "r2": {"up": True}, "r3": {"up": False}},
        },
    }
    assert status_line_from(status) == (
        "MASTER, VIP 10.0.0.50/24 held, peer lb2 BACKUP, balancer nat 2/3 up"
    )
    fault = {"role": "FAULT", "fault_reason": "carrier_lost:eth0", "vips_held": [], "peers": []}
    assert status_line_from(fault) == "FAULT (carrier_lost:eth0), no VIP held, no peer heard"
    resigning = {
        "role": "MASTER",
        "resigning": True,
        "vips_held": ["10.0.0.50/24"],
        "peers": [{"node": "lb2", "role": "BACKUP", "alive": False}],
    }
    assert status_line_from(resigning) == (
        "MASTER (resigning), VIP 10.0.0.50/24 held, peer lb2 lost"
    )
