"""The daemon's small persistent state: boot epoch and replay high-water marks.

Written atomically (temp file + rename) so a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class PersistentState:
    """What must survive a restart to keep the replay protection closed."""

    boot_epoch: int = 0
    replay_marks: dict[str, tuple[int, int]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def load_state(path: Path) -> PersistentState:
    """Read the state file; a missing or unreadable file yields an empty state."""
    try:
        raw = json.loads(path.read_text())
        marks = {str(k): (int(v[0]), int(v[1])) for k, v in raw.get("replay_marks", {}).items()}
        return PersistentState(int(raw.get("boot_epoch", 0)), marks, dict(raw.get("extra", {})))
    except (OSError, ValueError, TypeError, AttributeError, IndexError):
        return PersistentState()


def save_state(path: Path, state: PersistentState) -> None:
    """Write the state file atomically (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    data = {
        "boot_epoch": state.boot_epoch,
        "replay_marks": {k: list(v) for k, v in state.replay_marks.items()},
        "extra": state.extra,
    }
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def next_boot_epoch(previous: int) -> int:
    """A boot epoch larger than the last one even if the wall clock stepped back."""
    return max(time.time_ns(), previous + 1)
