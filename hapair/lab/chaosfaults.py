"""The chaos drill's faults: each injects itself on the lab and returns the action that heals it.

An injector returns None when it cannot run here (the flood tool is missing, there is no
balancer to flap), with a note saying why. `ex.out` windows (node, from, to) with `to` 0.0 are
closed by the runner when the heal is done.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

from hapair.lab.addresses import LAN4
from hapair.lab.chaos import Fault
from hapair.lab.chaoscheck import CrashObs
from hapair.lab.events import Event
from hapair.lab.nodes import PEER
from hapair.lab.shell import LabError

if TYPE_CHECKING:
    from hapair.lab.chaosrun import ChaosRunner, Executed

FLAP_PERIOD: Final = 0.5
FLOOD_TOOL: Final = "hapair.lab.flood"
HB_PORT: Final = 694

Healer = Callable[[], object]


def _stopped(r: ChaosRunner, node: str, at: float, why: str) -> None:
    r.expected.discard(node)
    r.synthetic.append(Event(node, at, "daemon_stopped", {"reason": why}))


def _crash(r: ChaosRunner, f: Fault, ex: Executed) -> Healer | None:
    node = f.target
    r.expected.discard(node)
    at = r.bed.crash(node)
    _stopped(r, node, at, "SIGKILL")
    ex.out.append((node, at, 0.0))

    def heal() -> None:
        r.lab.remove_vips(node)
        r.lab.set_host_links(node, up=True)
        r.start_daemon(node)

    return heal


def _kill(r: ChaosRunner, f: Fault, ex: Executed) -> Healer | None:
    node = f.target
    r.expected.discard(node)
    at = time.time()
    r.pair.kill(node)
    _stopped(r, node, at, "SIGKILL")
    try:
        done = r.pair.release(node)
    except LabError as exc:
        done = time.time()
        ex.notes.append(f"hapair release failed: {exc}"[:300])
    ex.out.append((node, at, done))
    ex.notes.append(f"stale VIP released {(done - at) * 1000:.0f} ms after the kill")
    return lambda: r.start_daemon(node)


def _pause(r: ChaosRunner, f: Fault, ex: Executed) -> Healer | None:
    at = time.time()
    if not r.bed.pause(f.target):
        ex.notes.append(f"nothing to freeze on {f.target}")
        return None
    ex.out.append((f.target, at, 0.0))
    return lambda: r.bed.pause(f.target, resume=True)


def _linkdown(r: ChaosRunner, f: Fault, ex: Executed) -> Healer | None:
    r.bed.set_link(f.target, up=False)
    ex.out.append((f.target, time.time(), 0.0))
    return lambda: r.bed.set_link(f.target, up=True)


def _oneway(r: ChaosRunner, f: Fault, ex: Executed) -> Healer | None:
    src, dst = f.target.split(">")
    r.lab.partition_oneway(src, dst)
    return lambda: r.lab.partition_oneway(src, dst, heal=True)


def _partition(r: ChaosRunner, f: Fault, ex: Executed) -> Healer | None:
    r.bed.partition()
    return lambda: r.bed.partition(heal=True)


def _flood(r: ChaosRunner, f: Fault, ex: Executed) -> Healer | None:
    if importlib.util.find_spec(FLOOD_TOOL) is None:
        ex.notes.append(f"flood tool missing ({FLOOD_TOOL}): skipped")
        return None
    argv = flood_argv(f, LAN4, f"lab-{r.lab.prefix}", r.flood_rate)
    key = f"chaos-flood-{f.index}"
    out = r.lab.dir / f"{key}.out"
    with out.open("wb") as fh:
        r.lab.spawn(key, "x", argv, stdout=fh)

    def heal() -> None:
        rc = r.lab.stop(key, sig=signal.SIGTERM, timeout=5.0)
        ex.notes.append(_flood_summary(out, rc))

    return heal


def flood_argv(f: Fault, lan: Mapping[str, str], cluster: str, rate: float | None) -> list[str]:
    """The flood sender's command line for `f` (host addresses from `lan`; rate None: flat out).

    It runs 5 s longer than the fault: the heal stops it, so the flood lasts the whole hold.
    """
    argv = [sys.executable, "-m", FLOOD_TOOL, "--dst", lan[f.target], "--port", str(HB_PORT)]
    argv += ["--seconds", f"{f.duration + 5:.3f}", "--cluster", cluster]
    if rate is not None:
        argv += ["--rate", f"{rate:.0f}"]
    if f.spoof:
        argv += ["--spoof-src", lan[PEER[f.target]]]
    return argv


def _flood_summary(out: Path, rc: int | None) -> str:
    lines = out.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    with contextlib.suppress(ValueError, IndexError, TypeError, KeyError):
        data = json.loads(lines[-1])
        return f"flood sent {data['sent']} datagrams at {float(data['rate']):.0f}/s"
    return f"flood tool exited {rc} without its summary line"


def _flap(r: ChaosRunner, f: Fault, ex: Executed) -> Healer | None:
    if r.balancer == "none":
        ex.notes.append("no balancer (--balancer none): skipped")
        return None
    stop = threading.Event()
    counts = {"flaps": 0, "reloads": 0, "failed": 0}
    service = [sys.executable, "-m", "hapair.lab.service", "--name", "r1", "--vip", LAN4["r1"]]

    def set_r1(up: bool) -> None:
        if up and not r.lab.running("service-r1"):
            r.lab.spawn("service-r1", "r1", service, stdout=subprocess.DEVNULL)
        elif not up:
            r.lab.stop("service-r1", sig=signal.SIGKILL)

    def loop() -> None:
        up = False
        for _ in range(100_000):
            if stop.wait(FLAP_PERIOD):
                return
            set_r1(up)
            up = not up
            counts["flaps"] += 1
            for node in PEER:
                key = f"chaos-reload-{node}"
                if r.lab.running(key) or not r.pair.running(node):
                    continue
                if key in r.lab.procs and r.lab.procs[key].popen.returncode != 0:
                    counts["failed"] += 1
                cfg = str(r.pair.config_path(node))
                r.lab.spawn(key, node, [sys.executable, "-m", "hapair", "reload", "-c", cfg])
                counts["reloads"] += 1

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()

    def heal() -> None:
        stop.set()
        thread.join(timeout=5.0)
        set_r1(True)
        for node in PEER:
            key = f"chaos-reload-{node}"
            if r.lab.stop(key, timeout=10.0) not in (0, None):
                counts["failed"] += 1
            r.lab.procs.pop(key, None)
        ex.notes.append(
            f"{counts['flaps']} flaps of r1, {counts['reloads']} reloads started, "
            f"{counts['failed']} failed (or cut short by the heal)"
        )

    return heal


def _wipe(r: ChaosRunner, f: Fault, ex: Executed) -> Healer | None:
    node = f.target
    r.expected.discard(node)
    r.pair.terminate(node)
    proc = r.lab.procs.get(f"daemon-{node}")
    rc = proc.popen.returncode if proc is not None else None
    if rc not in (0, None):
        r.crashes.append(CrashObs(time.time(), node, f"exit status {rc} after SIGTERM"))
    ex.notes.append("deleted " + ", ".join(wipe_state(r.pair.config_path(node))))
    return lambda: r.start_daemon(node)


def wipe_state(config: Path) -> list[str]:
    """Delete a stopped node's state: its state file and what its state directories hold."""
    from hapair.config.load import load_config

    cfg = load_config(config, check_secret=False)
    dirs = {cfg.runtime.state_dir, getattr(cfg.runtime, "lib_dir", cfg.runtime.state_dir)}
    gone = []
    for path in [
        cfg.state_file_path,
        *(p for d in sorted(dirs) if d.is_dir() for p in d.iterdir()),
    ]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)
        else:
            continue
        gone.append(str(path))
    return gone or ["nothing (no state there)"]


INJECT: Final[dict[str, Callable[[ChaosRunner, Fault, Executed], Healer | None]]] = {
    "crash": _crash,
    "kill": _kill,
    "pause": _pause,
    "linkdown": _linkdown,
    "oneway": _oneway,
    "partition": _partition,
    "flood": _flood,
    "flap": _flap,
    "wipe": _wipe,
}
