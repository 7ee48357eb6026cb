"""The asyncio side of the driver: reader callbacks and one re-armed timer around `Node.wake_at`.

No coroutine turns per wake-up: a reader callback or the timer schedules `_on_wake`, which runs
one `Node.wake_at` and re-arms the timer at `Node.deadline`; `run` only waits for the end. So
an idle wake-up costs one callback and no future. The heartbeat sockets are watched only while
the node `reads_on_arrival` (a lazy MASTER reads them at its own tick); netlink and ARP are
read only when they signalled data. The simulation (`hapair.testing.driversim`) is the other
driver of the same `Node`: it calls `wake_at` itself on a fake clock.
"""

from __future__ import annotations

import asyncio

from hapair.clock import MonotonicClock
from hapair.runtime.clock import CpuWait
from hapair.runtime.node import Node


class LoopDriver:
    """Runs one `Node` on the running asyncio loop until its election stops."""

    def __init__(self, node: Node) -> None:
        if not isinstance(node.clock, MonotonicClock):
            # Deadlines are armed as loop times: only the loop's own clock will do.
            raise TypeError(f"LoopDriver needs MonotonicClock, not {type(node.clock).__name__}")
        self.node = node
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finished: asyncio.Future[None] | None = None
        #: The step scheduled by a wake (None: none pending) and the deadline's timer.
        self._scheduled: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._hb_fds: list[int] = []
        self._hb_watched = False
        self._full_wake = True  # the next step is a whole one (see `Node.step`)

    async def run(self) -> None:
        """Run until the election reports it has stopped, then close the node."""
        node = self.node
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._finished = loop.create_future()
        self._hb_fds = node.io.transport.filenos()
        for fd in self._hb_fds:
            loop.add_reader(fd, self._heartbeats_ready)
        self._hb_watched = True
        fds = [node.io.netlink.fileno()]
        loop.add_reader(fds[0], node.source_ready, "netlink")
        for w in node.io.arp.values():
            loop.add_reader(w.fileno(), node.source_ready, "arp")
            fds.append(w.fileno())
        node.cpu = CpuWait()  # opened on the loop's thread: it reads this thread's schedstat
        node.waker = self.wake
        try:
            node.begin(node.clock.now())
            self.wake()
            await self._finished
        finally:
            node.waker = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._scheduled is not None:
                self._scheduled.cancel()
                self._scheduled = None
            if self._hb_watched:
                for fd in self._hb_fds:
                    loop.remove_reader(fd)
            for fd in fds:
                loop.remove_reader(fd)
            node.cpu.close()
            node.cpu = None
            await node.close()

    def wake(self) -> None:
        """Run a whole step soon (a posted event, a reader of netlink or ARP); coalesces."""
        self._full_wake = True
        if self._scheduled is None and self._loop is not None:
            self._scheduled = self._loop.call_soon(self._on_wake)

    def _heartbeats_ready(self) -> None:
        """Reader callback of the heartbeat sockets (see `Node.step`'s ``heartbeats_only``)."""
        if self._scheduled is None and self._loop is not None:
            self._scheduled = self._loop.call_soon(self._on_wake)

    def _on_timer(self) -> None:
        """The armed deadline came."""
        self._timer = None
        self._timer_at = None
        self._full_wake = True
        self._on_wake()

    def _on_wake(self) -> None:
        """One wake-up: `Node.wake_at`, then the timer at the next deadline."""
        if self._scheduled is not None:  # the timer came first: one step serves both
            self._scheduled.cancel()
            self._scheduled = None
        finished = self._finished
        if finished is None or finished.done():
            return
        node = self.node
        try:
            full, self._full_wake = self._full_wake, False
            if not node.wake_at(node.clock.now(), full=full):
                return  # nothing changed: the timer and the readers stay as they are
            if node.done:
                finished.set_result(None)
                return
            self._arm()
        except Exception as exc:  # the loop's exception handler would only log it
            finished.set_exception(exc)

    def _arm(self) -> None:
        """Watch the heartbeat sockets or not, and put the timer at the node's deadline; a
        timer already there is kept (an I/O wake seldom moves it)."""
        loop = self._loop
        assert loop is not None  # only called from run()'s callbacks
        lazy = not self.node.reads_on_arrival()
        if lazy == self._hb_watched:
            for fd in self._hb_fds:
                if lazy:
                    loop.remove_reader(fd)
                else:
                    loop.add_reader(fd, self._heartbeats_ready)
            self._hb_watched = not lazy
        deadline = self.node.deadline
        if self._scheduled is not None:
            return  # woken again already (e.g. a callback during the step)
        if self._timer is not None:
            if self._timer_at == deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = loop.call_at(deadline, self._on_timer)
