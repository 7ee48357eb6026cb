"""The state file on a real filesystem: refused without blocking, repaired, written atomically,
written off the loop with failures reported; the lib dir created or refused with the fix."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hapair.config import ConfigError, load_config
from hapair.runtime.state import (
    Loaded,
    PersistentState,
    StateWriter,
    ensure_lib_dir,
    load_and_repair,
    read_state,
    save_state,
)

OFF, ON = PersistentState(False), PersistentState(True)
GOOD_ON = b'{"maintenance": true, "version": 1}\n'


def bounded(fn: Callable[[], Loaded], seconds: float = 5.0) -> Loaded:
    """Run `fn` on a daemon thread; fail (instead of hanging the suite) if it blocks."""
    out: list[Loaded] = []
    worker = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "read_state blocked"
    return out[0]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "web-lb1.state"


def only_the_state_file(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


# -- not a regular file: refused before a read, then replaced --------------------------------


def test_a_fifo_is_refused_without_blocking_and_replaced(path: Path) -> None:
    os.mkfifo(path)  # no writer: a blocking open or read would hang here for ever
    loaded = bounded(lambda: read_state(path))
    assert loaded == Loaded(OFF, problem="is a FIFO, not a regular file")
    _, error = load_and_repair(path)
    assert error is None and stat.S_ISREG(path.lstat().st_mode)
    assert read_state(path) == Loaded(OFF)


def test_a_symlink_is_refused_even_to_a_good_file(tmp_path: Path, path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(GOOD_ON)
    path.symlink_to(target)
    assert read_state(path) == Loaded(OFF, problem="is a symlink, not a regular file")
    _, error = load_and_repair(path)
    assert error is None and not path.is_symlink()
    assert target.read_bytes() == GOOD_ON  # the link is replaced, its target left alone


def test_a_socket_is_refused(path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        assert bounded(lambda: read_state(path)).problem == "is a socket, not a regular file"


def test_a_directory_is_refused_and_the_repair_error_returned_not_raised(path: Path) -> None:
    path.mkdir()
    loaded, error = load_and_repair(path)
    assert loaded == Loaded(OFF, problem="is a directory, not a regular file")
    assert isinstance(error, OSError)
    assert only_the_state_file(path) == [path.name]  # no temp file left behind


# -- bad content: defaults, a reason, and the file rewritten ---------------------------------

CASES: list[tuple[str, bytes, str]] = [
    ("truncated", GOOD_ON[:17], "not valid JSON"),
    ("empty", b"", "empty"),
    ("garbage", os.urandom(64).replace(b"{", b"x") + b"\xff", "not UTF-8"),
    ("string bool", b'{"version": 1, "maintenance": "false"}', "must be true or false"),
    ("negative", b'{"version": -1, "maintenance": true}', "version must be 1"),
    ("huge", b'{"version": 18446744073709551616000, "maintenance": true}', "out of range"),
    ("infinity", b'{"version": Infinity, "maintenance": true}', "Infinity"),
    ("deep", b'{"version": 1, "maintenance": ' + b"[" * 200 + b"]" * 200 + b"}", "nested"),
    ("oversized", b"{" + b" " * 10_000 + b"}", "more than the 4096"),
    ("unknown key", b'{"version": 1, "maintenance": true, "epoch": 3}', "unknown key"),
]


@pytest.mark.parametrize(("content", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_content_is_reported_and_repaired(path: Path, content: bytes, reason: str) -> None:
    path.write_bytes(content)
    loaded, error = load_and_repair(path)
    assert loaded.state == OFF and reason in str(loaded.problem), loaded.problem
    assert error is None
    assert read_state(path) == Loaded(OFF)  # rewritten: the next start reads it cleanly
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert only_the_state_file(path) == [path.name]


def test_a_missing_file_is_reported_and_created(path: Path) -> None:
    loaded, error = load_and_repair(path)
    assert loaded.problem is not None and "missing" in loaded.problem and error is None
    assert read_state(path) == Loaded(OFF)


def test_a_v1_file_with_65_marks_and_a_huge_epoch_keeps_maintenance(path: Path) -> None:
    legacy = {
        "boot_epoch": 2**64 - 1,
        "replay_marks": {f"n{i}": [2**64 - 1, i] for i in range(65)},
        "extra": {"maintenance": True},
    }
    path.write_text(json.dumps(legacy))
    loaded, error = load_and_repair(path)
    assert loaded == Loaded(ON, migrated=True) and error is None
    assert json.loads(path.read_bytes()) == {"version": 1, "maintenance": True}


def test_a_valid_file_is_left_untouched(path: Path) -> None:
    path.write_bytes(GOOD_ON)
    before = path.stat()
    assert load_and_repair(path) == (Loaded(ON), None)
    assert path.stat().st_ino == before.st_ino and path.stat().st_mtime_ns == before.st_mtime_ns


# -- atomic save ---------------------------------------------------------------------------


def test_save_is_private_whatever_the_umask(path: Path) -> None:
    old = os.umask(0)
    try:
        save_state(path, ON)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and read_state(path) == Loaded(ON)


def test_a_failed_save_leaves_no_temp_file_and_the_old_file_intact(tmp_path: Path) -> None:
    blocked = tmp_path / "web-lb1.state"
    blocked.mkdir()  # rename onto a directory fails after the temp file was written
    with pytest.raises(OSError):
        save_state(blocked, ON)
    assert only_the_state_file(blocked) == [blocked.name]
    with pytest.raises(OSError):
        save_state(tmp_path / "no" / "such" / "dir.state", ON)


# -- the writer ----------------------------------------------------------------------------


def test_writes_coalesce_and_the_newest_state_wins(path: Path) -> None:
    async def scenario() -> tuple[list[str | None], int]:
        writer = StateWriter(path)
        futures = [writer.submit(PersistentState(i % 2 == 1)) for i in range(50)]
        results = list(await asyncio.gather(*futures))
        await writer.close()
        return results, writer.writes

    results, writes = asyncio.run(scenario())
    assert results == [None] * 50
    assert writes == 2  # the first, then one for the 49 queued meanwhile
    assert read_state(path) == Loaded(ON)  # i = 49


def test_failures_are_reported_once_then_counted_until_a_write_succeeds(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.write_text("")  # a file where the directory should be: every write fails (ENOTDIR)
    reports: list[tuple[str, bool]] = []
    recovered: list[int] = []

    async def scenario() -> list[str | None]:
        writer = StateWriter(lib / "web-lb1.state", lambda e, f: reports.append((e, f)),
                             recovered.append)  # fmt: skip
        results = [await writer.submit(ON), await writer.submit(OFF), await writer.submit(ON)]
        lib.unlink()
        lib.mkdir()
        results.append(await writer.submit(ON))
        await writer.close()
        assert writer.failures == 3
        return results

    results = asyncio.run(scenario())
    assert [r is None for r in results] == [False, False, False, True]
    assert "Not a directory" in str(results[0]) and str(lib) in str(results[0])
    assert [first for _, first in reports] == [True, False, False]
    assert recovered == [3]
    assert read_state(lib / "web-lb1.state") == Loaded(ON)


# -- the lib dir ---------------------------------------------------------------------------


def test_the_lib_dir_is_created_private(tmp_path: Path) -> None:
    lib = tmp_path / "var" / "lib" / "hapair"
    assert ensure_lib_dir(lib) is None
    assert stat.S_IMODE(lib.stat().st_mode) == 0o700


def test_a_file_as_lib_dir_is_named(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.write_text("")
    assert ensure_lib_dir(lib) == f"{lib} exists and is not a directory"


def test_a_file_as_lib_dir_is_a_config_error_with_its_path(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.write_text("")
    cfg = tmp_path / "hapair.toml"
    cfg.write_text(
        '[node]\nname = "a"\npriority = 150\n[cluster]\nname = "web"\npeers = ["192.0.2.2"]\n'
        '[[vip]]\naddress = "198.51.100.50/24"\ninterface = "eth0"\n'
        f'[runtime]\nlib_dir = "{lib}"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(cfg, check_secret=False)
    assert ("runtime.lib_dir", f"{lib} exists and is not a directory") in info.value.problems


# A read-only /var/lib (the unit's ProtectSystem=strict without StateDirectory=), made real with
# a read-only bind mount in a private mount namespace that ends with the child.
READ_ONLY = """
import asyncio, sys
from pathlib import Path
from hapair.runtime.state import PersistentState, StateWriter, ensure_lib_dir
lib = Path(sys.argv[1])
print(ensure_lib_dir(lib))
print(ensure_lib_dir(lib / "sub"))
async def main():
    seen = []
    w = StateWriter(lib / "x.state", lambda e, first: seen.append(first))
    r = [await w.submit(PersistentState(True)) for _ in range(3)]
    await w.close()
    print(w.failures, seen, r[0])
asyncio.run(main())
"""


@pytest.fixture
def read_only_run(tmp_path: Path) -> Iterator[Callable[[], list[str]]]:
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    lib = tmp_path / "lib"
    lib.mkdir()

    def run() -> list[str]:
        mount = f'mount --bind -o ro {lib} {lib} && exec {sys.executable} -c "$0" {lib}'
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, READ_ONLY],
            capture_output=True, text=True, timeout=30, check=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )  # fmt: skip
        return proc.stdout.splitlines()

    yield run


def test_a_read_only_lib_dir_names_the_fix_and_writes_fail_counted(
    read_only_run: Callable[[], list[str]], tmp_path: Path
) -> None:
    own, sub, writer = read_only_run()
    assert "is not writable (Read-only file system)" in own and "StateDirectory=hapair" in own
    assert sub.startswith(f"cannot create {tmp_path / 'lib' / 'sub'}: Read-only file system")
    assert "StateDirectory=hapair" in sub
    assert writer.startswith("3 [True, False, False]") and "Read-only file system" in writer
