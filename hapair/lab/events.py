"""Daemon log lines turned into timestamped events the drills reason about."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

# Bounds what one parse reads, so a runaway log cannot exhaust memory in a drill.
MAX_LOG_BYTES: Final = 64 * 1024 * 1024


@dataclass(frozen=True)
class Event:
    """One log event of one node: wall-clock `ts`, stable `name`, and its other fields."""

    node: str
    ts: float
    name: str
    fields: dict[str, object] = field(default_factory=dict)

    def get(self, key: str) -> str:
        """Return field `key` as a string ("" when absent)."""
        value = self.fields.get(key)
        return "" if value is None else str(value)


def parse_json_line(node: str, line: str) -> Event | None:
    """Return the event a JSON log line holds, or None for anything else (never raises)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    name, ts = obj.get("event"), obj.get("ts", obj.get("timestamp"))
    if not isinstance(name, str) or not isinstance(ts, int | float) or isinstance(ts, bool):
        return None
    rest = {k: v for k, v in obj.items() if k not in ("event", "ts")}
    return Event(node=node, ts=float(ts), name=name, fields=rest)


# keepalived logs free text; the lab timestamps each line as it arrives ("<ts>\t<line>").
_KEEPALIVED_STATE: Final = re.compile(r"\) Entering (MASTER|BACKUP|FAULT) STATE")
_KEEPALIVED_GARP: Final = re.compile(r"Sending gratuitous ARP", re.IGNORECASE)
_KEEPALIVED_OTHER: Final[tuple[tuple[str, str, dict[str, object]], ...]] = (
    ("sent 0 priority", "priority_zero_sent", {}),
    ("setting VIPs", "vip_acquired", {}),
    ("removing VIPs", "vip_released", {}),
    ("Stopped Keepalived", "daemon_stopped", {}),
    ("Starting VRRP child", "daemon_started", {}),
)


def parse_keepalived_line(node: str, line: str) -> Event | None:
    """Map a timestamped keepalived log line to the hapair event it corresponds to, if any."""
    ts_text, sep, text = line.partition("\t")
    if not sep:
        return None
    try:
        ts = float(ts_text)
    except ValueError:
        return None
    state = _KEEPALIVED_STATE.search(text)
    if state:
        return Event(node, ts, "role_changed", {"to_role": state.group(1), "raw": text.strip()})
    if _KEEPALIVED_GARP.search(text):
        return Event(node, ts, "garp_sent", {"raw": text.strip()})
    if text.rstrip().endswith(": Stopping"):
        # From SIGTERM on keepalived sends priority 0 and drops its VIPs: no longer a master.
        return Event(node, ts, "role_changed", {"to_role": "STOPPING", "reason": "SIGTERM"})
    for needle, name, fields in _KEEPALIVED_OTHER:
        if needle in text:
            return Event(node, ts, name, {**fields, "raw": text.strip()})
    return None


def read_events(node: str, path: Path, *, keepalived: bool = False) -> list[Event]:
    """Return every event in log file `path` (missing file: none), sorted by time."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_LOG_BYTES)
    except FileNotFoundError:
        return []
    parse = parse_keepalived_line if keepalived else parse_json_line
    events = [
        ev
        for raw in data.decode("utf-8", errors="replace").splitlines()
        if (ev := parse(node, raw)) is not None
    ]
    events.sort(key=lambda ev: ev.ts)
    return _fill_from_role(events) if keepalived else events


class LogFollower:
    """Incremental reader of one node's log: each call parses only what was appended."""

    def __init__(self, node: str, path: Path, *, keepalived: bool = False) -> None:
        self.node, self.path, self.keepalived = node, path, keepalived
        self._offset = 0
        self._events: list[Event] = []

    def events(self) -> list[Event]:
        """Return every event so far, in time order."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read(MAX_LOG_BYTES)
        except FileNotFoundError:
            return list(self._events)
        # Only complete lines: the writer may be half-way through one.
        end = data.rfind(b"\n") + 1
        if end:
            self._offset += end
            parse = parse_keepalived_line if self.keepalived else parse_json_line
            for raw in data[:end].decode("utf-8", errors="replace").splitlines():
                ev = parse(self.node, raw)
                if ev is not None:
                    self._events.append(ev)
            self._events.sort(key=lambda ev: ev.ts)
            if self.keepalived:
                self._events = _fill_from_role(self._events)
        return list(self._events)


def _fill_from_role(events: list[Event]) -> list[Event]:
    # keepalived logs only the new state; derive the old one from the previous transition.
    role = "INIT"
    out = []
    for ev in events:
        if ev.name == "daemon_started":
            role = "INIT"
        elif ev.name == "role_changed":
            ev = Event(ev.node, ev.ts, ev.name, {**ev.fields, "from_role": role})
            role = ev.get("to_role")
        out.append(ev)
    return out


def first(
    events: Iterable[Event],
    name: str,
    *,
    node: str | None = None,
    after: float = float("-inf"),
    **match: str,
) -> Event | None:
    """Return the earliest event called `name` (of `node`, at/after `after`, fields matching)."""
    best: Event | None = None
    for ev in events:
        if ev.name != name or ev.ts < after or (node is not None and ev.node != node):
            continue
        if any(ev.get(k).upper() != v.upper() for k, v in match.items()):
            continue
        if best is None or ev.ts < best.ts:
            best = ev
    return best


def current_role(events: Sequence[Event]) -> str | None:
    """Return the role of the node's latest run per its log (None before any role change)."""
    role: str | None = None
    for ev in sorted(events, key=lambda e: e.ts):
        if ev.name == "daemon_started":
            role = "INIT"
        elif ev.name == "daemon_stopped":
            role = None
        elif ev.name == "role_changed":
            role = ev.get("to_role").upper() or role
    return role


def dual_master_spans(events: Sequence[Event], nodes: Sequence[str]) -> list[tuple[float, float]]:
    """Return the wall-clock spans in which every node in `nodes` claimed MASTER at once."""
    roles: dict[str, str | None] = dict.fromkeys(nodes)
    spans: list[tuple[float, float]] = []
    start: float | None = None
    for ev in sorted(events, key=lambda e: e.ts):
        if ev.node not in roles:
            continue
        if ev.name == "role_changed":
            roles[ev.node] = ev.get("to_role").upper()
        elif ev.name in ("daemon_stopped", "daemon_started"):
            roles[ev.node] = None
        else:
            continue
        both = all(r == "MASTER" for r in roles.values())
        if both and start is None:
            start = ev.ts
        elif not both and start is not None:
            spans.append((start, ev.ts))
            start = None
    if start is not None:
        spans.append((start, float("inf")))
    return spans
