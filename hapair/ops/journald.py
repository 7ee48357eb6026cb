"""Native systemd-journald sink: structured entries over the journal's datagram socket.

No libsystemd: an entry is ``KEY=value`` lines (or ``KEY``, a 64-bit little-endian length, the
raw bytes, for values holding a newline) in one AF_UNIX datagram. An entry too large for one
datagram goes as a sealed memfd passed with SCM_RIGHTS, as sd_journal_send() does; nothing is
truncated. Logging never raises: a failed send prints the entry to stderr instead, with a
one-time note saying why.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import struct
import sys
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any, Final, TextIO

DEFAULT_SOCKET: Final = "/run/systemd/journal/socket"
IDENTIFIER: Final = "hapair"
# A stalled journald must not stall the event loop: a send waits at most this long (seconds),
# then the entry goes to stderr.
SEND_TIMEOUT: Final = 0.05
FIELD_NAME_MAX: Final = 64

# One MESSAGE_ID per event type an operator queries for. Generated once; never change one:
# saved queries, alerts and catalogs depend on them. docs/journald.md lists them.
MESSAGE_IDS: Final[Mapping[str, str]] = {
    "role_changed": "5511d1c12af34801ba91d3860e6a7261",
    "vip_acquired": "b7359de873614971817bba2ac505b20d",
    "vip_released": "13e0f62b6b9f4833bff186c1fc627f57",
    "peer_lost": "d4125e85edd74a1f8bb796d209286e6a",
    "peer_found": "3d8b8111321940dc8c59031571e7f114",
    "split_brain": "1b28a1efefc34a328351003641e86cc2",
    "backend_down": "1d85960289bb424383dd6a87306efee8",
    "backend_up": "dd9d3b86bce84b9db87331fd0ea18ffd",
    "config_reloaded": "9a962374ce194e93aec5859c15ef75e9",
    "config_reload_failed": "045b94bbe9dc4c089c5baa1a1fa49976",
    "daemon_started": "40c341d5347140029895c2bdee09a22e",
    "daemon_stopped": "8820c98ce1b242a7ac8a952588b02b97",
    "balancer_failed": "37f6db092b564bc29732633a73214c3b",
}

# structlog level -> syslog priority (RFC 5424 section 6.2.1 severities).
PRIORITIES: Final[Mapping[str, int]] = {
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "info": 6,
    "debug": 7,
}
_DEFAULT_PRIORITY: Final = 6

# Event keys with a documented field name of their own; every other key is HAPAIR_<KEY>.
NAMED_FIELDS: Final[Mapping[str, str]] = {
    "to_role": "HAPAIR_ROLE",
    "from_role": "HAPAIR_PREVIOUS_ROLE",
    "reason": "HAPAIR_REASON",
    "cluster": "HAPAIR_CLUSTER",
    "node": "HAPAIR_NODE",
    "peer": "HAPAIR_PEER",
    "vip": "HAPAIR_VIP",
    "backend": "HAPAIR_BACKEND",
}

# Not copied into fields: the level becomes PRIORITY, and journald stamps its own time.
_DROPPED: Final = frozenset({"event", "level", "ts", "timestamp"})
# Left out of a generic MESSAGE: on every entry already, or too long for one line.
_NOT_IN_MESSAGE: Final = _DROPPED | {"cluster", "node", "exception"}

# A human one-liner per well-known event; a missing key shows as "?".
MESSAGES: Final[Mapping[str, str]] = {
    "role_changed": "role {from_role} -> {to_role} ({reason})",
    "vip_acquired": "VIP {vip} acquired on {interface} ({reason})",
    "vip_released": "VIP {vip} released ({reason})",
    "peer_lost": "peer {peer} lost ({reason})",
    "peer_found": "peer {peer} found ({reason})",
    "split_brain": "split brain with peer {peer} ({reason})",
    "backend_down": "backend {backend} down ({reason})",
    "backend_up": "backend {backend} up ({reason})",
    "config_reloaded": "configuration reloaded from {source}",
    "config_reload_failed": "configuration reload failed: {error}",
    "daemon_started": "hapair started (priority {priority})",
    "daemon_stopped": "hapair stopped",
    "balancer_failed": "balancer failed: {error}",
}

_INVALID_CHARS: Final = re.compile(r"[^A-Z0-9_]")
_VALID_NAME: Final = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


def field_name(key: str) -> str:
    """The journal field for an event key: ``HAPAIR_`` + the key upper-cased, other chars ``_``."""
    return ("HAPAIR_" + _INVALID_CHARS.sub("_", key.upper()))[:FIELD_NAME_MAX]


def valid_field_name(name: str) -> bool:
    """Journal rules for a client field: A-Z, 0-9 and _, at most 64, no leading _ or digit."""
    return _VALID_NAME.fullmatch(name) is not None


def text(value: Any) -> str:
    """A field value as text: strings as they are, everything else as compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    try:
        return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(value)


def _logfmt(value: Any) -> str:
    """``key=value`` text: a string quoted when it has to be, anything else as JSON."""
    if not isinstance(value, str):
        return text(value)
    if value == "" or any(c in value for c in ' ="\n'):
        return json.dumps(value, ensure_ascii=False)
    return value


class _Fill(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "?"


def message(event: str, data: Mapping[str, Any]) -> str:
    """MESSAGE: the event's one-liner, or ``event key=value ...`` for events without one."""
    template = MESSAGES.get(event)
    if template is not None:
        line = template.format_map(_Fill({k: text(v) for k, v in data.items()}))
    else:
        pairs = [f"{k}={_logfmt(v)}" for k, v in data.items() if k not in _NOT_IN_MESSAGE]
        line = " ".join([event, *pairs])
    exception = data.get("exception")
    if exception:
        # The traceback is in HAPAIR_EXCEPTION; its last line says what went wrong.
        line += ": " + text(exception).rstrip().rsplit("\n", 1)[-1]
    return line


def _claim(fields: Mapping[str, str], name: str) -> str:
    """``name``, or ``name_2``, ``name_3``... if taken (two keys sanitising to one field)."""
    candidate, n = name, 1
    while candidate in fields:
        n += 1
        suffix = f"_{n}"
        candidate = name[: FIELD_NAME_MAX - len(suffix)] + suffix
    return candidate


def journal_fields(event_dict: Mapping[str, Any]) -> dict[str, str]:
    """Map a structlog event dict to journal fields (pure)."""
    event = text(event_dict.get("event", ""))
    level = text(event_dict.get("level", "info"))
    fields: dict[str, str] = {
        "MESSAGE": message(event, event_dict),
        "PRIORITY": str(PRIORITIES.get(level, _DEFAULT_PRIORITY)),
        "SYSLOG_IDENTIFIER": IDENTIFIER,
    }
    message_id = MESSAGE_IDS.get(event)
    if message_id is not None:
        fields["MESSAGE_ID"] = message_id
    fields["HAPAIR_EVENT"] = event
    # Documented names first, so a generic key can never take one of them.
    named = [k for k in NAMED_FIELDS if k in event_dict]
    rest = [k for k in event_dict if k not in NAMED_FIELDS and k not in _DROPPED]
    for key in named:
        fields[_claim(fields, NAMED_FIELDS[key])] = text(event_dict[key])
    for key in rest:
        fields[_claim(fields, field_name(str(key)))] = text(event_dict[key])
    return fields


def encode_entry(fields: Mapping[str, str | bytes]) -> bytes:
    """The native protocol: ``KEY=value\\n``, or the binary-safe form for values with newlines."""
    out = bytearray()
    for name, value in fields.items():
        if not valid_field_name(name):
            raise ValueError(f"invalid journal field name {name!r}")
        data = value.encode("utf-8", "backslashreplace") if isinstance(value, str) else value
        key = name.encode("ascii")
        if b"\n" in data:
            out += key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key + b"=" + data + b"\n"
    return bytes(out)


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """Whether ``fd`` is the stream systemd connected to the journal (``$JOURNAL_STREAM``)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        wanted = (int(dev), int(ino))
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == wanted


class JournalWriter:
    """Sends entries to journald's native socket; one too big for a datagram as a memfd."""

    def __init__(self, path: str = DEFAULT_SOCKET, timeout: float = SEND_TIMEOUT) -> None:
        self.path = path
        self._timeout = timeout
        self._sock: socket.socket | None = None

    def send(self, fields: Mapping[str, str | bytes]) -> None:
        """Send one entry; raises OSError (or ValueError for a bad field name) on failure."""
        data = encode_entry(fields)
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.settimeout(self._timeout)
        try:
            self._sock.sendto(data, self.path)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(self._sock, data)

    def _send_memfd(self, sock: socket.socket, data: bytes) -> None:
        # journald maps a sealed memfd and reads the entry from it; sealing proves to it that
        # the contents cannot change under it.
        fd = os.memfd_create("hapair-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]
            sock.sendmsg([], rights, 0, self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close the socket (the next send opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class JournalRenderer:
    """The last structlog processor: the event dict becomes the journal fields to send."""

    def __call__(
        self, _: Any, __: str, event_dict: MutableMapping[str, Any]
    ) -> tuple[tuple[dict[str, str]], dict[str, Any]]:
        try:
            fields = journal_fields(event_dict)
        except Exception as exc:  # a logging call must never raise into the daemon
            fields = {
                "MESSAGE": f"unrenderable log event: {exc!r}",
                "PRIORITY": "3",
                "SYSLOG_IDENTIFIER": IDENTIFIER,
                "HAPAIR_EVENT": "log_render_failed",
            }
        return (fields,), {}


class JournalSink:
    """The structlog logger: sends each entry; if that fails, prints it to stderr instead."""

    def __init__(self, writer: JournalWriter, fallback: TextIO | None = None) -> None:
        self.writer = writer
        self._fallback = fallback
        self._lock = threading.Lock()
        self.failures = 0

    def __call__(self, *_: Any) -> JournalSink:
        """Be its own structlog logger factory: every logger shares one socket and counter."""
        return self

    def msg(self, fields: Mapping[str, str]) -> None:
        """Send one entry; never raises."""
        try:
            self.writer.send(fields)
        except Exception as exc:
            self._fall_back(fields, exc)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg

    def _fall_back(self, fields: Mapping[str, str], exc: Exception) -> None:
        stream = self._fallback if self._fallback is not None else sys.stderr
        with self._lock, contextlib.suppress(Exception):
            self.failures += 1
            if self.failures == 1:
                note = {
                    "event": "journald_unavailable",
                    "socket": self.writer.path,
                    "error": repr(exc),
                    "note": "entries that cannot be sent go to stderr; reported once",
                }
                print(json.dumps(note), file=stream, flush=True)
            print(json.dumps(dict(fields), ensure_ascii=False), file=stream, flush=True)
