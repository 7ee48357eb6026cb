"""Child processes started off the loop: a hook, a track command.

``fork`` + ``exec`` of a daemon of tens of megabytes takes one to several milliseconds (more
on a loaded host), and asyncio's ``subprocess_exec`` does it on the loop. Here ``Popen`` runs
on one spawner thread; the loop only watches the result: the exit through a pidfd (readable
once the child has exited, then reaped without waiting) and the output through a read pipe.
A spawn whose caller was cancelled meanwhile is killed and reaped on the spawner thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hapair-spawn")
        return _spawner


def _kill_and_reap(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)


def _orphaned(future: Future[subprocess.Popen[bytes]]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    _executor().submit(_kill_and_reap, future.result())


class _Reader(asyncio.Protocol):
    def __init__(self, sink: Callable[[bytes], None], closed: asyncio.Future[None]) -> None:
        self.sink = sink
        self.closed = closed

    def data_received(self, data: bytes) -> None:
        self.sink(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class Child:
    """A running child in its own session: ``exited`` resolves once it is reaped, ``closed``
    once its output pipe reached EOF (later, if a background child still holds it)."""

    def __init__(self, proc: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self.proc = proc
        self._loop = loop
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._pipe: asyncio.BaseTransport | None = None
        self._pidfd: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative: killed by that signal)."""
        return self.proc.returncode

    def signal_group(self, sig: signal.Signals) -> None:
        """Signal the child's process group while the leader is not reaped (until then its
        pid is surely still our group's)."""
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def close(self) -> None:
        """Stop reading its output; a child still running is reaped whenever it exits."""
        if self._pipe is not None:
            self._pipe.close()

    def _watch(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.proc.pid)
        except OSError:  # a kernel before 5.3: a thread waits instead
            waiting = self._loop.run_in_executor(None, self.proc.wait)
            waiting.add_done_callback(lambda _: self._done())
            return
        self._loop.add_reader(self._pidfd, self._on_exit)

    def _on_exit(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self.proc.poll()  # it has exited: this reaps without waiting
        self._done()

    def _done(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


async def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    output: Callable[[bytes], None] | None = None,
) -> Child:
    """Start ``argv`` (no shell, stdin from /dev/null, its own session) without blocking the
    loop; stdout and stderr go to ``output`` (else to /dev/null). OSError, ValueError or
    SubprocessError if it cannot start."""
    loop = asyncio.get_running_loop()
    pipe = subprocess.PIPE if output is not None else subprocess.DEVNULL
    kwargs: dict[str, Any] = {
        "stdin": subprocess.DEVNULL,
        "stdout": pipe,
        "stderr": subprocess.STDOUT if output is not None else subprocess.DEVNULL,
        "env": None if env is None else dict(env),
        "cwd": cwd,
        "start_new_session": True,
    }

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(list(argv), **kwargs)

    started = _executor().submit(popen)
    try:
        proc = await asyncio.wrap_future(started)
    except asyncio.CancelledError:
        started.add_done_callback(_orphaned)
        raise
    child = Child(proc, loop)
    child._watch()
    if output is not None and proc.stdout is not None:
        child._pipe, _ = await loop.connect_read_pipe(
            lambda: _Reader(output, child.closed), proc.stdout
        )
    else:
        child.closed.set_result(None)
    return child
