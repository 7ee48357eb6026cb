"""systemd integration without libsystemd: sd_notify, the watchdog period, a status line.

The notify protocol is one AF_UNIX datagram of ``KEY=VALUE`` lines to ``$NOTIFY_SOCKET`` (a
path, or ``@name`` for the abstract namespace). systemd reads who sent it from the kernel's
credentials, so with ``NotifyAccess=main`` the daemon process itself must send. Sending never
blocks and never raises: a failed send returns False, is counted, and is reported through
``on_error`` once (again only after a send has succeeded in between).

Real-time scheduling of the loop is `hapair.runtime.sched` (``runtime.realtime_priority``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, Final, NamedTuple

NOTIFY_SOCKET: Final = "NOTIFY_SOCKET"
WATCHDOG_USEC: Final = "WATCHDOG_USEC"
WATCHDOG_PID: Final = "WATCHDOG_PID"
#: systemd reads at most PIPE_BUF bytes of one notification; longer ones are dropped whole.
MESSAGE_MAX: Final = 4096
#: STATUS= is one line in ``systemctl status``; longer text is cut with an ellipsis.
STATUS_MAX: Final = 300
#: sun_path is 108 bytes; a path also needs its terminating NUL, an abstract name does not.
SUN_PATH_MAX: Final = 108
#: A VIP list longer than this is shortened to "+N more" in the status line.
STATUS_VIPS_MAX: Final = 4


def notify_address(value: str | None) -> bytes | None:
    """``$NOTIFY_SOCKET`` as a socket address: a path, or ``@name`` -> ``\\0name``.

    None when unset, empty, too long, or of a kind not supported here (``vsock:``).
    """
    if not value:
        return None
    raw = os.fsencode(value)
    if raw.startswith(b"@"):
        address = b"\0" + raw[1:]
        return address if 1 < len(address) <= SUN_PATH_MAX else None
    if raw.startswith(b"/") and len(raw) < SUN_PATH_MAX:
        return raw
    return None


def format_message(fields: Sequence[tuple[str, str]]) -> bytes:
    """``KEY=VALUE`` lines; a value's line breaks become blanks (one line per field)."""
    lines = []
    for key, value in fields:
        if not key or not all(
            c.isascii() and (c.isupper() or c.isdigit() or c == "_") for c in key
        ):
            raise ValueError(f"not a notify field name: {key!r}")
        flat = " ".join(value.splitlines()) if value else ""
        lines.append(f"{key}={flat}")
    return "\n".join(lines).encode("utf-8", errors="replace")


def clip_status(text: str, limit: int = STATUS_MAX) -> str:
    """``text`` on one line, at most ``limit`` characters (cut with an ellipsis)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between watchdog pings (half of ``$WATCHDOG_USEC``), or None when not asked.

    None when the variable is absent or not a positive integer, or when ``$WATCHDOG_PID``
    names another process (a child that inherited the environment must not ping).
    """
    usec = environ.get(WATCHDOG_USEC, "").strip()
    if not usec.isdigit() or int(usec) <= 0:
        return None
    owner = environ.get(WATCHDOG_PID, "").strip()
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 2 / 1_000_000


class WatchdogTimer:
    """When the loop must ping next; pure (the driver passes ``now``, its clock's reading)."""

    def __init__(self, period: float, now: float) -> None:
        if period <= 0:
            raise ValueError(f"watchdog period must be > 0, got {period}")
        self.period = period
        self._next = now

    def next_deadline(self) -> float:
        """The monotonic time of the next ping (the driver's wake-up must not pass it)."""
        return self._next

    def due_at(self, now: float) -> bool:
        """True if a ping is due at ``now``; the next one is then one period later."""
        if now < self._next:
            return False
        self._next = now + self.period
        return True


class PeerRole(NamedTuple):
    """The peer as the status line shows it: name and role ("BACKUP", "lost", ...)."""

    name: str
    role: str


class BalancerSummary(NamedTuple):
    """The local balancer in one phrase: kind, healthy and configured backends, serving."""

    kind: str
    up: int
    total: int
    active: bool = True


def status_line(
    role: str,
    vips: Sequence[str],
    peer_role: PeerRole | None,
    balancer_summary: BalancerSummary | None,
) -> str:
    """One line for STATUS=, e.g. "MASTER, VIP 10.0.0.50/24 held, peer lb2 BACKUP, balancer nat
    2/2 up"; the peer is None until one is heard, the balancer None when there is none."""
    parts = [role]
    if not vips:
        parts.append("no VIP held")
    else:
        shown = list(vips[:STATUS_VIPS_MAX])
        if len(vips) > STATUS_VIPS_MAX:
            shown.append(f"+{len(vips) - STATUS_VIPS_MAX} more")
        parts.append(f"{'VIP' if len(vips) == 1 else 'VIPs'} {' '.join(shown)} held")
    parts.append(
        "no peer heard" if peer_role is None else f"peer {peer_role.name} {peer_role.role}"
    )
    if balancer_summary is not None:
        b = balancer_summary
        health = f"{b.up}/{b.total} up"
        parts.append(
            f"balancer {b.kind} {health}" if b.active else f"balancer {b.kind} idle, {health}"
        )
    return clip_status(", ".join(parts))


def status_line_from(status: Mapping[str, Any]) -> str:
    """The status line from a ``hapair status`` snapshot (``Node.status()``)."""
    role = str(status.get("role", "?"))
    if status.get("resigning"):
        role += " (resigning)"
    if status.get("fault_reason"):
        role += f" ({status['fault_reason']})"
    peers = list(status.get("peers") or [])
    peer = next((p for p in peers if p.get("alive")), peers[0] if peers else None)
    peer_role = None
    if peer is not None:
        peer_role = PeerRole(
            str(peer.get("node")), str(peer.get("role")) if peer.get("alive") else "lost"
        )
    summary = None
    b = status.get("balancer")
    if b:
        backends = dict(b.get("backends") or {})
        up = sum(1 for h in backends.values() if h.get("up"))
        summary = BalancerSummary(str(b.get("kind")), up, len(backends), bool(b.get("active")))
    return status_line(role, [str(v) for v in status.get("vips_held") or []], peer_role, summary)


class Notifier:
    """Sends sd_notify messages; a no-op (every call returns False) without ``$NOTIFY_SOCKET``.

    Every method returns whether the message went out. None raises. ``on_error`` gets the
    first failure (and the first after each recovery); the rest are only counted.
    """

    def __init__(
        self,
        address: bytes | None,
        *,
        on_error: Callable[[str], None] | None = None,
        monotonic_usec: Callable[[], int] | None = None,
        watchdog_period: float | None = None,
    ) -> None:
        self.address = address
        self.on_error = on_error
        #: Seconds between WATCHDOG=1 pings systemd asked for (None: no watchdog).
        self.watchdog_period = watchdog_period
        self._monotonic_usec = monotonic_usec or _monotonic_usec
        self._sock: socket.socket | None = None
        self._status: str | None = None
        self._reported = False
        self.sent = 0
        self.failures = 0
        self.last_error: str | None = None

    @classmethod
    def from_environ(
        cls,
        environ: MutableMapping[str, str] | Mapping[str, str],
        *,
        unset: bool = False,
        on_error: Callable[[str], None] | None = None,
        pid: int | None = None,
    ) -> Notifier:
        """The notifier ``environ`` asks for, with its watchdog period (for process ``pid``,
        by default this one). ``unset`` then removes the notify and watchdog variables from a
        mutable ``environ`` (``os.environ``): the engines the daemon starts must not see them."""
        notifier = cls(
            notify_address(environ.get(NOTIFY_SOCKET)),
            on_error=on_error,
            watchdog_period=watchdog_interval(environ, os.getpid() if pid is None else pid),
        )
        if environ.get(NOTIFY_SOCKET) and notifier.address is None:
            notifier._fail(f"unsupported {NOTIFY_SOCKET}={environ[NOTIFY_SOCKET]!r}")
        if unset and isinstance(environ, MutableMapping):
            for name in (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID):
                environ.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        """Whether there is a notify socket to send to."""
        return self.address is not None

    def ready(self, status: str | None = None) -> bool:
        """READY=1: start-up (or a reload, refused or not) is complete."""
        return self._send_with_status([("READY", "1")], status)

    def status(self, text: str) -> bool:
        """STATUS=text, sent only when it changed; True if systemd shows ``text``."""
        line = clip_status(text)
        if line == self._status:
            return True
        return self.send([("STATUS", line)])

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC= (what Type=notify-reload, systemd >= 253, wants)."""
        return self.send([("RELOADING", "1"), ("MONOTONIC_USEC", str(self._monotonic_usec()))])

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: the daemon is shutting down (a MASTER hands over first)."""
        return self._send_with_status([("STOPPING", "1")], status)

    def watchdog(self) -> bool:
        """WATCHDOG=1: the loop is alive."""
        return self.send([("WATCHDOG", "1")])

    def send(self, fields: Sequence[tuple[str, str]]) -> bool:
        """Send one notification of ``fields``; never blocks, never raises."""
        if self.address is None:
            return False
        try:
            message = format_message(fields)
            if len(message) > MESSAGE_MAX:
                raise ValueError(f"notification of {len(message)} bytes > {MESSAGE_MAX}")
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            # Not connected: a socket systemd re-created (daemon-reexec) is found by its name.
            self._sock.sendto(message, self.address)
        except (OSError, ValueError) as exc:
            self._fail(str(exc))
            return False
        self.sent += 1
        self._reported = False
        for key, value in fields:
            if key == "STATUS":
                self._status = value
        return True

    def close(self) -> None:
        """Close the socket (a later send opens a new one)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _send_with_status(self, fields: list[tuple[str, str]], status: str | None) -> bool:
        if status is not None:
            fields.append(("STATUS", clip_status(status)))
        return self.send(fields)

    def _fail(self, detail: str) -> None:
        self.failures += 1
        self.last_error = detail
        if not self._reported:
            self._reported = True
            if self.on_error is not None:
                with contextlib.suppress(Exception):
                    self.on_error(detail)


def _monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC= with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


__all__ = [
    "BalancerSummary",
    "Notifier",
    "PeerRole",
    "WatchdogTimer",
    "format_message",
    "notify_address",
    "status_line",
    "status_line_from",
    "watchdog_interval",
]
