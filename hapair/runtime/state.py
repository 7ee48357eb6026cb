"""The daemon's durable state (maintenance): a small versioned file, read strictly, written safely.

The file lives under ``runtime.lib_dir`` (``/var/lib/hapair``, the unit's ``StateDirectory=``)
so that it survives a reboot. Nothing about heartbeat freshness is kept here: protocol v2 needs
no persisted state. Reading never blocks (a FIFO or any other non-regular file is refused
before a read), never raises and is never silent: a missing, unreadable or invalid file yields
the defaults plus a reason, and the caller rewrites it. Writing is atomic (temp file in the
same directory, fsync, rename, fsync of the directory) and runs on a worker thread
(:class:`StateWriter`), never on the heartbeat loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

#: The schema version this hapair writes and reads.
SCHEMA_VERSION: Final = 1
#: A valid file is about 40 bytes; anything much larger is refused before parsing.
MAX_STATE_BYTES: Final = 4096
#: The file is one flat object; a legacy v1 file nests ``replay_marks`` three deep.
MAX_DEPTH: Final = 4
#: Integer literals longer than this are refused before int() sees them.
MAX_INT_DIGITS: Final = 20

_KEYS: Final = frozenset({"version", "maintenance"})
#: The keys of the state file of hapair before this schema (protocol v1): no version.
_LEGACY_KEYS: Final = frozenset({"boot_epoch", "replay_marks", "extra"})


@dataclass(frozen=True)
class PersistentState:
    """What must survive a reboot: whether this node is in maintenance."""

    maintenance: bool = False

    def to_json(self) -> bytes:
        """The file's bytes (schema version :data:`SCHEMA_VERSION`)."""
        data = {"version": SCHEMA_VERSION, "maintenance": self.maintenance}
        return json.dumps(data, sort_keys=True).encode() + b"\n"


@dataclass(frozen=True)
class Loaded:
    """The result of reading the state file: the state to use and why it needs rewriting."""

    state: PersistentState
    #: What was wrong with the file (None: it was valid as is).
    problem: str | None = None
    #: A legacy (v1) file, read and to be rewritten in the current schema.
    migrated: bool = False

    @property
    def needs_rewrite(self) -> bool:
        """True when the file on disk is not the current schema's encoding of ``state``."""
        return self.problem is not None or self.migrated


class StateError(ValueError):
    """The state file's content is invalid; the message says exactly what is wrong."""


# -- parsing (pure) ---------------------------------------------------------------------------


def _nesting_depth(text: str) -> int:
    """The deepest bracket nesting outside strings (checked before json recurses into it)."""
    depth = worst = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            worst = max(worst, depth)
        elif ch in "]}":
            depth -= 1
    return worst


def _no_constants(name: str) -> Any:
    raise StateError(f"{name} is not a valid value")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise StateError(f"integer of {len(text)} digits is out of range")
    return int(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise StateError(f"key {key!r} appears twice")
        out[key] = value
    return out


def _decode(data: bytes) -> object:
    if len(data) > MAX_STATE_BYTES:
        raise StateError(f"{len(data)} bytes, more than the {MAX_STATE_BYTES} a state file holds")
    if not data.strip():
        raise StateError("empty (truncated?)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StateError(f"not UTF-8 text (byte {exc.start})") from None
    if _nesting_depth(text) > MAX_DEPTH:
        raise StateError(f"nested more than {MAX_DEPTH} levels deep")
    try:
        return json.loads(
            text,
            parse_constant=_no_constants,
            parse_int=_bounded_int,
            object_pairs_hook=_unique_keys,
        )
    except StateError:
        raise
    except (ValueError, RecursionError) as exc:
        raise StateError(f"not valid JSON ({exc})") from None


def _strict_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise StateError(f"{name} must be true or false, got {value!r:.40}")
    return value


def _check_legacy(raw: dict[str, Any]) -> PersistentState:
    """A v1 file (boot_epoch, replay_marks, extra): only extra.maintenance is kept."""
    extra = raw.get("extra", {})
    if not isinstance(extra, dict):
        raise StateError(f"legacy file: extra must be an object, got {extra!r:.40}")
    if "maintenance" not in extra:
        return PersistentState()
    return PersistentState(_strict_bool("legacy file: extra.maintenance", extra["maintenance"]))


def parse_state(data: bytes) -> Loaded:
    """Decode the file's bytes; never raises. Invalid content yields the defaults and a reason."""
    try:
        raw = _decode(data)
        if not isinstance(raw, dict):
            raise StateError(f"must be a JSON object, got {type(raw).__name__}")
        if "version" not in raw and raw.keys() <= _LEGACY_KEYS:
            return Loaded(_check_legacy(raw), migrated=True)
        unknown = sorted(raw.keys() - _KEYS)
        if unknown:
            raise StateError(f"unknown key(s) {', '.join(repr(k) for k in unknown)}"[:200])
        missing = sorted(_KEYS - raw.keys())
        if missing:
            raise StateError(f"missing key(s) {', '.join(repr(k) for k in missing)}")
        version = raw["version"]
        if type(version) is not int or version != SCHEMA_VERSION:
            raise StateError(f"version must be {SCHEMA_VERSION}, got {version!r:.40}")
        return Loaded(PersistentState(_strict_bool("maintenance", raw["maintenance"])))
    except StateError as exc:
        return Loaded(PersistentState(), problem=str(exc))


# -- reading and writing (I/O) ----------------------------------------------------------------


def read_state(path: Path) -> Loaded:
    """Read the state file without ever blocking; never raises.

    Opened with O_NONBLOCK and O_NOFOLLOW, then fstat-ed: a FIFO, a device, a socket, a
    directory or a symlink is refused before a single byte is read.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return Loaded(PersistentState(), problem="missing (first start, or deleted)")
    except OSError as exc:
        # ELOOP (a symlink, O_NOFOLLOW), ENXIO (a socket): say what is there instead.
        with contextlib.suppress(OSError):
            mode = os.lstat(path).st_mode
            if not stat.S_ISREG(mode):
                return Loaded(PersistentState(), problem=f"is a {_kind(mode)}, not a regular file")
        return Loaded(PersistentState(), problem=f"cannot open: {exc.strerror}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _kind(st.st_mode)
            return Loaded(PersistentState(), problem=f"is a {kind}, not a regular file")
        if st.st_size > MAX_STATE_BYTES:
            return Loaded(
                PersistentState(),
                problem=f"{st.st_size} bytes, more than the {MAX_STATE_BYTES} a state file holds",
            )
        data = os.read(fd, MAX_STATE_BYTES + 1)
    except OSError as exc:
        return Loaded(PersistentState(), problem=f"cannot read: {exc.strerror}")
    finally:
        os.close(fd)
    return parse_state(data)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


def save_state(path: Path, state: PersistentState) -> None:
    """Write the file atomically (mode 0600): temp file, fsync, rename, fsync the directory.

    Raises OSError; the temp file is removed whatever fails. Blocking: call it off the loop.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, state.to_json())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def ensure_lib_dir(path: Path) -> str | None:
    """Create the state directory (mode 0700) if missing; None, or why it is not usable.

    The reason names the directory and the fix (a read-only /var/lib under the unit's
    ProtectSystem=strict needs StateDirectory=hapair).
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        return f"{path} exists and is not a directory"
    except OSError as exc:
        return f"cannot create {path}: {exc.strerror}{_fix(exc.errno)}"
    if not path.is_dir():
        return f"{path} exists and is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        code = errno.EROFS if _read_only(path) else errno.EACCES
        return f"{path} is not writable ({os.strerror(code)}){_fix(code)}"
    return None


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _fix(code: int | None) -> str:
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (
            ": under systemd the unit needs StateDirectory=hapair (or ReadWritePaths= for a"
            " runtime.lib_dir elsewhere); otherwise set runtime.lib_dir to a writable directory"
        )
    return ""


def load_and_repair(path: Path) -> tuple[Loaded, OSError | None]:
    """Read the file and, if it was not valid as is, rewrite it from what was read.

    Blocking (fsync): the daemon runs it on a thread before the loop starts.
    """
    loaded = read_state(path)
    if not loaded.needs_rewrite:
        return loaded, None
    try:
        save_state(path, loaded.state)  # replaces a symlink, FIFO or socket; not a directory
    except OSError as exc:
        return loaded, exc
    return loaded, None


# -- the writer -------------------------------------------------------------------------------

#: The outcome of one write: None when durable, else what went wrong.
WriteResult = str | None


class StateWriter:
    """Writes the state file on a worker thread; the newest state wins and writes coalesce.

    ``submit`` returns a future resolved once a write that includes that state (or a newer
    one) has finished: None when it is durable, else the error text. The first failure is
    reported through ``on_failure(error, first=True)``; later ones only counted until a write
    succeeds again.
    """

    def __init__(
        self,
        path: Path,
        on_failure: Callable[[str, bool], None] | None = None,
        on_recovered: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        #: Writes finished (coalesced: fewer than submits) and writes that failed.
        self.writes = 0
        self.failures = 0
        self._on_failure = on_failure
        self._on_recovered = on_recovered
        self._failing = False
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hapair-state")
        self._pending: PersistentState | None = None
        self._waiters: list[asyncio.Future[WriteResult]] = []
        self._inflight: list[asyncio.Future[WriteResult]] = []
        self._busy = False
        self._closed = False

    def submit(self, state: PersistentState) -> asyncio.Future[WriteResult]:
        """Queue ``state`` for writing (on the loop, never blocks)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[WriteResult] = loop.create_future()
        if self._closed:
            done.set_result("the state writer is closed")
            return done
        self._pending = state
        self._waiters.append(done)
        if not self._busy:
            self._start(loop)
        return done

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        state, self._pending = self._pending, None
        self._inflight, self._waiters = self._waiters, []
        if state is None:
            return
        self._busy = True
        job = loop.run_in_executor(self._pool, save_state, self.path, state)
        job.add_done_callback(lambda f: self._finished(loop, f))

    def _finished(self, loop: asyncio.AbstractEventLoop, job: asyncio.Future[None]) -> None:
        self._busy = False
        self.writes += 1
        waiters, self._inflight = self._inflight, []
        exc = None if job.cancelled() else job.exception()
        result: WriteResult = None
        if job.cancelled():
            result = "cancelled"
        elif exc is not None:
            result = f"{self.path}: {exc}"
            self.failures += 1
            if self._on_failure is not None:
                self._on_failure(result, not self._failing)
            self._failing = True
        elif self._failing:
            self._failing = False
            if self._on_recovered is not None:
                self._on_recovered(self.failures)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(result)
        if self._pending is not None:
            self._start(loop)

    @property
    def idle(self) -> bool:
        """True when no write is running or queued."""
        return not self._busy and self._pending is None

    async def close(self, wait: float = 2.0) -> None:
        """Let a queued write finish (bounded), then stop the worker thread."""
        self._closed = True
        pending = [*self._inflight, *self._waiters]
        if pending:
            await asyncio.wait(pending, timeout=wait)
        # A write hung in the kernel (a dead NFS mount) is left behind rather than waited for.
        self._pool.shutdown(wait=False, cancel_futures=True)
