"""Checked, time-bounded subprocess calls and bounded polling for the lab."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

from hapair.errors import HapairError

T = TypeVar("T")

DEFAULT_TIMEOUT: Final = 10.0
# Poll loops also stop after this many rounds, so a clock jump cannot make them spin forever.
MAX_POLLS: Final = 100_000


class LabError(HapairError):
    """A lab command failed, timed out, or the lab did not reach the state a drill waits for."""


def run(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `argv`, capture its output; raise LabError on failure (when `check`) or timeout."""
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            input=input_text,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout:.1f}s: {' '.join(argv)}") from exc
    except OSError as exc:
        raise LabError(f"cannot run {argv[0]}: {exc}") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise LabError(f"exit {proc.returncode}: {' '.join(argv)}: {detail}")
    return proc


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run one `ip` command (inside `netns` when given) and return its stdout."""
    argv = ["ip", *(("-n", netns) if netns else ()), *args]
    return run(argv, check=check).stdout


def ip_json(*args: str, netns: str | None = None) -> list[dict[str, object]]:
    """Run `ip -j ...` and return the decoded list (empty when ip prints nothing)."""
    out = ip("-j", *args, netns=netns)
    if not out.strip():
        return []
    data = json.loads(out)
    return data if isinstance(data, list) else []


def has_address(links: object, address: str) -> bool:
    """Whether the decoded output of ``ip -j addr show`` lists `address` on any link."""
    if not isinstance(links, list):
        return False
    for link in links:
        infos = link.get("addr_info") if isinstance(link, dict) else None
        if isinstance(infos, list) and any(
            isinstance(i, dict) and i.get("local") == address for i in infos
        ):
            return True
    return False


def list_netns() -> list[str]:
    """Return the names of all named network namespaces."""
    out = run(["ip", "netns", "list"]).stdout
    # Lines look like "hpl-a (id: 3)" or just "hpl-a".
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(netns: str) -> list[int]:
    """Return the pids of processes living in `netns` (empty if it does not exist)."""
    proc = run(["ip", "netns", "pids", netns], check=False)
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def pid_alive(pid: int) -> bool:
    """Return whether `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may itself hold spaces.
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] not in ("Z", "X", "")


def cpu_ticks(pid: int) -> int:
    """Return utime + stime of `pid` (all its threads), in clock ticks; OSError if it is gone."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15; after the ")" they are at index 11 and 12.
    return int(fields[11]) + int(fields[12])


def group_pids(pgid: int) -> list[int]:
    """Return the live pids whose process group is `pgid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        # Fields after the ")" are: state ppid pgrp ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            found.append(int(entry))
    return sorted(found)


def kill_pids(pids: Sequence[int], *, grace: float = 2.0) -> None:
    """SIGTERM `pids`, wait up to `grace` seconds, then SIGKILL whatever is left."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=grace, step=0.02)
    for pid in pids:
        if pid_alive(pid):
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def wait_until(
    predicate: Callable[[], T | None],
    *,
    timeout: float,
    step: float = 0.05,
) -> T | None:
    """Poll `predicate` until it returns a truthy value or `timeout` passes; return it or None."""
    deadline = time.monotonic() + timeout
    for _ in range(MAX_POLLS):
        value = predicate()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(step, left))
    return None
